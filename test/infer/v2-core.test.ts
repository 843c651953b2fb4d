// The v2 core and codec without a broker: the schedule policy parameters reach the
// scheduler as its priority and deadline, a request's own deadline expires it in the
// admission queue, and the binary framing round-trips.
import t from 'tap';
import { AdmissionQueue, type Pending } from '../../src/infer/admission.ts';
import { loadManifest } from '../../src/infer/manifest.ts';
import type { ArmChoice, InferService, ItemsInput } from '../../src/infer/service.ts';
import { V2Core, splitBytes } from '../../src/infer/v2/core.ts';
import { encodeInferResponse, parseInferRequest, serializeBytes } from '../../src/infer/v2/rest.ts';
import type { InferRequest } from '../../src/infer/v2/types.ts';
import type { BrokerError } from '../../src/errors.ts';

const A = loadManifest('models/vA.onnx');
const B = loadManifest('models/vB.onnx');

/** A service that records what the core asks of it and answers zeros. */
function fakeService() {
  const runs: { choice: ArmChoice; input: ItemsInput }[] = [];
  const service = {
    ready: true,
    models: { A, B },
    modelProblems: {} as Record<string, string>,
    // The real one also asks the split for a share (ab.test.ts); here an arm takes traffic unless refused.
    takesTraffic(this: { modelProblems: Record<string, string> }, arm: 'A' | 'B'): boolean {
      return this.modelProblems[arm] === undefined;
    },
    choose(_cookie: string | undefined, named?: 'A' | 'B'): ArmChoice {
      const arm = named ?? 'A';
      return { arm, reason: named ? 'version' : 'weighted', pool: undefined as never, model: arm === 'A' ? A : B };
    },
    // The session metadata, as a pool gives it: the output's dims past the batch.
    currentPool: { metadata: async () => ({ A: { inputs: [], outputs: [{ name: A.manifest.output.name, type: 'float32', shape: [-1, 10] }] }, B: { inputs: [], outputs: [{ name: B.manifest.output.name, type: 'float32', shape: [-1, 10] }] } }) },
    async run(choice: ArmChoice, input: ItemsInput) {
      runs.push({ choice, input });
      return { results: input.items.map((_, i) => ({ predictions: [], scores: new Float32Array(10), queueMs: 1 + i, decodeMs: 0.5, inferMs: 0.25, batchSize: 1 + i })), totalMs: 0 };
    },
  };
  return { service: service as unknown as InferService, runs };
}

const tensor = (parameters: Record<string, unknown>): InferRequest => ({
  inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: { kind: 'raw', bytes: Buffer.alloc(784 * 4) } }],
  parameters,
});

t.test('schedule policy: Triton priority (1 highest) and timeout (µs) reach the scheduler', async (t) => {
  const { service, runs } = fakeService();
  const core = new V2Core(service);
  const cases: [Record<string, unknown>, number | undefined, number | undefined, number | undefined][] = [
    // parameters, x-broker-priority, expected priority (ours: 0-9, higher first), expected timeout ms
    [{ priority: 1 }, undefined, 9, undefined],
    [{ priority: 10 }, undefined, 0, undefined],
    [{ priority: 5 }, 9, 5, undefined],
    [{ priority: 0 }, 3, 3, undefined],
    [{}, undefined, undefined, undefined],
    [{ timeout: 2500 }, undefined, undefined, 2.5],
    [{ timeout: 0 }, undefined, undefined, undefined],
  ];
  for (const [parameters, header, priority, timeoutMs] of cases) {
    await core.infer(A.manifest.name, undefined, tensor(parameters), { headerPriority: header });
    const { input } = runs.at(-1)!;
    t.equal(input.priority, priority, `${JSON.stringify(parameters)} with header ${header}: priority ${priority}`);
    t.equal(input.timeoutMs, timeoutMs, `${JSON.stringify(parameters)}: timeout ${timeoutMs} ms`);
    t.equal(input.tensor, true);
  }
  // Three items: the slowest (the third, 3 ms in the queue) stands for the request in the reply.
  const three: InferRequest = { inputs: [{ name: 'input', datatype: 'FP32', shape: [3, 1, 28, 28], data: { kind: 'raw', bytes: Buffer.alloc(3 * 784 * 4) } }], parameters: {} };
  const reply = await core.infer(A.manifest.name, undefined, three);
  t.same(reply.parameters, { queue_us: 3000, decode_us: 500, infer_us: 250, batch_size: 3 }, 'queue time in the reply, in µs');
  for (const bad of [{ priority: 11 }, { priority: -1 }, { priority: 1.5 }, { priority: 'high' }, { timeout: -1 }, { timeout: 'soon' }]) {
    await t.rejects(core.infer(A.manifest.name, undefined, tensor(bad)), { code: 'invalid_request' }, JSON.stringify(bad));
  }
});

