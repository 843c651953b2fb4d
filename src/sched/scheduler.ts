// The scheduler decides whether and where an LLM request runs: which deployment
// (health, drain, performance, quota, sticky affinity, load), whether it has a
// free capacity slot, and if every deployment is full, a place in the wait queue.
//
// The choice is compiled per flag set, as the stream chain is: a disabled policy is
// not in the function at all (see build()), so it costs nothing per request. The
// function is rebuilt when a flag changes.
import { BrokerError } from '../errors.ts';
import type { DeploymentConfig, ModelGroupConfig, RouterConfig, SchedulerConfig } from '../config/broker-config.ts';
import type { FlagSet } from '../config/flags.ts';
import { CapacityCounters } from './capacity.ts';
import { WaitQueue } from './queue.ts';
import { PerformanceTracker, powerOfTwo } from '../policy/performance.ts';
import { StickyPins } from '../policy/sticky.ts';
import { tierCap, type QosTier } from '../policy/qos.ts';
import type { QuotaLedger, Reservation } from '../policy/quota.ts';

export interface DeploymentState {
  readonly config: DeploymentConfig;
  readonly group: string;
  readonly slot: number;
  consecutiveFailures: number;
  /** Epoch ms until which the deployment is skipped after consecutive failures. */
  cooldownUntil: number;
  /** Takes no new requests; in-flight ones finish. */
  draining: boolean;
}

export interface Admission {
  readonly group: ModelGroupConfig;
  readonly tried: ReadonlySet<string>;
  readonly priority: number;
  readonly tier: QosTier | null;
  readonly stickyKey: string | undefined;
  /** Tokens to reserve against the deployment's TPM (prompt estimate + predicted output). */
  readonly tokens: number;
  /** Epoch ms the request arrived: queue age and deadline start here. */
  readonly since: number;
  readonly signal: AbortSignal;
}

export interface Lease {
  readonly dep: DeploymentState;
  readonly stickyHit: boolean | null;
  readonly reservation: Reservation | null;
  /** Gives the slot back and wakes a waiter; only the first call counts. */
  release(): void;
}

type Pick = { lease: Lease } | { full: true } | { none: BrokerError | undefined };

export interface SchedulerDeps {
  readonly router: RouterConfig;
  readonly scheduler: SchedulerConfig;
  readonly capacity: CapacityCounters;
  readonly queue: WaitQueue;
  readonly performance: PerformanceTracker;
  readonly sticky: StickyPins;
  readonly quota: QuotaLedger;
  readonly now: () => number;
  readonly random: () => number;
  readonly onStickyLookup?: (hit: boolean) => void;
}

export class Scheduler {
  private readonly deployments = new Map<string, DeploymentState>();
  private pick!: (a: Admission) => Pick;
  private flags!: FlagSet;

  constructor(
    private readonly deps: SchedulerDeps,
    flags: FlagSet,
  ) {
    this.setFlags(flags);
  }

  /** Adds (or updates) the deployments of these groups; capacity slots are kept by id. */
  register(groups: Iterable<ModelGroupConfig>): void {
    for (const g of groups) {
      for (const d of g.deployments) {
        const slot = this.deps.capacity.register(d.id, d.concurrencyLimit);
        const old = this.deployments.get(d.id);
        this.deployments.set(d.id, { config: d, group: g.name, slot, consecutiveFailures: old?.consecutiveFailures ?? 0, cooldownUntil: old?.cooldownUntil ?? 0, draining: old?.draining ?? false });
        if (d.rpm !== undefined || d.tpm !== undefined) this.deps.quota.setLimits(`deployment:${d.id}`, { rpm: d.rpm, tpm: d.tpm });
      }
    }
  }

  get(id: string): DeploymentState | undefined {
    return this.deployments.get(id);
  }

  all(): DeploymentState[] {
    return [...this.deployments.values()];
  }

  setFlags(flags: FlagSet): void {
    this.flags = flags;
    this.pick = this.build(flags);
  }

  /** A deployment with a free slot for this request, waiting in the queue if every one is full. */
  async acquire(a: Admission): Promise<Lease> {
    for (;;) {
      const r = this.pick(a);
      if ('lease' in r) return r.lease;
      if ('none' in r) throw r.none ?? new BrokerError('upstream_unavailable', `no deployment of ${a.group.name} is available`);
      if (!this.deps.scheduler.queueWhenFull) throw new BrokerError('capacity_exhausted', `every deployment of ${a.group.name} is at capacity`, { retryAfter: 1 });
      const deadline = a.since + (a.tier?.maxQueueWaitMs ?? this.deps.scheduler.maxWaitMs);
      await this.deps.queue.wait(a.group.name, a.priority, deadline, a.since, a.signal);
    }
  }

  succeeded(d: DeploymentState): void {
    d.consecutiveFailures = 0;
    d.cooldownUntil = 0;
  }

  failed(d: DeploymentState): void {
    d.consecutiveFailures++;
    if (d.consecutiveFailures >= this.deps.router.failureThreshold) d.cooldownUntil = this.deps.now() + this.deps.router.cooldownMs;
  }

  setDraining(id: string, draining: boolean): boolean {
    const d = this.deployments.get(id);
    if (d === undefined) return false;
    d.draining = draining;
    // Undraining frees room: let waiters try again.
    if (!draining) this.deps.queue.wake(d.group, this.flags.priority_routing);
    return true;
  }

