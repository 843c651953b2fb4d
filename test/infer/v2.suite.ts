// The Open Inference Protocol (KServe v2) over REST, end to end: a client written from
// the spec (test/helpers/v2-client.ts) in JSON and in binary mode, a real broker, real
// models, real Fashion-MNIST images. Run once per front (v2-front0.test.ts, v2-front2.test.ts).
import t from 'tap';
import sharp from 'sharp';
import * as ort from 'onnxruntime-node';
import { loadSplit } from '../../scripts/train/idx.ts';
import { admin, metricValue, postJson, startTestBroker } from '../helpers/broker.ts';
import { mapLimit } from '../helpers/images.ts';
import { V2Client, lengthPrefixed, type Mode, type Tensor } from '../helpers/v2-client.ts';

const FRONT_THREADS = process.env.FRONT_THREADS ?? '2';
// A short queue, so that one request of many items meets 503 overloaded (see below).
const QUEUE = 16;
const tb = await startTestBroker({ AB_WEIGHT_A: '1', AB_WEIGHT_B: '0', FRONT_THREADS, INFER_MAX_QUEUE: String(QUEUE) });
t.teardown(() => tb.close());

const { A, B } = tb.broker.infer!.models;
const MODEL = A.manifest.name;
const IMAGES = 200;
// Requests of PER images, CONCURRENCY at a time: never more waiting than the queue holds.
const PER = 4;
const CONCURRENCY = 2;

// Fashion-MNIST test images: PNGs for the BYTES path, and the same pixels preprocessed as
// the manifest says ((x / 255 - mean) / std, NCHW) for the FP32 path.
const split = loadSplit('t10k', IMAGES);
const pngs: Buffer[] = [];
for (let i = 0; i < IMAGES; i++) pngs.push(await sharp(Buffer.from(split.images.subarray(i * 784, (i + 1) * 784)), { raw: { width: 28, height: 28, channels: 1 } }).png().toBuffer());
const labels = Array.from(split.labels.subarray(0, IMAGES));
const { mean, std } = A.manifest.input;
function tensorOf(from: number, n: number): Float32Array {
  const out = new Float32Array(n * 784);
  for (let i = 0; i < n * 784; i++) out[i] = split.images[from * 784 + i]! / (255 * std[0]!) - mean[0]! / std[0]!;
  return out;
}

// Every top-level await comes before the first assertion: tap ends the root test once it idles after one.
t.equal(tb.broker.planes?.count ?? 0, Number(FRONT_THREADS), `served by ${FRONT_THREADS} data-plane threads`);

const argmaxRows = (data: Float32Array, classes: number): number[] =>
  Array.from({ length: data.length / classes }, (_, r) => {
    let best = 0;
    for (let c = 1; c < classes; c++) if (data[r * classes + c]! > data[r * classes + best]!) best = c;
    return best;
  });

function fp32(out: Tensor | undefined): Float32Array {
  if (out?.datatype !== 'FP32') throw new Error(`expected an FP32 output, got ${out?.datatype}`);
  return out.data;
}

t.test('server: metadata lists the extensions that work; live and ready', async (t) => {
  const c = new V2Client(tb.url, 'json');
  const meta = await c.get('/v2');
  t.equal(meta.status, 200);
  t.equal(meta.json.name, 'edge-broker');
  t.type(meta.json.version, 'string');
  t.same([...meta.json.extensions].sort(), ['binary_tensor_data', 'classification', 'schedule_policy']);
  t.same((await c.get('/v2/health/live')).json, { live: true });
  const ready = await c.get('/v2/health/ready');
  t.equal(ready.status, 200);
  t.same(ready.json, { ready: true });
  for (const path of [`/v2/models/${MODEL}/ready`, `/v2/models/${MODEL}/versions/${B.manifest.version}/ready`]) {
    const r = await c.get(path);
    t.equal(r.status, 200, path);
    t.equal(r.json.ready, true, path);
    t.equal(r.json.name, MODEL);
  }
});