t.test('versions: a named version is that arm, none is the policy, both arms alike is the policy', async (t) => {
  const { service, runs } = fakeService();
  const core = new V2Core(service);
  await core.infer(A.manifest.name, B.manifest.version, tensor({}));
  t.equal(runs.at(-1)!.choice.arm, 'B');
  t.equal(runs.at(-1)!.choice.reason, 'version');
  await core.infer(A.manifest.name, undefined, tensor({}));
  t.equal(runs.at(-1)!.choice.reason, 'weighted');
  const same = fakeService();
  (same.service as unknown as { models: unknown }).models = { A: B, B };
  const promoted = new V2Core(same.service);
  await promoted.infer(B.manifest.name, B.manifest.version, tensor({}));
  t.equal(same.runs.at(-1)!.choice.reason, 'weighted', 'after a promote both arms carry the version: the policy picks');
  await t.rejects(promoted.infer(A.manifest.name, undefined, tensor({})), { code: 'model_not_found' }, 'a name this process never served is not one');
  await t.rejects(core.infer('fashion-typo', undefined, tensor({})), { code: 'model_not_found' });
  // The same process through a promote: the name its clients used still reaches the model.
  (service as unknown as { models: unknown }).models = { A: B, B };
  const before = runs.length;
  const reply = await core.infer(A.manifest.name, undefined, tensor({}));
  t.equal(runs.length, before + 1, "A's old name, after a promote, still reaches the model");
  t.equal(reply.model_name, A.manifest.name, 'named as the request named it');
  await t.rejects(core.infer(A.manifest.name, A.manifest.version, tensor({})), { code: 'model_not_found' }, 'but not its old version, which no arm carries');
});

/** A queue with timeout `timeoutMs`, its pending-request maker, and the rejections it records. */
function admissionQueue(timeoutMs: number) {
  const q = new AdmissionQueue<string>('m', 10, timeoutMs);
  const rejected: string[] = [];
  const pending = (value: string, enqueuedAt: number, deadline?: number): Pending<string> => ({
    value,
    size: undefined,
    priority: 5,
    enqueuedAt,
    reject: (e: BrokerError) => rejected.push(`${value}:${e.code}`),
    ...(deadline !== undefined ? { deadline } : {}),
  });
  return { q, rejected, pending };
}

t.test("admission: a request's own deadline expires it even behind an older request", (t) => {
  const { q, rejected, pending } = admissionQueue(10_000);
  q.push(pending('old', 0));
  q.push(pending('short', 1, 6));
  q.push(pending('long', 2, 100));
  t.equal(q.expire(5), 0, 'nothing due at 5 ms');
  t.equal(q.expire(7), 1);
  t.same(rejected, ['short:queue_timeout']);
  t.equal(q.size, 2);
  t.same(q.take(10, undefined, 7).map((p) => p.value), ['old', 'long']);
  t.end();
});

t.test('admission: a request past its timeout is never taken for a batch, even before the sweep saw it', (t) => {
  const { q, rejected, pending } = admissionQueue(50);
  q.push(pending('late', 0));
  q.push(pending('own', 30, 40));
  q.push(pending('fresh', 30));
  t.same(q.take(10, undefined, 60).map((p) => p.value), ['fresh'], 'a worker freed between sweeps gets only the request still in time');
  t.same(rejected, ['late:queue_timeout', 'own:queue_timeout']);
  t.equal(q.size, 0);
  t.end();
});

