// Admission for inference, per model: a bounded queue with a wait timeout, served as the
// LLM scheduler serves its queue (sched/queue.ts pickNext): the highest priority
// (x-broker-priority, 0-9) after aging, one level per agingMs waited, ties to the oldest,
// so a low priority cannot starve. The batcher (pool.ts) takes its batches from here, so
// this queue is also where a batch fills while the workers are busy. Full: 503 overloaded
// with Retry-After, unless a lower priority level waits, whose newest is shed for the
// newcomer (503 overloaded too); waited too long: 504 queue_timeout.
import { apiKeyOf } from '../guard/api-key.ts';
import { BrokerError } from '../errors.ts';
import { DEFAULT_SCHEDULER } from '../config/broker-config.ts';
import { headerPriority } from '../policy/priority.ts';
import type { BrokerRequest, Caller } from '../front/reply.ts';

export const PRIORITY_LEVELS = 10;
export const DEFAULT_PRIORITY = 5;

export interface Pending<T> {
  readonly value: T;
  /** Requests of one batch must share it (the resize target of dynamic-size models). */
  readonly size: number | undefined;
  readonly priority: number;
  /** performance.now() at admission. */
  readonly enqueuedAt: number;
  readonly reject: (err: BrokerError) => void;
  /** performance.now() past which this request times out, when it asked for less than the model's timeout (v2 schedule policy). */
  readonly deadline?: number;
  /**
   * True once the request this item belongs to has ended (a sibling item of a v2 request was
   * refused, or the client went away): the item is dropped unsent, without a reply of its own,
   * when the queue next looks at it.
   */
  readonly cancelled?: () => boolean;
}

export class AdmissionQueue<T> {
  // One FIFO per priority level; its head is its oldest.
  private readonly levels: Pending<T>[][] = Array.from({ length: PRIORITY_LEVELS }, () => []);
  private count = 0;
  /** Requests admitted with their own deadline: while there are any, expire() looks past each level's head. */
  private withDeadline = 0;
  /** Requests cancelled since the last dropCancelled(): while any, it scans the queue. */
  private cancelledCount = 0;
  timedOut = 0;
  rejectedFull = 0;
  /** Waiters shed for a request of higher priority that found the queue full. */
  shedCount = 0;

  constructor(
    readonly model: string,
    private readonly maxSize: number,
    private readonly timeoutMs: number,
    /** One priority level gained per this many ms waited: the LLM scheduler's default. */
    private readonly agingMs: number = DEFAULT_SCHEDULER.agingMs,
  ) {}

  get size(): number {
    return this.count;
  }

  /** Free places: a request of several items is admitted whole or not at all. */
  get room(): number {
    return Math.max(0, this.maxSize - this.count);
  }

  /**
   * Throws overloaded unless `n` more fit (counted as one refusal); invalid_request when they
   * never could. Short of room, the items of requests that ended make room first, as in push();
   * returns how many left the queue that way, for the pool's count of waiters.
   */
  reserve(n: number): number {
    if (n <= this.room) return 0;
    // No retry would help (a 503 with Retry-After would say one might): the client must split it.
    if (n > this.maxSize) throw new BrokerError('invalid_request', `the request has ${n} items; the inference queue of model ${this.model} holds at most ${this.maxSize}: send them in requests of at most ${this.maxSize}`);
    const left = this.dropCancelled();
    if (n <= this.room) return left;
    this.rejectedFull++;
    throw new BrokerError('overloaded', `inference queue of model ${this.model} has room for ${this.room} of the request's ${n} items (${this.maxSize} places)`, { retryAfter: 1 });
  }

  /**
   * Admits `p`, or throws overloaded when full. Full, the items of requests that ended make
   * room first; else a request takes the place of the newest waiter of the lowest priority
   * level below its own, which is shed (503 overloaded, as if it had found the queue full):
   * under overload the queue keeps the work its callers ranked highest. Returns how many
   * left the queue to make room (0 or more), for the pool's count of waiters.
   */
  push(p: Pending<T>): number {
    let left = 0;
    if (this.count >= this.maxSize) {
      left = this.dropCancelled();
      if (left === 0 && this.shed(p.priority)) left = 1;
      if (left === 0) {
        this.rejectedFull++;
        // A full queue drains in about its length over the throughput; a second is a fair guess at
        // this queue's scale (256 waiting at a few hundred images/s) and what Retry-After can say.
        throw new BrokerError('overloaded', `inference queue of model ${this.model} is full (${this.maxSize} waiting)`, { retryAfter: 1 });
      }
    }
    this.levels[p.priority]!.push(p);
    this.count++;
    if (p.deadline !== undefined) this.withDeadline++;
    return left;
  }

