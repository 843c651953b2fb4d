// Data-plane threads end to end (FRONT_THREADS=2): a real broker whose threads share
// one port, in front of mock upstreams. Each test makes sure that both threads served
// (the `plane` field of their request log lines) so that what it checks crossed threads.
import t from 'tap';
type Tap = { teardown(fn: () => unknown): void };
import { Agent, request } from 'undici';
import type { MockUpstream, MockUpstreamOptions } from '../../src/mock-upstream/server.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { admin, metricValue, type TestBroker } from '../helpers/broker.ts';

// Each subtest owns its upstreams and broker: they close when it ends, not with the file.
const mock = (t: Tap, opts: MockUpstreamOptions): Promise<MockUpstream> => startMock(t, opts);
const broker = (t: Tap, fleet: unknown, env: Record<string, string> = {}): Promise<TestBroker> => startFleetBroker(t, fleet, { FRONT_THREADS: '2', INFER_ENABLED: 'false', ...env });

/** A request on a connection of its own, so that the kernel picks a thread for it. */
async function fresh(tb: TestBroker, path: string, body?: unknown) {
  const dispatcher = new Agent({ connections: 1 });
  try {
    const res = await request(`${tb.url}${path}`, {
      dispatcher,
      method: body === undefined ? 'GET' : 'POST',
      headers: { 'content-type': 'application/json', ...admin },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.body.text();
    return { status: res.statusCode, text, deployment: res.headers['x-broker-deployment'] as string | undefined };
  } catch (err) {
    return { status: 0, text: String(err), deployment: undefined };
  } finally {
    void dispatcher.close();
  }
}

const chat = (tb: TestBroker, stream = true) => fresh(tb, '/v1/chat/completions', { model: 'g', stream, messages: [{ role: 'user', content: 'hi' }] });

/** The data-plane threads whose request log lines name `route`. */
function planesServing(tb: TestBroker, route: string): Set<unknown> {
  return new Set(requestLines(tb, route).map((l) => l.plane));
}

function requestLines(tb: TestBroker, route: string): Record<string, unknown>[] {
  return tb.logs.filter((l) => l.msg === 'request' && l.route === route);
}

/** Log lines travel from the threads to the one destination asynchronously: wait for `n` of them. */
async function logged(tb: TestBroker, route: string, n: number): Promise<void> {
  await until(() => requestLines(tb, route).length >= n, `${n} request lines for ${route}`);
}

async function until(cond: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Opens streams, two at a time, until both threads hold some. */
async function streamsOnBothThreads(tb: TestBroker, upstream: MockUpstream): Promise<Promise<{ status: number; text: string }>[]> {
  const streams: Promise<{ status: number; text: string }>[] = [];
  await until(async () => {
    streams.push(chat(tb), chat(tb));
    await until(() => upstream.stats.open === streams.length, 'streams open');
    const stats = await tb.broker.planes!.stats();
    return stats.length === 2 && stats.every((s) => s.inFlight > 0);
  }, 'streams on both threads');
  return streams;
}

t.test('capacity limits hold across threads: limit 2, every extra stream refused, the upstream never sees 3', async (t) => {
  // Streams of 2 s: a round's ten requests arrive while its first two are held (with 0.3 s, a
  // loaded box spread them over more than a stream: a third was admitted after one ended).
  const slow = await mock(t, { tokens: 80, tps: 40 });
  const tb = await broker(t, { scheduler: { queueWhenFull: false }, modelGroups: { g: { deployments: [{ id: 'cap', provider: 'openai', url: slow.url, model: 'm', concurrencyLimit: 2 }] } } });
  let maxOpen = 0;
  const sample = setInterval(() => (maxOpen = Math.max(maxOpen, slow.stats.open)), 1);
  // Rounds until both threads have served in one round (each round: 10 connections).
  for (let round = 0; round < 5; round++) {
    const before = tb.logs.length;
    const results = await Promise.all(Array.from({ length: 10 }, () => chat(tb)));
    await until(() => tb.logs.slice(before).filter((l) => l.route === '/v1/chat/completions').length === 10, 'ten request lines');
    const ok = results.filter((r) => r.status === 200);
    t.equal(ok.length, 2, `round ${round}: two streams admitted`);
    t.ok(ok.every((r) => r.text.includes('[DONE]')));
    t.equal(results.filter((r) => r.status === 429).length, 8, 'the rest refused with 429');
    const planes = new Set(tb.logs.slice(before).filter((l) => l.route === '/v1/chat/completions').map((l) => l.plane));
    if (planes.size === 2) break;
  }
  clearInterval(sample);
  t.same([...planesServing(tb, '/v1/chat/completions')].sort(), [0, 1], 'both threads served');
  t.ok(maxOpen <= 2, `the upstream saw at most 2 at once (${maxOpen})`);
  t.equal(await metricValue(tb.url, 'broker_capacity_in_flight', { deployment: 'cap' }), 0, 'every slot given back');
});

t.test('/metrics is one exposition: N requests over both threads read as exactly N', async (t) => {
  const m = await mock(t, {});
  const tb = await broker(t, { modelGroups: { g: { deployments: [{ id: 'm1', provider: 'openai', url: m.url, model: 'm' }] } } });
  const N = 40;
  const results = await Promise.all(Array.from({ length: N }, () => fresh(tb, '/v1/models')));
  t.ok(results.every((r) => r.status === 200));
  await logged(tb, '/v1/models', N);
  t.same([...planesServing(tb, '/v1/models')].sort(), [0, 1], 'both threads served');
  t.equal(await metricValue(tb.url, 'http_request_duration_seconds_count', { route: '/v1/models' }), N);
  const streams = await Promise.all(Array.from({ length: 12 }, () => chat(tb)));
  t.ok(streams.every((r) => r.status === 200));
  t.equal(await metricValue(tb.url, 'llm_requests_total', { outcome: 'ok' }), 12, 'LLM outcomes summed over threads');
  t.equal(await metricValue(tb.url, 'broker_data_plane_threads'), 2);
  const text = await (await fetch(`${tb.url}/metrics`)).text();
  t.equal(text.match(/^process_resident_memory_bytes /gm)?.length, 1, 'process metrics once, not once per thread');
  // Each JavaScript thread's heap, by name (nodejs_heap_* are the control plane's alone).
  const heaps = [...text.matchAll(/^broker_thread_heap_bytes\{thread="([^"]+)",kind="(used|total)"\} (\d+)/gm)].map((m) => [m[1], m[2], Number(m[3])] as const);
  t.same([...new Set(heaps.map(([thread]) => thread))].sort(), ['control', 'plane-0', 'plane-1'], 'the control plane and both data-plane threads');
  t.ok(heaps.every(([, , bytes]) => bytes > 1_000_000), 'each a real heap');
  for (const thread of ['plane-0', 'plane-1']) {
    const used = heaps.find(([n, k]) => n === thread && k === 'used')![2];
    const total = heaps.find(([n, k]) => n === thread && k === 'total')![2];
    t.ok(used <= total, `${thread}: used ${used} within total ${total}`);
  }
  // Each thread's event-loop delay, by name: the threads that serve requests are watched too.
  const lags = [...text.matchAll(/^broker_thread_event_loop_lag_seconds\{thread="([^"]+)",stat="(p50|p99|max)"\} ([\d.e+-]+)/gm)].map((m) => [m[1], m[2], Number(m[3])] as const);
  t.same([...new Set(lags.map(([thread]) => thread))].sort(), ['control', 'plane-0', 'plane-1'], 'a lag for each thread');
  await new Promise((r) => setTimeout(r, 100));
  const second = await (await fetch(`${tb.url}/metrics`)).text();
  const p99 = [...second.matchAll(/^broker_thread_event_loop_lag_seconds\{thread="(plane-\d)",stat="p99"\} ([\d.e+-]+)/gm)].map((m) => Number(m[2]));
  t.equal(p99.length, 2);
  t.ok(p99.every((v) => v > 0 && v < 5), `measured from the first scrape on: ${p99.join(', ')} s`);
});

t.test('/metrics with threads has process_start_time_seconds once: the process\'s, from the control plane', async (t) => {
  // The broker runs in this process (FRONT_THREADS=2): the value is this process's start.
  const processStarted = Date.now() / 1000 - process.uptime();
  const m = await mock(t, {});
  const tb = await broker(t, { modelGroups: { g: { deployments: [{ id: 'm1', provider: 'openai', url: m.url, model: 'm' }] } } });
  const text = await (await fetch(`${tb.url}/metrics`)).text();
  const samples = text.match(/^process_start_time_seconds .*$/gm) ?? [];
  t.equal(samples.length, 1, `one sample: ${JSON.stringify(samples)}`);
  const value = Number(samples[0]?.split(' ')[1]);
  t.ok(value <= Date.now() / 1000, `${value} is not in the future`);
  t.ok(value >= processStarted - 5, `${value} is this process's start (${processStarted}), give or take rounding`);
});

t.test('a change through the admin API is in force on every thread when the call returns', async (t) => {
  const a = await mock(t, {});
  const b = await mock(t, {});
  const tb = await broker(t, { scheduler: { maxWaitMs: 200 }, modelGroups: { g: { deployments: [{ id: 'a', provider: 'openai', url: a.url, model: 'm' }, { id: 'b', provider: 'openai', url: b.url, model: 'm' }] } } });
  const drained = await fresh(tb, '/api/industrial/capacity/a/drain', { draining: true });
  t.equal(drained.status, 200);
  const after = await Promise.all(Array.from({ length: 20 }, () => chat(tb, false)));
  t.same(new Set(after.map((r) => r.deployment)), new Set(['b']), 'no thread sends to the drained deployment');
  await logged(tb, '/v1/chat/completions', 20);
  t.same([...planesServing(tb, '/v1/chat/completions')].sort(), [0, 1], 'both threads served');

  const limited = await fetch(`${tb.url}/api/industrial/capacity/b/limits`, { method: 'PUT', headers: { ...admin, 'content-type': 'application/json' }, body: JSON.stringify({ concurrencyLimit: 0 }) });
  t.equal(limited.status, 200);
  const refused = await Promise.all(Array.from({ length: 10 }, () => fresh(tb, '/v1/chat/completions', { model: 'g', messages: [{ role: 'user', content: 'x' }] })));
  t.same(refused.map((r) => r.status), Array(10).fill(504), 'limit 0 and a drained twin: every thread queues, nothing is admitted');
  t.equal(b.stats.total, 20, 'b saw only the requests from before its limit went to 0');
});

t.test('a data-plane thread that dies is replaced; the other carries on', async (t) => {
  // Streams of 2.5 s: none ends while the setup runs, even on a loaded box.
  const slow = await mock(t, { tokens: 100, tps: 40 });
  const tb = await broker(t, { modelGroups: { g: { deployments: [{ id: 's', provider: 'openai', url: slow.url, model: 'm', concurrencyLimit: 100 }] } } });
  const running = await streamsOnBothThreads(tb, slow);
  let ended = 0;
  for (const r of running) void r.then(() => ended++);
  const endedBefore = ended;
  const onSurvivor = (await tb.broker.planes!.stats())[1]!.inFlight;
  await tb.broker.planes!.fail(0);
  const results = await Promise.all(running);
  const done = results.filter((r) => r.status === 200 && r.text.includes('[DONE]'));
  t.equal(done.length, onSurvivor + endedBefore, `the surviving thread's streams completed (${done.length} of ${results.length}; ${endedBefore} ended before)`);
  t.ok(done.length < results.length, "the dead thread's requests failed with it");
  await until(async () => (await metricValue(tb.url, 'broker_data_plane_threads')) === 2, 'the replacement to start');
  t.equal(await metricValue(tb.url, 'broker_data_plane_restarts_total'), 1, 'the death is counted');
  t.ok(tb.logs.some((l) => l.msg === 'data-plane thread failed' && l.plane === 0), 'the failure is logged with its thread');
  const after = await Promise.all(Array.from({ length: 12 }, () => chat(tb, false)));
  t.same(after.map((r) => r.status), Array(12).fill(200), 'every request after the replacement succeeds');
  // Its streams' releases never ran: the control plane gave their slots back. A live thread
  // releases just after its reply's last byte leaves, so the count is read once it settles;
  // a slot the dead thread kept would hold it above 0 until the wait gives up.
  let inFlight = -1;
  await until(async () => (inFlight = await metricValue(tb.url, 'broker_capacity_in_flight', { deployment: 's' })) === 0, 'the slots to come back').catch(() => undefined);
  t.equal(inFlight, 0, 'no slot held by the dead thread');
  t.ok(tb.logs.some((l) => l.msg === 'a data-plane thread died holding capacity slots: given back' && l.plane === 0 && (l.slots as number) === results.length - done.length), "its slots given back, counted");
});

t.test("a thread's death does not take its counts out of /metrics: no counter goes down (Prometheus would read a reset)", async (t) => {
  const m = await mock(t, {});
  const tb = await broker(t, { modelGroups: { g: { deployments: [{ id: 'm1', provider: 'openai', url: m.url, model: 'm' }] } } });
  const N = 40;
  const results = await Promise.all(Array.from({ length: N }, () => fresh(tb, '/v1/models')));
  t.ok(results.every((r) => r.status === 200));
  await logged(tb, '/v1/models', N);
  t.same([...planesServing(tb, '/v1/models')].sort(), [0, 1], 'both threads served');
  const count = () => metricValue(tb.url, 'http_request_duration_seconds_count', { route: '/v1/models' });
  t.equal(await count(), N, 'scraped once while both threads live');
  await tb.broker.planes!.fail(0);
  await until(async () => (await metricValue(tb.url, 'broker_data_plane_threads')) === 2, 'the replacement to start');
  t.equal(await count(), N, "the dead thread's requests still counted");
  const more = await Promise.all(Array.from({ length: 10 }, () => fresh(tb, '/v1/models')));
  t.ok(more.every((r) => r.status === 200));
  await logged(tb, '/v1/models', N + 10);
  t.equal(await count(), N + 10, 'and the replacement adds to them');
});

t.test("a thread that dies holding a full deployment's only slot: the slot comes back, the next request is served", async (t) => {
  const slow = await mock(t, { tokens: 40, tps: 20 });
  const tb = await broker(t, { modelGroups: { g: { deployments: [{ id: 's', provider: 'openai', url: slow.url, model: 'm', concurrencyLimit: 1 }] } } });
  const stream = chat(tb);
  await until(() => slow.stats.open === 1, 'the stream open');
  const holder = (await tb.broker.planes!.stats()).findIndex((s) => s.inFlight > 0);
  await tb.broker.planes!.fail(holder);
  await stream;
  await until(async () => (await metricValue(tb.url, 'broker_data_plane_threads')) === 2, 'the replacement to start');
  const next = await chat(tb, false);
  t.equal(next.status, 200, `served, not queued until its timeout: ${next.text.slice(0, 120)}`);
});

t.test('shutdown with streams open on both threads: they get the grace period, then an explicit error event', async (t) => {
  const slow = await mock(t, { tokens: 400, tps: 20 });
  const tb = await broker(t, { modelGroups: { g: { deployments: [{ id: 'long', provider: 'openai', url: slow.url, model: 'm', concurrencyLimit: 100 }] } } });
  const streams = await streamsOnBothThreads(tb, slow);
  const quick = fresh(tb, '/v1/chat/completions', { model: 'g', messages: [{ role: 'user', content: 'a short one' }], max_tokens: 1 });
  await tb.broker.close(400);
  const results = await Promise.all(streams);
  t.ok(results.every((r) => r.status === 200), 'the streams had started');
  for (const r of results) {
    t.match(r.text, /"code":"shutting_down"/, 'an explicit error event ends the stream');
    t.notMatch(r.text, /\[DONE\]/, 'never a clean end for a cut stream');
  }
  t.ok([200, 0].includes((await quick).status));
  const refused = await fresh(tb, '/healthz');
  t.equal(refused.status, 0, 'the port is closed');
  t.ok(tb.logs.some((l) => l.msg === 'edge broker stopped'));
  // The shutdown cut them, not the upstream: no failure blamed on it, no breaker opened.
  t.notOk(tb.logs.some((l) => l.msg === 'upstream stream failed after the first byte'), 'not logged as the upstream failing');
  t.notOk(tb.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('circuit breaker open')), 'no breaker opened');
  t.ok(tb.logs.some((l) => l.msg === 'stream cut by the shutdown after its grace period'));
});
