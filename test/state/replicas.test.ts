// Two brokers, one Redis (a real redis-server this test starts, kills and restarts):
// operator changes, API keys, sessions and the audit trail made on one replica are in
// force on the other; with Redis gone each kind behaves as documented (docs/auth.md),
// and both resync once it is back, with no broker restart.
import t from 'tap';
import { Redis } from 'ioredis';
import { writeFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { ADMIN_TOKEN, json, metricValue, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { startRedis } from '../helpers/redis.ts';

const redis = await startRedis(t);
const up1 = await startMock(t);
const up2 = await startMock(t);
const fleet = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: up1.url, model: 'm' }, { id: 'd2', provider: 'openai', url: up2.url, model: 'm' }] } } };
const env = { INFER_ENABLED: 'false', REDIS_URL: redis.url, AUTH_MODE: 'keys', AUTH_MAX_SESSIONS_PER_SUBJECT: '3' };
const a: TestBroker = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'replica-a' });
const b: TestBroker = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'replica-b' });

async function call(tb: TestBroker, method: string, path: string, body?: unknown, token = ADMIN_TOKEN): Promise<{ status: number; body: any }> {
  const res = await fetch(`${tb.url}${path}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: await json(res) };
}

const chat = async (tb: TestBroker, key: string, content = 'hi'): Promise<{ status: number; deployment: string | null }> => {
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content }] }) });
  await res.arrayBuffer();
  return { status: res.status, deployment: res.headers.get('x-broker-deployment') };
};

/** Polls until `cond` holds; returns how long it took (reported, never asserted). */
async function until(cond: () => Promise<boolean>, what: string, ms = 5000): Promise<number> {
  const start = Date.now();
  while (Date.now() - start < ms) {
    if (await cond()) return Date.now() - start;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

t.test('both replicas see Redis', async (t) => {
  await until(async () => (await metricValue(a.url, 'redis_up')) === 1 && (await metricValue(b.url, 'redis_up')) === 1, 'redis_up');
  t.same((await call(b, 'GET', '/api/health')).body.store, 'redis');
});

t.test("a breaker forced open on A and reset on B: B's transitions carry the model name the config routes, as its state gauge", async (t) => {
  // B has not touched d2's breaker before: it learns of it from A's operator state (m:latest there).
  t.equal((await call(a, 'POST', '/api/orchestrator/circuit-breakers/d2/m/open')).status, 200);
  await until(async () => (await call(b, 'GET', '/api/orchestrator/circuit-breakers/d2/m')).body.state === 'open', 'the forced open on B');
  t.equal((await call(b, 'POST', '/api/orchestrator/circuit-breakers/d2/m/reset')).body.state, 'closed');
  await until(async () => (await call(a, 'GET', '/api/orchestrator/circuit-breakers/d2/m')).body.state === 'closed', 'the reset on A');
  const m = await (await fetch(`${b.url}/metrics`)).text();
  t.match(m, /circuit_breaker_transitions_total\{server="d2",model="m",to="closed"\} 1/);
  t.notMatch(m, /model="m:latest"/, 'no second name for the one breaker');
  t.equal(await metricValue(b.url, 'circuit_breaker_state', { server: 'd2', model: 'm' }), 0);
});

t.test('a flag override, a ban and a drain made on A are in force on B', async (t) => {
  t.equal((await call(a, 'PUT', '/api/industrial/flags/sticky_routing', { enabled: true })).status, 200);
  const ms = await until(async () => JSON.stringify((await call(b, 'GET', '/api/industrial/flags')).body).includes('"sticky_routing":{"enabled":true'), 'the flag on B');
  t.pass(`flag override on B after ${ms} ms`);

  t.equal((await call(a, 'POST', '/api/orchestrator/bans/server/d1', { reason: 'shared ban' })).status, 200);
  await until(async () => (await call(b, 'GET', '/api/orchestrator/bans')).body.bans.some((x: any) => x.server === 'd1' && x.reason === 'shared ban'), 'the ban on B');
  const made = await call(a, 'POST', '/api/auth/keys', { name: 'replicas' });
  await until(async () => (await chat(b, made.body.key)).status === 200, 'the key made on A to work on B');
  const routes = await Promise.all(Array.from({ length: 10 }, () => chat(b, made.body.key)));
  t.same(new Set(routes.map((r) => r.deployment)), new Set(['d2']), "A's ban keeps B's traffic off d1");
  t.equal((await call(a, 'DELETE', '/api/orchestrator/bans')).status, 200);
  await until(async () => (await call(b, 'GET', '/api/orchestrator/bans')).body.bans.length === 0, 'the unban on B');

  t.equal((await call(a, 'POST', '/api/orchestrator/servers/d2/drain')).status, 200);
  await until(async () => (await call(b, 'GET', '/api/orchestrator/servers')).body.servers.find((s: any) => s.id === 'd2').state === 'draining', 'the drain on B');
  const drained = await Promise.all(Array.from({ length: 10 }, () => chat(b, made.body.key)));
  t.same(new Set(drained.map((r) => r.deployment)), new Set(['d1']));
  await call(a, 'POST', '/api/orchestrator/servers/d2/undrain');
  await until(async () => (await call(b, 'GET', '/api/orchestrator/servers')).body.servers.find((s: any) => s.id === 'd2').state === 'healthy', 'the undrain on B');

  // The audit trail is one for both.
  const trail = await call(b, 'GET', '/api/audit?limit=50');
  t.ok(trail.body.entries.some((e: any) => e.replica === 'replica-a' && e.action === 'POST /api/orchestrator/bans/server/d1'), "B's audit shows A's ban, with its replica");
});

t.test('two operators at once, one on each replica: a drain on A and a ban on B, two flags; every change holds on both', async (t) => {
  for (let round = 0; round < 3; round++) {
    const [drain, ban] = await Promise.all([call(a, 'POST', '/api/orchestrator/servers/d1/drain'), call(b, 'POST', '/api/orchestrator/bans/server/d2', { reason: `round ${round}` })]);
    t.same([drain.status, ban.status], [200, 200]);
    const [f1, f2] = await Promise.all([call(a, 'PUT', '/api/industrial/flags/sticky_routing', { enabled: round % 2 === 0 }), call(b, 'PUT', '/api/industrial/flags/priority_routing', { enabled: round % 2 === 0 })]);
    t.same([f1.status, f2.status], [200, 200]);
    for (const tb of [a, b]) {
      await until(async () => {
        const servers = (await call(tb, 'GET', '/api/orchestrator/servers')).body.servers;
        const bans = (await call(tb, 'GET', '/api/orchestrator/bans')).body.bans;
        const flags = JSON.stringify((await call(tb, 'GET', '/api/industrial/flags')).body);
        const want = round % 2 === 0;
        return servers.find((x: any) => x.id === 'd1').state === 'draining' && bans.some((x: any) => x.server === 'd2') && flags.includes(`"sticky_routing":{"enabled":${want}`) && flags.includes(`"priority_routing":{"enabled":${want}`);
      }, `round ${round}: both changes on ${tb === a ? 'A' : 'B'}`);
    }
    t.pass(`round ${round}: the drain, the ban and both flags hold on both replicas`);
    await call(a, 'POST', '/api/orchestrator/servers/d1/undrain');
    await call(b, 'DELETE', '/api/orchestrator/bans');
    for (const tb of [a, b]) {
      await until(async () => (await call(tb, 'GET', '/api/orchestrator/bans')).body.bans.length === 0 && (await call(tb, 'GET', '/api/orchestrator/servers')).body.servers.find((x: any) => x.id === 'd1').state !== 'draining', 'the undrain and unban');
    }
  }
  for (const flag of ['sticky_routing', 'priority_routing']) await call(a, 'DELETE', `/api/industrial/flags/${flag}`);
});

t.test('a sticky pin made on A routes the same prompt on B', async (t) => {
  t.equal((await call(a, 'PUT', '/api/industrial/flags/sticky_routing', { enabled: true })).status, 200);
  await until(async () => JSON.stringify((await call(b, 'GET', '/api/industrial/flags')).body).includes('"sticky_routing":{"enabled":true'), 'the flag on B');
  const made = await call(a, 'POST', '/api/auth/keys', { name: 'pins' });
  await until(async () => (await chat(b, made.body.key)).status === 200, 'the key on B');
  // Eight prompts: by chance alone, B would pick A's deployment for all eight 1 time in 256.
  const pinned: Record<string, string> = {};
  for (let i = 0; i < 8; i++) pinned[`pin prompt ${i}`] = (await chat(a, made.body.key, `pin prompt ${i}`)).deployment!;
  t.ok(new Set(Object.values(pinned)).size >= 1);
  await new Promise((r) => setTimeout(r, 300)); // a pub/sub batch goes every 50 ms
  for (const [prompt, dep] of Object.entries(pinned)) t.equal((await chat(b, made.body.key, prompt)).deployment, dep, `B follows A's pin for "${prompt}"`);
});

t.test('a session made on A works on B; revoked on A, it is refused on B', async (t) => {
  const made = await call(a, 'POST', '/api/auth/keys', { name: 'sessions' });
  const s = await call(a, 'POST', '/api/auth/sessions', { api_key: made.body.key });
  t.equal(s.status, 201);
  await until(async () => (await chat(b, s.body.session)).status === 200, 'the session on B');
  t.equal((await call(a, 'DELETE', `/api/auth/sessions/${s.body.session}`)).status, 200);
  const ms = await until(async () => (await chat(b, s.body.session)).status === 401, 'the revocation on B');
  t.pass(`refused on B ${ms} ms after the revocation on A`);
  // A revoked key too, and the sessions made from it.
  const fromKey = await call(a, 'POST', '/api/auth/sessions', { api_key: made.body.key });
  await until(async () => (await chat(b, fromKey.body.session)).status === 200, 'the second session on B');
  t.equal((await call(a, 'DELETE', `/api/auth/keys/${made.body.id}`)).status, 200);
  await until(async () => (await chat(b, made.body.key)).status === 401, 'the revoked key on B');
  t.pass('a key revoked on A is refused on B');
  await until(async () => (await chat(b, fromKey.body.session)).status === 401, "the revoked key's session on B");
  t.equal((await chat(a, fromKey.body.session)).status, 401, "and on A: a session ends with the key it was made from");
});

t.test('a subject holds at most AUTH_MAX_SESSIONS_PER_SUBJECT live sessions, counted across the replicas', async (t) => {
  const made = await call(a, 'POST', '/api/auth/keys', { name: 'many-sessions' });
  // B learns of the key through Redis, a moment later (under load, more than one).
  await until(async () => (await chat(b, made.body.key)).status === 200, 'the key on B');
  const sessions: string[] = [];
  for (const tb of [a, b, a]) {
    const s = await call(tb, 'POST', '/api/auth/sessions', { api_key: made.body.key });
    t.equal(s.status, 201);
    sessions.push(s.body.session);
  }
  const over = await call(b, 'POST', '/api/auth/sessions', { api_key: made.body.key });
  t.equal(over.status, 429, 'the fourth, on the other replica');
  t.equal(over.body.error.code, 'rate_limited');
  t.match(over.body.error.message, /AUTH_MAX_SESSIONS_PER_SUBJECT=3/);
  t.equal((await call(a, 'DELETE', `/api/auth/sessions/${sessions[0]}`)).status, 200);
  t.equal((await call(b, 'POST', '/api/auth/sessions', { api_key: made.body.key })).status, 201, 'one revoked: room for one more');
  t.equal((await chat(b, sessions[1]!)).status, 200, 'the others still live');
  // At once on both replicas: counted and stored in one step, so together they stop at the bound.
  const burst = await call(a, 'POST', '/api/auth/keys', { name: 'burst-sessions' });
  await until(async () => (await chat(b, burst.body.key)).status === 200, 'the key on B');
  const raced = await Promise.all(Array.from({ length: 10 }, (_, i) => call(i % 2 === 0 ? a : b, 'POST', '/api/auth/sessions', { api_key: burst.body.key })));
  t.same(raced.map((r) => r.status).sort(), [201, 201, 201, 429, 429, 429, 429, 429, 429, 429], 'three made, seven refused');
});

t.test('Redis killed: state holds, sessions fail closed; Redis back: resync with no restart', async (t) => {
  const made = await call(a, 'POST', '/api/auth/keys', { name: 'outage' });
  await until(async () => (await chat(b, made.body.key)).status === 200, 'the key on B');
  const s = (await call(a, 'POST', '/api/auth/sessions', { api_key: made.body.key })).body.session;
  await redis.kill();
  await until(async () => (await metricValue(b.url, 'redis_up')) === 0, 'redis_up 0 on B');
  // Keys and overrides already read keep working: limits and routing never wait on Redis.
  t.equal((await chat(b, made.body.key)).status, 200, 'a known key still works');
  const flags = (await call(b, 'GET', '/api/industrial/flags')).body;
  t.ok(JSON.stringify(flags).includes('"sticky_routing":{"enabled":true'), 'the shared override holds');
  // AUTH_REDIS_FAIL_MODE=closed (the default): sessions cannot be checked, so they are refused.
  await until(async () => (await chat(b, s)).status === 401, 'the session refused while Redis is down');
  t.pass('sessions fail closed');
  const refused = await fetch(`${b.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${s}`, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) });
  t.match(((await refused.json()) as { error: { message: string } }).error.message, /cannot be checked while the shared store is unreachable/, 'saying why, not that the session is dead');
  // What needs the store answers 503 with Retry-After, never a 500.
  const noStore = await call(a, 'POST', '/api/auth/keys', { name: 'during-outage' });
  t.same([noStore.status, noStore.body.error.code], [503, 'overloaded']);
  const noAudit = await call(a, 'GET', '/api/audit');
  t.same([noAudit.status, noAudit.body.error.code], [503, 'overloaded']);
  t.match(noAudit.body.error.message, /^the audit store is unreachable or not answering \(Redis\); try again shortly$/, "the client's words, not the driver's");
  // A change made meanwhile stays local (logged), and the replica keeps serving.
  t.equal((await call(a, 'POST', '/api/orchestrator/bans/server/d1', { reason: 'during outage' })).status, 200);
  t.ok((await metricValue(b.url, 'state_sync_lag_seconds')) >= 0);

  await redis.restart();
  await until(async () => (await metricValue(a.url, 'redis_up')) === 1 && (await metricValue(b.url, 'redis_up')) === 1, 'both reconnected', 15000);
  // The fresh Redis is empty: replicas write their state back, merged: A's ban made during the outage reaches B.
  await until(async () => (await call(b, 'GET', '/api/orchestrator/bans')).body.bans.some((x: any) => x.reason === 'during outage'), "A's change made during the outage on B", 10000);
  // And a new change flows again.
  t.equal((await call(b, 'POST', '/api/orchestrator/bans/model/m', { reason: 'after the outage', ttlSeconds: 60 })).status, 200);
  await until(async () => (await call(a, 'GET', '/api/orchestrator/bans')).body.bans.some((x: any) => x.reason === 'after the outage'), 'a change on B reaches A after the restart', 10000);
  t.pass('resynced with no broker restart');
  await call(b, 'DELETE', '/api/orchestrator/bans');
  // Keys: the first key made on the empty Redis must not become the whole list.
  const after = await call(b, 'POST', '/api/auth/keys', { name: 'after-restart' });
  t.equal(after.status, 201);
  await until(async () => (await chat(a, after.body.key)).status === 200, 'the new key on A');
  t.equal((await chat(a, made.body.key)).status, 200, 'a key made before the restart still works on A');
  t.equal((await chat(b, made.body.key)).status, 200, 'and on B');
});

