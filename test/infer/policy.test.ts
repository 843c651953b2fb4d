// The pure parts of the inference path: arm choice, canary judge, manifest validation.
import t from 'tap';
import fc from 'fast-check';
import { chooseArm, readCookie, shareOfB } from '../../src/infer/arms.ts';
import { CanaryJudge } from '../../src/infer/canary.ts';
import { validateManifest } from '../../src/infer/manifest.ts';
import { topK } from '../../src/infer/postprocess.ts';

const split = { abWeightA: 0.8, abWeightB: 0.2, canaryEnabled: false, canaryPercent: 10 };

t.test('arm choice: weights, canary share, sticky cookie', async (t) => {
  t.equal(shareOfB(split), 0.2);
  t.equal(shareOfB({ ...split, canaryEnabled: true }), 0.1);
  t.same(chooseArm(split, undefined, 0.1), { arm: 'B', reason: 'weighted' });
  t.same(chooseArm(split, undefined, 0.5), { arm: 'A', reason: 'weighted' });
  t.same(chooseArm(split, 'B', 0.99), { arm: 'B', reason: 'sticky' });
  t.same(chooseArm(split, 'A', 0.01), { arm: 'A', reason: 'sticky' });
  t.same(chooseArm({ ...split, canaryEnabled: true }, undefined, 0.05), { arm: 'B', reason: 'canary' });
  t.same(chooseArm({ ...split, abWeightB: 0 }, 'B', 0.01), { arm: 'A', reason: 'weighted' }, 'a cookie for an arm without traffic is ignored');
  t.same(chooseArm(split, 'Z', 0.5), { arm: 'A', reason: 'weighted' }, 'garbage cookie ignored');
});

t.test('cookie parsing', async (t) => {
  t.equal(readCookie('a=1; eb_arm=B; c=3', 'eb_arm'), 'B');
  t.equal(readCookie('xeb_arm=B', 'eb_arm'), undefined);
  t.equal(readCookie(undefined, 'eb_arm'), undefined);
});

t.test('canary judge: error rate and latency margins over a window', async (t) => {
  const judge = new CanaryJudge({ windowMs: 1000, minRequests: 5, errorMargin: 0.1, latencyMargin: 0.5 });
  for (let i = 0; i < 10; i++) judge.record('A', true, 10, i);
  for (let i = 0; i < 4; i++) judge.record('B', false, 10, i);
  t.equal(judge.verdict(10), undefined, 'too few B requests to judge');
  judge.record('B', false, 10, 5);
  t.match(judge.verdict(10), /error rate/);
  t.equal(judge.verdict(5000), undefined, 'samples leave the window');

  const slow = new CanaryJudge({ windowMs: 1000, minRequests: 5, errorMargin: 0.1, latencyMargin: 0.5 });
  for (let i = 0; i < 10; i++) slow.record('A', true, 10, i);
  for (let i = 0; i < 10; i++) slow.record('B', true, 14, i);
  t.equal(slow.verdict(20), undefined, 'within 50 %');
  slow.record('B', true, 400, 11);
  t.equal(slow.verdict(20), undefined, 'one slow request (a GC pause) is no verdict: the median is as A\'s');
  for (let i = 0; i < 20; i++) slow.record('B', true, 40, i);
  t.match(slow.verdict(20), /p50 40\.0 ms vs 10\.0 ms, p99 400\.0 ms vs 10\.0 ms/, 'slower at the median and the tail');

  // A B slower at its tail, with its median as A's: no rollback on latency (its errors still count).
  const tail = new CanaryJudge({ windowMs: 1000, minRequests: 5, errorMargin: 0.1, latencyMargin: 0.5 });
  for (let i = 0; i < 100; i++) tail.record('A', true, 10, i);
  for (let i = 0; i < 100; i++) tail.record('B', true, i < 90 ? 10 : 80, i);
  t.equal(tail.verdict(200), undefined);
});

/** The window as the judge once computed it on every verdict: filter, sort, index. */
function referenceWindow(samples: { at: number; ok: boolean; ms: number }[], from: number) {
  // Only the head expires (samples come in arrival order), and at most the newest 10,000 count.
  let drop = 0;
  while (drop < samples.length && samples[drop]!.at < from) drop++;
  const list = samples.slice(drop).slice(-10_000);
  if (list.length === 0) return { requests: 0, errorRate: 0, p50Ms: 0, p99Ms: 0 };
  const ms = list.filter((x) => x.ok).map((x) => x.ms).sort((a, b) => a - b);
  const at = (q: number): number => (ms.length === 0 ? 0 : ms[Math.min(ms.length - 1, Math.ceil(ms.length * q) - 1)]!);
  return { requests: list.length, errorRate: list.filter((x) => !x.ok).length / list.length, p50Ms: at(0.5), p99Ms: at(0.99) };
}

