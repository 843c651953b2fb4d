// Governance of LLM requests on one thread: the policies (flags, capacity, queue,
// performance, sticky, quota, prediction, usage, PTU) built from one fleet config, and
// the three moments of a request: admission (sched/admission.ts), a lease from the
// scheduler (again for a retry), and completion, which gives back what the request
// took and feeds what it used to the learning policies, here and, relayed, on the
// other threads.
import { BrokerError } from '../errors.ts';
import type { ApiKeyPolicy, BrokerConfig, ModelGroupConfig } from '../config/broker-config.ts';
import { FlagStore } from '../config/flags.ts';
import type { Metrics } from '../obs/metrics.ts';
import { CapacityCounters } from './capacity.ts';
import { WaitQueue } from './queue.ts';
import { WaitBoard } from './wait-board.ts';
import { Scheduler, type Lease } from './scheduler.ts';
import type { DeploymentState } from '../fleet/deployments.ts';
import { PerformanceTracker } from '../policy/performance.ts';
import { StickyPins } from '../policy/sticky.ts';
import { admit, knownKeyOf, reserveQuota, tierOutputCap, type Admitted, type AdmissionPolicies } from './admission.ts';
import type { Caller } from '../front/reply.ts';
import { keyId } from '../guard/api-key.ts';
import { keyHash } from '../guard/identity.ts';
import type { LlmRequest } from '../llm/request.ts';
import { resolveTier, type QosConfig } from '../policy/qos.ts';
import { QuotaLedger, type QuotaLimits, type Reservation } from '../policy/quota.ts';
import { OutputPredictor } from '../policy/prediction.ts';
import { UsageProfiles } from '../policy/usage.ts';
import { PtuAdvisor } from '../policy/ptu.ts';
import type { AbortLike } from '../abort.ts';
import type { BudgetGate } from '../track/budget.ts';

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
  /** A newcomer to the full queue claimed a lower-priority waiter of another thread: that thread sheds one of `level`. */
  readonly shedElsewhere?: (thread: number, level: number) => void;
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
  /** Budgets per API key (request tracking on): admission refuses a key over its budget. */
  readonly budgets?: BudgetGate;
}

/**
 * What a finished request or a failed attempt teaches the learning policies
 * (performance, cool-down, usage, output prediction). Every thread learns from every
 * thread's requests: the control plane relays these.
 */
export type Learned =
  | { readonly k: 'done'; readonly dep: string | null; readonly label: string; readonly ok: boolean | null; readonly ttftMs: number | null; readonly durationMs: number; readonly prompt: number; readonly completion: number; readonly predicted: number; readonly predict: boolean }
  | { readonly k: 'fail'; readonly dep: string }
  /** The request failed on `dep`, its last try, before the first byte: every deployment it tried failed (the fleet's analytics count it as a request in error there). */
  | { readonly k: 'exhausted'; readonly dep: string; readonly durationMs: number }
  /** A degraded deployment was probed: its probe interval starts again on every thread. */
  | { readonly k: 'probe'; readonly dep: string }
  /** A sticky pin set (dep) or dropped (null). */
  | { readonly k: 'pin'; readonly key: string; readonly dep: string | null };

export type { Admitted } from './admission.ts';

/** Usage of a finished request, for reconciliation and learning. */
export interface RequestUsage {
  /** null: the client went away, which says nothing about the deployment. */
  readonly ok: boolean | null;
  readonly promptTokens: number;
  readonly completionTokens: number;
  readonly ttftMs: number | null;
  readonly durationMs: number;
  /** Answered by the response cache: the key's quota gets the request back as well as its tokens (docs/governance.md). */
  readonly cached?: boolean;
  /** No lease left: the deployment whose failure before the first byte ended the request. */
  readonly failedOn?: string;
}

