// A manifest that does not fit its model's graph (input name, channels, layout, size,
// output name, label count) is found when the workers load the model, said once with the
// reason, and refused: B's requests answer 503 model_unavailable and B cannot be
// promoted while A keeps serving; an A that does not fit stops the broker at start with
// the reason. Before, such a broker said it was ready and answered 500 to every request.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { graphProblem, outputProblem, type GraphValue } from '../../src/infer/graph-check.ts';
import { loadCandidate, loadManifest, unknownManifestFields, validateManifest } from '../../src/infer/manifest.ts';
import { startBroker } from '../../src/app.ts';
import { loadConfig } from '../../src/config/env.ts';
import { startTestBroker, postJson, admin, logLine, metricValue, type TestBroker } from '../helpers/broker.ts';
import { FOREIGN, writeForeignModel } from './foreign-model.ts';
import { fashionPngs } from '../helpers/images.ts';
import { runTs } from '../helpers/child.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
const base = {
  name: 'm',
  version: '1',
  input: { name: 'input', layout: 'NHWC', channels: 3, height: 32, width: 32 },
  output: { name: 'scores' },
  labels: [...FOREIGN.labels],
  batching: { max_batch_size: 8 },
};
const graphIn: GraphValue[] = [{ name: 'input', isTensor: true, type: 'float32', shape: ['batch', 32, 32, 3] }];
const graphOut: GraphValue[] = [{ name: 'scores', isTensor: true, type: 'float32', shape: ['batch', 5] }];
const problem = (m: Record<string, unknown>, inputs = graphIn, outputs = graphOut) => graphProblem(validateManifest({ ...base, ...m }, 'm.json'), inputs, outputs);

