// Who waits at which priority level, per thread: lets a request that finds the queue full
// take the place of a waiter of a lower level on any thread (that waiter is refused), so
// that under overload the queue holds the most important requests, not the first ones.
//
// Memory layout (Int32Array over the SharedArrayBuffer whose cell 0 is the queue's total):
//   1 + row * LEVELS + level                      waiters of `level` queued on thread `row`
//   1 + (MAX_THREADS + row) * LEVELS + level      of those, how many a shedder has claimed
// Only the owning thread changes its counts. A shedder on any thread claims a waiter with a
// compare-and-swap on the claims cell (never more claims than waiters), then asks the owner
// to shed one of that level; the owner settles the claim whether or not one is still there.
import { MAX_THREADS } from './wait-board.ts';

/** Priorities 0–9: a waiter is shed only for a request of a strictly higher level. */
export const LEVELS = 10;

const CELLS = 1 + 2 * MAX_THREADS * LEVELS;

/** Cell 0 the total of waiters on every thread, then the per-thread level counts and claims. */
export function waitersBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(CELLS * 4);
}

export function levelOf(priority: number): number {
  return Math.min(LEVELS - 1, Math.max(0, Math.floor(priority)));
}

export interface Claim {
  readonly row: number;
  readonly level: number;
}

export class ShedBoard {
  private readonly cells: Int32Array;

  /** `cells`: the shared buffer's view (a private one when the queue is this thread's alone). */
  constructor(
    cells: Int32Array | undefined,
    readonly row: number,
  ) {
    if (row < 0 || row >= MAX_THREADS) throw new RangeError(`thread ${row} is out of range (max ${MAX_THREADS})`);
    this.cells = cells !== undefined && cells.length >= CELLS ? cells : new Int32Array(CELLS);
    // A new thread has no waiters: a claim left on its row (one that raced its predecessor's
    // reclaim) would keep a waiter of that level from ever being shed.
    for (let level = 0; level < LEVELS; level++) if (Atomics.load(this.cells, count(row, level)) === 0) Atomics.store(this.cells, claims(row, level), 0);
  }

  /** This thread's waiters of `priority`'s level changed by `delta`. */
  add(priority: number, delta: number): void {
    Atomics.add(this.cells, count(this.row, levelOf(priority)), delta);
  }

  /**
   * Claims a waiter of the lowest level below `priority`'s, this thread's first at each level,
   * other threads' only when `elsewhere`. Undefined when every waiter is of its level or above.
   */
  claim(priority: number, elsewhere: boolean): Claim | undefined {
    const top = levelOf(priority);
    for (let level = 0; level < top; level++) {
      if (this.take(this.row, level)) return { row: this.row, level };
      if (!elsewhere) continue;
      for (let row = 0; row < MAX_THREADS; row++) if (row !== this.row && this.take(row, level)) return { row, level };
    }
    return undefined;
  }

  /** A claim on this thread's `level` was served, or found its waiter gone. False when there was none (it was cleared with a dead thread's row). */
  settle(level: number): boolean {
    const at = claims(this.row, level);
    for (let n = Atomics.load(this.cells, at); n > 0; n = Atomics.load(this.cells, at)) if (Atomics.compareExchange(this.cells, at, n, n - 1) === n) return true;
    return false;
  }

  /**
   * A thread died: its waiters went with it. Clears its row and takes its waiters out of the
   * total (cell 0), else the queue stayed that much fuller until the process restarted.
   */
  static reclaim(cells: Int32Array, row: number): number {
    let gone = 0;
    for (let level = 0; level < LEVELS; level++) {
      gone += Atomics.exchange(cells, count(row, level), 0);
      Atomics.store(cells, claims(row, level), 0);
    }
    if (gone > 0) Atomics.sub(cells, 0, gone);
    return gone;
  }

  private take(row: number, level: number): boolean {
    const at = claims(row, level);
    for (;;) {
      const taken = Atomics.load(this.cells, at);
      if (Atomics.load(this.cells, count(row, level)) - taken <= 0) return false;
      if (Atomics.compareExchange(this.cells, at, taken, taken + 1) === taken) return true;
    }
  }
}

function count(row: number, level: number): number {
  return 1 + row * LEVELS + level;
}

function claims(row: number, level: number): number {
  return 1 + (MAX_THREADS + row) * LEVELS + level;
}
