// /api/industrial/*: feature flags with runtime overrides and their audit trail,
// capacity, performance, QoS, quotas, usage patterns, PTU advice and a combined
// status. Every route needs the admin credential.
import type { FleetManager } from '../fleet/manager.ts';
import { COLD, HALF_OPEN, describeBits } from '../fleet/route-bits.ts';
import { BrokerError } from '../errors.ts';
import type { Route, RouteContext } from '../front/http/router.ts';
import { FLAG_NAMES, isFlagName, type FlagName, type FlagStore } from '../config/flags.ts';
import type { ApiKeyPolicy } from '../config/broker-config.ts';
import type { CapacityCounters } from '../sched/capacity.ts';
import type { PerformanceTracker } from '../policy/performance.ts';
import type { UsageProfiles } from '../policy/usage.ts';
import type { OutputPredictor } from '../policy/prediction.ts';
import type { QuotaLedger, QuotaLimits } from '../policy/quota.ts';
import type { PtuAdvisor } from '../policy/ptu.ts';
import type { Logger } from '../obs/logger.ts';
import type { Governance } from '../sched/governance.ts';
import { resolveTier, type QosConfig } from '../policy/qos.ts';
import { isKeyId, keyId } from '../guard/api-key.ts';
import type { PlaneStats } from '../plane/protocol.ts';
import { actorOf } from './actor.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };
const P = '/api/industrial';

function reply(ctx: RouteContext, body: unknown, status = 200): void {
  ctx.sink.send(status, JSON_HEADERS, JSON.stringify(body));
}

/** Who made a change, for the audit trail: the x-actor header if sent, else the client address. */
function flagParam(ctx: RouteContext): FlagName {
  const name = ctx.params.flag!;
  if (!isFlagName(name)) throw new BrokerError('not_found', `unknown flag ${name}; flags: ${FLAG_NAMES.join(', ')}`);
  return name;
}

/** Capacity ids follow the fleet file's deployment id rule. */
function capacityId(ctx: RouteContext): string {
  const id = ctx.params.id!;
  if (!/^[A-Za-z0-9._:-]{1,64}$/.test(id)) throw new BrokerError('invalid_request', 'deployment id must be 1-64 characters of letters, digits, . _ : -', { details: { field: 'id' } });
  return id;
}

function limitOf(body: unknown): number {
  const v = (body as Record<string, unknown>).concurrencyLimit;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 1_000_000) {
    throw new BrokerError('invalid_request', 'concurrencyLimit must be an integer between 0 and 1000000', { details: { field: 'concurrencyLimit' } });
  }
  return v;
}

/**
 * What these routes read and change of LLM governance, and nothing more: the flag store,
 * capacity, deployment drain and limits, the learning policies' reports, quotas, PTU
 * advice. `governanceAdmin` builds it from the control plane's Governance.
 */
export interface GovernanceAdmin {
  readonly flags: Pick<FlagStore, 'flags' | 'describe' | 'apply' | 'auditLog'>;
  readonly qos: QosConfig;
  keyPolicy(apiKey: string | undefined): ApiKeyPolicy | undefined;
  readonly capacity: Pick<CapacityCounters, 'totals' | 'ids' | 'stats'>;
  /** The capacity ids worth showing: not those of deployments removed from the config whose requests have finished. */
  capacityIds(): string[];
  /** Its group, whether it drains, and what keeps it from new requests (health, bans, breaker...), '' when nothing. */
  deployment(id: string): { readonly group: string; readonly draining: boolean; readonly blockedBy: string } | undefined;
  /** Registers the id with this limit, or changes its limit. */
  setLimit(id: string, limit: number): void;
  /** False when there is no such deployment. */
  setDraining(id: string, draining: boolean): boolean;
  /** Takes back a capacity id of its own (not a fleet deployment). */
  unregisterCapacity(id: string): 'removed' | 'deployment' | 'unknown';
  readonly performance: Pick<PerformanceTracker, 'all' | 'degraded' | 'snapshot'>;
  readonly usage: Pick<UsageProfiles, 'summary' | 'profile' | 'labels'>;
  readonly predictor: Pick<OutputPredictor, 'stats' | 'labels'>;
  readonly quota: Pick<QuotaLedger, 'snapshot' | 'usage'>;
  /** An operator's limits for a subject: in force at once, on every replica, and kept over a key record's. */
  setQuota(subject: string, limits: QuotaLimits): void;
  readonly ptu: Pick<PtuAdvisor, 'list' | 'recommendations' | 'headroom'>;
  /** The process's queue and sticky numbers, every data-plane thread's included. */
  processStats(): Promise<{ queue: PlaneStats['queue']; sticky: PlaneStats['sticky'] }>;
  countFlagChange(flag: FlagName): void;
}