t.test('canary judge: its kept window says what sorting the whole window said, at any point', async (t) => {
  const step = fc.record({ arm: fc.constantFrom('A' as const, 'B' as const), ok: fc.boolean(), ms: fc.integer({ min: 0, max: 50 }), dt: fc.integer({ min: 0, max: 40 }), look: fc.boolean() });
  fc.assert(
    fc.property(fc.array(step, { maxLength: 300 }), (steps) => {
      const judge = new CanaryJudge({ windowMs: 200, minRequests: 1, errorMargin: 0.1, latencyMargin: 0.5 });
      const kept: Record<'A' | 'B', { at: number; ok: boolean; ms: number }[]> = { A: [], B: [] };
      let now = 0;
      for (const s of steps) {
        now += s.dt;
        judge.record(s.arm, s.ok, s.ms, now);
        kept[s.arm].push({ at: now, ok: s.ok, ms: s.ms });
        if (!s.look) continue;
        for (const arm of ['A', 'B'] as const) {
          // Time only moves on, so what left an earlier window is out of this one too.
          const want = referenceWindow(kept[arm], now - 200);
          const got = judge.window(arm, now);
          if (got.requests !== want.requests || got.p50Ms !== want.p50Ms || got.p99Ms !== want.p99Ms || Math.abs(got.errorRate - want.errorRate) > 1e-12) throw new Error(`${arm} at ${now}: ${JSON.stringify(got)} vs ${JSON.stringify(want)}`);
        }
      }
    }),
    { numRuns: 300 },
  );
  // Past 10,000 samples the oldest go, whatever their age.
  const judge = new CanaryJudge({ windowMs: 1e9, minRequests: 1, errorMargin: 0.1, latencyMargin: 0.5 });
  const all: { at: number; ok: boolean; ms: number }[] = [];
  for (let i = 0; i < 12_500; i++) {
    const x = { at: i, ok: i % 7 !== 0, ms: (i * 7919) % 1000 };
    judge.record('B', x.ok, x.ms, x.at);
    all.push(x);
  }
  t.same(judge.window('B', 12_500), referenceWindow(all, 12_500 - 1e9), 'the newest 10,000');
  t.equal(judge.window('B', 12_500).requests, 10_000);
  // A long run through a short window: what left is let go, and the window stays right.
  const short = new CanaryJudge({ windowMs: 100, minRequests: 1, errorMargin: 0.1, latencyMargin: 0.5 });
  const run: { at: number; ok: boolean; ms: number }[] = [];
  for (let i = 0; i < 5_000; i++) {
    const x = { at: i, ok: i % 5 !== 0, ms: (i * 104729) % 97 };
    short.record('A', x.ok, x.ms, x.at);
    run.push(x);
    if (i % 250 === 0) t.same(short.window('A', i), referenceWindow(run, i - 100), `at ${i}`);
  }
  t.same(short.window('A', 5_000), referenceWindow(run, 4_900));
});

t.test('manifest validation names the field', async (t) => {
  const good = {
    name: 'm',
    version: '1',
    input: { name: 'input', layout: 'NCHW', channels: 1, height: 28, width: 28, mean: [0.5], std: [0.5] },
    output: { name: 'logits', kind: 'logits' },
    labels: ['a', 'b'],
  };
  t.equal(validateManifest(good, 'f').input.defaultSize, 28);
  const dyn = validateManifest({ ...good, input: { ...good.input, height: null, width: null, defaultSize: 64 } }, 'f');
  t.equal(dyn.input.height, null);
  t.equal(dyn.input.defaultSize, 64);
  const bad: [unknown, RegExp][] = [
    [{ ...good, input: { ...good.input, channels: 2 } }, /input.channels/],
    [{ ...good, input: { ...good.input, std: [0] } }, /input.std/],
    [{ ...good, input: { ...good.input, mean: [1, 2, 3] } }, /input.mean/],
    [{ ...good, input: { ...good.input, layout: 'CHW' } }, /input.layout/],
    [{ ...good, labels: [] }, /labels/],
    [{ ...good, name: '' }, /name/],
  ];
  for (const [m, re] of bad) t.throws(() => validateManifest(m, 'f'), re);
});

t.test('topK applies softmax to logits and sorts', async (t) => {
  const p = topK(new Float32Array([1, 3, 2]), ['a', 'b', 'c'], 2, true);
  t.same(p.map((x) => x.label), ['b', 'c']);
  const sum = topK(new Float32Array([1, 3, 2]), ['a', 'b', 'c'], 3, true).reduce((s, x) => s + x.score, 0);
  t.ok(Math.abs(sum - 1) < 1e-9);
});
