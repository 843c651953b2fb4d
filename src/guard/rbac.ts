// Roles and the one RBAC table: which roles may call which route. Every admin route
// (Route.admin) is looked up here; the first matching row wins, and a route no row
// matches is admin-only. docs/auth.md prints this table.
import { BrokerError } from '../errors.ts';

export const ROLES = ['admin', 'manager', 'analyst', 'agent', 'integration', 'service'] as const;
export type Role = (typeof ROLES)[number];

export function isRole(s: unknown): s is Role {
  return typeof s === 'string' && (ROLES as readonly string[]).includes(s);
}

/** Who is calling: from ADMIN_TOKEN (break glass), a JWT, a session or an API key. */
export interface Principal {
  readonly subject: string;
  readonly roles: readonly Role[];
  readonly via: 'admin_token' | 'jwt' | 'session' | 'api_key' | 'open';
  /** The session id, for a session (so that it can revoke itself). */
  readonly session?: string;
}

const READERS: readonly Role[] = ['admin', 'manager', 'analyst'];
const OPERATORS: readonly Role[] = ['admin', 'manager'];
const ADMINS: readonly Role[] = ['admin'];
/** The client APIs: the client roles, and the operators who may try them. */
export const CLIENT_ROLES: readonly Role[] = ['admin', 'manager', 'agent', 'integration', 'service'];

interface Row {
  readonly methods: readonly string[] | '*';
  readonly path: RegExp;
  readonly roles: readonly Role[];
  readonly what: string;
}

const GET = ['GET', 'HEAD'];
const CHANGE = ['POST', 'PUT', 'PATCH', 'DELETE'];

export const RBAC_TABLE: readonly Row[] = [
  // Admin-only, whatever the area: config writes, promote, API keys, whole-config restore.
  { methods: CHANGE, path: /^\/api\/orchestrator\/config(\/(reload|save))?$/, roles: ADMINS, what: 'restore, reload or save the running config' },
  { methods: CHANGE, path: /^\/api\/orchestrator\/servers\/(add|[^/]+)$/, roles: ADMINS, what: 'add or remove servers' },
  { methods: '*', path: /^\/api\/auth\/keys(\/.*)?$/, roles: ADMINS, what: 'create, list and revoke API keys' },
  { methods: CHANGE, path: /^\/admin\/(promote|config)$/, roles: ADMINS, what: 'promote a model, change A/B, shadow and canary' },
  // Operators: flags, QoS, quotas, capacity, drain, bans, breakers, queue, maintenance.
  { methods: CHANGE, path: /^\/api\/industrial\//, roles: OPERATORS, what: 'flags, quotas, capacity limits and drain' },
  { methods: CHANGE, path: /^\/api\/orchestrator\//, roles: OPERATORS, what: 'drain, maintenance, breakers, bans, recovery tests, queue, queue and metrics settings, response cache flush' },
  { methods: CHANGE, path: /^\/admin\/warmup$/, roles: OPERATORS, what: 'warm up the models' },
  { methods: ['DELETE'], path: /^\/api\/auth\/sessions\/subject\//, roles: OPERATORS, what: 'revoke every session of a subject' },
  // Any role: a session revokes itself (the route checks it is its own, or an operator's call).
  { methods: ['DELETE'], path: /^\/api\/auth\/sessions\/[^/]+$/, roles: ROLES, what: 'revoke a session' },
  // Readers: status, usage, analytics, audit, metrics, config reads.
  { methods: GET, path: /^\/api\/(industrial|orchestrator)\//, roles: READERS, what: 'status, usage, analytics, breakers, bans, queue, config' },
  { methods: GET, path: /^\/api\/audit$/, roles: READERS, what: 'the audit trail' },
  { methods: GET, path: /^\/api\/tracking\//, roles: READERS, what: 'tracked requests, usage and cost (docs/tracking.md)' },
  { methods: GET, path: /^\/admin\//, roles: READERS, what: 'inference config and status' },
];

/** The roles allowed on a route (admin only when no row says otherwise). */
export function rolesFor(method: string, path: string): readonly Role[] {
  for (const row of RBAC_TABLE) if ((row.methods === '*' || row.methods.includes(method)) && row.path.test(path)) return row.roles;
  return ADMINS;
}

/** Throws forbidden unless one of the principal's roles may call the route. */
export function authorize(p: Principal, method: string, path: string): void {
  const allowed = rolesFor(method, path);
  if (!p.roles.some((r) => allowed.includes(r))) throw new BrokerError('forbidden', `${method} ${path} needs one of the roles ${allowed.join(', ')}; ${p.subject} has ${p.roles.join(', ') || 'none'}`);
}