/** The admin view of the control plane's Governance, with the threads' numbers when they serve. */
export function governanceAdmin(gov: Governance, fleet: Pick<FleetManager, 'drainDeployment' | 'isDrained' | 'quotaChanged'>, threads?: { stats(): Promise<PlaneStats[]> }): GovernanceAdmin {
  return {
    flags: gov.flags,
    get qos() {
      return gov.qos;
    },
    keyPolicy: (k) => gov.keyPolicy(k),
    capacity: gov.capacity,
    capacityIds: () => gov.capacityIds(),
    deployment(id) {
      const d = gov.deployment(id);
      if (d === undefined) return undefined;
      // Half-open with a trial permit left is routable (the next request is the trial).
      let bits = gov.capacity.route(d.slot) & ~COLD;
      if ((bits & HALF_OPEN) !== 0 && gov.capacity.trials(d.slot) > 0) bits &= ~HALF_OPEN;
      return { group: d.group, draining: fleet.isDrained(id), blockedBy: describeBits(bits) };
    },
    setLimit: (id, limit) => gov.setCapacityLimit(id, limit),
    unregisterCapacity: (id) => gov.unregisterCapacity(id),
    // One drain for both admin faces: the fleet manager's.
    setDraining: (id, draining) => fleet.drainDeployment(id, draining),
    performance: gov.performance,
    usage: gov.usage,
    predictor: gov.predictor,
    quota: gov.quota,
    setQuota(subject, limits) {
      gov.setOperatorQuota(subject, limits);
      fleet.quotaChanged();
    },
    ptu: gov.ptu,
    async processStats() {
      const queue = gov.queue.stats();
      // Pins are copied to every thread and the control plane: its own count is the process's.
      const sticky = { pins: gov.sticky.size, hits: gov.sticky.hits, misses: gov.sticky.misses };
      for (const s of threads === undefined ? [] : await threads.stats()) {
        queue.size += s.queue.size;
        queue.timedOut += s.queue.timedOut;
        queue.rejectedFull += s.queue.rejectedFull;
        queue.shed += s.queue.shed;
        queue.oldestWaitMs = Math.max(queue.oldestWaitMs, s.queue.oldestWaitMs);
        for (const [g, n] of Object.entries(s.queue.byGroup)) queue.byGroup[g] = (queue.byGroup[g] ?? 0) + n;
        sticky.hits += s.sticky.hits;
        sticky.misses += s.sticky.misses;
      }
      return { queue, sticky };
    },
    countFlagChange: (flag) => gov.metrics.flagChanges.labels(flag).inc(),
  };
}

