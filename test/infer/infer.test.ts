// /v1/infer end to end: real broker, real worker pool, real models, real images.
import t from 'tap';
import sharp from 'sharp';
import { startTestBroker, postJson, metricValue } from '../helpers/broker.ts';
import { fashionPngs, mapLimit } from '../helpers/images.ts';

const tb = await startTestBroker({ AB_WEIGHT_A: '1', AB_WEIGHT_B: '0', INFER_MAX_PIXELS: String(2000 * 2000) });
t.teardown(() => tb.close());
const url = `${tb.url}/v1/infer`;
const [sample] = await fashionPngs(1);

t.test('classifies a real image and reports arm, model, timings, trace id', async (t) => {
  const res = await postJson(url, { image_b64: sample!.b64, top_k: 3 }, { 'x-request-id': 'req-123' });
  t.equal(res.status, 200);
  t.equal(res.body.arm, 'A');
  t.equal(res.body.model, tb.broker.infer!.models.A.manifest.name);
  t.equal(res.body.version, tb.broker.infer!.models.A.manifest.version);
  t.equal(res.body.predictions.length, 3);
  const [top] = res.body.predictions;
  t.type(top.label, 'string');
  t.ok(top.score > 0 && top.score <= 1);
  t.ok(res.body.predictions[0].score >= res.body.predictions[1].score, 'sorted by score');
  for (const k of ['decode_ms', 'queue_ms', 'infer_ms', 'total_ms']) t.type(res.body.timings[k], 'number', k);
  t.equal(res.body.trace_id, 'req-123');
  t.equal(res.headers.get('trace-id'), 'req-123');
  t.match(res.headers.get('set-cookie'), /^eb_arm=A; Path=\//);
});

t.test('accepts a data: URL prefix and defaults top_k to 5', async (t) => {
  const res = await postJson(url, { image_b64: `data:image/png;base64,${sample!.b64}` });
  t.equal(res.status, 200);
  t.equal(res.body.predictions.length, 5);
});

t.test('accepts jpeg and webp, resizing to the model size', async (t) => {
  for (const fmt of ['jpeg', 'webp'] as const) {
    const img = await sharp({ create: { width: 100, height: 80, channels: 3, background: '#808080' } })[fmt]().toBuffer();
    const res = await postJson(url, { image_b64: img.toString('base64') });
    t.equal(res.status, 200, fmt);
  }
});

t.test('bad input gets a clear 4xx and the server keeps serving', async (t) => {
  // The field at fault, as `param` (null when the body as a whole is).
  const cases: [unknown, number, string, string | null][] = [
    [{}, 400, 'invalid_image', 'image_b64'],
    [{ image_b64: 42 }, 400, 'invalid_image', 'image_b64'],
    [{ image_b64: 'not base64 !!!' }, 400, 'invalid_image', 'image_b64'],
    [{ image_b64: Buffer.from('hello, this is text').toString('base64') }, 415, 'unsupported_image', null],
    [{ image_b64: sample!.b64, img_size: 224 }, 400, 'invalid_img_size', 'img_size'],
    [{ image_b64: sample!.b64, top_k: 0 }, 400, 'invalid_request', 'top_k'],
    ['[1,2]', 400, 'invalid_json', null],
    ['{"image_b64": ', 400, 'invalid_json', null],
  ];
  for (const [body, status, code, param] of cases) {
    const res = await postJson(url, body);
    t.equal(res.status, status, `${JSON.stringify(body).slice(0, 40)} -> ${status}`);
    t.equal(res.body.error.code, code);
    t.equal(res.body.error.param, param, `param ${param}`);
    t.type(res.body.error.message, 'string');
    t.equal(res.body.error.request_id, res.headers.get('trace-id'));
  }
  const msg = (await postJson(url, { image_b64: sample!.b64, img_size: 224 })).body.error.message;
  t.match(msg, /28/, 'the img_size error names the model size');
  t.equal((await postJson(url, { image_b64: sample!.b64 })).status, 200, 'still serving');
});

t.test('a gif is refused as unsupported', async (t) => {
  const gif = await sharp({ create: { width: 10, height: 10, channels: 3, background: '#000' } }).gif().toBuffer();
  const res = await postJson(url, { image_b64: gif.toString('base64') });
  t.equal(res.status, 415);
  t.equal(res.body.error.code, 'unsupported_image');
});

t.test('a corrupt PNG: 415 with our message, the decoder internals only in the log', async (t) => {
  const png = Buffer.from(sample!.b64, 'base64');
  const corrupt = Buffer.concat([png.subarray(0, 40), Buffer.alloc(64, 0xab)]);
  const res = await postJson(url, { image_b64: corrupt.toString('base64') });
  t.equal(res.status, 415);
  t.equal(res.body.error.code, 'unsupported_image');
  t.equal(res.body.error.message, 'bytes are not a valid png image');
  t.notMatch(res.body.error.message, /vips|glib|png:|spng/i, 'no decoder internals');
  t.ok(tb.logs.some((l) => l.msg === 'image decoder refused the bytes' && typeof l.decoder === 'string'), 'the decoder message is logged');
});

t.test('too many pixels is 413 before decoding', async (t) => {
  const big = await sharp({ create: { width: 3000, height: 3000, channels: 3, background: '#000' } }).grayscale().png().toBuffer();
  t.ok(big.length < 1_000_000, 'a small file that decodes to 9 MP');
  const res = await postJson(url, { image_b64: big.toString('base64') });
  t.equal(res.status, 413);
  t.equal(res.body.error.code, 'image_too_large');
});

t.test('a 16-bit interlaced PNG weighs 4 pixels a pixel: 413 under a limit its plain pixel count passes', async (t) => {
  // 1500² = 2.25 MP, within INFER_MAX_PIXELS (4 MP) as pixels, but 9 MP of 8-bit work decoded whole.
  const heavy = await sharp({ create: { width: 1500, height: 1500, channels: 4, background: '#123' } }).toColourspace('rgb16').png({ progressive: true }).toBuffer();
  t.equal(heavy[24], 16, 'the test PNG is 16-bit');
  t.equal(heavy[28], 1, 'and interlaced');
  const res = await postJson(url, { image_b64: heavy.toString('base64') });
  t.equal(res.status, 413);
  t.match(res.body.error, { code: 'image_too_large', message: /16-bit PNG counts twice/ });
  const plain = await sharp({ create: { width: 1500, height: 1500, channels: 3, background: '#123' } }).png().toBuffer();
  t.equal((await postJson(url, { image_b64: plain.toString('base64') })).status, 200, 'the same size in 8 bits, not interlaced, is served');
});

t.test('accuracy through the HTTP path: 500 Fashion-MNIST PNGs', async (t) => {
  const images = await fashionPngs(500, 1000);
  const results = await mapLimit(images, 8, async (img) => {
    const res = await postJson(url, { image_b64: img.b64, top_k: 1 });
    return res.status === 200 && res.body.predictions[0].index === img.label;
  });
  const accuracy = results.filter(Boolean).length / results.length;
  t.ok(accuracy >= 0.85, `accuracy ${accuracy} >= 0.85`);
});

t.test('inference metrics count successes and failures per model and arm', async (t) => {
  const name = tb.broker.infer!.models.A.manifest.name;
  const ok = await metricValue(tb.url, 'inference_request_success_total', { model: name, arm: 'A' });
  const failed = await metricValue(tb.url, 'inference_request_failure_total', { model: name, arm: 'A', reason: 'unsupported_image' });
  t.ok(ok >= 500);
  t.ok(failed >= 1);
  t.ok((await metricValue(tb.url, 'inference_compute_duration_seconds_count', { arm: 'A' })) >= 500);
  t.ok((await metricValue(tb.url, 'inference_queue_duration_seconds_count', { arm: 'A' })) >= 500);
  // One batch-size observation per execution (Triton's way); their sum is the images.
  const executions = await metricValue(tb.url, 'inference_batch_size_count');
  t.ok(executions >= 1 && (await metricValue(tb.url, 'inference_batch_size_sum')) >= 500);
  t.equal(await metricValue(tb.url, 'inference_exec_count_total', { model: name }), executions, 'execution count = batch-size observations');
  t.ok((await metricValue(tb.url, 'inference_count_total', { model: name })) >= 500, 'inference count: every image');
  t.ok((await metricValue(tb.url, 'http_request_duration_seconds_count', { route: '/v1/infer', status: '200' })) >= 500);
  t.ok((await metricValue(tb.url, 'http_requests_errors_total', { route: '/v1/infer', code: 'invalid_image' })) >= 1);
  t.ok((await metricValue(tb.url, 'process_resident_memory_bytes')) > 0, 'process metrics');
});

t.test('a killed worker fails its requests with a retryable 503 and is replaced', async (t) => {
  const pool = tb.broker.infer!.currentPool;
  const before = await metricValue(tb.url, 'inference_worker_failures_total');
  // Keep both workers busy, then kill one under its task. The images are large PNGs that
  // sharp decodes off the worker's JS thread (tens of ms each), so the kill lands while the
  // worker awaits them: terminating a worker inside onnxruntime-node's synchronous
  // session.run aborts the whole process (a Napi::Error thrown while V8 terminates), a
  // hazard of the test's kill, not of the broker, which drains its workers before closing.
  const big = (await sharp({ create: { width: 1900, height: 1900, channels: 3, background: '#5a7' } }).png({ compressionLevel: 1 }).toBuffer()).toString('base64');
  const inflight = Array.from({ length: 8 }, () => postJson(url, { image_b64: big }));
  await new Promise((r) => setTimeout(r, 15));
  await pool.threads[0]!.terminate();
  const replies = await Promise.all(inflight);
  const statuses = replies.map((r) => r.status);
  t.ok(statuses.every((s) => s === 200 || s === 503), `only 200 or 503: ${statuses}`);
  for (const r of replies.filter((x) => x.status === 503)) {
    t.equal(r.body.error.code, 'inference_worker_lost', 'the lost request says why');
    t.equal(r.headers.get('retry-after'), '1', 'and when to retry');
  }
  for (let i = 0; i < 10; i++) t.equal((await postJson(url, { image_b64: sample!.b64 })).status, 200, 'next requests succeed');
  t.ok((await metricValue(tb.url, 'inference_worker_failures_total')) > before, 'the failure is counted');
  t.equal(pool.threads.length, 2, 'the pool is back to full size');
});