t.test('model metadata matches the ONNX model and the manifests', async (t) => {
  const c = new V2Client(tb.url, 'json');
  const session = await ort.InferenceSession.create(A.path);
  t.teardown(() => session.release());
  const meta = await c.get(`/v2/models/${MODEL}`);
  t.equal(meta.status, 200);
  t.equal(meta.json.name, MODEL);
  t.equal(meta.json.platform, 'onnxruntime_onnx');
  t.same(meta.json.versions, [A.manifest.version, B.manifest.version]);
  const dims = (m: ort.InferenceSession.ValueMetadata) => (m.isTensor ? m.shape.map((d) => (typeof d === 'number' ? d : -1)) : []);
  t.same(
    meta.json.inputs,
    session.inputMetadata.map((m) => ({ name: m.name, datatype: 'FP32', shape: dims(m) })),
  );
  t.same(
    meta.json.outputs,
    session.outputMetadata.map((m) => ({ name: m.name, datatype: 'FP32', shape: dims(m) })),
  );
  t.same(meta.json.inputs, [{ name: A.manifest.input.name, datatype: 'FP32', shape: [-1, 1, 28, 28] }], 'a dynamic batch, then C, H, W');
  t.equal(meta.json.outputs[0].name, A.manifest.output.name);
  const versioned = await c.get(`/v2/models/${MODEL}/versions/${B.manifest.version}`);
  t.equal(versioned.status, 200);
  t.equal(versioned.json.inputs[0].name, B.manifest.input.name);
});

t.test("Triton's model configuration (perf_analyzer reads it): batching and dims past the batch", async (t) => {
  const c = new V2Client(tb.url, 'json');
  const cfg = await c.get(`/v2/models/${MODEL}/config`);
  t.equal(cfg.status, 200);
  const b = A.manifest.batching;
  t.match(cfg.json, {
    name: MODEL,
    platform: 'onnxruntime_onnx',
    max_batch_size: b.maxBatchSize,
    input: [{ name: A.manifest.input.name, data_type: 'TYPE_FP32', format: 'FORMAT_NCHW', dims: [1, 28, 28] }],
    output: [{ name: A.manifest.output.name, data_type: 'TYPE_FP32', dims: [A.manifest.labels.length] }],
  });
  t.ok(b.maxBatchSize > 1, 'the bundled model batches');
  t.same(cfg.json.dynamic_batching, { preferred_batch_size: [...b.preferredBatchSizes], max_queue_delay_microseconds: b.maxQueueDelayUs });
  t.equal((await c.get(`/v2/models/${MODEL}/versions/${B.manifest.version}/config`)).json.input[0].name, B.manifest.input.name);
  const missing = await c.get('/v2/models/nope/config');
  t.equal(missing.status, 404);
  t.type(missing.json.error, 'string');
});

// Logits per mode and input form, for the comparisons below.
const logits: Record<string, Float32Array> = {};
const classes = A.manifest.labels.length;

