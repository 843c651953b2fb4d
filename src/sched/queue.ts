// Bounded wait queue for requests that found every deployment of their group full.
// Served by priority with aging (so low priority cannot starve), or first-come when
// priority routing is off. Nothing waits forever: each waiter has a deadline. Full, it
// refuses a newcomer, unless a waiter of a lower priority level is there to shed.
import { BrokerError } from '../errors.ts';
import { WaitBoard } from './wait-board.ts';
import { levelOf, ShedBoard } from './shed-board.ts';
import type { AbortLike } from '../abort.ts';

export interface Waiter {
  readonly group: string;
  readonly priority: number;
  readonly enqueuedAt: number;
  readonly seq: number;
}

/**
 * Which waiter goes next: the highest priority after aging (one level per agingMs
 * waited), ties to the oldest. Pure.
 */
export function pickNext<W extends Waiter>(waiters: readonly W[], now: number, agingMs: number, byPriority: boolean): number {
  let best = -1;
  let bestScore = -Infinity;
  for (let i = 0; i < waiters.length; i++) {
    const w = waiters[i]!;
    const score = byPriority ? w.priority + (now - w.enqueuedAt) / agingMs : 0;
    if (best === -1 || score > bestScore || (score === bestScore && w.seq < waiters[best]!.seq)) {
      best = i;
      bestScore = score;
    }
  }
  return best;
}

/**
 * One wake-up handed from waiter to waiter: a woken waiter that cannot use the freed slot
 * (its tier's share is used up, say) declines, and the slot goes to the next waiter that
 * has not declined yet, so a free slot never sits idle while someone could take it.
 */
export interface WakeRound {
  readonly declined: Set<number>;
}

export interface Woken {
  /** The waiter's place in line, kept when it waits again. */
  readonly seq: number;
  readonly round: WakeRound;
}

interface Entry extends Waiter {
  resolve(round: WakeRound): void;
  /** Takes it out of the queue and refuses it; false when it had left already. */
  refuse(err: BrokerError): boolean;
  timer: NodeJS.Timeout;
}

export interface WaitQueueOptions {
  /** Cell 0 counts the waiters of every thread's queue (Atomics); the cells after it are the shed board's. */
  readonly shared?: Int32Array;
  readonly board?: WaitBoard;
  /** This thread's row in the shared cells (the wait board's); none: the levels are this queue's own. */
  readonly row?: number;
  /** Asks thread `row` to shed a waiter of `level` that this thread claimed for a newcomer. */
  readonly shedElsewhere?: (row: number, level: number) => void;
}

export class WaitQueue {
  private readonly byGroup = new Map<string, Entry[]>();
  private seq = 0;
  private total = 0;
  private timedOut = 0;
  private rejectedFull = 0;
  private shedCount = 0;
  /** Set by close(): the error every waiter gets from then on. */
  private closedWith: BrokerError | undefined;
  private readonly shared: Int32Array | undefined;
  private readonly board: WaitBoard | undefined;
  private readonly levels: ShedBoard;
  private readonly shedElsewhere: ((row: number, level: number) => void) | undefined;

  /**
   * With `shared`, maxSize bounds the process, not the thread, a thread that frees a slot no
   * waiter of its own wants can tell whether another thread has one, and a newcomer may shed
   * a lower-priority waiter of another thread.
   */
  constructor(
    private maxSize: number,
    private agingMs: number,
    private readonly now: () => number = Date.now,
    o: WaitQueueOptions = {},
  ) {
    this.shared = o.shared;
    this.board = o.board;
    this.levels = o.row === undefined ? new ShedBoard(undefined, 0) : new ShedBoard(o.shared, o.row);
    this.shedElsewhere = o.row === undefined ? undefined : o.shedElsewhere;
  }

  /**
   * A slot of `group` was freed: wake the waiter that should go next, here or on
   * another thread. Returns the other thread's index when its waiter goes first (the
   * caller hands the wake-up over), true when a waiter here was woken, false if none.
   */
  release(group: string, byPriority: boolean): boolean | number {
    if (this.board !== undefined && this.waitingElsewhere) {
      const list = this.byGroup.get(group) ?? [];
      const other = this.board.before(group, WaitBoard.best(list, this.agingMs), byPriority);
      if (other !== undefined) return other;
    }
    return this.wake(group, byPriority);
  }

  private changed(group: string, list: readonly Waiter[]): void {
    this.board?.publish(group, list);
  }

  get size(): number {
    return this.total;
  }

  /** Whether another thread has requests waiting (never true without a shared counter). */
  get waitingElsewhere(): boolean {
    return this.shared !== undefined && Atomics.load(this.shared, 0) > this.total;
  }

  private count(delta: number, priority: number): void {
    this.total += delta;
    this.levels.add(priority, delta);
    if (this.shared !== undefined) Atomics.add(this.shared, 0, delta);
  }

  /** The orchestrator's PATCH /config/queue: takes effect for the next request that would wait. */
  setMaxSize(n: number): void {
    this.maxSize = n;
  }

  /** A config change at run time (`scheduler.agingMs`): waiters already queued are scored by it too. */
  setAgingMs(agingMs: number): void {
    if (agingMs === this.agingMs) return;
    this.agingMs = agingMs;
    this.board?.setAgingMs(agingMs);
    for (const [group, list] of this.byGroup) this.changed(group, list);
  }

  get max(): number {
    return this.maxSize;
  }