t.test('a Redis restored from an older dump: the replicas write back what they hold, not take the older doc', async (t) => {
  t.equal((await call(a, 'POST', '/api/orchestrator/servers/d1/drain')).status, 200);
  await until(async () => (await call(b, 'GET', '/api/orchestrator/servers')).body.servers.find((x: any) => x.id === 'd1').state === 'draining', 'the drain on B');
  const r = new Redis(redis.url);
  t.teardown(() => r.disconnect());
  const now = JSON.parse((await r.hget('eb:doc', 'fleet'))!);
  // The doc as it was before the drain (an older version), as a restore from a dump would leave it.
  const older = { ...now, draining: [], v: Math.max(0, (now.v ?? 1) - 1) };
  await r.hset('eb:doc', 'fleet', JSON.stringify(older));
  await r.publish('eb:changes', JSON.stringify({ kind: 'fleet', replica: 'dump' }));
  await until(async () => ((JSON.parse((await r.hget('eb:doc', 'fleet'))!) as { draining: string[] }).draining.includes('d1')), 'the drain written back');
  for (const tb of [a, b]) t.equal((await call(tb, 'GET', '/api/orchestrator/servers')).body.servers.find((x: any) => x.id === 'd1').state, 'draining', 'the drain holds');
  await call(b, 'POST', '/api/orchestrator/servers/d1/undrain');
  await until(async () => (await call(a, 'GET', '/api/orchestrator/servers')).body.servers.find((x: any) => x.id === 'd1').state !== 'draining', 'the undrain on A');
});