for (const mode of ['json', 'binary'] as Mode[]) {
  t.test(`${mode}: ${IMAGES} Fashion-MNIST images as BYTES reach accuracy >= 0.85`, async (t) => {
    const c = new V2Client(tb.url, mode);
    const starts = Array.from({ length: IMAGES / PER }, (_, i) => i * PER);
    const before = await metricValue(tb.url, 'inference_request_success_total', { arm: 'A' });
    const replies = await mapLimit(starts, CONCURRENCY, (from) =>
      c.infer(MODEL, { inputs: [{ name: 'input', datatype: 'BYTES', shape: [PER], data: pngs.slice(from, from + PER) }], id: `b-${from}` }),
    );
    const all = new Float32Array(IMAGES * classes);
    for (const [i, r] of replies.entries()) {
      t.equal(r.status, 200, r.error ?? '');
      t.equal(r.model_name, MODEL);
      t.equal(r.model_version, A.manifest.version);
      t.equal(r.id, `b-${starts[i]}`, 'the id comes back');
      const q = r.json.parameters;
      t.ok(Number.isInteger(q.queue_us) && q.queue_us >= 0 && Number.isInteger(q.decode_us) && q.decode_us > 0 && q.batch_size >= 1, `queue and decode time in the response parameters: ${JSON.stringify(q)}`);
      t.same(r.outputs![0]!.shape, [PER, classes]);
      all.set(fp32(r.outputs![0]), starts[i]! * classes);
    }
    const top = argmaxRows(all, classes);
    const accuracy = top.filter((p, i) => p === labels[i]).length / IMAGES;
    t.ok(accuracy >= 0.85, `accuracy ${accuracy}`);
    logits[`${mode}/bytes`] = all;
    // The same metrics as /v1/infer: one success per request, on arm A.
    t.equal((await metricValue(tb.url, 'inference_request_success_total', { arm: 'A' })) - before, IMAGES / PER);
  });

  t.test(`${mode}: the same images as preprocessed FP32 tensors give the same top-1`, async (t) => {
    const c = new V2Client(tb.url, mode);
    const all = new Float32Array(IMAGES * classes);
    const starts = Array.from({ length: IMAGES / PER }, (_, i) => i * PER);
    await mapLimit(starts, CONCURRENCY, async (from) => {
      const r = await c.infer(MODEL, { inputs: [{ name: 'input', datatype: 'FP32', shape: [PER, 1, 28, 28], data: tensorOf(from, PER) }] });
      t.equal(r.status, 200, r.error ?? '');
      all.set(fp32(r.outputs![0]), from * classes);
    });
    const bytes = logits[`${mode}/bytes`]!;
    t.same(argmaxRows(all, classes), argmaxRows(bytes, classes), 'same top-1 for every image');
    let maxDiff = 0;
    for (let i = 0; i < all.length; i++) maxDiff = Math.max(maxDiff, Math.abs(all[i]! - bytes[i]!));
    t.ok(maxDiff < 1e-3, `logits agree (max difference ${maxDiff})`);
    logits[`${mode}/fp32`] = all;
  });

  t.test(`${mode}: classification strings parse as value:index:label, best first`, async (t) => {
    const c = new V2Client(tb.url, mode);
    const k = 3;
    const r = await c.infer(MODEL, {
      inputs: [{ name: 'input', datatype: 'BYTES', shape: [PER, 1], data: pngs.slice(0, PER) }],
      outputs: [{ name: 'logits', parameters: { classification: k } }],
    });
    t.equal(r.status, 200, r.error ?? '');
    const out = r.outputs![0]!;
    t.equal(out.datatype, 'BYTES');
    t.same(out.shape, [PER, k]);
    const rows = logits[`${mode}/bytes`]!;
    for (let i = 0; i < PER; i++) {
      const parsed = (out.data as string[]).slice(i * k, (i + 1) * k).map((s) => {
        const m = /^(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?):(\d+):(.+)$/.exec(s);
        if (m === null) throw new Error(`does not parse: ${s}`);
        return { value: Number(m[1]), index: Number(m[2]), label: m[3]! };
      });
      for (const p of parsed) {
        t.equal(p.label, A.manifest.labels[p.index], 'label from the manifest');
        t.equal(Math.fround(p.value), rows[i * classes + p.index], "the value is the output's own");
      }
      t.equal(parsed[0]!.index, argmaxRows(rows.subarray(i * classes, (i + 1) * classes), classes)[0], 'best first');
      t.ok(parsed[0]!.value >= parsed[1]!.value && parsed[1]!.value >= parsed[2]!.value, 'descending');
    }
  });
}

t.test('binary and JSON give identical outputs', async (t) => {
  t.same(Array.from(logits['binary/bytes']!), Array.from(logits['json/bytes']!), 'BYTES inputs');
  t.same(Array.from(logits['binary/fp32']!), Array.from(logits['json/fp32']!), 'FP32 inputs');
  // A mixed request: binary input, JSON output, and the other way round.
  const json = new V2Client(tb.url, 'json');
  const r = await json.infer(MODEL, { inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: tensorOf(0, 1) }], outputs: [{ name: 'logits', parameters: { binary_data: true } }] });
  t.equal(r.status, 200);
  t.equal(r.headers.get('content-type'), 'application/octet-stream');
  t.same(Array.from(fp32(r.outputs![0])), Array.from(logits['json/fp32']!.subarray(0, classes)), 'JSON input, binary output');
});

