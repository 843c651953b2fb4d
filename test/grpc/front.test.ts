// The gRPC front alone (startGrpcFront), with stand-ins for what the broker wires in:
// health follows the models' readiness, and a service added through `services` (how
// KServe v2 plugs in) is served, reflected, health-checked and counted.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { pino } from 'pino';
import { createMetrics } from '../../src/obs/metrics.ts';
import { createRateLimiter } from '../../src/guard/rate-limit.ts';
import { disabledInference } from '../../src/infer/routes.ts';
import { startGrpcFront, type GrpcService } from '../../src/front/grpc/server.ts';
import type { InferService } from '../../src/infer/service.ts';
import type { LlmProxy } from '../../src/llm/proxy.ts';
import { clients, freePort, readAll, unary } from '../helpers/grpc.ts';

const FIXTURES = new URL('./fixtures/', import.meta.url).pathname;

t.test('health follows model loading; an added service is served, reflected, health-checked and counted', async (t) => {
  let loaded: () => void = () => undefined;
  const ready = new Promise<void>((r) => (loaded = r));
  const fakeInfer = { ready: false, waitReady: () => ready.then(() => void (fakeInfer.ready = true)) } as unknown as InferService & { ready: boolean };

  const extraDef = protoLoader.loadSync('status.proto', { keepCase: true, includeDirs: [FIXTURES] });
  const extra: GrpcService = {
    definition: extraDef,
    names: ['testing.rpc.Decode'],
    register(server) {
      const svc = (grpc.loadPackageDefinition(extraDef) as any).testing.rpc.Decode.service;
      server.addService(svc, {
        Status: (_call: unknown, cb: grpc.sendUnaryData<object>) => cb(null, {}),
        RetryInfo: (_call: unknown, cb: grpc.sendUnaryData<object>) => cb({ code: grpc.status.UNIMPLEMENTED }),
        ErrorInfo: (_call: unknown, cb: grpc.sendUnaryData<object>) => cb({ code: grpc.status.UNIMPLEMENTED }),
      });
    },
  };
  const metrics = createMetrics({ defaults: false });
  const logger = pino({ level: 'silent' });
  const front = await startGrpcFront({
    host: '127.0.0.1',
    port: await freePort(),
    maxMessageBytes: 1024 * 1024,
    keepaliveTimeMs: 60_000,
    keepaliveTimeoutMs: 20_000,
    metrics,
    logger,
    accessLog: logger,
    rateLimiter: createRateLimiter(0, 0),
    knownKey: () => false,
    source: { current: async () => undefined },
    admission: { admit: () => { throw new Error('not used'); } },
    proxy: {} as LlmProxy,
    limits: { maxMessages: 10, maxPromptChars: 1000 },
    inferService: fakeInfer,
    infer: disabledInference,
    services: [extra],
  });
  t.teardown(() => front.close(0));
  const c = clients(front.port);
  t.teardown(() => c.close());

  const watch = c.health.Watch({ service: '' });
  const statuses: string[] = [];
  const serving = new Promise<void>((resolve) =>
    watch.on('data', (m: any) => {
      statuses.push(m.status);
      if (m.status === 'SERVING') resolve();
    }),
  );
  watch.on('error', () => undefined);
  t.equal((await unary(c.health, 'Check', { service: 'edge_broker.v1.InferenceService' })).value.status, 'NOT_SERVING', 'models loading: inference NOT_SERVING');
  t.equal((await unary(c.health, 'Check', { service: 'edge_broker.v1.ChatService' })).value.status, 'SERVING', 'chat does not wait for the models');
  loaded();
  await serving;
  t.same(statuses, ['NOT_SERVING', 'SERVING'], 'Watch: NOT_SERVING while the models load, then SERVING');
  t.equal((await unary(c.health, 'Check', { service: 'edge_broker.v1.InferenceService' })).value.status, 'SERVING');

  // The added service.
  t.equal((await unary(c.health, 'Check', { service: 'testing.rpc.Decode' })).value.status, 'SERVING', 'its health');
  const Decode = (grpc.loadPackageDefinition(extraDef) as any).testing.rpc.Decode;
  const d = new Decode(c.address, grpc.credentials.createInsecure());
  t.teardown(() => d.close());
  t.equal((await unary(d, 'Status', { code: 1 })).error, null, 'served');
  const rdef = protoLoader.loadSync('grpc/reflection/v1/reflection.proto', { keepCase: true, oneofs: true, includeDirs: [new URL('../../node_modules/@grpc/reflection/build/proto/', import.meta.url).pathname] });
  const rc = new (grpc.loadPackageDefinition(rdef) as any).grpc.reflection.v1.ServerReflection(c.address, grpc.credentials.createInsecure());
  t.teardown(() => rc.close());
  const call = rc.ServerReflectionInfo();
  call.write({ list_services: '' });
  call.end();
  const listed = await readAll<any>(call);
  t.ok(listed.messages[0].list_services_response.service.some((s: any) => s.name === 'testing.rpc.Decode'), 'reflected');
  const text = await metrics.registry.metrics();
  t.match(text, /grpc_server_handled_total\{grpc_type="unary",grpc_service="testing.rpc.Decode",grpc_method="Status",grpc_code="OK"\} 1/, 'counted with the others');
  t.match(text, /grpc_server_started_total\{grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch"\} 1/);

  // A unary call whose stream ends before its request message (a client that cancelled
  // as it sent): grpc-js answers UNIMPLEMENTED itself; dashboards must see a cancel.
  const { connect } = await import('node:http2');
  const session = connect(`http://${c.address}`);
  t.teardown(() => session.close());
  const stream = session.request({ ':method': 'POST', ':path': '/testing.rpc.Decode/Status', 'content-type': 'application/grpc', te: 'trailers' }, { endStream: true });
  const trailers = await new Promise<Record<string, unknown>>((resolve) => {
    stream.on('trailers', (h) => resolve(h));
    stream.on('response', (h) => {
      if (h['grpc-status'] !== undefined) resolve(h);
    });
    stream.resume();
  });
  t.equal(Number(trailers['grpc-status']), grpc.status.UNIMPLEMENTED, 'what grpc-js answers');
  const after = await metrics.registry.metrics();
  t.match(after, /grpc_server_handled_total\{grpc_type="unary",grpc_service="testing.rpc.Decode",grpc_method="Status",grpc_code="Canceled"\} 1/, 'counted as Canceled');
  t.notMatch(after, /grpc_method="Status",grpc_code="Unimplemented"/);
});
