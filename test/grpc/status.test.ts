// Status codes of the gRPC front, from the one error table: each one the issue names,
// with its trailers (trace-id, x-broker-error-code, grpc-status-details-bin).
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { status as Status } from '@grpc/grpc-js';
import { startMock } from '../helpers/fleet.ts';
import { clients, md, serverStream, startGrpcFleetBroker, statusDetailsOf, textOf, freePort } from '../helpers/grpc.ts';
import { grpcCodeOf, codeLabel } from '../../src/front/grpc/status.ts';
import { ERROR_TABLE } from '../../src/errors.ts';
import { mockText } from '../../src/mock-upstream/server.ts';
import { metricValue } from '../helpers/broker.ts';

const hello = (model: string) => ({ model, messages: [{ role: 'user', content: 'hello' }] });

t.test('every code of the error table maps to its gRPC status; labels are go-grpc-prometheus names', async (t) => {
  for (const [code, row] of Object.entries(ERROR_TABLE)) t.equal(grpcCodeOf(code), Status[row.grpc as keyof typeof Status], code);
  t.equal(grpcCodeOf('unauthorized'), Status.UNAUTHENTICATED);
  t.equal(grpcCodeOf('forbidden'), Status.PERMISSION_DENIED);
  t.equal(grpcCodeOf('no_such_code'), Status.INTERNAL);
  t.equal(codeLabel(Status.OK), 'OK');
  t.equal(codeLabel(Status.CANCELLED), 'Canceled');
  t.equal(codeLabel(Status.RESOURCE_EXHAUSTED), 'ResourceExhausted');
  t.equal(codeLabel(Status.DEADLINE_EXCEEDED), 'DeadlineExceeded');
});

t.test('request errors: INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, UNAVAILABLE; the server keeps serving', async (t) => {
  const m = await startMock(t, { tokens: 4 });
  const closed = await freePort();
  const tb = await startGrpcFleetBroker(
    t,
    {
      qos: { defaultTier: 'standard', tiers: { standard: {}, batch: { allowedGroups: ['g'] } } },
      apiKeys: { 'sk-batch': { tier: 'batch' } },
      modelGroups: {
        g: { deployments: [{ id: 'g-1', provider: 'openai', url: m.url, model: 'm' }] },
        premium: { deployments: [{ id: 'p-1', provider: 'openai', url: m.url, model: 'm' }] },
        gone: { deployments: [{ id: 'gone-1', provider: 'openai', url: `http://127.0.0.1:${closed}`, model: 'm' }] },
      },
    },
    { BROKER_FF_QOS_SWITCHING: 'true' },
  );
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  const cases: [string, unknown, Record<string, string>, number, string][] = [
    ['no messages', { model: 'g', messages: [] }, {}, Status.INVALID_ARGUMENT, 'invalid_request'],
    ['no model', { messages: [{ role: 'user', content: 'x' }] }, {}, Status.INVALID_ARGUMENT, 'invalid_request'],
    ['temperature out of range', { ...hello('g'), options: { temperature: 7 } }, {}, Status.INVALID_ARGUMENT, 'invalid_request'],
    // int64 past 2^53 arrives rounded (above int64's range for this one): refused, not changed on its way.
    ['a seed a JS number cannot hold', { ...hello('g'), options: { seed: '9223372036854775807' } }, {}, Status.INVALID_ARGUMENT, 'invalid_request'],
    ['bad label', hello('g'), { 'x-broker-label': 'no spaces allowed' }, Status.INVALID_ARGUMENT, 'invalid_request'],
    ['unknown model', hello('nope'), {}, Status.NOT_FOUND, 'model_not_found'],
    ['tier not allowed on the group', hello('premium'), { authorization: 'Bearer sk-batch' }, Status.PERMISSION_DENIED, 'forbidden'],
    ['no upstream answers', hello('gone'), {}, Status.UNAVAILABLE, 'upstream_unavailable'],
  ];
  for (const [name, req, meta, code, brokerCode] of cases) {
    const r = await serverStream(c.chat, 'Chat', req, md({ 'x-request-id': `case-${brokerCode}`, ...meta }));
    t.equal(r.status.code, code, `${name}: ${Status[code]}`);
    t.equal(r.messages.length, 0, `${name}: no message`);
    t.equal(r.status.metadata.get('x-broker-error-code')[0], brokerCode, `${name}: broker code in the trailers`);
    t.equal(r.status.metadata.get('trace-id')[0], `case-${brokerCode}`, `${name}: trace id in the trailers`);
    const d = statusDetailsOf(r.status.metadata);
    t.equal(d?.code, code, `${name}: google.rpc.Status carries the code`);
    t.equal(d?.reason, brokerCode, `${name}: ErrorInfo.reason is the broker code`);
  }
  const ok = await serverStream(c.chat, 'Chat', hello('g'), md({ authorization: 'Bearer sk-batch' }));
  t.equal(ok.status.code, Status.OK, 'a good request after all those is served');
  t.equal(textOf(ok.messages), mockText(4));
});

