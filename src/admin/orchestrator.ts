// /api/orchestrator/*: the Ollama Orchestrator runbook's routes, as written there, over
// the fleet manager (src/fleet/manager.ts): status, servers, drain and maintenance,
// circuit breakers, bans, recovery tests and their analysis, analytics, the queue and
// the running config. Every route needs the admin credential.
import { modelKey } from '../fleet/bans.ts';
import { BrokerError } from '../errors.ts';
import type { Route, RouteContext } from '../front/http/router.ts';
import type { FleetManager } from '../fleet/manager.ts';
import type { BanScope } from '../fleet/bans.ts';
import type { Logger } from '../obs/logger.ts';
import { brokerConfigJsonSchema, serverSchema, firstIssue } from '../config/schema.ts';
import type { PlaneStats } from '../plane/protocol.ts';
import { actorOf } from './actor.ts';

const P = '/api/orchestrator';
const JSON_HEADERS = { 'content-type': 'application/json' };

function reply(ctx: RouteContext, body: unknown, status = 200, headers: Record<string, string> = {}): void {
  ctx.sink.send(status, { ...JSON_HEADERS, ...headers }, JSON.stringify(body));
}

function field<T>(body: unknown, name: string, check: (v: unknown) => v is T, what: string): T | undefined {
  const v = (body as Record<string, unknown>)[name];
  if (v === undefined) return undefined;
  if (!check(v)) throw new BrokerError('invalid_request', `${name} must be ${what}`, { details: { field: name } });
  return v;
}

const isBool = (v: unknown): v is boolean => typeof v === 'boolean';
const isReason = (v: unknown): v is string => typeof v === 'string' && v.length <= 500;
const isTtl = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v > 0 && v <= 366 * 86_400;

export interface OrchestratorDeps {
  readonly fleet: FleetManager;
  readonly logger: Logger;
  /** The queue over every thread (size, oldest wait). */
  queueStats(): Promise<PlaneStats['queue']>;
  /** In-flight requests per deployment (the shared counters). */
  inFlight(): { id: string; inFlight: number; concurrencyLimit: number }[];
  /** The Prometheus text of the whole process (the runbook greps /api/orchestrator/metrics). */
  metricsText(): Promise<{ contentType: string; text: string }>;
  /** Drops every response-cache entry, of every thread and (with Redis) every replica. */
  flushCache(): Promise<{ redisKeys: number }>;
}