t.test('a named version reaches that arm; no version follows the A/B policy', async (t) => {
  const c = new V2Client(tb.url, 'binary');
  const input: Tensor = { name: 'input', datatype: 'FP32', shape: [2, 1, 28, 28], data: tensorOf(0, 2) };
  // What B itself answers, straight from onnxruntime.
  const session = await ort.InferenceSession.create(B.path);
  t.teardown(() => session.release());
  const direct = (await session.run({ input: new ort.Tensor('float32', input.data as Float32Array, [2, 1, 28, 28]) }))['logits']!.data as Float32Array;

  const assigned = await metricValue(tb.url, 'inference_arm_assignments_total', { arm: 'B', reason: 'version' });
  const r = await c.infer(MODEL, { version: B.manifest.version, inputs: [input] });
  t.equal(r.status, 200, r.error ?? '');
  t.equal(r.model_version, B.manifest.version);
  const got = fp32(r.outputs![0]);
  for (let i = 0; i < got.length; i++) t.ok(Math.abs(got[i]! - direct[i]!) < 1e-4, `B's logit ${i}`);
  t.equal((await metricValue(tb.url, 'inference_arm_assignments_total', { arm: 'B', reason: 'version' })) - assigned, 1);
  t.equal(r.headers.get('set-cookie'), null, 'a named version sets no sticky cookie');
  // B's manifest name is an alias of the same model.
  const alias = await c.infer(B.manifest.name, { version: A.manifest.version, inputs: [input] });
  t.equal(alias.model_version, A.manifest.version);
  t.equal(alias.model_name, B.manifest.name);

  const unversioned = await c.infer(MODEL, { inputs: [input] });
  t.equal(unversioned.model_version, A.manifest.version, 'weights 1/0: A');
  t.match(unversioned.headers.get('set-cookie'), /^eb_arm=A;/);
  // All traffic to B: the unversioned name follows, a named version does not.
  t.equal((await postJson(`${tb.url}/admin/config`, { ab_weight_a: 0, ab_weight_b: 1 }, admin)).status, 200);
  t.teardown(() => postJson(`${tb.url}/admin/config`, { ab_weight_a: 1, ab_weight_b: 0 }, admin));
  t.equal((await c.infer(MODEL, { inputs: [input] })).model_version, B.manifest.version, 'weights 0/1: B');
  t.equal((await c.infer(MODEL, { version: A.manifest.version, inputs: [input] })).model_version, A.manifest.version, 'the named version still reaches A');
});

