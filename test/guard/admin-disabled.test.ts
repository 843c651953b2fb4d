// A replica with neither ADMIN_TOKEN nor JWT keys has no admin API, for any credential: an
// admin key made on another replica, in the Redis they share, does not open it.
import t from 'tap';
import { startRedis } from '../helpers/redis.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { ADMIN_TOKEN } from '../helpers/broker.ts';

const redis = await startRedis(t);
const m = await startMock(t);
const fleet = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: m.url, model: 'm' }] } } };
const env = { INFER_ENABLED: 'false', REDIS_URL: redis.url, FRONT_THREADS: '0' };
const withAdmin = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'with-admin' });
const noAdmin = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'no-admin', ADMIN_TOKEN: '' });

t.test("an admin key from the shared store is refused with admin_disabled where the admin API is off", async (t) => {
  const made = await fetch(`${withAdmin.url}/api/auth/keys`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'ops', role: 'admin' }) });
  t.equal(made.status, 201);
  const { key } = (await made.json()) as { key: string };
  const get = async (url: string) => {
    const res = await fetch(`${url}/api/auth/keys`, { headers: { authorization: `Bearer ${key}` } });
    return { status: res.status, body: (await res.json()) as { error?: { code: string } } };
  };
  t.equal((await get(withAdmin.url)).status, 200, 'the key is an admin where the admin API is on');
  let off = await get(noAdmin.url);
  // The other replica learns the key through Redis within moments; it must still refuse it.
  for (let i = 0; i < 20 && off.status !== 403; i++, off = await get(noAdmin.url)) await new Promise((r) => setTimeout(r, 100));
  t.same([off.status, off.body.error?.code], [403, 'admin_disabled'], 'refused where it is off');
  await new Promise((r) => setTimeout(r, 500));
  const later = await get(noAdmin.url);
  t.same([later.status, later.body.error?.code], [403, 'admin_disabled'], 'and still once the key is known there');
});

t.test('a change made with an admin API key is audited under the key\'s id, not its free-text name', async (t) => {
  const made = await fetch(`${withAdmin.url}/api/auth/keys`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'admin-token', role: 'admin' }) });
  const { key, id } = (await made.json()) as { key: string; id: string };
  const change = await fetch(`${withAdmin.url}/api/auth/keys`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'made-by-key', role: 'agent' }) });
  t.equal(change.status, 201);
  const trail = (await (await fetch(`${withAdmin.url}/api/audit?subject=${id}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as { entries: { subject: string }[] };
  t.ok(trail.entries.length >= 1, `found under ${id}`);
  t.ok(trail.entries.every((e) => e.subject === id), 'never as "admin-token", the name it was given');
});

t.test('a 401 names the scheme it takes (WWW-Authenticate, RFC 9110)', async (t) => {
  const res = await fetch(`${withAdmin.url}/api/auth/keys`);
  t.equal(res.status, 401);
  t.equal(res.headers.get('www-authenticate'), 'Bearer');
  const ok = await fetch(`${withAdmin.url}/api/auth/keys`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  t.equal(ok.headers.get('www-authenticate'), null, 'only on a 401');
});
