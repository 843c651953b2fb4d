// Issue 11 §5: a model shaped unlike ours (NHWC, 3 channels, 32x32, its own mean/std),
// served through /v1/infer (data-plane threads unless FRONT_THREADS=0), answers exactly
// what a direct onnxruntime run on the same pixels gives. Also: admission over HTTP.
import t from 'tap';
import sharp from 'sharp';
import * as ort from 'onnxruntime-node';
import { startTestBroker, postJson, metricValue } from '../helpers/broker.ts';
import { FOREIGN, writeForeignModel } from './foreign-model.ts';
import { pngTensor } from '../../src/infer/preprocess.ts';
import { loadManifest } from '../../src/infer/manifest.ts';

const modelPath = writeForeignModel({ manifest: { queue: { max_size: 4, timeout_ms: 10_000 } } });
const tb = await startTestBroker({ MODEL_VA_PATH: modelPath, MODEL_VB_PATH: modelPath, AB_WEIGHT_A: '1', AB_WEIGHT_B: '0' });
t.teardown(() => tb.close());
const url = `${tb.url}/v1/infer`;

/** The reference: sharp's cover resize to 32x32 RGB, normalised in NHWC by hand, one onnxruntime run. */
async function direct(session: ort.InferenceSession, image: Buffer): Promise<number[]> {
  const raw = await sharp(image).resize(FOREIGN.size, FOREIGN.size, { fit: 'cover' }).removeAlpha().toColourspace('srgb').raw().toBuffer();
  const x = new Float32Array(FOREIGN.size * FOREIGN.size * 3);
  for (let i = 0; i < x.length; i++) x[i] = (raw[i]! / 255 - FOREIGN.mean[i % 3]!) / FOREIGN.std[i % 3]!;
  const out = await session.run({ input: new ort.Tensor('float32', x, [1, FOREIGN.size, FOREIGN.size, 3]) });
  const logits = Array.from(out.scores!.data as Float32Array);
  const max = Math.max(...logits);
  const e = logits.map((v) => Math.exp(v - max));
  const sum = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / sum);
}

async function images(n: number): Promise<Buffer[]> {
  return Promise.all(
    Array.from({ length: n }, (_, i) => {
      const w = 40 + 7 * i;
      const h = 30 + 5 * i;
      const px = Buffer.alloc(w * h * 3);
      for (let p = 0; p < px.length; p++) px[p] = (p * (13 + i) + ((p / 3) | 0) * 7) & 255;
      return sharp(px, { raw: { width: w, height: h, channels: 3 } })[i % 2 === 0 ? 'png' : 'webp']({ lossless: true }).toBuffer();
    }),
  );
}

t.test('NHWC 3x32x32 model: /v1/infer equals a direct onnxruntime run', async (t) => {
  const session = await ort.InferenceSession.create(modelPath);
  t.teardown(() => session.release());
  const imgs = await images(6);
  // Concurrent, so that some of them are batched together.
  const replies = await Promise.all(imgs.map((img) => postJson(url, { image_b64: img.toString('base64'), top_k: 5 })));
  let worst = 0;
  for (const [i, res] of replies.entries()) {
    t.equal(res.status, 200);
    t.equal(res.body.model, 'foreign-nhwc');
    t.type(res.body.batch_size, 'number');
    t.type(res.body.timings.queue_ms, 'number');
    const want = await direct(session, imgs[i]!);
    t.same(res.body.predictions.map((p: { label: string }) => p.label), [...want.keys()].sort((a, b) => want[b]! - want[a]!).map((k) => FOREIGN.labels[k]), 'same order');
    for (const p of res.body.predictions as { index: number; score: number }[]) worst = Math.max(worst, Math.abs(p.score - want[p.index]!));
  }
  t.ok(worst <= 1e-6, `max probability difference ${worst}`);
});

t.test('a PNG already 32x32 (RGB and RGBA, decoded without sharp) through /v1/infer equals a direct onnxruntime run', async (t) => {
  const session = await ort.InferenceSession.create(modelPath);
  t.teardown(() => session.release());
  for (const channels of [3, 4] as const) {
    const px = Buffer.alloc(32 * 32 * channels);
    for (let p = 0; p < px.length; p++) px[p] = (p * 29 + ((p / 5) | 0) * 3) & 255;
    const png = await sharp(px, { raw: { width: 32, height: 32, channels } }).png().toBuffer();
    t.ok(pngTensor(png, loadManifest(modelPath).manifest, 32, 32, new Float32Array(32 * 32 * 3)), `the ${channels}-channel PNG takes the path without sharp`);
    const res = await postJson(url, { image_b64: png.toString('base64'), top_k: 5 });
    t.equal(res.status, 200);
    const want = await direct(session, png);
    let worst = 0;
    for (const p of res.body.predictions as { index: number; score: number }[]) worst = Math.max(worst, Math.abs(p.score - want[p.index]!));
    t.same(res.body.predictions.map((p: { label: string }) => p.label), [...want.keys()].sort((a, b) => want[b]! - want[a]!).slice(0, 5).map((k) => FOREIGN.labels[k]), 'same order');
    t.ok(worst <= 1e-6, `max probability difference ${worst}`);
  }
});

t.test('admission over HTTP: a full queue answers 503 overloaded with Retry-After, the rest 200', async (t) => {
  const [img] = await images(1);
  const body = { image_b64: img!.toString('base64') };
  const replies = await Promise.all(Array.from({ length: 60 }, (_, i) => postJson(url, body, { 'x-broker-priority': i % 2 === 0 ? 'high' : 'low' })));
  const refused = replies.filter((r) => r.status === 503);
  t.ok(refused.length > 0, `${refused.length} of 60 refused with a queue of 4`);
  t.ok(refused.every((r) => r.body.error.code === 'overloaded' && r.headers.get('retry-after') === '1'));
  t.ok(replies.every((r) => r.status === 200 || r.status === 503));
  // The 'low' ones waiting are shed for the others that find the queue full (reason shed), the rest refused (full).
  const full = await metricValue(tb.url, 'inference_admission_rejections_total', { model: 'foreign-nhwc', reason: 'full' });
  const shed = await metricValue(tb.url, 'inference_admission_rejections_total', { model: 'foreign-nhwc', reason: 'shed' });
  t.ok(full + shed >= refused.length, `refused ${refused.length}: full ${full}, shed ${shed}`);
  t.ok(refused.filter((r) => /shed for one of higher priority/.test(r.body.error.message)).length <= shed, 'a shed reply says so');
  const images_ = await metricValue(tb.url, 'inference_count_total', { model: 'foreign-nhwc' });
  const execs = await metricValue(tb.url, 'inference_exec_count_total', { model: 'foreign-nhwc' });
  t.ok(images_ > execs, `inference count ${images_} > execution count ${execs}`);
  t.ok((await metricValue(tb.url, 'inference_batch_wait_seconds_count', { model: 'foreign-nhwc' })) === execs);
  t.ok((await metricValue(tb.url, 'inference_exec_duration_seconds_count', { model: 'foreign-nhwc', stage: 'compute' })) === execs);
});
