// Issue 11 §3 and §2: the worker hot path's pieces against their plain versions, and the
// manifest's batch and queue settings.
import t from 'tap';
import { topK } from '../../src/infer/postprocess.ts';
import { decodeImage } from '../../src/infer/routes.ts';
import { validateManifest } from '../../src/infer/manifest.ts';
import { toTensor } from '../../src/infer/preprocess.ts';
import { headerPriority } from '../../src/policy/priority.ts';
import { mulberry32 } from '../../scripts/train/prng.ts';

/** The sort-everything version topK replaced. */
function sortedTopK(scores: Float32Array, k: number, logits: boolean) {
  const n = scores.length;
  let probs: ArrayLike<number> = scores;
  if (logits) {
    let max = -Infinity;
    for (let i = 0; i < n; i++) if (scores[i]! > max) max = scores[i]!;
    const exps = new Float64Array(n);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += exps[i] = Math.exp(scores[i]! - max);
    for (let i = 0; i < n; i++) exps[i]! /= sum;
    probs = exps;
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => probs[b]! - probs[a]!);
  return order.slice(0, Math.min(k, n)).map((index) => ({ index, score: probs[index]! }));
}

t.test('topK as a partial selection equals sorting every class', async (t) => {
  const rng = mulberry32(7);
  let worst = 0;
  for (let trial = 0; trial < 2000; trial++) {
    const n = 1 + Math.floor(rng() * 1200);
    // Few distinct values now and then, so that ties are exercised.
    const levels = trial % 3 === 0 ? 4 : 0;
    const scores = Float32Array.from({ length: n }, () => (levels ? Math.floor(rng() * levels) : (rng() - 0.5) * 20));
    const k = 1 + Math.floor(rng() * 12);
    const logits = trial % 2 === 0;
    const got = topK(scores, [], k, logits);
    const want = sortedTopK(scores, k, logits);
    if (got.map((p) => p.index).join() !== want.map((p) => p.index).join()) {
      t.fail(`trial ${trial}: ${got.map((p) => p.index)} vs ${want.map((p) => p.index)}`);
      return;
    }
    for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]!.score - want[i]!.score));
  }
  t.ok(worst < 1e-12, `same indices in 2000 trials, max score difference ${worst}`);
  t.same(topK(Float32Array.from([1, 2]), ['a', 'b'], 5, false).map((p) => p.label), ['b', 'a'], 'k above n gives n');
});

/** The per-channel multiply-add toTensor's tables replaced. */
function arithmetic(raw: Uint8Array, got: number, c: number, layout: string, mean: number[], std: number[], plane: number): Float32Array {
  const out = new Float32Array(c * plane);
  for (let ch = 0; ch < c; ch++) {
    const k = 1 / (255 * std[ch]!);
    const b = mean[ch]! / std[ch]!;
    for (let i = 0; i < plane; i++) out[layout === 'NCHW' ? ch * plane + i : i * c + ch] = raw[i * got + ch]! * k - b;
  }
  return out;
}

t.test('pixel conversion by table is bit-identical to the multiply-add, every layout and byte value', async (t) => {
  const base = { name: 'm', version: '1', labels: ['a'] };
  const cases = [
    { layout: 'NCHW', channels: 3, got: 3, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] },
    { layout: 'NHWC', channels: 3, got: 3, mean: [0.5, 0.4, 0.3], std: [0.2, 0.25, 0.3] },
    { layout: 'NCHW', channels: 3, got: 4, mean: [0, 0, 0], std: [1, 1, 1] },
    { layout: 'NCHW', channels: 1, got: 1, mean: [0.286], std: [0.353] },
    { layout: 'NHWC', channels: 1, got: 3, mean: [0.1], std: [0.7] },
  ];
  for (const k of cases) {
    const m = validateManifest({ ...base, input: { name: 'input', layout: k.layout, channels: k.channels, height: 16, width: 16, mean: k.mean, std: k.std } }, 'f');
    const plane = 16 * 16;
    // Every byte value on every channel, shifted per channel so channels differ.
    const raw = Uint8Array.from({ length: plane * k.got }, (_, i) => (i * 7 + (i % k.got) * 85) & 255);
    const got = new Float32Array(k.channels * plane + 8).fill(NaN);
    toTensor(raw, k.got, m, plane, got.subarray(4, 4 + k.channels * plane));
    const want = arithmetic(raw, k.got, k.channels, k.layout, k.mean, k.std, plane);
    t.same(Array.from(got.subarray(4, 4 + k.channels * plane)), Array.from(want), `${k.layout} ${k.channels}ch from ${k.got} bytes per pixel`);
    t.ok(Number.isNaN(got[3]!) && Number.isNaN(got[4 + k.channels * plane]!), 'writes its slot only');
  }
});

