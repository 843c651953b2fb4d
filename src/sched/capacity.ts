// In-flight counters and limits per deployment in a SharedArrayBuffer, changed only
// with Atomics: a slot is taken with compare-exchange (never past the limit) and
// given back on every completion path. The control plane and the data-plane threads
// share the buffer and read the same numbers without messages or locks.
//
// Memory layout: one 128-byte block per deployment slot (Int32 cells):
//   +0 inFlight   +4 limit   +8 rejected   +12 acquired
//   +16 route bits (src/fleet/route-bits.ts)   +20 half-open trial permits left   +24..+127 padding
// The padding keeps two deployments off one cache line: bench:contention measured
// neighbouring counters hammered by 2 threads at 3.7x the cost of padded ones
// (33.5 vs 9.0 ns per Atomics.add; 16-byte slots were as slow as adjacent ones).

/**
 * Holdings: what each data-plane thread holds per slot (one Int32 row per thread index), so
 * that the control plane can give back the slots of a thread that died with requests in
 * flight: their releases, due after the abort, never ran.
 */
const HOLDER_ROWS = 64;

const FIELDS = 32; // Int32 cells per slot: 128 bytes, two cache lines (adjacent-line prefetch)
const IN_FLIGHT = 0;
const LIMIT = 1;
const REJECTED = 2;
const ACQUIRED = 3;
const ROUTE = 4;
const TRIALS = 5;

export class CapacityCounters {
  readonly buffer: SharedArrayBuffer;
  private readonly cells: Int32Array;
  private readonly slots = new Map<string, number>();

  /**
   * `buffer`: attach to counters another thread created. An attached instance (a
   * data-plane thread) never assigns slots or writes limits: the control plane owns
   * both, and the thread binds the slots it publishes.
   */
  constructor(readonly maxDeployments = 4096, buffer?: SharedArrayBuffer, holder?: { readonly buffer: SharedArrayBuffer; readonly row: number }) {
    this.buffer = buffer ?? new SharedArrayBuffer(maxDeployments * FIELDS * 4);
    this.cells = new Int32Array(this.buffer);
    this.attached = buffer !== undefined;
    // The control plane's own (new) counters make the table; a thread attaches to its row.
    this.holdingsBuffer = holder?.buffer ?? new SharedArrayBuffer(buffer === undefined ? HOLDER_ROWS * maxDeployments * 4 : 0);
    this.holdings = new Int32Array(this.holdingsBuffer);
    if (holder !== undefined && (holder.row < 0 || holder.row >= HOLDER_ROWS)) throw new RangeError(`holder row ${holder.row} is out of range`);
    this.row = holder === undefined ? -1 : holder.row * maxDeployments;
  }

  /** Every thread's holdings, for the data-plane threads to attach to (each its own row). */
  readonly holdingsBuffer: SharedArrayBuffer;
  private readonly holdings: Int32Array;
  /** This thread's row offset in the holdings, -1 for the control plane (which outlives what it holds). */
  private readonly row: number;

  private hold(slot: number, n: number): void {
    if (this.row >= 0) Atomics.add(this.holdings, this.row + slot, n);
  }

  /**
   * Gives back what the data-plane thread of `row` held (it died with requests in flight):
   * the slots freed, by slot. Called by the control plane once the thread has exited.
   */
  reclaim(row: number): Map<number, number> {
    const freed = new Map<number, number>();
    const base = row * this.maxDeployments;
    for (let slot = 0; slot < this.maxDeployments; slot++) {
      const n = Atomics.exchange(this.holdings, base + slot, 0);
      if (n <= 0) continue;
      const cell = slot * FIELDS + IN_FLIGHT;
      // Never below 0: a count another thread gave back meanwhile is not taken twice.
      for (;;) {
        const cur = Atomics.load(this.cells, cell);
        const next = Math.max(0, cur - n);
        if (Atomics.compareExchange(this.cells, cell, cur, next) === cur) {
          if (cur > next) freed.set(slot, cur - next);
          break;
        }
      }
    }
    return freed;
  }

  private readonly attached: boolean;

  /** Registers a deployment (or updates its limit) and returns its slot. */
  register(id: string, limit: number): number {
    let slot = this.slots.get(id);
    if (this.attached) {
      if (slot === undefined) throw new Error(`deployment ${id} has no capacity slot: the control plane publishes slots before fleets`);
      return slot;
    }
    if (slot === undefined) {
      slot = this.nextSlot();
      if (slot >= this.maxDeployments) throw new Error(`more than ${this.maxDeployments} deployments`);
      this.slots.set(id, slot);
    }
    Atomics.store(this.cells, slot * FIELDS + LIMIT, limit);
    return slot;
  }

  /**
   * Names a slot that another thread registered (the control plane assigns slots and
   * publishes them), so that every thread counts a deployment in the same cells.
   */
  bind(id: string, slot: number): void {
    if (slot < 0 || slot >= this.maxDeployments) throw new RangeError(`slot ${slot} is out of range`);
    this.slots.set(id, slot);
  }

  /** [id, slot] pairs, for the snapshot the data-plane threads bind. */
  entries(): [string, number][] {
    return [...this.slots];
  }

  slotOf(id: string): number | undefined {
    return this.slots.get(id);
  }

