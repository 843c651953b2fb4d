// Fleet management end to end, routing state: circuit breakers, bans, drain and
// maintenance, behind a broker with 2 data-plane threads (the test helper's default).
// Changes made through /api/orchestrator/* must be in force on every thread when the
// call returns.
import t from 'tap';
import { metricValue, type TestBroker } from '../helpers/broker.ts';
import { startMock } from '../helpers/fleet.ts';
import { broker as fleetBroker, chat, get, send, server, until, used } from './helpers.ts';

const broker = (fleet: Record<string, unknown>, env: Record<string, string> = {}): Promise<TestBroker> => fleetBroker(t, fleet, env);

t.test('breakers: trip on failures, a half-open trial closes them once the upstream recovers, a forced open holds until reset', async (t) => {
  const bad = await startMock(t, { fail: '500' });
  const good = await startMock(t);
  const tb = await broker({
    fleet: { breaker: { failureThreshold: 2, openMs: 300, halfOpenTrials: 1 } },
    modelGroups: { g: { deployments: [{ id: 'bad', provider: 'openai', url: bad.url, model: 'm' }, { id: 'good', provider: 'openai', url: good.url, model: 'm' }] } },
  }, { FLEET_HEALTH_CHECKS: 'false' });
  // Every request tried on bad fails over to good; two of them trip bad's breaker.
  for (let i = 0; i < 6; i++) t.equal((await chat(tb, 'g')).status, 200);
  await until(async () => (await get(tb, '/api/orchestrator/circuit-breakers/bad/m')).trips >= 1, 'the breaker to trip');
  const before = bad.stats.requests['/v1/chat/completions']!;
  const one = await get(tb, '/api/orchestrator/circuit-breakers/bad/m');
  t.ok(['open', 'half_open'].includes(one.state), `tripped (${one.state})`);
  t.match(one.lastError, /before the first byte/);
  t.ok((await metricValue(tb.url, 'circuit_breaker_transitions_total', { server: 'bad', model: 'm', to: 'open' })) >= 1);

  // The upstream recovers; after openMs a trial request goes through and closes the breaker.
  bad.setKnobs({ fail: 'none' });
  await until(async () => {
    await chat(tb, 'g');
    return (await get(tb, '/api/orchestrator/circuit-breakers/bad/m')).state === 'closed';
  }, 'the half-open trial to close it');
  t.ok(bad.stats.requests['/v1/chat/completions']! > before, 'the trial reached the upstream');
  t.equal(await metricValue(tb.url, 'circuit_breaker_state', { server: 'bad', model: 'm' }), 0);
  const m = await (await fetch(`${tb.url}/metrics`)).text();
  t.match(m, /circuit_breaker_transitions_total\{server="bad",model="m",to="half_open"\} [1-9]/, 'every transition under the model name the state gauge uses');
  t.notMatch(m, /circuit_breaker_transitions_total\{[^}]*model="m:latest"/);

  // Forced open: no traffic, even after openMs, until reset.
  const forced = await send(tb, 'POST', '/api/orchestrator/circuit-breakers/bad/m/open');
  t.equal(forced.status, 200);
  t.equal(forced.body.state, 'open');
  t.equal(forced.body.forced, true);
  await new Promise((r) => setTimeout(r, 400));
  t.same(new Set(await used(tb, 'g', 20)), new Set(['good']), 'a forced open is respected past openMs, on every thread');
  t.equal(await metricValue(tb.url, 'circuit_breaker_state', { server: 'bad', model: 'm' }), 2);
  t.equal((await send(tb, 'POST', '/api/orchestrator/circuit-breakers/bad/m/reset')).body.state, 'closed');
  await until(async () => (await used(tb, 'g', 10)).includes('bad'), 'bad back after the reset');
  t.equal((await send(tb, 'POST', '/api/orchestrator/circuit-breakers/bad/m/half-open')).body.state, 'half_open');
  // Half-open with its trial permits: the capacity view says the next request may go (it is the trial).
  await until(async () => (await get(tb, '/api/industrial/capacity/bad')).blockedBy !== undefined, 'the capacity view');
  t.match(await get(tb, '/api/industrial/capacity/bad'), { routable: true, blockedBy: null }, 'half-open with trials left is routable');
  t.equal((await send(tb, 'POST', '/api/orchestrator/circuit-breakers/bad/m/close')).body.state, 'closed');
  t.equal((await send(tb, 'POST', '/api/orchestrator/circuit-breakers/bad/reset')).body.reset, 1);
  // Unknown server or model: 404 from the one error table.
  const nope = await send(tb, 'GET', '/api/orchestrator/circuit-breakers/nope/m');
  t.equal(nope.status, 404);
  t.equal(nope.body.error.code, 'not_found');
  t.equal((await send(tb, 'POST', '/api/orchestrator/circuit-breakers/bad/other/open')).body.error.code, 'model_not_found');
});