export function industrialRoutes(gov: GovernanceAdmin, logger: Logger): Route[] {
  const flags = gov.flags;
  const change = (ctx: RouteContext, changes: [FlagName, boolean | null][]): void => {
    const before = flags.describe();
    flags.apply(changes, actorOf(ctx));
    // The audit trail: one flag's value before and after, or all of them for a bulk change.
    if (ctx.note !== undefined) {
      const after = flags.describe();
      const one = changes.length === 1 ? changes[0]![0] : undefined;
      ctx.note.target = one ?? changes.map(([f]) => f).join(',');
      ctx.note.before = one !== undefined ? before[one].enabled : Object.fromEntries(changes.map(([f]) => [f, before[f].enabled]));
      ctx.note.after = one !== undefined ? after[one].enabled : Object.fromEntries(changes.map(([f]) => [f, after[f].enabled]));
    }
    for (const [flag, enabled] of changes) {
      gov.countFlagChange(flag);
      logger.info({ audit: 'flag', actor: actorOf(ctx), flag, old: before[flag].enabled, new: flags.describe()[flag].enabled, action: enabled === null ? 'clear' : 'set', trace_id: ctx.req.id }, 'feature flag changed');
    }
  };
  /** `ids`: the ids worth showing, when the caller has them already. */
  const capacityView = (id: string, ids = gov.capacityIds()) => {
    const c = gov.capacity.stats(id);
    if (c === undefined || !ids.includes(id)) return undefined;
    const d = gov.deployment(id);
    return { ...c, group: d?.group ?? null, draining: d?.draining ?? false, routable: d !== undefined && d.blockedBy === '', blockedBy: d?.blockedBy || null };
  };
  const status = async () => {
    const f = flags.flags;
    const totals = gov.capacity.totals(gov.capacityIds());
    const { queue: q, sticky } = await gov.processStats();
    return {
      flags: flags.describe(),
      capacityGating: { enabled: f.capacity_gating, available: true, stats: { totalInFlight: totals.totalInFlight, totalRejected: totals.totalRejected, totalLimit: totals.totalLimit, deployments: totals.deployments, queued: q.size, queueTimeouts: q.timedOut, queueFullRejections: q.rejectedFull } },
      performanceRouting: { enabled: f.performance_routing, available: true, stats: { tracked: gov.performance.all().length, degraded: gov.performance.degraded() } },
      qosSwitching: { enabled: f.qos_switching, available: true, tiers: [...gov.qos.tiers.keys()], defaultTier: gov.qos.defaultTier },
      priorityRouting: { enabled: f.priority_routing, available: true, queueDepth: q.size },
      stickyRouting: { enabled: f.sticky_routing, available: true, stats: sticky },
      quotaEnforcement: { enabled: f.quota_enforcement, available: true, subjects: Object.keys(gov.quota.snapshot()).length },
      outputPrediction: { enabled: f.output_prediction, available: true, trackedLabels: gov.predictor.labels().length },
      streamInstrumentation: { enabled: f.stream_instrumentation, available: true },
      compiledChain: { enabled: f.compiled_chain, available: true },
      warmFirstRouting: { enabled: f.warm_first_routing, available: true },
      usagePatterns: { enabled: true, available: true, trackedLabels: gov.usage.labels().length },
      ptuAdvisory: { available: gov.ptu.list().length > 0, registeredDeployments: gov.ptu.list().length },
    };
  };

  const routes: Route[] = [
    { method: 'GET', path: `${P}/flags`, handle: (ctx) => reply(ctx, flags.describe()) },
    { method: 'GET', path: `${P}/flags/audit`, handle: (ctx) => reply(ctx, { entries: flags.auditLog }) },
    {
      method: 'PUT',
      path: `${P}/flags/:flag`,
      body: 'json',
      handle(ctx) {
        const flag = flagParam(ctx);
        const enabled = (ctx.body as Record<string, unknown>).enabled;
        if (typeof enabled !== 'boolean') throw new BrokerError('invalid_request', 'enabled must be true or false', { details: { field: 'enabled' } });
        change(ctx, [[flag, enabled]]);
        reply(ctx, { [flag]: flags.describe()[flag] });
      },
    },
    {
      method: 'DELETE',
      path: `${P}/flags/:flag`,
      handle(ctx) {
        const flag = flagParam(ctx);
        change(ctx, [[flag, null]]);
        reply(ctx, { [flag]: flags.describe()[flag] });
      },
    },
    {
      method: 'POST',
      path: `${P}/flags/bulk`,
      body: 'json',
      handle(ctx) {
        const changes: [FlagName, boolean | null][] = [];
        for (const [name, v] of Object.entries(ctx.body as Record<string, unknown>)) {
          if (!isFlagName(name)) throw new BrokerError('not_found', `unknown flag ${name}; flags: ${FLAG_NAMES.join(', ')}`);
          if (typeof v !== 'boolean' && v !== null) throw new BrokerError('invalid_request', `${name} must be true, false or null (clear)`, { details: { field: name } });
          changes.push([name, v]);
        }
        change(ctx, changes);
        reply(ctx, flags.describe());
      },
    },
    {
      method: 'DELETE',
      path: `${P}/flags`,
      handle(ctx) {
        const overridden = FLAG_NAMES.filter((f) => flags.describe()[f].source === 'override');
        change(ctx, overridden.map((f) => [f, null]));
        reply(ctx, flags.describe());
      },
    },

    {
      method: 'GET',
      path: `${P}/capacity`,
      handle: async (ctx) => {
        const ids = gov.capacityIds();
        reply(ctx, { ...gov.capacity.totals(ids), queue: (await gov.processStats()).queue, deployments: ids.map((id) => capacityView(id, ids)) });
      },
    },
    {
      method: 'GET',
      path: `${P}/capacity/:id`,
      handle(ctx) {
        const v = capacityView(ctx.params.id!);
        if (v === undefined) throw new BrokerError('not_found', `no deployment ${ctx.params.id}`);
        reply(ctx, v);
      },
    },
    {
      method: 'POST',
      path: `${P}/capacity/:id/register`,
      body: 'json',
      handle(ctx) {
        const id = capacityId(ctx);
        const limit = limitOf(ctx.body);
        gov.setLimit(id, limit);
        logger.info({ audit: 'capacity', actor: actorOf(ctx), deployment: id, concurrencyLimit: limit }, 'capacity registered');
        reply(ctx, capacityView(id), 201);
      },
    },
    {
      method: 'DELETE',
      path: `${P}/capacity/:id`,
      handle(ctx) {
        const id = ctx.params.id!;
        const r = gov.unregisterCapacity(id);
        if (r === 'deployment') throw new BrokerError('config_conflict', `${id} is a deployment of the fleet: remove it from the fleet config, or drain it`);
        if (r === 'unknown') throw new BrokerError('not_found', `no capacity id ${id}`);
        logger.info({ audit: 'capacity', actor: actorOf(ctx), deployment: id }, 'capacity unregistered');
        reply(ctx, { id, removed: true });
      },
    },
    {
      method: 'PUT',
      path: `${P}/capacity/:id/limits`,
      body: 'json',
      handle(ctx) {
        const id = ctx.params.id!;
        const limit = limitOf(ctx.body);
        if (gov.capacity.stats(id) === undefined) throw new BrokerError('not_found', `no deployment ${id}; register it first`);
        gov.setLimit(id, limit);
        logger.info({ audit: 'capacity', actor: actorOf(ctx), deployment: id, concurrencyLimit: limit }, 'capacity limit changed');
        reply(ctx, capacityView(id));
      },
    },
    {
      method: 'POST',
      path: `${P}/capacity/:id/drain`,
      // No body drains, as the docs say: `curl -X POST .../drain`.
      body: 'json?',
      handle(ctx) {
        const id = ctx.params.id!;
        const body = (ctx.body ?? {}) as Record<string, unknown>;
        // A misspelt field (`drainig: false`, meant as an undrain) drained: refused instead.
        for (const k of Object.keys(body)) if (k !== 'draining') throw new BrokerError('invalid_request', `unknown field ${k} (the body is {"draining": true | false})`, { details: { field: k } });
        const draining = body.draining ?? true;
        if (typeof draining !== 'boolean') throw new BrokerError('invalid_request', 'draining must be true or false', { details: { field: 'draining' } });
        if (!gov.setDraining(id, draining)) {
          // A capacity id of its own has no requests routed to it to drain.
          if (capacityView(id) !== undefined) throw new BrokerError('not_found', `${id} is a registered capacity id, not a deployment of the fleet: nothing is routed to it to drain (DELETE /api/industrial/capacity/${id} takes it back)`);
          throw new BrokerError('not_found', `no deployment ${id}`);
        }
        logger.info({ audit: 'drain', actor: actorOf(ctx), deployment: id, draining }, draining ? 'deployment draining' : 'deployment back in service');
        reply(ctx, capacityView(id));
      },
    },

    { method: 'GET', path: `${P}/performance`, handle: (ctx) => reply(ctx, { deployments: gov.performance.all(), degraded: gov.performance.degraded() }) },
    {
      method: 'GET',
      path: `${P}/performance/:id`,
      handle(ctx) {
        const s = gov.performance.snapshot(ctx.params.id!);
        if (s === undefined) throw new BrokerError('not_found', `no performance data for ${ctx.params.id}`);
        reply(ctx, s);
      },
    },

    { method: 'GET', path: `${P}/usage`, handle: (ctx) => reply(ctx, { labels: gov.usage.summary() }) },
    {
      method: 'GET',
      path: `${P}/usage/:label`,
      handle(ctx) {
        const p = gov.usage.profile(ctx.params.label!);
        if (p === undefined) throw new BrokerError('not_found', `no usage recorded for label ${ctx.params.label}`);
        reply(ctx, p);
      },
    },
    { method: 'GET', path: `${P}/predictions`, handle: (ctx) => reply(ctx, { labels: gov.predictor.stats() }) },

    { method: 'GET', path: `${P}/qos`, handle: (ctx) => reply(ctx, { enabled: flags.flags.qos_switching, defaultTier: gov.qos.defaultTier, tiers: [...gov.qos.tiers.values()] }) },
    {
      method: 'POST',
      path: `${P}/qos/resolve`,
      body: 'json',
      readOnly: true,
      handle(ctx) {
        const b = ctx.body as Record<string, unknown>;
        const str = (v: unknown, field: string): string | undefined => {
          if (v === undefined) return undefined;
          if (typeof v !== 'string') throw new BrokerError('invalid_request', `${field} must be a string`, { details: { field } });
          return v;
        };
        const apiKey = str(b.apiKey, 'apiKey');
        const policy = gov.keyPolicy(apiKey);
        const r = resolveTier(gov.qos, { keyTier: policy?.tier, headerTier: str(b.tier, 'tier'), group: str(b.group, 'group') });
        reply(ctx, { allowed: r.ok, tier: r.tier, source: r.source, reason: r.reason, apiKeyKnown: policy !== undefined, enabled: flags.flags.qos_switching });
      },
    },

    { method: 'GET', path: `${P}/quota`, handle: (ctx) => reply(ctx, { enabled: flags.flags.quota_enforcement, subjects: gov.quota.snapshot() }) },
    {
      method: 'PUT',
      path: `${P}/quota/:subject`,
      body: 'json',
      handle(ctx) {
        let subject = ctx.params.subject!;
        if (!/^(key|deployment):.+$/.test(subject)) throw new BrokerError('invalid_request', 'subject must be key:<key id>, key:<api key> or deployment:<id>');
        // A key is named by its id everywhere: in the ledger, the reply and the audit line.
        if (subject.startsWith('key:') && !isKeyId(subject.slice(4))) subject = `key:${keyId(subject.slice(4))}`;
        const b = ctx.body as Record<string, unknown>;
        // The body replaces the subject's limits: a misspelt field ("rmp") would silently clear them.
        const unknown = Object.keys(b).filter((k) => k !== 'rpm' && k !== 'tpm');
        if (unknown.length > 0) throw new BrokerError('invalid_request', `unknown field ${unknown[0]!.slice(0, 64)}: the body is {"rpm": n, "tpm": n} (either may be null or left out: no limit)`, { details: { field: unknown[0]!.slice(0, 64) } });
        const lim = (v: unknown, field: string): number | undefined => {
          if (v === undefined || v === null) return undefined;
          if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new BrokerError('invalid_request', `${field} must be a non-negative integer`, { details: { field } });
          return v;
        };
        const limits = { rpm: lim(b.rpm, 'rpm'), tpm: lim(b.tpm, 'tpm') };
        // A limit on a deployment the fleet does not have (a typo) would hold nothing; clearing one stays possible.
        const dep = subject.startsWith('deployment:') ? subject.slice('deployment:'.length) : undefined;
        if (dep !== undefined && gov.deployment(dep) === undefined && (limits.rpm !== undefined || limits.tpm !== undefined)) throw new BrokerError('not_found', `no deployment ${dep.slice(0, 128)}`);
        const before = gov.quota.usage(subject).limits;
        gov.setQuota(subject, limits);
        if (ctx.note !== undefined) {
          ctx.note.target = subject;
          ctx.note.before = before;
          ctx.note.after = gov.quota.usage(subject).limits;
        }
        logger.info({ audit: 'quota', actor: actorOf(ctx), subject, rpm: b.rpm, tpm: b.tpm }, 'quota limits changed');
        reply(ctx, { subject, ...gov.quota.usage(subject) });
      },
    },

    { method: 'GET', path: `${P}/ptu`, handle: (ctx) => reply(ctx, { deployments: gov.ptu.list() }) },
    { method: 'GET', path: `${P}/ptu/recommendations`, handle: (ctx) => reply(ctx, { recommendations: gov.ptu.recommendations() }) },
    {
      method: 'GET',
      path: `${P}/ptu/:name/headroom`,
      handle(ctx) {
        const q = new URLSearchParams(ctx.req.query);
        const raw = q.get('currentTpm');
        const current = raw === null ? NaN : Number(raw);
        if (!Number.isFinite(current) || current < 0) throw new BrokerError('invalid_request', 'currentTpm query parameter must be a non-negative number', { details: { field: 'currentTpm' } });
        const h = gov.ptu.headroom(ctx.params.name!, current);
        if (h === undefined) throw new BrokerError('not_found', `no PTU deployment ${ctx.params.name}`);
        reply(ctx, h);
      },
    },

    { method: 'GET', path: `${P}/status`, handle: async (ctx) => reply(ctx, await status()) },
  ];
  return routes.map((r) => ({ ...r, admin: true }));
}
