// Prometheus histogram readers for bench:llm (latency statistics are in ../lib/stats.ts).

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
