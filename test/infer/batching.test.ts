// Issue 11: dynamic batching and admission at the pool, with real workers and models.
import t from 'tap';
import sharp from 'sharp';
import { loadManifest, validateManifest, type LoadedModel } from '../../src/infer/manifest.ts';
import { createInferPool, type ExecEvent, type InferPool, type RunResult } from '../../src/infer/pool.ts';
import { fashionPngs as labelled } from '../helpers/images.ts';
import { writeForeignModel } from './foreign-model.ts';

const vA = loadManifest('models/vA.onnx');
/** The same model file under other manifest settings. */
function variant(m: LoadedModel, patch: { batching?: object; queue?: object }): LoadedModel {
  const raw = JSON.parse(JSON.stringify({
    ...m.manifest,
    input: { ...m.manifest.input },
    output: m.manifest.output,
    batching: { max_batch_size: m.manifest.batching.maxBatchSize, max_queue_delay_us: 0 },
    ...patch,
  }));
  return { path: m.path, manifest: validateManifest(raw, 'test') };
}
const fashionPngs = async (n: number) => (await labelled(n)).map((i) => ({ png: Buffer.from(i.b64, 'base64'), label: i.label }));
const copy = (b: Buffer): ArrayBuffer => new Uint8Array(b).buffer;

async function withPool(models: Record<string, LoadedModel>, threads: number, tasksPerWorker: number, fn: (p: InferPool, events: ExecEvent[]) => Promise<void>) {
  const pool = createInferPool({ models, threads, intraOpThreads: 1, maxQueue: 256, maxPixels: 4096 * 4096, tasksPerWorker });
  const events: ExecEvent[] = [];
  pool.onExecute((e) => events.push(e));
  try {
    await pool.waitReady();
    await fn(pool, events);
  } finally {
    await pool.close();
  }
}

function maxDiff(a: RunResult, b: RunResult): number {
  const byIndex = new Map(b.predictions.map((p) => [p.index, p.score]));
  let d = 0;
  for (const p of a.predictions) d = Math.max(d, Math.abs(p.score - (byIndex.get(p.index) ?? Infinity)));
  return d;
}

t.test('the committed models have a dynamic batch dimension and batching settings', async (t) => {
  const ort = await import('onnxruntime-node');
  for (const path of ['models/vA.onnx', 'models/vB.onnx']) {
    const s = await ort.InferenceSession.create(path);
    const input = s.inputMetadata[0]!;
    t.ok(input.isTensor && typeof input.shape[0] === 'string', `${path}: batch dimension is symbolic (${input.isTensor ? input.shape[0] : '?'})`);
    const m = loadManifest(path).manifest;
    t.ok(m.batching.maxBatchSize > 1, `${path}: max_batch_size ${m.batching.maxBatchSize}`);
    const out = await s.run({ input: new ort.Tensor('float32', new Float32Array(3 * 784), [3, 1, 28, 28]) });
    t.same(out.logits!.dims, [3, 10]);
    await s.release();
  }
});

t.test('batched results equal batch size 1 within 1e-6, for an MLP and a conv net (NHWC)', async (t) => {
  const foreign = loadManifest(writeForeignModel());
  const images = await fashionPngs(40);
  const colour = await Promise.all(images.slice(0, 24).map((img, i) => sharp(img.png).resize(41 + i, 37).tint({ r: 200, g: 40 + i * 5, b: 90 }).png().toBuffer()));
  const models = { A: vA, B: variant(vA, { batching: { max_batch_size: 1 } }), F: foreign, G: variant(foreign, { batching: { max_batch_size: 1 } }) };
  await withPool(models, 1, 1, async (pool, events) => {
    const run = (key: string, imgs: Buffer[], k: number) => Promise.all(imgs.map((b) => pool.run(key, copy(b), undefined, k)));
    const pngs = images.map((i) => i.png);
    const batched = await run('A', pngs, 10);
    const single = await run('B', pngs, 10);
    const fb = await run('F', colour, 5);
    const fs = await run('G', colour, 5);
    t.ok(batched.some((r) => r.batchSize > 1), `vA batched: sizes ${[...new Set(batched.map((r) => r.batchSize))]}`);
    t.ok(single.every((r) => r.batchSize === 1));
    t.ok(fb.some((r) => r.batchSize > 1), `foreign batched: sizes ${[...new Set(fb.map((r) => r.batchSize))]}`);
    const d1 = Math.max(...batched.map((r, i) => maxDiff(r, single[i]!)));
    const d2 = Math.max(...fb.map((r, i) => maxDiff(r, fs[i]!)));
    t.ok(d1 <= 1e-6, `vA: max score difference ${d1}`);
    t.ok(d2 <= 1e-6, `foreign: max score difference ${d2}`);
    t.same(batched.map((r) => r.predictions[0]!.index), single.map((r) => r.predictions[0]!.index));
    const a = events.filter((e) => e.model === 'A');
    t.equal(a.reduce((s, e) => s + e.batchSize, 0), 40, 'inference count: 40 images');
    t.ok(a.length < 40, `execution count ${a.length} < inference count 40`);
  });
});