  private nextSlot(): number {
    let max = -1;
    for (const s of this.slots.values()) if (s > max) max = s;
    return max + 1;
  }

  /** Takes one slot unless the deployment is at its limit (or at `cap`, a tier's share of it). */
  tryAcquire(slot: number, cap = Infinity): boolean {
    const base = slot * FIELDS;
    for (;;) {
      const cur = Atomics.load(this.cells, base + IN_FLIGHT);
      if (cur >= Math.min(cap, Atomics.load(this.cells, base + LIMIT))) return false;
      if (Atomics.compareExchange(this.cells, base + IN_FLIGHT, cur, cur + 1) === cur) {
        Atomics.add(this.cells, base + ACQUIRED, 1);
        this.hold(slot, 1);
        return true;
      }
    }
  }

  /** Counts a request without gating it (capacity gating off): stats stay true. */
  acquireUngated(slot: number): void {
    Atomics.add(this.cells, slot * FIELDS + IN_FLIGHT, 1);
    Atomics.add(this.cells, slot * FIELDS + ACQUIRED, 1);
    this.hold(slot, 1);
  }

  release(slot: number): void {
    const after = Atomics.sub(this.cells, slot * FIELDS + IN_FLIGHT, 1) - 1;
    // A release without its acquire is a bug; never let it hide as negative capacity.
    if (after < 0) {
      Atomics.add(this.cells, slot * FIELDS + IN_FLIGHT, 1);
      throw new Error(`capacity released more often than acquired (slot ${slot})`);
    }
    this.hold(slot, -1);
  }

  /** Why the deployment may not take new requests (route-bits.ts); 0 when it may. */
  route(slot: number): number {
    return Atomics.load(this.cells, slot * FIELDS + ROUTE);
  }

  /** Sets (on) or clears route bits; each bit has one writer, and or/and never clobber the others. */
  setRoute(slot: number, bits: number, on: boolean): void {
    if (on) Atomics.or(this.cells, slot * FIELDS + ROUTE, bits);
    else Atomics.and(this.cells, slot * FIELDS + ROUTE, ~bits);
  }

  /** Writes every route bit at once (the fleet manager, their one writer on the control plane). */
  setRouteWord(slot: number, bits: number): void {
    Atomics.store(this.cells, slot * FIELDS + ROUTE, bits);
  }

  /** Half-open: how many trial requests may still go (the breaker's owner sets them). */
  setTrials(slot: number, n: number): void {
    Atomics.store(this.cells, slot * FIELDS + TRIALS, n);
  }

  trials(slot: number): number {
    return Atomics.load(this.cells, slot * FIELDS + TRIALS);
  }

  /** Takes one trial permit, never below 0. */
  takeTrial(slot: number): boolean {
    const i = slot * FIELDS + TRIALS;
    for (;;) {
      const cur = Atomics.load(this.cells, i);
      if (cur <= 0) return false;
      if (Atomics.compareExchange(this.cells, i, cur, cur - 1) === cur) return true;
    }
  }

  returnTrial(slot: number): void {
    Atomics.add(this.cells, slot * FIELDS + TRIALS, 1);
  }

  countRejection(slot: number): void {
    Atomics.add(this.cells, slot * FIELDS + REJECTED, 1);
  }

  inFlight(slot: number): number {
    return Atomics.load(this.cells, slot * FIELDS + IN_FLIGHT);
  }

  limit(slot: number): number {
    return Atomics.load(this.cells, slot * FIELDS + LIMIT);
  }

  hasRoom(slot: number): boolean {
    return this.inFlight(slot) < this.limit(slot);
  }

  stats(id: string): { id: string; inFlight: number; concurrencyLimit: number; rejected: number; acquired: number; utilisation: number } | undefined {
    const slot = this.slots.get(id);
    if (slot === undefined) return undefined;
    const b = slot * FIELDS;
    const inFlight = Atomics.load(this.cells, b + IN_FLIGHT);
    const limit = Atomics.load(this.cells, b + LIMIT);
    return { id, inFlight, concurrencyLimit: limit, rejected: Atomics.load(this.cells, b + REJECTED), acquired: Atomics.load(this.cells, b + ACQUIRED), utilisation: limit > 0 ? inFlight / limit : 0 };
  }

  /** Deployment ids (the servers' own slots, `server:<id>`, are left out). */
  ids(): string[] {
    return [...this.slots.keys()].filter((id) => !id.startsWith('server:'));
  }

  /** Sums over `ids` (every deployment slot by default). */
  totals(ids: readonly string[] = this.ids()): { totalInFlight: number; totalRejected: number; totalLimit: number; deployments: number } {
    let totalInFlight = 0;
    let totalRejected = 0;
    let totalLimit = 0;
    for (const id of ids) {
      const slot = this.slots.get(id);
      if (slot === undefined) continue;
      totalInFlight += Atomics.load(this.cells, slot * FIELDS + IN_FLIGHT);
      totalRejected += Atomics.load(this.cells, slot * FIELDS + REJECTED);
      totalLimit += Atomics.load(this.cells, slot * FIELDS + LIMIT);
    }
    return { totalInFlight, totalRejected, totalLimit, deployments: ids.length };
  }
}