t.test('admission: a request taken in the turn it came never times out, even past a short queue.timeout_ms', (t) => {
  // The thread descheduled between the push and the take: 2 ms passed on a 1 ms timeout.
  const { q, rejected, pending } = admissionQueue(1);
  const older = pending('older', 0);
  const p = pending('new', 10);
  q.push(older);
  q.push(p);
  t.same(q.take(10, undefined, 12, new Set([p])).map((x) => x.value), ['new'], 'the request pushed this turn is taken');
  t.same(rejected, ['older:queue_timeout'], 'one that waited before this turn still times out');
  const again = pending('again', 20);
  q.push(again);
  t.same(q.take(10, undefined, 22).map((x) => x.value), [], 'not fresh: it waited, it times out');
  t.same(rejected, ['older:queue_timeout', 'again:queue_timeout']);
  t.end();
});

t.test('admission: a request of several items fits whole or is refused whole', (t) => {
  const { q, pending } = admissionQueue(10_000);
  for (let i = 0; i < 7; i++) q.push(pending(`w${i}`, 0));
  t.equal(q.room, 3);
  t.doesNotThrow(() => q.reserve(3));
  t.throws(() => q.reserve(4), { code: 'overloaded' }, 'four items, three places: refused before any is queued');
  t.equal(q.size, 7, 'nothing was queued by the refusal');
  t.equal(q.rejectedFull, 1);
  // More items than the queue ever holds: no retry could help, so no 503 (with its Retry-After).
  t.throws(() => q.reserve(11), { code: 'invalid_request', message: /at most 10/ }, 'eleven items, ten places in all');
  t.equal(q.rejectedFull, 1, 'not counted as the queue being full');
  t.end();
});

t.test('admission: the items of requests that ended make room for a request of several items', (t) => {
  const { q, pending } = admissionQueue(10_000);
  let gone = false;
  for (let i = 0; i < 6; i++) q.push({ ...pending(`ended${i}`, 0), cancelled: () => gone });
  for (let i = 0; i < 2; i++) q.push(pending(`w${i}`, 0));
  t.throws(() => q.reserve(4), { code: 'overloaded' }, 'eight waiting: no room for four');
  gone = true;
  q.noteCancelled();
  t.equal(q.reserve(4), 6, 'the six items whose request ended leave, and the four fit');
  t.equal(q.size, 2);
  t.equal(q.rejectedFull, 1, 'only the first was refused');
  t.end();
});

t.test('admission: full, a higher priority sheds the newest of the lowest level below it; an ended request makes room first', (t) => {
  const { q, rejected, pending } = admissionQueue(10_000);
  const at = (value: string, priority: number, cancelled = false): Pending<string> => ({ ...pending(value, 0), priority, ...(cancelled ? { cancelled: () => true } : {}) });
  for (let i = 0; i < 4; i++) q.push(at(`p1-${i}`, 1));
  for (let i = 0; i < 3; i++) q.push(at(`p0-${i}`, 0));
  for (let i = 0; i < 3; i++) q.push(at(`p5-${i}`, 5));
  t.equal(q.size, 10, 'full');
  t.equal(q.push(at('urgent', 9)), 1, 'one left to make room');
  t.same(rejected, ['p0-2:overloaded'], 'the newest of the lowest level');
  t.equal(q.shedCount, 1);
  t.throws(() => q.push(at('same', 0)), { code: 'overloaded' }, 'no level below 0: refused');
  t.equal(q.push(at('mid', 5)), 1);
  t.same(rejected.at(-1), 'p0-1:overloaded');
  t.equal(q.rejectedFull, 1);
  // A request that ended (its item cancelled) leaves its place before anyone is shed.
  const { q: q2, rejected: r2, pending: p2 } = admissionQueue(10_000);
  for (let i = 0; i < 9; i++) q2.push({ ...p2(`low-${i}`, 0), priority: 1 });
  q2.push({ ...p2('gone', 0), priority: 1, cancelled: () => true });
  q2.noteCancelled();
  t.equal(q2.push({ ...p2('high', 0), priority: 9 }), 1);
  t.same(r2, [], 'nobody shed: the ended request made room');
  t.equal(q2.size, 10);
  t.end();
});

