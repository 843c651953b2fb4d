// Fleet management end to end: a broker (FRONT_THREADS from the helper: 2 data-plane
// threads) in front of mock upstreams, some of them processes of their own that the
// tests kill. Changes made through /api/orchestrator/* must be in force on every thread
// when the call returns.
import t from 'tap';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request } from 'undici';
import { stringify } from 'yaml';
import { admin, json, metricValue, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { spawnMock, startFleetBroker, startMock } from '../helpers/fleet.ts';

// Checks every 150 ms; a generous timeout, so that a loaded test machine is not taken for a dead server.
const FAST_CHECKS = { healthCheck: { intervalMs: 150, timeoutMs: 3000, unhealthyThreshold: 2, healthyThreshold: 1 } };
const broker = (fleet: Record<string, unknown>, env: Record<string, string> = {}): Promise<TestBroker> => startFleetBroker(t, fleet, { INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'true', ...env });

async function chat(tb: TestBroker, model: string, opts: { stream?: boolean; signal?: AbortSignal } = {}) {
  const res = await request(`${tb.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], stream: opts.stream ?? false }),
    signal: opts.signal,
  });
  const text = await res.body.text();
  return { status: res.statusCode, text, deployment: res.headers['x-broker-deployment'] as string | undefined };
}

async function get(tb: TestBroker, path: string): Promise<any> {
  return json(await fetch(`${tb.url}${path}`, { headers: admin }));
}

async function send(tb: TestBroker, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(`${tb.url}${path}`, { method, headers: { ...admin, 'content-type': 'application/json', ...headers }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: await json(res), headers: res.headers };
}

async function until(cond: () => Promise<boolean>, what: string, tries = 400): Promise<void> {
  for (let i = 0; i < tries; i++) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const server = async (tb: TestBroker, id: string): Promise<any> => (await get(tb, '/api/orchestrator/servers')).servers.find((s: any) => s.id === id);
const used = async (tb: TestBroker, model: string, n: number): Promise<string[]> => Promise.all(Array.from({ length: n }, async () => (await chat(tb, model)).deployment ?? 'none'));

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
  t.same(health.servers, { healthy: 1, total: 2 });
  t.equal(health.status, 'healthy', 'one healthy server is enough to serve');

  await a.restart();
  await until(async () => (await server(tb, 'a')).state === 'healthy', 'a healthy again');
  await until(async () => (await used(tb, 'g', 10)).includes('a'), 'a gets traffic again');
  t.pass('a serves again after its restart');
});

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
  t.equal((await send(tb, 'POST', '/api/orchestrator/circuit-breakers/bad/m/close')).body.state, 'closed');
  t.equal((await send(tb, 'POST', '/api/orchestrator/circuit-breakers/bad/reset')).body.reset, 1);
  // Unknown server or model: 404 from the one error table.
  const nope = await send(tb, 'GET', '/api/orchestrator/circuit-breakers/nope/m');
  t.equal(nope.status, 404);
  t.equal(nope.body.error.code, 'not_found');
  t.equal((await send(tb, 'POST', '/api/orchestrator/circuit-breakers/bad/other/open')).body.error.code, 'model_not_found');
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
  t.equal((await send(tb, 'DELETE', '/api/orchestrator/bans')).body.removed, 1);
  t.equal((await chat(tb, 'g')).status, 200);
  t.equal((await send(tb, 'POST', '/api/orchestrator/bans/server/ghost', {})).status, 404);
  t.equal((await send(tb, 'POST', '/api/orchestrator/bans/a/m', { ttlSeconds: -1 })).status, 400);
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

t.test('a server added at run time gets traffic (models from its health check); a removed one finishes its streams', async (t) => {
  const first = await startMock(t, { tokens: 20, tps: 40, models: ['llama3'] });
  const added = await startMock(t, { models: ['llama3', 'qwen'] });
  const tb = await broker({ servers: [{ id: 'first', provider: 'ollama', url: first.url, maxConcurrency: 4 }] });
  await until(async () => (await server(tb, 'first')).models.includes('llama3:latest'), 'first listed its models');
  t.equal((await chat(tb, 'llama3:latest')).status, 200, 'a model found by the health check is served under its own name');
  t.equal((await chat(tb, 'llama3')).status, 200, 'and without its :latest tag, as Ollama does');
  t.equal((await chat(tb, 'qwen')).status, 404, 'qwen is nowhere yet');

  const add = await send(tb, 'POST', '/api/orchestrator/servers/add', { id: 'second', url: added.url, maxConcurrency: 4 });
  t.equal(add.status, 200);
  t.same(add.body.models.sort(), ['llama3:latest', 'qwen:latest'], 'its models, from its first check, before the call returned');
  t.equal((await chat(tb, 'qwen')).deployment, 'second:qwen:latest', 'its own model is served at once, on every thread');
  await until(async () => (await used(tb, 'llama3', 10)).includes('second:llama3:latest'), 'second shares llama3');
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/add', { id: 'second', url: added.url })).status, 400, 'a duplicate id');
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/add', { id: 'x', url: 'ftp://nope' })).body.error.param, 'url');

  // Removing first while it streams: the stream finishes, new requests go to second.
  await send(tb, 'POST', '/api/orchestrator/servers/second/drain');
  const streaming = chat(tb, 'llama3', { stream: true });
  await until(async () => first.stats.open > 0, 'a stream on first');
  await send(tb, 'POST', '/api/orchestrator/servers/second/undrain');
  const removed = await send(tb, 'DELETE', '/api/orchestrator/servers/first');
  t.same(removed.body, { removed: 'first', inFlight: 1 });
  t.same(new Set(await used(tb, 'llama3', 10)), new Set(['second:llama3:latest']));
  const s = await streaming;
  t.match(s.text, /\[DONE\]/, 'the removed server finished its stream');
  t.equal(await server(tb, 'first'), undefined);
  t.equal((await send(tb, 'DELETE', '/api/orchestrator/servers/first')).status, 404);
});

t.test('warm-first: among eligible servers, the one with the model loaded goes first', async (t) => {
  const cold = await startMock(t, { models: ['llama3'], loaded: [] });
  const warm = await startMock(t, { models: ['llama3'], loaded: ['llama3'] });
  const tb = await broker({ fleet: FAST_CHECKS, servers: [{ id: 'cold', provider: 'ollama', url: cold.url, models: ['llama3'] }, { id: 'warm', provider: 'ollama', url: warm.url, models: ['llama3'] }] }, { BROKER_FF_PERFORMANCE_ROUTING: 'false' });
  await until(async () => (await server(tb, 'cold')).loadedModels !== null && (await server(tb, 'warm')).loadedModels !== null, 'both checked');
  t.same(new Set(await used(tb, 'llama3', 20)), new Set(['warm:llama3']), 'the warm server takes them all');
  const status = (await get(tb, '/api/orchestrator/models/status')).models.find((m: any) => m.model === 'llama3');
  t.same(status.loadedOn, ['warm']);
  t.same(status.servers.sort(), ['cold', 'warm']);
  // Once both are warm, both serve.
  cold.setKnobs({ loaded: ['llama3'] });
  await until(async () => (await server(tb, 'cold')).loadedModels.length === 1, 'cold reports the model loaded');
  await until(async () => (await used(tb, 'llama3', 20)).includes('cold:llama3'), 'cold gets traffic once warm');
  t.pass('both warm: both serve');
});

t.test('queue pause and resume: requests wait while paused, none is lost', async (t) => {
  const m = await startMock(t);
  const tb = await broker({ modelGroups: { g: { deployments: [{ id: 'q', provider: 'openai', url: m.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  t.same((await send(tb, 'POST', '/api/orchestrator/queue/pause')).body, { paused: true });
  t.equal(await metricValue(tb.url, 'queue_paused'), 1);
  const waiting = Array.from({ length: 8 }, () => chat(tb, 'g'));
  await until(async () => (await get(tb, '/api/orchestrator/queue')).depth === 8, 'eight waiting');
  const q = await get(tb, '/api/orchestrator/queue');
  t.equal(q.paused, true);
  t.equal(m.stats.requests['/v1/chat/completions'], 0, 'nothing reached the upstream while paused');
  await new Promise((r) => setTimeout(r, 50));
  t.ok((await get(tb, '/api/orchestrator/queue')).oldestWaitMs > 0);
  await send(tb, 'POST', '/api/orchestrator/queue/resume');
  const done = await Promise.all(waiting);
  t.same(done.map((r) => r.status), Array(8).fill(200), 'all eight served after resume');
  t.equal((await get(tb, '/api/orchestrator/queue')).depth, 0);
});

t.test('config: get with a version, patch, schema, invalid and stale changes refused, save and reload', async (t) => {
  const m = await startMock(t);
  const dir = mkdtempSync(join(tmpdir(), 'eb-cfg-'));
  const file = join(dir, 'broker.yaml');
  writeFileSync(file, stringify({ modelGroups: { g: { deployments: [{ id: 'd', provider: 'openai', url: m.url, model: 'm' }] } } }));
  const tb = await startTestBroker({ BROKER_CONFIG: file, INFER_ENABLED: 'false' });
  t.teardown(() => tb.close());
  const res = await fetch(`${tb.url}/api/orchestrator/config`, { headers: admin });
  const etag = res.headers.get('etag')!;
  t.match(etag, /^"\d+"$/);
  t.same(((await res.json()) as any).modelGroups.g.deployments[0].id, 'd');
  const schema = await get(tb, '/api/orchestrator/config/schema');
  t.equal(schema.type, 'object');
  t.ok(schema.properties.modelGroups && schema.properties.servers && schema.properties.fleet, 'the schema covers the file');

  const patched = await send(tb, 'PATCH', '/api/orchestrator/config/queue', { maxSize: 2000 }, { 'if-match': etag });
  t.equal(patched.status, 200);
  t.equal(patched.body.config.scheduler.maxQueue, 2000);
  t.equal(await metricValue(tb.url, 'queue_max_size'), 2000);
  t.equal((await get(tb, '/api/orchestrator/queue')).maxSize, 2000);
  const stale = await send(tb, 'PATCH', '/api/orchestrator/config/queue', { maxSize: 5 }, { 'if-match': etag });
  t.equal(stale.status, 409, 'a stale If-Match');
  t.equal(stale.body.error.code, 'config_conflict');
  const bad = await send(tb, 'PATCH', '/api/orchestrator/config/queue', { maxSize: -1 });
  t.equal(bad.status, 400);
  t.equal(bad.body.error.param, 'maxSize', 'the error names the field');
  t.equal((await send(tb, 'PATCH', '/api/orchestrator/config/queue', { colour: 1 })).status, 400);
  t.equal((await send(tb, 'PATCH', '/api/orchestrator/config/metrics', { historyWindowMinutes: 30 })).status, 200);
  t.equal((await get(tb, '/api/orchestrator/analytics/summary')).windowMinutes, 30);
  const restoreBad = await send(tb, 'POST', '/api/orchestrator/config', { modelGroups: { g: { deployments: [{ id: 'd', provider: 'bedrock', url: m.url, model: 'm' }] } } });
  t.equal(restoreBad.body.error.param, 'modelGroups.g.deployments[0].provider');
  t.equal((await get(tb, '/api/orchestrator/config')).scheduler.maxQueue, 2000, 'nothing changed by the invalid ones');
  t.equal((await chat(tb, 'g')).status, 200);

  const saved = await send(tb, 'POST', '/api/orchestrator/config/save');
  t.equal(saved.status, 200);
  t.match(readFileSync(file, 'utf8'), /maxQueue: 2000/, 'written to the configured file');
  t.ok(existsSync(`${file}.bak`), 'the previous file kept as .bak');
  t.notMatch(readFileSync(`${file}.bak`, 'utf8'), /maxQueue/);

  // Edit the file by hand, reload it: in force.
  writeFileSync(file, readFileSync(file, 'utf8').replace('maxQueue: 2000', 'maxQueue: 77'));
  t.equal((await send(tb, 'POST', '/api/orchestrator/config/reload')).status, 200);
  t.equal((await get(tb, '/api/orchestrator/queue')).maxSize, 77);
  const other = join(dir, 'other.json');
  writeFileSync(other, JSON.stringify({ modelGroups: { h: { deployments: [{ id: 'h', provider: 'openai', url: m.url, model: 'm' }] } } }));
  t.equal((await send(tb, 'POST', '/api/orchestrator/config/reload', { configPath: other })).status, 200, 'another file in the same directory');
  t.equal((await chat(tb, 'h')).status, 200, 'its group is served on every thread');
  t.equal((await chat(tb, 'g')).status, 404, 'and the old one is gone');
  const outside = await send(tb, 'POST', '/api/orchestrator/config/reload', { configPath: '/etc/passwd' });
  t.equal(outside.status, 400, 'a file outside the config directory');
  t.match(outside.body.error.message, /inside/);
  t.equal((await send(tb, 'POST', '/api/orchestrator/config/reload', { configPath: '../../etc/hosts' })).status, 400);
});

t.test('every route needs the admin credential; recovery tests keep their failures with an analysis', async (t) => {
  const m = await startMock(t);
  const tb = await broker({ modelGroups: { g: { deployments: [{ id: 'r', provider: 'openai', url: m.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  for (const path of ['/health', '/servers', '/circuit-breakers', '/bans', '/queue', '/config', '/metrics', '/recovery-failures']) {
    const r = await fetch(`${tb.url}/api/orchestrator${path}`);
    t.equal(r.status, 401, `${path} without credentials`);
  }
  const ok = await send(tb, 'POST', '/api/orchestrator/servers/r/models/m/recovery-test');
  t.equal(ok.body.ok, true);
  m.setKnobs({ fail: '500' });
  const failed = await send(tb, 'POST', '/api/orchestrator/servers/r/models/m/recovery-test');
  t.equal(failed.body.ok, false);
  t.equal(failed.body.kind, 'http_5xx');
  const history = await get(tb, '/api/orchestrator/recovery-failures/r/history');
  t.equal(history.history.length, 1);
  const analysis = await get(tb, '/api/orchestrator/recovery-failures/r/analysis');
  t.same(analysis.byKind, { http_5xx: 1 });
  t.ok(analysis.msSinceLastSuccess >= 0);
  const impact = await get(tb, '/api/orchestrator/recovery-failures/r/circuit-breaker-impact');
  t.equal(impact.breakers[0].model, 'm');
  t.equal((await get(tb, '/api/orchestrator/recovery-failures/r')).failures, 1);
  t.equal((await send(tb, 'POST', '/api/orchestrator/recovery-failures/r/reset')).body.reset, true);
  t.equal((await get(tb, '/api/orchestrator/recovery-failures/r')).failures, 0);
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/r/models/nope/recovery-test')).status, 404);
  const text = await (await fetch(`${tb.url}/api/orchestrator/metrics`, { headers: admin })).text();
  t.match(text, /circuit_breaker_state\{server="r",model="m"\}/);
});
