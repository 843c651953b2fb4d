// The scheduler decides whether and where an LLM request runs: which deployment
// (health, drain, performance, quota, sticky affinity, load), whether it has a
// free capacity slot, and if every deployment is full, a place in the wait queue.
//
// The choice is compiled per flag set, as the stream chain is: a disabled policy is
// not in the function at all (see build()), so it costs nothing per request. The
// function is rebuilt when a flag changes.
import { BrokerError } from '../errors.ts';
import type { ModelGroupConfig, RouterConfig, SchedulerConfig, ServerConfig } from '../config/broker-config.ts';
import { Deployments, type DeploymentState } from '../fleet/deployments.ts';
import { BLOCKED, COLD, DRAINING, HALF_OPEN, UNHEALTHY, describeBits } from '../fleet/route-bits.ts';
import type { FlagSet } from '../config/flags.ts';
import { CapacityCounters } from './capacity.ts';
import { WaitQueue, type Woken } from './queue.ts';
import { PerformanceTracker, powerOfTwo } from '../policy/performance.ts';
import { StickyPins } from '../policy/sticky.ts';
import { tierCap, type QosTier } from '../policy/qos.ts';
import { awaitsTopUp, type QuotaLedger, type Reservation } from '../policy/quota.ts';
import type { AbortLike } from '../abort.ts';

/**
 * Retry-After of a group with no deployment to try (unhealthy, drained, in maintenance, banned,
 * breakers open): those last seconds at least (a breaker opens for 10 s, health checks run
 * every 10 s), and a client told nothing retries at once.
 */
const NONE_AVAILABLE_RETRY_S = 5;

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
  readonly signal: AbortLike;
  /** false: a full group answers capacity_exhausted at once, without queueing (the request has a fallback group to go to). */
  readonly queue?: boolean;
}

export interface Lease {
  readonly dep: DeploymentState;
  readonly stickyHit: boolean | null;
  readonly reservation: Reservation | null;
  /** Gives the slot back and wakes a waiter; only the first call counts. */
  release(): void;
}

type Pick = { lease: Lease } | { full: true } | { none: BrokerError | undefined };

/** How long a request waits for a deployment's quota top-up, looking every 20 ms (as admission does for a key's: sched/admission.ts). */
const TOP_UP_WAIT_MS = 1000;
const TOP_UP_POLL_MS = 20;

/** Groups larger than this are routed by sampling instead of a scan. */
const SAMPLE_ABOVE = 16;
const SAMPLE_DRAWS = 8;
/** TTFT differences below this many ms do not steer performance routing. */
const LATENCY_NOISE_MS = 5;

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
  /** A freed slot whose next waiter is on another thread: hand the wake-up to that thread. */
  readonly wakeElsewhere?: (group: string, thread: number) => void;
  /** A degraded deployment got its probe request (for the other threads' probe clocks). */
  readonly onProbe?: (id: string) => void;
  /** Whether registering deployments writes their quota limits (the owner of the shared ledger does). */
  readonly setsQuotaLimits?: boolean;
  /** A subject whose limits an operator set: registering leaves them (else each config change set the file's, then the operator's again, and their leases went with the flip). */
  readonly quotaOverridden?: (subject: string) => boolean;
  /** A sticky pin was set (or dropped: null), for the other threads' copies of the pins. */
  readonly onPin?: (key: string, id: string | null) => void;
}

export class Scheduler {
  /** Deployment state (src/fleet/): slots, failures and cool-down, drain. */
  readonly deployments: Deployments;
  private pick!: (a: Admission) => Pick;
  private flags!: FlagSet;

  constructor(
    private deps: SchedulerDeps,
    flags: FlagSet,
  ) {
    this.deployments = new Deployments(deps.capacity);
    this.setFlags(flags);
  }

  /** Adds (or updates) the deployments of these groups; capacity slots are kept by id. */
  register(groups: Iterable<ModelGroupConfig>, servers?: ReadonlyMap<string, ServerConfig>): void {
    for (const d of this.deployments.register(groups, servers)) {
      const subject = `deployment:${d.id}`;
      if ((this.deps.setsQuotaLimits ?? true) && (d.rpm !== undefined || d.tpm !== undefined) && this.deps.quotaOverridden?.(subject) !== true) this.deps.quota.setLimits(subject, { rpm: d.rpm, tpm: d.tpm });
    }
    // Waiters look again: a deployment added has free slots, one removed will never free its.
    this.wakeAll();
  }

