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

export class CanaryJudge {
  private readonly samples: Record<'A' | 'B', Sample[]> = { A: [], B: [] };

  constructor(private readonly t: CanaryThresholds) {}

  record(arm: 'A' | 'B', ok: boolean, ms: number, now: number): void {
    const list = this.samples[arm];
    list.push({ at: now, ok, ms });
    // Bounded memory: the window only needs its recent part, and judging needs few thousands.
    if (list.length > 10_000) list.splice(0, list.length - 10_000);
  }

  reset(): void {
    this.samples.A = [];
    this.samples.B = [];
  }

  window(arm: 'A' | 'B', now: number): ArmWindow {
    const list = this.samples[arm];
    const from = now - this.t.windowMs;
    let drop = 0;
    while (drop < list.length && list[drop]!.at < from) drop++;
    if (drop > 0) list.splice(0, drop);
    const n = list.length;
    if (n === 0) return { requests: 0, errorRate: 0, p50Ms: 0, p99Ms: 0 };
    let errors = 0;
    const ms: number[] = [];
    for (const s of list) {
      if (!s.ok) errors++;
      else ms.push(s.ms);
    }
    ms.sort((a, b) => a - b);
    const at = (q: number): number => (ms.length === 0 ? 0 : ms[Math.min(ms.length - 1, Math.ceil(ms.length * q) - 1)]!);
    return { requests: n, errorRate: errors / n, p50Ms: at(0.5), p99Ms: at(0.99) };
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
