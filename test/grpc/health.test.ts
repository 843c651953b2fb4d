// Health (Check, Watch), reflection (v1 and v1alpha, and a client built only from it),
// and graceful shutdown with open streams.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import descriptor from 'protobufjs/ext/descriptor/index.js';
import { startMock } from '../helpers/fleet.ts';
import { clients, descriptorSet, readAll, reflectionClient, serverStream, startGrpcFleetBroker, textOf, unary } from '../helpers/grpc.ts';
import { mockText } from '../../src/mock-upstream/server.ts';

const hello = (model: string) => ({ model, messages: [{ role: 'user', content: 'hello' }] });

function reflect(client: any, request: unknown): Promise<any> {
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on('data', (r: any) => {
      resolve(r);
      call.end();
    });
    call.on('error', reject);
    call.write(request);
  });
}

t.test('reflection lists the services (v1 and v1alpha); a client built only from reflection calls Chat', async (t) => {
  const m = await startMock(t, { tokens: 5 });
  const tb = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'r-1', provider: 'openai', url: m.url, model: 'mock-model' }] } } });
  for (const version of ['v1', 'v1alpha'] as const) {
    const rc = reflectionClient(tb.broker.grpcPort, version);
    t.teardown(() => rc.close());
    const list = await reflect(rc, { list_services: '' });
    const names = list.list_services_response.service.map((s: any) => s.name);
    // The reflection services list themselves too, as a Go or Java server's do.
    for (const s of ['edge_broker.v1.InferenceService', 'edge_broker.v1.ChatService', 'edge_broker.v1.ModelService', 'grpc.health.v1.Health', 'inference.GRPCInferenceService', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection']) t.ok(names.includes(s), `${version} lists ${s}`);
  }
  // An `optional` field is served as one (proto3_optional), not as a oneof of its own: what grpcurl describe and protodesc read.
  const optionals = await reflect(reflectionClient(tb.broker.grpcPort, 'v1'), { file_containing_symbol: 'edge_broker.v1.GenerateOptions' });
  const fields = optionals.file_descriptor_response.file_descriptor_proto
    .map((b: Buffer) => descriptor.FileDescriptorProto.decode(b) as any)
    .flatMap((f: any) => f.messageType ?? [])
    .find((m: any) => m.name === 'GenerateOptions').field;
  const byName = Object.fromEntries(fields.map((f: any) => [f.name, f.proto3Optional === true]));
  t.match(byName, { max_tokens: true, temperature: true, top_p: true, seed: true }, 'each optional field says so');
  const rc = reflectionClient(tb.broker.grpcPort, 'v1');
  t.teardown(() => rc.close());
  const files = await reflect(rc, { file_containing_symbol: 'edge_broker.v1.ChatService' });
  const set = descriptorSet(files.file_descriptor_response.file_descriptor_proto);
  const def = protoLoader.loadFileDescriptorSetFromBuffer(set, { keepCase: true, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(def) as any;
  const chat = new pkg.edge_broker.v1.ChatService(`127.0.0.1:${tb.broker.grpcPort}`, grpc.credentials.createInsecure());
  t.teardown(() => chat.close());
  const r = await serverStream(chat, 'Chat', hello('g'));
  t.equal(r.status.code, grpc.status.OK);
  t.equal(textOf(r.messages), mockText(5), 'the reflected client reads the stream');
  t.equal(r.messages.at(-1).final.finish_reason, 'stop');
});

// With data-plane threads, and on one thread, where gRPC shares the HTTP proxy (its streams were cut as soon as HTTP was idle).
for (const threads of ['2', '0']) t.test(`health Check and Watch; shutdown: NOT_SERVING, streams finish within the grace period, the rest end UNAVAILABLE (FRONT_THREADS=${threads})`, async (t) => {
  const fast = await startMock(t, { tokens: 10, tps: 20 });
  const slow = await startMock(t, { tokens: 100_000, tps: 50 });
  const tb = await startGrpcFleetBroker(t, {
    modelGroups: {
      short: { deployments: [{ id: 'short-1', provider: 'openai', url: fast.url, model: 'mock-model' }] },
      long: { deployments: [{ id: 'long-1', provider: 'ollama', url: slow.url, model: 'mock-model' }] },
    },
  }, { FRONT_THREADS: threads });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());

  const check = async (service: string) => (await unary(c.health, 'Check', { service })).value?.status;
  t.equal(await check(''), 'SERVING', 'the broker');
  t.equal(await check('edge_broker.v1.ChatService'), 'SERVING');
  t.equal(await check('edge_broker.v1.ModelService'), 'SERVING');
  t.equal(await check('edge_broker.v1.InferenceService'), 'NOT_SERVING', 'inference is turned off here');
  t.equal(await check('inference.GRPCInferenceService'), 'NOT_SERVING', "so is KServe v2's, which serves the same models");
  t.equal(await check('grpc.health.v1.Health'), 'SERVING', 'the health service itself, by name');
  t.equal(await check('grpc.reflection.v1.ServerReflection'), 'SERVING');
  t.equal((await unary(c.health, 'Check', { service: 'no.such.Service' })).error?.code, grpc.status.NOT_FOUND, 'unknown service: NOT_FOUND');

  const watch = c.health.Watch({ service: 'edge_broker.v1.ChatService' });
  const watched = readAll<any>(watch);
  const unknownWatch = c.health.Watch({ service: 'no.such.Service' });
  const firstUnknown = await new Promise<any>((r) => unknownWatch.once('data', r));
  t.equal(firstUnknown.status, 'SERVICE_UNKNOWN', 'Watch of an unknown service');
  unknownWatch.on('error', () => undefined);
  unknownWatch.cancel();

  // One stream that ends within the grace period, one that cannot.
  const long = c.chat.Chat(hello('long'));
  const longDone = readAll<any>(long);
  await new Promise((r) => long.once('data', r));
  const short = serverStream(c.chat, 'Chat', hello('short'));
  await new Promise((r) => setTimeout(r, 50));

  const closing = tb.broker.close(2500);
  const s = await short;
  t.equal(s.status.code, grpc.status.OK, 'a stream that ends within the grace period ends OK');
  t.equal(textOf(s.messages), mockText(10));
  const l = await longDone;
  t.equal(l.status.code, grpc.status.UNAVAILABLE, 'a stream still open after the grace period ends UNAVAILABLE');
  t.equal(l.status.metadata.get('x-broker-error-code')[0], 'shutting_down');
  t.ok(textOf(l.messages).length > 0, 'after the tokens it had sent');
  const w = await watched;
  t.same(
    w.messages.map((x) => x.status),
    ['SERVING', 'NOT_SERVING'],
    'Watch saw NOT_SERVING at shutdown',
  );
  t.equal(w.status.code, grpc.status.UNAVAILABLE, 'then its stream ended');
  await closing;
  await slow.idle();
  t.equal(slow.stats.clientClosed, 1, 'the cut stream closed its upstream request');
  // Recorded as the shutdown's cut (llm_requests_total reason shutting_down, tracking's outcome), not as a client's abort.
  t.ok(tb.logs.some((x) => x['msg'] === 'stream cut by the shutdown after its grace period' && x['deployment'] === 'long-1'), 'the proxy saw the shutdown, not a client gone');
  const after = await unary(c.health, 'Check', { service: '' }, undefined, { deadline: Date.now() + 2000 });
  t.equal(after.error?.code, grpc.status.UNAVAILABLE, 'a stopped broker takes no calls');
});