t.test('bans exclude a server; a TTL ban lapses by itself; bans by model and pair', async (t) => {
  const a = await startMock(t);
  const b = await startMock(t);
  const tb = await broker({ modelGroups: { g: { deployments: [{ id: 'a', provider: 'openai', url: a.url, model: 'm' }, { id: 'b', provider: 'openai', url: b.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  const banned = await send(tb, 'POST', '/api/orchestrator/bans/server/a', { reason: 'flaky NIC' });
  t.equal(banned.status, 200);
  t.equal(banned.body.reason, 'flaky NIC');
  t.same(new Set(await used(tb, 'g', 20)), new Set(['b']), 'banned a gets nothing, on any thread');
  t.equal(await metricValue(tb.url, 'fleet_bans'), 1);
  t.equal((await send(tb, 'DELETE', '/api/orchestrator/bans/server/a')).body.removed, 1);
  await until(async () => (await used(tb, 'g', 10)).includes('a'), 'a back');

  const ttl = await send(tb, 'POST', '/api/orchestrator/bans/a/m', { reason: 'oom', ttlSeconds: 0.4 });
  t.ok(ttl.body.expiresAt !== null);
  t.same(new Set(await used(tb, 'g', 10)), new Set(['b']));
  await until(async () => (await get(tb, '/api/orchestrator/bans')).bans.length === 0, 'the TTL ban to lapse');
  await until(async () => (await used(tb, 'g', 10)).includes('a'), 'a back after the TTL');

  await send(tb, 'POST', '/api/orchestrator/bans/model/m', { reason: 'bad weights' });
  const none = await chat(tb, 'g');
  t.equal(none.status, 503, 'every server of the model banned: 503');
  t.match(none.text, /banned/);
  t.equal(none.retryAfter, '5', 'with Retry-After: a client told nothing retries at once');
  t.equal((await send(tb, 'DELETE', '/api/orchestrator/bans')).body.removed, 1);
  t.equal((await chat(tb, 'g')).status, 200);
  t.equal((await send(tb, 'POST', '/api/orchestrator/bans/server/ghost', {})).status, 404);
  t.equal((await send(tb, 'POST', '/api/orchestrator/bans/a/m', { ttlSeconds: -1 })).status, 400);
  const typo = await send(tb, 'POST', '/api/orchestrator/bans/a/m', { ttl: 60 });
  t.equal(typo.status, 400, 'a misspelt ttlSeconds is refused, not a permanent ban');
  t.match(typo.body.error, { code: 'invalid_request', param: 'ttl' });
  t.notOk((await get(tb, '/api/orchestrator/bans')).bans.some((b: { model: string | null; expiresAt: unknown }) => b.model === 'm' && b.expiresAt === null), 'no permanent ban was made');
});

t.test('drain lets in-flight streams finish while new requests go elsewhere; maintenance shows its reason', async (t) => {
  const slow = await startMock(t, { tokens: 20, tps: 40 });
  const other = await startMock(t);
  const tb = await broker({ modelGroups: { g: { deployments: [{ id: 'slow', provider: 'openai', url: slow.url, model: 'm', weight: 1000 }, { id: 'other', provider: 'openai', url: other.url, model: 'm', weight: 0.001 }] } } }, { FLEET_HEALTH_CHECKS: 'false', BROKER_FF_PERFORMANCE_ROUTING: 'false' });
  const streaming = chat(tb, 'g', { stream: true });
  await until(async () => slow.stats.open > 0, 'a stream on slow');
  const drained = await send(tb, 'POST', '/api/orchestrator/servers/slow/drain');
  t.equal(drained.body.state, 'draining');
  t.equal(drained.body.inFlight, 1);
  t.same(new Set(await used(tb, 'g', 10)), new Set(['other']), 'new requests go elsewhere');
  const s = await streaming;
  t.equal(s.status, 200);
  t.match(s.text, /\[DONE\]/, 'the in-flight stream finished');
  t.equal(s.deployment, 'slow');
  // The industrial face shows the same drain.
  t.equal((await get(tb, '/api/industrial/capacity/slow')).draining, true);
  await send(tb, 'POST', '/api/orchestrator/servers/slow/undrain');
  await until(async () => (await used(tb, 'g', 5)).includes('slow'), 'slow back');
  // A deployment drained alone shows in its server's view, and undraining the server lifts it.
  t.equal((await send(tb, 'POST', '/api/industrial/capacity/slow/drain', {})).status, 200);
  t.same((await server(tb, 'slow')).drainedDeployments, ['slow']);
  t.same(new Set(await used(tb, 'g', 5)), new Set(['other']));
  t.same((await send(tb, 'POST', '/api/orchestrator/servers/slow/undrain')).body.drainedDeployments, []);
  t.equal((await get(tb, '/api/industrial/capacity/slow')).draining, false);
  await until(async () => (await used(tb, 'g', 5)).includes('slow'), 'slow back after the server undrain');

  const m = await send(tb, 'POST', '/api/orchestrator/servers/other/maintenance', { enabled: true, reason: 'kernel upgrade' });
  t.equal(m.body.state, 'maintenance');
  t.same({ enabled: m.body.maintenance.enabled, reason: m.body.maintenance.reason }, { enabled: true, reason: 'kernel upgrade' });
  t.equal((await server(tb, 'other')).maintenance.reason, 'kernel upgrade');
  t.equal(await metricValue(tb.url, 'fleet_servers', { state: 'maintenance' }), 1);
  t.same(new Set(await used(tb, 'g', 10)), new Set(['slow']));
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/other/maintenance', { enabled: 'yes' })).status, 400);
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/other/maintenance', { enabled: false })).body.state, 'healthy');
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/ghost/drain')).status, 404);
});

