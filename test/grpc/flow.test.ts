// Flow control of gRPC streams: capacity and its queue (RESOURCE_EXHAUSTED when full,
// the client's deadline bounding the wait), cancel propagation to the upstream, and a
// slow reader pausing the upstream read.
import t from 'tap';
import { status as Status, type ClientReadableStream } from '@grpc/grpc-js';
import { startMock } from '../helpers/fleet.ts';
import { metricValue, type TestBroker } from '../helpers/broker.ts';
import { clients, readAll, serverStream, startGrpcFleetBroker, statusDetailsOf, textOf, type Clients } from '../helpers/grpc.ts';
import { mockText, type MockUpstream } from '../../src/mock-upstream/server.ts';

const hello = { model: 'g', messages: [{ role: 'user', content: 'hello' }] };

async function until(what: string, check: () => Promise<boolean> | boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Starts a Chat and resolves once its first message arrived (it holds its capacity slot then). */
function holding(c: any, request: unknown = hello): Promise<ClientReadableStream<any>> {
  const call = c.chat.Chat(request) as ClientReadableStream<any>;
  call.on('error', () => undefined);
  return new Promise((resolve) => call.once('data', () => resolve(call)));
}

t.test('capacity: a full queue answers RESOURCE_EXHAUSTED with RetryInfo; a deadline ends a queue wait; the queue empties', async (t) => {
  const m = await startMock(t, { tokens: 1000, tps: 50 });
  const tb = await startGrpcFleetBroker(t, { scheduler: { maxQueue: 1, maxWaitMs: 60_000 }, modelGroups: { g: { deployments: [{ id: 'q-1', provider: 'openai', url: m.url, model: 'm', concurrencyLimit: 1 }] } } });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  const first = await holding(c);

  // The second waits in the queue until its deadline passes.
  const waiting = serverStream(c.chat, 'Chat', hello, undefined, { deadline: Date.now() + 60_000 });
  await until('a queued request', async () => (await metricValue(tb.url, 'broker_queue_depth')) === 1);
  // Queue full: refused at once.
  const third = await serverStream(c.chat, 'Chat', hello);
  t.equal(third.status.code, Status.RESOURCE_EXHAUSTED, 'queue full: RESOURCE_EXHAUSTED');
  t.equal(third.status.metadata.get('x-broker-error-code')[0], 'capacity_exhausted');
  t.ok((statusDetailsOf(third.status.metadata)?.retryDelayS ?? 0) > 0, 'with RetryInfo');
  // The queued request starts upstream once the slot is free: full speed for it (1000 tokens at
  // 50/s would take 20 s to read), then slow again so that the next holder holds its slot.
  m.setKnobs({ tps: 0 });
  first.cancel();
  const second = await waiting;
  t.equal(second.status.code, Status.OK, 'the queued request ran once the slot was free');
  m.setKnobs({ tps: 50 });

  // A deadline that expires while queued.
  const holder = await holding(c);
  const late = await serverStream(c.chat, 'Chat', hello, undefined, { deadline: Date.now() + 300 });
  t.equal(late.status.code, Status.DEADLINE_EXCEEDED, 'the deadline ended the queue wait');
  t.equal(late.messages.length, 0);
  await until('the queue to empty', async () => (await metricValue(tb.url, 'broker_queue_depth')) === 0);
  const requests = m.stats.total;
  holder.cancel();
  await m.idle();
  t.equal(m.stats.total, requests, 'the expired request never reached the upstream');
  t.ok((await metricValue(tb.url, 'grpc_server_handled_total', { grpc_method: 'Chat', grpc_code: 'DeadlineExceeded' })) >= 1, 'counted as DeadlineExceeded');
  const logged = tb.logs.filter((l) => l['method'] === 'gRPC' && l['aborted'] === true).map((l) => l['status']);
  t.ok(logged.includes('DeadlineExceeded'), `the access log says DeadlineExceeded too, as the metrics (${logged.join(', ')})`);
  t.ok(logged.includes('Canceled'), 'and Canceled for the calls the client cancelled');
  const cancelled = tb.logs.filter((l) => l['method'] === 'gRPC' && l['status'] === 'Canceled');
  t.ok(cancelled.length > 0 && cancelled.every((l) => l['error'] === 'client_closed'), 'with error client_closed, as an HTTP request its client closed');
  t.notOk(tb.logs.some((l) => l['method'] === 'gRPC' && l['status'] === 'DeadlineExceeded' && l['error'] === 'client_closed'), 'a deadline is not the client closing');
  t.ok((await metricValue(tb.url, 'grpc_server_handled_total', { grpc_method: 'Chat', grpc_code: 'ResourceExhausted' })) >= 1, 'counted as ResourceExhausted');
});

t.test('queue_timeout (the scheduler maxWaitMs) is DEADLINE_EXCEEDED from the error table', async (t) => {
  const m = await startMock(t, { tokens: 1000, tps: 50 });
  const tb = await startGrpcFleetBroker(t, { scheduler: { maxWaitMs: 200 }, modelGroups: { g: { deployments: [{ id: 'qt-1', provider: 'openai', url: m.url, model: 'm', concurrencyLimit: 1 }] } } });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  const holder = await holding(c);
  const r = await serverStream(c.chat, 'Chat', hello);
  t.equal(r.status.code, Status.DEADLINE_EXCEEDED);
  t.equal(r.status.metadata.get('x-broker-error-code')[0], 'queue_timeout');
  holder.cancel();
});

// The three subtests below (cancel, deadline, slow reader) share one broker, started once with
// the first of them (no scheduler settings, no capacity limits: nothing one leaves behind
// reaches another). Each case has a model group of its own with a mock of its own, the one
// deployment they had each on a broker of their own, so each mock's counts are its case's alone.
interface Shared {
  readonly tb: TestBroker;
  readonly c: Clients;
  /** Each case's mock, by the name of its model group. */
  readonly mocks: Record<string, MockUpstream>;
}
let shared: Promise<Shared> | undefined;
function sharedBroker(): Promise<Shared> {
  shared ??= (async () => {
    const cases = [
      { group: 'cancel-openai', id: 'c-openai', provider: 'openai', mock: { tokens: 10_000, tps: 100 } },
      { group: 'cancel-ollama', id: 'c-ollama', provider: 'ollama', mock: { tokens: 10_000, tps: 100 } },
      { group: 'deadline', id: 'd-1', provider: 'openai', mock: { tokens: 10_000, tps: 100 } },
      { group: 'slow', id: 's-1', provider: 'openai', mock: { tokens: 200_000 } },
    ];
    const mocks: Record<string, MockUpstream> = {};
    for (const k of cases) mocks[k.group] = await startMock(t, k.mock);
    const modelGroups = Object.fromEntries(cases.map((k) => [k.group, { deployments: [{ id: k.id, provider: k.provider, url: mocks[k.group]!.url, model: 'mock-model' }] }]));
    const tb = await startGrpcFleetBroker(t, { modelGroups });
    const c = clients(tb.broker.grpcPort);
    t.teardown(() => c.close());
    return { tb, c, mocks };
  })();
  return shared;
}

t.test('cancel propagation: the mock sees the upstream request closed', async (t) => {
  const { c, mocks } = await sharedBroker();
  for (const provider of ['openai', 'ollama']) {
    const m = mocks[`cancel-${provider}`]!;
    const call = await holding(c, { ...hello, model: `cancel-${provider}` });
    t.equal(m.stats.open, 1, `${provider}: the upstream request is open`);
    call.cancel();
    await m.idle();
    t.equal(m.stats.clientClosed, 1, `${provider}: the broker closed the upstream request`);
    t.equal(m.stats.completed, 0, `${provider}: it did not run to its end`);
  }
});

t.test("a client's deadline bounds the upstream request too", async (t) => {
  const { c, mocks } = await sharedBroker();
  const m = mocks['deadline']!;
  const r = await serverStream(c.chat, 'Chat', { ...hello, model: 'deadline' }, undefined, { deadline: Date.now() + 500 });
  t.equal(r.status.code, Status.DEADLINE_EXCEEDED);
  t.ok(r.messages.length > 0, 'tokens arrived before the deadline');
  await m.idle();
  t.equal(m.stats.clientClosed, 1, 'the upstream request was closed at the deadline');
});

t.test('a slow reader pauses the upstream read, then gets everything', async (t) => {
  const tokens = 200_000;
  const { c, mocks } = await sharedBroker();
  const m = mocks['slow']!;
  const call = c.chat.Chat({ ...hello, model: 'slow' }) as ClientReadableStream<any>;
  const first: any[] = [];
  await new Promise<void>((resolve) =>
    call.once('data', (msg) => {
      first.push(msg);
      call.pause();
      resolve();
    }),
  );
  // The client reads nothing for a while: the upstream must not run to its end meanwhile.
  await new Promise((r) => setTimeout(r, 1000));
  t.equal(m.stats.completed, 0, 'the upstream reply is held back while the client does not read');
  t.equal(m.stats.open, 1);
  const rest = readAll(call);
  call.resume();
  const r = await rest;
  t.equal(r.status.code, Status.OK);
  t.equal(textOf([...first, ...r.messages]), mockText(tokens), 'every token arrived, in order');
  t.equal(m.stats.completed, 1);
});
