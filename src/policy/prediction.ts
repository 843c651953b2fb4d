// Output-token prediction per semantic label: a high percentile of the
// label's recent completions, so quota reservations are rarely too small
// without reserving max_tokens for every request.

export interface PredictorOptions {
  /** Samples kept per label (the most recent). Default 500. */
  window?: number;
  /** Percentile predicted, in (0, 1]. Default 0.9. */
  percentile?: number;
  /** Samples needed before the label's history is trusted. Default 10. */
  minSamples?: number;
  /** Prediction without history or max_tokens. Default 512. */
  fallback?: number;
  /** Labels kept; least recently used are forgotten beyond this. Default 10000. */
  maxLabels?: number;
  /** Clock (epoch ms) for lastObservedAt; without it the field is omitted. */
  now?: () => number;
}

export interface Prediction {
  tokens: number;
  source: 'learned' | 'fallback' | 'max_tokens';
  /** True when a learned prediction was cut down to max_tokens. */
  capped: boolean;
}

export interface PredictionStats {
  label: string;
  samples: number;
  p50: number;
  p90: number;
  p99: number;
  /** Mean of |predicted - actual| over every observation (0 before any). */
  meanAbsError: number;
  /** Mean of predicted - actual: positive means over-prediction. */
  meanError: number;
  /** predicted - actual of the latest observation. */
  lastError?: number;
  /** Running totals, for export as Prometheus counters (rate() gives recent means). */
  errorCount: number;
  sumAbsError: number;
  sumError: number;
  lastObservedAt?: number;
}

const MAX_SAMPLE = 0xffff_ffff;

/**
 * The last `cap` samples in arrival order (to know which one to drop) and
 * sorted (so a percentile is one index). Inserting into the sorted copy is a
 * memmove of at most `cap` entries: cheaper than sorting on every predict.
 * Arrays grow on demand since most labels never fill the window.
 */
class Samples {
  readonly #cap: number;
  #ring: Uint32Array;
  #sorted: Uint32Array;
  #count = 0;
  #next = 0;

  constructor(cap: number) {
    this.#cap = cap;
    const initial = Math.min(cap, 16);
    this.#ring = new Uint32Array(initial);
    this.#sorted = new Uint32Array(initial);
  }

  get count(): number {
    return this.#count;
  }