// Before: the keys doc had no version, so a Redis back from a dump taken before a revocation
// made the revoked key and the logged-out session valid again on every replica, and a key made
// after the dump invalid.
t.test('a Redis restored from an older dump brings back no revoked key or session, and loses no newer key', async (t) => {
  const leaked = await call(a, 'POST', '/api/auth/keys', { name: 'leaked' });
  const user = await call(a, 'POST', '/api/auth/keys', { name: 'dump-user' });
  const session = (await call(a, 'POST', '/api/auth/sessions', { api_key: user.body.key })).body.session as string;
  await until(async () => (await chat(b, leaked.body.key)).status === 200 && (await chat(b, session)).status === 200, 'the key and the session on B');
  const r = new Redis(redis.url);
  t.teardown(() => r.disconnect());
  // The dump: what Redis holds now.
  const dump = { keys: await r.hgetall('eb:keys'), doc: (await r.hget('eb:doc', 'keys'))!, session: (await r.get(`eb:session:${session}`))! };
  t.equal((await call(b, 'DELETE', `/api/auth/keys/${leaked.body.id}`)).status, 200);
  t.equal((await call(a, 'DELETE', `/api/auth/sessions/${session}`)).status, 200);
  const newer = await call(b, 'POST', '/api/auth/keys', { name: 'after-dump' });
  await until(async () => (await chat(a, leaked.body.key)).status === 401 && (await chat(a, newer.body.key)).status === 200, 'the revocation and the new key on A');
  // Redis restored from the dump: its keys, its keys doc, the session.
  await r.del('eb:keys');
  await r.hset('eb:keys', dump.keys);
  await r.hset('eb:doc', 'keys', dump.doc);
  await r.set(`eb:session:${session}`, dump.session, 'PX', 600_000);
  await r.publish('eb:changes', JSON.stringify({ kind: 'keys', replica: 'dump' }));
  await until(async () => (await r.hget('eb:keys', leaked.body.id)) === null && (await r.hget('eb:keys', newer.body.id)) !== null, 'the keys written back', 10_000);
  // (A thread trusts a session lookup for a second: docs/auth.md.)
  await new Promise((r) => setTimeout(r, 1100));
  for (const tb of [a, b]) {
    for (let i = 0; i < 3; i++) {
      t.equal((await chat(tb, leaked.body.key)).status, 401, 'the revoked key stays revoked');
      t.equal((await chat(tb, session)).status, 401, 'the logged-out session stays out');
      t.equal((await chat(tb, newer.body.key)).status, 200, 'the key made after the dump still works');
      await new Promise((r) => setTimeout(r, 300));
    }
  }
  t.equal(await r.get(`eb:session:${session}`), null, 'the session deleted again');
});

