// fastLabels' children write into prom-client's own store: the same observations through
// them and through prom-client's own labels() give the same exposition and the same JSON
// (what the control plane aggregates across threads), across reset() and remove().
import t from 'tap';
import { AggregatorRegistry, Counter, Histogram, Registry } from 'prom-client';
import { fastLabels } from '../../src/obs/fast-labels.ts';
import { createMetrics } from '../../src/obs/metrics.ts';

function pair() {
  const make = (fast: boolean) => {
    const registry = new Registry();
    const h = new Histogram({ name: 'h_seconds', help: 'h', labelNames: ['route', 'status'] as const, buckets: [0.001, 0.01, 0.1, 1], registers: [registry] });
    const c = new Counter({ name: 'c_total', help: 'c', labelNames: ['group', 'outcome'] as const, registers: [registry] });
    if (fast) {
      fastLabels(h);
      fastLabels(c);
    }
    return { registry, h, c };
  };
  return { slow: make(false), fast: make(true) };
}

// Values on, between and past the bounds, and 0.
const VALUES = [0, 0.0005, 0.001, 0.0011, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 100];

t.test('the same observations give the same exposition', async (t) => {
  const { slow, fast } = pair();
  let seed = 7;
  const rnd = (n: number): number => (seed = (seed * 1103515245 + 12345) % 2147483648) % n;
  for (let i = 0; i < 2000; i++) {
    const route = ['/a', '/b', '/c'][rnd(3)]!;
    const status = [200, 404, 503][rnd(3)]!;
    const v = VALUES[rnd(VALUES.length)]!;
    for (const s of [slow, fast]) {
      s.h.labels(route, String(status)).observe(v);
      s.c.labels(route, status === 200 ? 'ok' : 'error').inc(i % 3);
    }
    if (i === 700) for (const s of [slow, fast]) s.h.reset();
    if (i === 1300) for (const s of [slow, fast]) s.c.remove('/a', 'ok');
  }
  const text = await fast.registry.metrics();
  t.equal(text, await slow.registry.metrics());
  t.match(text, /h_seconds_bucket\{le="0.001",route="\/a",status="200"\} \d+/);
  t.match(text, /c_total\{group="\/b",outcome="ok"\} \d+/);
  // What planes.ts merges across threads.
  const agg = (r: Registry) => r.getMetricsAsJSON().then((j) => AggregatorRegistry.aggregate([j, j] as never).metrics());
  t.equal(await agg(fast.registry), await agg(slow.registry));
});

t.test('an object argument, observe(labels, v) and an undefined value give what prom-client gives', async (t) => {
  const { slow, fast } = pair();
  for (const s of [slow, fast]) {
    s.h.labels({ route: '/x', status: '200' }).observe(0.02);
    s.h.observe({ route: '/x', status: '200' }, 0.2);
    s.h.labels('/x', '200').observe(0.002);
    s.c.labels('/y', undefined as never).inc();
    s.c.labels('/y', undefined as never).inc(2);
  }
  t.equal(await fast.registry.metrics(), await slow.registry.metrics());
});

t.test('bad input is refused as prom-client refuses it', async (t) => {
  const { fast } = pair();
  t.throws(() => fast.h.labels('/only-one' as never), /label values/);
  t.throws(() => fast.h.labels('/a', '200').observe(Number.NaN), TypeError);
  t.throws(() => fast.c.labels('/a', 'ok').inc(-1), /decrease/);
});

t.test('the broker\'s metrics use the fast children', async (t) => {
  const m = createMetrics({ defaults: false });
  const child = m.httpDuration.labels('/v1/infer', 'POST', '200');
  t.equal(m.httpDuration.labels('/v1/infer', 'POST', '200'), child, 'one child per label values');
  child.observe(0.003);
  t.match(await m.registry.metrics(), /http_request_duration_seconds_count\{route="\/v1\/infer",method="POST",status="200"\} 1/);
});
