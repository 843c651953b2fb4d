import t from 'tap';
import { OutputPredictor } from '../../src/policy/prediction.ts';

function feed(p: OutputPredictor, label: string, values: number[], predicted = 0): void {
  for (const v of values) p.observe(label, predicted, v);
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

t.test('fallback, then max_tokens, until minSamples are seen', async (t) => {
  const p = new OutputPredictor({ minSamples: 3, fallback: 256 });
  t.same(p.predict('chat'), { tokens: 256, source: 'fallback', capped: false });
  t.same(p.predict('chat', 1000), { tokens: 1000, source: 'max_tokens', capped: false });
  t.same(p.predict('chat', 0), { tokens: 256, source: 'fallback', capped: false }, 'max_tokens 0 is ignored');
  feed(p, 'chat', [10, 20]);
  t.equal(p.predict('chat').source, 'fallback', 'two samples are not enough');
  feed(p, 'chat', [30]);
  t.same(p.predict('chat'), { tokens: 30, source: 'learned', capped: false });
  t.equal(p.predict('other').source, 'fallback', 'labels are separate');
});

t.test('learned prediction is the nearest-rank percentile, capped by max_tokens', async (t) => {
  const p = new OutputPredictor();
  // Shuffled 1..100 so the order of arrival does not matter.
  const values = range(1, 100).sort((a, b) => ((a * 37) % 101) - ((b * 37) % 101));
  feed(p, 'sum', values);
  t.same(p.predict('sum'), { tokens: 90, source: 'learned', capped: false });
  t.same(p.predict('sum', 50), { tokens: 50, source: 'learned', capped: true });
  t.same(p.predict('sum', 95), { tokens: 90, source: 'learned', capped: false }, 'a cap above the prediction does not raise it');
  const s = p.stats('sum')!;
  t.equal(s.samples, 100);
  t.equal(s.p50, 50);
  t.equal(s.p90, 90);
  t.equal(s.p99, 99);

  // Nearest rank is ceil(p * n): 14.4 → the 15th of 16, not the 14th.
  const p16 = new OutputPredictor({ minSamples: 1 });
  feed(p16, 'x', range(1, 16).reverse());
  t.equal(p16.predict('x').tokens, 15);

  const p99 = new OutputPredictor({ percentile: 0.99, minSamples: 1 });
  feed(p99, 'x', values);
  t.equal(p99.predict('x').tokens, 99);
});

t.test('only the last `window` samples count', async (t) => {
  const p = new OutputPredictor({ window: 20, minSamples: 5 });
  feed(p, 'l', range(1, 20).map(() => 1000));
  t.equal(p.predict('l').tokens, 1000);
  // p90 of 20 samples is the 18th smallest: 1000 while three of them remain.
  feed(p, 'l', range(1, 17).map(() => 10));
  t.equal(p.predict('l').tokens, 1000);
  t.equal(p.stats('l')!.p50, 10);
  feed(p, 'l', [10]);
  t.equal(p.predict('l').tokens, 10, 'only two 1000s remain: below the 18th place');
  feed(p, 'l', [10, 10]);
  t.equal(p.stats('l')!.p99, 10, 'no 1000 left at all');
  t.equal(p.stats('l')!.samples, 20);
});

t.test('window larger than the initial allocation and repeated values stay sorted', async (t) => {
  const p = new OutputPredictor({ window: 100, minSamples: 1, percentile: 1 });
  const vals: number[] = [];
  for (let i = 0; i < 1000; i++) vals.push((i * 7919) % 211);
  feed(p, 'l', vals);
  const last = vals.slice(-100).sort((a, b) => a - b);
  t.equal(p.predict('l').tokens, last[99]);
  t.equal(p.stats('l')!.p50, last[49]);
  t.equal(p.stats('l')!.p90, last[89]);
});

t.test('error statistics: signed and absolute, and the last error', async (t) => {
  let now = 1_000;
  const p = new OutputPredictor({ now: () => now });
  p.observe('l', 100, 60); // +40: over-predicted
  now = 2_000;
  p.observe('l', 100, 120); // -20
  p.observe('l', Number.NaN, 50); // sample kept, no error
  p.observe('l', 100, -1); // ignored
  p.observe('l', 100, Number.NaN); // ignored
  const s = p.stats('l')!;
  t.equal(s.samples, 3);
  t.equal(s.errorCount, 2);
  t.equal(s.meanAbsError, 30);
  t.equal(s.meanError, 10);
  t.equal(s.lastError, -20);
  t.equal(s.sumAbsError, 60);
  t.equal(s.sumError, 20);
  t.equal(s.lastObservedAt, 2_000);
  t.equal(new OutputPredictor().stats('nope'), undefined);
  p.observe('m', 1, 1);
  t.same(p.stats().map((x) => x.label), ['l', 'm']);
  const noClock = new OutputPredictor();
  noClock.observe('l', 1, 1);
  t.notOk('lastObservedAt' in noClock.stats('l')!, 'no clock, no timestamp');
});

t.test('least recently used labels are evicted beyond maxLabels', async (t) => {
  const p = new OutputPredictor({ maxLabels: 2, minSamples: 1 });
  p.observe('a', 0, 1);
  p.observe('b', 0, 2);
  p.predict('a'); // a is now more recent than b
  p.observe('c', 0, 3);
  t.same(p.labels().sort(), ['a', 'c']);
  t.equal(p.predict('b').source, 'fallback', 'b forgot its history');
  t.equal(p.predict('a').tokens, 1);
  p.stats('c'); // reading stats is not use
  p.observe('d', 0, 4);
  t.same(p.labels().sort(), ['a', 'd']);
  t.equal(p.stats().length, 2);
});

t.test('invalid options are refused', async (t) => {
  t.throws(() => new OutputPredictor({ percentile: 0 }), RangeError);
  t.throws(() => new OutputPredictor({ window: 5, minSamples: 10 }), RangeError);
  t.throws(() => new OutputPredictor({ maxLabels: 0 }), RangeError);
});