t.test('a bad image fails its own request only; a batch that fails as a whole is retried singly', async (t) => {
  const good = (await fashionPngs(6)).map((i) => i.png);
  const text = Buffer.from('not an image at all');
  const gif = await sharp({ create: { width: 8, height: 8, channels: 3, background: '#000' } }).gif().toBuffer();
  const failing = loadManifest(writeForeignModel({ failsBatched: true }));
  await withPool({ A: vA, F: failing }, 1, 1, async (pool, events) => {
    // The first request occupies the worker, the next seven wait and leave as one batch.
    const order = [good[0]!, good[1]!, text, good[2]!, gif, good[3]!, good[4]!, good[5]!];
    const res = await Promise.allSettled(order.map((b) => pool.run('A', copy(b), undefined, 3)));
    const codes = res.map((r) => (r.status === 'fulfilled' ? 'ok' : (r.reason as { code: string }).code));
    t.same(codes, ['ok', 'ok', 'unsupported_image', 'ok', 'unsupported_image', 'ok', 'ok', 'ok']);
    t.ok(res.some((r) => r.status === 'fulfilled' && r.value.batchSize === 5), 'the good images of the batch ran together');

    const coloured = await Promise.all([1, 2, 3, 4, 5].map((i) => sharp({ create: { width: 32, height: 32, channels: 3, background: { r: 40 * i, g: 20, b: 200 - 30 * i } } }).png().toBuffer()));
    events.length = 0;
    const fr = await Promise.allSettled(coloured.map((b) => pool.run('F', copy(b), undefined, 2)));
    t.ok(fr.every((r) => r.status === 'fulfilled'), 'every request answered although the batched run failed');
    t.ok(events.some((e) => e.executions > 1), `retried one at a time: executions ${events.map((e) => e.executions)}`);
  });
});

t.test('admission: bounded queue (overloaded, Retry-After), wait timeout, priority', async (t) => {
  const big = await sharp({ create: { width: 1600, height: 1600, channels: 3, background: '#567' } }).png({ compressionLevel: 0 }).toBuffer();
  const small = (await fashionPngs(1))[0]!.png;
  const bounded = variant(vA, { batching: { max_batch_size: 1 }, queue: { max_size: 2, timeout_ms: 60_000 } });
  const hurried = variant(vA, { batching: { max_batch_size: 1 }, queue: { timeout_ms: 1 } });
  await withPool({ A: bounded, T: hurried }, 1, 1, async (pool) => {
    const res = await Promise.allSettled(Array.from({ length: 6 }, () => pool.run('A', copy(big), undefined, 1)));
    const rejected = res.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason as { code: string; retryAfter?: number; status: number });
    t.equal(rejected.length, 3, 'one running, two waiting, three refused');
    t.ok(rejected.every((e) => e.code === 'overloaded' && e.status === 503 && e.retryAfter === 1));

    const timed = await Promise.allSettled(Array.from({ length: 6 }, () => pool.run('T', copy(big), undefined, 1)));
    const codes = timed.map((r) => (r.status === 'fulfilled' ? 'ok' : (r.reason as { code: string }).code));
    t.equal(codes[0], 'ok', 'the first goes straight to the worker');
    t.ok(codes.filter((c) => c === 'queue_timeout').length >= 3, `waited past timeout_ms: ${codes}`);

    // Priority: with the worker busy, a later high-priority request overtakes earlier low ones.
    const done: string[] = [];
    const tag = (name: string, p: Promise<RunResult>) => p.then(() => done.push(name));
    const busy = tag('busy', pool.run('A', copy(big), undefined, 1));
    const low = tag('low', pool.run('A', copy(small), undefined, 1, 1));
    const high = tag('high', pool.run('A', copy(small), undefined, 1, 9));
    await Promise.all([busy, low, high]);
    t.same(done, ['busy', 'high', 'low']);

    // Full: a request of higher priority takes the place of the newest of the lowest level
    // below its own (shed, 503 overloaded); one of the same or a lower level is refused.
    const outcome = (p: Promise<RunResult>) => p.then(() => 'ok', (e: { code: string; details?: { shed?: boolean } }) => (e.details?.shed === true ? 'shed' : e.code));
    const running = outcome(pool.run('A', copy(big), undefined, 1));
    const older = outcome(pool.run('A', copy(small), undefined, 1, 1));
    const newer = outcome(pool.run('A', copy(small), undefined, 1, 1));
    const same = outcome(pool.run('A', copy(small), undefined, 1, 1));
    const urgent = outcome(pool.run('A', copy(small), undefined, 1, 9));
    const lower = outcome(pool.run('A', copy(small), undefined, 1, 0));
    t.same(await Promise.all([running, older, newer, same, urgent, lower]), ['ok', 'ok', 'shed', 'overloaded', 'ok', 'overloaded'], 'the newest low one shed for the urgent one; the same level and a lower one refused');
  });
});

