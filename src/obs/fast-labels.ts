// Labelled children that cost a property lookup, not a hash, per observation.
//
// prom-client's `labels(...)` builds and validates a labels object and hashes it on every
// call, and the child it returns hashes again on every `observe`/`inc`; a histogram
// observation also turns its bucket bound into a property key. On a cache hit that was
// 8 such calls per request, and in bench:cache taking them out moved a hit's TTFT by
// about 20 µs on a 2-core box (the work also evicts the next request's code from the
// CPU's caches). `fastLabels` makes `labels()` return a child cached per label values,
// which writes straight into the metric's own store: the exposition, `reset()`,
// `remove()` and the aggregation across threads are prom-client's, unchanged.
//
// It reads three of prom-client's internals (`hashMap`, `hashObject`, a histogram's
// `upperBounds`); test/obs/fast-labels.test.ts compares the exposition with
// prom-client's own path, so an upgrade that changes them fails there.
import { createRequire } from 'node:module';
import { Counter, Histogram } from 'prom-client';

const { hashObject } = createRequire(import.meta.url)('prom-client/lib/util.js') as {
  hashObject(labels: Record<string, string>, labelNames?: readonly string[]): string;
};

interface Store<E> {
  hashMap: Record<string, E | undefined>;
  readonly labelNames: readonly string[];
  readonly sortedLabelNames: readonly string[];
}

interface HistogramEntry {
  bucketValues: Record<string, number>;
  sum: number;
  count: number;
}

function labelsOf(names: readonly string[], values: readonly (string | number)[]): Record<string, string> {
  if (values.length !== names.length) throw new Error(`expected ${names.length} label values, got ${values.length}`);
  const o: Record<string, string> = {};
  for (let i = 0; i < names.length; i++) o[names[i]!] = String(values[i]);
  return o;
}

class HistogramChild {
  private readonly hash: string;
  private readonly bounds: readonly number[];
  private readonly keys: readonly string[];
  private entry: HistogramEntry | undefined;

  constructor(
    private readonly h: Histogram & Store<HistogramEntry> & { upperBounds: readonly number[] },
    private readonly labels: Record<string, string>,
  ) {
    this.hash = hashObject(labels, h.sortedLabelNames);
    this.bounds = h.upperBounds;
    this.keys = h.upperBounds.map(String);
  }

  observe(value: number): void {
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${value}`);
    let e = this.entry;
    // reset() or remove() drop the store's entry: start a new one, as prom-client would.
    if (e === undefined || this.h.hashMap[this.hash] !== e) {
      e = this.h.hashMap[this.hash];
      if (e === undefined) {
        this.h.zero(this.labels);
        e = this.h.hashMap[this.hash]!;
      }
      this.entry = e;
    }
    const b = this.bounds;
    for (let i = 0; i < b.length; i++) {
      if (value <= b[i]!) {
        e.bucketValues[this.keys[i]!]! += 1;
        break;
      }
    }
    e.sum += value;
    e.count += 1;
  }

  startTimer(): (end?: unknown) => number {
    const start = process.hrtime.bigint();
    return () => {
      const s = Number(process.hrtime.bigint() - start) / 1e9;
      this.observe(s);
      return s;
    };
  }
}

class CounterChild {
  private readonly hash: string;

  constructor(
    private readonly c: Counter & Store<{ value: number }>,
    private readonly labels: Record<string, string>,
  ) {
    this.hash = hashObject(labels, c.sortedLabelNames);
  }

  inc(value = 1): void {
    if (!Number.isFinite(value)) throw new TypeError(`Value is not a valid number: ${value}`);
    if (value < 0) throw new Error('It is not possible to decrease a counter');
    const e = this.c.hashMap[this.hash];
    if (e !== undefined) e.value += value;
    else this.c.inc(this.labels, value);
  }
}

/** Makes `labels(...)` of these histograms and counters return cached fast children. Returns its argument. */
export function fastLabels<T extends Histogram | Counter>(metric: T): T {
  const m = metric as unknown as Store<unknown> & { labels(...v: (string | number)[]): unknown; upperBounds?: readonly number[] };
  const isHistogram = (metric as { type?: string }).type === 'histogram';
  const slow = m.labels.bind(m);
  const depth = m.labelNames.length;
  // A map per label position, the child at the last: no key string to build and hash per call.
  let root = new Map<unknown, unknown>();
  let size = 0;
  m.labels = (...values: (string | number)[]): unknown => {
    if (typeof values[0] === 'object') return slow(...values);
    if (values.length !== depth) throw new Error(`expected ${depth} label values, got ${values.length}`);
    let node = root;
    for (let i = 0; i < depth - 1; i++) {
      let next = node.get(values[i]) as Map<unknown, unknown> | undefined;
      if (next === undefined) node.set(values[i], (next = new Map()));
      node = next;
    }
    let child = node.get(values[depth - 1]);
    if (child === undefined) {
      // Label values are bounded (routes, groups, deployments, codes); a runaway set still stays bounded here.
      if (size >= 10_000) {
        root = new Map();
        size = 0;
        return m.labels(...values);
      }
      const labels = labelsOf(m.labelNames, values);
      child = isHistogram ? new HistogramChild(m as never, labels) : new CounterChild(m as never, labels);
      node.set(values[depth - 1], child);
      size++;
    }
    return child;
  };
  return metric;
}

/** fastLabels on every labelled histogram and counter of a set of metrics (createMetrics, inferMetrics). Returns its argument. */
export function withFastLabels<T extends Record<string, unknown>>(metrics: T): T {
  for (const v of Object.values(metrics)) {
    if ((v instanceof Histogram || v instanceof Counter) && (v as unknown as Store<unknown>).labelNames.length > 0) fastLabels(v);
  }
  return metrics;
}
