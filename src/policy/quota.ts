// TPM/RPM quotas over a sliding 60 s window. Each subject keeps 60 one-second
// buckets instead of a list of events, so memory and the cost of a check are
// constant however busy the subject is. The price is granularity: a bucket
// leaves the window as a whole, so an event late in second s stops counting at
// (s + 60) s, up to 1 s early.
//
// The windows and the limits live in a SharedArrayBuffer, so every data-plane
// thread holding the same buffer (`new QuotaLedger(now, { buffer })`) counts in the
// same windows and sees a setLimits at once. A reserve locks the windows of all its
// subjects (per-subject locks, taken in slot order so two reserves cannot deadlock),
// checks every limit, then adds to every window: all-or-nothing across threads.
//
// Memory layout of the buffer (bytes):
//   0..63        header: Int32 magic 0x514c4431 ("QLD1"), Int32 maxSubjects,
//                Int32 maxLimits, Int32 generation counter (see below), Int32 cluster
//                (1: limits are shared by replicas, spent from leases), rest reserved
//   64..L        limits: SharedTable (src/sched/shared-table.ts) of 2 × maxLimits slots,
//                120 bytes of key text, payload 88 bytes (Float64 indexes L_*):
//                  rpm, tpm (NaN: no such limit), then the cluster lease: its window
//                  (epoch minute), requests and tokens left, the next window's lease,
//                  when a request last asked it, whether it runs low, and the window in
//                  which the cluster had nothing more to lease (NaN: none)
//
// Cluster mode (replicas sharing Redis, src/state/leases.ts): a subject with limits is
// also spent from a lease, a block of the cluster's budget for one minute that the
// control plane takes from Redis ahead of need. The check here stays local and
// synchronous: no request waits on the network; an empty lease refuses like a limit.
//   L..end       windows: SharedTable of maxSubjects slots, 120 bytes of key text,
//                payload 1456 bytes (Float64 indexes from the payload start):
//                  0 reservedTokens   1 generation (new each time the slot gets a subject)
//                  2..61 secs[60] (absolute second held by each bucket, -Infinity: none)
//                  62..121 reqs[60]   122..181 toks[60]
// Payload fields are read and written only with their slot's lock held.
//
// Bounded memory: maxSubjects window slots, fixed at creation. A new subject takes
// a free slot among the 16 its key probes; else one whose subject is idle (empty
// window, nothing reserved); else the least recently used of those 16 (sampled LRU,
// exact when maxSubjects <= 16), whose counts are then forgotten. Limits are kept
// apart and are never evicted. Subject names longer than 120 bytes of UTF-8 are
// listed truncated (ending in '…') by snapshot().
import { BrokerError } from '../errors.ts';
import { SharedTable, type SlotHooks } from '../sched/shared-table.ts';

export interface QuotaLimits {
  /** Requests per 60 s window. 0 admits nothing (suspends the subject); omit for no limit. */
  rpm?: number;
  /** Tokens per 60 s window. 0 admits nothing; omit for no limit. */
  tpm?: number;
}

export interface Reservation {
  readonly subjects: readonly string[];
  /** Tokens reserved up front (the estimate). */
  readonly tokens: number;
  /** Clock reading (epoch ms) when the reservation was made. */
  readonly at: number;
  /** Replaces the reserved tokens with the real usage. Only the first reconcile/release has an effect. */
  reconcile(actualTokens: number): void;
  /** Gives the tokens back; the request still counts for RPM. Only the first reconcile/release/cancel has an effect. */
  release(): void;
  /** Gives the tokens and the request back, as if it had never been counted (a cache hit). Only the first reconcile/release/cancel has an effect. */
  cancel(): void;
}

export interface QuotaUsage {
  /** Requests in the current window. */
  rpm: number;
  /** Tokens in the current window, reserved estimates included. */
  tpm: number;
  limits: QuotaLimits;
  /** Tokens of reservations not yet reconciled or released. */
  reservedTokens: number;
}

/** One limited field of a subject's window (headroom()). */
export interface HeadroomField {
  readonly limit: number;
  readonly remaining: number;
  /** Milliseconds until the window holds none of the field. */
  readonly resetMs: number;
}

export interface Headroom {
  readonly requests?: HeadroomField;
  readonly tokens?: HeadroomField;
}

export interface QuotaLedgerOptions {
  /**
   * Subjects whose windows are kept: the slots of the window table, fixed at
   * creation (~1.6 KB each). Beyond it an idle subject, else the least recently
   * used among the 16 slots a new subject probes, is forgotten; size it about twice
   * the subjects active within one minute so that active ones are not. Ignored
   * with `buffer` (the buffer's own count applies).
   */
  maxSubjects?: number;
  /** Subjects that can hold limits at once (the limits table has twice as many slots). Default 10 000. Ignored with `buffer`. */
  maxLimits?: number;
  /** A ledger another thread created (its `.buffer`): both then count in the same windows. */
  buffer?: SharedArrayBuffer;
}

const WINDOW_S = 60;
const MAGIC = 0x514c4431;
const HEADER_BYTES = 64;
const G_MAGIC = 0;
const G_MAX_SUBJECTS = 1;
const G_MAX_LIMITS = 2;
const G_GENERATION = 3;
const G_CLUSTER = 4;