t.test('a batch holds at most MAX_BATCH_INPUT_BYTES of input: large img_size runs fewer images per batch', async (t) => {
  const { MAX_BATCH_INPUT_BYTES } = await import('../../src/infer/pool.ts');
  // A dynamic-size model that would batch 8 (a 200 ms window gathers them all).
  const dyn = loadManifest(writeForeignModel({ dynamic: true, manifest: { batching: { max_batch_size: 8, max_queue_delay_us: 200_000 } } }));
  const png = (await fashionPngs(1))[0]!.png;
  await withPool({ D: dyn }, 1, 1, async (pool) => {
    const cap = Math.floor(MAX_BATCH_INPUT_BYTES / (1024 * 1024 * 3 * 4));
    t.equal(cap, 5, '1024² × 3 channels of float32 is 12.6 MB: 5 to a batch');
    const big = await Promise.all(Array.from({ length: 8 }, () => pool.run('D', copy(png), 1024, 1)));
    t.ok(Math.max(...big.map((r) => r.batchSize)) <= cap, `at 1024², batches of ${big.map((r) => r.batchSize).join(', ')}`);
    const small = await Promise.all(Array.from({ length: 8 }, () => pool.run('D', copy(png), 32, 1)));
    t.equal(Math.max(...small.map((r) => r.batchSize)), 8, 'at 32², the whole 8');
  });
});

t.test("one image's input tensor is bounded as a batch's: a tiny image asked at a large img_size is 400, not 805 MB of floats", async (t) => {
  const { MAX_BATCH_INPUT_BYTES } = await import('../../src/infer/pool.ts');
  const { checkSize } = await import('../../src/infer/service.ts');
  const base = loadManifest(writeForeignModel({ dynamic: true }));
  const huge = { manifest: { ...base.manifest, input: { ...base.manifest.input, maxSize: 8192 } } };
  const most = Math.floor(Math.sqrt(MAX_BATCH_INPUT_BYTES / (4 * 3)));
  t.equal(most, 2364, '64 MiB of 3-channel float32 is 2364²');
  t.equal(checkSize(most, huge), most);
  t.throws(() => checkSize(8192, huge), { code: 'invalid_img_size', message: /between 8 and 2364 .*at most 64 MiB\), got 8192/ });
  t.throws(() => checkSize(2000, base), { code: 'invalid_img_size', message: /between 8 and 1024 for model foreign-nhwc, got 2000$/ }, "under the bound, the manifest's own maxSize");
  // A manifest whose default (or smallest) size is past the bound could never be served as it says.
  const input = { ...JSON.parse(JSON.stringify(base.manifest.input)), height: null, width: null, maxSize: 8192 };
  t.throws(() => loadManifest(writeForeignModel({ dynamic: true, manifest: { input: { ...input, name: 'input', defaultSize: 3000 } } })), /input.defaultSize must be at most 2364 with 3 channel\(s\)/);
  t.throws(() => loadManifest(writeForeignModel({ dynamic: true, manifest: { input: { ...input, name: 'input', minSize: 2400, defaultSize: 2400 } } })), /input.minSize must be at most 2364/);
});

