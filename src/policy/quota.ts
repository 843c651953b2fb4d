// TPM/RPM quotas over a sliding 60 s window. Each subject keeps 60 one-second
// buckets instead of a list of events, so memory and the cost of a check are
// constant however busy the subject is. The price is granularity: a bucket
// leaves the window as a whole, so an event late in second s stops counting at
// (s + 60) s, up to 1 s early.
import { BrokerError } from '../errors.ts';

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
  /** Gives the tokens back; the request still counts for RPM. Only the first reconcile/release has an effect. */
  release(): void;
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

export interface QuotaLedgerOptions {
  /**
   * Subjects whose windows are kept (least recently used are forgotten beyond
   * this). ~1.2 KB each. Only more than this many subjects active within one
   * window could make a forgotten one lose counts.
   */
  maxSubjects?: number;
}

const WINDOW_S = 60;

function slotOf(sec: number): number {
  return ((sec % WINDOW_S) + WINDOW_S) % WINDOW_S;
}

class SubjectWindow {
  /** Which absolute second each slot holds; a slot older than the window is stale and reads as zero. */
  readonly secs = new Float64Array(WINDOW_S).fill(-Infinity);
  readonly reqs = new Float64Array(WINDOW_S);
  readonly toks = new Float64Array(WINDOW_S);
  reservedTokens = 0;

  live(i: number, nowSec: number): boolean {
    // A slot from the future (clock stepped back) keeps counting: erring towards rejection is safe.
    return this.secs[i]! > nowSec - WINDOW_S;
  }

  totals(nowSec: number): { reqs: number; toks: number } {
    let reqs = 0;
    let toks = 0;
    for (let i = 0; i < WINDOW_S; i++) {
      if (!this.live(i, nowSec)) continue;
      reqs += this.reqs[i]!;
      toks += this.toks[i]!;
    }
    return { reqs, toks };
  }

  add(nowSec: number, reqs: number, toks: number): void {
    const i = slotOf(nowSec);
    if (this.secs[i] !== nowSec) {
      this.secs[i] = nowSec;
      this.reqs[i] = 0;
      this.toks[i] = 0;
    }
    this.reqs[i]! += reqs;
    this.toks[i]! += toks;
  }

  /** Adjusts the tokens of second `sec` if that second is still held; once it has left the window there is nothing to correct. */
  adjust(sec: number, delta: number): void {
    const i = slotOf(sec);
    if (this.secs[i] === sec) this.toks[i] = Math.max(0, this.toks[i]! + delta);
  }

  isIdle(nowSec: number): boolean {
    if (this.reservedTokens > 0) return false;
    for (let i = 0; i < WINDOW_S; i++) if (this.live(i, nowSec) && (this.reqs[i]! > 0 || this.toks[i]! > 0)) return false;
    return true;
  }

  /** Whole seconds until the oldest buckets holding at least `excess` of `field` have left the window. */
  retryAfter(field: 'reqs' | 'toks', excess: number, nowMs: number): number {
    const nowSec = Math.floor(nowMs / 1000);
    const live: number[] = [];
    for (let i = 0; i < WINDOW_S; i++) if (this.live(i, nowSec) && this[field][i]! > 0) live.push(i);
    live.sort((a, b) => this.secs[a]! - this.secs[b]!);
    let freed = 0;
    for (const i of live) {
      freed += this[field][i]!;
      if (freed >= excess) return Math.max(1, Math.ceil(((this.secs[i]! + WINDOW_S) * 1000 - nowMs) / 1000));
    }
    return WINDOW_S; // unreachable while excess <= what the window holds
  }
}

interface Violation {
  subject: string;
  limit: 'rpm' | 'tpm';
  retryAfter: number;
  message: string;
}

class QuotaReservation implements Reservation {
  readonly subjects: readonly string[];
  readonly tokens: number;
  readonly at: number;
  readonly #sec: number;
  readonly #windows: readonly SubjectWindow[];
  #settled = false;

  constructor(subjects: readonly string[], tokens: number, at: number, sec: number, windows: readonly SubjectWindow[]) {
    this.subjects = subjects;
    this.tokens = tokens;
    this.at = at;
    this.#sec = sec;
    this.#windows = windows;
  }

  reconcile(actualTokens: number): void {
    // Completion must never throw: an upstream without a usage count keeps the estimate.
    const actual = Number.isFinite(actualTokens) ? Math.max(0, actualTokens) : this.tokens;
    this.#settle(actual);
  }

  release(): void {
    this.#settle(0);
  }

  #settle(actual: number): void {
    if (this.#settled) return;
    this.#settled = true;
    for (const w of this.#windows) {
      w.reservedTokens = Math.max(0, w.reservedTokens - this.tokens);
      // Same bucket as the reservation, so the window reflects when the request was admitted.
      w.adjust(this.#sec, actual - this.tokens);
    }
  }
}

function checkLimit(name: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isFinite(v) && v >= 0)) {
    throw new BrokerError('invalid_request', `${name} must be a finite number >= 0, got ${v}`);
  }
}

export class QuotaLedger {
  readonly #now: () => number;
  readonly #maxSubjects: number;
  readonly #limits = new Map<string, QuotaLimits>();
  /** Insertion order is recency: touched subjects are moved to the end. */
  readonly #windows = new Map<string, SubjectWindow>();

  constructor(now: () => number, opts: QuotaLedgerOptions = {}) {
    this.#now = now;
    this.#maxSubjects = Math.max(1, opts.maxSubjects ?? 10_000);
  }