  /** Sheds the newest waiter of the lowest level below `priority`; false when none waits there. */
  private shed(priority: number): boolean {
    for (let l = 0; l < priority; l++) {
      const victim = this.levels[l]!.pop();
      if (victim === undefined) continue;
      this.count--;
      if (victim.deadline !== undefined) this.withDeadline--;
      this.shedCount++;
      victim.reject(new BrokerError('overloaded', `inference queue of model ${this.model} is full (${this.maxSize} waiting): this request was shed for one of higher priority`, { retryAfter: 1, details: { shed: true } }));
      return true;
    }
    return false;
  }

  private score(p: Pending<T>, now: number): number {
    return p.priority + (now - p.enqueuedAt) / this.agingMs;
  }

  /**
   * Where the request that goes next is: per level the first of `size` (null: of any size;
   * undefined is the size of fixed-size models) is that level's oldest of it and so its
   * best after aging; the best of those across levels, ties to the oldest. Undefined when
   * none waits.
   */
  private best(now: number, size: number | undefined | null): { level: number; index: number; score: number } | undefined {
    let out: { level: number; index: number; score: number } | undefined;
    for (let l = PRIORITY_LEVELS - 1; l >= 0; l--) {
      const q = this.levels[l]!;
      const i = size === null ? (q.length > 0 ? 0 : -1) : q.findIndex((p) => p.size === size);
      if (i < 0) continue;
      const sc = this.score(q[i]!, now);
      if (out === undefined || sc > out.score || (sc === out.score && q[i]!.enqueuedAt < this.levels[out.level]![out.index]!.enqueuedAt)) out = { level: l, index: i, score: sc };
    }
    return out;
  }

  /** The aged priority of the request that goes next, or -Infinity. */
  topScore(now: number): number {
    return this.best(now, null)?.score ?? -Infinity;
  }

  /** When the oldest waiter was admitted (Infinity when empty). */
  get oldest(): number {
    let t = Infinity;
    for (const q of this.levels) if (q.length > 0 && q[0]!.enqueuedAt < t) t = q[0]!.enqueuedAt;
    return t;
  }

  /** The earliest own deadline among the waiters (Infinity when none has one); a scan, asked only when a batch would wait to fill. */
  get firstDeadline(): number {
    if (this.withDeadline === 0) return Infinity;
    let t = Infinity;
    for (const q of this.levels) for (const p of q) if (p.deadline !== undefined && p.deadline < t) t = p.deadline;
    return t;
  }

  /** The size of the request that goes next, and how many waiting requests share it. */
  nextGroup(now: number): { size: number | undefined; count: number } | undefined {
    const b = this.best(now, null);
    if (b === undefined) return undefined;
    const size = this.levels[b.level]![b.index]!.size;
    let count = 0;
    for (const q of this.levels) for (const p of q) if (p.size === size) count++;
    return { size, count };
  }

  /**
   * Takes up to `max` requests of this size, in the order they go (aged priority, then age).
   * Those past their timeout are rejected first, never sent: the sweep that times them out runs
   * only every few ms, and a worker freed in between would otherwise run them and answer 200.
   */
  take(max: number, size: number | undefined, now: number, fresh?: ReadonlySet<Pending<T>>): Pending<T>[] {
    this.expire(now, fresh);
    const out: Pending<T>[] = [];
    while (out.length < max) {
      const b = this.best(now, size);
      if (b === undefined) break;
      out.push(this.levels[b.level]!.splice(b.index, 1)[0]!);
    }
    this.count -= out.length;
    return out;
  }

