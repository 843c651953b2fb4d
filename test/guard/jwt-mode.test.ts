// AUTH_MODE=jwt on the client routes: a JWT with a client role, or a session made from one.
// A key (of the fleet file, or made through /api/auth/keys) is no client credential there,
// and neither is a session made from it: before, POST /api/auth/sessions turned any key
// back into one, which undid the mode.
import t from 'tap';
import { SignJWT } from 'jose';
import { admin, json, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const SECRET = 'a-test-secret-of-at-least-thirty-two-chars!';
const FILE_KEY = 'sk-file-key-AAAAAAAAAAAA';
const jwt = (roles: string[], exp: string | null = '10m'): Promise<string> => {
  const s = new SignJWT({ roles }).setProtectedHeader({ alg: 'HS256' }).setSubject('svc-1').setIssuedAt();
  if (exp !== null) s.setExpirationTime(exp);
  return s.sign(new TextEncoder().encode(SECRET));
};

const m = await startMock(t);
const fleetFile = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: m.url, model: 'm' }] } }, apiKeys: { [FILE_KEY]: {} } };
const tb: TestBroker = await startFleetBroker(t, fleetFile, { INFER_ENABLED: 'false', AUTH_MODE: 'jwt', JWT_SECRET: SECRET });

async function call(method: string, path: string, token: string | undefined, body?: unknown): Promise<{ status: number; body: any }> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${tb.url}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: await json(res) };
}
const chat = (token: string | undefined) => call('POST', '/v1/chat/completions', token, { model: 'g', messages: [{ role: 'user', content: 'hi' }] });
const session = async (credential: string): Promise<string> => {
  const r = await call('POST', '/api/auth/sessions', credential);
  t.equal(r.status, 201, 'a session is made');
  return r.body.session as string;
};

t.test('a JWT with a client role, and its session, call the client routes', async (t) => {
  const token = await jwt(['agent']);
  t.equal((await chat(token)).status, 200, 'the JWT');
  t.equal((await chat(await session(token))).status, 200, 'its session');
  t.equal((await chat(undefined)).status, 401, 'no credential');
  t.equal((await chat(await jwt(['agent'], null))).status, 401, 'a JWT without exp');
  // /api/show calls an upstream with the deployment's key: a client route like chat.
  t.equal((await call('POST', '/api/show', undefined, { model: 'g' })).status, 401, '/api/show without a credential');
  t.equal((await call('POST', '/api/show', token, { model: 'g' })).status, 200, '/api/show with the JWT');
});

t.test("keys are no client credential under AUTH_MODE=jwt: nor a session made from one", async (t) => {
  t.equal((await chat(FILE_KEY)).status, 401, "the fleet file's key");
  const fromFileKey = await chat(await session(FILE_KEY));
  t.equal(fromFileKey.status, 401, "its session");
  t.match(fromFileKey.body.error.message, /session made from an API key is no client credential under AUTH_MODE=jwt/);
  // A key made through the admin API with a client role: the same.
  const made = await call('POST', '/api/auth/keys', admin.authorization.slice('Bearer '.length), { name: 'agent-key', role: 'agent' });
  t.equal(made.status, 201);
  t.equal((await chat(made.body.key)).status, 401, 'an admin-made key');
  t.equal((await chat(await session(made.body.key))).status, 401, 'its session');
});
