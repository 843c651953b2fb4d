// AUTH_REDIS_FAIL_MODE=open on one replica: a session revoked on another replica, then Redis
// hung, is refused there, not accepted as "seen live" (it was, before its revocation). A
// session that was not revoked still passes. Real Redis, two brokers, SIGSTOP.
import t from 'tap';
import { ADMIN_TOKEN, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { startRedis } from '../helpers/redis.ts';

const redis = await startRedis(t);
const up = await startMock(t);
const fleet = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: up.url, model: 'm' }] } } };
const env = { INFER_ENABLED: 'false', REDIS_URL: redis.url, AUTH_MODE: 'keys', REDIS_COMMAND_TIMEOUT_MS: '300' };
const a: TestBroker = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'closed-a' });
const open: TestBroker = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'open-b', AUTH_REDIS_FAIL_MODE: 'open' });

async function call(tb: TestBroker, method: string, path: string, body?: unknown): Promise<any> {
  const res = await fetch(`${tb.url}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
  return res.json();
}
const chat = async (tb: TestBroker, key: string): Promise<number> => {
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) });
  await res.arrayBuffer();
  return res.status;
};
async function until(what: string, cond: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('revoked on A, then Redis hung: the fail-open replica refuses the revoked sessions and keeps the others', async (t) => {
  const key = (await call(a, 'POST', '/api/auth/keys', { name: 'fail-open' })).key as string;
  const other = (await call(a, 'POST', '/api/auth/keys', { name: 'fail-open-subject' })).key as string;
  const byId = (await call(a, 'POST', '/api/auth/sessions', { api_key: key })).session as string;
  const kept = (await call(a, 'POST', '/api/auth/sessions', { api_key: key })).session as string;
  const made = await call(a, 'POST', '/api/auth/sessions', { api_key: other });
  const bySubject = made.session as string;
  for (const s of [byId, kept, bySubject]) await until('the session live on the open replica', async () => (await chat(open, s)) === 200);

  await call(a, 'DELETE', `/api/auth/sessions/${byId}`);
  t.equal((await call(a, 'DELETE', `/api/auth/sessions/subject/${encodeURIComponent(made.subject)}`)).revoked, 1);
  t.equal(await chat(a, byId), 401, 'refused on A');
  // The open replica is not asked again before the outage (asked, it would look them up and
  // learn of the revocation): only the announcement can tell it. Its threads hold a session
  // for at most a second.
  await new Promise((r) => setTimeout(r, 1500));

  redis.freeze();
  try {
    // A lookup waits out the command timeout; the store is down after it.
    await until('the store down on the open replica', async () => (await chat(open, kept)) === 200 && (await fetch(`${open.url}/metrics`).then((r) => r.text())).includes('redis_up 0'));
    t.equal(await chat(open, byId), 401, 'revoked by id on A: refused with Redis away');
    t.equal(await chat(open, bySubject), 401, 'revoked on A: refused with Redis away');
    t.equal(await chat(open, kept), 200, 'a session seen live and not revoked still passes (fail open)');
  } finally {
    redis.thaw();
  }
});