t.test('graphProblem names what does not fit', async (t) => {
  t.equal(problem({}), null, 'the foreign model fits its manifest');
  t.match(problem({ input: { ...base.input, name: 'x' } }), /input.name is 'x' but the graph's inputs are 'input'/);
  t.match(problem({ input: { ...base.input, channels: 1, mean: [0], std: [1] } }), /3 channels in NHWC, the manifest says 1/);
  t.match(problem({ input: { ...base.input, layout: 'NCHW' } }), /32 channels in NCHW, the manifest says 3/, 'the wrong layout reads the wrong dimension');
  t.match(problem({ input: { ...base.input, height: 28, width: 28 } }), /not 28x28 in NHWC/);
  t.match(problem({ input: { ...base.input, height: null, width: null, defaultSize: 32, maxSize: 64 } }), /a fixed size in NHWC, but the manifest's input.height and input.width are null \(any size\)$/);
  t.match(problem({ input: { ...base.input, height: null, width: null, defaultSize: 32, channels: 1, mean: [0], std: [1] } }, [{ name: 'input', isTensor: true, type: 'float32', shape: ['b', 1, 'h', 'w'] }]), /\[b, 1, h, w\]: a fixed size in NHWC.*; in NCHW it is 1 channel of any size: check input.layout/, 'a dynamic NCHW model declared NHWC');
  t.equal(problem({ input: { ...base.input, height: null, width: null, defaultSize: 32 } }, [{ name: 'input', isTensor: true, type: 'float32', shape: ['b', 'h', 'w', 3] }]), null, 'a dynamic graph takes any size');
  t.match(problem({}, [{ name: 'input', isTensor: true, type: 'float32', shape: [1, 32, 32, 3] }]), /batch dimension is fixed at 1/);
  t.equal(problem({ batching: { max_batch_size: 1 } }, [{ name: 'input', isTensor: true, type: 'float32', shape: [1, 32, 32, 3] }]), null, 'batch 1 without batching');
  t.match(problem({ batching: { max_batch_size: 1 } }, [{ name: 'input', isTensor: true, type: 'float32', shape: [2, 32, 32, 3] }]), /batch dimension is fixed at 2; the broker sends 1 image/, 'a batch fixed above 1');
  t.match(problem({}, [...graphIn, { name: 'bias', isTensor: true, type: 'float32', shape: [5] }]), /inputs the broker cannot feed besides 'input': 'bias'/, 'a second input');
  t.match(problem({}, [{ name: 'input', isTensor: true, type: 'uint8', shape: ['b', 32, 32, 3] }]), /takes uint8; the broker feeds float32/);
  t.match(problem({}, [{ name: 'input', isTensor: true, type: 'float32', shape: ['b', 3, 32] }]), /has 3 dimensions/);
  t.match(problem({ output: { name: 'logits' } }), /output.name is 'logits' but the graph's outputs are 'scores'/);
  t.match(problem({ labels: ['a', 'b'] }), /output 'scores' is \[batch, 5\]: 5 classes per image but the manifest has 2 labels/);
  t.equal(problem({}, graphIn, [{ name: 'scores', isTensor: true, type: 'float32', shape: ['batch', 5, 1, 1] }]), null, "a convolutional head's [batch, K, 1, 1]");
  t.equal(problem({}, graphIn, [{ name: 'scores', isTensor: true, type: 'float32', shape: ['batch', 1, 5] }]), null);
  t.match(problem({}, graphIn, [{ name: 'scores', isTensor: true, type: 'float32', shape: ['batch', 5, 2, 1] }]), /is \[batch, 5, 2, 1\]: more than one dimension past the batch is above 1/);
  // Two heads of 5 ([batch, 2, 5]) with 10 labels: the count fits, but one softmax over both would be wrong.
  t.match(problem({ labels: Array.from({ length: 10 }, (_, i) => `c${i}`) }, graphIn, [{ name: 'scores', isTensor: true, type: 'float32', shape: ['batch', 2, 5] }]), /several heads/);
  t.match(problem({}, graphIn, [{ name: 'scores', isTensor: true, type: 'float32', shape: ['batch', 10, 1] }]), /10 classes per image but the manifest has 5 labels/);
  t.match(problem({}, graphIn, [{ name: 'scores', isTensor: true, type: 'float32', shape: [1, 5] }]), /max_batch_size is 8 but output 'scores' is \[1, 5\]: no batch dimension/, "an output with a fixed batch cannot be split by image");
  t.equal(problem({ batching: { max_batch_size: 1 } }, graphIn, [{ name: 'scores', isTensor: true, type: 'float32', shape: [1, 5] }]), null, 'without batching it can');
  t.match(problem({}, graphIn, [{ name: 'scores', isTensor: true, type: 'int64', shape: ['batch', 5] }]), /output 'scores' is int64; the broker reads scores as float32, float64 or float16/);
  for (const type of ['float16', 'float64']) t.equal(problem({}, graphIn, [{ name: 'scores', isTensor: true, type, shape: ['batch', 5] }]), null, `${type} scores are read`);
  const m = validateManifest(base, 'm.json');
  t.equal(outputProblem(m, [2, 5], 2), null);
  t.match(outputProblem(m, [1, 10], 1), /came out \[1, 10\] for 1 image\(s\); the manifest's 5 labels need 5 scores/);
  // Classes first ([labels, N], as a graph whose reshape target is computed may give while its
  // metadata says only ['a', 'b']): the right count, but each image would get its neighbours' scores.
  t.match(outputProblem(m, [5, 2], 2), /came out \[5, 2\] for 2 images; its first dimension must be the batch/);
  t.equal(outputProblem(m, [5, 1], 1), null, 'one image: one row whatever the layout');
  t.equal(outputProblem(m, [1, 2, 5], 2), null, 'leading 1s before the batch keep the rows in order');
  // Dims the metadata left symbolic, seen at the warm-up: two heads, whatever the batch.
  const ten = validateManifest({ ...base, labels: Array.from({ length: 10 }, (_, i) => `c${i}`) }, 'm.json');
  t.match(outputProblem(ten, [1, 2, 5], 1), /came out \[1, 2, 5\] for 1 image\(s\): more than one dimension past the batch/);
  t.match(outputProblem(ten, [4, 2, 5], 4), /several heads/);
  t.equal(outputProblem(ten, [4, 10, 1, 1], 4), null, 'a convolutional head');
});

t.test('unknownManifestFields: what no block reads, dotted; the fields for humans are known', async (t) => {
  t.same(unknownManifestFields({ ...base, description: 'd', training: { seed: 1 } }), []);
  t.same(unknownManifestFields({ ...base, lables: [], input: { ...base.input, mean_: [0] }, output: { name: 's', kind: 'logits', softmax: true }, batching: { max_batchsize: 4 }, queue: { maxSize: 3 } }), ['lables', 'input.mean_', 'output.softmax', 'batching.max_batchsize', 'queue.maxSize']);
});

t.test("a dynamic-size manifest's defaultSize must be a size a request could name", async (t) => {
  const dyn = (defaultSize: number, maxSize: number) => () => validateManifest({ ...base, input: { ...base.input, height: null, width: null, defaultSize, maxSize } }, 'm.json');
  t.throws(dyn(600, 64), /input.defaultSize must be between input.minSize \(8\) and input.maxSize \(64\), got 600/);
  t.throws(dyn(4, 64), /input.defaultSize/);
  t.doesNotThrow(dyn(64, 64));
});

const good = writeForeignModel();
const wrongChannels = writeForeignModel({ manifest: { version: '0.2.0', input: { name: 'input', layout: 'NHWC', channels: 1, height: 32, width: 32, mean: [0], std: [1] } } });
const wrongLabels = writeForeignModel({ manifest: { labels: ['a', 'b'] } });
const png = (await fashionPngs(1))[0]!.b64;

// One inference thread and no data-plane threads where a test checks only how a model is
// loaded and judged (the control plane): each thread started is seconds of CPU in the suite.
// The first test below keeps the defaults, for the data-plane's side of a refused model.
const LEAN = { FRONT_THREADS: '0', INFER_THREADS: '1' };

t.test('B does not fit: said at start and in /ready, its requests answer 503 model_unavailable, A serves, B cannot be promoted', async (t) => {
  const tb = await startTestBroker({ MODEL_VA_PATH: good, MODEL_VB_PATH: wrongChannels, AB_WEIGHT_A: '1', AB_WEIGHT_B: '1' });
  t.teardown(() => tb.close());
  const line = await logLine(tb, (l) => l['arm'] === 'B' && typeof l['msg'] === 'string' && (l['msg'] as string).includes('does not fit its manifest'));
  t.match(line?.['msg'], /3 channels in NHWC, the manifest says 1/, 'the start-up log says why');
  t.equal(line?.['path'], wrongChannels);
  const ready = await fetch(`${tb.url}/ready`);
  t.equal(ready.status, 200, 'A serves: the broker is ready');
  t.match(await ready.json(), { ready: true, model_problems: { B: /does not fit its manifest/ } });
  const readyB = await fetch(`${tb.url}/v2/models/foreign-nhwc/versions/0.2.0/ready`);
  t.equal(readyB.status, 503, "v2: B's version is not ready");
  t.match(await readyB.json(), { ready: false });
  t.equal((await fetch(`${tb.url}/v2/models/foreign-nhwc/versions/0.1.0/ready`)).status, 200, "v2: A's is");

  const toB = await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=B' });
  t.equal(toB.status, 503);
  t.equal(toB.body.error.code, 'model_unavailable');
  t.match(toB.body.error.message, /does not fit its manifest: input 'input' is \[batch, 32, 32, 3\]/);
  t.ok(toB.body.error.request_id ?? toB.headers.get('x-request-id'), 'with the request id');
  const toA = await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=A' });
  t.equal(toA.status, 200, 'A answers');

  const warm = await fetch(`${tb.url}/admin/warmup`, { method: 'POST', headers: admin });
  t.equal(warm.status, 200);
  t.match(await warm.json(), { warmed: false, unavailable: { B: /does not fit its manifest/ } }, 'a warm-up says B did not run');
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=A' })).status, 200, 'A serves after the warm-up');

  // Shadowed, every run on B fails: counted, and said in the log once a minute, not per run.
  const shadowOn = await fetch(`${tb.url}/admin/config`, { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, body: JSON.stringify({ shadow_enabled: true }) });
  t.equal(shadowOn.status, 200);
  for (let i = 0; i < 3; i++) t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=A' })).status, 200, 'A answers, B shadows it');
  for (let i = 0; i < 100 && (await metricValue(tb.url, 'inference_shadow_requests_total', { outcome: 'error' })) < 3; i++) await new Promise((r) => setTimeout(r, 50));
  t.equal(await metricValue(tb.url, 'inference_shadow_requests_total', { outcome: 'error' }), 3, 'three failed shadow runs');
  t.equal(tb.logs.filter((l) => l['level'] === 40 && typeof l['msg'] === 'string' && (l['msg'] as string).startsWith('shadow run failed on B')).length, 1, 'one warning for the three');
  await fetch(`${tb.url}/admin/config`, { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, body: JSON.stringify({ shadow_enabled: false }) });

  const promote = await fetch(`${tb.url}/admin/promote`, { method: 'POST', headers: admin });
  t.equal(promote.status, 503, 'promote refused');
  t.match(await promote.json(), { error: { code: 'model_unavailable', message: /B cannot be promoted: model .* does not fit its manifest/ } });
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=A' })).status, 200, 'A still serves after the refused promote');
  // The log says the promote was refused, not that A's requests now fail.
  t.ok(tb.logs.some((l) => typeof l['msg'] === 'string' && (l['msg'] as string).startsWith('promote refused, A keeps serving: ')), 'the refusal is logged as a promote');
  t.notOk(tb.logs.some((l) => l['arm'] === 'A' && typeof l['msg'] === 'string' && (l['msg'] as string).includes('answer 503 model_unavailable')), 'no line says A answers 503');
});

t.test('B whose output does not follow the batch (declared [batch, 5], one row per batch in fact): refused at warm-up, never a wrong 200', async (t) => {
  const tb = await startTestBroker({ MODEL_VA_PATH: good, MODEL_VB_PATH: writeForeignModel({ reducesBatch: true }), AB_WEIGHT_A: '1', AB_WEIGHT_B: '1', ...LEAN });
  t.teardown(() => tb.close());
  const line = await logLine(tb, (l) => l['arm'] === 'B' && typeof l['msg'] === 'string' && (l['msg'] as string).includes('does not fit its manifest'));
  t.match(line?.['msg'], /came out \[1, 5\] for 8 image\(s\).*a graph that cannot batch needs 1/);
  const replies = await Promise.all(Array.from({ length: 8 }, () => postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=B' })));
  t.same(replies.map((r) => r.status), Array(8).fill(503), 'every request to B is refused');
  t.ok(replies.every((r) => r.body.error.code === 'model_unavailable'));
});

t.test('B whose scores come out classes first ([5, batch], declared [a, b]): refused at warm-up, never its neighbours\' answers', async (t) => {
  const tb = await startTestBroker({ MODEL_VA_PATH: good, MODEL_VB_PATH: writeForeignModel({ classesFirst: true }), AB_WEIGHT_A: '1', AB_WEIGHT_B: '1', ...LEAN });
  t.teardown(() => tb.close());
  const line = await logLine(tb, (l) => l['arm'] === 'B' && typeof l['msg'] === 'string' && (l['msg'] as string).includes('does not fit its manifest'));
  t.match(line?.['msg'], /came out \[5, 8\] for 8 images; its first dimension must be the batch/);
  const replies = await Promise.all(Array.from({ length: 8 }, () => postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=B' })));
  t.same(replies.map((r) => r.status), Array(8).fill(503), 'every request to B is refused');
});

t.test('a model whose scores are NaN: 500 internal naming the model, not a 200 of null scores', async (t) => {
  const tb = await startTestBroker({ MODEL_VA_PATH: good, MODEL_VB_PATH: writeForeignModel({ nanScores: true }), AB_WEIGHT_A: '1', AB_WEIGHT_B: '1', INFER_THREADS: '1' });
  t.teardown(() => tb.close());
  const r = await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=B' });
  t.equal(r.status, 500);
  t.match(r.body.error, { code: 'internal', message: /gave a score that is not a finite number/ });
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=A' })).status, 200, 'A still serves');
  // On v2 its scores leave as they are; JSON cannot carry NaN, so that reply is a 500 too, and
  // counted as one (before: a 500 to the client, a success in the metrics and the canary judge).
  const counts = async () => ({
    ok: await metricValue(tb.url, 'inference_request_success_total', { arm: 'B' }),
    failed: await metricValue(tb.url, 'inference_request_failure_total', { arm: 'B', reason: 'internal' }),
  });
  const before = await counts();
  const v2 = (parameters: Record<string, unknown>) => fetch(`${tb.url}/v2/models/foreign-nhwc/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', cookie: 'eb_arm=B' },
    body: JSON.stringify({ inputs: [{ name: 'input', shape: [1], datatype: 'BYTES', data: [png] }], parameters }),
  });
  const json = await v2({});
  t.equal(json.status, 500);
  t.match(await json.json(), { code: 'internal', error: /not finite.*binary/ });
  t.same(await counts(), { ok: before.ok, failed: before.failed + 1 }, 'a failure in the metrics, not a success');
  const binary = await v2({ binary_data_output: true });
  t.equal(binary.status, 200, 'asked for as binary, the scores leave as they are');
  const buf = Buffer.from(await binary.arrayBuffer());
  const hl = Number(binary.headers.get('inference-header-content-length'));
  t.ok(new Float32Array(buf.buffer.slice(buf.byteOffset + hl, buf.byteOffset + buf.length)).some(Number.isNaN), 'NaN carried as it is');
  t.same(await counts(), { ok: before.ok + 1, failed: before.failed + 1 }, 'and counted a success');
});

t.test('a model that masks classes with -Infinity logits: probability 0 for them, a 200; every class masked: 500', async (t) => {
  const tb = await startTestBroker({ MODEL_VA_PATH: writeForeignModel({ masked: [0, 1, 2, 3, 4] }), MODEL_VB_PATH: writeForeignModel({ masked: [1, 3] }), AB_WEIGHT_A: '1', AB_WEIGHT_B: '1', ...LEAN });
  t.teardown(() => tb.close());
  const r = await postJson(`${tb.url}/v1/infer`, { image_b64: png, top_k: 5 }, { cookie: 'eb_arm=B' });
  t.equal(r.status, 200, JSON.stringify(r.body));
  const preds = r.body.predictions as { index: number; score: number }[];
  t.same(preds.slice(3).map((p) => p.index).sort(), [1, 3], 'the masked classes rank last');
  t.same(preds.slice(3).map((p) => p.score), [0, 0], 'with probability 0');
  t.ok(Math.abs(preds.reduce((a, p) => a + p.score, 0) - 1) < 1e-6, 'the others sum to 1');
  const all = await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=A' });
  t.equal(all.status, 500);
  t.match(all.body.error, { code: 'internal', message: /gave only -Infinity logits \(every class masked\)/ });
});

t.test('A and B different files with one manifest version: a start-up warning that v2 cannot tell them apart', async (t) => {
  const tb = await startTestBroker({ MODEL_VA_PATH: good, MODEL_VB_PATH: writeForeignModel({ masked: [2] }), ...LEAN });
  t.teardown(() => tb.close());
  const line = await logLine(tb, (l) => typeof l['msg'] === 'string' && (l['msg'] as string).includes('with the same manifest version'));
  t.match(line, { level: 40, version: '0.1.0', msg: /cannot name B by its version/ });
});

t.test('a file onnxruntime cannot load (cut short) as B: said at start and in /ready, 503 model_unavailable, A serves; as A: waitReady says why', async (t) => {
  // Before, the worker died opening it, and its replacement too, for ever: A never served.
  const dir = mkdtempSync(join(tmpdir(), 'eb-unloadable-'));
  const cut = join(dir, 'foreign.onnx');
  writeFileSync(cut, readFileSync(good).subarray(0, 600));
  const manifest = JSON.parse(readFileSync(join(dirname(good), 'foreign.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(dir, 'foreign.json'), JSON.stringify({ ...manifest, version: '0.9.0' }));
  const tb = await startTestBroker({ MODEL_VA_PATH: good, MODEL_VB_PATH: cut, AB_WEIGHT_A: '1', AB_WEIGHT_B: '1', ...LEAN });
  t.teardown(() => tb.close());
  const line = await logLine(tb, (l) => l['arm'] === 'B' && typeof l['msg'] === 'string' && (l['msg'] as string).includes('cannot be loaded by onnxruntime'));
  t.equal(line?.['path'], cut, 'the start-up log names the file');
  t.match(line?.['err'], /\S/, "and gives the runtime's reason");
  const ready = await fetch(`${tb.url}/ready`);
  t.equal(ready.status, 200, 'A serves: the broker is ready');
  // The runtime's reason is in /ready and the 503 too, with the file's name, not its directory.
  const problem = ((await ready.json()) as { model_problems: { B: string } }).model_problems.B;
  t.match(problem, /cannot be loaded by onnxruntime: .*foreign\.onnx/, problem);
  t.notMatch(problem, dir, 'not the directory');
  t.match(line?.['msg'], /; its requests answer 503 model_unavailable$/);
  const toB = await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=B' });
  t.equal(toB.status, 503);
  t.equal(toB.body.error.code, 'model_unavailable');
  t.equal(toB.body.error.message, problem, "the 503 gives the runtime's reason");
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=A' })).status, 200, 'A answers');
  t.equal(await metricValue(tb.url, 'inference_worker_failures_total'), 0, 'no worker died');
  const meta = await fetch(`${tb.url}/v2/models/foreign-nhwc/versions/0.9.0`);
  t.equal(meta.status, 503, "v2: B's metadata is unavailable, as B is (not a 500)");
  t.match(await meta.json(), { error: /cannot be loaded by onnxruntime/ });

  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', GRPC_PORT: '0', FRONT_THREADS: '0', INFER_THREADS: '1', MODEL_VA_PATH: cut, MODEL_VB_PATH: good });
  const broker = await startBroker(config);
  t.teardown(() => broker.close(2000));
  const err = await broker.waitReady().then(() => undefined, (e: unknown) => e as { code?: string; message: string });
  t.equal(err?.code, 'model_unavailable');
  t.match(err?.message, /cannot be loaded by onnxruntime/);
});

t.test("B's manifest does not load (bad JSON, missing, a bad field): said at start and in /ready, 503 model_unavailable, A serves, no promote", async (t) => {
  // Before, the broker refused to start: a typo in the candidate's manifest took A down with it.
  const dir = mkdtempSync(join(tmpdir(), 'eb-badmanifest-'));
  const a = loadManifest(good);
  const cases: Record<string, string | undefined> = {
    badjson: '{ name: "x", ',
    missing: undefined,
    badkind: JSON.stringify({ ...JSON.parse(readFileSync(join(dirname(good), 'foreign.json'), 'utf8')), output: { name: 'scores', kind: 'softmax' } }),
  };
  const why: Record<string, RegExp> = { badjson: /model manifest .*badjson\.json: .*JSON/, missing: /model manifest .*missing\.json: ENOENT/, badkind: /output\.kind must be logits or probabilities/ };
  for (const [name, text] of Object.entries(cases)) {
    writeFileSync(join(dir, `${name}.onnx`), readFileSync(good));
    if (text !== undefined) writeFileSync(join(dir, `${name}.json`), text);
    const b = loadCandidate(join(dir, `${name}.onnx`), a);
    t.match(b.unusable, why[name]!, `${name}: a stand-in that says why`);
    t.equal(b.manifest.name, name, 'named for its file');
  }
  t.equal(loadCandidate(good, a).unusable, undefined, 'a good one loads as it is');
  // End to end, once (a broker start is seconds of model loading).
  const path = join(dir, 'badjson.onnx');
  const tb = await startTestBroker({ MODEL_VA_PATH: good, MODEL_VB_PATH: path, AB_WEIGHT_A: '1', AB_WEIGHT_B: '1', ...LEAN });
  t.teardown(() => tb.close());
  const line = await logLine(tb, (l) => l['arm'] === 'B' && l['path'] === path);
  t.match(line?.['msg'], why['badjson']!, 'the start-up log says why');
  const ready = await fetch(`${tb.url}/ready`);
  t.equal(ready.status, 200, 'A serves, the broker is ready');
  t.match(await ready.json(), { ready: true, model_problems: { B: why['badjson']! } });
  const toB = await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=B' });
  t.equal(toB.status, 503);
  t.equal(toB.body.error.code, 'model_unavailable');
  t.match(toB.body.error.message, why['badjson']!);
  t.equal((await postJson(`${tb.url}/v1/infer`, { image_b64: png }, { cookie: 'eb_arm=A' })).status, 200, 'A answers');
  const promote = await fetch(`${tb.url}/admin/promote`, { method: 'POST', headers: admin });
  t.equal(promote.status, 503, 'promote refused');
  t.match(await promote.json(), { error: { code: 'model_unavailable', message: /B cannot be promoted/ } });
});

t.test('a model that runs one image but not a batch: a warning at start, then batches of 1 (never a failed batch run again)', async (t) => {
  // With two fields the broker does not read (typos): said at start too.
  const unbatchable = writeForeignModel({ failsBatched: true, manifest: { colour: 'red', batching: { max_batch_size: 8, max_queue_delay_us: 20_000, max_batchsize: 4 } } });
  const tb = await startTestBroker({ MODEL_VA_PATH: unbatchable, MODEL_VB_PATH: unbatchable, ...LEAN });
  t.teardown(() => tb.close());
  const line = await logLine(tb, (l) => l['arm'] === 'A' && typeof l['msg'] === 'string' && (l['msg'] as string).includes('failed its warm-up run at batching.max_batch_size 8'));
  t.equal(line?.['level'], 40, 'a warning');
  t.match(line?.['msg'], /runs one image at a time/);
  t.match(line?.['err'], /\S/, "with the runtime's words");
  t.match(await (await fetch(`${tb.url}/ready`)).json(), { ready: true }, 'the model serves');
  const typo = tb.logs.find((l) => l['arm'] === 'A' && Array.isArray(l['fields']));
  t.same(typo?.['fields'], ['colour', 'batching.max_batchsize'], 'the fields it does not read');
  t.match(typo?.['msg'], /are not fields the broker reads \(a typo leaves its setting at the default/);
  t.equal(tb.logs.filter((l) => Array.isArray(l['fields'])).length, 1, 'once, though B is the same file');
  const config = (await (await fetch(`${tb.url}/v2/models/foreign-nhwc/config`)).json()) as { max_batch_size: number };
  t.equal(config.max_batch_size, 1, 'v2 says what the batcher does');
  const res = await Promise.all(Array.from({ length: 12 }, () => postJson(`${tb.url}/v1/infer`, { image_b64: png })));
  t.ok(res.every((r) => r.status === 200), 'every image answered');
  t.equal(await metricValue(tb.url, 'inference_exec_count_total', { model: 'foreign-nhwc' }), await metricValue(tb.url, 'inference_count_total', { model: 'foreign-nhwc' }), 'one run per image: no batch ran, failed and ran again');
});

t.test('A does not fit: not ready, and waitReady says why', async (t) => {
  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'silent', GRPC_PORT: '0', FRONT_THREADS: '0', INFER_THREADS: '1', MODEL_VA_PATH: wrongLabels, MODEL_VB_PATH: good });
  const broker = await startBroker(config);
  t.teardown(() => broker.close(2000));
  const err = await broker.waitReady().then(() => undefined, (e: unknown) => e as { code?: string; message: string });
  t.equal(err?.code, 'model_unavailable');
  t.match(err?.message, /output 'scores' is \[batch, 5\]: 5 classes per image but the manifest has 2 labels/);
  const ready = await fetch(`http://127.0.0.1:${broker.port}/ready`);
  t.equal(ready.status, 503);
  t.match(await ready.json(), { ready: false, model_problems: { A: /2 labels/ } });
});

// With data-plane threads too: exiting under their uWS sockets aborted the process (exit 134).
for (const threads of ['0', '1']) t.test(`npm start with an A that does not fit, FRONT_THREADS=${threads}: exit 1, one line with the reason`, async (t) => {
  const child = spawn(process.execPath, runTs('src/main.ts'), {
    cwd: root,
    env: { ...process.env, HOST: '127.0.0.1', PORT: '0', GRPC_PORT: '0', FRONT_THREADS: threads, INFER_THREADS: '1', LOG_LEVEL: 'fatal', MODEL_VA_PATH: wrongChannels, MODEL_VB_PATH: good },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => (clearTimeout(timer), r(c))));
  t.equal(code, 1);
  t.match(stderr, /^edge-broker: cannot start: model foreign-nhwc does not fit its manifest: input 'input' is \[batch, 32, 32, 3\]: 3 channels in NHWC, the manifest says 1 .*foreign\.onnx\)/m);
  t.notMatch(stderr, /\n\s+at /, 'no stack trace');
});

t.test('SIGTERM while the broker is stopping for an A that does not fit: still exit 1 with the reason, never an abort', async (t) => {
  for (let round = 0; round < 3; round++) {
    const child = spawn(process.execPath, runTs('src/main.ts'), {
      cwd: root,
      env: { ...process.env, HOST: '127.0.0.1', PORT: '0', GRPC_PORT: '0', FRONT_THREADS: '1', INFER_THREADS: '1', LOG_LEVEL: 'fatal', MODEL_VA_PATH: wrongChannels, MODEL_VB_PATH: good },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    // The signal the moment the reason is written, while the no-grace close runs (Kubernetes
    // stops a pod that keeps failing to start).
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('cannot start')) child.kill('SIGTERM');
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((r) => child.once('exit', (c, s) => (clearTimeout(timer), r([c, s]))));
    t.same([code, signal], [1, null], `round ${round}: exit 1`);
    t.notMatch(stderr, /terminate called|Napi::Error/, 'no native abort');
  }
});

t.test('float16 scores are read as numbers, not as their bits; an int64 output is refused when the model loads', async (t) => {
  const { halfToFloat, asFloat32 } = await import('../../src/infer/postprocess.ts');
  t.equal(halfToFloat(0x3c00), 1);
  t.equal(halfToFloat(0xc000), -2);
  t.equal(halfToFloat(0x7bff), 65504);
  t.equal(halfToFloat(0x0001), 2 ** -24, 'subnormal');
  t.equal(halfToFloat(0xfc00), -Infinity);
  t.ok(Number.isNaN(halfToFloat(0x7e00)));
  t.same(Array.from(asFloat32('float16', Uint16Array.of(0x3800, 0xb400))), [0.5, -0.25]);
  t.same(Array.from(asFloat32('float64', Float64Array.of(0.5, 2))), [0.5, 2]);

  const fp32 = writeForeignModel({ manifest: { batching: { max_batch_size: 1 } } });
  const fp16 = writeForeignModel({ outputType: 'float16', manifest: { version: '0.2.0', batching: { max_batch_size: 1 } } });
  const int64 = writeForeignModel({ outputType: 'int64', manifest: { version: '0.2.0', batching: { max_batch_size: 1 } } });
  const tb = await startTestBroker({ MODEL_VA_PATH: fp32, MODEL_VB_PATH: fp16, AB_WEIGHT_A: '0.5', AB_WEIGHT_B: '0.5', FRONT_THREADS: '0' });
  t.teardown(() => tb.close());
  const ask = async (arm: string) => (await postJson(`${tb.url}/v1/infer?top_k=5`, { image_b64: png }, { cookie: `eb_arm=${arm}` })).body;
  const a = await ask('A');
  const b = await ask('B');
  t.equal(b.arm, 'B', JSON.stringify(b));
  t.same(b.predictions.map((p: { label: string }) => p.label), a.predictions.map((p: { label: string }) => p.label), 'the same ranking as the float32 twin');
  for (let i = 0; i < 5; i++) t.ok(Math.abs(b.predictions[i].score - a.predictions[i].score) < 5e-3, `score ${i} within float16 precision`);

  const bad = await startTestBroker({ MODEL_VA_PATH: fp32, MODEL_VB_PATH: int64, FRONT_THREADS: '0' });
  t.teardown(() => bad.close());
  const ready = await fetch(`${bad.url}/ready`);
  t.match(await ready.text(), /is int64; the broker reads scores as float32, float64 or float16/, "/ready says why B is refused");
  // Its v2 metadata describes the graph as it is, not as the FP32 a served model answers.
  const meta = async (tb: TestBroker, version: string) => ((await (await fetch(`${tb.url}/v2/models/foreign-nhwc/versions/${version}`)).json()) as { outputs: { datatype: string }[] }).outputs;
  t.same((await meta(bad, '0.2.0')).map((o: { datatype: string }) => o.datatype), ['INT64'], "the refused B's output: INT64");
  t.same((await meta(tb, '0.2.0')).map((o: { datatype: string }) => o.datatype), ['FP32'], 'a float16 output is served, as FP32');
});

t.test('img_size on a fixed-size model: the size itself, and none can name a non-square input', async (t) => {
  const { checkSize } = await import('../../src/infer/service.ts');
  const square = { manifest: validateManifest(base, 'm.json') };
  t.equal(checkSize(undefined, square), undefined);
  t.equal(checkSize(32, square), undefined, 'its own size: accepted');
  t.throws(() => checkSize(28, square), { code: 'invalid_img_size', message: /img_size must be 32 for model m \(fixed 32x32 input\), got 28/ });
  const rect = { manifest: validateManifest({ ...base, input: { ...base.input, height: 24, width: 40 } }, 'm.json') };
  t.throws(() => checkSize(24, rect), { code: 'invalid_img_size', message: /fixed 24x40 input \(height x width\), which no square img_size names: leave img_size out/ });
});

t.test('img_size on a dynamic-size model: from input.minSize (a convolution stack has a smallest input) to input.maxSize', async (t) => {
  const { checkSize } = await import('../../src/infer/service.ts');
  const dyn = (input: Record<string, unknown>) => ({ manifest: validateManifest({ ...base, input: { ...base.input, height: null, width: null, defaultSize: 32, ...input } }, 'm.json') });
  t.throws(() => checkSize(8, dyn({ minSize: 16, maxSize: 64 })), { code: 'invalid_img_size', message: /img_size must be between 16 and 64 for model m, got 8/ }, 'below the model\'s smallest: 400, not the model failing');
  t.equal(checkSize(16, dyn({ minSize: 16, maxSize: 64 })), 16);
  t.equal(checkSize(8, dyn({ maxSize: 64 })), 8, 'the default smallest is 8');
  t.throws(() => dyn({ minSize: 48, maxSize: 64 }), /input.defaultSize must be between input.minSize \(48\) and input.maxSize \(64\), got 32/);
  t.throws(() => dyn({ minSize: 128, maxSize: 64 }), /input.minSize must be between 1 and input.maxSize \(64\), got 128/);
  t.throws(() => dyn({ minSize: 0 }), /input.minSize must be a positive integer/);
  t.equal(checkSize(4, dyn({ minSize: 4, defaultSize: 4 })), 4, 'a model that runs at 4x4 may say so (the default stays 8)');
});

t.test('a convolutional head, [batch,5,1,1]: v2 answers the shape its metadata gives, with the values of a direct run', async (t) => {
  const ort = await import('onnxruntime-node');
  const path = writeForeignModel({ convHead: true, manifest: { batching: { max_batch_size: 1 } } });
  const tb = await startTestBroker({ MODEL_VA_PATH: path, MODEL_VB_PATH: path, AB_WEIGHT_A: '1', AB_WEIGHT_B: '0', FRONT_THREADS: '0' });
  t.teardown(() => tb.close());
  const meta = (await (await fetch(`${tb.url}/v2/models/foreign-nhwc`)).json()) as { outputs: { name: string; shape: number[] }[] };
  t.same(meta.outputs[0]!.shape, [-1, FOREIGN.classes, 1, 1]);
  const n = 2;
  const x = Float32Array.from({ length: n * FOREIGN.size * FOREIGN.size * 3 }, (_, i) => ((i * 7919) % 255) / 255 - 0.5);
  const r = await postJson(`${tb.url}/v2/models/foreign-nhwc/infer`, { inputs: [{ name: 'input', datatype: 'FP32', shape: [n, FOREIGN.size, FOREIGN.size, 3], data: Array.from(x) }] });
  t.equal(r.status, 200, JSON.stringify(r.body));
  t.same(r.body.outputs[0].shape, [n, FOREIGN.classes, 1, 1], 'the reply keeps the trailing 1s');
  const session = await ort.InferenceSession.create(path);
  const direct = (await session.run({ input: new ort.Tensor('float32', x, [n, FOREIGN.size, FOREIGN.size, 3]) })).scores!;
  t.same(direct.dims, r.body.outputs[0].shape, 'as a direct run gives it');
  const got = r.body.outputs[0].data as number[];
  t.ok(Array.from(direct.data as Float32Array).every((v, i) => Math.abs(v - got[i]!) < 1e-6), 'the same values');
});