  get(id: string): DeploymentState | undefined {
    return this.deployments.get(id);
  }

  all(): DeploymentState[] {
    return this.deployments.all();
  }

  setFlags(flags: FlagSet): void {
    this.flags = flags;
    this.pick = this.build(flags);
  }

  /** A changed scheduler section (runtime config): wait limits and queueing apply to new waits. */
  configure(scheduler: SchedulerConfig): void {
    this.deps = { ...this.deps, scheduler };
  }

  /** Paused (the orchestrator's queue pause): new requests wait in the queue, up to their wait limit. */
  paused = false;

  setPaused(paused: boolean): void {
    const was = this.paused;
    this.paused = paused;
    if (was && !paused) this.wakeAll();
  }

  /** A lease now, or undefined when every eligible deployment is full. Throws when none is eligible. */
  tryAcquire(a: Admission): Lease | undefined {
    const r = this.pick(a);
    if ('lease' in r) return r.lease;
    if ('none' in r) throw r.none ?? new BrokerError('upstream_unavailable', `no deployment of ${a.group.name} is available${this.why(a)}`, { retryAfter: NONE_AVAILABLE_RETRY_S });
    return undefined;
  }

  /** A deployment with a free slot for this request, waiting in the queue if every one is full. */
  async acquire(a: Admission): Promise<Lease> {
    let woken: Woken | undefined;
    let topUpSince: number | undefined;
    for (;;) {
      let lease: Lease | undefined;
      try {
        lease = this.paused ? undefined : this.tryAcquire(a);
      } catch (err) {
        // A deployment's quota lease short with its top-up on its way (two requests closer
        // than the lease keeper's look): wait for it briefly, as a key's quota does at
        // admission, rather than refuse a request the budget has room for.
        const now = this.deps.now();
        if (awaitsTopUp(err) && !a.signal.aborted && now - (topUpSince ??= now) < TOP_UP_WAIT_MS) {
          await new Promise((r) => setTimeout(r, TOP_UP_POLL_MS));
          continue;
        }
        // Woken to find nothing routable (a breaker opened again): the next waiter learns it
        // too, now, rather than at its queue timeout (a wake counts free slots, not waiters).
        if (woken !== undefined) {
          woken.round.declined.add(woken.seq);
          this.deps.queue.wake(a.group.name, this.flags.priority_routing, woken.round);
        }
        throw err;
      }
      if (lease !== undefined) return lease;
      if (woken !== undefined) {
        // Woken but the freed slot is no use to this request: hand it on, then wait again
        // (or, queueing off since the queue was paused, refuse).
        woken.round.declined.add(woken.seq);
        this.deps.queue.wake(a.group.name, this.flags.priority_routing, woken.round);
      }
      if (!this.paused && (!this.deps.scheduler.queueWhenFull || a.queue === false)) throw new BrokerError('capacity_exhausted', `every deployment of ${a.group.name} is at capacity`, { retryAfter: 1 });
      const deadline = a.since + (a.tier?.maxQueueWaitMs ?? this.deps.scheduler.maxWaitMs);
      // A wait for a quota top-up after this one is a new one.
      topUpSince = undefined;
      try {
        woken = await this.deps.queue.wait(a.group.name, a.priority, deadline, a.since, a.signal, woken?.seq, this.flags.priority_routing);
      } catch (err) {
        // Timed out while an operator holds the queue: say so, not "no free deployment".
        if (this.paused && err instanceof BrokerError && err.code === 'queue_timeout') throw new BrokerError('queue_timeout', `${err.message}: the queue is paused (POST /api/orchestrator/queue/resume)`, { retryAfter: err.retryAfter });
        // Full while paused: the deployments may be idle; "at capacity" would send an operator the wrong way.
        if (this.paused && err instanceof BrokerError && err.code === 'capacity_exhausted' && err.details?.['shed'] !== true) throw new BrokerError('capacity_exhausted', `the queue is paused (POST /api/orchestrator/queue/resume) and full (${this.deps.queue.max})`, { retryAfter: err.retryAfter });
        throw err;
      }
    }
  }