t.test("a flag override equal to the flag's default is shared too", async (t) => {
  t.equal((await call(a, 'PUT', '/api/industrial/flags/compiled_chain', { enabled: true })).status, 200);
  await until(async () => (await call(b, 'GET', '/api/industrial/flags')).body.compiled_chain?.source === 'override', 'the override on B');
  t.equal((await call(b, 'PUT', '/api/industrial/flags/compiled_chain', { enabled: false })).status, 200);
  await until(async () => (await call(a, 'GET', '/api/industrial/flags')).body.compiled_chain?.enabled === false, "B's later change on A");
  await new Promise((r) => setTimeout(r, 300));
  for (const tb of [a, b]) t.equal((await call(tb, 'GET', '/api/industrial/flags')).body.compiled_chain.enabled, false, 'the later change holds');
  await call(a, 'DELETE', '/api/industrial/flags/compiled_chain');
});

t.test("a flag changed on A is in force on B's data-plane threads, with nothing else changing", async (t) => {
  const made = await call(a, 'POST', '/api/auth/keys', { name: 'flag-threads', rpm: 1 });
  await until(async () => (await chat(b, made.body.key)).status === 200, 'the key on B');
  // Quota enforcement off: the rpm 1 key is not limited yet.
  t.equal((await chat(b, made.body.key)).status, 200);
  t.equal((await call(a, 'PUT', '/api/industrial/flags/quota_enforcement', { enabled: true })).status, 200);
  await until(async () => JSON.stringify((await call(b, 'GET', '/api/industrial/flags')).body).includes('"quota_enforcement":{"enabled":true'), 'the flag on B');
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) statuses.push((await chat(b, made.body.key)).status);
  t.ok(statuses.includes(429), `B's threads enforce the quota A turned on: ${statuses}`);
  await call(a, 'DELETE', '/api/industrial/flags/quota_enforcement');
});

