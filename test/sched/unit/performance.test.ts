import t from 'tap';
import { DEFAULT_PERFORMANCE, PerformanceTracker, powerOfTwo, type PerformanceThresholds } from '../../../src/policy/performance.ts';
import { fakeClock, seeded } from './helpers.ts';

function tracker(o: Partial<PerformanceThresholds> = {}) {
  const clock = fakeClock();
  const th: PerformanceThresholds = { ...DEFAULT_PERFORMANCE, alpha: 0.5, minSamples: 3, ttftDegradedMs: 1_000, errorRateDegraded: 0.5, probeIntervalMs: 2_000, decayMs: 10_000, ...o };
  return { clock, p: new PerformanceTracker(th, clock.read) };
}

t.test('EWMA: the first sample is taken as is, later ones weighted by alpha', async (t) => {
  const { p } = tracker({ alpha: 0.3 });
  t.equal(p.snapshot('a'), undefined, 'nothing known before a sample');
  p.succeeded('a', 100, 50);
  let s = p.snapshot('a')!;
  t.equal(s.ttftMs, 100);
  t.equal(s.tokensPerSecond, 50);
  t.equal(s.errorRate, 0);
  t.equal(s.samples, 1);
  p.succeeded('a', 200, 10);
  s = p.snapshot('a')!;
  t.equal(s.ttftMs, 0.3 * 200 + 0.7 * 100);
  t.equal(s.tokensPerSecond, 0.3 * 10 + 0.7 * 50);
  p.failed('a');
  s = p.snapshot('a')!;
  t.equal(s.errorRate, 0.3, 'one failure after two successes');
  t.equal(s.ttftMs, 130, 'a failure leaves the latency alone');
  t.equal(s.samples, 3);
  p.succeeded('a', null, null);
  s = p.snapshot('a')!;
  t.equal(s.ttftMs, 130, 'a success without a TTFT keeps it');
  t.equal(s.tokensPerSecond, 38);
  t.equal(s.errorRate, 0.7 * 0.3);
  p.succeeded('a', 130, Infinity);
  t.equal(p.snapshot('a')!.tokensPerSecond, 38, 'a non-finite rate is ignored');
});

t.test('the first sample being a failure sets the error rate to 1', async (t) => {
  const { p } = tracker({ alpha: 0.3 });
  p.failed('a');
  t.equal(p.snapshot('a')!.errorRate, 1);
  t.equal(p.snapshot('a')!.ttftMs, null);
});

t.test('degraded by TTFT, only once minSamples are in; recovers when the average falls', async (t) => {
  const { p } = tracker();
  p.succeeded('a', 5_000, null);
  p.succeeded('a', 5_000, null);
  t.notOk(p.snapshot('a')!.degraded, 'two samples: not judged yet');
  t.same(p.degraded(), []);
  p.succeeded('a', 5_000, null);
  const s = p.snapshot('a')!;
  t.ok(s.degraded);
  t.match(s.degradedReason, /ttft 5000 ms > 1000 ms/);
  t.same(p.degraded(), ['a']);
  t.ok(p.degradedIds.has('a'));
  // alpha 0.5: 5000 → 2550 → 1325 → 712.5
  p.succeeded('a', 100, null);
  p.succeeded('a', 100, null);
  t.ok(p.snapshot('a')!.degraded, '1325 ms is still over');
  p.succeeded('a', 100, null);
  t.notOk(p.snapshot('a')!.degraded, '712.5 ms is under');
  t.equal(p.snapshot('a')!.degradedReason, null);
  t.same(p.degraded(), []);
  t.notOk(p.degradedIds.has('a'));
});

t.test('degraded by error rate', async (t) => {
  const { p } = tracker();
  p.succeeded('a', 10, null);
  p.failed('a'); // 0.5
  p.failed('a'); // 0.75
  const s = p.snapshot('a')!;
  t.ok(s.degraded);
  t.match(s.degradedReason, /error rate 0.75 > 0.5/);
  const { p: q } = tracker();
  q.succeeded('b', 10, null); // 0
  q.succeeded('b', 10, null); // 0
  q.failed('b'); // 0.5
  t.equal(q.snapshot('b')!.errorRate, 0.5);
  t.notOk(q.snapshot('b')!.degraded, 'exactly at the threshold is not over it');
});

