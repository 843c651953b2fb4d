// Weekly usage profile per label: 168 hour-of-week buckets (UTC), so capacity
// advice can see the weekly shape of traffic in a fixed amount of memory.

export const HOURS_PER_WEEK = 168;
const HOUR_MS = 3_600_000;
const WEEK_MS = HOURS_PER_WEEK * HOUR_MS;
// Epoch 0 was a Thursday; shifting by 3 days puts every Monday 00:00 UTC on a week boundary.
const MONDAY_SHIFT_MS = 3 * 24 * HOUR_MS;
// Weeks remembered per bucket to count distinct weeks exactly when records arrive out of order.
const WEEK_MEMORY = 32;

/** 0 = Monday 00:00-00:59 UTC, 167 = Sunday 23:00-23:59 UTC. */
export function hourOfWeek(at: number): number {
  const inWeek = (((at + MONDAY_SHIFT_MS) % WEEK_MS) + WEEK_MS) % WEEK_MS;
  return Math.floor(inWeek / HOUR_MS);
}

/** Monday-based week number since the epoch. */
export function weekIndex(at: number): number {
  return Math.floor((at + MONDAY_SHIFT_MS) / WEEK_MS);
}

export interface TokenCounts {
  prompt: number;
  completion: number;
}

export interface UsageBucket {
  hourOfWeek: number;
  requests: number;
  promptTokens: number;
  completionTokens: number;
  /** Distinct weeks in which this hour saw traffic: the divisor of its averages. */
  weeks: number;
}

export interface UsageTotals {
  requests: number;
  promptTokens: number;
  completionTokens: number;
  tokens: number;
}

export interface UsageProfile {
  label: string;
  buckets: UsageBucket[];
  totals: UsageTotals;
  peakHourOfWeek: number;
  firstSeenAt: number;
  lastSeenAt: number;
}

export interface UsageSummary {
  label: string;
  requests: number;
  tokens: number;
  peakHourOfWeek: number;
  lastSeenAt: number;
}

export interface UsageProfilesOptions {
  /** Labels kept (~7 KB each); least recently recorded are forgotten beyond this. Default 1000. */
  maxLabels?: number;
}

class Profile {
  readonly requests = new Float64Array(HOURS_PER_WEEK);
  readonly prompt = new Float64Array(HOURS_PER_WEEK);
  readonly completion = new Float64Array(HOURS_PER_WEEK);
  readonly weeks = new Float64Array(HOURS_PER_WEEK);
  /** Latest week seen per bucket, and a bitmask of the WEEK_MEMORY weeks up to it (bit k = latest - k). */
  readonly latestWeek = new Float64Array(HOURS_PER_WEEK).fill(-Infinity);
  readonly weekBits = new Uint32Array(HOURS_PER_WEEK);
  firstSeenAt = Infinity;
  lastSeenAt = -Infinity;

  add(at: number, prompt: number, completion: number): void {
    const h = hourOfWeek(at);
    this.requests[h]! += 1;
    this.prompt[h]! += prompt;
    this.completion[h]! += completion;
    this.#countWeek(h, weekIndex(at));
    if (at < this.firstSeenAt) this.firstSeenAt = at;
    if (at > this.lastSeenAt) this.lastSeenAt = at;
  }

  #countWeek(h: number, week: number): void {
    const latest = this.latestWeek[h]!;
    if (week > latest) {
      const shift = week - latest;
      this.weekBits[h] = shift >= WEEK_MEMORY ? 1 : ((this.weekBits[h]! << shift) | 1) >>> 0;
      this.latestWeek[h] = week;
      this.weeks[h]! += 1;
      return;
    }
    const back = latest - week;
    // Older than we remember: assume a new week (a smaller average, never a division by too few).
    if (back >= WEEK_MEMORY) {
      this.weeks[h]! += 1;
      return;
    }
    const bit = (1 << back) >>> 0;
    if ((this.weekBits[h]! & bit) === 0) {
      this.weekBits[h] = (this.weekBits[h]! | bit) >>> 0;
      this.weeks[h]! += 1;
    }
  }

  /** Average tokens per minute within each hour-of-week, over the weeks that hour saw traffic. */
  tpm(): number[] {
    const out = new Array<number>(HOURS_PER_WEEK);
    for (let h = 0; h < HOURS_PER_WEEK; h++) {
      const w = this.weeks[h]!;
      out[h] = w === 0 ? 0 : (this.prompt[h]! + this.completion[h]!) / w / 60;
    }
    return out;
  }

  /** Hour with the highest average TPM; by requests when no tokens were counted; earliest on ties. */
  peak(): number {
    const tpm = this.tpm();
    let best = 0;
    for (let h = 1; h < HOURS_PER_WEEK; h++) if (tpm[h]! > tpm[best]!) best = h;
    if (tpm[best]! > 0) return best;
    for (let h = 1; h < HOURS_PER_WEEK; h++) if (this.requests[h]! > this.requests[best]!) best = h;
    return best;
  }

  totals(): UsageTotals {
    let requests = 0;
    let promptTokens = 0;
    let completionTokens = 0;
    for (let h = 0; h < HOURS_PER_WEEK; h++) {
      requests += this.requests[h]!;
      promptTokens += this.prompt[h]!;
      completionTokens += this.completion[h]!;
    }
    return { requests, promptTokens, completionTokens, tokens: promptTokens + completionTokens };
  }
}