t.test("each replica's flag audit names who made a change, when, and on which replica; a replica started later records them so", async (t) => {
  t.equal((await call(a, 'PUT', '/api/industrial/flags/output_prediction', { enabled: true })).status, 200);
  await until(async () => JSON.stringify((await call(b, 'GET', '/api/industrial/flags')).body).includes('"output_prediction":{"enabled":true'), 'the flag on B');
  await new Promise((r) => setTimeout(r, 30));
  t.equal((await call(b, 'PUT', '/api/industrial/flags/qos_switching', { enabled: true })).status, 200);
  await until(async () => JSON.stringify((await call(a, 'GET', '/api/industrial/flags')).body).includes('"qos_switching":{"enabled":true'), 'the flag on A');
  const made = (await call(a, 'GET', '/api/industrial/flags/audit')).body.entries.find((e: any) => e.flag === 'output_prediction' && e.action === 'set');
  t.equal(made.actor, 'admin-token', 'on A, as made there');
  const onB = (await call(b, 'GET', '/api/industrial/flags/audit')).body.entries.find((e: any) => e.flag === 'output_prediction' && e.action === 'set');
  t.same({ actor: onB.actor, at: onB.at }, { actor: 'admin-token via replica:replica-a', at: made.at }, 'on B: its maker, its time, its replica');
  const later = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'replica-d' });
  let entries: any[] = [];
  await until(async () => (entries = (await call(later, 'GET', '/api/industrial/flags/audit')).body.entries).some((e: any) => e.flag === 'qos_switching'), 'the flags on D');
  const byFlag = Object.fromEntries(entries.map((e: any) => [e.flag, e]));
  t.match(byFlag['output_prediction'], { actor: 'admin-token via replica:replica-a', at: made.at }, "not the last writer's name, nor D's start time");
  t.match(byFlag['qos_switching'], { actor: 'admin-token via replica:replica-b' });
  t.ok(byFlag['qos_switching'].at > made.at);
  await later.close();
  await call(a, 'DELETE', '/api/industrial/flags/output_prediction');
  await call(a, 'DELETE', '/api/industrial/flags/qos_switching');
  await until(async () => (await call(b, 'GET', '/api/industrial/flags/audit')).body.entries.some((e: any) => e.flag === 'qos_switching' && e.action === 'clear'), 'the clear on B');
  const cleared = (await call(b, 'GET', '/api/industrial/flags/audit')).body.entries.filter((e: any) => e.flag === 'qos_switching' && e.action === 'clear');
  t.match(cleared.at(-1), { actor: 'admin-token via replica:replica-a' }, 'a clear too');
});

