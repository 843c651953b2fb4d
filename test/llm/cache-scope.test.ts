// cache.scope: key keeps each caller's cached replies its own: a tenant's stored answer is
// not served to another tenant, nor can another tenant's `x-broker-cache: refresh` replace
// it. A session shares its key's entries. With the default scope (shared), every caller
// shares them, as the docs say.
import t from 'tap';
import { json, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const m = await startMock(t);
const group = { deployments: [{ id: 'd1', provider: 'openai', url: m.url, model: 'm' }] };
const keys = { 'sk-tenant-a': {}, 'sk-tenant-b': {} };
const perKey: TestBroker = await startFleetBroker(t, { cache: { mode: 'on', scope: 'key' }, apiKeys: keys, modelGroups: { g: group } }, { INFER_ENABLED: 'false', AUTH_MODE: 'keys' });
const shared: TestBroker = await startFleetBroker(t, { cache: { mode: 'on' }, apiKeys: keys, modelGroups: { g: group } }, { INFER_ENABLED: 'false', AUTH_MODE: 'keys' });

async function ask(tb: TestBroker, key: string, content: string, directive?: string): Promise<string | null> {
  const headers: Record<string, string> = { 'content-type': 'application/json', authorization: `Bearer ${key}` };
  if (directive !== undefined) headers['x-broker-cache'] = directive;
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content }] }) });
  await res.text();
  if (res.status !== 200) throw new Error(`status ${res.status}`);
  return res.headers.get('x-broker-cache');
}

t.test('scope key: one tenant never gets another tenant’s entry; each hits its own', async (t) => {
  t.equal(await ask(perKey, 'sk-tenant-a', 'q1'), 'miss');
  t.equal(await ask(perKey, 'sk-tenant-b', 'q1'), 'miss', "B does not get A's reply");
  t.equal(await ask(perKey, 'sk-tenant-a', 'q1'), 'hit', 'A hits its own');
  t.equal(await ask(perKey, 'sk-tenant-b', 'q1'), 'hit', 'B hits its own');
  const before = m.stats.total;
  t.equal(await ask(perKey, 'sk-tenant-b', 'q1', 'refresh'), 'miss', "B's refresh fetches again");
  t.equal(m.stats.total, before + 1);
  t.equal(await ask(perKey, 'sk-tenant-a', 'q1'), 'hit', "A's entry is still A's");
  t.equal(m.stats.total, before + 1);
});

t.test("scope key: a session shares its key's entries", async (t) => {
  const res = await fetch(`${perKey.url}/api/auth/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ api_key: 'sk-tenant-a' }) });
  const { session } = (await json(res)) as { session: string };
  t.equal(await ask(perKey, 'sk-tenant-a', 'q2'), 'miss');
  t.equal(await ask(perKey, session, 'q2'), 'hit');
});

t.test('scope shared (the default): every caller shares an entry', async (t) => {
  t.equal(await ask(shared, 'sk-tenant-a', 'q3'), 'miss');
  t.equal(await ask(shared, 'sk-tenant-b', 'q3'), 'hit');
});