t.test('one-pass base64 accepts and refuses what the two-pass check did', async (t) => {
  const rng = mulberry32(11);
  for (let len = 1; len < 300; len += 7) {
    const buf = Buffer.from(Array.from({ length: len }, () => Math.floor(rng() * 256)));
    for (const enc of ['base64', 'base64url'] as const) t.ok(decodeImage(buf.toString(enc)).equals(buf), `${enc} ${len} bytes`);
    const wrapped = buf.toString('base64').replace(/(.{76})/g, '$1\n');
    t.ok(decodeImage(wrapped).equals(buf), `line-wrapped ${len}`);
    t.ok(decodeImage(`data:image/png;base64,${buf.toString('base64')}`).equals(buf));
  }
  // RFC 2397: the scheme and media type in any case, parameters before ;base64, no media type at all.
  const png = Buffer.from('\x89PNG\r\n\x1a\n', 'latin1');
  for (const prefix of ['DATA:IMAGE/PNG;BASE64,', 'data:image/png;charset=utf-8;base64,', 'Data:image/jpeg;name=a.jpg;base64,', 'data:;base64,', 'data:application/octet-stream;base64,']) {
    t.ok(decodeImage(prefix + png.toString('base64')).equals(png), prefix);
  }
  for (const bad of ['not base64 !!!', 'QUFB!', 'QUF', 'Q', 'QQ==QQ==', 'QUFBé', '====', 'QUFB\u0000', 'QQ=', 'QUFB=', 'QQ=\n', 'Q Q =']) {
    if (bad === 'QUF') {
      t.equal(decodeImage(bad).toString(), 'AA', 'unpadded is fine');
      continue;
    }
    t.throws(() => decodeImage(bad), { code: 'invalid_image' }, JSON.stringify(bad));
  }
});

t.test('manifest batching and queue settings: defaults, validation naming the field', async (t) => {
  const good = {
    name: 'm', version: '1', labels: ['a', 'b'],
    input: { name: 'input', layout: 'NCHW', channels: 1, height: 28, width: 28, mean: [0], std: [1] },
  };
  const d = validateManifest(good, 'f');
  t.same(d.batching, { maxBatchSize: 1, preferredBatchSizes: [], maxQueueDelayUs: 0 });
  t.same(d.queue, { maxSize: null, timeoutMs: 10_000 });
  const b = validateManifest({ ...good, batching: { max_batch_size: 16, preferred_batch_sizes: [8, 4, 8], max_queue_delay_us: 500 }, queue: { max_size: 32, timeout_ms: 250 } }, 'f');
  t.same(b.batching, { maxBatchSize: 16, preferredBatchSizes: [4, 8], maxQueueDelayUs: 500 });
  t.same(b.queue, { maxSize: 32, timeoutMs: 250 });
  const bad: [object, RegExp][] = [
    [{ batching: { max_batch_size: 0 } }, /batching\.max_batch_size/],
    [{ batching: { max_batch_size: 4, preferred_batch_sizes: [8] } }, /batching\.preferred_batch_sizes\[0\]/],
    [{ batching: { max_queue_delay_us: -1 } }, /batching\.max_queue_delay_us/],
    [{ batching: 3 }, /batching must be an object/],
    [{ queue: { max_size: 0 } }, /queue\.max_size/],
    [{ queue: { timeout_ms: 1.5 } }, /queue\.timeout_ms/],
  ];
  for (const [patch, re] of bad) t.throws(() => validateManifest({ ...good, ...patch }, 'f'), re);
});