  /** Removes the items of failed requests (no reply: their request has one); returns how many. */
  dropCancelled(): number {
    if (this.cancelledCount === 0) return 0;
    let n = 0;
    for (const q of this.levels) {
      for (let i = 0; i < q.length; ) {
        const p = q[i]!;
        if (p.cancelled?.() === true) {
          q.splice(i, 1);
          if (p.deadline !== undefined) this.withDeadline--;
          n++;
        } else i++;
      }
    }
    this.count -= n;
    this.cancelledCount = 0;
    return n;
  }

  /** Told when a request's items were cancelled, so that take() and the sweep look for them. */
  noteCancelled(): void {
    this.cancelledCount++;
  }

  /**
   * Rejects the requests that waited timeoutMs or more, or past their own deadline, and drops
   * cancelled ones; returns how many left the queue. `fresh`: requests pushed in this same turn,
   * about to be taken; they never waited, so neither a deadline shorter than the turn (a v2
   * timeout of a few µs: "do not queue") nor a short queue.timeout_ms expires them (a thread
   * descheduled for a millisecond between the push and the take once timed out a request
   * that found its worker idle).
   */
  expire(now: number, fresh?: ReadonlySet<Pending<T>>): number {
    const dropped = this.dropCancelled();
    let n = 0;
    const limit = now - this.timeoutMs;
    for (const q of this.levels) {
      // Fresh requests are the newest: one at the head means nothing older waits in this level.
      while (q.length > 0 && q[0]!.enqueuedAt <= limit && fresh?.has(q[0]!) !== true) {
        const p = q.shift()!;
        n++;
        p.reject(new BrokerError('queue_timeout', `inference request waited ${Math.round(now - p.enqueuedAt)} ms for model ${this.model} (queue.timeout_ms ${this.timeoutMs})`, { retryAfter: 1 }));
      }
    }
    // Own deadlines are not in admission order: scan the whole queue (at most max_size, once a sweep).
    if (this.withDeadline > 0) {
      let left = 0;
      for (const q of this.levels) {
        for (let i = 0; i < q.length; ) {
          const p = q[i]!;
          if (p.deadline === undefined || fresh?.has(p) === true) {
            if (p.deadline !== undefined) left++;
            i++;
          } else if (p.deadline <= now) {
            q.splice(i, 1);
            n++;
            p.reject(new BrokerError('queue_timeout', `inference request waited ${msText(now - p.enqueuedAt)} ms for model ${this.model} (its own timeout ${msText(p.deadline - p.enqueuedAt)} ms)`, { retryAfter: 1 }));
          } else {
            left++;
            i++;
          }
        }
      }
      this.withDeadline = left;
    }
    this.count -= n;
    this.timedOut += n;
    return n + dropped;
  }

  /** Rejects everything (the pool is gone). */
  clear(err: BrokerError): void {
    for (const q of this.levels) for (const p of q.splice(0)) p.reject(err);
    this.count = 0;
  }
}

/** Milliseconds for a message: whole above 10, else to the µs (a v2 timeout may be a few µs). */
function msText(ms: number): string {
  return ms >= 10 ? String(Math.round(ms)) : String(Math.round(ms * 1000) / 1000);
}

/**
 * The highest priority a caller may have: its API key's (or its QoS tier's, else 5), as the
 * LLM admission gives it (sched/governance.ts priorityCeiling).
 */
export type PriorityCeiling = (apiKey: string | undefined, caller?: Caller) => number;

/**
 * A request's admission priority: what it asks for (x-broker-priority, or a protocol's own
 * parameter) may only lower what its key gives it, as on the LLM routes; asking for nothing
 * gets the key's. Without a ceiling (a bare service in tests), what it asks for.
 */
export function cappedPriority(asked: number | undefined, ceiling: number | undefined): number | undefined {
  if (ceiling === undefined) return asked;
  return asked === undefined ? ceiling : Math.min(asked, ceiling);
}

/** x-broker-priority capped by the caller's key (a session's, its key's): the priority of an inference request. */
export function requestPriority(req: Pick<BrokerRequest, 'headers' | 'caller'>, ceiling: PriorityCeiling | undefined): number | undefined {
  return cappedPriority(headerPriority(req.headers['x-broker-priority']), ceiling?.(apiKeyOf(req.headers), req.caller));
}