  /** ": a (unhealthy), b (breaker open)": why nothing of the group could be chosen. */
  private why(a: Admission): string {
    const parts: string[] = [];
    for (const d of this.deployments.ofGroup(a.group)) {
      const bits = this.deps.capacity.route(d.slot);
      if (a.tried.has(d.config.id)) parts.push(`${d.config.id} (tried)`);
      else if (bits !== 0) parts.push(`${d.config.id} (${describeBits(bits & ~COLD) || 'available'})`);
    }
    return parts.length > 0 ? `: ${parts.join(', ')}` : '';
  }

  /**
   * Whether a server of the group has its model in memory now: healthy, and not reported cold
   * (an Ollama's /api/ps lists it; a server that does not load on demand always has it).
   */
  loaded(group: ModelGroupConfig): boolean {
    for (const d of this.deployments.ofGroup(group)) if ((this.deps.capacity.route(d.slot) & (UNHEALTHY | COLD)) === 0) return true;
    return false;
  }

  /** Drains a deployment (route bit DRAINING) or brings it back; in-flight requests finish either way. */
  setDraining(id: string, draining: boolean): boolean {
    const d = this.deployments.get(id);
    if (d === undefined) return false;
    this.deps.capacity.setRoute(d.slot, DRAINING, draining);
    // Undraining frees room: as many waiters try again as there are free slots.
    if (!draining) this.wakeFree(d);
    return true;
  }

  /**
   * Routing changed (a recovery, an undrain, a lifted ban; a maintenance, a drain, a ban, on
   * any thread): waiters try again, as many as there are free slots. A group none of whose
   * deployments can take a request now has one waiter woken too: it finds nothing routable
   * and passes that on (acquire), so its waiters learn it now (503, or their fallback), not at
   * their queue timeout; a full group frees no slot to wake them with.
   */
  wakeAll(): void {
    const open = new Map<string, boolean>();
    for (const d of this.deployments.all()) {
      this.wakeFree(d);
      open.set(d.group, open.get(d.group) === true || (this.deps.capacity.route(d.slot) & BLOCKED) === 0);
    }
    for (const [group, any] of open) if (!any) this.deps.queue.wake(group, this.flags.priority_routing);
  }

  setLimit(id: string, limit: number): boolean {
    const d = this.deployments.get(id);
    if (d === undefined) return false;
    this.deps.capacity.register(id, limit);
    this.wakeFree(d);
    return true;
  }

  /** A slot of `group` is free (here, or handed over by another thread): its next waiter, wherever it waits, tries. Whether one did. */
  handOff(group: string): boolean {
    const r = this.deps.queue.release(group, this.flags.priority_routing);
    if (typeof r === 'number') this.deps.wakeElsewhere?.(group, r);
    return r !== false;
  }

  /**
   * A server's slot is free (maxConcurrency over all its models) and no waiter of the group
   * that freed it wants it: a waiter of another group served on the same server may. Else a
   * request for one model waited out its queue time beside an idle server.
   */
  private handOffServer(d: DeploymentState): void {
    const q = this.deps.queue;
    if (q.size === 0 && !q.waitingElsewhere) return;
    const seen = new Set([d.group]);
    for (const o of this.deployments.all()) {
      if (o.serverSlot !== d.serverSlot || seen.has(o.group)) continue;
      seen.add(o.group);
      if (this.handOff(o.group)) return;
    }
  }

  private wakeFree(d: DeploymentState): void {
    const free = this.deps.capacity.limit(d.slot) - this.deps.capacity.inFlight(d.slot);
    for (let i = 0; i < free; i++) this.deps.queue.wake(d.group, this.flags.priority_routing);
  }

