// A fixed-size open-addressing hash table in a SharedArrayBuffer: every thread
// holding the same buffer maps a string key to the same slot index, and two
// different keys never share a slot (except for a 64-bit hash collision, see
// below). Callers keep their per-key state in the slot's payload bytes, changed
// under the slot's lock (or with Atomics on Int32 payload cells).
//
// Why not a Map per thread: counters that must be exact across data-plane threads
// (rate-limit buckets, quota windows) need one home that all threads see.
//
// Keys. A key is identified by two independent 32-bit hashes of its UTF-16 code
// units (FNV-1a and a murmur3-style mix with another seed): 64 bits in all. The
// key text itself is not compared, so two keys with the same 64-bit hash share a
// slot. With n live keys the chance of any such pair is about n² / 2^65:
// 100 000 keys → ~3e-10. The text is copied (up to `keyBytes` bytes of UTF-8,
// truncated beyond) into a side arena only so that the control plane can list keys.
//
// Probing. At most PROBES (16) slots from the key's home slot (h1 mod capacity),
// a step of 1 + h2 mod (capacity - 1) apart (double hashing; a table of at most 16
// slots is probed in order). Bounded linear probing with step 1 clustered: at 50%
// load 1 insert in ~2000 found its window full. With a composite capacity a step
// sharing a large factor with it can revisit a slot within the 16: harmless, the
// window is just smaller for that key. Lookups are lock-free. An insert (the miss path) takes the
// home slot's insert lock, so two threads inserting the same key are serialized
// and the second finds the first's slot. When the probe window has no free slot,
// the insert reclaims one whose owner says it is stale (`stale` hook, called with
// the slot locked), else, if asked (`evictLru`), the least recently touched one;
// otherwise it returns -1 and the caller decides. So an insert is O(PROBES) and
// the table never needs a sweep.
//
// Slot identity changes (claim, reclaim, release) happen only with the slot's lock
// held, so a caller that locks a slot and sees it still `holds` its key can use the
// payload safely: `lockKey` does find-or-insert + lock + verify in one call.
//
// Locks are 3-state futex mutexes on an Int32 (0 free, 1 held, 2 held with waiters):
// a short spin, then Atomics.wait, so a holder preempted on a busy 2-core box does
// not make the others burn their time slice.
//
// Memory layout (all offsets in bytes from `byteOffset`, little-endian as the
// platform; Int32 cells are accessed only with Atomics):
//
//   header, 64 bytes
//     0   Int32  magic 0x53544231 ("STB1"), checked when a thread attaches
//     4   Int32  capacity (slots)
//     8   Int32  payloadBytes per slot (multiple of 8)
//     12  Int32  keyBytes per slot (0: no key text kept)
//     16  Int32  size: slots currently LIVE
//     20  Int32  tick: recency clock for `touch` (wraps; compared modulo 2^32)
//     24  Int32  recordBytes (stride of a slot record)
//     28..63     reserved
//   records, capacity × recordBytes, from offset 64; record of slot i at 64 + i × recordBytes
//     +0  Int32  state: 0 EMPTY (never used), 1 CLAIMING (identity being written), 2 LIVE, 3 TOMBSTONE
//     +4  Int32  lock: the slot's mutex, held while its identity or payload changes
//     +8  Int32  h1 (FNV-1a of the key)
//     +12 Int32  h2 (murmur-style hash of the key)
//     +16 Int32  stamp: tick when last touched (LRU order among a probe window)
//     +20 Int32  insert lock: taken by inserts of keys whose home slot is this one
//     +24 ...    payload, payloadBytes (8-aligned: Float64 fields may start at +24)
//     recordBytes = round up (24 + payloadBytes) to `align` (8 by default; 64 puts
//     every slot on its own cache line, see bench/contention.ts)
//   key arena, capacity × keyStride, from 64 + capacity × recordBytes (only if keyBytes > 0)
//     +0  Int32  UTF-8 length written (bit 31 set: the key was truncated)
//     +4  Int32  reserved
//     +8  bytes  UTF-8 text, keyBytes; keyStride = round up (8 + keyBytes) to 8

const MAGIC = 0x53544231;
export const PROBES = 16;
const HEADER_BYTES = 64;
const META_BYTES = 24;

