// A bounded FIFO of rows: a ring over a fixed array, O(1) at both ends. Full, a push
// drops the oldest row (the overflow policy of request tracking: never block, never
// fail a request, count what was lost).
export class RowRing<T> {
  private readonly items: (T | undefined)[];
  private head = 0;
  private count = 0;

  constructor(readonly capacity: number) {
    this.items = new Array<T | undefined>(capacity);
  }

  get size(): number {
    return this.count;
  }

  /** Appends; returns how many old rows it dropped (0 or 1). */
  push(item: T): number {
    const cap = this.capacity;
    if (this.count === cap) {
      this.items[(this.head + this.count) % cap] = item;
      this.head = (this.head + 1) % cap;
      return 1;
    }
    this.items[(this.head + this.count) % cap] = item;
    this.count++;
    return 0;
  }

  /** Removes and returns up to n of the oldest rows. */
  take(n: number): T[] {
    const k = Math.min(n, this.count);
    const out = new Array<T>(k);
    for (let i = 0; i < k; i++) {
      const at = (this.head + i) % this.capacity;
      out[i] = this.items[at]!;
      this.items[at] = undefined;
    }
    this.head = (this.head + k) % this.capacity;
    this.count -= k;
    return out;
  }

  /**
   * Puts rows taken (and not written) back in front, oldest first. Past the capacity the
   * oldest of them go; returns how many were dropped.
   */
  putBack(rows: readonly T[]): number {
    const room = this.capacity - this.count;
    const keep = rows.length <= room ? rows : rows.slice(rows.length - room);
    for (let i = keep.length - 1; i >= 0; i--) {
      this.head = (this.head - 1 + this.capacity) % this.capacity;
      this.items[this.head] = keep[i];
      this.count++;
    }
    return rows.length - keep.length;
  }
}