// limits payload, Float64 indexes from the slot's payload start
const L_RPM = 0;
const L_TPM = 1;
const L_WIN = 2;
const L_RLEFT = 3;
const L_TLEFT = 4;
const L_NEXT_WIN = 5;
const L_NEXT_R = 6;
const L_NEXT_T = 7;
const L_ASKED_AT = 8;
const L_LOW = 9;
const L_DRY_WIN = 10;
/** The minute of the last lease granted for that minute: after one, a short lease waits for its top-up instead of lending. */
const L_GRANT_WIN = 11;
const L_FIELDS = 12;
/** A lease below this share of its block asks the control plane for more. */
const LOW_SHARE = 0.5;

// window payload, Float64 indexes from the slot's payload start
const W_RESERVED = 0;
const W_GEN = 1;
/** Of W_RESERVED, what may come back when the requests end: their output guesses (a prompt is spent whatever happens). */
const W_RETURNABLE = 2;
const W_SECS = 3;
const W_REQS = W_SECS + WINDOW_S;
const W_TOKS = W_REQS + WINDOW_S;
const W_FIELDS = W_TOKS + WINDOW_S;

const LIMITS_OPTS = { payloadBytes: L_FIELDS * 8, keyBytes: 120 };
const WINDOWS_OPTS = { payloadBytes: W_FIELDS * 8, keyBytes: 120 };

function slotOf(sec: number): number {
  return ((sec % WINDOW_S) + WINDOW_S) % WINDOW_S;
}

function layout(maxSubjects: number, maxLimits: number) {
  const limitsCapacity = 2 * maxLimits;
  const limitsBytes = SharedTable.byteLength(limitsCapacity, LIMITS_OPTS);
  const windowsOffset = HEADER_BYTES + limitsBytes;
  const byteLength = windowsOffset + SharedTable.byteLength(maxSubjects, WINDOWS_OPTS);
  return { limitsCapacity, windowsOffset, byteLength };
}

/** A 60 s window in a slot's payload: `p` is the Float64 index of the payload start. Call with the slot locked. */
class WindowView {
  constructor(readonly f: Float64Array) {}

  live(p: number, i: number, nowSec: number): boolean {
    // A slot from the future (clock stepped back) keeps counting: erring towards rejection is safe.
    return this.f[p + W_SECS + i]! > nowSec - WINDOW_S;
  }

  init(p: number, generation: number): void {
    const f = this.f;
    f[p + W_RESERVED] = 0;
    f[p + W_RETURNABLE] = 0;
    f[p + W_GEN] = generation;
    f.fill(-Infinity, p + W_SECS, p + W_SECS + WINDOW_S);
    f.fill(0, p + W_REQS, p + W_FIELDS);
  }

  totals(p: number, nowSec: number): { reqs: number; toks: number } {
    let reqs = 0;
    let toks = 0;
    for (let i = 0; i < WINDOW_S; i++) {
      if (!this.live(p, i, nowSec)) continue;
      reqs += this.f[p + W_REQS + i]!;
      toks += this.f[p + W_TOKS + i]!;
    }
    return { reqs, toks };
  }

  add(p: number, nowSec: number, reqs: number, toks: number): void {
    const f = this.f;
    const i = slotOf(nowSec);
    if (f[p + W_SECS + i] !== nowSec) {
      f[p + W_SECS + i] = nowSec;
      f[p + W_REQS + i] = 0;
      f[p + W_TOKS + i] = 0;
    }
    f[p + W_REQS + i]! += reqs;
    f[p + W_TOKS + i]! += toks;
  }

  /** Adjusts the tokens (and requests) of second `sec` if that second is still held; once it has left the window there is nothing to correct. */
  adjust(p: number, sec: number, delta: number, reqs = 0): void {
    const i = slotOf(sec);
    if (this.f[p + W_SECS + i] !== sec) return;
    this.f[p + W_TOKS + i] = Math.max(0, this.f[p + W_TOKS + i]! + delta);
    if (reqs !== 0) this.f[p + W_REQS + i] = Math.max(0, this.f[p + W_REQS + i]! + reqs);
  }

  isIdle(p: number, nowSec: number): boolean {
    if (this.f[p + W_RESERVED]! > 0) return false;
    for (let i = 0; i < WINDOW_S; i++) if (this.live(p, i, nowSec) && (this.f[p + W_REQS + i]! > 0 || this.f[p + W_TOKS + i]! > 0)) return false;
    return true;
  }

  /** Milliseconds until no bucket holding any of the field is left in the window (0: none holds any). */
  drainedIn(p: number, field: number, nowMs: number): number {
    const nowSec = Math.floor(nowMs / 1000);
    let newest = -Infinity;
    for (let i = 0; i < WINDOW_S; i++) if (this.live(p, i, nowSec) && this.f[p + field + i]! > 0) newest = Math.max(newest, this.f[p + W_SECS + i]!);
    return newest === -Infinity ? 0 : Math.max(0, (newest + WINDOW_S) * 1000 - nowMs);
  }

  /** Whole seconds until the oldest buckets holding at least `excess` of the field have left the window. */
  retryAfter(p: number, field: number, excess: number, nowMs: number): number {
    const f = this.f;
    const nowSec = Math.floor(nowMs / 1000);
    const live: number[] = [];
    for (let i = 0; i < WINDOW_S; i++) if (this.live(p, i, nowSec) && f[p + field + i]! > 0) live.push(i);
    live.sort((a, b) => f[p + W_SECS + a]! - f[p + W_SECS + b]!);
    let freed = 0;
    for (const i of live) {
      freed += f[p + field + i]!;
      if (freed >= excess) return Math.max(1, Math.ceil(((f[p + W_SECS + i]! + WINDOW_S) * 1000 - nowMs) / 1000));
    }
    return WINDOW_S; // unreachable while excess <= what the window holds
  }
}