// header Int32 indexes
const H_MAGIC = 0;
const H_CAPACITY = 1;
const H_PAYLOAD = 2;
const H_KEYBYTES = 3;
const H_SIZE = 4;
const H_TICK = 5;
const H_RECORD = 6;

// record Int32 offsets
const R_STATE = 0;
const R_LOCK = 1;
const R_H1 = 2;
const R_H2 = 3;
const R_STAMP = 4;
const R_INSERT = 5;

const EMPTY = 0;
const CLAIMING = 1;
const LIVE = 2;
const TOMB = 3;

const TRUNCATED = 0x8000_0000 | 0;

export interface SharedTableOptions {
  /** Bytes of caller state per slot (rounded up to 8). Default 0. */
  payloadBytes?: number;
  /** UTF-8 bytes of key text kept per slot for listing; 0 keeps none. Default 120. */
  keyBytes?: number;
  /** Slot records are padded to a multiple of this (8, 64 or 128). Default 8. */
  align?: number;
  /** Where the table starts in `buffer` (multiple of 8), so one buffer can hold a table and more. Default 0. */
  byteOffset?: number;
}

/** Called by an insert that needs a slot; `lockKey`/`acquire` pass them through. Keep one object per owner: no allocation per call. */
export interface SlotHooks {
  /** Resets the payload of a slot just given to a key (called with the slot locked). Fresh slots are zero-filled. */
  init?(slot: number): void;
  /** Whether the slot's owner no longer needs it (called with the slot locked): the insert then takes it over. */
  stale?(slot: number): boolean;
  /** When nothing in the probe window is stale, take over the least recently touched slot there (sampled LRU). */
  evictLru?: boolean;
}

const align8 = (n: number) => (n + 7) & ~7;

function layout(capacity: number, opts: SharedTableOptions) {
  if (!(Number.isInteger(capacity) && capacity >= 1 && capacity < 2 ** 26)) throw new RangeError(`capacity must be an integer in [1, 2^26), got ${capacity}`);
  const payloadBytes = align8(Math.max(0, opts.payloadBytes ?? 0));
  const keyBytes = Math.max(0, Math.floor(opts.keyBytes ?? 120));
  const align = opts.align ?? 8;
  if (!(Number.isInteger(align) && align >= 8 && (align & (align - 1)) === 0)) throw new RangeError(`align must be a power of 2 >= 8, got ${align}`);
  const recordBytes = (META_BYTES + payloadBytes + align - 1) & ~(align - 1);
  const keyStride = keyBytes > 0 ? align8(8 + keyBytes) : 0;
  const byteOffset = opts.byteOffset ?? 0;
  if (byteOffset % 8 !== 0) throw new RangeError(`byteOffset must be a multiple of 8, got ${byteOffset}`);
  const byteLength = HEADER_BYTES + capacity * recordBytes + capacity * keyStride;
  return { payloadBytes, keyBytes, recordBytes, keyStride, byteOffset, byteLength };
}

