// Percentiles, rounding, a text table and a Prometheus histogram reader for bench:llm.

export interface Latency {
  readonly count: number;
  readonly p50_ms: number;
  readonly p99_ms: number;
  readonly mean_ms: number;
  readonly max_ms: number;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]!;
}

export function summarize(ms: ArrayLike<number>): Latency {
  const sorted = Float64Array.from(ms).sort();
  let sum = 0;
  for (const v of sorted) sum += v;
  return {
    count: sorted.length,
    p50_ms: round(percentile(sorted, 50)),
    p99_ms: round(percentile(sorted, 99)),
    mean_ms: round(sum / Math.max(1, sorted.length)),
    max_ms: round(sorted.length > 0 ? sorted[sorted.length - 1]! : NaN),
  };
}

export function round(x: number, digits = 3): number {
  if (!Number.isFinite(x)) return x;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** A plain-text table; numbers right-aligned. */
export function table(header: readonly string[], rows: readonly (readonly (string | number | null)[])[]): string {
  const cells = [header, ...rows].map((r) => r.map((c) => (c === null ? '-' : typeof c === 'number' ? fmt(c) : c)));
  const widths = header.map((_, i) => Math.max(...cells.map((r) => r[i]!.length)));
  const line = (r: readonly string[]): string => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(cells[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Number.isInteger(n)) return String(n);
  const a = Math.abs(n);
  return a >= 100 ? n.toFixed(0) : a >= 10 ? n.toFixed(1) : a >= 1 ? n.toFixed(2) : n.toFixed(3);
}

export interface PromHistogram {
  readonly sum: number;
  readonly count: number;
  /** Cumulative counts by upper bound (seconds), ascending; +Inf last. */
  readonly buckets: readonly (readonly [number, number])[];
}

/** One histogram from /metrics text, summed over the label sets whose labels contain `labelFilter`. */
export function promHistogram(text: string, name: string, labelFilter = ''): PromHistogram {
  let sum = 0;
  let count = 0;
  const buckets = new Map<number, number>();
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m === null || !(m[2] ?? '').includes(labelFilter)) continue;
    const v = Number(m[3]);
    if (m[1] === `${name}_sum`) sum += v;
    else if (m[1] === `${name}_count`) count += v;
    else if (m[1] === `${name}_bucket`) {
      const le = /le="([^"]+)"/.exec(m[2] ?? '')?.[1];
      if (le === undefined) continue;
      const bound = le === '+Inf' ? Infinity : Number(le);
      buckets.set(bound, (buckets.get(bound) ?? 0) + v);
    }
  }
  return { sum, count, buckets: [...buckets].sort((a, b) => a[0] - b[0]) };
}

/** What was observed between two scrapes of the same histogram. */
export function histogramDelta(before: PromHistogram, after: PromHistogram): PromHistogram {
  const prev = new Map(before.buckets);
  return {
    sum: after.sum - before.sum,
    count: after.count - before.count,
    buckets: after.buckets.map(([le, c]) => [le, c - (prev.get(le) ?? 0)] as const),
  };
}

/** The smallest bucket bound holding at least p % of the observations (an upper bound of the percentile). */
export function bucketPercentile(h: PromHistogram, p: number): number {
  const target = (p / 100) * h.count;
  for (const [le, c] of h.buckets) if (c >= target) return le;
  return Infinity;
}
