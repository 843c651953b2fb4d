// Canary judge: compares B's error rate and latency with A's over a sliding window and
// says when B should be rolled back. Pure: the clock is passed in.
//
// Latency needs B slower at its median and at its p99 alike. On p99 alone, with the few
// tens of samples a canary starts on, p99 is B's one slowest request: a single GC pause or
// queue spike rolled back a B identical to A (4 rounds in 10 on a 2 ms model).

export interface CanaryThresholds {
  readonly windowMs: number;
  /** B needs this many requests in the window before it is judged. */
  readonly minRequests: number;
  /** Rollback when B's error rate exceeds A's by more than this (0.05 = 5 points). */
  readonly errorMargin: number;
  /** Rollback when B's p50 and p99 both exceed A's by more than this fraction (0.5 = 50 %). */
  readonly latencyMargin: number;
}

interface Sample {
  at: number;
  ok: boolean;
  ms: number;
}

export interface ArmWindow {
  readonly requests: number;
  readonly errorRate: number;
  readonly p50Ms: number;
  readonly p99Ms: number;
}

/** The judge needs a few thousand samples per arm; beyond, the oldest go. */
const MAX_SAMPLES = 10_000;

/**
 * One arm's window, kept so that a verdict costs O(1) and a sample O(log n) plus a move of
 * the sorted latencies (a memmove of at most MAX_SAMPLES numbers). Before, every verdict (one
 * per B request) copied and sorted the whole window of both arms, and a full window shifted
 * 10,000 samples per request: turning the canary on took /v1/infer from 4,087 to 1,531 req/s,
 * falling as the window filled.
 */
class ArmSamples {
  /** In arrival order; the window starts at `head`. */
  private samples: Sample[] = [];
  private head = 0;
  private errors = 0;
  /** The successful samples' latencies in the window, ascending. */
  private readonly sorted: number[] = [];

  record(ok: boolean, ms: number, at: number): void {
    this.samples.push({ at, ok, ms });
    if (ok) this.sorted.splice(lowerBound(this.sorted, ms), 0, ms);
    else this.errors++;
    if (this.samples.length - this.head > MAX_SAMPLES) this.dropOldest();
  }

  /** Drops the samples older than `from`; says what the window holds. */
  window(from: number): ArmWindow {
    while (this.head < this.samples.length && this.samples[this.head]!.at < from) this.dropOldest();
    const n = this.samples.length - this.head;
    if (n === 0) return { requests: 0, errorRate: 0, p50Ms: 0, p99Ms: 0 };
    const ms = this.sorted;
    const at = (q: number): number => (ms.length === 0 ? 0 : ms[Math.min(ms.length - 1, Math.ceil(ms.length * q) - 1)]!);
    return { requests: n, errorRate: this.errors / n, p50Ms: at(0.5), p99Ms: at(0.99) };
  }

  private dropOldest(): void {
    const s = this.samples[this.head++]!;
    if (s.ok) this.sorted.splice(lowerBound(this.sorted, s.ms), 1);
    else this.errors--;
    // The dropped head is let go in one slice once it is half the array.
    if (this.head > 1024 && this.head * 2 > this.samples.length) {
      this.samples = this.samples.slice(this.head);
      this.head = 0;
    }
  }
}

/** The first index of `xs` (ascending) whose value is not below `v`. */
function lowerBound(xs: readonly number[], v: number): number {
  let lo = 0;
  let hi = xs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (xs[mid]! < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

export class CanaryJudge {
  private arms: Record<'A' | 'B', ArmSamples> = { A: new ArmSamples(), B: new ArmSamples() };

  constructor(private readonly t: CanaryThresholds) {}

  record(arm: 'A' | 'B', ok: boolean, ms: number, now: number): void {
    this.arms[arm].record(ok, ms, now);
  }

  reset(): void {
    this.arms = { A: new ArmSamples(), B: new ArmSamples() };
  }

  window(arm: 'A' | 'B', now: number): ArmWindow {
    return this.arms[arm].window(now - this.t.windowMs);
  }

  /** A reason to roll back, or undefined while B is within its margins. */
  verdict(now: number): string | undefined {
    const b = this.window('B', now);
    if (b.requests < this.t.minRequests) return undefined;
    const a = this.window('A', now);
    if (b.errorRate - a.errorRate > this.t.errorMargin) {
      return `B error rate ${(b.errorRate * 100).toFixed(1)}% exceeds A's ${(a.errorRate * 100).toFixed(1)}% by more than ${(this.t.errorMargin * 100).toFixed(1)} points`;
    }
    const slower = (x: number, y: number): boolean => y > 0 && x > y * (1 + this.t.latencyMargin);
    if (a.requests >= this.t.minRequests && slower(b.p50Ms, a.p50Ms) && slower(b.p99Ms, a.p99Ms)) {
      const pct = (this.t.latencyMargin * 100).toFixed(0);
      return `B latency exceeds A's by more than ${pct}%: p50 ${b.p50Ms.toFixed(1)} ms vs ${a.p50Ms.toFixed(1)} ms, p99 ${b.p99Ms.toFixed(1)} ms vs ${a.p99Ms.toFixed(1)} ms`;
    }
    return undefined;
  }
}