  setLimit(id: string, limit: number): boolean {
    const d = this.deployments.get(id);
    if (d === undefined) return false;
    this.deps.capacity.register(id, limit);
    for (let i = 0; i < limit; i++) this.deps.queue.wake(d.group, this.flags.priority_routing);
    return true;
  }

  private build(flags: FlagSet): (a: Admission) => Pick {
    const { capacity, performance, sticky, quota, queue, now, random } = this.deps;
    const gating = flags.capacity_gating;
    const byPriority = flags.priority_routing;
    const perf = flags.performance_routing ? performance : null;
    const stickyOn = flags.sticky_routing ? sticky : null;
    const quotaOn = flags.quota_enforcement ? quota : null;
    const onSticky = this.deps.onStickyLookup;

    const room = gating ? (d: DeploymentState, tier: QosTier | null): boolean => capacity.inFlight(d.slot) < tierCap(capacity.limit(d.slot), tier) : (): boolean => true;
    const take = gating
      ? (d: DeploymentState, tier: QosTier | null): boolean => {
          if (capacity.tryAcquire(d.slot, tierCap(capacity.limit(d.slot), tier))) return true;
          capacity.countRejection(d.slot);
          return false;
        }
      : (d: DeploymentState): boolean => {
          capacity.acquireUngated(d.slot);
          return true;
        };
    const choose = perf
      ? (c: DeploymentState[]): DeploymentState => powerOfTwo(c, (d) => perf.cost(d.config.id, capacity.inFlight(d.slot), d.config.weight), random)
      : (c: DeploymentState[]): DeploymentState => {
          // Least in-flight per unit of weight; the scan starts at a random place so ties
          // spread out instead of always going to the first deployment.
          const start = Math.floor(random() * c.length);
          let best = c[start]!;
          let bestScore = Infinity;
          for (let k = 0; k < c.length; k++) {
            const d = c[(start + k) % c.length]!;
            const score = (capacity.inFlight(d.slot) + 1) / d.config.weight;
            if (score < bestScore) {
              bestScore = score;
              best = d;
            }
          }
          return best;
        };

    const lease = (d: DeploymentState, stickyHit: boolean | null, reservation: Reservation | null): Lease => {
      let released = false;
      perf?.started(d.config.id);
      return {
        dep: d,
        stickyHit,
        reservation,
        release: () => {
          if (released) return;
          released = true;
          capacity.release(d.slot);
          queue.wake(d.group, byPriority);
        },
      };
    };

    return (a) => {
      const t = now();
      // Healthy, not draining, not tried yet; a cooling-down deployment only as a last resort.
      let candidates: DeploymentState[] = [];
      let cooling: DeploymentState | undefined;
      for (const c of a.group.deployments) {
        if (a.tried.has(c.id)) continue;
        const d = this.deployments.get(c.id);
        if (d === undefined || d.draining) continue;
        if (d.cooldownUntil > t) cooling ??= d;
        else candidates.push(d);
      }
      if (candidates.length === 0) {
        if (cooling === undefined || a.tried.size > 0) return { none: undefined };
        candidates = [cooling];
      }
      if (perf !== null) {
        // Avoid degraded deployments, but never route nothing: if all are degraded, keep them all.
        const good = candidates.filter((d) => !perf.avoid(d.config.id));
        if (good.length > 0) candidates = good;
      }
      const open = candidates.filter((d) => room(d, a.tier));
      if (open.length === 0) return { full: true };

      let chosen: DeploymentState | undefined;
      let stickyHit: boolean | null = null;
      if (stickyOn !== null && a.stickyKey !== undefined) {
        const pinned = stickyOn.get(a.stickyKey);
        chosen = pinned === undefined ? undefined : open.find((d) => d.config.id === pinned);
        stickyHit = chosen !== undefined;
        // A pin to a deployment that cannot take the request now is dropped.
        if (pinned !== undefined && chosen === undefined) stickyOn.drop(a.stickyKey);
        onSticky?.(stickyHit);
      }

      // A degraded deployment due for its probe gets this one request (one per interval).
      if (chosen === undefined && perf !== null) chosen = open.find((d) => perf.probeDue(d.config.id));

      let pool = open;
      let quotaError: BrokerError | undefined;
      for (;;) {
        const d = chosen ?? choose(pool);
        chosen = undefined;
        let reservation: Reservation | null = null;
        if (quotaOn !== null && (d.config.rpm !== undefined || d.config.tpm !== undefined)) {
          try {
            reservation = quotaOn.reserve([`deployment:${d.config.id}`], a.tokens);
          } catch (err) {
            // This deployment's quota is spent: try the others, and report the soonest retry.
            const e = err as BrokerError;
            if (quotaError === undefined || (e.retryAfter ?? 60) < (quotaError.retryAfter ?? 60)) quotaError = e;
            pool = pool.filter((x) => x !== d);
            if (pool.length === 0) return { none: quotaError };
            continue;
          }
        }
        if (!take(d, a.tier)) {
          reservation?.release();
          pool = pool.filter((x) => x !== d);
          if (pool.length === 0) return { full: true };
          continue;
        }
        if (stickyOn !== null && a.stickyKey !== undefined) stickyOn.pin(a.stickyKey, d.config.id);
        return { lease: lease(d, stickyHit, reservation) };
      }
    };
  }
}
