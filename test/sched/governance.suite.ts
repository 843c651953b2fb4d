// Scheduler and governance end to end: a real broker in front of mock upstreams.
import t from 'tap';
type Tap = { teardown(fn: () => unknown): void };
import { request } from 'undici';
import type { MockUpstream, MockUpstreamOptions } from '../../src/mock-upstream/server.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { mulberry32 } from '../../scripts/train/prng.ts';
import { admin, json, metricValue, type TestBroker } from '../helpers/broker.ts';
import { keyId } from '../../src/guard/api-key.ts';

// Each subtest owns its upstreams and broker: they close when it ends, not with the file.
const mock = (t: Tap, opts: MockUpstreamOptions): Promise<MockUpstream> => startMock(t, opts);
// LLM governance only: no inference pool to start in every subtest.
const broker = (t: Tap, fleet: unknown, env: Record<string, string> = {}): Promise<TestBroker> => startFleetBroker(t, fleet, { INFER_ENABLED: 'false', ...env });

const messages = (content = 'hello') => [{ role: 'user', content }];

async function chat(tb: TestBroker, model: string, opts: { stream?: boolean; headers?: Record<string, string>; content?: string; signal?: AbortSignal; maxTokens?: number } = {}) {
  const res = await request(`${tb.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...opts.headers },
    body: JSON.stringify({ model, messages: messages(opts.content), stream: opts.stream ?? false, ...(opts.maxTokens ? { max_tokens: opts.maxTokens } : {}) }),
    signal: opts.signal,
  });
  const text = await res.body.text();
  return { status: res.statusCode, headers: res.headers, text, deployment: res.headers['x-broker-deployment'] as string | undefined };
}

async function get(tb: TestBroker, path: string): Promise<any> {
  return json(await fetch(`${tb.url}${path}`, { headers: admin }));
}

async function send(tb: TestBroker, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(`${tb.url}${path}`, { method, headers: { ...admin, 'content-type': 'application/json', 'x-actor': 'tester' }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: await json(res) };
}

async function until(cond: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

t.test('capacity gating: limit 2, six concurrent streams, the rest queue, counters back to 0', async (t) => {
  const slow = await mock(t, { tokens: 10, tps: 40 });
  const tb = await broker(t, { modelGroups: { g: { deployments: [{ id: 'cap-1', provider: 'openai', url: slow.url, model: 'm', concurrencyLimit: 2 }] } } });
  const runs = Array.from({ length: 6 }, () => chat(tb, 'g', { stream: true }));
  await until(async () => (await get(tb, '/api/industrial/capacity')).queue.size === 4, 'four queued');
  const cap = await get(tb, '/api/industrial/capacity/cap-1');
  t.equal(cap.inFlight, 2, 'two run');
  t.equal(cap.concurrencyLimit, 2);
  // Sampled while the streams run (a busy box may not have sent the second upstream request yet when the queue is full).
  let peak = 0;
  let running = true;
  const sampling = (async () => {
    while (running) {
      peak = Math.max(peak, slow.stats.open);
      await new Promise((r) => setTimeout(r, 2));
    }
  })();
  const results = await Promise.all(runs);
  running = false;
  await sampling;
  t.equal(peak, 2, 'the upstream never sees more than the limit');
  t.same(results.map((r) => r.status), [200, 200, 200, 200, 200, 200]);
  t.ok(results.every((r) => r.text.includes('[DONE]')));
  const after = await get(tb, '/api/industrial/capacity');
  t.equal(after.totalInFlight, 0);
  t.equal(after.queue.size, 0);
  t.equal(await metricValue(tb.url, 'broker_capacity_in_flight', { deployment: 'cap-1' }), 0);
});

t.test('capacity gating without queueing: the extra streams get 429 capacity_exhausted', async (t) => {
  // Streams of 4 s: on a loaded box the six requests may arrive over a second or more, and a
  // stream that ended meanwhile gave its slot to one of them (three 200s).
  const slow = await mock(t, { tokens: 160, tps: 40 });
  const tb = await broker(t, { scheduler: { queueWhenFull: false }, modelGroups: { g: { deployments: [{ id: 'cap-2', provider: 'openai', url: slow.url, model: 'm', concurrencyLimit: 2 }] } } });
  const results = await Promise.all(Array.from({ length: 6 }, () => chat(tb, 'g', { stream: true })));
  const statuses = results.map((r) => r.status).sort();
  t.same(statuses, [200, 200, 429, 429, 429, 429]);
  const rejected = results.find((r) => r.status === 429)!;
  t.equal(JSON.parse(rejected.text).error.code, 'capacity_exhausted');
  t.equal(rejected.headers['retry-after'], '1');
  t.equal((await get(tb, '/api/industrial/status')).capacityGating.stats.totalInFlight, 0);
});

t.test('a queued request past its wait limit gets 504 queue_timeout', async (t) => {
  const slow = await mock(t, { tokens: 20, tps: 20 });
  const tb = await broker(t, { scheduler: { maxWaitMs: 100 }, modelGroups: { g: { deployments: [{ id: 'cap-3', provider: 'openai', url: slow.url, model: 'm', concurrencyLimit: 1 }] } } });
  const first = chat(tb, 'g', { stream: true });
  await until(async () => (await get(tb, '/api/industrial/capacity/cap-3')).inFlight === 1, 'first running');
  const second = await chat(tb, 'g');
  t.equal(second.status, 504);
  t.equal(JSON.parse(second.text).error.code, 'queue_timeout');
  t.equal(second.headers['retry-after'], '1', 'with Retry-After, as the 429 of a full queue and an inference queue timeout');
  t.equal((await first).status, 200);
  t.ok((await metricValue(tb.url, 'broker_capacity_rejections_total', { code: 'queue_timeout' })) >= 1);
});

t.test('priority routing: waiting requests are served by priority', async (t) => {
  // The blocker streams until the test lets go of it (however slow the machine); the queued ones are short.
  const m = await mock(t, { tokens: 1000, tps: 30 });
  // A key with priority 9; its requests lower it by header (a header may only lower it).
  const tb = await broker(t, { apiKeys: { 'sk-prio': { priority: 9 } }, modelGroups: { g: { deployments: [{ id: 'prio-1', provider: 'openai', url: m.url, model: 'm', concurrencyLimit: 1 }] } } }, { BROKER_FF_PRIORITY_ROUTING: 'true' });
  const release = new AbortController();
  const blocker = chat(tb, 'g', { stream: true, signal: release.signal }).catch(() => 'released');
  await until(async () => (await get(tb, '/api/industrial/capacity/prio-1')).inFlight === 1, 'blocker running');
  const order: string[] = [];
  const queued: Promise<unknown>[] = [];
  for (const p of ['low', 'normal', 'high']) {
    queued.push(chat(tb, 'g', { maxTokens: 2, headers: { 'x-api-key': 'sk-prio', 'x-broker-priority': p } }).then(() => order.push(p)));
    const n = queued.length;
    await until(async () => (await get(tb, '/api/industrial/capacity')).queue.size === n, `${n} queued`);
  }
  release.abort();
  t.equal(await blocker, 'released');
  await Promise.all(queued);
  t.same(order, ['high', 'normal', 'low']);
});

t.test('priority routing: a full queue sheds its newest lowest-priority waiter for a higher one', async (t) => {
  const m = await mock(t, { tokens: 1000, tps: 30 });
  const tb = await broker(
    t,
    { apiKeys: { 'sk-prio': { priority: 9 } }, scheduler: { maxQueue: 3, maxWaitMs: 30_000 }, modelGroups: { g: { deployments: [{ id: 'shed-1', provider: 'openai', url: m.url, model: 'm', concurrencyLimit: 1 }] } } },
    { BROKER_FF_PRIORITY_ROUTING: 'true' },
  );
  const release = new AbortController();
  const blocker = chat(tb, 'g', { stream: true, signal: release.signal }).catch(() => 'released');
  await until(async () => (await get(tb, '/api/industrial/capacity/shed-1')).inFlight === 1, 'blocker running');
  const order: string[] = [];
  const as = (p: string, name: string) => chat(tb, 'g', { maxTokens: 2, headers: { 'x-api-key': 'sk-prio', 'x-broker-priority': p } }).then((r) => (order.push(name), r));
  const lows: Promise<Awaited<ReturnType<typeof chat>>>[] = [];
  for (let i = 0; i < 3; i++) {
    lows.push(as('low', `low${i}`));
    await until(async () => (await get(tb, '/api/industrial/capacity')).queue.size === i + 1, `${i + 1} queued`);
  }
  // Full of low ones: another low one is refused, nothing is shed.
  const refused = await as('low', 'low3');
  t.equal(refused.status, 429);
  t.match(JSON.parse(refused.text).error, { code: 'capacity_exhausted', message: /queue is full \(3\)/ });
  // A high one takes the place of a low one, which is refused with the reason: the newest on
  // the thread that took the high one (with one thread, the newest of all).
  const high = as('9', 'high');
  await until(async () => order.length === 2, 'a low one shed');
  const shedName = order[1]!;
  const shed = await lows[Number(shedName.slice(3))]!;
  if (process.env.FRONT_THREADS === '0') t.equal(shedName, 'low2', 'one thread: the newest low one');
  t.equal(shed.status, 429, 'a low one was shed');
  t.equal(shed.headers['retry-after'], '1');
  t.match(JSON.parse(shed.text).error, { code: 'capacity_exhausted', message: /shed from the full queue \(3\) for a request of higher priority/ });
  t.equal((await get(tb, '/api/industrial/capacity')).queue.size, 3, 'still full: two low and the high one');
  t.equal(await metricValue(tb.url, 'broker_queue_shed_total', { group: 'g' }), 1);
  t.equal((await get(tb, '/api/orchestrator/queue')).shed, 1);
  // Priority routing off: the low ones queued before keep their level, but nobody is shed now.
  t.equal((await send(tb, 'PUT', '/api/industrial/flags/priority_routing', { enabled: false })).status, 200);
  const after = await as('9', 'refused-after-off');
  t.equal(after.status, 429);
  t.match(JSON.parse(after.text).error.message, /queue is full \(3\)/, 'refused, as every request is 5 now');
  t.equal((await get(tb, '/api/orchestrator/queue')).shed, 1, 'no more shed');
  t.equal((await send(tb, 'PUT', '/api/industrial/flags/priority_routing', { enabled: true })).status, 200);
  release.abort();
  t.equal(await blocker, 'released');
  const rest = ['low0', 'low1', 'low2'].filter((n) => n !== shedName);
  const served = await Promise.all([high, ...rest.map((n) => lows[Number(n.slice(3))]!)]);
  t.same(served.map((r) => r.status), [200, 200, 200]);
  t.same(order, ['low3', shedName, 'refused-after-off', 'high', ...rest], 'the high one went first, then the low ones in their order');
  t.equal((await get(tb, '/api/industrial/capacity')).queue.size, 0);
});

t.test('self-declared identity: headers cannot raise a priority or a tier, nor replace a known key\'s label', async (t) => {
  const m = await mock(t, { tokens: 1000, tps: 30 });
  const tb = await broker(t,
    {
      apiKeys: { 'sk-low': { priority: 2, label: 'nightly' } },
      modelGroups: { g: { deployments: [{ id: 'self-1', provider: 'openai', url: m.url, model: 'm', concurrencyLimit: 1 }] } },
    },
    { BROKER_FF_PRIORITY_ROUTING: 'true', BROKER_FF_QOS_SWITCHING: 'true' },
  );
  // A keyless client asking for realtime stays standard.
  const r = await send(tb, 'POST', '/api/industrial/qos/resolve', { tier: 'realtime' });
  t.equal(r.body.tier.name, 'standard');
  t.match(r.body.reason, /cannot raise/);
  // A low-priority key asking for critical waits behind a keyless normal request.
  const release = new AbortController();
  const blocker = chat(tb, 'g', { stream: true, signal: release.signal }).catch(() => 'released');
  await until(async () => (await get(tb, '/api/industrial/capacity/self-1')).inFlight === 1, 'blocker running');
  const order: string[] = [];
  const lowKey = chat(tb, 'g', { maxTokens: 2, headers: { 'x-api-key': 'sk-low', 'x-broker-priority': 'critical', 'x-broker-label': 'mine' } }).then(() => order.push('sk-low'));
  await until(async () => (await get(tb, '/api/industrial/capacity')).queue.size === 1, 'one queued');
  const keyless = chat(tb, 'g', { maxTokens: 2 }).then(() => order.push('keyless'));
  await until(async () => (await get(tb, '/api/industrial/capacity')).queue.size === 2, 'two queued');
  release.abort();
  await Promise.all([blocker, lowKey, keyless]);
  t.same(order, ['keyless', 'sk-low'], 'the key\'s priority 2 held against its header');
  const usage = await get(tb, '/api/industrial/usage');
  t.ok(usage.labels.some((l: any) => l.label === 'nightly'), "the key's label, not the header's");
  t.notOk(usage.labels.some((l: any) => l.label === 'mine'));
});

t.test('performance routing: a slow deployment is avoided, and comes back when it recovers', async (t) => {
  const fast = await mock(t, {});
  const slow = await mock(t, { ttftMs: 150 });
  const tb = await broker(t, {
    performance: { ttftDegradedMs: 80, minSamples: 1, alpha: 1, probeIntervalMs: 300 },
    modelGroups: { g: { deployments: [{ id: 'fast', provider: 'openai', url: fast.url, model: 'm' }, { id: 'slow', provider: 'openai', url: slow.url, model: 'm' }] } },
  });
  // Until both have answered (the one without data looks cheapest, so both get tried) and
  // only the slow one is degraded: with alpha 1 each is judged by its last sample, and the
  // fast one's first (a new connection, cold code) can pass 80 ms on a busy machine.
  await until(async () => {
    await chat(tb, 'g', { stream: true });
    const p = await get(tb, '/api/industrial/performance');
    return p.deployments.length === 2 && p.degraded.length === 1;
  }, 'both measured');
  const perf = await get(tb, '/api/industrial/performance');
  t.same(perf.degraded, ['slow'], 'the slow one is degraded');
  t.ok((await get(tb, '/api/industrial/performance/slow')).ttftMs > 80);
  // A degraded deployment still gets one probe per probeIntervalMs (300 ms), so a loop
  // slowed down by a busy machine may see more than one: each must be a probe. Each
  // data-plane thread judges and probes on its own: one probe per thread per interval.
  const used: { dep: string; at: number }[] = [];
  for (let i = 0; i < 10; i++) {
    const at = Date.now();
    used.push({ dep: (await chat(tb, 'g', { stream: true })).deployment!, at });
  }
  const picks = used.map((u) => u.dep);
  t.ok(picks.filter((d) => d === 'fast').length >= 5, `traffic moved away: ${picks}`);
  const slowAt = used.filter((u) => u.dep === 'slow').map((u) => u.at);
  const threads = Math.max(1, Number(process.env.FRONT_THREADS ?? '2'));
  for (let i = threads; i < slowAt.length; i++) t.ok(slowAt[i]! - slowAt[i - threads]! >= 250, `only probes reach the slow one: ${picks} at ${used.map((u) => u.at - used[0]!.at)} ms`);

  slow.setKnobs({ ttftMs: 0 });
  await until(async () => {
    await new Promise((r) => setTimeout(r, 320));
    await chat(tb, 'g', { stream: true });
    return !(await get(tb, '/api/industrial/performance')).degraded.includes('slow');
  }, 'slow to recover');
  // The gauge agrees with the view (on a loaded machine the fast one may itself be judged slow for a moment).
  await until(async () => (await metricValue(tb.url, 'broker_degraded_deployments')) === (await get(tb, '/api/industrial/performance')).degraded.length, 'the gauge to agree with the view');
  t.notOk((await get(tb, '/api/industrial/performance')).degraded.includes('slow'), 'the recovered one is not degraded');
  // Under load: with requests in flight on the fast one, the recovered one is cheaper again.
  // (One at a time, a fast one a few ms quicker may rightly keep winning.)
  const back = await Promise.all(Array.from({ length: 20 }, async () => (await chat(tb, 'g', { stream: true })).deployment!));
  t.ok(back.includes('slow'), `traffic comes back: ${back}`);
});

t.test('sticky routing: the same prompt prefix lands on the same deployment, and moves when it drains', async (t) => {
  const a = await mock(t, {});
  const b = await mock(t, {});
  const tb = await broker(t, { modelGroups: { g: { deployments: [{ id: 'st-a', provider: 'openai', url: a.url, model: 'm' }, { id: 'st-b', provider: 'openai', url: b.url, model: 'm' }] } } }, { BROKER_FF_STICKY_ROUTING: 'true', BROKER_FF_PERFORMANCE_ROUTING: 'false' });
  const first = await chat(tb, 'g', { content: 'You are a helpful assistant. Conversation 42.' });
  const pinned = first.deployment!;
  for (let i = 0; i < 10; i++) t.equal((await chat(tb, 'g', { content: 'You are a helpful assistant. Conversation 42.' })).deployment, pinned);
  t.ok((await metricValue(tb.url, 'broker_sticky_lookups_total', { result: 'hit' })) >= 10);
  t.equal(await metricValue(tb.url, 'fleet_drained_deployments'), 0);
  const drained = await send(tb, 'POST', `/api/industrial/capacity/${pinned}/drain`, { draining: true });
  t.equal(drained.body.draining, true);
  t.equal(await metricValue(tb.url, 'fleet_drained_deployments'), 1, 'the drain shows in a metric');
  const other = pinned === 'st-a' ? 'st-b' : 'st-a';
  for (let i = 0; i < 5; i++) t.equal((await chat(tb, 'g', { content: 'You are a helpful assistant. Conversation 42.' })).deployment, other, 'moved off the drained one');
  await send(tb, 'POST', `/api/industrial/capacity/${pinned}/drain`, { draining: false });
  t.equal(await metricValue(tb.url, 'fleet_drained_deployments'), 0);
  const bare = await fetch(`${tb.url}/api/industrial/capacity/${pinned}/drain`, { method: 'POST', headers: admin });
  t.equal(bare.status, 200, 'no body drains, as documented');
  t.equal(((await bare.json()) as any).draining, true);
  await send(tb, 'POST', `/api/industrial/capacity/${pinned}/drain`, { draining: false });
  t.equal((await chat(tb, 'g', { content: 'You are a helpful assistant. Conversation 42.' })).deployment, other, 'the new pin holds');
  const status = await get(tb, '/api/industrial/status');
  t.equal(status.stickyRouting.enabled, true);
  // Every flag has its subsystem's entry (warm_first_routing had none).
  for (const flag of Object.keys(status.flags)) {
    const key = flag.replace(/_([a-z])/g, (_: string, c: string) => c.toUpperCase());
    t.equal(status[key]?.enabled, status.flags[flag].enabled, `${key} says whether ${flag} is on`);
  }
  t.ok(status.stickyRouting.stats.hits >= 15);
});

t.test('quotas: RPM per deployment and TPM per API key give 429 with Retry-After; flags switch it at once', async (t) => {
  const m = await mock(t, { tokens: 5 });
  const tb = await broker(t, {
    apiKeys: { 'sk-small': { tpm: 300, label: 'small-team' }, 'sk-plain': {} },
    modelGroups: {
      g: { deployments: [{ id: 'q-1', provider: 'openai', url: m.url, model: 'm', rpm: 3 }] },
      h: { deployments: [{ id: 'q-2', provider: 'openai', url: m.url, model: 'm' }] },
      k: { deployments: [{ id: 'q-3', provider: 'openai', url: m.url, model: 'm' }] },
    },
  });
  // Off by default: the RPM limit is not enforced.
  for (let i = 0; i < 4; i++) t.equal((await chat(tb, 'g')).status, 200);
  const on = await send(tb, 'PUT', '/api/industrial/flags/quota_enforcement', { enabled: true });
  t.same(on.body.quota_enforcement, { enabled: true, source: 'override' });
  const statuses: number[] = [];
  let refused;
  for (let i = 0; i < 4; i++) {
    const r = await chat(tb, 'g');
    statuses.push(r.status);
    if (r.status === 429) refused = r;
  }
  t.same(statuses, [200, 200, 200, 429], 'three per minute');
  const body = JSON.parse(refused!.text);
  t.equal(body.error.code, 'quota_exceeded');
  const retryAfter = Number(refused!.headers['retry-after']);
  t.ok(retryAfter >= 55 && retryAfter <= 60, `Retry-After ${retryAfter} is when the window frees`);

  // TPM per API key: each request reserves its prompt plus max_tokens.
  const keyed = { authorization: 'Bearer sk-small' };
  const big = async () =>
    (
      await request(`${tb.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...keyed },
        body: JSON.stringify({ model: 'h', messages: messages(), max_tokens: 120 }),
      })
    );
  t.equal(refused!.headers['x-ratelimit-limit-requests'], undefined, "a deployment's quota is not the client's: no x-ratelimit-*");
  const r1 = await big();
  t.equal(r1.statusCode, 200);
  await r1.body.text();
  // The key's quota after the request, as OpenAI sends it: the reservation (prompt + max_tokens) counted.
  t.equal(r1.headers['x-ratelimit-limit-tokens'], '300');
  const left1 = Number(r1.headers['x-ratelimit-remaining-tokens']);
  t.ok(left1 >= 0 && left1 <= 300 - 120, `remaining ${left1} counts the reservation`);
  t.match(r1.headers['x-ratelimit-reset-tokens'], /^\d+(\.\d+)?s$/, 'reset as OpenAI writes it');
  t.equal(r1.headers['x-ratelimit-limit-requests'], undefined, 'no rpm on the key: nothing said about requests');
  t.equal(r1.headers['anthropic-ratelimit-tokens-limit'], undefined, "Anthropic's names only on the Messages API");
  // The reconcile follows the reply's last byte (on a busy box, after the client read it): wait for it.
  await until(async () => Object.values((await get(tb, '/api/industrial/quota')).subjects as Record<string, { reservedTokens: number }>).every((u) => u.reservedTokens === 0), 'the first request reconciled');
  const r2 = await big();
  t.equal(r2.statusCode, 200, 'reconciled down to real usage, so a second fits');
  await r2.body.text();
  // Without the reconcile, two full reservations: 300 - 2 × (300 - left1).
  t.ok(Number(r2.headers['x-ratelimit-remaining-tokens']) > 2 * left1 - 300, 'the first was reconciled to its real usage before the second counted');
  t.ok(Number(r2.headers['x-ratelimit-remaining-tokens']) < left1, 'and the second took its share');
  const messagesApi = await request(`${tb.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': 'sk-small', 'anthropic-version': '2023-06-01' },
    body: JSON.stringify({ model: 'h', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }] }),
  });
  t.equal(messagesApi.statusCode, 200);
  await messagesApi.body.text();
  t.equal(messagesApi.headers['anthropic-ratelimit-tokens-limit'], '300', "the Messages API has Anthropic's names too");
  t.match(messagesApi.headers['anthropic-ratelimit-tokens-reset'], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
  t.equal(messagesApi.headers['x-ratelimit-limit-tokens'], '300');
  const r3 = await big();
  t.equal(r3.statusCode, 200);
  await r3.body.text();
  const usage = await get(tb, '/api/industrial/quota');
  t.ok(usage.subjects[`key:${keyId('sk-small')}`].tpm < 300, 'real usage, not reservations, stays in the window');
  t.notMatch(JSON.stringify(usage), /sk-small/, 'the key itself is never shown, only its id');
  // A misspelt field is refused, and the limits stay (it would have replaced them with none).
  const typo = await send(tb, 'PUT', '/api/industrial/quota/key:sk-small', { rmp: 10 });
  t.equal(typo.status, 400);
  t.equal(typo.body.error.code, 'invalid_request');
  t.match(typo.body.error.message, /unknown field rmp/);
  const put = await send(tb, 'PUT', '/api/industrial/quota/key:sk-small', { tpm: 10 });
  t.equal(put.body.subject, `key:${keyId('sk-small')}`, 'addressed by the key, answered by its id');
  await until(async () => tb.logs.some((l) => l.msg === 'request' && String(l.path).includes(keyId('sk-small'))), 'the access line');
  t.notMatch(JSON.stringify(tb.logs), /sk-small/, 'neither the audit line nor the access log has the key');
  const r4 = await big();
  t.equal(r4.statusCode, 429);
  t.equal(((await r4.body.json()) as any).error.code, 'quota_exceeded');
  // 121 tokens can never fit a tpm of 10: no Retry-After, and the SDKs are told not to retry.
  t.equal(r4.headers['x-should-retry'], 'false');
  t.equal(r4.headers['retry-after'], undefined);
  t.equal(r4.headers['x-ratelimit-limit-tokens'], '10', "the refusal carries the key's figures too");
  t.ok(Number(r4.headers['x-ratelimit-remaining-tokens']) >= 0);
  // The override cleared: the key's own limit from the file holds again, not none.
  t.equal((await send(tb, 'PUT', '/api/industrial/quota/key:sk-small', {})).status, 200);
  t.same((await get(tb, '/api/industrial/quota')).subjects[`key:${keyId('sk-small')}`].limits, { tpm: 300 }, "the file's tpm 300 again");
  t.equal((await send(tb, 'PUT', '/api/industrial/quota/key:sk-small', { tpm: 10 })).status, 200);

  // A deployment without a quota in the fleet file gets one at run time: in force at once.
  t.equal((await chat(tb, 'h')).status, 200);
  t.equal((await send(tb, 'PUT', '/api/industrial/quota/deployment:q-2', { rpm: 1 })).status, 200);
  const runtime: number[] = [];
  for (let i = 0; i < 3; i++) runtime.push((await chat(tb, 'h')).status);
  t.same(runtime, [200, 429, 429], 'the run-time RPM limit holds');
  const unknownDep = await send(tb, 'PUT', '/api/industrial/quota/deployment:q-22', { rpm: 1 });
  t.equal(unknownDep.status, 404, 'a limit on a deployment the fleet does not have is refused');
  t.equal(unknownDep.body.error.code, 'not_found');
  t.equal((await send(tb, 'PUT', '/api/industrial/quota/deployment:q-22', { rpm: null })).status, 200, 'clearing one stays possible');
  // A key the file gives no limit gets one at run time: in force at once too.
  t.equal((await send(tb, 'PUT', '/api/industrial/quota/key:sk-plain', { rpm: 2 })).status, 200);
  const plain: number[] = [];
  for (let i = 0; i < 3; i++) {
    const r = await request(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer sk-plain' }, body: JSON.stringify({ model: 'k', messages: messages() }) });
    await r.body.text();
    plain.push(r.statusCode);
  }
  t.same(plain, [200, 200, 429], "an operator's RPM on a key with none of its own holds");

  const off = await send(tb, 'DELETE', '/api/industrial/flags/quota_enforcement');
  t.same(off.body.quota_enforcement, { enabled: false, source: 'default' });
  t.equal((await chat(tb, 'g')).status, 200, 'reverted at once');
  t.ok((await metricValue(tb.url, 'broker_quota_rejections_total')) >= 2);
});

t.test('flags API: list, override, bulk, clear, audit, validation, admin only', async (t) => {
  const m = await mock(t, {});
  const tb = await broker(t, { modelGroups: { g: { deployments: [{ id: 'f-1', provider: 'openai', url: m.url, model: 'm' }] } } }, { BROKER_FF_QOS_SWITCHING: 'true' });
  const flags = await get(tb, '/api/industrial/flags');
  t.same(flags.qos_switching, { enabled: true, source: 'env' });
  t.same(flags.capacity_gating, { enabled: true, source: 'default' });
  t.same(flags.sticky_routing, { enabled: false, source: 'default' });
  t.equal(Object.keys(flags).length, 10);
  t.equal((await send(tb, 'PUT', '/api/industrial/flags/nope', { enabled: true })).status, 404);
  t.equal((await send(tb, 'PUT', '/api/industrial/flags/sticky_routing', { enabled: 'yes' })).status, 400);
  const bulk = await send(tb, 'POST', '/api/industrial/flags/bulk', { sticky_routing: true, qos_switching: false });
  t.same(bulk.body.qos_switching, { enabled: false, source: 'override' });
  const cleared = await send(tb, 'DELETE', '/api/industrial/flags');
  t.same(cleared.body.qos_switching, { enabled: true, source: 'env' });
  t.same(cleared.body.sticky_routing, { enabled: false, source: 'default' });
  const audit = await get(tb, '/api/industrial/flags/audit');
  t.same(audit.entries.map((e: any) => [e.actor, e.flag, e.action, e.old, e.new]), [
    ['admin-token (x-actor: tester)', 'sticky_routing', 'set', false, true],
    ['admin-token (x-actor: tester)', 'qos_switching', 'set', true, false],
    ['admin-token (x-actor: tester)', 'qos_switching', 'clear', false, true],
    ['admin-token (x-actor: tester)', 'sticky_routing', 'clear', true, false],
  ]);
  t.ok(tb.logs.some((l) => l.msg === 'feature flag changed' && l.actor === 'admin-token (x-actor: tester)'), 'audited in the log: the caller, and the name it gave beside it');
  t.equal((await fetch(`${tb.url}/api/industrial/flags`)).status, 401, 'admin credential needed');
});

t.test('QoS: tiers, resolve, header tier, group restriction, output cap', async (t) => {
  const m = await mock(t, { tokens: 50 });
  const tb = await broker(t, 
    {
      qos: {
        defaultTier: 'standard',
        tiers: {
          standard: { maxQueueWaitMs: 5000 },
          batch: { maxQueueWaitMs: 60000, maxOutputTokens: 8, allowedGroups: ['cheap'], capacityShare: 0.5, priority: 1 },
        },
      },
      apiKeys: { 'sk-batch': { tier: 'batch' } },
      modelGroups: { cheap: { deployments: [{ id: 'c-1', provider: 'openai', url: m.url, model: 'm' }] }, premium: { deployments: [{ id: 'p-1', provider: 'openai', url: m.url, model: 'm' }] } },
    },
    { BROKER_FF_QOS_SWITCHING: 'true' },
  );
  const qos = await get(tb, '/api/industrial/qos');
  t.same(qos.tiers.map((x: any) => x.name), ['standard', 'batch']);
  const resolved = await send(tb, 'POST', '/api/industrial/qos/resolve', { apiKey: 'sk-batch', group: 'premium' });
  t.equal(resolved.body.tier.name, 'batch');
  t.equal(resolved.body.source, 'api_key');
  t.equal(resolved.body.allowed, false);
  t.match(resolved.body.reason, /premium/);
  const denied = await chat(tb, 'premium', { headers: { authorization: 'Bearer sk-batch' } });
  t.equal(denied.status, 403);
  const capped = await chat(tb, 'cheap', { headers: { 'x-broker-qos': 'batch' } });
  t.equal(capped.status, 200);
  t.equal(JSON.parse(capped.text).usage.completion_tokens, 8, 'the tier caps output tokens');
  t.equal((m.stats.lastBody as any).max_tokens, 8);
  const std = await chat(tb, 'premium');
  t.equal(JSON.parse(std.text).usage.completion_tokens, 50);
});

t.test('usage, prediction, PTU advice and the combined status', async (t) => {
  const m = await mock(t, { tokens: 30 });
  const tb = await broker(t, 
    { ptu: [{ name: 'ptu-east', capacityTpm: 100000, label: 'summaries' }], modelGroups: { g: { deployments: [{ id: 'u-1', provider: 'openai', url: m.url, model: 'm' }] } } },
    { BROKER_FF_OUTPUT_PREDICTION: 'true' },
  );
  for (let i = 0; i < 12; i++) t.equal((await chat(tb, 'g', { headers: { 'x-broker-label': 'summaries' } })).status, 200);
  const usage = await get(tb, '/api/industrial/usage');
  const s = usage.labels.find((l: any) => l.label === 'summaries');
  t.equal(s.requests, 12);
  const profile = await get(tb, '/api/industrial/usage/summaries');
  t.equal(profile.buckets.length, 168);
  t.equal(profile.buckets.reduce((n: number, b: any) => n + b.requests, 0), 12);
  t.equal((await fetch(`${tb.url}/api/industrial/usage/nobody`, { headers: admin })).status, 404);
  const predictions = await get(tb, '/api/industrial/predictions');
  const p = predictions.labels.find((l: any) => l.label === 'summaries');
  t.equal(p.samples, 12);
  t.equal(p.p90, 30, 'learned the output length');
  t.ok((await metricValue(tb.url, 'broker_output_prediction_error_tokens_count')) >= 12);
  const ptu = await get(tb, '/api/industrial/ptu');
  t.equal(ptu.deployments[0].name, 'ptu-east');
  const rec = await get(tb, '/api/industrial/ptu/recommendations');
  t.equal(rec.recommendations[0].name, 'ptu-east');
  t.type(rec.recommendations[0].action, 'string');
  const head = await get(tb, '/api/industrial/ptu/ptu-east/headroom?currentTpm=50000');
  t.equal(head.headroomTpm, 50000);
  t.equal((await fetch(`${tb.url}/api/industrial/ptu/ptu-east/headroom`, { headers: admin })).status, 400);
  const status = await get(tb, '/api/industrial/status');
  t.equal(status.usagePatterns.trackedLabels, 1);
  t.equal(status.ptuAdvisory.registeredDeployments, 1);
  t.equal(status.capacityGating.enabled, true);
  t.equal(status.capacityGating.stats.totalInFlight, 0);
  t.equal(status.capacityGating.stats.totalRejected, 0);
  t.same(status.flags.output_prediction, { enabled: true, source: 'env' });
});

t.test('4,000 requests with random outcomes: every counter returns to 0', async (t) => {
  const ok = await mock(t, { tokens: 3 });
  const err = await mock(t, { fail: 500 });
  const cut = await mock(t, { tokens: 5, fail: 'reset', failAfter: 2 });
  const stall = await mock(t, { tokens: 5, fail: 'stall', failAfter: 1 });
  const slow = await mock(t, { tokens: 4, tps: 200 });
  const d = (id: string, m: MockUpstream, extra: Record<string, unknown> = {}) => ({ id, provider: 'openai', url: m.url, model: 'm', concurrencyLimit: 4, ...extra });
  const tb = await broker(t, 
    {
      scheduler: { maxQueue: 50, maxWaitMs: 200 },
      modelGroups: {
        ok: { deployments: [d('r-ok', ok)] },
        err: { deployments: [d('r-err', err)] },
        cut: { deployments: [d('r-cut', cut)] },
        // A whole reply's headers are waited for as long as the attempt by default (600 s): the
        // non-streamed requests to the stalled upstream end at 500 ms here.
        stall: { deployments: [d('r-stall', stall, { idleTimeoutMs: 30, headersTimeoutMs: 500 })] },
        slow: { deployments: [d('r-slow', slow)] },
      },
    },
    { LOG_LEVEL: 'warn', BROKER_FF_COMPILED_CHAIN: 'true' },
  );
  // Seeded, so a failure can be replayed.
  const rand = mulberry32(42);
  const groups = ['ok', 'ok', 'ok', 'err', 'cut', 'stall', 'slow', 'slow'];
  const seen = new Map<string, number>();
  let next = 0;
  const N = 4_000;
  await Promise.all(
    Array.from({ length: 64 }, async () => {
      while (next < N) {
        next++;
        const model = groups[Math.floor(rand() * groups.length)]!;
        const abort = rand() < 0.1 ? new AbortController() : undefined;
        if (abort) setTimeout(() => abort.abort(), Math.floor(rand() * 20));
        const stream = rand() < 0.7;
        let outcome: string;
        try {
          const r = await chat(tb, model, { stream, signal: abort?.signal });
          outcome = r.status === 200 ? (/"error"/.test(r.text) ? 'midstream_error' : 'ok') : String(r.status);
        } catch {
          outcome = 'client_abort';
        }
        seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
      }
    }),
  );
  t.ok(['ok', 'midstream_error', '502', 'client_abort'].every((o) => (seen.get(o) ?? 0) > 0), `every outcome happened: ${JSON.stringify([...seen])}`);
  await until(async () => (await get(tb, '/api/industrial/capacity')).totalInFlight === 0, 'all slots released');
  const cap = await get(tb, '/api/industrial/capacity');
  t.equal(cap.totalInFlight, 0);
  t.equal(cap.queue.size, 0);
  for (const dep of cap.deployments) t.equal(dep.inFlight, 0, dep.id);
  await until(async () => [ok, err, cut, stall, slow].every((m) => m.stats.open === 0), 'upstreams idle');
  t.equal(await metricValue(tb.url, 'broker_queue_depth'), 0);
  t.equal(await metricValue(tb.url, 'http_requests_active'), 1, 'only the scrape itself is active');
  const requests = await metricValue(tb.url, 'llm_requests_total');
  t.ok(requests > 0);
});