/** Retry-After when the output guesses of requests in flight cover the shortfall: their end may make room. */
const RESERVED_RETRY_S = 1;

interface Violation {
  subject: string;
  limit: 'rpm' | 'tpm';
  retryAfter: number;
  message: string;
  /** The request can never fit the limit: no wait helps (x-should-retry: false, no Retry-After). */
  never?: boolean;
  /** A short lease whose top-up is on its way (the cluster is not dry this minute): worth a short wait. */
  topUpPending?: boolean;
}

/** A subject's cluster lease, as the control plane sees it (LeaseKeeper). */
export interface LeaseState {
  readonly limits: QuotaLimits;
  /** The epoch minute the lease is for; NaN: none yet. */
  readonly window: number;
  readonly requestsLeft: number;
  readonly tokensLeft: number;
  /** The next minute's lease, taken ahead so that a new minute starts with budget. */
  readonly nextWindow: number;
  /** Epoch ms of the last request that asked the lease, served or not (0: never). */
  readonly askedAt: number;
  /** The lease ran low or dry: it wants a top-up. */
  readonly low: boolean;
  /** The minute in which the cluster had nothing more to lease; NaN: none. */
  readonly dryWindow: number;
}

const minuteOf = (ms: number): number => Math.floor(ms / 60_000);

class QuotaReservation implements Reservation {
  readonly subjects: readonly string[];
  readonly tokens: number;
  readonly at: number;
  readonly #sec: number;
  readonly #ledger: QuotaLedger;
  /** Window slot per subject (-1: not counted) and the slot's generation then, ascending by slot. */
  readonly #slots: readonly number[];
  readonly #gens: readonly number[];
  readonly #returnable: number;
  #settled = false;

  constructor(ledger: QuotaLedger, subjects: readonly string[], tokens: number, at: number, sec: number, slots: number[], gens: number[], returnable: number) {
    this.subjects = subjects;
    this.tokens = tokens;
    this.#returnable = returnable;
    this.at = at;
    this.#sec = sec;
    this.#ledger = ledger;
    this.#slots = slots;
    this.#gens = gens;
  }

  reconcile(actualTokens: number): void {
    // Completion must never throw: an upstream without a usage count keeps the estimate.
    const actual = Number.isFinite(actualTokens) ? Math.max(0, actualTokens) : this.tokens;
    this.#settle(actual);
  }

  release(): void {
    this.#settle(0, false);
  }

  cancel(): void {
    this.#settle(0, true);
  }

  #settle(actual: number, uncount = false): void {
    if (this.#settled) return;
    this.#settled = true;
    this.#ledger._settle(this.#slots, this.#gens, this.tokens, this.#returnable, this.#sec, actual, uncount ? -1 : 0);
    if (actual !== this.tokens || uncount) this.#ledger._settleLeases(this.subjects, this.at, this.tokens - actual, uncount ? 1 : 0);
  }
}

function checkLimit(name: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isFinite(v) && v >= 0)) {
    throw new BrokerError('invalid_request', `${name} must be a finite number >= 0, got ${v}`);
  }
}

export class QuotaLedger {
  /** Windows and limits, shared with every thread that passes it as `buffer`. */
  readonly buffer: SharedArrayBuffer;
  readonly #now: () => number;
  readonly #header: Int32Array;
  readonly #limits: SharedTable;
  readonly #windows: SharedTable;
  readonly #f: Float64Array;
  readonly #w: WindowView;
  readonly #windowHooks: SlotHooks;
  readonly #limitHooks: SlotHooks;
  /** The current call's second, for the stale hook. */
  #nowSec = 0;

