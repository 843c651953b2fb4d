// Fleet management end to end, runtime changes: servers added and removed, warm-first,
// and the queue pause.
import t, { type Test } from 'tap';
import { metricValue, type TestBroker } from '../helpers/broker.ts';
import { startMock } from '../helpers/fleet.ts';
import { FAST_CHECKS, broker as fleetBroker, chat, get, send, server, until, used } from './helpers.ts';

const broker = (fleet: Record<string, unknown>, env: Record<string, string> = {}): Promise<TestBroker> => fleetBroker(t, fleet, env);

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
  // One nobody answers: added, but not reported healthy nor sent requests until it passes its checks.
  const dead = await send(tb, 'POST', '/api/orchestrator/servers/add', { id: 'dead', url: 'http://127.0.0.1:9', models: ['llama3:latest'] });
  t.equal(dead.status, 200);
  t.same([dead.body.state, dead.body.healthy], ['unhealthy', false], 'a failed first check: unhealthy at once');
  t.notOk((await used(tb, 'llama3', 10)).includes('dead:llama3:latest'), 'no request goes to it');
  t.equal((await send(tb, 'DELETE', '/api/orchestrator/servers/dead')).status, 200);

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
  // Gone from the capacity view and the metrics once its stream finished (dead's at once).
  await until(async () => !(await get(tb, '/api/industrial/capacity')).deployments.some((d: { id: string }) => d.id.startsWith('first:')), 'first leaves the capacity view');
  const capacity = await get(tb, '/api/industrial/capacity');
  t.same(capacity.deployments.map((d: { id: string }) => d.id).sort(), ['second:llama3:latest', 'second:qwen:latest'], 'only the servers still configured');
  t.equal(capacity.totalLimit, capacity.deployments.reduce((n: number, d: { concurrencyLimit: number }) => n + d.concurrencyLimit, 0), 'the total limit is theirs');
  const metrics = await (await fetch(`${tb.url}/metrics`)).text();
  t.notMatch(metrics, /broker_capacity_limit\{deployment="(first|dead):/, 'no limit exported for removed deployments');
});