t.test('a replica started after the others adopts the shared flags and operator state', async (t) => {
  t.equal((await call(a, 'PUT', '/api/industrial/flags/priority_routing', { enabled: true })).status, 200);
  t.equal((await call(a, 'POST', '/api/orchestrator/bans/server/d1', { reason: 'before C' })).status, 200);
  await until(async () => (await call(b, 'GET', '/api/orchestrator/bans')).body.bans.some((x: any) => x.reason === 'before C'), 'the ban on B');
  const c = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'replica-c' });
  await until(async () => (await call(c, 'GET', '/api/orchestrator/bans')).body.bans.some((x: any) => x.reason === 'before C'), 'the ban on C');
  await until(async () => JSON.stringify((await call(c, 'GET', '/api/industrial/flags')).body).includes('"priority_routing":{"enabled":true'), 'the flag on C');
  t.pass('C adopted the ban and the flag');
  // Stopped cleanly, C leaves the heartbeats at once: left there, it would shrink A's and B's
  // shares of every rate limit for 15 s (through a rolling restart, a client's rate by 1/3).
  const r = new Redis(redis.url);
  t.teardown(() => r.disconnect());
  const all = ['replica-a', 'replica-b', 'replica-c'];
  await until(async () => {
    const members = await r.zrange('eb:replicas', '0', '-1');
    return all.every((x) => members.includes(x));
  }, 'A, B and C in the heartbeats', 8000);
  await c.close();
  t.same((await r.zrange('eb:replicas', '0', '-1')).sort(), ['replica-a', 'replica-b'], 'only A and B are left');
  await call(a, 'DELETE', '/api/orchestrator/bans');
  await call(a, 'DELETE', '/api/industrial/flags/priority_routing');
});