  add(v: number): void {
    if (this.#count < this.#cap) {
      if (this.#count === this.#ring.length) this.#grow();
      this.#ring[this.#count] = v;
      this.#insert(v, this.#count);
      this.#count++;
      return;
    }
    const old = this.#ring[this.#next]!;
    this.#ring[this.#next] = v;
    this.#next = (this.#next + 1) % this.#cap;
    const i = lowerBound(this.#sorted, old, this.#count);
    this.#sorted.copyWithin(i, i + 1, this.#count);
    this.#insert(v, this.#count - 1);
  }

  /** Nearest-rank percentile: always a value that was actually observed. */
  percentile(p: number): number {
    if (this.#count === 0) return 0;
    const rank = Math.min(this.#count, Math.max(1, Math.ceil(p * this.#count)));
    return this.#sorted[rank - 1]!;
  }

  #insert(v: number, n: number): void {
    const j = upperBound(this.#sorted, v, n);
    this.#sorted.copyWithin(j + 1, j, n);
    this.#sorted[j] = v;
  }

  #grow(): void {
    const size = Math.min(this.#cap, this.#ring.length * 2);
    const ring = new Uint32Array(size);
    ring.set(this.#ring);
    const sorted = new Uint32Array(size);
    sorted.set(this.#sorted);
    this.#ring = ring;
    this.#sorted = sorted;
  }
}

function lowerBound(a: Uint32Array, v: number, n: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function upperBound(a: Uint32Array, v: number, n: number): number {
  let lo = 0;
  let hi = n;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (a[mid]! <= v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

interface LabelState {
  samples: Samples;
  errorCount: number;
  sumAbsError: number;
  sumError: number;
  lastError?: number;
  lastObservedAt?: number;
}

function positive(v: number | undefined): v is number {
  return v !== undefined && Number.isFinite(v) && v > 0;
}

export class OutputPredictor {
  readonly #window: number;
  readonly #percentile: number;
  readonly #minSamples: number;
  readonly #fallback: number;
  readonly #maxLabels: number;
  readonly #now: (() => number) | undefined;
  /** Insertion order is recency: touched labels are moved to the end. */
  readonly #labels = new Map<string, LabelState>();

  constructor(opts: PredictorOptions = {}) {
    this.#window = opts.window ?? 500;
    this.#percentile = opts.percentile ?? 0.9;
    this.#minSamples = opts.minSamples ?? 10;
    this.#fallback = opts.fallback ?? 512;
    this.#maxLabels = opts.maxLabels ?? 10_000;
    this.#now = opts.now;
    if (!(Number.isInteger(this.#window) && this.#window >= 1)) throw new RangeError('window must be an integer >= 1');
    if (!(this.#percentile > 0 && this.#percentile <= 1)) throw new RangeError('percentile must be in (0, 1]');
    // More than the window could never be reached: the label would never learn.
    if (!(Number.isInteger(this.#minSamples) && this.#minSamples >= 1 && this.#minSamples <= this.#window)) {
      throw new RangeError('minSamples must be an integer in [1, window]');
    }
    if (!(Number.isFinite(this.#fallback) && this.#fallback >= 0)) throw new RangeError('fallback must be >= 0');
    if (!(Number.isInteger(this.#maxLabels) && this.#maxLabels >= 1)) throw new RangeError('maxLabels must be an integer >= 1');
  }

  /** max_tokens that is absent, zero, negative or not a number is ignored. `fallback`: the prediction without history or max_tokens (the scheduler's defaultOutputTokens). */
  predict(label: string, maxTokens?: number, fallback: number = this.#fallback): Prediction {
    const s = this.#labels.get(label);
    if (s !== undefined) this.#touch(label, s);
    const cap = positive(maxTokens) ? maxTokens : undefined;
    if (s !== undefined && s.samples.count >= this.#minSamples) {
      const learned = s.samples.percentile(this.#percentile);
      if (cap !== undefined && learned > cap) return { tokens: cap, source: 'learned', capped: true };
      return { tokens: learned, source: 'learned', capped: false };
    }
    if (cap !== undefined) return { tokens: cap, source: 'max_tokens', capped: false };
    return { tokens: fallback, source: 'fallback', capped: false };
  }

  /**
   * Records a completion's real output size and the error of the prediction
   * made for it. An actual that is not a finite number >= 0 is ignored (no
   * usage reported); a bad `predicted` only skips the error statistics.
   */
  observe(label: string, predicted: number, actual: number): void {
    if (!(Number.isFinite(actual) && actual >= 0)) return;
    let s = this.#labels.get(label);
    if (s === undefined) {
      s = { samples: new Samples(this.#window), errorCount: 0, sumAbsError: 0, sumError: 0 };
      this.#labels.set(label, s);
      this.#evict();
    } else {
      this.#touch(label, s);
    }
    s.samples.add(Math.min(MAX_SAMPLE, Math.round(actual)));
    if (Number.isFinite(predicted)) {
      const err = predicted - actual;
      s.errorCount++;
      s.sumError += err;
      s.sumAbsError += Math.abs(err);
      s.lastError = err;
    }
    if (this.#now !== undefined) s.lastObservedAt = this.#now();
  }

  /** Reading stats does not count as use for eviction. */
  stats(): PredictionStats[];
  stats(label: string): PredictionStats | undefined;
  stats(label?: string): PredictionStats[] | PredictionStats | undefined {
    if (label !== undefined) {
      const s = this.#labels.get(label);
      return s === undefined ? undefined : statsOf(label, s);
    }
    return [...this.#labels].map(([l, s]) => statsOf(l, s));
  }

  /** Labels, least recently used first. */
  labels(): string[] {
    return [...this.#labels.keys()];
  }

  #touch(label: string, s: LabelState): void {
    this.#labels.delete(label);
    this.#labels.set(label, s);
  }

  #evict(): void {
    for (const l of this.#labels.keys()) {
      if (this.#labels.size <= this.#maxLabels) break;
      this.#labels.delete(l);
    }
  }
}

function statsOf(label: string, s: LabelState): PredictionStats {
  const out: PredictionStats = {
    label,
    samples: s.samples.count,
    p50: s.samples.percentile(0.5),
    p90: s.samples.percentile(0.9),
    p99: s.samples.percentile(0.99),
    meanAbsError: s.errorCount === 0 ? 0 : s.sumAbsError / s.errorCount,
    meanError: s.errorCount === 0 ? 0 : s.sumError / s.errorCount,
    errorCount: s.errorCount,
    sumAbsError: s.sumAbsError,
    sumError: s.sumError,
  };
  if (s.lastError !== undefined) out.lastError = s.lastError;
  if (s.lastObservedAt !== undefined) out.lastObservedAt = s.lastObservedAt;
  return out;
}