function count(v: number): number {
  // Upstreams sometimes omit usage: a missing count adds nothing rather than poisoning the sums.
  return Number.isFinite(v) && v > 0 ? v : 0;
}

export class UsageProfiles {
  readonly #maxLabels: number;
  /** Insertion order is recency: recorded labels are moved to the end. */
  readonly #labels = new Map<string, Profile>();
  /** All traffic, kept apart so totals survive label eviction and weeks are counted across labels. */
  readonly #all = new Profile();

  constructor(opts: UsageProfilesOptions = {}) {
    this.#maxLabels = opts.maxLabels ?? 1000;
    if (!(Number.isInteger(this.#maxLabels) && this.#maxLabels >= 1)) throw new RangeError('maxLabels must be an integer >= 1');
  }

  /** `at` is epoch ms (the completion time, from the injected clock). */
  record(label: string, at: number, tokens: TokenCounts): void {
    if (!Number.isFinite(at)) throw new RangeError(`at must be epoch ms, got ${at}`);
    const prompt = count(tokens.prompt);
    const completion = count(tokens.completion);
    let p = this.#labels.get(label);
    if (p === undefined) {
      p = new Profile();
    } else {
      this.#labels.delete(label);
    }
    this.#labels.set(label, p);
    p.add(at, prompt, completion);
    this.#all.add(at, prompt, completion);
    for (const l of this.#labels.keys()) {
      if (this.#labels.size <= this.#maxLabels) break;
      this.#labels.delete(l);
    }
  }

  /** Labels, least recently recorded first. */
  labels(): string[] {
    return [...this.#labels.keys()];
  }

  summary(): UsageSummary[] {
    return [...this.#labels].map(([label, p]) => {
      const t = p.totals();
      return { label, requests: t.requests, tokens: t.tokens, peakHourOfWeek: p.peak(), lastSeenAt: p.lastSeenAt };
    });
  }

  profile(label: string): UsageProfile | undefined {
    const p = this.#labels.get(label);
    if (p === undefined) return undefined;
    const buckets: UsageBucket[] = [];
    for (let h = 0; h < HOURS_PER_WEEK; h++) {
      buckets.push({ hourOfWeek: h, requests: p.requests[h]!, promptTokens: p.prompt[h]!, completionTokens: p.completion[h]!, weeks: p.weeks[h]! });
    }
    return { label, buckets, totals: p.totals(), peakHourOfWeek: p.peak(), firstSeenAt: p.firstSeenAt, lastSeenAt: p.lastSeenAt };
  }

  /**
   * 168 average tokens/min, one per hour-of-week, for a label or (none given)
   * all traffic. Each hour is averaged over the distinct weeks in which it saw
   * traffic. An unknown label gives zeros.
   */
  tpmProfile(label?: string): number[] {
    const p = label === undefined ? this.#all : this.#labels.get(label);
    return p === undefined ? new Array<number>(HOURS_PER_WEEK).fill(0) : p.tpm();
  }

  /** Time span of the records of a label (or of all traffic); undefined before any. */
  coverage(label?: string): { firstSeenAt: number; lastSeenAt: number } | undefined {
    const p = label === undefined ? this.#all : this.#labels.get(label);
    if (p === undefined || p.lastSeenAt === -Infinity) return undefined;
    return { firstSeenAt: p.firstSeenAt, lastSeenAt: p.lastSeenAt };
  }
}