  stats(): { size: number; byGroup: Record<string, number>; timedOut: number; rejectedFull: number; shed: number; oldestWaitMs: number } {
    const byGroup: Record<string, number> = {};
    let oldest = Infinity;
    for (const [g, list] of this.byGroup) {
      if (list.length > 0) byGroup[g] = list.length;
      for (const w of list) if (w.enqueuedAt < oldest) oldest = w.enqueuedAt;
    }
    return { size: this.total, byGroup, timedOut: this.timedOut, rejectedFull: this.rejectedFull, shed: this.shedCount, oldestWaitMs: oldest === Infinity ? 0 : Math.max(0, this.now() - oldest) };
  }

  /**
   * Waits until woken for `group`; rejects on a full queue, at the deadline (epoch ms),
   * or when the client leaves. A waiter that comes back after losing a race passes its
   * first `since` and `seq`, so it keeps its age and its place.
   */
  wait(group: string, priority: number, deadline: number, since: number, signal: AbortLike, seq?: number, byPriority = true): Promise<Woken> {
    if (signal.aborted) return Promise.reject(new BrokerError('internal', 'client went away before it was queued'));
    if (this.closedWith !== undefined) return Promise.reject(this.closedWith);
    if ((this.shared !== undefined ? Atomics.load(this.shared, 0) : this.total) >= this.maxSize) {
      // Full: with priority routing on, the newest waiter of the lowest level below this one's
      // makes room, on this thread first (at once), else on another (which refuses it when the
      // message arrives). Else this one is refused. Priority routing off (waiters queued before
      // it went off keep their levels), nobody is shed.
      const claim = byPriority ? this.levels.claim(priority, this.shedElsewhere !== undefined) : undefined;
      if (claim === undefined) {
        this.rejectedFull++;
        return Promise.reject(new BrokerError('capacity_exhausted', `every deployment of ${group} is at capacity and the queue is full (${this.maxSize})`, { retryAfter: 1 }));
      }
      if (claim.row === this.levels.row) this.shed(claim.level);
      else this.shedElsewhere!(claim.row, claim.level);
    }
    return new Promise<Woken>((resolve, reject) => {
      const list = this.byGroup.get(group) ?? [];
      this.byGroup.set(group, list);
      const leave = (): boolean => {
        const i = list.indexOf(entry);
        if (i < 0) return false;
        list.splice(i, 1);
        this.count(-1, priority);
        this.changed(group, list);
        clearTimeout(entry.timer);
        signal.removeEventListener('abort', onAbort);
        return true;
      };
      const onAbort = (): void => {
        if (leave()) reject(new BrokerError('internal', 'client went away while queued'));
      };
      const entry: Entry = {
        group,
        priority,
        enqueuedAt: since,
        seq: seq ?? this.seq++,
        resolve: (round) => {
          signal.removeEventListener('abort', onAbort);
          resolve({ seq: entry.seq, round });
        },
        refuse: (err) => {
          if (!leave()) return false;
          reject(err);
          return true;
        },
        timer: setTimeout(() => {
          if (!leave()) return;
          this.timedOut++;
          reject(new BrokerError('queue_timeout', `waited ${Math.round(this.now() - since)} ms for a free deployment of ${group}`, { retryAfter: 1 }));
        }, Math.max(0, deadline - this.now())),
      };
      list.push(entry);
      this.count(1, priority);
      this.changed(group, list);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /**
   * The broker is stopping: every waiter is refused now (503 shutting_down, Retry-After), and
   * so is every request that would wait from now on. A request that never reached an upstream
   * is better retried on another replica at once than held for the grace period and cut at its end.
   */
  close(): void {
    const err = new BrokerError('shutting_down', 'the broker is shutting down and this request had not started: retry it (another replica takes it)', { retryAfter: 1 });
    this.closedWith = err;
    for (const list of this.byGroup.values()) for (const e of [...list]) e.refuse(err);
  }

  /**
   * A newcomer of a higher level claimed one of this thread's waiters of `level`: the newest
   * of them, of any group, is refused. Settles the claim even when none is left (it was woken
   * or went away meanwhile, which made the room the claim was for).
   */
  shed(level: number): void {
    // No claim to settle: a message meant for a thread that died before it arrived (this is its
    // replacement, whose waiters nobody claimed).
    if (!this.levels.settle(level)) return;
    let victim: Entry | undefined;
    for (const list of this.byGroup.values()) for (const e of list) if (levelOf(e.priority) === level && (victim === undefined || e.seq > victim.seq)) victim = e;
    if (victim === undefined) return;
    if (victim.refuse(new BrokerError('capacity_exhausted', `shed from the full queue (${this.maxSize}) for a request of higher priority`, { retryAfter: 1, details: { shed: true } }))) this.shedCount++;
  }

  /**
   * A slot of `group` was freed: the next waiter (that has not declined this round)
   * tries again. Returns false when this queue had no such waiter.
   */
  wake(group: string, byPriority: boolean, round: WakeRound = { declined: new Set() }): boolean {
    const list = this.byGroup.get(group);
    if (list === undefined || list.length === 0) return false;
    const open = round.declined.size === 0 ? list : list.filter((e) => !round.declined.has(e.seq));
    if (open.length === 0) return false;
    const entry = open[pickNext(open, this.now(), this.agingMs, byPriority)]!;
    list.splice(list.indexOf(entry), 1);
    this.count(-1, entry.priority);
    this.changed(group, list);
    clearTimeout(entry.timer);
    entry.resolve(round);
    return true;
  }
}
