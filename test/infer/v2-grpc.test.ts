// inference.GRPCInferenceService (KServe's grpc_predict_v2.proto) on its own grpc.Server,
// over a real broker's inference service, called by a grpc-js client built from the
// proto: metadata, readiness, inference with raw contents and typed contents, the same
// outputs as REST binary, a named version, and the error statuses from the table.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import sharp from 'sharp';
import { loadSplit } from '../../scripts/train/idx.ts';
import { startGrpcBroker } from '../helpers/grpc.ts';
import { V2Client, lengthPrefixed } from '../helpers/v2-client.ts';
import { V2_PROTO } from '../../src/infer/v2/grpc.ts';

const IMAGES = 40;
// The broker's own gRPC server (GRPC_PORT), where the v2 service sits beside ours.
const tb = await startGrpcBroker({ AB_WEIGHT_A: '1', AB_WEIGHT_B: '0' });
t.teardown(() => tb.close());
const port = tb.broker.grpcPort;

// The client: the proto as published, loaded on its own (not the server's definition).
const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(V2_PROTO, { keepCase: true, longs: Number, defaults: true, oneofs: true })) as any;
const client = new pkg.inference.GRPCInferenceService(`127.0.0.1:${port}`, grpc.credentials.createInsecure());
t.teardown(() => client.close());
const rpc = (method: string, req: object): Promise<any> => new Promise((resolve, reject) => client[method](req, (err: grpc.ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res))));

const { A, B } = tb.broker.infer!.models;
const MODEL = A.manifest.name;
const split = loadSplit('t10k', IMAGES);
const pngs: Buffer[] = [];
for (let i = 0; i < IMAGES; i++) pngs.push(await sharp(Buffer.from(split.images.subarray(i * 784, (i + 1) * 784)), { raw: { width: 28, height: 28, channels: 1 } }).png().toBuffer());
const rest = await new V2Client(tb.url, 'binary').infer(MODEL, { inputs: [{ name: 'input', datatype: 'BYTES', shape: [4], data: pngs.slice(0, 4) }] });
const restLogits = rest.outputs![0]!.data as Float32Array;

const floats = (b: Buffer): Float32Array => new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
const argmax = (row: Float32Array): number => row.reduce((best, v, i) => (v > row[best]! ? i : best), 0);

t.test('health and metadata', async (t) => {
  t.same(await rpc('ServerLive', {}), { live: true });
  t.same(await rpc('ServerReady', {}), { ready: true });
  t.same(await rpc('ModelReady', { name: MODEL, version: '' }), { ready: true });
  const server = await rpc('ServerMetadata', {});
  t.equal(server.name, 'edge-broker');
  t.same([...server.extensions].sort(), ['binary_tensor_data', 'classification', 'schedule_policy']);
  const meta = await rpc('ModelMetadata', { name: MODEL, version: '' });
  const restMeta = (await new V2Client(tb.url, 'json').get(`/v2/models/${MODEL}`)).json;
  t.same(meta, restMeta, 'the same metadata as REST');
});

t.test(`${IMAGES} images as raw BYTES: accuracy, and the same logits as REST binary`, async (t) => {
  const res = await rpc('ModelInfer', {
    model_name: MODEL,
    id: 'g1',
    inputs: [{ name: 'input', datatype: 'BYTES', shape: [IMAGES] }],
    raw_input_contents: [lengthPrefixed(pngs)],
  });
  t.equal(res.model_name, MODEL);
  t.equal(res.model_version, A.manifest.version);
  t.equal(res.id, 'g1');
  const p = res.parameters as Record<string, { int64_param: number }>;
  t.ok(p.queue_us!.int64_param >= 0 && p.decode_us!.int64_param > 0 && p.batch_size!.int64_param >= 1, `queue and decode time in the response parameters: ${JSON.stringify(p)}`);
  t.same(res.outputs, [{ name: 'logits', datatype: 'FP32', shape: [IMAGES, 10], parameters: {}, contents: null }]);
  const logits = floats(res.raw_output_contents[0]);
  let right = 0;
  for (let i = 0; i < IMAGES; i++) if (argmax(logits.subarray(i * 10, (i + 1) * 10)) === split.labels[i]) right++;
  t.ok(right / IMAGES >= 0.85, `accuracy ${right / IMAGES}`);
  t.same(Array.from(logits.subarray(0, 40)), Array.from(restLogits), 'identical to REST binary for the first 4');
});

t.test('typed contents (bytes_contents, fp32_contents), classification, a named version', async (t) => {
  const typed = await rpc('ModelInfer', { model_name: MODEL, inputs: [{ name: 'input', datatype: 'BYTES', shape: [4], contents: { bytes_contents: pngs.slice(0, 4) } }] });
  t.same(Array.from(floats(typed.raw_output_contents[0])), Array.from(restLogits), 'bytes_contents');
  const mean = A.manifest.input.mean[0]!;
  const std = A.manifest.input.std[0]!;
  const pixels = Array.from(split.images.subarray(0, 784), (p) => p / (255 * std) - mean / std);
  const fp32 = await rpc('ModelInfer', { model_name: MODEL, inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], contents: { fp32_contents: pixels } }] });
  t.equal(argmax(floats(fp32.raw_output_contents[0])), argmax(restLogits.subarray(0, 10)), 'fp32_contents: same top-1');

  const cls = await rpc('ModelInfer', {
    model_name: MODEL,
    inputs: [{ name: 'input', datatype: 'BYTES', shape: [1] }],
    outputs: [{ name: 'logits', parameters: { classification: { int64_param: 2 } } }],
    raw_input_contents: [lengthPrefixed([pngs[0]!])],
  });
  t.equal(cls.outputs[0].datatype, 'BYTES');
  const raw: Buffer = cls.raw_output_contents[0];
  const first = raw.toString('utf8', 4, 4 + raw.readUInt32LE(0));
  t.match(first, new RegExp(`^-?[\\d.e+-]+:${argmax(restLogits.subarray(0, 10))}:${A.manifest.labels[argmax(restLogits.subarray(0, 10))]}$`));

  const named = await rpc('ModelInfer', { model_name: MODEL, model_version: B.manifest.version, inputs: [{ name: 'input', datatype: 'BYTES', shape: [1] }], raw_input_contents: [lengthPrefixed([pngs[0]!])] });
  t.equal(named.model_version, B.manifest.version, 'a named version reaches B');
});

