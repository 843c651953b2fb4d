// Who waits where: each data-plane thread publishes, per model group, the best of
// its queued requests, so that a thread that frees a slot can hand it to the thread
// whose waiter should go next (priority with aging, or oldest first), not just to
// its own. Priority order then holds across threads.
//
// Memory layout (Float64Array over a SharedArrayBuffer), row per thread, cell per group:
//   [(thread * MAX_GROUPS + group) * 2 + 0]  best score base: max(priority - enqueuedAt / agingMs)
//   [(thread * MAX_GROUPS + group) * 2 + 1]  oldest enqueuedAt (epoch ms)
// NaN in both: no waiter. Only the owning thread writes its row; a reader may see a
// cell mid-update, which at worst hands one wake-up to a thread that passes it on.
// Groups are numbered by their sorted names, the same in every thread for one fleet.
import type { Waiter } from './queue.ts';

export const MAX_THREADS = 64;
export const MAX_GROUPS = 256;

export function waitBoardBuffer(): SharedArrayBuffer {
  const b = new SharedArrayBuffer(MAX_THREADS * MAX_GROUPS * 2 * 8);
  new Float64Array(b).fill(NaN);
  return b;
}

/** A thread died: its row no longer names waiters (else wake-ups were handed to its replacement in vain). */
export function clearWaitBoardRow(buffer: SharedArrayBuffer, thread: number): void {
  new Float64Array(buffer, thread * MAX_GROUPS * 2 * 8, MAX_GROUPS * 2).fill(NaN);
}

export interface BestWaiter {
  readonly base: number;
  readonly oldest: number;
}

export class WaitBoard {
  private readonly cells: Float64Array;
  private index = new Map<string, number>();

  constructor(
    buffer: SharedArrayBuffer,
    private readonly thread: number,
    private agingMs: number,
  ) {
    if (thread < 0 || thread >= MAX_THREADS) throw new RangeError(`thread ${thread} is out of range (max ${MAX_THREADS})`);
    this.cells = new Float64Array(buffer);
  }

  /** A config change at run time: the waiters published from now on are scored by it. */
  setAgingMs(agingMs: number): void {
    this.agingMs = agingMs;
  }

  /** The fleet's group names; groups past MAX_GROUPS are served thread-locally. */
  setGroups(names: Iterable<string>): void {
    const sorted = [...new Set(names)].sort();
    this.index = new Map(sorted.slice(0, MAX_GROUPS).map((n, i) => [n, i]));
  }

  /** Score base and age of the best of `waiters` (all of one group), undefined if none. */
  static best(waiters: readonly Waiter[], agingMs: number): BestWaiter | undefined {
    if (waiters.length === 0) return undefined;
    let base = -Infinity;
    let oldest = Infinity;
    for (const w of waiters) {
      base = Math.max(base, w.priority - w.enqueuedAt / agingMs);
      oldest = Math.min(oldest, w.enqueuedAt);
    }
    return { base, oldest };
  }

  publish(group: string, waiters: readonly Waiter[]): void {
    const g = this.index.get(group);
    if (g === undefined) return;
    const b = WaitBoard.best(waiters, this.agingMs);
    const at = (this.thread * MAX_GROUPS + g) * 2;
    this.cells[at] = b?.base ?? NaN;
    this.cells[at + 1] = b?.oldest ?? NaN;
  }

  /** The other thread whose waiter goes before `local` (this thread's best), if any. */
  before(group: string, local: BestWaiter | undefined, byPriority: boolean): number | undefined {
    const g = this.index.get(group);
    if (g === undefined) return undefined;
    let winner: number | undefined;
    let best = local;
    for (let t = 0; t < MAX_THREADS; t++) {
      if (t === this.thread) continue;
      const at = (t * MAX_GROUPS + g) * 2;
      const base = this.cells[at]!;
      if (Number.isNaN(base)) continue;
      const c = { base, oldest: this.cells[at + 1]! };
      if (best === undefined || goesFirst(c, best, byPriority)) {
        best = c;
        winner = t;
      }
    }
    return winner;
  }
}

/** Whether `a` goes before `b`: higher aged priority (ties: older), or simply older. */
function goesFirst(a: BestWaiter, b: BestWaiter, byPriority: boolean): boolean {
  if (byPriority && a.base !== b.base) return a.base > b.base;
  return a.oldest < b.oldest;
}
