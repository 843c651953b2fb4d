// A session or a JWT is held to what admission holds an API key to: a session made from a key
// to that key's quota, tier and rate-limit bucket; a JWT to its `tier` claim. Before, both
// were looked up as if they were unknown keys, and a client could escape its key's limits by
// trading the key for a session. On two data-plane threads (the default), as clients see it.
import t from 'tap';
import { SignJWT } from 'jose';
import { json, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const SECRET = 'a-test-secret-of-at-least-thirty-two-chars!';
const m = await startMock(t);
const deployment = (id: string) => ({ deployments: [{ id, provider: 'openai', url: m.url, model: 'm' }] });
const fleetFile = {
  modelGroups: { main: deployment('d-main'), side: deployment('d-side') },
  apiKeys: { 'sk-rpm-two': { rpm: 2 }, 'sk-batch': { tier: 'batch' }, 'sk-plain': {} },
  qos: { defaultTier: 'standard', tiers: { standard: {}, batch: { allowedGroups: ['side'] } } },
};
const tb: TestBroker = await startFleetBroker(t, fleetFile, {
  INFER_ENABLED: 'false',
  AUTH_MODE: 'keys',
  JWT_SECRET: SECRET,
  JWT_ISSUER: 'idp.test',
  JWT_AUDIENCE: 'edge-broker',
  BROKER_FF_QUOTA_ENFORCEMENT: 'true',
  BROKER_FF_QOS_SWITCHING: 'true',
});

const chat = async (credential: string, group = 'main'): Promise<{ status: number; code: string | undefined }> => {
  const res = await fetch(`${tb.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${credential}` },
    body: JSON.stringify({ model: group, messages: [{ role: 'user', content: 'hi' }] }),
  });
  const body = (await json(res)) as { error?: { code?: string } };
  return { status: res.status, code: body.error?.code };
};
const session = async (apiKey: string): Promise<string> => {
  const res = await fetch(`${tb.url}/api/auth/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ api_key: apiKey }) });
  const body = (await json(res)) as { session: string };
  if (res.status !== 201) throw new Error(`session: ${res.status} ${JSON.stringify(body)}`);
  return body.session;
};

t.test("a session spends its key's requests per minute: the key and its sessions share one quota", async (t) => {
  const s1 = await session('sk-rpm-two');
  const s2 = await session('sk-rpm-two');
  t.equal((await chat('sk-rpm-two')).status, 200, 'the key: its first request');
  t.equal((await chat(s1)).status, 200, 'a session of it: the second');
  const third = await chat(s2);
  t.equal(third.status, 429, 'another session of it: over the key’s rpm 2');
  t.equal(third.code, 'quota_exceeded');
  t.equal((await chat('sk-rpm-two')).status, 429, 'the key itself is spent too');
  t.equal((await chat('sk-plain')).status, 200, 'another key is not');
});

t.test("a session keeps its key's tier: the groups the tier allows, and no other", async (t) => {
  const s = await session('sk-batch');
  const refused = await chat(s, 'main');
  t.equal(refused.status, 403, 'tier batch may not use group main, through a session either');
  t.equal(refused.code, 'forbidden');
  t.equal((await chat(s, 'side')).status, 200, 'the group its tier allows');
  t.equal((await chat('sk-batch', 'main')).status, 403, 'as the key itself');
});

t.test("a JWT's tier claim holds, directly and through its session", async (t) => {
  const token = await new SignJWT({ roles: ['agent'], tier: 'batch' })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject('svc-batch')
    .setIssuer('idp.test')
    .setAudience('edge-broker')
    .setIssuedAt()
    .setExpirationTime('10m')
    .sign(new TextEncoder().encode(SECRET));
  t.equal((await chat(token, 'main')).status, 403, 'the token');
  t.equal((await chat(token, 'side')).status, 200);
  const s = await session(token);
  t.equal((await chat(s, 'main')).status, 403, 'its session');
  t.equal((await chat(s, 'side')).status, 200);
});

t.test('AUTH_MODE=open: a live session still stands for its key (tier, cache scope), a dead one is anonymous', async (t) => {
  const open = await startFleetBroker(t, { ...fleetFile, cache: { mode: 'on', scope: 'key' } }, { INFER_ENABLED: 'false', BROKER_FF_QOS_SWITCHING: 'true' });
  const call = async (credential: string | undefined, group = 'side', content = 'hi'): Promise<Response> =>
    fetch(`${open.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(credential !== undefined ? { authorization: `Bearer ${credential}` } : {}) },
      body: JSON.stringify({ model: group, temperature: 0, messages: [{ role: 'user', content }] }),
    });
  const made = await fetch(`${open.url}/api/auth/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ api_key: 'sk-batch' }) });
  const s = ((await json(made)) as { session: string }).session;
  t.equal((await call(s, 'main')).status, 403, "its key's tier holds in open mode too");
  // Cached under the key: the session's reply is the key's, never an anonymous caller's.
  t.equal((await call(s, 'side', 'scoped')).headers.get('x-broker-cache'), 'miss');
  t.equal((await call(undefined, 'side', 'scoped')).headers.get('x-broker-cache'), 'miss', 'anonymous: not the session’s entry');
  t.equal((await call('sk-batch', 'side', 'scoped')).headers.get('x-broker-cache'), 'hit', 'the key: its session’s entry');
  t.equal((await call('sess_unknown', 'main')).status, 200, 'an unknown session in open mode is anonymous, not refused');
});