t.test('RESOURCE_EXHAUSTED with RetryInfo: per-client rate limit', async (t) => {
  const m = await startMock(t);
  const tb = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'r-1', provider: 'openai', url: m.url, model: 'm' }] } } }, { RATE_LIMIT_RPS: '0.5', RATE_LIMIT_BURST: '1' });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  const first = await serverStream(c.chat, 'Chat', hello('g'));
  t.equal(first.status.code, Status.OK);
  const second = await serverStream(c.chat, 'Chat', hello('g'));
  t.equal(second.status.code, Status.RESOURCE_EXHAUSTED);
  t.equal(second.status.metadata.get('x-broker-error-code')[0], 'rate_limited');
  const d = statusDetailsOf(second.status.metadata);
  t.ok(d?.retryDelayS !== undefined && d.retryDelayS > 0, 'RetryInfo says when to come back');
});

t.test('an upstream failure after tokens ends the stream UNAVAILABLE after those tokens, never OK', async (t) => {
  // One broker for both providers: a model group of each, with its own mock and deployment.
  const providers = ['openai', 'ollama'];
  const modelGroups: Record<string, unknown> = {};
  for (const provider of providers) {
    const m = await startMock(t, { tokens: 20, fail: 'reset', failAfter: 3 });
    modelGroups[`g-${provider}`] = { deployments: [{ id: `cut-${provider}`, provider, url: m.url, model: 'mock-model' }] };
  }
  const tb = await startGrpcFleetBroker(t, { modelGroups });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  for (const provider of providers) {
    const r = await serverStream(c.chat, 'Chat', hello(`g-${provider}`));
    t.equal(r.status.code, Status.UNAVAILABLE, `${provider}: UNAVAILABLE`);
    t.equal(textOf(r.messages), mockText(3), `${provider}: the tokens sent before the cut arrived`);
    t.notOk(r.messages.some((x) => x.event === 'final'), `${provider}: no final message`);
    t.equal(r.status.metadata.get('x-broker-deployment')[0], `cut-${provider}`, `${provider}: the deployment is named in the trailers`);
  }
});

t.test('calls that grpc-js ends itself (a request that fails to decode, a message over MAX_BODY_BYTES) are counted by their code, not as Canceled', async (t) => {
  const tb = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: 'http://127.0.0.1:9', model: 'm' }] } } }, {
    MAX_BODY_BYTES: '2000',
    // grpc-js ends these calls before the broker's handlers (and the data-plane threads) see them.
    FRONT_THREADS: '0',
  });
  const raw = new grpc.Client(`127.0.0.1:${tb.broker.grpcPort}`, grpc.credentials.createInsecure());
  t.teardown(() => raw.close());
  const send = (body: Buffer) =>
    new Promise<grpc.ServiceError>((resolve) => raw.makeUnaryRequest('/edge_broker.v1.ModelService/ListModels', (x: Buffer) => x, (x: Buffer) => x, body, (e) => resolve(e!)));
  t.equal((await send(Buffer.from([0xff, 0xff]))).code, Status.INTERNAL, 'bytes that are not a ListModelsRequest');
  t.equal((await send(Buffer.alloc(4000))).code, Status.RESOURCE_EXHAUSTED, 'a message over MAX_BODY_BYTES');
  const handled = (code: string) => metricValue(tb.url, 'grpc_server_handled_total', { grpc_method: 'ListModels', grpc_code: code });
  t.equal(await handled('Internal'), 1);
  t.equal(await handled('ResourceExhausted'), 1);
  t.equal(await handled('Canceled'), 0);
  // And logged, one access-log line each, as a handler would have (docs/grpc.md): malformed traffic shows in the logs.
  const lines = tb.logs.filter((l) => l.method === 'gRPC' && l.route === '/edge_broker.v1.ModelService/ListModels');
  t.same(lines.map((l) => l.status).sort(), ['Internal', 'ResourceExhausted']);
  t.ok(lines.every((l) => typeof l.trace_id === 'string' && typeof l.error === 'string'), 'with a request id and what grpc-js said');
  // A call that reached its handler is logged once, by it.
  const md1 = new grpc.Metadata();
  md1.set('x-request-id', 'list-once');
  await new Promise<void>((resolve) => raw.makeUnaryRequest('/edge_broker.v1.ModelService/ListModels', (x: Buffer) => x, (x: Buffer) => x, Buffer.alloc(0), md1, () => resolve()));
  await new Promise((r) => setTimeout(r, 100));
  t.equal(tb.logs.filter((l) => l.trace_id === 'list-once').length, 1);
});
