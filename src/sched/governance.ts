// Governance of LLM requests: everything the scheduler and the policies need, in one
// place, and the per-request admission that applies the enabled policies in order:
// QoS tier → priority → label → output prediction → API-key quota. The scheduler
// then picks a deployment; completion() gives back what the request took and feeds
// what it used to the learning policies.
import { BrokerError } from '../errors.ts';
import type { ApiKeyPolicy, BrokerConfig, ModelGroupConfig } from '../config/broker-config.ts';
import { FlagStore, type FlagSet } from '../config/flags.ts';
import type { Metrics } from '../obs/metrics.ts';
import { CapacityCounters } from './capacity.ts';
import { WaitQueue } from './queue.ts';
import { Scheduler, type DeploymentState, type Lease } from './scheduler.ts';
import { PerformanceTracker } from '../policy/performance.ts';
import { StickyPins, prefixKey } from '../policy/sticky.ts';
import { resolveTier, type QosConfig, type QosTier } from '../policy/qos.ts';
import { QuotaLedger, type Reservation } from '../policy/quota.ts';
import { OutputPredictor } from '../policy/prediction.ts';
import { UsageProfiles } from '../policy/usage.ts';
import { PtuAdvisor } from '../policy/ptu.ts';
import { apiKeyOf } from '../guard/api-key.ts';

export interface GovernanceOptions {
  readonly config: BrokerConfig;
  readonly flags: FlagStore;
  readonly metrics: Metrics;
  readonly stickyTtlMs: number;
  readonly stickyPrefixBytes?: number;
  readonly now?: () => number;
  readonly random?: () => number;
}

/** What admission decided for one request. */
export interface Admitted {
  readonly flags: FlagSet;
  readonly apiKey: string | undefined;
  readonly tier: QosTier | null;
  readonly tierSource: string | null;
  readonly priority: number;
  readonly label: string;
  readonly stickyKey: string | undefined;
  /** Estimated prompt tokens plus predicted (or requested) output tokens; 0 without quota enforcement. */
  readonly reserveTokens: number;
  readonly predictedOutput: number;
  /** The client body, with max output tokens capped by the tier if needed. */
  readonly body: Record<string, unknown>;
  readonly keyReservation: Reservation | null;
  readonly since: number;
}

const PRIORITY_NAMES: Record<string, number> = { low: 1, normal: 5, high: 8, critical: 9 };

export class Governance {
  readonly flags: FlagStore;
  readonly capacity = new CapacityCounters();
  readonly queue: WaitQueue;
  readonly performance: PerformanceTracker;
  readonly sticky: StickyPins;
  readonly quota: QuotaLedger;
  readonly predictor = new OutputPredictor();
  readonly usage = new UsageProfiles();
  readonly ptu: PtuAdvisor;
  readonly scheduler: Scheduler;
  private config: BrokerConfig;
  private readonly now: () => number;
  readonly metrics: Metrics;
  private readonly prefixBytes: number;

  constructor(o: GovernanceOptions) {
    this.config = o.config;
    this.flags = o.flags;
    this.metrics = o.metrics;
    this.now = o.now ?? Date.now;
    this.prefixBytes = o.stickyPrefixBytes ?? 2048;
    const sched = o.config.scheduler;
    this.queue = new WaitQueue(sched.maxQueue, sched.agingMs, this.now);
    this.performance = new PerformanceTracker(o.config.performance, this.now);
    this.sticky = new StickyPins(o.stickyTtlMs, 100_000, this.now);
    this.quota = new QuotaLedger(this.now);
    for (const [key, p] of o.config.apiKeys) if (p.rpm !== undefined || p.tpm !== undefined) this.quota.setLimits(`key:${key}`, { rpm: p.rpm, tpm: p.tpm });
    this.ptu = new PtuAdvisor(this.usage);
    for (const d of o.config.ptu) this.ptu.register(d);
    this.scheduler = new Scheduler(
      {
        router: o.config.router,
        scheduler: sched,
        capacity: this.capacity,
        queue: this.queue,
        performance: this.performance,
        sticky: this.sticky,
        quota: this.quota,
        now: this.now,
        random: o.random ?? Math.random,
        onStickyLookup: (hit) => {
          if (hit) this.sticky.hits++;
          else this.sticky.misses++;
          o.metrics.stickyLookups.labels(hit ? 'hit' : 'miss').inc();
        },
      },
      o.flags.flags,
    );
    this.scheduler.register(o.config.modelGroups.values());
    // Stages are rebuilt once per flag change, never checked per request.
    o.flags.onChange((f) => this.scheduler.setFlags(f));
    this.registerMetrics();
  }

