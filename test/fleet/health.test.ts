// Fleet management end to end, health: a killed server process, and what does not count
// as a failure, behind a broker with 2 data-plane threads (the test helper's default).
// Changes made through /api/orchestrator/* must be in force on every thread when the
// call returns.
import t from 'tap';
import { metricValue, type TestBroker } from '../helpers/broker.ts';
import { spawnMock, startMock } from '../helpers/fleet.ts';
import { FAST_CHECKS, broker as fleetBroker, chat, get, send, server, until, used } from './helpers.ts';

const broker = (fleet: Record<string, unknown>, env: Record<string, string> = {}): Promise<TestBroker> => fleetBroker(t, fleet, env);

t.test('a killed server turns unhealthy, traffic goes elsewhere with no client error, and it comes back when restarted', async (t) => {
  const a = await spawnMock(t);
  const b = await spawnMock(t);
  const tb = await broker({ fleet: FAST_CHECKS, modelGroups: { g: { deployments: [{ id: 'a', provider: 'openai', url: a.url, model: 'm' }, { id: 'b', provider: 'openai', url: b.url, model: 'm' }] } } });
  await until(async () => (await server(tb, 'a')).lastCheck !== null, 'a first health check');
  t.equal((await server(tb, 'a')).state, 'healthy');

  await a.kill();
  // Requests while a is dead but not yet known to be: retried on b, never an error.
  const during = await Promise.all(Array.from({ length: 20 }, () => chat(tb, 'g')));
  t.same(during.map((r) => r.status), Array(20).fill(200), 'no client error while a is down');
  await until(async () => (await server(tb, 'a')).state === 'unhealthy', 'a marked unhealthy');
  const s = await server(tb, 'a');
  t.ok(s.consecutiveFailures >= 2, `failed its threshold of checks (${s.consecutiveFailures})`);
  t.match(s.lastError, /ECONNREFUSED|timed out/);
  t.same(new Set(await used(tb, 'g', 20)), new Set(['b']), 'new requests go to b only');
  t.ok((await metricValue(tb.url, 'fleet_health_check_failures_total', { server: 'a' })) >= 2);
  t.equal(await metricValue(tb.url, 'fleet_servers', { state: 'unhealthy' }), 1);
  const health = await get(tb, '/api/orchestrator/health');
  t.same(health.servers, { healthy: 1, available: 1, total: 2 });
  t.equal(health.status, 'healthy', 'one healthy server is enough to serve');

  await a.restart();
  await until(async () => (await server(tb, 'a')).state === 'healthy', 'a healthy again');
  await until(async () => (await used(tb, 'g', 10)).includes('a'), 'a gets traffic again');
  t.pass('a serves again after its restart');
});

t.test('a server back up but not yet through healthyThreshold checks stays unhealthy with the reason it went out', async (t) => {
  const a = await spawnMock(t);
  const b = await spawnMock(t);
  const checks = { healthCheck: { intervalMs: 150, timeoutMs: 3000, unhealthyThreshold: 2, healthyThreshold: 4 } };
  const tb = await broker({ fleet: checks, modelGroups: { g: { deployments: [{ id: 'a', provider: 'openai', url: a.url, model: 'm' }, { id: 'b', provider: 'openai', url: b.url, model: 'm' }] } } });
  await until(async () => (await server(tb, 'a')).lastCheck !== null, 'a first health check');
  await a.kill();
  await until(async () => (await server(tb, 'a')).state === 'unhealthy', 'a marked unhealthy');
  await a.restart();
  // Its checks pass again (no failures in a row) while it is still out: 3 checks, 450 ms.
  let between: any;
  await until(async () => {
    const s = await server(tb, 'a');
    if (s.state === 'unhealthy' && s.consecutiveFailures === 0) between ??= s;
    return s.state === 'healthy';
  }, 'a healthy again');
  t.ok(between !== undefined, 'seen passing its checks while still unhealthy');
  t.match(between?.lastError, /ECONNREFUSED|timed out/, 'with the reason it went out, not null');
  t.equal((await server(tb, 'a')).lastError, null, 'healthy: no error');
});