// 64-bit key identity as two 32-bit hashes over UTF-16 code units, in one pass.
let H1 = 0;
let H2 = 0;
function hashKey(key: string): void {
  let a = 0x811c9dc5 | 0; // FNV-1a offset basis
  let b = 0x9747b28c | 0; // murmur3 seed
  const n = key.length;
  for (let i = 0; i < n; i++) {
    const c = key.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    let k = Math.imul(c, 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    b ^= k;
    b = (b << 13) | (b >>> 19);
    b = (Math.imul(b, 5) + 0xe6546b64) | 0;
  }
  // murmur3 finalizer (fmix32) on both, so that nearby keys land far apart in the table
  b ^= n;
  b ^= b >>> 16;
  b = Math.imul(b, 0x85ebca6b);
  b ^= b >>> 13;
  b = Math.imul(b, 0xc2b2ae35);
  b ^= b >>> 16;
  a ^= a >>> 16;
  a = Math.imul(a, 0x85ebca6b);
  a ^= a >>> 13;
  a = Math.imul(a, 0xc2b2ae35);
  a ^= a >>> 16;
  H1 = a;
  H2 = b;
}

/** The key's two 32-bit hashes (the table's 64-bit identity of a key), exported for tests and tools. */
export function keyHash(key: string): [number, number] {
  hashKey(key);
  return [H1 >>> 0, H2 >>> 0];
}

const SPINS = 64;

/** Futex-style mutex on cell `i` of `a` (0 free, 1 held, 2 held with waiters). */
export function lockCell(a: Int32Array, i: number): void {
  let c = Atomics.compareExchange(a, i, 0, 1);
  if (c === 0) return;
  for (let n = 0; n < SPINS; n++) {
    if (Atomics.load(a, i) === 0) {
      c = Atomics.compareExchange(a, i, 0, 1);
      if (c === 0) return;
    }
  }
  if (c !== 2) c = Atomics.exchange(a, i, 2);
  while (c !== 0) {
    Atomics.wait(a, i, 2);
    c = Atomics.exchange(a, i, 2);
  }
}

export function unlockCell(a: Int32Array, i: number): void {
  if (Atomics.sub(a, i, 1) !== 1) {
    Atomics.store(a, i, 0);
    Atomics.notify(a, i, 1);
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class SharedTable {
  readonly buffer: SharedArrayBuffer;
  readonly capacity: number;
  readonly byteOffset: number;
  /** Bytes this table spans in `buffer`, from `byteOffset`. */
  readonly byteLength: number;
  readonly payloadBytes: number;
  readonly keyBytes: number;
  readonly recordBytes: number;
  readonly probes: number;
  /** Int32 view of the whole table, header first (index 0 = byteOffset). */
  readonly i32: Int32Array;
  readonly #keyStride: number;
  readonly #keyBase: number;
  readonly #bytes: Uint8Array;
  readonly #rec: number; // recordBytes / 4

  /** Bytes a table of `capacity` slots needs (plus `byteOffset` if it does not start at 0). */
  static byteLength(capacity: number, opts: SharedTableOptions = {}): number {
    return layout(capacity, opts).byteLength;
  }

  /**
   * A new table, or a view of the one already in `buffer` (another thread's): then
   * `capacity` and `opts` must be the ones it was created with (checked).
   */
  constructor(capacity: number, buffer?: SharedArrayBuffer, opts: SharedTableOptions = {}) {
    const l = layout(capacity, opts);
    this.capacity = capacity;
    this.byteOffset = l.byteOffset;
    this.byteLength = l.byteLength;
    this.payloadBytes = l.payloadBytes;
    this.keyBytes = l.keyBytes;
    this.recordBytes = l.recordBytes;
    this.probes = Math.min(PROBES, capacity);
    this.#keyStride = l.keyStride;
    this.#keyBase = l.byteOffset + HEADER_BYTES + capacity * l.recordBytes;
    this.#rec = l.recordBytes >> 2;
    this.buffer = buffer ?? new SharedArrayBuffer(l.byteOffset + l.byteLength);
    if (this.buffer.byteLength < l.byteOffset + l.byteLength) throw new RangeError(`buffer of ${this.buffer.byteLength} bytes is too small for a table of ${capacity} slots (${l.byteOffset + l.byteLength})`);
    this.i32 = new Int32Array(this.buffer, l.byteOffset, l.byteLength >> 2);
    this.#bytes = new Uint8Array(this.buffer);
    const h = this.i32;
    if (buffer === undefined || Atomics.load(h, H_MAGIC) === 0) {
      // A fresh buffer: write the header. (Attaching to a zeroed buffer is the same as creating.)
      Atomics.store(h, H_CAPACITY, capacity);
      Atomics.store(h, H_PAYLOAD, l.payloadBytes);
      Atomics.store(h, H_KEYBYTES, l.keyBytes);
      Atomics.store(h, H_RECORD, l.recordBytes);
      Atomics.store(h, H_MAGIC, MAGIC);
    } else if (
      Atomics.load(h, H_MAGIC) !== MAGIC ||
      Atomics.load(h, H_CAPACITY) !== capacity ||
      Atomics.load(h, H_PAYLOAD) !== l.payloadBytes ||
      Atomics.load(h, H_KEYBYTES) !== l.keyBytes ||
      Atomics.load(h, H_RECORD) !== l.recordBytes
    ) {
      throw new RangeError('buffer holds a shared table with another layout (capacity, payloadBytes, keyBytes or align differ)');
    }
  }

  /** Capacity recorded in a buffer's table header (at `byteOffset`), for attaching without knowing it. */
  static capacityOf(buffer: SharedArrayBuffer, byteOffset = 0): number {
    const h = new Int32Array(buffer, byteOffset, HEADER_BYTES >> 2);
    if (Atomics.load(h, H_MAGIC) !== MAGIC) throw new RangeError('buffer holds no shared table at this offset');
    return Atomics.load(h, H_CAPACITY);
  }

  /** LIVE slots. Approximate while other threads insert or release. */
  get size(): number {
    return Atomics.load(this.i32, H_SIZE);
  }

  /** Byte offset in `buffer` of slot's payload (8-aligned). */
  payloadOffset(slot: number): number {
    return this.byteOffset + HEADER_BYTES + slot * this.recordBytes + META_BYTES;
  }

  /** The slot holding `key`, or -1. Lock-free; lock the slot and check `holds` before trusting it. */
  find(key: string): number {
    hashKey(key);
    return this.#find(H1, H2);
  }

  /** The slot of `key`, inserting it if absent; -1 when the probe window is full and nothing could be reclaimed. */
  acquire(key: string, hooks?: SlotHooks): number {
    hashKey(key);
    const h1 = H1;
    const h2 = H2;
    const i = this.#find(h1, h2);
    return i >= 0 ? i : this.#insert(h1, h2, key, hooks);
  }

  /**
   * Finds or inserts `key` and returns its slot locked and verified to be the
   * key's (call `unlock` after); -1 when no slot could be had.
   */
  lockKey(key: string, hooks?: SlotHooks): number {
    hashKey(key);
    const h1 = H1;
    const h2 = H2;
    for (let attempt = 0; attempt < 8; attempt++) {
      let i = this.#find(h1, h2);
      if (i < 0) i = this.#insert(h1, h2, key, hooks);
      if (i < 0) return -1;
      this.lock(i);
      if (this.#holds(i, h1, h2)) return i;
      this.unlock(i); // reclaimed between the lookup and the lock: look again
    }
    return -1;
  }

  /** Locks an existing key's slot: the slot (locked), or -1 if the key has none. */
  lockExisting(key: string): number {
    hashKey(key);
    const h1 = H1;
    const h2 = H2;
    for (let attempt = 0; attempt < 8; attempt++) {
      const i = this.#find(h1, h2);
      if (i < 0) return -1;
      this.lock(i);
      if (this.#holds(i, h1, h2)) return i;
      this.unlock(i);
    }
    return -1;
  }

  lock(slot: number): void {
    lockCell(this.i32, this.#r(slot) + R_LOCK);
  }

  unlock(slot: number): void {
    unlockCell(this.i32, this.#r(slot) + R_LOCK);
  }

  /** Whether `slot` is LIVE and holds `key`. Meaningful with the slot locked. */
  holds(slot: number, key: string): boolean {
    hashKey(key);
    return this.#holds(slot, H1, H2);
  }

  /** Whether `slot` holds a key. */
  isLive(slot: number): boolean {
    return Atomics.load(this.i32, this.#r(slot) + R_STATE) === LIVE;
  }

  /** Marks `slot` as the most recently used (for `evictLru`). One shared Atomics.add: skip it where LRU is not needed. */
  touch(slot: number): void {
    Atomics.store(this.i32, this.#r(slot) + R_STAMP, Atomics.add(this.i32, H_TICK, 1) + 1);
  }

  /** Frees `slot` for another key. Call with the slot locked. */
  release(slot: number): void {
    const r = this.#r(slot);
    if (Atomics.compareExchange(this.i32, r + R_STATE, LIVE, TOMB) === LIVE) Atomics.sub(this.i32, H_SIZE, 1);
  }

  /**
   * The key text of a LIVE slot (a truncated key ends with '…'), or undefined.
   * Takes the slot's lock: do not call with it held.
   */
  keyOf(slot: number): string | undefined {
    if (this.#keyStride === 0) return undefined;
    this.lock(slot);
    try {
      return this.keyOfLocked(slot);
    } finally {
      this.unlock(slot);
    }
  }

  /** `keyOf` for a caller that holds the slot's lock. */
  keyOfLocked(slot: number): string | undefined {
    if (this.#keyStride === 0 || !this.isLive(slot)) return undefined;
    const base = this.#keyBase + slot * this.#keyStride;
    const word = Atomics.load(this.i32, (base - this.byteOffset) >> 2);
    const len = word & 0x7fff_ffff;
    // slice copies out of the shared buffer: TextDecoder refuses shared views.
    const text = decoder.decode(this.#bytes.slice(base + 8, base + 8 + len));
    return (word & TRUNCATED) !== 0 ? text + '…' : text;
  }

  /** Indexes of LIVE slots, in slot order (a sweep: for the control plane, never the request path). */
  liveSlots(): number[] {
    const out: number[] = [];
    for (let i = 0; i < this.capacity; i++) if (this.isLive(i)) out.push(i);
    return out;
  }

  #r(slot: number): number {
    return (HEADER_BYTES >> 2) + slot * this.#rec;
  }

  #holds(slot: number, h1: number, h2: number): boolean {
    const a = this.i32;
    const r = this.#r(slot);
    return Atomics.load(a, r + R_STATE) === LIVE && Atomics.load(a, r + R_H1) === h1 && Atomics.load(a, r + R_H2) === h2;
  }

  #home(h1: number): number {
    return (h1 >>> 0) % this.capacity;
  }

  /**
   * Distance between probes: double hashing, so keys with the same home do not
   * queue behind each other (plain linear probing clusters: at 50% load 1 insert
   * in ~2000 found its 16 slots full; with a step per key, ~0.5^16). A table no
   * bigger than the window probes every slot in order.
   */
  #step(h2: number): number {
    return this.capacity <= this.probes ? 1 : 1 + ((h2 >>> 0) % (this.capacity - 1));
  }

  /** The slots `key` may occupy, in probe order (for tools and tests). */
  probeSlots(key: string): number[] {
    hashKey(key);
    const step = this.#step(H2);
    const out: number[] = [];
    let i = this.#home(H1);
    for (let k = 0; k < this.probes; k++) {
      out.push(i);
      i += step;
      if (i >= this.capacity) i -= this.capacity;
    }
    return out;
  }

  /** State of a slot, waiting out a claim in progress (a few stores under the slot's lock). */
  #settledState(r: number): number {
    let s = Atomics.load(this.i32, r + R_STATE);
    while (s === CLAIMING) {
      // The claimer holds the slot lock: taking it waits for the claim to finish.
      lockCell(this.i32, r + R_LOCK);
      unlockCell(this.i32, r + R_LOCK);
      s = Atomics.load(this.i32, r + R_STATE);
    }
    return s;
  }

  #find(h1: number, h2: number): number {
    const a = this.i32;
    const step = this.#step(h2);
    let i = this.#home(h1);
    for (let k = 0; k < this.probes; k++) {
      const r = this.#r(i);
      const s = this.#settledState(r);
      // A never-used slot ends the chain: slots are never emptied again (released ones become tombstones).
      if (s === EMPTY) return -1;
      if (s === LIVE && Atomics.load(a, r + R_H1) === h1 && Atomics.load(a, r + R_H2) === h2) return i;
      i += step;
          if (i >= this.capacity) i -= this.capacity;
    }
    return -1;
  }

  #insert(h1: number, h2: number, key: string, hooks: SlotHooks | undefined): number {
    const a = this.i32;
    const home = this.#home(h1);
    const step = this.#step(h2);
    const insertLock = this.#r(home) + R_INSERT;
    lockCell(a, insertLock);
    try {
      // Serialized with every other insert of this key: look again, then take the first free slot.
      for (let round = 0; round < 4; round++) {
        let free = -1;
        let i = home;
        for (let k = 0; k < this.probes; k++) {
          const r = this.#r(i);
          const s = this.#settledState(r);
          if (s === LIVE && Atomics.load(a, r + R_H1) === h1 && Atomics.load(a, r + R_H2) === h2) return i;
          if ((s === EMPTY || s === TOMB) && free < 0) free = i;
          if (s === EMPTY) break;
          i += step;
          if (i >= this.capacity) i -= this.capacity;
        }
        if (free < 0) break;
        if (this.#claim(free, h1, h2, key, hooks, false)) return free;
        // Another key (other home) took it between the scan and the lock: scan again.
      }
      return this.#reclaim(home, h1, h2, key, hooks);
    } finally {
      unlockCell(a, insertLock);
    }
  }

  /** Takes over a stale slot of the window, else (evictLru) the least recently touched; -1 if neither. */
  #reclaim(home: number, h1: number, h2: number, key: string, hooks: SlotHooks | undefined): number {
    if (hooks === undefined) return -1;
    const a = this.i32;
    const step = this.#step(h2);
    if (hooks.stale !== undefined) {
      let i = home;
      for (let k = 0; k < this.probes; k++) {
        if (this.#claim(i, h1, h2, key, hooks, true)) return i;
        i += step;
          if (i >= this.capacity) i -= this.capacity;
      }
    }
    if (hooks.evictLru === true) {
      for (let round = 0; round < 4; round++) {
        let victim = -1;
        let oldest = 0;
        let i = home;
        for (let k = 0; k < this.probes; k++) {
          const r = this.#r(i);
          if (Atomics.load(a, r + R_STATE) === LIVE) {
            const stamp = Atomics.load(a, r + R_STAMP);
            // Compared modulo 2^32, so the tick may wrap.
            if (victim < 0 || ((stamp - oldest) | 0) < 0) {
              victim = i;
              oldest = stamp;
            }
          } else if (Atomics.load(a, r + R_STATE) !== CLAIMING) {
            // Freed meanwhile: take it as a plain free slot.
            if (this.#claim(i, h1, h2, key, hooks, false)) return i;
          }
          i += step;
          if (i >= this.capacity) i -= this.capacity;
        }
        if (victim < 0) return -1;
        const r = this.#r(victim);
        lockCell(a, r + R_LOCK);
        if (Atomics.load(a, r + R_STATE) === LIVE) {
          this.#assign(victim, h1, h2, key, hooks);
          unlockCell(a, r + R_LOCK);
          return victim;
        }
        unlockCell(a, r + R_LOCK);
      }
    }
    return -1;
  }

  /** Claims slot `i` for the key if it is free (or, with `reclaim`, LIVE and stale). */
  #claim(i: number, h1: number, h2: number, key: string, hooks: SlotHooks | undefined, reclaim: boolean): boolean {
    const a = this.i32;
    const r = this.#r(i);
    lockCell(a, r + R_LOCK);
    try {
      const s = Atomics.load(a, r + R_STATE);
      if (reclaim) {
        if (s !== LIVE || hooks?.stale === undefined || !hooks.stale(i)) return false;
      } else if (s !== EMPTY && s !== TOMB) {
        return false;
      } else {
        Atomics.add(a, H_SIZE, 1);
      }
      this.#assign(i, h1, h2, key, hooks);
      return true;
    } finally {
      unlockCell(a, r + R_LOCK);
    }
  }

  /** Gives slot `i` (locked by the caller) its new identity. */
  #assign(i: number, h1: number, h2: number, key: string, hooks: SlotHooks | undefined): void {
    const a = this.i32;
    const r = this.#r(i);
    Atomics.store(a, r + R_STATE, CLAIMING);
    Atomics.store(a, r + R_H1, h1);
    Atomics.store(a, r + R_H2, h2);
    Atomics.store(a, r + R_STAMP, Atomics.add(a, H_TICK, 1) + 1);
    if (this.#keyStride > 0) this.#writeKey(i, key);
    hooks?.init?.(i);
    Atomics.store(a, r + R_STATE, LIVE);
  }

  #writeKey(slot: number, key: string): void {
    const base = this.#keyBase + slot * this.#keyStride;
    const dst = this.#bytes.subarray(base + 8, base + 8 + this.keyBytes);
    // encodeInto stops before a code point that does not fit, so the text stays valid UTF-8.
    const { read, written } = encoder.encodeInto(key, dst);
    Atomics.store(this.i32, (base - this.byteOffset) >> 2, read < key.length ? written | TRUNCATED : written);
  }
}