t.test("removing the server of a group's last deployment is refused, saying what to do: the group and its fallbacks stay", async (t) => {
  const a = await startMock(t);
  const b = await startMock(t);
  const tb = await broker({
    servers: [{ id: 'srv-a', provider: 'openai', url: a.url, models: ['m'] }, { id: 'srv-b', provider: 'openai', url: b.url, models: ['m'] }],
    modelGroups: { chat: { deployments: [{ server: 'srv-a', model: 'm' }], fallbacks: ['chat2'] }, chat2: { deployments: [{ server: 'srv-b', model: 'm' }] } },
  });
  const refused = await send(tb, 'DELETE', '/api/orchestrator/servers/srv-a');
  t.equal(refused.status, 400);
  t.match(refused.body.error.message, /srv-a serves the last deployment of model group chat: add a deployment on another server to it first .* or stop its traffic with drain or maintenance/);
  t.equal((await chat(tb, 'chat')).status, 200, 'chat is still served');
  t.ok((await get(tb, '/api/orchestrator/config')).modelGroups.chat, 'and still in the config');
  // What the message says works: maintenance stops its traffic, and chat falls back to chat2.
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/srv-a/maintenance', { enabled: true })).status, 200);
  const r = await chat(tb, 'chat');
  t.equal(r.status, 200);
  t.equal(r.deployment, 'srv-b:m', 'served by the fallback group');
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

t.test("GET /api/ps (`ollama ps`): the models a healthy server has in memory, in Ollama's shape", async (t) => {
  const a = await startMock(t, { models: ['llama3', 'qwen'], loaded: ['llama3'] });
  const tb = await broker({ fleet: FAST_CHECKS, servers: [{ id: 'a', provider: 'ollama', url: a.url, models: ['llama3', 'qwen'] }] }, {});
  await until(async () => (await server(tb, 'a')).loadedModels !== null, 'checked');
  const ps = async (): Promise<any> => (await fetch(`${tb.url}/api/ps`)).json();
  const first = await ps();
  // Listed with its tag, as Ollama lists every model (docs/llm.md).
  t.same(first.models.map((m: any) => m.name), ['llama3:latest'], 'qwen is not loaded');
  t.match(first.models[0], { model: 'llama3:latest', size_vram: 0, digest: /^[0-9a-f]{64}$/, details: { format: '' } });
  t.ok(Date.parse(first.models[0].expires_at) > Date.now(), 'expires_at ahead, as a kept-alive model');
  a.setKnobs({ loaded: ['llama3', 'qwen'] });
  await until(async () => (await ps()).models.length === 2, 'qwen loaded');
  t.pass('qwen listed once its server loaded it');
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

t.test("requests waiting for a full group's slot learn at once when the group's every deployment goes into maintenance (503), not at their queue timeout", async (t) => {
  const m = await startMock(t, { tokens: 60, tps: 20 });
  const tb = await broker({ scheduler: { maxWaitMs: 60_000 }, modelGroups: { g: { deployments: [{ id: 'full', provider: 'openai', url: m.url, model: 'm', concurrencyLimit: 1 }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  const busy = chat(tb, 'g', { stream: true });
  await until(async () => (m.stats.requests['/v1/chat/completions'] ?? 0) === 1, 'the slot taken');
  const waiting = [chat(tb, 'g'), chat(tb, 'g')];
  await until(async () => (await get(tb, '/api/orchestrator/queue')).depth === 2, 'two waiting');
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/full/maintenance', { enabled: true, reason: 'now' })).status, 200);
  const done = await Promise.all(waiting);
  t.same(done.map((r) => [r.status, JSON.parse(r.text).error?.code]), [[503, 'upstream_unavailable'], [503, 'upstream_unavailable']], 'both told, long before their 60 s');
  t.equal((await busy).status, 200, 'the stream in flight finished');
  t.equal((await get(tb, '/api/orchestrator/queue')).depth, 0);
});

t.test('a request that times out while the queue is paused is told the queue is paused', async (t) => {
  const m = await startMock(t);
  const tb = await broker({ scheduler: { maxWaitMs: 100 }, modelGroups: { g: { deployments: [{ id: 'q', provider: 'openai', url: m.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  await send(tb, 'POST', '/api/orchestrator/queue/pause');
  const r = await chat(tb, 'g');
  t.equal(r.status, 504);
  t.match(JSON.parse(r.text).error, { code: 'queue_timeout', message: /the queue is paused \(POST \/api\/orchestrator\/queue\/resume\)/ });
  await send(tb, 'POST', '/api/orchestrator/queue/resume');
  t.equal((await chat(tb, 'g')).status, 200);
});


t.test('a request that finds the paused queue full is told the queue is paused, not that the deployments are at capacity', async (t) => {
  const m = await startMock(t);
  const tb = await broker({ scheduler: { maxWaitMs: 30_000, maxQueue: 1 }, modelGroups: { g: { deployments: [{ id: 'q', provider: 'openai', url: m.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  await send(tb, 'POST', '/api/orchestrator/queue/pause');
  const waiting = chat(tb, 'g');
  await until(async () => (await get(tb, '/api/orchestrator/queue')).depth === 1, 'one waiting');
  const r = await chat(tb, 'g');
  t.equal(r.status, 429);
  t.match(JSON.parse(r.text).error, { code: 'capacity_exhausted', message: /^the queue is paused \(POST \/api\/orchestrator\/queue\/resume\) and full \(1\)/ });
  await send(tb, 'POST', '/api/orchestrator/queue/resume');
  t.equal((await waiting).status, 200);
});

/** A group of one deployment held by a 10 s stream, two requests queued behind it, and a fast mock to add. */
async function twoQueuedBehindOne(t: Test) {
  const busy = await startMock(t, { tokens: 400, tps: 40 }); // 10 s streams: the test ends them
  const spare = await startMock(t, { tokens: 3 });
  const tb = await broker({ modelGroups: { coder: { deployments: [{ id: 'one', provider: 'openai', url: busy.url, model: 'm', concurrencyLimit: 1 }] } } }, { FRONT_THREADS: '2' });
  const ctl = new AbortController();
  const first = chat(tb, 'coder', { stream: true, signal: ctl.signal }).catch(() => undefined);
  await until(async () => busy.stats.open === 1, 'the first stream runs');
  const queued = [chat(tb, 'coder'), chat(tb, 'coder')];
  await until(async () => (await get(tb, '/api/industrial/capacity')).queue.size === 2, 'two queued');
  const cfg = await get(tb, '/api/orchestrator/config');
  const end = async (): Promise<void> => {
    ctl.abort();
    await first;
  };
  return { busy, spare, tb, queued, cfg, end };
}

t.test('requests queued before a config change route over the group as changed: a deployment added serves them at once', async (t) => {
  const { busy, spare, tb, queued, cfg, end } = await twoQueuedBehindOne(t);
  cfg.modelGroups.coder.deployments.push({ id: 'two', provider: 'openai', url: spare.url, model: 'm', concurrencyLimit: 1 });
  t.equal((await send(tb, 'POST', '/api/orchestrator/config', cfg)).status, 200);
  const served = await Promise.all(queued);
  t.same(served.map((r) => [r.status, r.deployment]), [[200, 'two'], [200, 'two']], 'the queued requests went to the deployment added, one after the other');
  t.equal(busy.stats.open, 1, 'while the first stream still held one');
  await end();
});

t.test('requests queued before a config change route over the group as changed: a deployment replaced does not strand them', async (t) => {
  const { spare, tb, queued, cfg, end } = await twoQueuedBehindOne(t);
  cfg.modelGroups.coder.deployments = [{ id: 'three', provider: 'openai', url: spare.url, model: 'm', concurrencyLimit: 2 }];
  t.equal((await send(tb, 'POST', '/api/orchestrator/config', cfg)).status, 200);
  const served = await Promise.all(queued);
  t.same(served.map((r) => [r.status, r.deployment]), [[200, 'three'], [200, 'three']], 'served by the deployment that replaced the one they waited for', { texts: served.map((r) => r.text) });
  await end();
});