t.test('every error status, as {"error": "..."}, and the server keeps serving', async (t) => {
  const json = new V2Client(tb.url, 'json');
  const img: Tensor = { name: 'input', datatype: 'BYTES', shape: [1], data: [pngs[0]!] };
  const expectError = (r: { status: number; error?: string; json: any }, status: number, code: string, what: string) => {
    t.equal(r.status, status, `${what}: ${status}`);
    t.equal(r.json.code, code, `${what}: ${code}`);
    t.type(r.json.error, 'string', `${what}: error is a string`);
    t.ok(r.json.error.length > 0);
  };
  // 404: unknown model or version, on every route.
  for (const path of ['/v2/models/nope', '/v2/models/nope/ready', `/v2/models/${MODEL}/versions/9.9.9`, `/v2/models/${MODEL}/versions/9.9.9/ready`]) {
    expectError(await json.get(path), 404, 'model_not_found', path);
  }
  expectError(await json.infer('nope', { inputs: [img] }), 404, 'model_not_found', 'infer, unknown model');
  expectError(await json.infer(MODEL, { version: '9.9.9', inputs: [img] }), 404, 'model_not_found', 'infer, unknown version');
  // The model before the body, as Triton: a body that would be a 400 to a known model.
  expectError(await json.infer('nope', { inputs: [] }), 404, 'model_not_found', 'infer, unknown model, empty inputs');
  expectError(await json.infer(MODEL, { version: '9.9.9', inputs: [] }), 404, 'model_not_found', 'infer, unknown version, empty inputs');

  // 400: the request does not fit the protocol or the model.
  const raw = (body: string | Buffer, headers: Record<string, string> = {}) =>
    fetch(`${tb.url}/v2/models/${MODEL}/infer`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body }).then(async (r) => ({ status: r.status, json: await r.json() }));
  expectError(await raw('{"inputs": '), 400, 'invalid_json', 'broken JSON');
  expectError(await raw('{}'), 400, 'invalid_request', 'no inputs');
  expectError(await raw(JSON.stringify({ inputs: [{ name: 'input', shape: [1], datatype: 'BYTES' }] })), 400, 'invalid_request', 'no data');
  const cases: [string, Tensor[], { name: string; parameters?: Record<string, unknown> }[] | undefined, Record<string, unknown> | undefined][] = [
    ['wrong input name', [{ ...img, name: 'pixels' }], undefined, undefined],
    ['two inputs', [img, img], undefined, undefined],
    ['wrong datatype', [{ name: 'input', datatype: 'FP32', shape: [1, 3, 28, 28], data: new Float32Array(3 * 784) }], undefined, undefined],
    ['wrong FP32 rank', [{ name: 'input', datatype: 'FP32', shape: [1, 784], data: new Float32Array(784) }], undefined, undefined],
    ['FP32 values short of the shape', [{ name: 'input', datatype: 'FP32', shape: [2, 1, 28, 28], data: new Float32Array(784) }], undefined, undefined],
    ['BYTES count off the shape', [{ ...img, shape: [2] }], undefined, undefined],
    ['unknown output', [img], [{ name: 'probs' }], undefined],
    ['classification above the classes', [img], [{ name: 'logits', parameters: { classification: 11 } }], undefined],
    ['priority out of range', [img], undefined, { priority: 11 }],
    ['negative timeout', [img], undefined, { timeout: -5 }],
  ];
  for (const mode of ['json', 'binary'] as Mode[]) {
    const c = new V2Client(tb.url, mode);
    for (const [what, inputs, outputs, parameters] of cases) expectError(await c.infer(MODEL, { inputs, ...(outputs ? { outputs } : {}), ...(parameters ? { parameters } : {}) }), 400, 'invalid_request', `${mode}: ${what}`);
  }
  // Values that are not finite (NaN, or 1e39, finite in JSON but Infinity as float32): a model
  // given them answers NaN, which JSON cannot carry back (it would read null).
  const nan = tensorOf(0, 1);
  nan[100] = NaN;
  expectError(await new V2Client(tb.url, 'binary').infer(MODEL, { inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: nan }] }), 400, 'invalid_request', 'binary: a NaN value');
  const huge = Array.from(tensorOf(0, 1));
  huge[7] = 1e39;
  const overflow = await raw(JSON.stringify({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: huge }] }));
  expectError(overflow, 400, 'invalid_request', 'json: a value beyond float32');
  t.match((overflow.json as { error: string }).error, /the value at index 7 is not finite/);
  // Binary framing errors.
  const head = Buffer.from(JSON.stringify({ inputs: [{ name: 'input', shape: [1], datatype: 'BYTES', parameters: { binary_data_size: 100 } }] }));
  expectError(await raw(Buffer.concat([head, Buffer.alloc(10)]), { 'inference-header-content-length': String(head.length) }), 400, 'invalid_request', 'binary_data_size past the body');
  expectError(await raw(head, { 'inference-header-content-length': String(head.length + 1) }), 400, 'invalid_request', 'header length past the body');
  const ok = lengthPrefixed([pngs[0]!]);
  const fits = Buffer.from(JSON.stringify({ inputs: [{ name: 'input', shape: [1], datatype: 'BYTES', parameters: { binary_data_size: ok.length } }] }));
  expectError(await raw(Buffer.concat([fits, ok, Buffer.alloc(3)]), { 'inference-header-content-length': String(fits.length) }), 400, 'invalid_request', 'trailing bytes');
  const truncated = Buffer.from([200, 0, 0, 0, 1, 2]);
  const th = Buffer.from(JSON.stringify({ inputs: [{ name: 'input', shape: [1], datatype: 'BYTES', parameters: { binary_data_size: truncated.length } }] }));
  expectError(await raw(Buffer.concat([th, truncated]), { 'inference-header-content-length': String(th.length) }), 400, 'invalid_request', 'BYTES element past its data');
  // Images: bad base64 (400), not an image (415, the table's status for unsupported_image).
  expectError(await raw(JSON.stringify({ inputs: [{ name: 'input', shape: [1], datatype: 'BYTES', data: ['not base64 !!!'] }] })), 400, 'invalid_image', 'bad base64');
  expectError(await json.infer(MODEL, { inputs: [{ ...img, data: [Buffer.from('hello, this is text')] }] }), 415, 'unsupported_image', 'not an image');
  // One bad image among several: the error names it.
  const mixed = await json.infer(MODEL, { inputs: [{ ...img, shape: [3], data: [pngs[0]!, Buffer.from('hello, this is text'), pngs[1]!] }] });
  expectError(mixed, 415, 'unsupported_image', 'one bad image among three');
  t.match((mixed.json as { error: string }).error, /^item 1 of 3: /, 'the error names the bad item');
  // 405 on the infer path with GET.
  const get = await json.get(`/v2/models/${MODEL}/infer`);
  t.equal(get.status, 405);
  t.equal(get.headers.get('allow'), 'POST');
  // In the v2 shape too (with data-plane threads the 405 is the thread's), and a /v2 path no route serves.
  expectError(get, 405, 'method_not_allowed', 'GET on infer');
  expectError(await json.get('/v2/models'), 404, 'not_found', 'an unserved /v2 path');
  const tooLarge = () => metricValue(tb.url, 'http_requests_errors_total', { route: '/v2/models/:model/infer', status: '413', code: 'payload_too_large' });
  const largeBefore = await tooLarge();
  const big = await fetch(`${tb.url}/v2/models/${MODEL}/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: Buffer.alloc(9 * 1024 * 1024, 32) });
  expectError({ status: big.status, json: await big.json() }, 413, 'payload_too_large', 'a body over MAX_BODY_BYTES');
  // Refused by a data-plane thread before it is forwarded: still counted under its route.
  t.equal((await tooLarge()) - largeBefore, 1, 'counted under the v2 infer route, not unmatched');

  // More items in one request than the model's queue holds: refused whole (400: it never could
  // fit), before any item is queued, so none of them is computed for a request that failed.
  const computed = () => metricValue(tb.url, 'inference_count_total', { model: MODEL });
  const before = await computed();
  const failures = () => metricValue(tb.url, 'inference_request_failure_total', { model: MODEL });
  const failedBefore = await failures();
  const many = await new V2Client(tb.url, 'binary').infer(MODEL, { inputs: [{ name: 'input', datatype: 'FP32', shape: [64, 1, 28, 28], data: tensorOf(0, 64) }] });
  expectError(many, 400, 'invalid_request', 'more items than the queue ever holds');
  t.equal(many.headers.get('retry-after'), null, 'no Retry-After: no retry could help');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(await computed(), before, 'no item of the refused request was run');
  t.equal(await failures(), failedBefore, 'refused for its form: no failure of the model');
  // A timeout of 1 µs ("do not queue") on an idle model is served: its items never waited.
  const now = await json.infer(MODEL, { inputs: [img], parameters: { timeout: 1 } });
  t.equal(now.status, 200, now.error ?? '');

  // Still serving once the admitted items are done (until then the queue may rightly be full).
  let after = await json.infer(MODEL, { inputs: [img] });
  for (let i = 0; i < 100 && after.status === 503; i++) {
    await new Promise((r) => setTimeout(r, 50));
    after = await json.infer(MODEL, { inputs: [img] });
  }
  t.equal(after.status, 200, 'still serving');
});

t.test('schedule policy parameters are accepted and the request is served', async (t) => {
  const c = new V2Client(tb.url, 'binary');
  const r = await c.infer(MODEL, { inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], data: [pngs[0]!] }], parameters: { priority: 1, timeout: 5_000_000 } });
  t.equal(r.status, 200, r.error ?? '');
  t.equal(argmaxRows(fp32(r.outputs![0]), classes)[0], argmaxRows(logits['binary/bytes']!.subarray(0, classes), classes)[0]);
});

t.test('HTTP metrics name the v2 routes', async (t) => {
  t.ok((await metricValue(tb.url, 'http_request_duration_seconds_count', { route: '/v2/models/:model/infer', status: '200' })) > 0);
  t.ok((await metricValue(tb.url, 'http_request_duration_seconds_count', { route: '/v2/models/:model/versions/:version/infer', status: '200' })) > 0);
});

t.test('with inference turned off: live, not ready, models answer 503', async (t) => {
  const off = await startTestBroker({ INFER_ENABLED: 'false', FRONT_THREADS });
  t.teardown(() => off.close());
  const c = new V2Client(off.url, 'json');
  t.equal((await c.get('/v2/health/live')).status, 200);
  const ready = await c.get('/v2/health/ready');
  t.equal(ready.status, 503);
  t.same(ready.json, { ready: false });
  t.equal(await metricValue(off.url, 'http_requests_errors_total', { route: '/v2/health/ready', status: '503', code: 'not_ready' }), 1, 'the 503 counted as not_ready, not unknown');
  for (const path of [`/v2/models/${MODEL}`, `/v2/models/${MODEL}/ready`]) {
    const r = await c.get(path);
    t.equal(r.status, 503, path);
    t.equal(r.json.code, 'inference_disabled');
  }
  const r = await c.infer(MODEL, { inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], data: [pngs[0]!] }] });
  t.equal(r.status, 503);
  t.equal(r.json.code, 'inference_disabled');
});