  get qos(): QosConfig {
    return this.config.qos;
  }

  /** Discovery found a new fleet: its deployments get slots and state (existing ids keep theirs). */
  adopt(config: BrokerConfig): void {
    this.config = config;
    this.scheduler.register(config.modelGroups.values());
  }

  keyPolicy(apiKey: string | undefined): ApiKeyPolicy | undefined {
    return apiKey === undefined ? undefined : this.config.apiKeys.get(apiKey);
  }

  /** Applies the enabled admission policies. Throws forbidden (QoS) or quota_exceeded. */
  admit(headers: Readonly<Record<string, string>>, body: Record<string, unknown>, group: ModelGroupConfig, api: 'openai' | 'ollama', kind: string): Admitted {
    const flags = this.flags.flags;
    const apiKey = apiKeyOf(headers);
    const policy = this.keyPolicy(apiKey);
    let tier: QosTier | null = null;
    let tierSource: string | null = null;
    if (flags.qos_switching) {
      const r = resolveTier(this.config.qos, { keyTier: policy?.tier, headerTier: headers['x-broker-qos'], group: group.name });
      if (!r.ok) throw new BrokerError('forbidden', r.reason);
      tier = r.tier;
      tierSource = r.source;
      const cap = tier.maxOutputTokens;
      if (cap !== null) body = capOutputTokens(body, cap, api);
    }
    const priority = flags.priority_routing ? priorityOf(headers['x-broker-priority']) ?? policy?.priority ?? tier?.priority ?? 5 : 5;
    const label = headers['x-broker-label'] || policy?.label || (apiKey !== undefined ? `key:${apiKey.slice(0, 8)}` : `${api}:${kind}`);
    const maxTokens = maxOutputTokensOf(body);
    let predictedOutput: number;
    if (flags.output_prediction) predictedOutput = this.predictor.predict(label, maxTokens).tokens;
    else predictedOutput = maxTokens ?? this.config.scheduler.defaultOutputTokens;
    // Only quotas reserve tokens: without them, no need to walk the prompt.
    const reserveTokens = flags.quota_enforcement ? promptTokensOf(body) + predictedOutput : 0;
    let keyReservation: Reservation | null = null;
    if (flags.quota_enforcement && apiKey !== undefined && (policy?.rpm !== undefined || policy?.tpm !== undefined)) {
      try {
        keyReservation = this.quota.reserve([`key:${apiKey}`], reserveTokens);
      } catch (err) {
        this.metrics.quotaRejections.labels('api_key').inc();
        throw err;
      }
    }
    return {
      flags,
      apiKey,
      tier,
      tierSource,
      priority,
      label,
      stickyKey: flags.sticky_routing ? prefixKey(body, group.name, this.prefixBytes) : undefined,
      reserveTokens,
      predictedOutput,
      body,
      keyReservation,
      since: this.now(),
    };
  }

  acquire(a: Admitted, group: ModelGroupConfig, tried: ReadonlySet<string>, signal: AbortSignal): Promise<Lease> {
    return this.scheduler
      .acquire({ group, tried, priority: a.priority, tier: a.tier, stickyKey: a.stickyKey, tokens: a.reserveTokens, since: a.since, signal })
      .catch((err: BrokerError) => {
        if (err.code === 'capacity_exhausted' || err.code === 'queue_timeout') this.metrics.capacityRejections.labels(group.name, err.code).inc();
        if (err.code === 'quota_exceeded') this.metrics.quotaRejections.labels('deployment').inc();
        throw err;
      });
  }

