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
import { WaitBoard } from './wait-board.ts';
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
  /** Shared-memory counters from the control plane; a thread of its own otherwise. */
  readonly capacity?: CapacityCounters;
  readonly quota?: QuotaLedger;
  /** Cell 0: waiters across every thread's queue (see WaitQueue). */
  readonly waiters?: Int32Array;
  /** A freed slot whose next waiter waits on another thread: hand the wake-up there. */
  readonly wakeElsewhere?: (group: string, thread: number) => void;
  /**
   * Whether this instance owns what is shared (default true): it writes the quota
   * limits of the config into the shared ledger and reports the process-wide gauges
   * (capacity, degraded). One per process does: the control plane's, or the single
   * one with FRONT_THREADS=0. Data-plane threads read what it wrote.
   */
  readonly owner?: boolean;
  /** The shared wait board and this thread's row in it (data-plane threads). */
  readonly board?: { readonly buffer: SharedArrayBuffer; readonly thread: number };
  /** Hears what this thread learned from a request, to share it with the other threads. */
  readonly onLearn?: (e: Learned) => void;
}

/**
 * What a finished request or a failed attempt teaches the learning policies
 * (performance, cool-down, usage, output prediction). Every thread learns from every
 * thread's requests: the control plane relays these.
 */
export type Learned =
  | { readonly k: 'done'; readonly dep: string | null; readonly label: string; readonly ok: boolean | null; readonly ttftMs: number | null; readonly durationMs: number; readonly prompt: number; readonly completion: number; readonly predicted: number; readonly predict: boolean }
  | { readonly k: 'fail'; readonly dep: string }
  /** A degraded deployment was probed: its probe interval starts again on every thread. */
  | { readonly k: 'probe'; readonly dep: string }
  /** A sticky pin set (dep) or dropped (null). */
  | { readonly k: 'pin'; readonly key: string; readonly dep: string | null };

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
  readonly capacity: CapacityCounters;
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
  private readonly onLearn: ((e: Learned) => void) | undefined;
  private readonly owner: boolean;
  private readonly board: WaitBoard | undefined;

  constructor(o: GovernanceOptions) {
    this.capacity = o.capacity ?? new CapacityCounters();
    this.onLearn = o.onLearn;
    this.config = o.config;
    this.flags = o.flags;
    this.metrics = o.metrics;
    this.now = o.now ?? Date.now;
    this.prefixBytes = o.stickyPrefixBytes ?? 2048;
    const sched = o.config.scheduler;
    this.board = o.board === undefined ? undefined : new WaitBoard(o.board.buffer, o.board.thread, sched.agingMs);
    this.board?.setGroups(o.config.modelGroups.keys());
    this.queue = new WaitQueue(sched.maxQueue, sched.agingMs, this.now, o.waiters, this.board);
    this.performance = new PerformanceTracker(o.config.performance, this.now);
    this.sticky = new StickyPins(o.stickyTtlMs, 100_000, this.now);
    this.quota = o.quota ?? new QuotaLedger(this.now);
    this.owner = o.owner ?? true;
    if (this.owner) for (const [key, p] of o.config.apiKeys) if (p.rpm !== undefined || p.tpm !== undefined) this.quota.setLimits(`key:${key}`, { rpm: p.rpm, tpm: p.tpm });
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
        wakeElsewhere: o.wakeElsewhere,
        setsQuotaLimits: o.owner ?? true,
        onProbe: o.onLearn === undefined ? undefined : (dep) => o.onLearn!({ k: 'probe', dep }),
        onPin: o.onLearn === undefined ? undefined : (key, dep) => o.onLearn!({ k: 'pin', key, dep }),
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
    this.registerMetrics(this.owner);
  }

  get qos(): QosConfig {
    return this.config.qos;
  }

  /** Discovery found a new fleet: its deployments get slots and state (existing ids keep theirs). */
  adopt(config: BrokerConfig): void {
    this.config = config;
    this.board?.setGroups(config.modelGroups.keys());
    this.scheduler.register(config.modelGroups.values());
  }

  /** Another thread freed a slot of `group` and handed the wake-up here. */
  wake(group: string): void {
    this.scheduler.handOff(group);
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
    if (countsAgainstDeployment) this.learned({ k: 'fail', dep: lease.dep.config.id });
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
    const predict = a.flags.output_prediction && u.ok === true && u.completionTokens > 0;
    if (predict) this.metrics.predictionError.observe(a.predictedOutput - u.completionTokens);
    this.learned({ k: 'done', dep: lease?.dep.config.id ?? null, label: a.label, ok: u.ok, ttftMs: u.ttftMs, durationMs: u.durationMs, prompt: u.promptTokens, completion: u.completionTokens, predicted: a.predictedOutput, predict });
  }

  private learned(e: Learned): void {
    this.learn(e);
    this.onLearn?.(e);
  }

  /** Applies a lesson, this thread's or another's. */
  learn(e: Learned): void {
    if (e.k === 'probe') {
      this.performance.started(e.dep);
      return;
    }
    if (e.k === 'pin') {
      if (e.dep === null) this.sticky.drop(e.key);
      else this.sticky.pin(e.key, e.dep);
      return;
    }
    if (e.k === 'fail') {
      this.performance.failed(e.dep);
      const d = this.scheduler.get(e.dep);
      if (d !== undefined) this.scheduler.failed(d);
      return;
    }
    if (e.dep !== null) {
      if (e.ok) {
        const genMs = e.durationMs - (e.ttftMs ?? 0);
        this.performance.succeeded(e.dep, e.ttftMs ?? e.durationMs, e.completion > 0 && genMs > 0 ? (e.completion * 1000) / genMs : null);
        const d = this.scheduler.get(e.dep);
        if (d !== undefined) this.scheduler.succeeded(d);
      } else if (e.ok === false) {
        this.performance.failed(e.dep);
      }
    }
    if (e.prompt + e.completion > 0) this.usage.record(e.label, this.now(), { prompt: e.prompt, completion: e.completion });
    if (e.predict) this.predictor.observe(e.label, e.predicted, e.completion);
  }

  deployment(id: string): DeploymentState | undefined {
    return this.scheduler.get(id);
  }

  private registerMetrics(processGauges: boolean): void {
    const m = this.metrics;
    // Each thread reports its own queue (the exposition sums them); the shared numbers once.
    m.sources.queueDepth = () => this.queue.size;
    if (!processGauges) return;
    m.sources.capacity = () => this.capacity.ids().map((id) => this.capacity.stats(id)!);
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