t.test('a 429 and a client that goes away do not trip a breaker', async (t) => {
  const busy = await startMock(t, { fail: '429' });
  const slow = await startMock(t, { ttftMs: 2000 });
  const tb = await broker({ fleet: { breaker: { failureThreshold: 1 } }, modelGroups: { busy: { deployments: [{ id: 'busy', provider: 'openai', url: busy.url, model: 'm' }] }, slow: { deployments: [{ id: 'slow', provider: 'openai', url: slow.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  for (let i = 0; i < 3; i++) {
    const r = await chat(tb, 'busy');
    t.equal(r.status, 503, 'an upstream 429 on the last deployment: 503 with Retry-After');
    t.match(r.text, /rate limited/);
  }
  for (let i = 0; i < 3; i++) {
    const ac = new AbortController();
    const p = chat(tb, 'slow', { stream: true, signal: ac.signal }).catch(() => undefined);
    await until(async () => slow.stats.open > 0, 'the upstream request');
    ac.abort();
    await p;
    await slow.idle();
  }
  await new Promise((r) => setTimeout(r, 100));
  const list = (await get(tb, '/api/orchestrator/circuit-breakers')).breakers;
  t.same(list.map((b: any) => [b.server, b.state]).sort(), [['busy', 'closed'], ['slow', 'closed']]);
});


// /api/orchestrator/health said "healthy" with one server drained and the other banned, while
// every chat answered 503: the operator's blocks count, as requests see them.
t.test('orchestrator health is unhealthy when drains and bans leave nothing to serve, healthy again when one is lifted', async (t) => {
  const a = await startMock(t);
  const b = await startMock(t);
  const tb = await broker({ modelGroups: { g: { deployments: [{ id: 'a', provider: 'openai', url: a.url, model: 'm' }, { id: 'b', provider: 'openai', url: b.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  const before = await get(tb, '/api/orchestrator/health');
  t.equal(before.status, 'healthy');
  t.same(before.deployments, { routable: 2, total: 2 });
  t.equal(before.servers.available, 2);
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/a/drain')).status, 200);
  t.equal((await send(tb, 'POST', '/api/orchestrator/bans/server/b', { reason: 'flaky NIC' })).status, 200);
  t.equal((await chat(tb, 'g')).status, 503, 'nothing serves');
  const blocked = await get(tb, '/api/orchestrator/health');
  t.equal(blocked.status, 'unhealthy', 'and the health says so');
  t.same(blocked.deployments, { routable: 0, total: 2 });
  t.same(blocked.groups, { serving: 0, total: 1, unserved: ['g'] }, 'the group that serves nothing is named');
  t.equal(blocked.servers.available, 0);
  t.equal(blocked.servers.total, 2);
  t.equal((await send(tb, 'DELETE', '/api/orchestrator/bans/server/b')).status, 200);
  const lifted = await get(tb, '/api/orchestrator/health');
  t.equal(lifted.status, 'healthy');
  t.same(lifted.deployments, { routable: 1, total: 2 });
  t.same(lifted.groups, { serving: 1, total: 1, unserved: [] });
  t.equal((await chat(tb, 'g')).status, 200);
});

// A deployment removed from the running config (its server removed) still counted, as
// routable: health said "healthy" while every request got 503, and the total only grew.
t.test("orchestrator health counts the running config's deployments only", async (t) => {
  const a = await startMock(t);
  const b = await startMock(t);
  const c = await startMock(t);
  const dep = (id: string, url: string) => ({ id, provider: 'openai', url, model: 'm' });
  const tb = await broker({ modelGroups: { g: { deployments: [dep('a', a.url), dep('b', b.url)] }, h: { deployments: [dep('c', c.url), dep('a2', a.url)] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  t.same((await get(tb, '/api/orchestrator/health')).deployments, { routable: 4, total: 4 });
  t.equal((await send(tb, 'DELETE', '/api/orchestrator/servers/c')).status, 200);
  t.same((await get(tb, '/api/orchestrator/health')).deployments, { routable: 3, total: 3 }, 'c is gone from the counts');
  for (const id of ['a', 'b', 'a2']) t.equal((await send(tb, 'POST', `/api/orchestrator/bans/server/${id}`, { reason: 'drill' })).status, 200);
  t.equal((await chat(tb, 'h')).status, 503, 'nothing serves');
  const health = await get(tb, '/api/orchestrator/health');
  t.equal(health.status, 'unhealthy');
  t.same(health.deployments, { routable: 0, total: 3 });
});

// A request every deployment failed before its first byte was in no request count of the
// analytics (only failedAttempts): errorRate stayed flat while clients got 502s.
t.test('analytics count a request that every deployment failed before its first byte as an error of the last one', async (t) => {
  const bad1 = await startMock(t, { fail: 500 });
  const bad2 = await startMock(t, { fail: 500 });
  const tb = await broker({ router: { failureThreshold: 100 }, modelGroups: { g: { deployments: [{ id: 'x', provider: 'openai', url: bad1.url, model: 'm' }, { id: 'y', provider: 'openai', url: bad2.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  for (let i = 0; i < 3; i++) t.equal((await chat(tb, 'g')).status, 502, 'both deployments fail: 502');
  let summary: any;
  await until(async () => (summary = await get(tb, '/api/orchestrator/analytics/summary')).requests === 3, 'three requests counted');
  t.match(summary, { requests: 3, errors: 3, failedAttempts: 6 }, 'each request an error, each attempt a failed attempt');
  t.equal(summary.errorRate, 1);
});

t.test('analytics count a request every deployment rate-limited (a 429 last) as an error too', async (t) => {
  const busy1 = await startMock(t, { fail: 429 });
  const busy2 = await startMock(t, { fail: 429 });
  const tb = await broker({ modelGroups: { g: { deployments: [{ id: 'x', provider: 'openai', url: busy1.url, model: 'm' }, { id: 'y', provider: 'openai', url: busy2.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  for (let i = 0; i < 2; i++) t.equal((await chat(tb, 'g')).status, 503, 'both rate limited: 503');
  let summary: any;
  await until(async () => (summary = await get(tb, '/api/orchestrator/analytics/summary')).requests === 2, 'two requests counted');
  t.match(summary, { requests: 2, errors: 2 });
});
