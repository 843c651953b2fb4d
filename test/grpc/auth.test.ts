// AUTH_MODE on the gRPC client services: a missing or unknown credential is
// UNAUTHENTICATED, a known API key or a session passes, as on the HTTP client routes;
// KServe v2's ModelInfer as the broker's own Infer.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { V2_PROTO } from '../../src/infer/v2/grpc.ts';
import { startMock } from '../helpers/fleet.ts';
import { clients, md, serverStream, startGrpcFleetBroker, textOf, unary } from '../helpers/grpc.ts';
import { PROTO_FILES, PROTO_ROOT } from '../../src/front/grpc/protos.ts';
import { metricValue } from '../helpers/broker.ts';

t.test('AUTH_MODE=keys: UNAUTHENTICATED without a known key; a file key and a session pass', async (t) => {
  const m = await startMock(t, { tokens: 3 });
  const tb = await startGrpcFleetBroker(t, { apiKeys: { 'sk-grpc-1': { tier: 'standard' } }, modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: m.url, model: 'm' }] } } }, { AUTH_MODE: 'keys' });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  const hello = { model: 'g', messages: [{ role: 'user', content: 'hello' }] };
  const none = await serverStream(c.chat, 'Chat', hello);
  t.equal(none.status.code, Status.UNAUTHENTICATED, 'no credential');
  t.same(none.status.metadata.get('x-broker-error-code'), ['unauthorized']);
  t.equal((await serverStream(c.chat, 'Chat', hello, md({ 'x-api-key': 'sk-made-up' }))).status.code, Status.UNAUTHENTICATED, 'an unknown key');
  t.equal(m.stats.requests['/v1/chat/completions'], 0, 'nothing reached the upstream');
  // The key twice is the client's mistake (HTTP: 400), not an unknown key.
  const twice = new grpc.Metadata();
  twice.add('x-api-key', 'sk-grpc-1');
  twice.add('x-api-key', 'sk-grpc-1');
  const dup = await serverStream(c.chat, 'Chat', hello, twice);
  t.equal(dup.status.code, Status.INVALID_ARGUMENT, 'x-api-key twice: INVALID_ARGUMENT');
  t.match(dup.status.details, /x-api-key appears more than once/);
  const ok = await serverStream(c.chat, 'Chat', hello, md({ authorization: 'Bearer sk-grpc-1' }));
  t.equal(ok.status.code, Status.OK);
  t.ok(textOf(ok.messages).length > 0);
  const session = (await (await fetch(`${tb.url}/api/auth/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ api_key: 'sk-grpc-1' }) })).json()) as { session: string };
  t.equal((await serverStream(c.chat, 'Chat', hello, md({ 'x-api-key': session.session }))).status.code, Status.OK, 'a session');
  t.equal((await unary(c.inference, 'Infer', { image: Buffer.from([1, 2, 3]) })).error?.code, Status.UNAUTHENTICATED, 'Infer too');
  // InferStream: the stream's credential is refused as a whole, not image by image under an OK status.
  const stream = c.inference.InferStream() as grpc.ClientDuplexStream<unknown, unknown>;
  const got: unknown[] = [];
  stream.on('data', (m) => got.push(m));
  const ended = new Promise<grpc.ServiceError | undefined>((r) => {
    stream.on('error', (e: grpc.ServiceError) => r(e));
    stream.on('end', () => r(undefined));
  });
  stream.write({ image: Buffer.from([1, 2, 3]) });
  stream.end();
  const err = await ended;
  t.equal(err?.code, Status.UNAUTHENTICATED, 'InferStream without a key fails UNAUTHENTICATED');
  t.same(err?.metadata.get('x-broker-error-code'), ['unauthorized']);
  // KServe v2's ModelInfer too; with a key it passes, to inference (turned off here).
  const v2 = new (grpc.loadPackageDefinition(protoLoader.loadSync(V2_PROTO, { keepCase: true, longs: Number, defaults: true, oneofs: true })) as any).inference.GRPCInferenceService(c.address, grpc.credentials.createInsecure());
  t.teardown(() => v2.close());
  const infer = { model_name: 'm', inputs: [{ name: 'input', datatype: 'BYTES', shape: [1] }], raw_input_contents: [Buffer.from([0, 0, 0, 0])] };
  t.equal((await unary(v2, 'ModelInfer', infer)).error?.code, Status.UNAUTHENTICATED, 'ModelInfer without a key');
  const keyed = await unary(v2, 'ModelInfer', infer, md({ 'x-api-key': 'sk-grpc-1' }));
  t.same([keyed.error?.code, keyed.error?.metadata.get('x-broker-error-code')], [Status.UNAVAILABLE, ['inference_disabled']], 'ModelInfer with a key');
});

// grpc-js clients refuse to send authorization twice; C-core, Go and Java clients do not, and
// Node's HTTP/2 layer kept only the first: the call was judged on it. The frames by hand.
t.test('authorization twice (as a C-core client sends it) is INVALID_ARGUMENT, not judged on the first', async (t) => {
  const m = await startMock(t, { tokens: 3 });
  const tb = await startGrpcFleetBroker(t, { apiKeys: { 'sk-grpc-1': {} }, modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: m.url, model: 'm' }] } } }, { AUTH_MODE: 'keys' });
  const { connect } = await import('node:net');
  const chat = (grpc.loadPackageDefinition(protoLoader.loadSync([...PROTO_FILES], { keepCase: true, includeDirs: [PROTO_ROOT] })) as any).edge_broker.v1.ChatService.service.Chat;
  const frame = (type: number, flags: number, stream: number, payload: Buffer): Buffer => {
    const h = Buffer.alloc(9);
    h.writeUIntBE(payload.length, 0, 3);
    h[3] = type;
    h[4] = flags;
    h.writeUInt32BE(stream, 5);
    return Buffer.concat([h, payload]);
  };
  // HPACK: each field a literal without indexing, new name, no Huffman (lengths under 127).
  const hpack = (fields: Array<[string, string]>): Buffer => Buffer.concat(fields.flatMap(([k, v]) => [Buffer.from([0, k.length]), Buffer.from(k), Buffer.from([v.length]), Buffer.from(v)]));
  const call = (auth: string[]): Promise<void> =>
    new Promise((resolve) => {
      const sock = connect(tb.broker.grpcPort, '127.0.0.1');
      const message = chat.requestSerialize({ model: 'g', messages: [{ role: 'user', content: 'hello' }] }) as Buffer;
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(message.length, 1);
      const headers = hpack([[':method', 'POST'], [':scheme', 'http'], [':path', chat.path], [':authority', 'x'], ['content-type', 'application/grpc'], ['te', 'trailers'], ...auth.map((a): [string, string] => ['authorization', a])]);
      sock.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(4, 0, 0, Buffer.alloc(0)), frame(1, 4, 1, headers), frame(0, 1, 1, Buffer.concat([prefix, message]))]));
      // The reply's trailers are HPACK-coded; what went upstream and the counters say enough.
      setTimeout(() => (sock.destroy(), resolve()), 1500);
    });
  await call(['Bearer sk-grpc-1']);
  t.equal(m.stats.requests['/v1/chat/completions'], 1, 'the frames by hand make a call: one key passes');
  await call(['Bearer sk-grpc-1', 'Bearer sk-nope']);
  await call(['Bearer sk-nope', 'Bearer sk-grpc-1']);
  t.equal(m.stats.requests['/v1/chat/completions'], 1, 'neither call with two went upstream');
  t.equal(await metricValue(tb.url, 'grpc_server_handled_total', { grpc_method: 'Chat', grpc_code: 'InvalidArgument' }), 2, 'both refused as the client\'s mistake');
});

t.test('refused keys spend the address rate, as on HTTP: guessing keys over gRPC is throttled (RESOURCE_EXHAUSTED)', async (t) => {
  const m = await startMock(t, { tokens: 3 });
  const tb = await startGrpcFleetBroker(t, { apiKeys: { 'sk-grpc-1': {} }, modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: m.url, model: 'm' }] } } }, { AUTH_MODE: 'keys', RATE_LIMIT_RPS: '1', RATE_LIMIT_BURST: '3' });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  const codes: number[] = [];
  for (let i = 0; i < 6; i++) codes.push((await unary(c.inference, 'Infer', { image: Buffer.from([1, 2, 3]) }, md({ 'x-api-key': `sk-guess-${i}` }))).error!.code);
  t.same(codes.slice(0, 3), [Status.UNAUTHENTICATED, Status.UNAUTHENTICATED, Status.UNAUTHENTICATED], 'the burst');
  t.ok(codes.slice(3).every((c) => c === Status.RESOURCE_EXHAUSTED), `then throttled: ${codes.join(',')}`);
});