t.test('quota limits an operator sets on A are in force on B, and survive a key change anywhere', async (t) => {
  const made = await call(a, 'POST', '/api/auth/keys', { name: 'operator-quota', rpm: 20 });
  await until(async () => (await chat(b, made.body.key)).status === 200, 'the key on B');
  const subject = `key:${made.body.id}`;
  const put = await call(a, 'PUT', `/api/industrial/quota/${subject}`, { rpm: 2 });
  t.equal(put.status, 200);
  const limitsOn = async (tb: TestBroker) => (await call(tb, 'GET', '/api/industrial/quota')).body.subjects[subject]?.limits;
  await until(async () => (await limitsOn(b))?.rpm === 2, 'the limit on B');
  // An unrelated key made on B: every replica re-reads the keys; the operator's limit stays.
  t.equal((await call(b, 'POST', '/api/auth/keys', { name: 'unrelated' })).status, 201);
  await new Promise((r) => setTimeout(r, 300));
  t.same(await limitsOn(a), { rpm: 2 }, "A keeps the operator's limit");
  t.same(await limitsOn(b), { rpm: 2 }, 'so does B');
  const trail = await call(a, 'GET', '/api/audit?limit=20');
  const entry = trail.body.entries.find((e: any) => e.action === `PUT /api/industrial/quota/${subject}`);
  t.same([entry?.before, entry?.after], [{ rpm: 20 }, { rpm: 2 }], 'the audit entry says what changed');
});

// An upstream key's env var named through the API must be one a fleet file named (or
// UPSTREAM_KEY_ENVS lists). A file reloaded on A may name a new one: B takes that config
// (its env names come along with it), while an API change naming any other is refused on A,
// and never reaches B.
t.test("a key's env var: named by a file reloaded on A, in force on B; named through the API, refused", async (t) => {
  process.env['EB_REPLICA_ROTATED_KEY'] = 'rotated-key-1';
  const path = a.broker.config.brokerConfigPath!;
  const rotated = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: up1.url, model: 'm', apiKeyEnv: 'EB_REPLICA_ROTATED_KEY' }, { id: 'd2', provider: 'openai', url: up2.url, model: 'm' }] } } };
  writeFileSync(path, stringify(rotated));
  t.equal((await call(a, 'POST', '/api/orchestrator/config/reload', {})).status, 200, 'reloaded on A');
  await until(async () => (await call(b, 'GET', '/api/orchestrator/config')).body.modelGroups?.g?.deployments?.[0]?.apiKeyEnv === 'EB_REPLICA_ROTATED_KEY', "A's reloaded config on B");
  // Through the API, on B: the name its config now carries is allowed, another is not.
  const other = structuredClone(rotated);
  other.modelGroups.g.deployments[0]!.apiKeyEnv = 'ADMIN_TOKEN';
  const refused = await call(b, 'POST', '/api/orchestrator/config', other);
  t.equal(refused.status, 403, 'ADMIN_TOKEN named through the API: refused');
  await new Promise((r) => setTimeout(r, 300));
  t.equal((await call(a, 'GET', '/api/orchestrator/config')).body.modelGroups.g.deployments[0].apiKeyEnv, 'EB_REPLICA_ROTATED_KEY', 'A kept its config');
  // Back to the start's file, so that the tests after see the fleet they began with.
  writeFileSync(path, stringify(fleet));
  t.equal((await call(a, 'POST', '/api/orchestrator/config/reload', {})).status, 200);
  await until(async () => (await call(b, 'GET', '/api/orchestrator/config')).body.modelGroups?.g?.deployments?.[0]?.apiKeyEnv === undefined, 'the first config on B again');
});

