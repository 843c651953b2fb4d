// /api/auth/*: API keys (made, listed, revoked by admins; a key is shown once), sessions
// (a key or JWT exchanged for a session id; revoked one by one or per subject), and
// /api/audit (the audit trail, with filters). Also /api/health and /api/ready, as the
// identity runbook uses them.
import { BrokerError } from '../errors.ts';
import type { Route, RouteContext } from '../front/http/router.ts';
import type { Identity } from '../guard/identity.ts';
import { apiKeyOf, isKeyId, keyId } from '../guard/api-key.ts';
import { isRole, ROLES, type Role } from '../guard/rbac.ts';
import type { StateStore } from '../state/store.ts';
import type { QosConfig } from '../policy/qos.ts';
import type { ApiKeyPolicy } from '../config/broker-config.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };

function reply(ctx: RouteContext, body: unknown, status = 200): void {
  ctx.sink.send(status, JSON_HEADERS, JSON.stringify(body));
}

function optional<T>(body: Record<string, unknown>, name: string, ok: (v: unknown) => boolean, what: string): T | undefined {
  const v = body[name];
  if (v === undefined) return undefined;
  if (!ok(v)) throw new BrokerError('invalid_request', `${name} must be ${what}`, { details: { field: name } });
  return v as T;
}

const posInt = (v: unknown): boolean => typeof v === 'number' && Number.isInteger(v) && v > 0;

export interface AuthRoutesDeps {
  readonly identity: Identity;
  readonly store: StateStore;
  readonly qos: () => QosConfig;
  readonly keyPolicy: (key: string) => ApiKeyPolicy | undefined;
  /** Keys changed here: the other replicas re-read them. */
  readonly keysChanged: () => void;
  readonly ready: () => boolean;
  readonly replica: string;
  /** Refused credentials per address (ADMIN_AUTH_MAX_FAILURES): a session from an admin key is an admin credential. */
  readonly throttle?: { check(address: string): void; failed(address: string): void };
}