t.test('a request whose own timeout ends before the batch window is not held for the batch to fill', async (t) => {
  // A 2 s window: a lone request would wait it out; one with a 200 ms timeout goes at once.
  const slow = loadManifest(writeForeignModel({ manifest: { batching: { max_batch_size: 8, max_queue_delay_us: 2_000_000 } } }));
  const png = (await fashionPngs(1))[0]!.png;
  await withPool({ S: slow }, 1, 1, async (pool) => {
    const res = await Promise.allSettled(Array.from({ length: 3 }, () => pool.run('S', copy(png), undefined, 1, undefined, { timeoutMs: 200 })));
    t.same(res.map((r) => (r.status === 'fulfilled' ? 'ok' : (r.reason as { code: string }).code)), ['ok', 'ok', 'ok'], 'none timed out waiting for the window');
    const mixed = await Promise.allSettled([pool.run('S', copy(png), undefined, 1), pool.run('S', copy(png), undefined, 1, undefined, { timeoutMs: 200 })]);
    t.same(mixed.map((r) => r.status), ['fulfilled', 'fulfilled'], 'one without a deadline goes along with the one that has');
    // Not held to just before its deadline either (a worker busy then would make it a 504):
    // a lone request with 1.5 s to spare waited far less than that (before: about 1.45 s).
    const lone = await pool.run('S', copy(png), undefined, 1, undefined, { timeoutMs: 1_500 });
    t.ok(lone.queueMs < 750, `waited ${lone.queueMs.toFixed(1)} ms of its 1,500`);
  });
});

t.test("the model's queue.timeout_ms shorter than the batch window: a lone request goes before it times out, on an idle pool", async (t) => {
  // Held for the 5 s window, a lone request would time out at 3 s.
  const hasty = loadManifest(writeForeignModel({ manifest: { batching: { max_batch_size: 16, max_queue_delay_us: 5_000_000 }, queue: { max_size: 3, timeout_ms: 3_000 } } }));
  const png = (await fashionPngs(1))[0]!.png;
  await withPool({ H: hasty }, 1, 1, async (pool) => {
    const lone = await Promise.allSettled([pool.run('H', copy(png), undefined, 1)]);
    t.same(lone.map((r) => (r.status === 'fulfilled' ? 'ok' : (r.reason as { code: string }).code)), ['ok'], 'not a queue_timeout');
    const three = await Promise.allSettled(Array.from({ length: 3 }, () => pool.run('H', copy(png), undefined, 1)));
    t.same(three.map((r) => (r.status === 'fulfilled' ? 'ok' : (r.reason as { code: string }).code)), ['ok', 'ok', 'ok'], 'three at once: none timed out either');
    // The window is cut short (to 2,750 ms), not dropped: the three still fill one batch (before: three batches of 1).
    t.same(three.map((r) => (r.status === 'fulfilled' ? r.value.batchSize : 0)), [3, 3, 3], 'one batch of three');
    // A request's own timeout longer than the model's is capped by it (docs/oip.md): batched as
    // one without (before: its deadline cut the window, and they went as batches of 1 and 2).
    const capped = await Promise.allSettled(Array.from({ length: 3 }, () => pool.run('H', copy(png), undefined, 1, undefined, { timeoutMs: 4_000 })));
    t.same(capped.map((r) => (r.status === 'fulfilled' ? r.value.batchSize : 0)), [3, 3, 3], 'a longer own timeout: one batch of three too');
  });
});

t.test('the queue of each model, by its name (inference_pending_requests): the requests held for a batch, then none', async (t) => {
  const slow = loadManifest(writeForeignModel({ manifest: { name: 'held', batching: { max_batch_size: 16, max_queue_delay_us: 400_000 }, queue: { max_size: 8, timeout_ms: 10_000 } } }));
  const png = (await fashionPngs(1))[0]!.png;
  await withPool({ H: slow }, 1, 1, async (pool) => {
    const runs = Array.from({ length: 3 }, () => pool.run('H', copy(png), undefined, 1));
    t.same([...pool.queueSizes], [['held', 3]], 'three wait for the batch to fill');
    t.equal(pool.queueSize, 3, 'the pool total agrees');
    await Promise.all(runs);
    t.same([...pool.queueSizes], [['held', 0]], 'none once they ran');
  });
});

t.test("one signal for many images (a gRPC stream's): each settled image takes its abort listener with it", async (t) => {
  const { RequestAbort } = await import('../../src/abort.ts');
  class Counting extends RequestAbort {
    live = 0;
    override addEventListener(type: 'abort', l: () => void): void {
      this.live++;
      super.addEventListener(type, l);
    }
    override removeEventListener(type: 'abort', l: () => void): void {
      this.live--;
      super.removeEventListener(type, l);
    }
  }
  const images = await fashionPngs(12);
  await withPool({ A: vA }, 1, 2, async (pool) => {
    const signal = new Counting();
    await Promise.all(images.map((img) => pool.run('A', copy(img.png), undefined, 1, undefined, { tensor: false, signal })));
    await pool.runAll('A', images.slice(0, 4).map((img) => copy(img.png)), undefined, 1, undefined, { tensor: false, signal });
    await pool.run('A', copy(Buffer.from('not an image')), undefined, 1, undefined, { tensor: false, signal }).catch(() => undefined);
    t.equal(signal.live, 0, 'no listener left behind');
  });
});