  /** An attempt on `lease` failed before the first byte: give back what it took. */
  attemptFailed(lease: Lease, countsAgainstDeployment: boolean): void {
    lease.reservation?.release();
    lease.release();
    if (countsAgainstDeployment) {
      this.performance.failed(lease.dep.config.id);
      this.scheduler.failed(lease.dep);
    }
  }

  /** The request is over: release, reconcile, learn. Called exactly once per admitted request. */
  completed(a: Admitted, lease: Lease | null, u: { ok: boolean | null; promptTokens: number; completionTokens: number; ttftMs: number | null; durationMs: number }): void {
    lease?.release();
    const used = u.promptTokens + u.completionTokens;
    const reconcile = (r: Reservation | null): void => {
      if (r === null) return;
      if (used > 0) r.reconcile(used);
      else r.release();
    };
    reconcile(a.keyReservation);
    reconcile(lease?.reservation ?? null);
    if (lease !== null) {
      const id = lease.dep.config.id;
      if (u.ok) {
        const genMs = u.durationMs - (u.ttftMs ?? 0);
        this.performance.succeeded(id, u.ttftMs ?? u.durationMs, u.completionTokens > 0 && genMs > 0 ? (u.completionTokens * 1000) / genMs : null);
        this.scheduler.succeeded(lease.dep);
      } else if (u.ok === false) {
        this.performance.failed(id);
      }
    }
    if (used > 0) this.usage.record(a.label, this.now(), { prompt: u.promptTokens, completion: u.completionTokens });
    if (a.flags.output_prediction && u.ok === true && u.completionTokens > 0) {
      this.predictor.observe(a.label, a.predictedOutput, u.completionTokens);
      this.metrics.predictionError.observe(a.predictedOutput - u.completionTokens);
    }
  }

  deployment(id: string): DeploymentState | undefined {
    return this.scheduler.get(id);
  }

  private registerMetrics(): void {
    const m = this.metrics;
    m.sources.capacity = () => this.capacity.ids().map((id) => this.capacity.stats(id)!);
    m.sources.queueDepth = () => this.queue.size;
    m.sources.degraded = () => this.performance.degraded().length;
  }
}

function priorityOf(h: string | undefined): number | undefined {
  if (h === undefined) return undefined;
  if (/^[0-9]$/.test(h)) return Number(h);
  return PRIORITY_NAMES[h.toLowerCase()];
}

function maxOutputTokensOf(body: Record<string, unknown>): number | undefined {
  const v = body.max_tokens ?? body.max_completion_tokens ?? (body.options as Record<string, unknown> | undefined)?.num_predict;
  return typeof v === 'number' && v > 0 ? v : undefined;
}

/** Lowers the output-token limit in the field the client API uses (a copy: the client's body is left alone). */
function capOutputTokens(body: Record<string, unknown>, cap: number, api: 'openai' | 'ollama'): Record<string, unknown> {
  const max = maxOutputTokensOf(body);
  if (max !== undefined && max <= cap) return body;
  if (api === 'openai') {
    const { max_completion_tokens: _dropped, ...rest } = body;
    return { ...rest, max_tokens: cap };
  }
  return { ...body, options: { ...((body.options as Record<string, unknown> | undefined) ?? {}), num_predict: cap } };
}

/** Prompt tokens estimated as characters / 4 of the prompt text. */
function promptTokensOf(body: Record<string, unknown>): number {
  let chars = 0;
  if (Array.isArray(body.messages)) {
    for (const m of body.messages) {
      const c = (m as { content?: unknown })?.content;
      chars += typeof c === 'string' ? c.length : c === undefined ? 0 : JSON.stringify(c).length;
    }
  }
  if (typeof body.prompt === 'string') chars += body.prompt.length;
  if (typeof body.system === 'string') chars += body.system.length;
  return Math.ceil(chars / 4);
}