export function authRoutes(d: AuthRoutesDeps): Route[] {
  const { identity } = d;
  return [
    { method: 'GET', path: '/api/health', handle: ({ sink }) => sink.send(200, JSON_HEADERS, JSON.stringify({ status: 'ok', replica: d.replica, store: d.store.kind, storeUp: d.store.up })) },
    {
      method: 'GET',
      path: '/api/ready',
      handle({ sink }) {
        const ready = d.ready();
        sink.send(ready ? 200 : 503, JSON_HEADERS, JSON.stringify({ ready, store: d.store.kind, storeUp: d.store.up }));
      },
    },

    // ---- API keys (admin) ----
    {
      method: 'POST',
      path: '/api/auth/keys',
      admin: true,
      body: 'json',
      async handle(ctx) {
        const b = ctx.body as Record<string, unknown>;
        const name = optional<string>(b, 'name', (v) => typeof v === 'string' && /^[\x20-\x7e]{1,64}$/.test(v), 'a name of 1-64 printable characters');
        if (name === undefined) throw new BrokerError('invalid_request', 'name is required', { details: { field: 'name' } });
        const role = optional<Role>(b, 'role', (v) => isRole(v), `one of ${ROLES.join(', ')}`) ?? 'agent';
        const tier = optional<string>(b, 'tier', (v) => typeof v === 'string' && d.qos().tiers.has(v), `one of the QoS tiers (${[...d.qos().tiers.keys()].join(', ')})`);
        const label = optional<string>(b, 'label', (v) => typeof v === 'string' && /^[A-Za-z0-9._:-]{1,64}$/.test(v), '1-64 characters of letters, digits, . _ : -');
        const priority = optional<number>(b, 'priority', (v) => typeof v === 'number' && v >= 0 && v <= 9, 'a number 0-9');
        const rpm = optional<number>(b, 'rpm', posInt, 'an integer > 0');
        const tpm = optional<number>(b, 'tpm', posInt, 'an integer > 0');
        for (const k of Object.keys(b)) if (!['name', 'role', 'tier', 'label', 'priority', 'rpm', 'tpm'].includes(k)) throw new BrokerError('invalid_request', `unknown field ${k}`, { details: { field: k } });
        const { key, record } = await identity.createKey({ name, role, tier, label, priority, rpm, tpm }, ctx.principal?.subject ?? 'unknown');
        d.keysChanged();
        ctx.note!.target = record.id;
        ctx.note!.after = { id: record.id, name, role, tier: tier ?? null };
        // The key itself, this once; afterwards only its id.
        reply(ctx, { key, ...view(record) }, 201);
      },
    },
    { method: 'GET', path: '/api/auth/keys', admin: true, handle: (ctx) => reply(ctx, { keys: identity.runtimeKeys.map(view) }) },
    {
      method: 'DELETE',
      path: '/api/auth/keys/:id',
      admin: true,
      async handle(ctx) {
        const id = ctx.params.id!;
        // Never the value itself in the audit or the reply: it may be the key, pasted for its id.
        ctx.note!.target = isKeyId(id) ? id : keyId(id);
        const k = await identity.revokeKey(id);
        if (k === undefined) throw new BrokerError('not_found', isKeyId(id) ? `no API key ${id}` : 'no API key with that id: give the key\'s id (k_ and 12 hex digits, as GET /api/auth/keys lists them), not the key');
        d.keysChanged();
        ctx.note!.before = view(k);
        reply(ctx, { revoked: k.id });
      },
    },

    // ---- sessions ----
    {
      // A key or JWT in, a session id out: from the body (api_key or token) or the request's own credential.
      method: 'POST',
      path: '/api/auth/sessions',
      body: 'json?',
      async handle(ctx) {
        const b = ctx.body as Record<string, unknown>;
        const given = b.api_key ?? b.token ?? apiKeyOf(ctx.req.headers);
        if (typeof given !== 'string' || given === '') throw new BrokerError('unauthorized', 'send an API key or a JWT: {"api_key": "..."} or {"token": "..."}, or as Authorization: Bearer');
        // Guessing keys here is guessing admin credentials: throttled as on the admin routes.
        d.throttle?.check(ctx.req.remoteAddress);
        const { id, session } = await identity.createSession(given, d.keyPolicy).catch((err: BrokerError) => {
          if (err.code === 'unauthorized' || err.code === 'forbidden') d.throttle?.failed(ctx.req.remoteAddress);
          throw err;
        });
        reply(ctx, { session: id, subject: session.subject, roles: session.roles, tier: session.tier ?? null, expiresAt: new Date(session.expiresAt).toISOString() }, 201);
      },
    },
    {
      method: 'DELETE',
      path: '/api/auth/sessions/subject/:subject',
      admin: true,
      async handle(ctx) {
        const n = await identity.revokeSubject(ctx.params.subject!);
        // The keys doc's version moves on: a store later found behind it (an older dump) is put right.
        d.keysChanged();
        ctx.note!.after = { revoked: n };
        reply(ctx, { subject: ctx.params.subject, revoked: n });
      },
    },
    {
      // A session revokes itself; operators revoke anyone's.
      method: 'DELETE',
      path: '/api/auth/sessions/:id',
      admin: true,
      async handle(ctx) {
        const p = ctx.principal!;
        const own = p.via === 'session' && p.session === ctx.params.id;
        if (!own && !p.roles.some((r) => r === 'admin' || r === 'manager')) throw new BrokerError('forbidden', 'only the session itself, a manager or an admin may revoke it');
        const removed = await identity.revokeSession(ctx.params.id!);
        if (!removed) throw new BrokerError('not_found', 'no such session (expired or revoked already)');
        d.keysChanged();
        reply(ctx, { revoked: true });
      },
    },

    // ---- the audit trail ----
    {
      method: 'GET',
      path: '/api/audit',
      admin: true,
      async handle(ctx) {
        const q = new URLSearchParams(ctx.req.query);
        const limit = q.has('limit') ? Number(q.get('limit')) : 100;
        if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new BrokerError('invalid_request', 'limit must be an integer 1-1000', { details: { field: 'limit' } });
        const since = q.has('since') ? Date.parse(q.get('since')!) : undefined;
        if (since !== undefined && Number.isNaN(since)) throw new BrokerError('invalid_request', 'since must be an ISO date', { details: { field: 'since' } });
        const entries = await d.store.readAudit({ subject: q.get('subject') ?? undefined, action: q.get('action') ?? undefined, since, limit }).catch((err: Error) => {
          // The driver's words (ioredis internals) stay in the details, for the log.
          throw new BrokerError('overloaded', 'the audit store is unreachable or not answering (Redis); try again shortly', { retryAfter: 1, details: { storeError: err.message } });
        });
        reply(ctx, { entries });
      },
    },
  ];
}

function view(k: { id: string; name: string; role: string; tier: string | undefined; label: string | undefined; priority: number | undefined; rpm: number | undefined; tpm: number | undefined; createdAt: number; createdBy: string }): Record<string, unknown> {
  return { id: k.id, name: k.name, role: k.role, tier: k.tier ?? null, label: k.label ?? null, priority: k.priority ?? null, rpm: k.rpm ?? null, tpm: k.tpm ?? null, createdAt: new Date(k.createdAt).toISOString(), createdBy: k.createdBy };
}