  /** Sets (replaces) a subject's limits; limits with neither field remove them. */
  setLimits(subject: string, limits: QuotaLimits): void {
    checkLimit('rpm', limits.rpm);
    checkLimit('tpm', limits.tpm);
    if (limits.rpm === undefined && limits.tpm === undefined) {
      this.#limits.delete(subject);
      return;
    }
    const copy: QuotaLimits = {};
    if (limits.rpm !== undefined) copy.rpm = limits.rpm;
    if (limits.tpm !== undefined) copy.tpm = limits.tpm;
    this.#limits.set(subject, copy);
  }

  clearLimits(subject: string): void {
    this.#limits.delete(subject);
  }

  limits(subject: string): QuotaLimits | undefined {
    const l = this.#limits.get(subject);
    return l === undefined ? undefined : { ...l };
  }

  /**
   * Counts one request and `tokens` against every subject, or throws
   * quota_exceeded and counts nothing. retryAfter is the longest wait among
   * the subjects over their limits: the request fits only when all do.
   */
  reserve(subjects: string[], tokens: number): Reservation {
    if (!(Number.isFinite(tokens) && tokens >= 0)) throw new RangeError(`tokens must be a finite number >= 0, got ${tokens}`);
    const nowMs = this.#now();
    const nowSec = Math.floor(nowMs / 1000);
    const unique = [...new Set(subjects)];

    let worst: Violation | undefined;
    for (const subject of unique) {
      const limits = this.#limits.get(subject);
      if (limits === undefined) continue;
      const v = this.#violation(subject, limits, tokens, nowMs, nowSec);
      if (v !== undefined && (worst === undefined || v.retryAfter > worst.retryAfter)) worst = v;
    }
    if (worst !== undefined) {
      throw new BrokerError('quota_exceeded', worst.message, {
        retryAfter: worst.retryAfter,
        details: { subject: worst.subject, limit: worst.limit },
      });
    }

    const windows = unique.map((subject) => {
      const w = this.#touch(subject);
      w.add(nowSec, 1, tokens);
      w.reservedTokens += tokens;
      return w;
    });
    this.#evict();
    return new QuotaReservation(unique, tokens, nowMs, nowSec, windows);
  }

  usage(subject: string): QuotaUsage {
    const w = this.#windows.get(subject);
    const t = w?.totals(Math.floor(this.#now() / 1000)) ?? { reqs: 0, toks: 0 };
    return { rpm: t.reqs, tpm: t.toks, limits: { ...this.#limits.get(subject) }, reservedTokens: w?.reservedTokens ?? 0 };
  }

  /** Usage of every tracked subject and every subject with limits. */
  snapshot(): Record<string, QuotaUsage> {
    const out: Record<string, QuotaUsage> = {};
    for (const s of this.#windows.keys()) out[s] = this.usage(s);
    for (const s of this.#limits.keys()) out[s] ??= this.usage(s);
    return out;
  }

  /** Forgets subjects with an empty window and nothing reserved (limits are kept). Returns how many. */
  prune(): number {
    const nowSec = Math.floor(this.#now() / 1000);
    let n = 0;
    for (const [s, w] of this.#windows) {
      if (w.isIdle(nowSec)) {
        this.#windows.delete(s);
        n++;
      }
    }
    return n;
  }

  /** Subjects with a window held in memory. */
  get size(): number {
    return this.#windows.size;
  }

  #violation(subject: string, limits: QuotaLimits, tokens: number, nowMs: number, nowSec: number): Violation | undefined {
    const w = this.#windows.get(subject);
    const used = w?.totals(nowSec) ?? { reqs: 0, toks: 0 };
    let worst: Violation | undefined;
    const consider = (v: Violation) => {
      if (worst === undefined || v.retryAfter > worst.retryAfter) worst = v;
    };
    const { rpm, tpm } = limits;
    if (rpm !== undefined) {
      if (rpm < 1) {
        consider({ subject, limit: 'rpm', retryAfter: WINDOW_S, message: `quota for ${subject}: rpm limit is ${rpm}, a request can never fit` });
      } else if (used.reqs + 1 > rpm) {
        consider({
          subject,
          limit: 'rpm',
          retryAfter: w!.retryAfter('reqs', used.reqs + 1 - rpm, nowMs),
          message: `quota for ${subject}: rpm limit ${rpm} reached (${used.reqs} requests in the last 60 s)`,
        });
      }
    }
    if (tpm !== undefined) {
      if (tokens > tpm) {
        consider({ subject, limit: 'tpm', retryAfter: WINDOW_S, message: `quota for ${subject}: ${tokens} tokens can never fit the tpm limit ${tpm}` });
      } else if (used.toks + tokens > tpm) {
        consider({
          subject,
          limit: 'tpm',
          retryAfter: w!.retryAfter('toks', used.toks + tokens - tpm, nowMs),
          message: `quota for ${subject}: tpm limit ${tpm} exceeded (${used.toks} tokens in the last 60 s + ${tokens} requested)`,
        });
      }
    }
    return worst;
  }

  #touch(subject: string): SubjectWindow {
    let w = this.#windows.get(subject);
    if (w === undefined) w = new SubjectWindow();
    else this.#windows.delete(subject);
    this.#windows.set(subject, w);
    return w;
  }

  #evict(): void {
    for (const s of this.#windows.keys()) {
      if (this.#windows.size <= this.#maxSubjects) break;
      this.#windows.delete(s);
    }
  }
}