export function orchestratorRoutes(d: OrchestratorDeps): Route[] {
  const { fleet, logger } = d;
  // The log line, and what the audit trail's entry says changed (its route alone read alike
  // for maintenance on and off, drain and undrain by body).
  const audit = (ctx: RouteContext, what: string, o: Record<string, unknown>): void => {
    logger.info({ audit: what, actor: actorOf(ctx), trace_id: ctx.req.id, ...o }, `orchestrator: ${what}`);
    if (ctx.note !== undefined && ctx.note.after === undefined) ctx.note.after = { ...o, change: what };
  };
  const get = (path: string, handle: (ctx: RouteContext) => unknown | Promise<unknown>): Route => ({ method: 'GET', path: `${P}${path}`, admin: true, async handle(ctx) { reply(ctx, await handle(ctx)); } });
  const post = (path: string, handle: (ctx: RouteContext) => unknown | Promise<unknown>, method: 'POST' | 'DELETE' | 'PATCH' = 'POST'): Route => ({ method, path: `${P}${path}`, admin: true, body: method === 'DELETE' ? 'none' : 'json?', async handle(ctx) { reply(ctx, await handle(ctx)); } });

  const breakerAction = (action: 'open' | 'close' | 'half-open' | 'reset'): Route =>
    post(`/circuit-breakers/:server/:model/${action}`, (ctx) => {
      const state = action === 'close' ? 'closed' : action === 'half-open' ? 'half_open' : action;
      // Audited once done: a refused action (an unknown server, 404) leaves no audit line.
      const r = fleet.forceBreaker(ctx.params.server!, ctx.params.model!, state);
      audit(ctx, 'breaker', { server: ctx.params.server, model: ctx.params.model, action });
      return r;
    });

  const addBan = (scope: BanScope) => (ctx: RouteContext) => {
    // A misspelt field (`ttl`) must not turn a timed ban into a permanent one.
    const body = ctx.body !== null && typeof ctx.body === 'object' ? Object.keys(ctx.body) : [];
    const unknown = body.find((k) => k !== 'reason' && k !== 'ttlSeconds');
    if (unknown !== undefined) throw new BrokerError('invalid_request', `unknown field ${unknown.slice(0, 64)}: the body is {"reason": "…", "ttlSeconds": n} (both optional)`, { details: { field: unknown.slice(0, 64) } });
    const reason = field(ctx.body, 'reason', isReason, 'a string of at most 500 characters') ?? 'banned by an operator';
    const ttl = field(ctx.body, 'ttlSeconds', isTtl, 'a number of seconds > 0 (at most a year)');
    const server = scope === 'model' ? null : ctx.params.id!;
    const model = scope === 'server' ? null : ctx.params.model!;
    const ban = fleet.ban(scope, server, model, reason, ttl === undefined ? null : ttl * 1000);
    audit(ctx, 'ban', { scope, server, model, reason, ttlSeconds: ttl ?? null });
    return banView(ban);
  };

  return [
    // ---- status ----
    get('/health', async () => fleet.health(await d.queueStats())),
    get('/in-flight', () => {
      const rows = d.inFlight();
      const byServer: Record<string, { inFlight: number; deployments: Record<string, number> }> = {};
      for (const s of fleet.listServers()) byServer[s.id as string] = { inFlight: 0, deployments: {} };
      const serverOf = new Map<string, string>();
      for (const g of fleet.current.modelGroups.values()) for (const dep of g.deployments) serverOf.set(dep.id, dep.server);
      for (const r of rows) {
        const s = serverOf.get(r.id);
        if (s === undefined || byServer[s] === undefined) continue;
        byServer[s].inFlight += r.inFlight;
        byServer[s].deployments[r.id] = r.inFlight;
      }
      return { total: Object.values(byServer).reduce((n, s) => n + s.inFlight, 0), servers: byServer };
    }),
    get('/servers', () => ({ servers: fleet.listServers() })),
    get('/models/status', () => ({ models: fleet.modelsStatus() })),
    {
      method: 'GET',
      path: `${P}/metrics`,
      admin: true,
      async handle(ctx) {
        const m = await d.metricsText();
        ctx.sink.send(200, { 'content-type': m.contentType }, m.text);
      },
    },

    // ---- servers ----
    post('/servers/add', async (ctx) => {
      const body = { provider: 'ollama', ...(ctx.body as Record<string, unknown>) };
      const issue = firstIssue(serverSchema, body);
      if (issue !== undefined) throw new BrokerError('invalid_request', `${issue.path}: ${issue.message}`, { details: { field: issue.path } });
      const view = await fleet.addServer(body as never);
      audit(ctx, 'server_add', { server: view.id, url: view.url });
      return view;
    }),
    post('/servers/:id', (ctx) => {
      const r = fleet.removeServer(ctx.params.id!);
      audit(ctx, 'server_remove', { server: r.removed, inFlight: r.inFlight });
      return r;
    }, 'DELETE'),
    post('/servers/:id/drain', (ctx) => {
      const r = fleet.setDraining(ctx.params.id!, true);
      audit(ctx, 'drain', { server: ctx.params.id, draining: true });
      return r;
    }),
    post('/servers/:id/undrain', (ctx) => {
      const r = fleet.setDraining(ctx.params.id!, false);
      audit(ctx, 'drain', { server: ctx.params.id, draining: false });
      return r;
    }),
    post('/servers/:id/maintenance', (ctx) => {
      const enabled = field(ctx.body, 'enabled', isBool, 'true or false');
      if (enabled === undefined) throw new BrokerError('invalid_request', 'enabled (true or false) is required', { details: { field: 'enabled' } });
      const reason = field(ctx.body, 'reason', isReason, 'a string of at most 500 characters');
      const r = fleet.setMaintenance(ctx.params.id!, enabled, reason);
      audit(ctx, 'maintenance', { server: ctx.params.id, enabled, reason: reason ?? null });
      return r;
    }),
    post('/servers/:id/models/:model/recovery-test', async (ctx) => {
      const r = await fleet.runRecoveryTest(ctx.params.id!, ctx.params.model!);
      audit(ctx, 'recovery_test', { server: ctx.params.id, model: ctx.params.model, ok: r.ok });
      return { server: ctx.params.id, model: ctx.params.model, ...r };
    }),

    // ---- analytics ----
    get('/analytics/summary', () => {
      const t = fleet.analytics.total();
      return { windowMinutes: fleet.analytics.window, ...t, servers: fleet.listServers().length, models: fleet.modelsStatus().length };
    }),
    get('/analytics/server-performance', () => ({
      windowMinutes: fleet.analytics.window,
      servers: [...fleet.analytics.byServer()].map(([server, t]) => ({ server, ...t })),
      pairs: fleet.analytics.byPair().map((p) => ({ server: p.server, model: p.model, ...p.totals })),
    })),
    get('/analytics/errors', () => {
      const pairs = fleet.analytics.byPair().filter((p) => p.totals.errors + p.totals.failedAttempts > 0);
      const t = fleet.analytics.total();
      return { windowMinutes: fleet.analytics.window, errors: t.errors, failedAttempts: t.failedAttempts, errorRate: t.errorRate, byServerModel: pairs.map((p) => ({ server: p.server, model: p.model, errors: p.totals.errors, failedAttempts: p.totals.failedAttempts, requests: p.totals.requests, errorRate: p.totals.errorRate })) };
    }),

    // ---- circuit breakers ----
    get('/circuit-breakers', () => ({ breakers: fleet.breakerViews() })),
    post('/circuit-breakers/:server/reset', (ctx) => {
      const r = fleet.resetServerBreakers(ctx.params.server!);
      audit(ctx, 'breaker', { server: ctx.params.server, action: 'reset_all' });
      return r;
    }),
    get('/circuit-breakers/:server/:model', (ctx) => fleet.breakerView(ctx.params.server!, ctx.params.model!)),
    breakerAction('open'),
    breakerAction('close'),
    breakerAction('half-open'),
    breakerAction('reset'),

    // ---- bans (literal segments before the :id/:model pair) ----
    get('/bans', () => ({ bans: fleet.bans.list().map(banView) })),
    post('/bans', (ctx) => {
      const n = fleet.unban(() => true);
      audit(ctx, 'unban', { scope: 'all', removed: n });
      return { removed: n };
    }, 'DELETE'),
    post('/bans/server/:id', addBan('server')),
    post('/bans/server/:id', (ctx) => {
      fleet.serverState(ctx.params.id!);
      const n = fleet.unban((b) => b.server === ctx.params.id);
      audit(ctx, 'unban', { scope: 'server', server: ctx.params.id, removed: n });
      return { removed: n };
    }, 'DELETE'),
    post('/bans/model/:model', addBan('model')),
    post('/bans/model/:model', (ctx) => {
      const n = fleet.unban((b) => b.model !== null && modelKey(b.model) === modelKey(ctx.params.model!));
      audit(ctx, 'unban', { scope: 'model', model: ctx.params.model, removed: n });
      return { removed: n };
    }, 'DELETE'),
    post('/bans/:id/:model', addBan('pair')),
    post('/bans/:id/:model', (ctx) => {
      const n = fleet.unban((b) => b.scope === 'pair' && b.server === ctx.params.id && b.model !== null && modelKey(b.model) === modelKey(ctx.params.model!));
      fleet.serverState(ctx.params.id!);
      audit(ctx, 'unban', { scope: 'pair', server: ctx.params.id, model: ctx.params.model, removed: n });
      return { removed: n };
    }, 'DELETE'),

    // ---- recovery ----
    get('/recovery-failures', () => ({ servers: fleet.recoverySummary() })),
    get('/recovery-failures/:id', (ctx) => fleet.recoveryStats(ctx.params.id!)),
    get('/recovery-failures/:id/history', (ctx) => ({ server: ctx.params.id, history: (fleet.serverState(ctx.params.id!), fleet.recordOf(ctx.params.id!).history) })),
    get('/recovery-failures/:id/analysis', (ctx) => fleet.recoveryAnalysis(ctx.params.id!)),
    get('/recovery-failures/:id/circuit-breaker-impact', (ctx) => fleet.breakerImpact(ctx.params.id!)),
    post('/recovery-failures/:id/reset', (ctx) => {
      const r = fleet.resetRecovery(ctx.params.id!);
      audit(ctx, 'recovery_reset', { server: ctx.params.id });
      return r;
    }),

    // ---- queue ----
    get('/queue', async () => {
      const q = await d.queueStats();
      return { depth: q.size, size: q.size, maxSize: fleet.current.scheduler.maxQueue, paused: fleet.queuePaused, oldestWaitMs: q.oldestWaitMs, byGroup: q.byGroup, timedOut: q.timedOut, rejectedFull: q.rejectedFull, shed: q.shed };
    }),
    post('/queue/pause', (ctx) => {
      fleet.setPaused(true);
      audit(ctx, 'queue', { paused: true });
      return { paused: true };
    }),
    post('/queue/resume', (ctx) => {
      fleet.setPaused(false);
      audit(ctx, 'queue', { paused: false });
      return { paused: false };
    }),

    // ---- config ----
    {
      method: 'GET',
      path: `${P}/config`,
      admin: true,
      handle: (ctx) => reply(ctx, fleet.configView(), 200, { etag: fleet.etag, 'x-config-version': String(fleet.version) }),
    },
    get('/config/schema', () => brokerConfigJsonSchema()),
    // ---- response cache ----
    post('/cache/flush', async (ctx) => {
      // Every entry or none: a field meant to narrow it (a group) must not flush everything unsaid.
      const extra = Object.keys((ctx.body ?? {}) as Record<string, unknown>)[0];
      if (extra !== undefined) throw new BrokerError('invalid_request', `unknown field ${extra.slice(0, 64)}: the flush takes no fields, it drops every entry`, { details: { field: extra.slice(0, 64) } });
      let r: { redisKeys: number };
      try {
        r = await d.flushCache();
      } catch (err) {
        // Redis away: the memory entries went all the same, which the trail must say.
        audit(ctx, 'cache_flush', { partial: true, error: (err as BrokerError).code ?? 'internal' });
        throw err;
      }
      audit(ctx, 'cache_flush', { redisKeys: r.redisKeys });
      return { flushed: true, redisKeys: r.redisKeys };
    }),
    configChange('', 'POST', (ctx) => fleet.restore(ctx.body, ctx.req.headers['if-match'])),
    configChange('/queue', 'PATCH', (ctx) => fleet.patch('queue', ctx.body as Record<string, unknown>, ctx.req.headers['if-match'])),
    configChange('/metrics', 'PATCH', (ctx) => fleet.patch('metrics', ctx.body as Record<string, unknown>, ctx.req.headers['if-match'])),
    configChange('/reload', 'POST', (ctx) => {
      const path = field(ctx.body, 'configPath', (v): v is string => typeof v === 'string' && v.length > 0 && v.length < 4096, 'a file path');
      return fleet.reload(path, ctx.req.headers['if-match']);
    }),
    {
      method: 'POST',
      path: `${P}/config/save`,
      admin: true,
      body: 'json?',
      handle(ctx) {
        const r = fleet.save();
        audit(ctx, 'config_save', { path: r.path, version: r.version });
        reply(ctx, r, 200, { etag: fleet.etag });
      },
    },
  ];

  function configChange(path: string, method: 'POST' | 'PATCH', apply: (ctx: RouteContext) => unknown): Route {
    return {
      method,
      path: `${P}/config${path}`,
      admin: true,
      body: path === '/reload' ? 'json?' : 'json',
      handle(ctx) {
        const done = apply(ctx);
        // A reload names the file it read, as a SIGHUP's does.
        const file = path === '/reload' ? { path: (done as { path: string }).path } : {};
        audit(ctx, 'config', { part: path || 'restore', version: fleet.version, ...file });
        reply(ctx, { version: fleet.version, config: fleet.configView() }, 200, { etag: fleet.etag });
      },
    };
  }
}

function banView(b: { scope: string; server: string | null; model: string | null; reason: string; since: number; until: number | null }): Record<string, unknown> {
  return { scope: b.scope, server: b.server, model: b.model, reason: b.reason, since: new Date(b.since).toISOString(), expiresAt: b.until === null ? null : new Date(b.until).toISOString() };
}
