// Performance routing: per deployment, EWMAs of time to first token, tokens per
// second and error rate. A deployment past a threshold is degraded and avoided;
// a degraded one still gets a probe request now and then, so that it can recover.
// Among candidates, power of two choices on latency-weighted load. Pure: clock and
// random numbers are injected.

export interface PerformanceThresholds {
  /** Weight of a new sample in the averages. */
  readonly alpha: number;
  readonly ttftDegradedMs: number;
  readonly errorRateDegraded: number;
  /** Below this many tokens per second a deployment is degraded (0 = no floor). */
  readonly minTokensPerSecond: number;
  /** Samples before a deployment can be judged. */
  readonly minSamples: number;
  /** A degraded deployment gets one probe request after this long without traffic. */
  readonly probeIntervalMs: number;
  /**
   * The latency a deployment's cost is weighted by fades with the time since its last
   * sample (time constant), so a deployment that was slow once and got no traffic
   * since is tried again instead of being shunned forever.
   */
  readonly decayMs: number;
}

export const DEFAULT_PERFORMANCE: PerformanceThresholds = Object.freeze({
  alpha: 0.3,
  ttftDegradedMs: 5_000,
  errorRateDegraded: 0.5,
  minTokensPerSecond: 0,
  minSamples: 3,
  probeIntervalMs: 2_000,
  decayMs: 30_000,
});

export interface DeploymentPerformance {
  readonly id: string;
  ttftMs: number | null;
  tokensPerSecond: number | null;
  errorRate: number;
  samples: number;
  lastRequestAt: number;
  lastSampleAt: number;
  degraded: boolean;
  degradedReason: string | null;
}

export class PerformanceTracker {
  private readonly stats = new Map<string, DeploymentPerformance>();
  /** Kept alongside the stats so the router can look at the degraded few without a scan. */
  private readonly degradedSet = new Set<string>();

  constructor(
    private t: PerformanceThresholds = DEFAULT_PERFORMANCE,
    private readonly now: () => number = Date.now,
  ) {}

  /** New thresholds (a config change at run time): every deployment is judged again by them now. */
  setThresholds(t: PerformanceThresholds): void {
    this.t = t;
    for (const s of this.stats.values()) this.classify(s);
  }

  private get(id: string): DeploymentPerformance {
    let s = this.stats.get(id);
    if (s === undefined) {
      s = { id, ttftMs: null, tokensPerSecond: null, errorRate: 0, samples: 0, lastRequestAt: 0, lastSampleAt: 0, degraded: false, degradedReason: null };
      this.stats.set(id, s);
    }
    return s;
  }

  private ewma(prev: number | null, x: number): number {
    return prev === null ? x : this.t.alpha * x + (1 - this.t.alpha) * prev;
  }

  started(id: string): void {
    this.get(id).lastRequestAt = this.now();
  }

  succeeded(id: string, ttftMs: number | null, tokensPerSecond: number | null): void {
    const s = this.get(id);
    if (ttftMs !== null) s.ttftMs = this.ewma(s.ttftMs, ttftMs);
    if (tokensPerSecond !== null && Number.isFinite(tokensPerSecond)) s.tokensPerSecond = this.ewma(s.tokensPerSecond, tokensPerSecond);
    s.errorRate = this.ewma(s.samples === 0 ? null : s.errorRate, 0);
    s.samples++;
    this.judge(s);
  }

  failed(id: string): void {
    const s = this.get(id);
    s.errorRate = this.ewma(s.samples === 0 ? null : s.errorRate, 1);
    s.samples++;
    this.judge(s);
  }

  private judge(s: DeploymentPerformance): void {
    s.lastSampleAt = this.now();
    this.classify(s);
  }

  private classify(s: DeploymentPerformance): void {
    let reason: string | null = null;
    if (s.samples >= this.t.minSamples) {
      if (s.errorRate > this.t.errorRateDegraded) reason = `error rate ${s.errorRate.toFixed(2)} > ${this.t.errorRateDegraded}`;
      else if (s.ttftMs !== null && s.ttftMs > this.t.ttftDegradedMs) reason = `ttft ${s.ttftMs.toFixed(0)} ms > ${this.t.ttftDegradedMs} ms`;
      else if (this.t.minTokensPerSecond > 0 && s.tokensPerSecond !== null && s.tokensPerSecond < this.t.minTokensPerSecond) {
        reason = `${s.tokensPerSecond.toFixed(1)} tokens/s < ${this.t.minTokensPerSecond}`;
      }
    }
    s.degraded = reason !== null;
    s.degradedReason = reason;
    if (s.degraded) this.degradedSet.add(s.id);
    else this.degradedSet.delete(s.id);
  }

  /** Degraded and not due for a probe. */
  avoid(id: string): boolean {
    const s = this.stats.get(id);
    return s !== undefined && s.degraded && this.now() - s.lastRequestAt < this.t.probeIntervalMs;
  }

  /** Degraded and idle for a probe interval: the next request goes there to see if it recovered. */
  probeDue(id: string): boolean {
    const s = this.stats.get(id);
    return s !== undefined && s.degraded && this.now() - s.lastRequestAt >= this.t.probeIntervalMs;
  }

  /** Expected latency cost of one more request: in-flight load weighted by TTFT. */
  cost(id: string, inFlight: number, weight: number): number {
    const s = this.stats.get(id);
    let ttft = s?.ttftMs ?? 1;
    if (s !== undefined && s.ttftMs !== null) ttft = 1 + (s.ttftMs - 1) * Math.exp(-(this.now() - s.lastSampleAt) / this.t.decayMs);
    return ((inFlight + 1) * Math.max(ttft, 0.001)) / weight;
  }

  snapshot(id: string): DeploymentPerformance | undefined {
    const s = this.stats.get(id);
    return s === undefined ? undefined : { ...s };
  }

  all(): DeploymentPerformance[] {
    return [...this.stats.values()].map((s) => ({ ...s }));
  }

  degraded(): string[] {
    return [...this.degradedSet];
  }

  get degradedIds(): ReadonlySet<string> {
    return this.degradedSet;
  }
}

/** Power of two choices: two random candidates, the cheaper wins. */
export function powerOfTwo<T>(candidates: readonly T[], cost: (c: T) => number, random: () => number): T {
  if (candidates.length === 1) return candidates[0]!;
  const i = Math.floor(random() * candidates.length);
  let j = Math.floor(random() * (candidates.length - 1));
  if (j >= i) j++;
  const a = candidates[i]!;
  const b = candidates[j]!;
  return cost(b) < cost(a) ? b : a;
}