t.test("admission: a failed request's items still queued are dropped unsent, without replies of their own", (t) => {
  const { q, rejected, pending } = admissionQueue(10_000);
  let failed = false;
  const item = (v: string): Pending<string> => ({ ...pending(v, 0), cancelled: () => failed });
  q.push(item('a1'));
  q.push(pending('other', 1));
  q.push(item('a2'));
  failed = true;
  q.noteCancelled();
  t.same(q.take(10, undefined, 2).map((p) => p.value), ['other'], 'only the live request is taken');
  t.same(rejected, [], 'the dropped items answer nothing: their request already failed');
  t.equal(q.size, 0);
  t.end();
});

t.test('admission: an own deadline shorter than the turn does not expire a request taken in the turn it came', (t) => {
  const { q, rejected, pending } = admissionQueue(10_000);
  const now = pending('now', 10, 10.001);
  q.push(now);
  q.push(pending('waited', 0, 0.001));
  t.same(q.take(10, undefined, 10.05, new Set([now])).map((p) => p.value), ['now'], 'a 1 µs timeout on an idle worker is served');
  t.same(rejected, ['waited:queue_timeout'], 'one that did wait still times out');
  t.end();
});

t.test('binary framing: BYTES elements round-trip; bad framing is invalid_request', (t) => {
  const elements = [Buffer.from('abc'), Buffer.alloc(0), Buffer.from([0, 1, 2, 255])];
  t.same(splitBytes(serializeBytes(elements), 'x').map((b) => [...b]), elements.map((b) => [...b]));
  t.throws(() => splitBytes(Buffer.from([5, 0, 0, 0, 1]), 'x'), { code: 'invalid_request' });
  t.throws(() => splitBytes(Buffer.from([5, 0]), 'x'), { code: 'invalid_request' });

  const data = serializeBytes([Buffer.from('img')]);
  const head = Buffer.from(JSON.stringify({ id: '7', inputs: [{ name: 'input', shape: [1], datatype: 'BYTES', parameters: { binary_data_size: data.length } }], parameters: { binary_data_output: true } }));
  const req = parseInferRequest(Buffer.concat([head, data]), String(head.length));
  t.equal(req.id, '7');
  t.equal(req.parameters['binary_data_output'], true);
  const d = req.inputs[0]!.data;
  t.equal(d.kind, 'raw');
  t.same(d.kind === 'raw' ? [...d.bytes] : [], [...data]);
  for (const [body, header] of [
    [head, 'abc'],
    [head, String(head.length + 1)],
    [Buffer.concat([head, data, Buffer.from('x')]), String(head.length)],
  ] as const) {
    t.throws(() => parseInferRequest(body, header), { code: 'invalid_request' }, `header ${header}, body of ${body.length}`);
  }
  t.throws(() => parseInferRequest(Buffer.from('[1]'), undefined), { code: 'invalid_json' });
  // null stands for absent, as pydantic-built clients (MLServer's types) send the optional fields.
  const nulls = parseInferRequest(Buffer.from(JSON.stringify({ id: null, outputs: null, parameters: null, inputs: [{ name: 'input', shape: [1], datatype: 'FP32', data: [1], parameters: { binary_data_size: null } }] })), undefined);
  t.same([nulls.id, nulls.outputs, nulls.parameters, nulls.inputs[0]!.data], [undefined, undefined, {}, { kind: 'json', values: [1] }]);
  t.throws(() => parseInferRequest(Buffer.from(JSON.stringify({ id: 7, inputs: [{ name: 'input', shape: [1], datatype: 'FP32', data: [1] }] })), undefined), { code: 'invalid_request', message: 'id must be a string' });
  // data and binary data for one input: which one counts would be a guess.
  const both = Buffer.from(JSON.stringify({ inputs: [{ name: 'input', shape: [1], datatype: 'BYTES', data: ['x'], parameters: { binary_data_size: data.length } }] }));
  t.throws(() => parseInferRequest(Buffer.concat([both, data]), String(both.length)), { code: 'invalid_request', message: /data and parameters.binary_data_size together/ });
  t.end();
});