/** What the proxy needs once a request is admitted: leases, and their ends. */
export interface Leases {
  /** `queue` false: no wait when the group is full (capacity_exhausted at once: the request has a fallback). */
  acquire(a: Admitted, group: ModelGroupConfig, tried: ReadonlySet<string>, signal: AbortLike, queue?: boolean): Promise<Lease>;
  /** An attempt failed before the first byte: what it took is given back; counts against the deployment unless the client left. */
  attemptFailed(lease: Lease, countsAgainstDeployment: boolean): void;
  /** A deployment that cannot carry the request was passed over, no call made: everything it took comes back. */
  attemptSkipped(a: Admitted, lease: Lease): void;
  /** The request is over. Called exactly once per admitted request. */
  completed(a: Admitted, lease: Lease | null, u: RequestUsage): void;
  /** Reserves the key's quota admission deferred (the cache missed); throws quota_exceeded. A promise only while the key's lease is topped up. */
  reserveQuota(a: Admitted): Admitted | Promise<Admitted>;
}

export class Governance implements Leases {
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
    this.board?.setGroups(groupNames(o.config.modelGroups));
    this.zeroShed(o.config);
    this.queue = new WaitQueue(sched.maxQueue, sched.agingMs, this.now, {
      shared: o.waiters,
      board: this.board,
      // Its row of the wait board (a data-plane thread, or the control plane's gRPC queue beside
      // them); without one (FRONT_THREADS=0, or no row left for the control plane) it sheds its own waiters only.
      row: o.board?.thread,
      shedElsewhere: o.shedElsewhere,
    });
    this.performance = new PerformanceTracker(o.config.performance, this.now);
    this.sticky = new StickyPins(o.stickyTtlMs, 100_000, this.now);
    this.quota = o.quota ?? new QuotaLedger(this.now);
    this.owner = o.owner ?? true;
    if (this.owner) for (const [key, p] of o.config.apiKeys) if (p.rpm !== undefined || p.tpm !== undefined) this.quota.setLimits(`key:${keyId(key)}`, { rpm: p.rpm, tpm: p.tpm });
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
        quotaOverridden: (subject) => this.operatorQuota.has(subject),
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
    this.scheduler.register(new Set(o.config.modelGroups.values()), o.config.servers);
    // Stages are rebuilt once per flag change, never checked per request.
    o.flags.onChange((f) => this.scheduler.setFlags(f));
    this.registerMetrics(this.owner);
    const gov = this;
    this.admission = {
      get flags() {
        return gov.flags.flags;
      },
      get qos() {
        return gov.config.qos;
      },
      keyPolicy: (apiKey) => this.keyPolicy(apiKey),
      keyPolicyById: (id) => this.keyPolicyById(id),
      predictor: this.predictor,
      quota: this.quota,
      get defaultOutputTokens() {
        return gov.config.scheduler.defaultOutputTokens;
      },
      stickyPrefixBytes: this.prefixBytes,
      now: this.now,
      onKeyQuotaRejection: () => this.metrics.quotaRejections.labels('api_key').inc(),
      admittedLabel: (label) => this.labels.has(label),
      budgets: o.budgets,
    };
  }

  private readonly admission: AdmissionPolicies;

  /** Labels the config names (keys' and PTU deployments'), and runtime keys' labels. */
  private labels = new Set<string>();

  /** Each group's shed count from 0, before any shed: a rate over it is 0, not "no data", and an alert on it can fire on the first. */
  private zeroShed(config: BrokerConfig): void {
    for (const name of groupNames(config.modelGroups)) this.metrics.queueShed.labels(name).inc(0);
  }

  private refreshLabels(): void {
    const labels = new Set<string>();
    for (const p of this.config.apiKeys.values()) if (p.label !== undefined) labels.add(p.label);
    for (const p of this.runtimeKeys.values()) if (p.label !== undefined) labels.add(p.label);
    for (const d of this.config.ptu) if (d.label !== undefined) labels.add(d.label);
    this.labels = labels;
  }

  get qos(): QosConfig {
    return this.config.qos;
  }

  get current(): BrokerConfig {
    return this.config;
  }

  /** A new fleet (discovery, or a runtime change): its deployments get slots (existing ids keep theirs). */
  adopt(config: BrokerConfig): void {
    const before = this.config;
    this.config = config;
    this.board?.setGroups(groupNames(config.modelGroups));
    this.zeroShed(config);
    this.scheduler.register(new Set(config.modelGroups.values()), config.servers);
    this.scheduler.configure(config.scheduler);
    this.refreshLabels();
    this.queue.setMaxSize(config.scheduler.maxQueue);
    this.queue.setAgingMs(config.scheduler.agingMs);
    this.performance.setThresholds(config.performance);
    this.syncPtu(config);
    // A limit set through the admin API holds until restart, over the file's (register() wrote it).
    for (const [id, limit] of this.capacityLimits) this.applyCapacityLimit(id, limit);
    if (!this.owner) return;
    // The file's keys, as the new file has them: a limit changed or added is in force now, and
    // a key gone from the file (or its limits) has its own others (a key record's), or none.
    // Before, they kept the limits of the file the broker started with until it restarted.
    const keys = new Set([...before.apiKeys.keys(), ...config.apiKeys.keys()].map((k) => `key:${keyId(k)}`));
    for (const subject of keys) if (!this.operatorQuota.has(subject)) this.quota.setLimits(subject, this.ownLimits(subject));
    // The fleet file's deployment limits were set again: an operator's stay on top.
    for (const [subject, limits] of this.operatorQuota) this.quota.setLimits(subject, limits);
  }

  /** The PTU registry as the new config has it: deployments gone from it leave, changed ones are replaced. */
  private syncPtu(config: BrokerConfig): void {
    const names = new Set(config.ptu.map((d) => d.name));
    for (const d of this.ptu.list()) if (!names.has(d.name)) this.ptu.unregister(d.name);
    for (const d of config.ptu) this.ptu.register(d);
  }

  /**
   * Limits an operator set at run time (PUT /api/industrial/quota/:subject), by subject. They
   * win over the fleet file's and a key record's until replaced, and travel to the other
   * replicas with the fleet's operator state (fleet/manager.ts).
   */
  private readonly operatorQuota = new Map<string, QuotaLimits>();

  setOperatorQuota(subject: string, limits: QuotaLimits): void {
    const cleared = limits.rpm === undefined && limits.tpm === undefined;
    if (cleared) this.operatorQuota.delete(subject);
    else this.operatorQuota.set(subject, { rpm: limits.rpm, tpm: limits.tpm });
    // Cleared: the subject's own limits (its key record's, the fleet file's) are in force again, not none.
    this.quota.setLimits(subject, cleared ? this.ownLimits(subject) : limits);
  }

  operatorQuotas(): [string, QuotaLimits][] {
    return [...this.operatorQuota];
  }

  /** Another replica's operator limits: in force here; a subject they no longer name gets its own limits back. */
  replaceOperatorQuotas(list: readonly (readonly [string, QuotaLimits])[]): void {
    const next = new Map(list.map(([s, l]) => [s, l] as const));
    for (const subject of this.operatorQuota.keys()) if (!next.has(subject)) this.quota.setLimits(subject, this.ownLimits(subject));
    this.operatorQuota.clear();
    for (const [subject, limits] of next) this.setOperatorQuota(subject, limits);
  }

  /** A subject's limits from the fleet file or its key record, without an operator's. */
  private ownLimits(subject: string): QuotaLimits {
    if (subject.startsWith('deployment:')) {
      const d = this.scheduler.get(subject.slice('deployment:'.length));
      return { rpm: d?.config.rpm, tpm: d?.config.tpm };
    }
    const id = subject.slice('key:'.length);
    for (const [key, p] of this.config.apiKeys) if (keyId(key) === id) return { rpm: p.rpm, tpm: p.tpm };
    const k = this.runtimeKeyLimits.get(id);
    return k ?? {};
  }

  /** Runtime keys' own limits, by key id (ownLimits). */
  private runtimeKeyLimits = new Map<string, QuotaLimits>();

  /** Concurrency limits set through the admin API (PUT /api/industrial/capacity/:id/limits), by deployment id. */
  private readonly capacityLimits = new Map<string, number>();

  /** An operator's concurrency limit for a deployment (or a capacity id of its own): in force until restart, whatever the config does meanwhile. */
  setCapacityLimit(id: string, limit: number): void {
    this.capacityLimits.set(id, limit);
    this.applyCapacityLimit(id, limit);
  }

  /** A deployment's limit, or a capacity id of its own (registered, not routed). */
  private applyCapacityLimit(id: string, limit: number): void {
    this.unregistered.delete(id);
    if (!this.scheduler.setLimit(id, limit)) this.capacity.register(id, limit);
  }

  /** Capacity ids of their own taken back (DELETE /api/industrial/capacity/:id): out of the views and metrics. */
  private readonly unregistered = new Set<string>();

  /**
   * Takes back a capacity id registered through the admin API that is no deployment of the
   * fleet (its slot stays in the shared table, unused, as a removed deployment's does).
   */
  unregisterCapacity(id: string): 'removed' | 'deployment' | 'unknown' {
    const d = this.scheduler.get(id);
    // A fleet deployment, or one removed from the fleet whose last requests are still running.
    if (d !== undefined && (!this.scheduler.deployments.removed(id) || this.capacity.inFlight(d.slot) > 0)) return 'deployment';
    if (this.capacity.stats(id) === undefined || this.unregistered.has(id)) return 'unknown';
    this.capacityLimits.delete(id);
    this.unregistered.add(id);
    return 'removed';
  }

  /** Another thread freed a slot of `group` and handed the wake-up here. */
  wake(group: string): void {
    this.scheduler.handOff(group);
  }

  /** Another thread's newcomer claimed one of this thread's waiters of `level`: it is shed. */
  shed(level: number): void {
    this.queue.shed(level);
  }

  /**
   * A data-plane thread died with leases: its slots come back, and as many waiters (on any
   * thread) as they free try again. Else the deployment stayed "full" until the process
   * restarted. How many slots came back (deployment and server slots).
   */
  reclaimThread(row: number): number {
    const freed = this.capacity.reclaim(row);
    let total = 0;
    for (const n of freed.values()) total += n;
    for (const d of this.scheduler.all()) {
      const n = Math.max(freed.get(d.slot) ?? 0, d.serverSlot >= 0 ? (freed.get(d.serverSlot) ?? 0) : 0);
      for (let i = 0; i < n; i++) this.wake(d.group);
    }
    return total;
  }

  keyPolicy(apiKey: string | undefined): ApiKeyPolicy | undefined {
    if (apiKey === undefined) return undefined;
    return this.config.apiKeys.get(apiKey) ?? (this.runtimeKeys.size === 0 ? undefined : this.runtimeKeys.get(keyHash(apiKey)));
  }

  /** A known key's policy by its id (k_…): what a session made from that key is held to. */
  keyPolicyById(id: string): ApiKeyPolicy | undefined {
    const keys = this.config.apiKeys;
    if (this.fileKeysById?.keys !== keys) this.fileKeysById = { keys, byId: new Map([...keys].map(([k, p]) => [keyId(k), p])) };
    return this.fileKeysById.byId.get(id) ?? this.runtimeKeysById.get(id);
  }

  /** The file's keys by id, for the config they were read from. */
  private fileKeysById: { keys: ReadonlyMap<string, ApiKeyPolicy>; byId: Map<string, ApiKeyPolicy> } | undefined;
  private runtimeKeysById = new Map<string, ApiKeyPolicy>();

  /**
   * The highest priority an inference request with this key may have (infer/admission.ts):
   * the key's priority, else its QoS tier's (with qos_switching), else 5, as admit() gives
   * an LLM request; x-broker-priority may only lower it.
   */
  priorityCeiling(apiKey: string | undefined, caller?: Caller): number {
    const policy = knownKeyOf(this.admission, apiKey, caller)?.policy;
    if (policy?.priority !== undefined) return policy.priority;
    if (this.admission.flags.qos_switching) return resolveTier(this.config.qos, { keyTier: policy?.tier ?? caller?.tier }).tier.priority;
    return 5;
  }

  /** Keys made through /api/auth/keys, by SHA-256: known keys like the file's, with their tier, label and quotas. */
  private runtimeKeys = new Map<string, ApiKeyPolicy>();

  setRuntimeKeys(keys: readonly { hash: string; id: string; role?: string | undefined; tier: string | undefined; priority: number | undefined; label: string | undefined; rpm: number | undefined; tpm: number | undefined }[]): void {
    this.runtimeKeys = new Map(keys.map((k) => [k.hash, Object.freeze({ role: k.role, tier: k.tier, priority: k.priority, label: k.label, rpm: k.rpm, tpm: k.tpm })]));
    this.runtimeKeysById = new Map(keys.map((k) => [k.id, this.runtimeKeys.get(k.hash)!]));
    this.runtimeKeyLimits = new Map(keys.map((k) => [k.id, { rpm: k.rpm, tpm: k.tpm }]));
    // A key's own limits, unless an operator set others since (a key change elsewhere re-reads them all).
    if (this.owner) for (const k of keys) if ((k.rpm !== undefined || k.tpm !== undefined) && !this.operatorQuota.has(`key:${k.id}`)) this.quota.setLimits(`key:${k.id}`, { rpm: k.rpm, tpm: k.tpm });
    this.refreshLabels();
  }

  /** Admission of one typed request (sched/admission.ts), its key's quota deferred to reserveQuota(). Throws forbidden (QoS) or budget_exceeded. */
  admit(r: LlmRequest, group: ModelGroupConfig): Admitted | Promise<Admitted> {
    // The key's quota is reserved by the proxy after the response cache missed: a hit takes none.
    return admit(this.admission, r, group, { deferQuota: true });
  }

  /**
   * Whether the caller may use the group: its key's tier (or its session's or token's), or the
   * x-broker-qos it sends, allows it (with qos_switching; else every group). Model lists show
   * only those: a picker built from them offered groups that then answered 403.
   */
  mayUse(apiKey: string | undefined, caller: Caller | undefined, headerTier: string | undefined, group: ModelGroupConfig): boolean {
    if (!this.admission.flags.qos_switching) return true;
    const policy = knownKeyOf(this.admission, apiKey, caller)?.policy;
    return resolveTier(this.config.qos, { keyTier: policy?.tier ?? caller?.tier, headerTier, group: group.name }).ok;
  }

  /** The output limit the request's QoS tier will put on it (Responses' truncation counts with it). */
  outputCap(r: LlmRequest, group: ModelGroupConfig): number | undefined {
    return tierOutputCap(this.admission, r, group);
  }

  reserveQuota(a: Admitted): Admitted | Promise<Admitted> {
    return reserveQuota(this.admission, a);
  }

  /** A lease on a deployment of `group` for an admitted request, waiting in the queue if every one is full. */
  acquire(a: Admitted, group: ModelGroupConfig, tried: ReadonlySet<string>, signal: AbortLike, queue = true): Promise<Lease> {
    return this.scheduler
      .acquire({ group, tried, priority: a.priority, tier: a.tier, stickyKey: a.stickyKey, tokens: a.reserveTokens, since: a.since, signal, queue })
      .catch((err: BrokerError) => {
        // Not queued (`queue` false): the request goes on to a fallback group, refused by none.
        if (queue && (err.code === 'capacity_exhausted' || err.code === 'queue_timeout')) this.metrics.capacityRejections.labels(group.name, err.code).inc();
        if (err.details?.shed === true) this.metrics.queueShed.labels(group.name).inc();
        if (queue && err.code === 'quota_exceeded') this.metrics.quotaRejections.labels('deployment').inc();
        throw err;
      });
  }

  /**
   * A deployment that cannot carry the request (its wire format has no form for it) was leased
   * and passed over, no call made: everything it took comes back, the request's count in its
   * RPM included, and a half-open breaker trial the lease held (no word on its health).
   */
  attemptSkipped(a: Admitted, lease: Lease): void {
    lease.reservation?.cancel();
    lease.release();
    this.learned({ k: 'done', dep: lease.dep.config.id, label: a.label, ok: null, ttftMs: null, durationMs: 0, prompt: 0, completion: 0, predicted: a.predictedOutput, predict: false });
  }

  /** An attempt on `lease` failed before the first byte: give back what it took. */
  attemptFailed(lease: Lease, countsAgainstDeployment: boolean): void {
    lease.reservation?.release();
    lease.release();
    if (countsAgainstDeployment) this.learned({ k: 'fail', dep: lease.dep.config.id });
  }

  /** The request is over: release, reconcile, learn. Called exactly once per admitted request. */
  completed(a: Admitted, lease: Lease | null, u: RequestUsage): void {
    lease?.release();
    const used = u.promptTokens + u.completionTokens;
    const reconcile = (r: Reservation | null): void => {
      if (r === null) return;
      if (u.cached === true) r.cancel();
      else if (used > 0) r.reconcile(used);
      else r.release();
    };
    reconcile(a.keyReservation);
    reconcile(lease?.reservation ?? null);
    const predict = a.flags.output_prediction && u.ok === true && u.completionTokens > 0;
    if (predict) this.metrics.predictionError.observe(a.predictedOutput - u.completionTokens);
    // A request that reached no deployment and used no tokens (a cache hit, a refusal) teaches
    // nothing anywhere: no lesson, and no message to the control plane and the other threads.
    if (lease === null && used === 0) {
      if (u.failedOn !== undefined) this.learned({ k: 'exhausted', dep: u.failedOn, durationMs: u.durationMs });
      return;
    }
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
    // Its failure was learned already, attempt by attempt ('fail').
    if (e.k === 'exhausted') return;
    // Breakers are the fleet manager's (control plane), fed the same lessons.
    if (e.k === 'fail') {
      this.performance.failed(e.dep);
      return;
    }
    if (e.dep !== null) {
      if (e.ok) {
        const genMs = e.durationMs - (e.ttftMs ?? 0);
        this.performance.succeeded(e.dep, e.ttftMs ?? e.durationMs, e.completion > 0 && genMs > 0 ? (e.completion * 1000) / genMs : null);
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

  /**
   * The capacity slots worth showing (metrics, the capacity admin view): every one but a
   * deployment removed from the config whose last requests have finished (its slot stays,
   * unused, in the shared table).
   */
  capacityIds(): string[] {
    const d = this.scheduler.deployments;
    return this.capacity.ids().filter((id) => {
      const dep = d.get(id);
      // A fleet deployment, even if its id was once a counter of its own, taken back.
      if (dep !== undefined && !d.removed(id)) return true;
      if (this.unregistered.has(id)) return false;
      // A counter of its own, or a removed deployment whose last requests still run.
      return dep === undefined || this.capacity.inFlight(dep.slot) > 0;
    });
  }

  private registerMetrics(processGauges: boolean): void {
    const m = this.metrics;
    // Each thread reports its own queue (the exposition sums them); the shared numbers once.
    m.sources.queueDepth = () => this.queue.size;
    if (!processGauges) return;
    m.sources.capacity = () => this.capacityIds().map((id) => this.capacity.stats(id)!);
    m.sources.degraded = () => this.performance.degraded().length;
  }
}

/** Each group's own name once: the map also holds other names clients may use for a group (`x:latest` for `x`). */
function groupNames(groups: ReadonlyMap<string, { readonly name: string }>): string[] {
  return [...new Set([...groups.values()].map((g) => g.name))];
}
