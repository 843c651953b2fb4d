// InferenceService and ModelService over gRPC, on the real models and Fashion-MNIST.
import t from 'tap';
import { status as Status, type ClientDuplexStream } from '@grpc/grpc-js';
import { fashionPngs, mapLimit } from '../helpers/images.ts';
import { metricValue } from '../helpers/broker.ts';
import { clients, md, readAll, startGrpcBroker, unary } from '../helpers/grpc.ts';

const images = (await fashionPngs(240)).map((i) => ({ png: Buffer.from(i.b64, 'base64'), label: i.label }));
const tb = await startGrpcBroker();
t.teardown(() => tb.close());
const c = clients(tb.broker.grpcPort);
t.teardown(() => c.close());

t.test('unary Infer on 240 Fashion-MNIST test images: accuracy >= 0.85, the HTTP reply fields', async (t) => {
  const replies = await mapLimit(images, 8, (img) => unary(c.inference, 'Infer', { image: img.png, top_k: 3 }, md({ 'x-request-id': 'infer-1' })));
  t.ok(replies.every((r) => r.error === null), 'every image answered');
  const correct = replies.filter((r, i) => r.value!.predictions[0].index === images[i]!.label).length;
  const accuracy = correct / images.length;
  t.ok(accuracy >= 0.85, `accuracy ${accuracy.toFixed(3)} >= 0.85`);
  const r = replies[0]!.value!;
  t.equal(r.predictions.length, 3, 'top_k honoured');
  t.match(r, { arm: 'A', model: String, version: String, batch_size: Number, trace_id: 'infer-1', timings: { decode_ms: Number, queue_ms: Number, infer_ms: Number, total_ms: Number } });
  t.ok(r.predictions[0].score >= r.predictions[1].score, 'most likely first');
  t.equal(replies[0]!.metadata?.get('trace-id')[0], 'infer-1', 'trace-id in the initial metadata');
  t.equal(await metricValue(tb.url, 'grpc_server_handled_total', { grpc_service: 'edge_broker.v1.InferenceService', grpc_method: 'Infer', grpc_code: 'OK' }), images.length, 'go-grpc-prometheus counters');
  t.equal(await metricValue(tb.url, 'grpc_server_msg_received_total', { grpc_method: 'Infer', grpc_type: 'unary' }), images.length);
});

t.test('Infer refuses bad input with INVALID_ARGUMENT and keeps serving', async (t) => {
  const cases: [string, unknown, string][] = [
    ['no image', {}, 'invalid_image'],
    ['not an image', { image: Buffer.from('definitely not a png') }, 'unsupported_image'],
    ['img_size that does not fit', { image: images[0]!.png, img_size: 64 }, 'invalid_img_size'],
    ['top_k 0', { image: images[0]!.png, top_k: 0 }, 'invalid_request'],
    ['unknown arm', { image: images[0]!.png, arm: 'C' }, 'invalid_request'],
  ];
  for (const [name, req, code] of cases) {
    const r = await unary(c.inference, 'Infer', req);
    t.equal(r.error?.code, Status.INVALID_ARGUMENT, `${name}: INVALID_ARGUMENT`);
    t.equal(r.error?.metadata.get('x-broker-error-code')[0], code, `${name}: ${code}`);
  }
  const ok = await unary(c.inference, 'Infer', { image: images[0]!.png });
  t.equal(ok.error, null, 'still serving');
});

t.test('InferStream answers in the order the images were sent, a bad image included', async (t) => {
  const call = c.inference.InferStream() as ClientDuplexStream<unknown, any>;
  const done = readAll(call);
  const sent = images.slice(0, 150);
  for (let i = 0; i < sent.length; i++) {
    call.write(i === 7 ? { image: Buffer.from('not an image') } : { image: sent[i]!.png, top_k: 1 });
  }
  call.end();
  const r = await done;
  t.equal(r.status.code, Status.OK);
  t.equal(r.messages.length, sent.length, 'one answer per image');
  t.same(
    r.messages.map((m) => m.index),
    sent.map((_, i) => i),
    'in order',
  );
  t.equal(r.messages[7].outcome, 'error');
  t.equal(r.messages[7].error.code, 'unsupported_image');
  t.equal(r.messages[7].error.grpc_code, Status.INVALID_ARGUMENT);
  // Each answer is its own image's: the stream's predictions match unary ones.
  const unaryTop = await mapLimit(sent, 8, async (img) => (await unary(c.inference, 'Infer', { image: img.png, top_k: 1 })).value!.predictions[0].index);
  const mismatched = r.messages.filter((m, i) => i !== 7 && m.result.predictions[0].index !== unaryTop[i]).length;
  t.equal(mismatched, 0, 'every result belongs to the image at its position');
});