t.test('degraded by tokens per second only when a floor is set', async (t) => {
  const { p } = tracker({ minTokensPerSecond: 20 });
  for (let i = 0; i < 3; i++) p.succeeded('slow', 10, 5);
  for (let i = 0; i < 3; i++) p.succeeded('fast', 10, 50);
  t.ok(p.snapshot('slow')!.degraded);
  t.match(p.snapshot('slow')!.degradedReason, /5.0 tokens\/s < 20/);
  t.notOk(p.snapshot('fast')!.degraded);
  const { p: noFloor } = tracker({ minTokensPerSecond: 0 });
  for (let i = 0; i < 3; i++) noFloor.succeeded('slow', 10, 5);
  t.notOk(noFloor.snapshot('slow')!.degraded);
});

t.test('avoid until a probe interval has passed since the last request, then probeDue', async (t) => {
  const { clock, p } = tracker();
  t.notOk(p.avoid('a'), 'unknown deployments are not avoided');
  t.notOk(p.probeDue('a'));
  p.started('a');
  for (let i = 0; i < 3; i++) p.failed('a');
  t.ok(p.avoid('a'));
  t.notOk(p.probeDue('a'));
  clock.advance(1_999);
  t.ok(p.avoid('a'));
  t.notOk(p.probeDue('a'));
  clock.advance(1);
  t.notOk(p.avoid('a'));
  t.ok(p.probeDue('a'), 'due at exactly probeIntervalMs');
  p.started('a'); // the probe goes out
  t.ok(p.avoid('a'), 'avoided again for another interval');
  t.notOk(p.probeDue('a'));
  // A healthy deployment is never avoided nor probed, however idle.
  for (let i = 0; i < 3; i++) p.succeeded('b', 10, null);
  clock.advance(1_000_000);
  t.notOk(p.avoid('b'));
  t.notOk(p.probeDue('b'));
});

t.test('cost: (inFlight + 1) x TTFT / weight, with TTFT fading to 1 ms since the last sample', async (t) => {
  const { clock, p } = tracker({ decayMs: 10_000 });
  t.equal(p.cost('new', 0, 1), 1, 'unknown: 1 ms');
  t.equal(p.cost('new', 3, 2), 2);
  p.succeeded('a', 1_001, null);
  t.equal(p.cost('a', 0, 1), 1_001);
  t.equal(p.cost('a', 1, 2), 1_001);
  t.equal(p.cost('a', 3, 1), 4_004);
  clock.advance(10_000); // one time constant
  t.ok(Math.abs(p.cost('a', 0, 1) - (1 + 1_000 * Math.exp(-1))) < 1e-9, 'e-folded');
  clock.advance(90_000);
  t.ok(Math.abs(p.cost('a', 0, 1) - (1 + 1_000 * Math.exp(-10))) < 1e-9, 'long idle: close to 1 ms, as good as unknown');
  p.succeeded('a', 1_001, null);
  t.ok(p.cost('a', 0, 1) > 600, 'a fresh sample restarts the clock');
  // Failures are samples too: they restart the fade without changing the TTFT.
  clock.advance(10_000);
  const faded = p.cost('a', 0, 1);
  p.failed('a');
  t.ok(p.cost('a', 0, 1) > faded);
});

t.test('degradedIds tracks every change incrementally, across deployments', async (t) => {
  const { p } = tracker();
  for (const id of ['a', 'b', 'c']) for (let i = 0; i < 3; i++) p.failed(id);
  t.same([...p.degradedIds].sort(), ['a', 'b', 'c']);
  for (let i = 0; i < 3; i++) p.succeeded('b', 10, null);
  t.same([...p.degradedIds].sort(), ['a', 'c']);
  t.same(p.degraded().sort(), ['a', 'c']);
  t.same(
    p
      .all()
      .filter((s) => s.degraded)
      .map((s) => s.id)
      .sort(),
    ['a', 'c'],
    'agrees with a full scan',
  );
  const snap = p.snapshot('a')!;
  snap.degraded = false;
  t.ok(p.snapshot('a')!.degraded, 'snapshots are copies');
});