t.test('responses: binary outputs follow the JSON header, its length in Inference-Header-Content-Length', (t) => {
  const scores = Float32Array.from([1.5, -2.25, 3]);
  const reply = {
    model_name: 'm',
    model_version: '1',
    outputs: [
      { name: 'logits', datatype: 'FP32' as const, shape: [1, 3], data: scores, requested: undefined },
      { name: 'logits', datatype: 'BYTES' as const, shape: [1, 1], data: ['3:2:c'], requested: { name: 'logits', parameters: { binary_data: false } } },
    ],
    parameters: { queue_us: 120, decode_us: 900, infer_us: 40, batch_size: 3 },
    arm: 'A' as const,
    named: false,
  };
  const { headers, body } = encodeInferResponse(reply, true);
  t.equal(headers['content-type'], 'application/octet-stream');
  const buf = body as Buffer;
  const hl = Number(headers['inference-header-content-length']);
  const head = JSON.parse(buf.toString('utf8', 0, hl));
  t.same(head.outputs[0], { name: 'logits', datatype: 'FP32', shape: [1, 3], parameters: { binary_data_size: 12 } });
  t.same(head.outputs[1].data, ['3:2:c'], 'binary_data: false on the output beats binary_data_output');
  t.same(head.parameters, { queue_us: 120, decode_us: 900, infer_us: 40, batch_size: 3 }, 'queue, decode and compute time in the response parameters');
  t.same([...new Float32Array(buf.buffer.slice(buf.byteOffset + hl, buf.byteOffset + hl + 12))], [...scores]);
  const plain = encodeInferResponse(reply, false);
  t.equal(plain.headers['content-type'], 'application/json');
  t.same(JSON.parse(plain.body as string).outputs[0].data, [1.5, -2.25, 3]);
  // NaN would be written as null in JSON: such an output is refused before it counts (misfit.test.ts), and served as binary.
  const broken = { ...reply, outputs: [{ name: 'logits', datatype: 'FP32' as const, shape: [1, 3], data: Float32Array.from([1, NaN, Infinity]), requested: undefined }] };
  const asBinary = encodeInferResponse(broken, true).body as Buffer;
  t.ok(Number.isNaN(new Float32Array(asBinary.buffer.slice(asBinary.length - 12 + asBinary.byteOffset, asBinary.byteOffset + asBinary.length))[1]), 'binary carries NaN as it is');
  t.end();
});

t.test('no version, A and B with differently named inputs: a request goes to the arm its input fits', async (t) => {
  const { service, runs } = fakeService();
  const B2 = { ...B, manifest: { ...B.manifest, input: { ...B.manifest.input, name: 'pixels' } } };
  Object.assign(service, {
    models: { A, B: B2 },
    modelProblems: {},
    choose: (_cookie: string | undefined, named?: 'A' | 'B'): ArmChoice => ({ arm: named ?? 'A', reason: named ? 'version' : 'weighted', pool: undefined as never, model: named === 'B' ? B2 : A }),
  });
  const core = new V2Core(service);
  const req = (name: string): InferRequest => ({ inputs: [{ name, datatype: 'FP32', shape: [1, 1, 28, 28], data: { kind: 'raw', bytes: Buffer.alloc(784 * 4) } }], parameters: {} });
  // The split (the fake's choose) always picks A.
  const toB = await core.infer(A.manifest.name, undefined, req('pixels'));
  t.equal(toB.arm, 'B', "B's input name reaches B");
  t.equal(toB.named, true, 'pinned like a named version: no sticky cookie for it');
  t.equal(runs.at(-1)!.choice.arm, 'B');
  const toA = await core.infer(A.manifest.name, undefined, req('input'));
  t.equal(toA.arm, 'A', "A's own input stays with the split's choice");
  t.equal(toA.named, false);
  // Named version A with B's input name is still the client's mistake.
  await t.rejects(core.infer(A.manifest.name, A.manifest.version, req('pixels')), { code: 'invalid_request' });
  // B refused at load: nowhere to go, the mismatch is reported against A.
  Object.assign(service, { modelProblems: { B: 'refused' } });
  await t.rejects(core.infer(A.manifest.name, undefined, req('pixels')), { code: 'invalid_request' });
});