t.test('errors carry the status of their code in the table', async (t) => {
  const fails = async (method: string, req: object, code: grpc.status, what: string) => {
    const err = await rpc(method, req).then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    t.equal(err?.code, code, `${what}: ${grpc.status[code]}`);
    t.ok((err?.details ?? '').length > 0);
  };
  await fails('ModelMetadata', { name: 'nope' }, grpc.status.NOT_FOUND, 'unknown model');
  await fails('ModelReady', { name: MODEL, version: '9' }, grpc.status.NOT_FOUND, 'unknown version');
  // The model before the body, as Triton: an unknown model with an empty request is NOT_FOUND.
  await fails('ModelInfer', { model_name: 'nope', inputs: [] }, grpc.status.NOT_FOUND, 'unknown model, empty request');
  await fails('ModelInfer', { model_name: MODEL, inputs: [{ name: 'pixels', datatype: 'BYTES', shape: [1] }], raw_input_contents: [lengthPrefixed([pngs[0]!])] }, grpc.status.INVALID_ARGUMENT, 'wrong input name');
  await fails('ModelInfer', { model_name: MODEL, inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28] }], raw_input_contents: [Buffer.alloc(10)] }, grpc.status.INVALID_ARGUMENT, 'raw contents short of the shape');
  await fails('ModelInfer', { model_name: MODEL, inputs: [{ name: 'input', datatype: 'BYTES', shape: [1] }], raw_input_contents: [] }, grpc.status.INVALID_ARGUMENT, 'no contents');
  // Contents of another type: the message names them (before: "needs 784 values, got 0").
  for (const [datatype, contents, shape] of [['FP32', { int_contents: [1, 2, 3] }, [1, 1, 28, 28]], ['BYTES', { fp32_contents: [0.5] }, [1]]] as const) {
    const err = await rpc('ModelInfer', { model_name: MODEL, inputs: [{ name: 'input', datatype, shape, contents }] }).then(() => undefined, (e: grpc.ServiceError) => e);
    t.equal(err?.code, grpc.status.INVALID_ARGUMENT, `${datatype} with ${Object.keys(contents)[0]}`);
    t.match(err?.details, new RegExp(`a ${datatype} input takes ${datatype === 'FP32' ? 'fp32' : 'bytes'}_contents \\(or raw_input_contents\\), not ${Object.keys(contents)[0]}`));
  }
  await fails('ModelInfer', { model_name: MODEL, inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], contents: { bytes_contents: [Buffer.from('text')] } }] }, grpc.status.INVALID_ARGUMENT, 'not an image (unsupported_image)');
  // tritonclient sends priority as Triton's uint64_param: read, not dropped.
  const prioritised = (priority: number) => ({ model_name: MODEL, parameters: { priority: { uint64_param: priority } }, inputs: [{ name: 'input', datatype: 'BYTES', shape: [1] }], raw_input_contents: [lengthPrefixed([pngs[0]!])] });
  await fails('ModelInfer', prioritised(11), grpc.status.INVALID_ARGUMENT, 'a priority past the levels, as uint64_param');
  t.equal((await rpc('ModelInfer', prioritised(1))).outputs.length, 1, 'priority 1 as uint64_param');
  const ok = await rpc('ServerLive', {});
  t.equal(ok.live, true, 'still serving');
});

t.test('every call, not only ModelInfer, carries its trace id and writes one access-log line', async (t) => {
  const withMeta = (method: string, req: object): Promise<{ err: grpc.ServiceError | null; meta: grpc.Metadata | undefined }> =>
    new Promise((resolve) => {
      let meta: grpc.Metadata | undefined;
      const md = new grpc.Metadata();
      md.set('x-request-id', `v2-${method}`);
      const call = client[method](req, md, (err: grpc.ServiceError | null) => resolve({ err, meta: meta ?? err?.metadata }));
      call.on('metadata', (m: grpc.Metadata) => (meta = m));
    });
  const ok = await withMeta('ModelMetadata', { name: MODEL, version: '' });
  t.equal(ok.err, null);
  t.equal(ok.meta?.get('trace-id')[0], 'v2-ModelMetadata');
  const bad = await withMeta('ModelMetadata', { name: 'nope', version: '' });
  t.equal(bad.err?.code, grpc.status.NOT_FOUND);
  t.equal(bad.err?.metadata.get('trace-id')[0], 'v2-ModelMetadata', 'in the error trailers too');
  await withMeta('ServerLive', {});
  await new Promise((r) => setTimeout(r, 200));
  for (const id of ['v2-ModelMetadata', 'v2-ServerLive']) t.ok(tb.logs.some((l) => l['method'] === 'gRPC' && l['trace_id'] === id), `an access-log line for ${id}`);
});