t.test('powerOfTwo: two distinct random candidates, the cheaper wins (ties to the first drawn)', async (t) => {
  t.equal(
    powerOfTwo(['only'], () => {
      throw new Error('no cost needed for one');
    }, Math.random),
    'only',
  );
  // random() = 0.99 then 0: i = last, j = 0.
  const draws = (xs: number[]) => () => xs.shift()!;
  const costs: Record<string, number> = { a: 1, b: 2, c: 3, d: 4 };
  const items = ['a', 'b', 'c', 'd'];
  t.equal(powerOfTwo(items, (x) => costs[x]!, draws([0.99, 0])), 'a');
  t.equal(powerOfTwo(items, (x) => costs[x]!, draws([0, 0.99])), 'a', 'i = 0, j = 3 → a');
  t.equal(powerOfTwo(items, (x) => costs[x]!, draws([0.5, 0.5])), 'b', 'i = 2, j = 1: c vs b');
  t.equal(powerOfTwo(items, (x) => (x === 'd' ? 0 : costs[x]!), draws([0.5, 0.7])), 'd', 'i = 2, j = 2 is moved past i to 3: c vs d');
  t.equal(powerOfTwo(items, () => 7, draws([0.5, 0])), 'c', 'a tie keeps the first drawn');

  // Never the same index twice, and every pair is possible: record the pairs compared.
  const random = seeded(42);
  const pairs = new Set<string>();
  let compared = 0;
  let self = 0;
  for (let n = 0; n < 2_000; n++) {
    const seen: number[] = [];
    powerOfTwo(
      [0, 1, 2, 3, 4],
      (x) => {
        seen.push(x);
        return x;
      },
      random,
    );
    if (seen.length === 2) compared++;
    if (seen[0] === seen[1]) self++;
    pairs.add([...seen].sort().join('-'));
  }
  t.equal(compared, 2_000, 'two costs looked at every time');
  t.equal(self, 0, 'never a candidate against itself');
  t.equal(pairs.size, 10, 'all 10 pairs of 5 drawn');
});

t.test('powerOfTwo with two candidates always compares both, so the cheaper always wins', async (t) => {
  const random = seeded(7);
  for (let n = 0; n < 200; n++) {
    if (powerOfTwo(['cheap', 'dear'], (x) => (x === 'cheap' ? 1 : 2), random) !== 'cheap') {
      t.fail('picked the dearer of two');
      return;
    }
  }
  t.pass('the cheaper every time');
});

t.test('setThresholds: a config change judges every deployment again at once, without a new sample', async (t) => {
  const { clock, p } = tracker({ ttftDegradedMs: 1_000, minSamples: 1 });
  p.succeeded('a', 400, null);
  p.succeeded('b', 50, null);
  const sampledAt = p.snapshot('a')!.lastSampleAt;
  t.same(p.degraded(), []);
  clock.advance(5_000);
  p.setThresholds({ ...DEFAULT_PERFORMANCE, alpha: 0.5, minSamples: 1, ttftDegradedMs: 200 });
  t.same(p.degraded(), ['a'], 'a (400 ms) is over the new 200 ms');
  t.match(p.snapshot('a')!.degradedReason, /ttft 400 ms > 200 ms/);
  t.equal(p.snapshot('a')!.lastSampleAt, sampledAt, 'judging again is not a sample: the latency fade keeps its clock');
  p.setThresholds({ ...DEFAULT_PERFORMANCE, alpha: 0.5, minSamples: 5, ttftDegradedMs: 200 });
  t.same(p.degraded(), [], 'minSamples raised past what a has: not judged yet');
});