  private build(flags: FlagSet): (a: Admission) => Pick {
    const { capacity, performance, sticky, quota, random } = this.deps;
    const gating = flags.capacity_gating;
    const perf = flags.performance_routing ? performance : null;
    const stickyOn = flags.sticky_routing ? sticky : null;
    const quotaOn = flags.quota_enforcement ? quota : null;
    const onSticky = this.deps.onStickyLookup;

    const warmFirst = flags.warm_first_routing;
    const serverRoom = (d: DeploymentState): boolean => d.serverSlot < 0 || capacity.hasRoom(d.serverSlot);
    const room = gating ? (d: DeploymentState, tier: QosTier | null): boolean => capacity.inFlight(d.slot) < tierCap(capacity.limit(d.slot), tier) && serverRoom(d) : (): boolean => true;
    // Routable now: nothing blocks it, and if its breaker is half-open a trial is left.
    const routable = (d: DeploymentState): boolean => {
      const bits = capacity.route(d.slot);
      return (bits & BLOCKED) === 0 && ((bits & HALF_OPEN) === 0 || capacity.trials(d.slot) > 0);
    };
    const awaitingTrials = (d: DeploymentState): boolean => {
      const bits = capacity.route(d.slot);
      return (bits & BLOCKED) === 0 && (bits & HALF_OPEN) !== 0;
    };
    // A half-open breaker's trial permit is taken with the slot, and given back if the slot is not had.
    const trial = (d: DeploymentState): boolean | null => ((capacity.route(d.slot) & HALF_OPEN) === 0 ? null : capacity.takeTrial(d.slot));
    const take = gating
      ? (d: DeploymentState, tier: QosTier | null): boolean => {
          const t = trial(d);
          if (t === false) return false;
          if (capacity.tryAcquire(d.slot, tierCap(capacity.limit(d.slot), tier))) {
            if (d.serverSlot < 0 || capacity.tryAcquire(d.serverSlot)) return true;
            capacity.release(d.slot);
          }
          if (t === true) capacity.returnTrial(d.slot);
          capacity.countRejection(d.slot);
          return false;
        }
      : (d: DeploymentState): boolean => {
          if (trial(d) === false) return false;
          capacity.acquireUngated(d.slot);
          if (d.serverSlot >= 0) capacity.acquireUngated(d.serverSlot);
          return true;
        };
    const choose = perf
      ? (c: DeploymentState[]): DeploymentState =>
          powerOfTwo(
            c,
            (d) => {
              const inFlight = capacity.inFlight(d.slot);
              // TTFTs a few ms apart are noise for LLM streams: treat them as equal, so a
              // recovered deployment gets its share back instead of losing every close call.
              return Math.max(perf.cost(d.config.id, inFlight, d.config.weight), ((inFlight + 1) * LATENCY_NOISE_MS) / d.config.weight);
            },
            random,
          )
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
      // A request to a degraded deployment is its probe: the other threads wait their interval too.
      if (perf?.degradedIds.has(d.config.id)) this.deps.onProbe?.(d.config.id);
      return {
        dep: d,
        stickyHit,
        reservation,
        release: () => {
          if (released) return;
          released = true;
          capacity.release(d.slot);
          if (d.serverSlot >= 0) capacity.release(d.serverSlot);
          if (!this.handOff(d.group) && d.serverSlot >= 0) this.handOffServer(d);
        },
      };
    };

    // Eligible right now: not tried, routable (healthy, not banned, breaker closed or a
    // trial left, not draining, not in maintenance), not avoided as degraded, and with a
    // free slot for the request's tier.
    const eligible = (d: DeploymentState, a: Admission): boolean => !a.tried.has(d.config.id) && routable(d) && (perf === null || !perf.avoid(d.config.id)) && room(d, a.tier);

    // The full scan, with its fallbacks: if every deployment is degraded, all of them
    // (performance routing never routes nothing). Warm-first: where the servers say
    // which models are loaded, the deployments whose model is warm go first.
    // `someFull`: a candidate was left out only for want of room, so a request that finds
    // the open ones' quotas spent queues for it rather than being refused.
    const scan = (a: Admission, states: readonly DeploymentState[]): { open: DeploymentState[]; someFull: boolean } | { none: undefined } | { full: true } => {
      let candidates: DeploymentState[] = [];
      for (const d of states) if (!a.tried.has(d.config.id) && routable(d)) candidates.push(d);
      // A half-open breaker whose trials are all out is full, not gone: its outcome decides
      // within a request's time, and the close (or the reopen) wakes the queue.
      if (candidates.length === 0) return states.some((d) => !a.tried.has(d.config.id) && awaitingTrials(d)) ? { full: true } : { none: undefined };
      if (perf !== null) {
        const good = candidates.filter((d) => !perf.avoid(d.config.id));
        if (good.length > 0) candidates = good;
      }
      let open = candidates.filter((d) => room(d, a.tier));
      const someFull = open.length < candidates.length;
      if (warmFirst && open.length > 1) {
        const warm = open.filter((d) => (capacity.route(d.slot) & COLD) === 0);
        if (warm.length > 0) open = warm;
      }
      return open.length === 0 ? { full: true } : { open, someFull };
    };