t.test('x-broker-priority reads as on the LLM path', async (t) => {
  t.equal(headerPriority(undefined), undefined);
  t.equal(headerPriority('7'), 7);
  t.equal(headerPriority('HIGH'), 8);
  t.equal(headerPriority('low'), 1);
  t.equal(headerPriority('urgent'), undefined);
  t.equal(headerPriority('10'), undefined);
});

t.test("libuv's pool against the batches the inference workers hold", async (t) => {
  const { libuvPoolSizing } = await import('../../src/infer/pool.ts');
  t.same(libuvPoolSizing(2, 2, undefined), { size: 4, wanted: 4, ok: true }, '2 cores: the default 4 is enough');
  t.same(libuvPoolSizing(8, 2, undefined), { size: 4, wanted: 16, ok: false }, '8 cores: 4 would cap decoding at 4 cores');
  t.same(libuvPoolSizing(8, 2, '16'), { size: 16, wanted: 16, ok: true });
  // libuv reads it with atoi: set but not a number (empty too) is 0, so 1 thread (the warning was not given).
  t.same(libuvPoolSizing(1, 1, 'lots'), { size: 1, wanted: 4, ok: false }, 'invalid reads as libuv reads it: 1');
  t.same(libuvPoolSizing(1, 1, ''), { size: 1, wanted: 4, ok: false }, 'empty: 1');
  t.same(libuvPoolSizing(64, 16, '5000'), { size: 1024, wanted: 1024, ok: true }, 'clamped to 1024 as libuv does');
});

t.test('admission order: priority after aging (one level per agingMs), ties to the oldest, by size', async (t) => {
  const { AdmissionQueue } = await import('../../src/infer/admission.ts');
  const q = new AdmissionQueue<string>('m', 10, 60_000, 1000);
  const push = (value: string, priority: number, enqueuedAt: number, size?: number) =>
    q.push({ value, size, priority, enqueuedAt, reject: () => t.fail(`${value} rejected`) });
  push('low-old', 1, 0);
  push('normal', 5, 3_000);
  push('high', 8, 3_500);
  push('normal-later', 5, 3_600);
  // At 4 s: low-old has aged to 1 + 4 = 5, normal to 5 + 1 = 6, high to 8.5.
  t.equal(q.topScore(4_000), 8.5);
  t.same(q.take(2, undefined, 4_000).map((p) => p.value), ['high', 'normal']);
  // At 5 s: low-old 6, normal-later 6.4: the later one still goes first.
  t.same(q.take(1, undefined, 5_000).map((p) => p.value), ['normal-later']);
  push('fresh-normal', 5, 6_000);
  // At 6 s: low-old has waited 6 s (score 7) and now overtakes a fresh priority 5: no starvation.
  t.same(q.take(2, undefined, 6_000).map((p) => p.value), ['low-old', 'fresh-normal']);
  t.equal(q.size, 0);

  // Equal scores go to the oldest; a batch takes only requests of the chosen size.
  push('a', 5, 1_000, 32);
  push('b', 6, 2_000, 64);
  push('c', 5, 1_500, 32);
  t.same(q.nextGroup(2_000), { size: 32, count: 2 }, 'a (5 + 1) ties b (6 + 0) and is older');
  t.same(q.take(8, 32, 2_000).map((p) => p.value), ['a', 'c']);
  t.same(q.take(8, 64, 2_000).map((p) => p.value), ['b']);
});
