// AUTH_MODE=open (the default) with Redis hung: a session that cannot be checked was served as
// anonymous, escaping its key's RPM quota, tier and cache scope, and the client was never told.
// It is refused (401, reason store_unavailable) as in the other modes; with
// AUTH_REDIS_FAIL_MODE=open a session the replica saw live still passes. A session that is not
// live (unknown, revoked) stays anonymous in open mode. Real Redis (SIGSTOP), two brokers.
import t from 'tap';
import { ADMIN_TOKEN, json, metricValue, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { startRedis } from '../helpers/redis.ts';

const redis = await startRedis(t);
const up = await startMock(t);
const fleet = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: up.url, model: 'm' }] } } };
const env = { INFER_ENABLED: 'false', REDIS_URL: redis.url, AUTH_MODE: 'open', REDIS_COMMAND_TIMEOUT_MS: '300', BROKER_FF_QUOTA_ENFORCEMENT: 'true' };
const closed: TestBroker = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'closed-a', AUTH_REDIS_FAIL_MODE: 'closed' });
const open: TestBroker = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'open-b', AUTH_REDIS_FAIL_MODE: 'open' });

async function adminCall(tb: TestBroker, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${tb.url}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  return res.json();
}
const chat = async (tb: TestBroker, credential?: string): Promise<{ status: number; body: any }> => {
  const res = await fetch(`${tb.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(credential !== undefined ? { authorization: `Bearer ${credential}` } : {}) },
    body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }),
  });
  return { status: res.status, body: await json(res) };
};
const session = async (key: string): Promise<string> => (await adminCall(closed, 'POST', '/api/auth/sessions', { api_key: key })).session as string;
async function until(what: string, cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Made while Redis is up: a key with an RPM quota, known to both brokers.
const made = await adminCall(closed, 'POST', '/api/auth/keys', { name: 'rpm-two', rpm: 2 });
const key = made.key as string;
await until('the key on the fail-open replica', async () => ((await adminCall(open, 'GET', '/api/auth/keys')).keys as { id: string }[]).some((k) => k.id === made.id));

t.test('Redis up: a session stands for its key (its RPM); an unknown or revoked one is anonymous', async (t) => {
  const s = await session(key);
  t.same([(await chat(closed, s)).status, (await chat(closed, s)).status], [200, 200]);
  const third = await chat(closed, s);
  t.same([third.status, third.body.error?.code], [429, 'quota_exceeded'], "over its key's rpm 2");
  t.equal((await chat(closed, 'sess_unknownunknownunknownunknown')).status, 200, 'an unknown session: anonymous, not refused');
  const revoked = await session(key);
  await adminCall(closed, 'DELETE', `/api/auth/sessions/${revoked}`);
  t.equal((await chat(closed, revoked)).status, 200, 'a revoked session: anonymous, not refused');
});

t.test('Redis hung: a session that cannot be checked is refused (401 store_unavailable), not served as anonymous', async (t) => {
  const a = await session(key);
  const neverSeen = await session(key);
  const other = (await adminCall(closed, 'POST', '/api/auth/keys', { name: 'other', rpm: 100 })).key as string;
  await until('the other key on the fail-open replica', async () => ((await adminCall(open, 'GET', '/api/auth/keys')).keys as { name: string }[]).some((k) => k.name === 'other'));
  const seen = await session(other);
  t.equal((await chat(open, seen)).status, 200, 'seen live on the fail-open replica');
  const before = await metricValue(closed.url, 'auth_failures_total', { reason: 'store_unavailable' });

  redis.freeze();
  t.teardown(() => redis.thaw());
  // A lookup waits out the command timeout; the store is down after it. Then past the threads'
  // one-second session cache.
  await until('the store down on both', async () => {
    await chat(closed, a);
    await chat(open, a);
    return (await metricValue(closed.url, 'redis_up')) === 0 && (await metricValue(open.url, 'redis_up')) === 0;
  });
  await sleep(1100);

  // AUTH_REDIS_FAIL_MODE=closed: every session, in the client API's error shape, however many.
  const statuses: number[] = [];
  for (let i = 0; i < 5; i++) {
    const r = await chat(closed, neverSeen);
    statuses.push(r.status);
    if (i === 0) {
      t.equal(r.body.error?.code, 'unauthorized');
      t.equal(r.body.error?.type, 'authentication_error');
      t.match(r.body.error?.message, /cannot be checked while the shared store is unreachable/);
    }
  }
  t.same(statuses, [401, 401, 401, 401, 401], "not admitted past its key's rpm as anonymous");
  t.equal((await chat(closed, a)).status, 401, 'one this replica checked before: refused too (fail closed)');
  t.ok((await metricValue(closed.url, 'auth_failures_total', { reason: 'store_unavailable' })) >= before + 6, 'counted as store_unavailable');

  // AUTH_REDIS_FAIL_MODE=open: the session seen live passes; one never seen here cannot be checked.
  t.equal((await chat(open, seen)).status, 200, 'seen live before: still passes (fail open)');
  const unseen = await chat(open, neverSeen);
  t.equal(unseen.status, 401, 'never seen on this replica: refused');
  t.match(unseen.body.error?.message, /cannot be checked while the shared store is unreachable/);

  // Open mode: no credential still needed, an outage or not.
  t.equal((await chat(closed, undefined)).status, 200, 'no credential: served (fail-closed replica)');
  t.equal((await chat(open, undefined)).status, 200, 'no credential: served (fail-open replica)');
});