t.test('no version, A and B with differently named inputs: a tensor fitting neither is judged by the arm whose input it names', async (t) => {
  const { service } = fakeService();
  const B2 = { ...B, manifest: { ...B.manifest, input: { ...B.manifest.input, name: 'pixels' } } };
  // The split picks B this time; the request names A's input with a shape A does not take.
  Object.assign(service, {
    models: { A, B: B2 },
    modelProblems: {},
    choose: (_cookie: string | undefined, named?: 'A' | 'B'): ArmChoice => ({ arm: named ?? 'B', reason: named ? 'version' : 'weighted', pool: undefined as never, model: (named ?? 'B') === 'B' ? B2 : A }),
  });
  const core = new V2Core(service);
  const req: InferRequest = { inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 2, 28, 28], data: { kind: 'raw', bytes: Buffer.alloc(2 * 784 * 4) } }], parameters: {} };
  await t.rejects(core.infer(A.manifest.name, undefined, req), { code: 'invalid_request', message: /FP32 input input must have shape \[N,1,28,28\]/ }, "A's shape error, not 'no input input; its input is pixels'");
});

t.test('no version, A and B with the same input name but other shapes: an FP32 tensor goes to the arm its shape fits', async (t) => {
  const { service, runs } = fakeService();
  // B takes 3-channel NHWC 32x32 under the same input name.
  const B3 = { ...B, manifest: { ...B.manifest, input: { ...B.manifest.input, layout: 'NHWC' as const, channels: 3 as const, height: 32, width: 32, mean: [0, 0, 0], std: [1, 1, 1] } } };
  Object.assign(service, {
    models: { A, B: B3 },
    modelProblems: {},
    choose: (_cookie: string | undefined, named?: 'A' | 'B'): ArmChoice => ({ arm: named ?? 'A', reason: named ? 'version' : 'weighted', pool: undefined as never, model: named === 'B' ? B3 : A }),
  });
  const core = new V2Core(service);
  const req = (shape: number[]): InferRequest => ({ inputs: [{ name: 'input', datatype: 'FP32', shape, data: { kind: 'raw', bytes: Buffer.alloc(shape.reduce((a, b) => a * b, 1) * 4) } }], parameters: {} });
  const toB = await core.infer(A.manifest.name, undefined, req([1, 32, 32, 3]));
  t.equal(toB.arm, 'B', "B's shape reaches B");
  t.equal(runs.at(-1)!.choice.arm, 'B');
  t.equal((await core.infer(A.manifest.name, undefined, req([1, 1, 28, 28]))).arm, 'A', "A's shape stays with the split's choice");
  await t.rejects(core.infer(A.manifest.name, undefined, req([1, 2, 28, 28])), { code: 'invalid_request', message: /must have shape/ }, 'a shape neither takes is reported against the split\'s choice');
});

t.test('metadata lists the output the broker serves, not every output of the graph', async (t) => {
  const { service } = fakeService();
  const twoOutputs = { inputs: [], outputs: [{ name: 'features', type: 'float32', shape: [-1, 64] }, { name: A.manifest.output.name, type: 'float16', shape: [-1, 10] }] };
  (service as unknown as { currentPool: unknown }).currentPool = { metadata: async () => ({ A: twoOutputs, B: twoOutputs }) };
  const meta = await new V2Core(service).modelMetadata(A.manifest.name, undefined);
  t.same(meta.outputs, [{ name: A.manifest.output.name, datatype: 'FP32', shape: [-1, 10] }], 'asking for every listed output must not be refused');
});