    // Large groups: two random eligible deployments instead of a scan, so routing cost
    // does not grow with the group (bench:sched compares 10 and 1,000 deployments).
    const sample = (a: Admission, states: readonly DeploymentState[]): DeploymentState[] | undefined => {
      const found: DeploymentState[] = [];
      for (let i = 0; i < SAMPLE_DRAWS && found.length < 2; i++) {
        const d = states[Math.floor(random() * states.length)]!;
        if (d !== found[0] && eligible(d, a)) found.push(d);
      }
      return found.length > 0 ? found : undefined;
    };

    return (a) => {
      const states = this.deployments.ofGroup(a.group);
      let chosen: DeploymentState | undefined;
      let stickyHit: boolean | null = null;
      if (stickyOn !== null && a.stickyKey !== undefined) {
        const pinned = stickyOn.get(a.stickyKey);
        const d = pinned === undefined ? undefined : this.deployments.get(pinned);
        chosen = d !== undefined && d.group === a.group.name && eligible(d, a) ? d : undefined;
        stickyHit = chosen !== undefined;
        // A pin to a deployment that cannot take the request now is dropped.
        if (pinned !== undefined && chosen === undefined) {
          stickyOn.drop(a.stickyKey);
          this.deps.onPin?.(a.stickyKey, null);
        }
        onSticky?.(stickyHit);
      }
      // A degraded deployment due for its probe gets this one request (one per interval).
      if (chosen === undefined && perf !== null) {
        for (const id of perf.degradedIds) {
          const d = this.deployments.get(id);
          if (d !== undefined && d.group === a.group.name && perf.probeDue(id) && !a.tried.has(id) && routable(d) && room(d, a.tier)) {
            chosen = d;
            break;
          }
        }
      }

      let pool = chosen !== undefined ? [chosen] : states.length > SAMPLE_ABOVE ? sample(a, states) : undefined;
      let scanned = false;
      let quotaError: BrokerError | undefined;
      // A deployment passed over only because it is full (or its slot went to another thread
      // first): its quota may have room, so a quota refusal elsewhere is not the last word.
      let someFull = false;
      for (;;) {
        if (pool === undefined || pool.length === 0) {
          if (scanned) break;
          scanned = true;
          const r = scan(a, states);
          if (!('open' in r)) return r;
          pool = r.open;
          someFull ||= r.someFull;
          if (chosen !== undefined) pool = pool.filter((x) => x !== chosen);
          if (pool.length === 0) break;
        }
        const d = pool.length === 1 ? pool[0]! : choose(pool);
        let reservation: Reservation | null = null;
        // A deployment's quota: the fleet file's, or one set at run time (PUT /api/industrial/quota).
        const subject = quotaOn === null ? '' : `deployment:${d.config.id}`;
        if (quotaOn !== null && (d.config.rpm !== undefined || d.config.tpm !== undefined || quotaOn.limits(subject) !== undefined)) {
          try {
            reservation = quotaOn.reserve([subject], a.tokens);
          } catch (err) {
            // This deployment's quota is spent: try the others, and report the soonest retry.
            const e = err as BrokerError;
            if (quotaError === undefined || (e.retryAfter ?? 60) < (quotaError.retryAfter ?? 60)) quotaError = e;
            pool = pool.filter((x) => x !== d);
            continue;
          }
        }
        if (!take(d, a.tier)) {
          someFull = true;
          reservation?.release();
          pool = pool.filter((x) => x !== d);
          continue;
        }
        if (stickyOn !== null && a.stickyKey !== undefined) {
          stickyOn.pin(a.stickyKey, d.config.id);
          this.deps.onPin?.(a.stickyKey, d.config.id);
        }
        return { lease: lease(d, stickyHit, reservation) };
      }
      // Every candidate tried: quota-spent only, or some merely full (worth queueing for).
      return quotaError !== undefined && !someFull ? { none: quotaError } : { full: true };
    };
  }
}