  constructor(now: () => number, opts: QuotaLedgerOptions = {}) {
    this.#now = now;
    let maxSubjects: number;
    let maxLimits: number;
    if (opts.buffer !== undefined) {
      const h = new Int32Array(opts.buffer, 0, HEADER_BYTES >> 2);
      if (Atomics.load(h, G_MAGIC) !== MAGIC) throw new RangeError('buffer is not a quota ledger buffer');
      maxSubjects = Atomics.load(h, G_MAX_SUBJECTS);
      maxLimits = Atomics.load(h, G_MAX_LIMITS);
    } else {
      maxSubjects = Math.max(1, Math.floor(opts.maxSubjects ?? 10_000));
      maxLimits = Math.max(1, Math.floor(opts.maxLimits ?? 10_000));
    }
    const l = layout(maxSubjects, maxLimits);
    this.buffer = opts.buffer ?? new SharedArrayBuffer(l.byteLength);
    this.#header = new Int32Array(this.buffer, 0, HEADER_BYTES >> 2);
    this.#limits = new SharedTable(l.limitsCapacity, this.buffer, { ...LIMITS_OPTS, byteOffset: HEADER_BYTES });
    this.#windows = new SharedTable(maxSubjects, this.buffer, { ...WINDOWS_OPTS, byteOffset: l.windowsOffset });
    if (opts.buffer === undefined) {
      Atomics.store(this.#header, G_MAX_SUBJECTS, maxSubjects);
      Atomics.store(this.#header, G_MAX_LIMITS, maxLimits);
      Atomics.store(this.#header, G_MAGIC, MAGIC);
    }
    this.#f = new Float64Array(this.buffer);
    this.#w = new WindowView(this.#f);
    const w = this.#w;
    const header = this.#header;
    const windows = this.#windows;
    const f = this.#f;
    this.#windowHooks = {
      init: (slot) => w.init(windows.payloadOffset(slot) >> 3, Atomics.add(header, G_GENERATION, 1) + 1),
      stale: (slot) => w.isIdle(windows.payloadOffset(slot) >> 3, this.#nowSec),
      evictLru: true,
    };
    const limits = this.#limits;
    this.#limitHooks = {
      init: (slot) => {
        const p = limits.payloadOffset(slot) >> 3;
        f.fill(0, p, p + L_FIELDS);
        f[p + L_RPM] = NaN;
        f[p + L_TPM] = NaN;
        f[p + L_WIN] = NaN;
        f[p + L_NEXT_WIN] = NaN;
        f[p + L_DRY_WIN] = NaN;
        f[p + L_GRANT_WIN] = NaN;
      },
    };
  }

  /** Sets (replaces) a subject's limits; limits with neither field remove them. In force on every thread sharing the buffer. */
  setLimits(subject: string, limits: QuotaLimits): void {
    checkLimit('rpm', limits.rpm);
    checkLimit('tpm', limits.tpm);
    if (limits.rpm === undefined && limits.tpm === undefined) {
      this.clearLimits(subject);
      return;
    }
    const slot = this.#limits.lockKey(subject, this.#limitHooks);
    if (slot < 0) throw new BrokerError('invalid_request', `no room for the limits of ${subject}: the ledger holds limits for at most ${this.#limits.capacity / 2} subjects`);
    const p = this.#limits.payloadOffset(slot) >> 3;
    const f = this.#f;
    const rpm = limits.rpm ?? NaN;
    const tpm = limits.tpm ?? NaN;
    const raised = raisedLimit(f[p + L_RPM]!, rpm) || raisedLimit(f[p + L_TPM]!, tpm);
    // Lowered: what this replica leased under the old limit is dropped unspent (kept, each
    // replica could spend up to its old lease: 10 admitted for a new rpm of 5 on 2), and its
    // next request asks the cluster again. Redis counts what was leased this minute, not what
    // was spent: the rest of the minute may admit less than the new limit, never more.
    const lowerR = loweredLimit(f[p + L_RPM]!, rpm);
    const lowerT = loweredLimit(f[p + L_TPM]!, tpm);
    if (lowerR) f[p + L_RLEFT] = Math.min(0, f[p + L_RLEFT]!);
    if (lowerT) f[p + L_TLEFT] = Math.min(0, f[p + L_TLEFT]!);
    // And the next minute's, leased ahead under the old limit: that minute asks again.
    if (lowerR || lowerT) f[p + L_NEXT_WIN] = NaN;
    f[p + L_RPM] = rpm;
    f[p + L_TPM] = tpm;
    // Raised: a minute the cluster ran dry under the old limit has room under the new one. Its
    // dry mark refused every request until the minute ended (Retry-After: 55); now the next
    // request waits for a top-up instead.
    if (raised) {
      f[p + L_DRY_WIN] = NaN;
      f[p + L_LOW] = 1;
    }
    this.#limits.unlock(slot);
  }

  clearLimits(subject: string): void {
    const slot = this.#limits.lockExisting(subject);
    if (slot < 0) return;
    this.#limits.release(slot);
    this.#limits.unlock(slot);
  }

  limits(subject: string): QuotaLimits | undefined {
    const slot = this.#limits.lockExisting(subject);
    if (slot < 0) return undefined;
    try {
      return this.#readLimits(slot);
    } finally {
      this.#limits.unlock(slot);
    }
  }

  /**
   * Counts one request and `tokens` against every subject, or throws
   * quota_exceeded and counts nothing. retryAfter is the longest wait among
   * the subjects over their limits: the request fits only when all do.
   * Atomic with respect to every thread sharing the buffer. `returnable`: the part of
   * `tokens` its end may give back (the output guess; the prompt is spent whatever happens),
   * which a refusal's Retry-After counts on.
   */
  reserve(subjects: string[], tokens: number, returnable = 0): Reservation {
    if (!(Number.isFinite(tokens) && tokens >= 0)) throw new RangeError(`tokens must be a finite number >= 0, got ${tokens}`);
    returnable = Math.min(tokens, Math.max(0, Number.isFinite(returnable) ? returnable : 0));
    const nowMs = this.#now();
    const nowSec = Math.floor(nowMs / 1000);
    const unique = [...new Set(subjects)];
    const limits = unique.map((s) => this.limits(s));
    const windows = this.#windows;

    // Lock the windows the subjects already have, check, add. A subject without a
    // window has used nothing; its window is made only once the check has passed
    // (so rejected requests make none), then everything is checked again under locks.
    for (let attempt = 0; ; attempt++) {
      this.#nowSec = nowSec;
      const slots = unique.map((s) => windows.find(s));
      const held = [...new Set(slots.filter((s) => s >= 0))].sort((a, b) => a - b);
      for (const s of held) windows.lock(s);
      let owned = true;
      for (let k = 0; k < unique.length; k++) if (slots[k]! >= 0 && !windows.holds(slots[k]!, unique[k]!)) owned = false;
      if (!owned) {
        // A window was reclaimed between the lookup and the lock: look again.
        for (const s of held) windows.unlock(s);
        continue;
      }
      let worst: Violation | undefined;
      for (let k = 0; k < unique.length; k++) {
        const l = limits[k];
        if (l === undefined) continue;
        const v = this.#violation(unique[k]!, slots[k]!, l, tokens, nowMs, nowSec);
        if (v !== undefined && (worst === undefined || v.retryAfter > worst.retryAfter)) worst = v;
      }
      if (worst !== undefined) {
        for (const s of held) windows.unlock(s);
        throw new BrokerError('quota_exceeded', worst.message, {
          retryAfter: worst.never === true ? undefined : worst.retryAfter,
          details: { subject: worst.subject, limit: worst.limit, ...(worst.never === true ? { retryable: false } : {}) },
        });
      }
      // After a few rounds (only when more subjects than window slots evict each
      // other) the ones still without a window are not counted, as an evicted one.
      if (attempt >= 3 || slots.every((s) => s >= 0)) {
        if (Atomics.load(this.#header, G_CLUSTER) === 1) {
          const dry = this.#spendLeases(unique, limits, tokens, nowMs);
          if (dry !== undefined) {
            for (const s of held) windows.unlock(s);
            throw new BrokerError('quota_exceeded', dry.message, { retryAfter: dry.retryAfter, details: { subject: dry.subject, limit: dry.limit, topUpPending: dry.topUpPending === true } });
          }
        }
        const gens: number[] = [];
        for (const s of held) {
          const p = windows.payloadOffset(s) >> 3;
          this.#w.add(p, nowSec, 1, tokens);
          this.#f[p + W_RESERVED]! += tokens;
          this.#f[p + W_RETURNABLE]! += returnable;
          gens.push(this.#f[p + W_GEN]!);
          windows.touch(s);
        }
        for (const s of held) windows.unlock(s);
        return new QuotaReservation(this, unique, tokens, nowMs, nowSec, held, gens, returnable);
      }
      for (const s of held) windows.unlock(s);
      for (let k = 0; k < unique.length; k++) if (slots[k]! < 0) windows.acquire(unique[k]!, this.#windowHooks);
    }
  }

  /** @internal Settles a reservation: its slots ascending, each only if it still holds the same window. */
  _settle(slots: readonly number[], gens: readonly number[], tokens: number, returnable: number, sec: number, actual: number, requests = 0): void {
    const windows = this.#windows;
    for (const s of slots) windows.lock(s);
    for (let k = 0; k < slots.length; k++) {
      const s = slots[k]!;
      const p = windows.payloadOffset(s) >> 3;
      // A window evicted (and the slot given to another subject) since has nothing to correct.
      if (!windows.isLive(s) || this.#f[p + W_GEN] !== gens[k]) continue;
      this.#f[p + W_RESERVED] = Math.max(0, this.#f[p + W_RESERVED]! - tokens);
      this.#f[p + W_RETURNABLE] = Math.max(0, this.#f[p + W_RETURNABLE]! - returnable);
      // Same bucket as the reservation, so the window reflects when the request was admitted.
      this.#w.adjust(p, sec, actual - tokens, requests);
    }
    for (const s of slots) windows.unlock(s);
  }

  // ---- cluster leases (replicas sharing Redis) ----

  /** Cluster mode on: subjects with limits are spent from leases as well (every thread sharing the buffer). */
  setCluster(on: boolean): void {
    Atomics.store(this.#header, G_CLUSTER, on ? 1 : 0);
  }

  get cluster(): boolean {
    return Atomics.load(this.#header, G_CLUSTER) === 1;
  }

  /** Subjects with limits, for the control plane's lease keeping. */
  limitedSubjects(): string[] {
    const out: string[] = [];
    for (const slot of this.#limits.liveSlots()) {
      const key = this.#limits.keyOf(slot);
      if (key !== undefined) out.push(key);
    }
    return out;
  }

  leaseState(subject: string): LeaseState | undefined {
    const slot = this.#limits.lockExisting(subject);
    if (slot < 0) return undefined;
    try {
      const p = this.#limits.payloadOffset(slot) >> 3;
      const f = this.#f;
      this.#promote(p, minuteOf(this.#now()));
      return {
        limits: this.#readLimits(slot),
        window: f[p + L_WIN]!,
        requestsLeft: f[p + L_RLEFT]!,
        tokensLeft: f[p + L_TLEFT]!,
        nextWindow: f[p + L_NEXT_WIN]!,
        askedAt: f[p + L_ASKED_AT]!,
        low: f[p + L_LOW] === 1,
        dryWindow: f[p + L_DRY_WIN]!,
      };
    } finally {
      this.#limits.unlock(slot);
    }
  }

  /**
   * Adds a lease granted for `window` (this minute or the next). `dry`: the cluster had
   * less than was asked, so requests past it wait (the keeper asks again a second later;
   * a lease filled then is not dry any more).
   */
  grantLease(subject: string, window: number, requests: number, tokens: number, dry: boolean): void {
    const slot = this.#limits.lockExisting(subject);
    if (slot < 0) return;
    const p = this.#limits.payloadOffset(slot) >> 3;
    const f = this.#f;
    const current = minuteOf(this.#now());
    // After #promote the slot holds this minute's lease.
    this.#promote(p, current);
    if (window === current) {
      f[p + L_RLEFT]! += requests;
      f[p + L_TLEFT]! += tokens;
      f[p + L_LOW] = 0;
      f[p + L_GRANT_WIN] = current;
    } else if (window === current + 1) {
      if (f[p + L_NEXT_WIN] !== window) {
        f[p + L_NEXT_WIN] = window;
        f[p + L_NEXT_R] = 0;
        f[p + L_NEXT_T] = 0;
      }
      f[p + L_NEXT_R]! += requests;
      f[p + L_NEXT_T]! += tokens;
    }
    if (dry) f[p + L_DRY_WIN] = window;
    // Asked again and filled (budget given back by other replicas): no longer dry.
    else if (f[p + L_DRY_WIN] === window) f[p + L_DRY_WIN] = NaN;
    this.#limits.unlock(slot);
  }

  /**
   * Takes this minute's unspent tokens past `keep` (at most `atMost`) out of the lease, to give back to the
   * cluster: what requests reserved as estimates and did not use comes back to the lease of
   * the replica that served them, where the other replicas cannot spend it.
   */
  takeExcessTokens(subject: string, keep: number, atMost = Infinity): { window: number; tokens: number } | undefined {
    const slot = this.#limits.lockExisting(subject);
    if (slot < 0) return undefined;
    const p = this.#limits.payloadOffset(slot) >> 3;
    const f = this.#f;
    this.#promote(p, minuteOf(this.#now()));
    const tokens = Math.max(0, Math.min(atMost, Math.floor(f[p + L_TLEFT]! - keep)));
    f[p + L_TLEFT]! -= tokens;
    const out = { window: f[p + L_WIN]!, tokens };
    this.#limits.unlock(slot);
    return out;
  }

  /** Takes back what is left of this minute's lease (to return it to the cluster). */
  takeUnused(subject: string): { window: number; requests: number; tokens: number } | undefined {
    const slot = this.#limits.lockExisting(subject);
    if (slot < 0) return undefined;
    const p = this.#limits.payloadOffset(slot) >> 3;
    const f = this.#f;
    this.#promote(p, minuteOf(this.#now()));
    const out = { window: f[p + L_WIN]!, requests: Math.max(0, f[p + L_RLEFT]!), tokens: Math.max(0, f[p + L_TLEFT]!) };
    f[p + L_RLEFT] = Math.min(0, f[p + L_RLEFT]!);
    f[p + L_TLEFT] = Math.min(0, f[p + L_TLEFT]!);
    this.#limits.unlock(slot);
    return out;
  }

  /** Call with the limit slot locked: a new minute starts from the lease taken ahead for it, or from nothing. */
  #promote(p: number, minute: number): void {
    const f = this.#f;
    if (f[p + L_WIN] === minute) return;
    f[p + L_WIN] = minute;
    if (f[p + L_NEXT_WIN] === minute) {
      f[p + L_RLEFT] = f[p + L_NEXT_R]!;
      f[p + L_TLEFT] = f[p + L_NEXT_T]!;
      f[p + L_GRANT_WIN] = minute;
    } else {
      f[p + L_RLEFT] = 0;
      f[p + L_TLEFT] = 0;
    }
    f[p + L_NEXT_WIN] = NaN;
    f[p + L_LOW] = 1;
  }

  /**
   * Spends one request and `tokens` from the leases of every limited subject, or
   * spends nothing and says which lease is dry. Limit slots are locked in slot order
   * (after the windows, as everywhere), so concurrent reserves cannot deadlock.
   *
   * A lease that is short but not in debt, in a minute the cluster has not run dry, lends
   * this one request: the control plane's next lease covers the debt. So no request is
   * refused only because a top-up is on its way (a key just made, the flag just turned on,
   * a request larger than a token block). For RPM only before the minute's first lease
   * (then a shortfall waits for its top-up, admission's reserveWhenTopped): a replica
   * overshoots by at most one request, and one request's tokens, in the minute the
   * cluster turns out to be dry.
   */
  #spendLeases(subjects: readonly string[], limits: readonly (QuotaLimits | undefined)[], tokens: number, nowMs: number): Violation | undefined {
    const table = this.#limits;
    const f = this.#f;
    const minute = minuteOf(nowMs);
    const slots: number[] = [];
    for (let k = 0; k < subjects.length; k++) {
      if (limits[k] === undefined) continue;
      const s = table.find(subjects[k]!);
      if (s >= 0) slots.push(s);
    }
    slots.sort((a, b) => a - b);
    for (const s of slots) table.lock(s);
    try {
      for (const s of slots) {
        const p = table.payloadOffset(s) >> 3;
        this.#promote(p, minute);
        const rpm = f[p + L_RPM]!;
        const tpm = f[p + L_TPM]!;
        const rLeft = f[p + L_RLEFT]!;
        const tLeft = f[p + L_TLEFT]!;
        const lends = f[p + L_DRY_WIN] !== minute;
        // A request is lent only before the minute's first lease: after it, a top-up of one
        // block always covers the next request, and lending again overshot the limit by one
        // request per replica each minute the cluster ran out (Redis away, every replica on
        // its local share). Tokens still lend: a request larger than a block fits no top-up.
        const lendsRequest = lends && f[p + L_GRANT_WIN] !== minute;
        const short: 'rpm' | 'tpm' | undefined =
          !Number.isNaN(rpm) && rLeft < 1 && !(lendsRequest && rLeft >= 0) ? 'rpm' : !Number.isNaN(tpm) && tokens > 0 && tLeft < tokens && !(lends && tLeft >= 0) ? 'tpm' : undefined;
        if (short === undefined) continue;
        f[p + L_LOW] = 1;
        f[p + L_ASKED_AT] = nowMs;
        const subject = table.keyOfLocked(s) ?? '?';
        // Dry for this minute across the cluster: wait for the next; else a top-up is on its way.
        const dry = f[p + L_DRY_WIN] === minute;
        const retryAfter = dry ? Math.max(1, Math.ceil(((minute + 1) * 60_000 - nowMs) / 1000)) : 1;
        return { subject, limit: short, retryAfter, topUpPending: !dry, message: `quota for ${subject}: ${short} limit ${short === 'rpm' ? rpm : tpm} reached across the replicas` };
      }
      for (const s of slots) {
        const p = table.payloadOffset(s) >> 3;
        if (!Number.isNaN(f[p + L_RPM]!)) f[p + L_RLEFT]! -= 1;
        if (!Number.isNaN(f[p + L_TPM]!)) f[p + L_TLEFT]! -= tokens;
        f[p + L_ASKED_AT] = nowMs;
        const lowR = !Number.isNaN(f[p + L_RPM]!) && f[p + L_RLEFT]! < leaseBlock(f[p + L_RPM]!) * LOW_SHARE;
        const lowT = !Number.isNaN(f[p + L_TPM]!) && f[p + L_TLEFT]! < leaseBlock(f[p + L_TPM]!) * LOW_SHARE;
        if (lowR || lowT) f[p + L_LOW] = 1;
      }
      return undefined;
    } finally {
      for (const s of slots) table.unlock(s);
    }
  }

  /** @internal A reservation settled with `delta` fewer tokens (and `requests` fewer requests) than it took: its leases get them back, if still the same minute. */
  _settleLeases(subjects: readonly string[], at: number, delta: number, requests = 0): void {
    if (Atomics.load(this.#header, G_CLUSTER) !== 1) return;
    const table = this.#limits;
    const minute = minuteOf(at);
    for (const subject of subjects) {
      const s = table.lockExisting(subject);
      if (s < 0) continue;
      const p = table.payloadOffset(s) >> 3;
      if (this.#f[p + L_WIN] === minute) {
        if (!Number.isNaN(this.#f[p + L_TPM]!)) this.#f[p + L_TLEFT]! += delta;
        if (!Number.isNaN(this.#f[p + L_RPM]!)) this.#f[p + L_RLEFT]! += requests;
      }
      table.unlock(s);
    }
  }

  usage(subject: string): QuotaUsage {
    const nowSec = Math.floor(this.#now() / 1000);
    const limits = this.limits(subject) ?? {};
    const slot = this.#windows.lockExisting(subject);
    if (slot < 0) return { rpm: 0, tpm: 0, limits, reservedTokens: 0 };
    try {
      return this.#usageOf(slot, nowSec, limits);
    } finally {
      this.#windows.unlock(slot);
    }
  }

  /**
   * What a subject's limits leave in its window now, per limited field: the x-ratelimit-*
   * headers. `resetMs`: until the window holds none of that field (the limit back whole).
   * This thread's sliding window: with replicas (leases) the cluster may hold less.
   */
  headroom(subject: string): Headroom | undefined {
    const limits = this.limits(subject);
    if (limits === undefined) return undefined;
    const nowMs = this.#now();
    const slot = this.#windows.lockExisting(subject);
    const out: { requests?: HeadroomField; tokens?: HeadroomField } = {};
    try {
      const p = slot >= 0 ? this.#windows.payloadOffset(slot) >> 3 : -1;
      const used = p >= 0 ? this.#w.totals(p, Math.floor(nowMs / 1000)) : { reqs: 0, toks: 0 };
      const field = (limit: number, n: number, f: number): HeadroomField => ({ limit, remaining: Math.max(0, Math.floor(limit - n)), resetMs: p >= 0 ? this.#w.drainedIn(p, f, nowMs) : 0 });
      if (limits.rpm !== undefined) out.requests = field(limits.rpm, used.reqs, W_REQS);
      if (limits.tpm !== undefined) out.tokens = field(limits.tpm, used.toks, W_TOKS);
    } finally {
      if (slot >= 0) this.#windows.unlock(slot);
    }
    return out;
  }

  /** Usage of every subject with a window and every subject with limits, whichever thread made them. */
  snapshot(): Record<string, QuotaUsage> {
    const nowSec = Math.floor(this.#now() / 1000);
    const limitsOf = new Map<string, QuotaLimits>();
    for (const slot of this.#limits.liveSlots()) {
      this.#limits.lock(slot);
      const key = this.#limits.keyOfLocked(slot);
      if (key !== undefined) limitsOf.set(key, this.#readLimits(slot));
      this.#limits.unlock(slot);
    }
    const out: Record<string, QuotaUsage> = {};
    for (const slot of this.#windows.liveSlots()) {
      this.#windows.lock(slot);
      const key = this.#windows.keyOfLocked(slot);
      if (key !== undefined) out[key] = this.#usageOf(slot, nowSec, limitsOf.get(key) ?? {});
      this.#windows.unlock(slot);
    }
    for (const [key, limits] of limitsOf) out[key] ??= { rpm: 0, tpm: 0, limits, reservedTokens: 0 };
    return out;
  }

  /** Forgets subjects with an empty window and nothing reserved (limits are kept). Returns how many. A sweep: for the control plane. */
  prune(): number {
    const nowSec = Math.floor(this.#now() / 1000);
    const windows = this.#windows;
    let n = 0;
    for (const slot of windows.liveSlots()) {
      windows.lock(slot);
      if (windows.isLive(slot) && this.#w.isIdle(windows.payloadOffset(slot) >> 3, nowSec)) {
        windows.release(slot);
        n++;
      }
      windows.unlock(slot);
    }
    return n;
  }

  /** Subjects with a window held, across all threads sharing the buffer. */
  get size(): number {
    return this.#windows.size;
  }

  #readLimits(slot: number): QuotaLimits {
    const p = this.#limits.payloadOffset(slot) >> 3;
    const out: QuotaLimits = {};
    const rpm = this.#f[p + L_RPM]!;
    const tpm = this.#f[p + L_TPM]!;
    if (!Number.isNaN(rpm)) out.rpm = rpm;
    if (!Number.isNaN(tpm)) out.tpm = tpm;
    return out;
  }

  #usageOf(slot: number, nowSec: number, limits: QuotaLimits): QuotaUsage {
    const p = this.#windows.payloadOffset(slot) >> 3;
    const t = this.#w.totals(p, nowSec);
    return { rpm: t.reqs, tpm: t.toks, limits: { ...limits }, reservedTokens: this.#f[p + W_RESERVED]! };
  }

  /** Call with the subject's window slot (if any) locked. */
  #violation(subject: string, slot: number, limits: QuotaLimits, tokens: number, nowMs: number, nowSec: number): Violation | undefined {
    const p = slot >= 0 ? this.#windows.payloadOffset(slot) >> 3 : -1;
    const used = p >= 0 ? this.#w.totals(p, nowSec) : { reqs: 0, toks: 0 };
    let worst: Violation | undefined;
    const consider = (v: Violation) => {
      if (worst === undefined || v.retryAfter > worst.retryAfter) worst = v;
    };
    const { rpm, tpm } = limits;
    if (rpm !== undefined) {
      if (rpm < 1) {
        // A limit of 0 suspends the subject: the operator may lift it, so a retry is still asked for.
        consider({ subject, limit: 'rpm', retryAfter: WINDOW_S, message: `quota for ${subject}: rpm limit is ${rpm}, a request can never fit` });
      } else if (used.reqs + 1 > rpm) {
        consider({
          subject,
          limit: 'rpm',
          retryAfter: this.#w.retryAfter(p, W_REQS, used.reqs + 1 - rpm, nowMs),
          message: `quota for ${subject}: rpm limit ${rpm} reached (${used.reqs} requests in the last 60 s)`,
        });
      }
    }
    if (tpm !== undefined) {
      if (tokens > tpm) {
        // Only a key's own limit is final: a deployment's may be another deployment's chance.
        consider({ subject, limit: 'tpm', retryAfter: WINDOW_S, never: tpm >= 1 && subject.startsWith('key:'), message: `quota for ${subject}: ${tokens} tokens can never fit the tpm limit ${tpm}` });
      } else if (used.toks + tokens > tpm) {
        // Requests in flight hold their guess (prompt + output) in the window until their usage
        // comes back: the output they do not spend is given back then, not 60 s later. When
        // those output guesses alone could make room, the wait is short, not the window's.
        const excess = used.toks + tokens - tpm;
        const reserved = p >= 0 ? this.#f[p + W_RESERVED]! : 0;
        const returnable = p >= 0 ? this.#f[p + W_RETURNABLE]! : 0;
        const aged = this.#w.retryAfter(p, W_TOKS, excess, nowMs);
        consider({
          subject,
          limit: 'tpm',
          retryAfter: returnable >= excess ? Math.min(aged, RESERVED_RETRY_S) : aged,
          message: `quota for ${subject}: tpm limit ${tpm} exceeded (${used.toks} tokens in the last 60 s${reserved > 0 ? `, ${reserved} of them reserved by requests in flight` : ''} + ${tokens} requested)`,
        });
      }
    }
    return worst;
  }
}

/** A refusal by a short lease whose top-up is on its way: a retry within a tick or two finds the budget. */
export function awaitsTopUp(err: unknown): boolean {
  return err instanceof BrokerError && err.code === 'quota_exceeded' && err.details?.['topUpPending'] === true;
}

/**
 * The block a replica leases at a time: a tenth of the limit (at least 1). Smaller
 * blocks waste less when replicas go idle; larger ones ask Redis less often. The
 * overshoot across R replicas is bounded by R blocks (docs/auth.md).
 */
export function leaseBlock(limit: number): number {
  return Math.max(1, Math.ceil(limit * LEASE_SHARE));
}

/**
 * A top-up is due: the lease was flagged low and is still below half a block. What a request
 * did not use of its estimate comes back after the flag was set; topped up regardless, each
 * request larger than a block took a block more from the cluster than it spent.
 */
export function wantsTopUp(s: LeaseState): boolean {
  if (!s.low) return false;
  const { rpm, tpm } = s.limits;
  return (rpm !== undefined && s.requestsLeft < leaseBlock(rpm) * LOW_SHARE) || (tpm !== undefined && s.tokensLeft < leaseBlock(tpm) * LOW_SHARE);
}

const LEASE_SHARE = 0.1;

/** Whether limit `to` allows more than `from` (NaN: no limit). */
function raisedLimit(from: number, to: number): boolean {
  return !Number.isNaN(from) && (Number.isNaN(to) || to > from);
}

/** Whether limit `to` allows less than `from`. */
function loweredLimit(from: number, to: number): boolean {
  return raisedLimit(to, from);
}