t.test('one output asked for twice (plain, then as classification): 400, not one of them dropped', async (t) => {
  const { service, runs } = fakeService();
  const req = { ...tensor({}), outputs: [{ name: A.manifest.output.name, parameters: {} }, { name: A.manifest.output.name, parameters: { classification: 2 } }] };
  await t.rejects(new V2Core(service).infer(A.manifest.name, undefined, req), { code: 'invalid_request', message: /more than once/ });
  t.equal(runs.length, 0, 'nothing computed');
});

t.test('a classification count past the classes is refused before any image runs', async (t) => {
  const { service, runs } = fakeService();
  const req = { ...tensor({}), outputs: [{ name: A.manifest.output.name, parameters: { classification: A.manifest.labels.length + 1 } }] };
  await t.rejects(new V2Core(service).infer(A.manifest.name, undefined, req), { code: 'invalid_request', message: /classification/ });
  t.equal(runs.length, 0, 'nothing computed, nothing counted as served');
});

t.test('a classification of an output holding NaN is refused (it cannot be ranked), as JSON of it is', async (t) => {
  const { service } = fakeService();
  const scores = Float32Array.from([0.5, NaN, 0.1, 0, 0, 0, 0, 0, 0, 0.2]);
  (service as unknown as { run: unknown }).run = async (_choice: ArmChoice, input: ItemsInput) => {
    const results = input.items.map(() => ({ predictions: [], scores, queueMs: 0, decodeMs: 0, inferMs: 0, batchSize: 1, taskImages: 1 }));
    input.check?.(results);
    return { results, totalMs: 0 };
  };
  const core = new V2Core(service);
  const req = (k: number) => ({ ...tensor({}), outputs: [{ name: A.manifest.output.name, parameters: { classification: k } }] });
  // Before: 200 ["NaN:1:…"] at k=1 (NaN ranked best), a list out of order at larger k.
  await t.rejects(core.infer(A.manifest.name, undefined, req(1)), { code: 'internal', message: /NaN/ });
  await t.rejects(core.infer(A.manifest.name, undefined, req(3)), { code: 'internal', message: /NaN/ });
  // ±Infinity ranks as it is.
  const inf = Float32Array.from([0.5, Infinity, 0.1, -Infinity, 0, 0, 0, 0, 0, 0.2]);
  (service as unknown as { run: unknown }).run = async (_choice: ArmChoice, input: ItemsInput) => {
    const results = input.items.map(() => ({ predictions: [], scores: inf, queueMs: 0, decodeMs: 0, inferMs: 0, batchSize: 1, taskImages: 1 }));
    input.check?.(results);
    return { results, totalMs: 0 };
  };
  const reply = await core.infer(A.manifest.name, undefined, req(2));
  t.same(reply.outputs[0]!.data, [`Infinity:1:${A.manifest.labels[1]}`, `0.5:0:${A.manifest.labels[0]}`]);
});

t.test('binary_data that is not a boolean is 400, not ignored', async (t) => {
  const { service, runs } = fakeService();
  for (const v of ['true', 1, 'yes']) {
    const req = { ...tensor({}), outputs: [{ name: A.manifest.output.name, parameters: { binary_data: v } }] };
    await t.rejects(new V2Core(service).infer(A.manifest.name, undefined, req, { jsonFloats: { binaryByDefault: false } } as never), { code: 'invalid_request', message: /binary_data/ }, JSON.stringify(v));
  }
  t.equal(runs.length, 0);
});

t.test("a version that failed its model check has no config to describe: model_unavailable, as its requests (its metadata stays readable)", async (t) => {
  const { service } = fakeService();
  (service as unknown as { modelProblems: Record<string, string> }).modelProblems['B'] = 'model B: output label is int64, not a float tensor';
  await t.rejects(new V2Core(service).modelConfig(A.manifest.name, B.manifest.version), { code: 'model_unavailable', message: /int64/ });
});