t.test('a message larger than MAX_BODY_BYTES is refused with RESOURCE_EXHAUSTED', async (t) => {
  const r = await unary(c.inference, 'Infer', { image: Buffer.alloc(tb.broker.config.maxBodyBytes + 1024, 1) });
  t.equal(r.error?.code, Status.RESOURCE_EXHAUSTED);
  const ok = await unary(c.inference, 'Infer', { image: images[0]!.png });
  t.equal(ok.error, null, 'still serving');
});

t.test('ListModels: LLM groups and the image models', async (t) => {
  const r = await unary(c.models, 'ListModels', {});
  t.equal(r.error, null);
  const image = r.value.models.filter((m: any) => m.kind === 'image_classifier');
  t.same(
    image.map((m: any) => m.arm),
    ['A', 'B'],
  );
  t.ok(image.every((m: any) => m.id !== '' && m.version !== ''));
});

t.test('shutdown while an InferStream waits on a client that stopped reading: UNAVAILABLE, and the broker closes cleanly', async (t) => {
  const nb = await startGrpcBroker();
  const nc = clients(nb.broker.grpcPort);
  t.teardown(() => nc.close());
  const call = nc.inference.InferStream() as ClientDuplexStream<unknown, any>;
  const ended = new Promise<number>((resolve) => call.on('error', (e: { code: number }) => resolve(e.code)).on('status', (s: { code: number }) => resolve(s.code)));
  // Never read: results pile up until the server's writes wait for 'drain'.
  for (let i = 0; i < 800; i++) call.write({ image: images[i % images.length]!.png, top_k: 10 });
  for (let i = 0; i < 400 && (await metricValue(nb.url, 'inference_request_success_total')) < 600; i++) await new Promise((r) => setTimeout(r, 25));
  await nb.broker.close(300);
  call.resume();
  t.equal(await ended, Status.UNAVAILABLE, 'the stream ends UNAVAILABLE (shutting down)');
  t.pass('the broker closed: no unhandled rejection from the write waiting for drain');
});

// RATE_LIMIT_RPS is spent per call: an InferStream judged its credentials and rate per image,
// so under a rate of 1 a stream of 20 images had 19 answered rate_limited under status OK.
t.test('InferStream spends one rate token for the stream, not one per image; past the bucket the whole stream is refused', async (t) => {
  const limited = await startGrpcBroker({ RATE_LIMIT_RPS: '1', RATE_LIMIT_BURST: '1' });
  t.teardown(() => limited.close());
  const lc = clients(limited.broker.grpcPort);
  t.teardown(() => lc.close());
  const stream = async (n: number) => {
    const call = lc.inference.InferStream() as ClientDuplexStream<unknown, any>;
    const done = readAll(call);
    for (let i = 0; i < n; i++) call.write({ image: images[i]!.png, top_k: 1 });
    call.end();
    return done;
  };
  const first = await stream(20);
  t.equal(first.status.code, Status.OK);
  t.equal(first.messages.length, 20);
  t.same(first.messages.filter((m) => m.outcome !== 'result').map((m) => m.error?.code), [], 'every image answered');
  const second = await stream(5);
  t.equal(second.status.code, Status.RESOURCE_EXHAUSTED, 'the next stream, past the bucket: refused as a whole');
  t.same(second.status.metadata.get('x-broker-error-code'), ['rate_limited']);
  t.equal(second.messages.length, 0, 'no image answered one by one');
});