// A ConfigMap edited, then the replicas restarted: the edit is in force, not the config the
// store kept running. A replica restarted with the file the running config came from keeps
// the changes made through the API since (and the others' drains and bans in any case).
t.test('a replica started with an edited fleet file puts it in force on every replica; one with the same file keeps the API changes', async (t) => {
  const queueOf = async (tb: TestBroker): Promise<unknown> => (await call(tb, 'GET', '/api/orchestrator/config')).body.scheduler?.maxQueue;
  t.equal((await call(a, 'PATCH', '/api/orchestrator/config/queue', { maxSize: 77 })).status, 200);
  await until(async () => (await queueOf(b)) === 77, 'the API change on B');
  t.equal((await call(a, 'POST', '/api/orchestrator/servers/d2/drain')).status, 200);
  await until(async () => (await call(b, 'GET', '/api/orchestrator/servers')).body.servers.find((s: any) => s.id === 'd2').state === 'draining', 'the drain on B');
  const same = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'replica-same' });
  await until(async () => (await queueOf(same)) === 77, 'the API change on a replica started with the same file');
  t.equal(await queueOf(a), 77, 'nothing changed on A');
  const edited = { ...fleet, scheduler: { maxQueue: 55 } };
  const fresh = await startFleetBroker(t, edited, { ...env, REPLICA_ID: 'replica-edited' });
  for (const tb of [fresh, a, b, same]) await until(async () => (await queueOf(tb)) === 55, 'the edited file on every replica');
  t.pass('the edited file is in force on all four');
  t.equal((await call(b, 'GET', '/api/orchestrator/servers')).body.servers.find((s: any) => s.id === 'd2').state, 'draining', 'the drain made before is kept');
  t.equal((await call(fresh, 'GET', '/api/orchestrator/servers')).body.servers.find((s: any) => s.id === 'd2').state, 'draining', 'and is in force on the new replica');
  await call(a, 'POST', '/api/orchestrator/servers/d2/undrain');
});

t.test('a server added on A without its models is served on B as soon as B has checked it, not at its next scheduled check (or never, with checks off)', async (t) => {
  for (const checks of ['true', 'false']) {
    const slowChecks = { ...fleet, fleet: { healthCheck: { intervalMs: 120_000 } } };
    const envChecks = { ...env, AUTH_MODE: 'open', FLEET_HEALTH_CHECKS: checks };
    const c = await startFleetBroker(t, slowChecks, { ...envChecks, REPLICA_ID: `replica-c-${checks}` });
    const d = await startFleetBroker(t, slowChecks, { ...envChecks, REPLICA_ID: `replica-d-${checks}` });
    const model = `newmodel-${checks}`;
    const added = await startMock(t, { models: [model] });
    const ask = async (tb: TestBroker): Promise<number> => {
      const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }) });
      await res.arrayBuffer();
      return res.status;
    };
    t.equal(await ask(d), 404, 'not served anywhere yet');
    const add = await call(c, 'POST', '/api/orchestrator/servers/add', { id: `srv-new-${checks}`, provider: 'openai', url: added.url });
    t.equal(add.status, 200);
    t.same(add.body.models, [model], 'found by its first check on C');
    t.equal(await ask(c), 200);
    // D's own checks come every 120 s (or never): served well before, from the check it runs when it adopts the server.
    const ms = await until(async () => (await ask(d)) === 200, `${model} served on the other replica (health checks ${checks})`);
    t.pass(`served on D ${ms} ms after the add`);
    await c.close();
    await d.close();
  }
});
