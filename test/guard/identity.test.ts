// Identity end to end on one broker (memory store): the RBAC matrix over admin routes
// for every role and for bad tokens, API keys and sessions under AUTH_MODE=keys, the
// audit trail, and no secret in logs, config dumps or error bodies.
import t from 'tap';
import { SignJWT } from 'jose';
import { ADMIN_TOKEN, admin, json, logLine, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { ROLES, type Role } from '../../src/guard/rbac.ts';

const SECRET = 'a-test-secret-of-at-least-thirty-two-chars!';
const key = new TextEncoder().encode(SECRET);
const jwt = (o: { sub?: string; roles?: string[]; aud?: string; iss?: string; exp?: number | string | null; secret?: Uint8Array } = {}): Promise<string> => {
  const s = new SignJWT({ roles: o.roles ?? [] }).setProtectedHeader({ alg: 'HS256' }).setSubject(o.sub ?? 'user-1').setIssuer(o.iss ?? 'idp.test').setAudience(o.aud ?? 'edge-broker').setIssuedAt();
  if (o.exp !== null) s.setExpirationTime(o.exp ?? '10m');
  return s.sign(o.secret ?? key);
};

const m = await startMock(t);
const fleetFile = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: m.url, model: 'm' }] } }, apiKeys: { 'file-key-123': { tier: 'standard' }, 'team.prod.key1': {} } };
const tb: TestBroker = await startFleetBroker(t, fleetFile, { INFER_ENABLED: 'false', AUTH_MODE: 'keys', JWT_SECRET: SECRET, JWT_ISSUER: 'idp.test', JWT_AUDIENCE: 'edge-broker' });

async function call(method: string, path: string, token: string | undefined, body?: unknown): Promise<{ status: number; body: any }> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${tb.url}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  // /api/orchestrator/metrics answers Prometheus text.
  return { status: res.status, body: res.headers.get('content-type')?.includes('json') ? await json(res) : await res.text() };
}

const chat = (token: string | undefined) => call('POST', '/v1/chat/completions', token, { model: 'g', messages: [{ role: 'user', content: 'hi' }] });

t.test('RBAC: every role against routes of every group, and bad tokens', async (t) => {
  // [method, path, body, roles allowed]: written out here, not read from the table.
  const ALL_READ: Role[] = ['admin', 'manager', 'analyst'];
  const OPS: Role[] = ['admin', 'manager'];
  const ADMIN: Role[] = ['admin'];
  const matrix: [string, string, unknown, Role[]][] = [
    ['GET', '/api/industrial/status', undefined, ALL_READ],
    ['GET', '/api/industrial/usage', undefined, ALL_READ],
    ['GET', '/api/orchestrator/analytics/summary', undefined, ALL_READ],
    ['GET', '/api/orchestrator/metrics', undefined, ALL_READ],
    ['GET', '/api/orchestrator/config', undefined, ALL_READ],
    ['GET', '/api/audit', undefined, ALL_READ],
    ['PUT', '/api/industrial/flags/sticky_routing', { enabled: true }, OPS],
    ['DELETE', '/api/industrial/flags/sticky_routing', undefined, OPS],
    ['POST', '/api/orchestrator/bans/server/d1', { ttlSeconds: 1 }, OPS],
    ['DELETE', '/api/orchestrator/bans', undefined, OPS],
    ['POST', '/api/orchestrator/servers/d1/drain', undefined, OPS],
    ['POST', '/api/orchestrator/servers/d1/undrain', undefined, OPS],
    ['POST', '/api/orchestrator/circuit-breakers/d1/m/reset', undefined, OPS],
    ['POST', '/api/orchestrator/queue/resume', undefined, OPS],
    ['PATCH', '/api/orchestrator/config/queue', { maxSize: 999 }, ADMIN.concat(['manager'])],
    ['POST', '/api/orchestrator/config/reload', undefined, ADMIN],
    ['POST', '/api/auth/keys', { name: 'matrix' }, ADMIN],
    ['GET', '/api/auth/keys', undefined, ADMIN],
  ];
  for (const [method, path, body, allowed] of matrix) {
    for (const role of ROLES) {
      const r = await call(method, path, await jwt({ sub: `s-${role}`, roles: [role] }), body);
      if (allowed.includes(role)) t.ok(r.status < 300, `${role} may ${method} ${path} (${r.status} ${r.body?.error?.message ?? ''})`);
      else t.same([r.status, r.body.error.code], [403, 'forbidden'], `${role} may not ${method} ${path}`);
    }
    t.equal((await call(method, path, undefined, body)).status, 401, `${method} ${path} without a credential`);
  }
  // Bad tokens: 401 with the reason.
  const expired = await call('GET', '/api/industrial/status', await jwt({ roles: ['admin'], exp: Math.floor(Date.now() / 1000) - 3600 }));
  t.same([expired.status, expired.body.error.code], [401, 'unauthorized']);
  t.match(expired.body.error.message, /expired/);
  // No exp: good for ever if it leaked, so refused.
  const endless = await call('GET', '/api/industrial/status', await jwt({ roles: ['admin'], exp: null }));
  t.same([endless.status, endless.body.error.code], [401, 'unauthorized']);
  t.match(endless.body.error.message, /has no exp claim/);
  const aud = await call('GET', '/api/industrial/status', await jwt({ roles: ['admin'], aud: 'someone-else' }));
  t.equal(aud.status, 401);
  t.match(aud.body.error.message, /aud/);
  const sig = await call('GET', '/api/industrial/status', await jwt({ roles: ['admin'], secret: new TextEncoder().encode('another-secret-of-at-least-32-chars!!') }));
  t.equal(sig.status, 401);
  t.match(sig.body.error.message, /signature/);
  t.equal((await call('GET', '/api/industrial/status', 'not-a-token')).status, 403, 'an unknown opaque credential');
  t.equal((await call('GET', '/api/industrial/status', ADMIN_TOKEN)).status, 200, 'ADMIN_TOKEN stays the break-glass admin');
  const failures = await (await fetch(`${tb.url}/metrics`)).text();
  for (const reason of ['expired', 'claim', 'signature', 'role', 'missing']) t.match(failures, new RegExp(`auth_failures_total\\{reason="${reason}"\\} [1-9]`), `auth_failures_total{reason="${reason}"}`);
});

t.test('API keys: made by an admin, shown once, used by a client, revoked: 401 in the client API shape', async (t) => {
  t.equal((await chat(undefined)).status, 401, 'AUTH_MODE=keys: no key, no service');
  t.equal((await chat('made-up-key')).status, 401, 'an unknown key');
  t.equal((await chat('file-key-123')).status, 200, "the fleet file's key");
  const made = await call('POST', '/api/auth/keys', ADMIN_TOKEN, { name: 'ci-bot', role: 'integration', tier: 'standard', label: 'ci' });
  t.equal(made.status, 201);
  t.match(made.body.key, /^sk-eb-/);
  t.match(made.body.id, /^k_[0-9a-f]{12}$/);
  const listed = await call('GET', '/api/auth/keys', ADMIN_TOKEN);
  t.notOk(JSON.stringify(listed.body).includes(made.body.key), 'the key is never shown again');
  t.ok(listed.body.keys.some((k: any) => k.id === made.body.id && k.name === 'ci-bot'));
  const ok = await chat(made.body.key);
  t.equal(ok.status, 200, 'the new key works on every thread at once');
  // A key made for an admin API role is no client credential, as its session is not.
  const analyst = await call('POST', '/api/auth/keys', ADMIN_TOKEN, { name: 'dash', role: 'analyst' });
  const byAnalyst = await chat(analyst.body.key);
  t.same([byAnalyst.status, byAnalyst.body.error.code], [403, 'forbidden'], "an analyst's key on a client route");
  t.match(byAnalyst.body.error.message, /role \(analyst\) may not call the client APIs/);
  t.equal((await call('GET', '/api/industrial/status', analyst.body.key)).status, 200, 'and still reads the admin APIs');
  // The key pasted where its id goes: refused, and neither echoed nor logged.
  const pasted = await call('DELETE', `/api/auth/keys/${analyst.body.key}`, ADMIN_TOKEN);
  t.equal(pasted.status, 404);
  t.notOk(JSON.stringify(pasted.body).includes(analyst.body.key), 'the reply does not echo the key');
  t.match(pasted.body.error.message, /give the key's id/);
  const pastedLine = await logLine(tb, (l) => typeof l['path'] === 'string' && (l['path'] as string).startsWith('/api/auth/keys/k_') && l['status'] === 404);
  t.equal(pastedLine?.['path'], `/api/auth/keys/${analyst.body.id}`, "the access log has the key's id in its place");
  t.notOk(tb.logs.some((l) => JSON.stringify(l).includes(analyst.body.key)), 'no log line has the key');
  t.equal((await call('DELETE', `/api/auth/keys/${made.body.id}`, ADMIN_TOKEN)).status, 200);
  const revoked = await chat(made.body.key);
  t.equal(revoked.status, 401);
  t.same(Object.keys(revoked.body.error).sort(), ['code', 'message', 'param', 'request_id', 'type'], 'the OpenAI error object');
  t.equal(revoked.body.error.type, 'authentication_error');
  // Ollama's route answers in Ollama's shape.
  const ollama = await fetch(`${tb.url}/api/chat`, { method: 'POST', headers: { authorization: `Bearer ${made.body.key}` }, body: JSON.stringify({ model: 'g', messages: [] }) });
  t.equal(ollama.status, 401);
  t.type(((await ollama.json()) as any).error, 'string');
  t.equal((await call('DELETE', `/api/auth/keys/${made.body.id}`, ADMIN_TOKEN)).status, 404);
  t.equal((await call('POST', '/api/auth/keys', ADMIN_TOKEN, { name: 'x', role: 'root' })).body.error.param, 'role');
});

t.test('sessions: a key or a JWT for a session id; a revoked session is refused within a second', async (t) => {
  const s = await call('POST', '/api/auth/sessions', undefined, { api_key: 'file-key-123' });
  t.equal(s.status, 201);
  t.match(s.body.session, /^sess_/);
  t.same(s.body.roles, ['agent']);
  t.equal((await chat(s.body.session)).status, 200, 'the session is a client credential');
  const viaJwt = await call('POST', '/api/auth/sessions', await jwt({ sub: 'analyst-7', roles: ['analyst'] }));
  t.equal(viaJwt.status, 201);
  t.equal((await call('GET', '/api/industrial/status', viaJwt.body.session)).status, 200, "a session carries its JWT's roles");
  t.equal((await call('PUT', '/api/industrial/flags/sticky_routing', viaJwt.body.session, { enabled: true })).status, 403);
  // A live credential whose roles may not call the client APIs: 403 forbidden (reason role), not a 401 that says it is dead.
  const analystChat = await chat(viaJwt.body.session);
  t.same([analystChat.status, analystChat.body.error.code], [403, 'forbidden'], "an analyst's session on a client route");
  t.match(analystChat.body.error.message, /roles may not call the client APIs/);
  const analystJwt = await chat(await jwt({ sub: 'analyst-9', roles: ['analyst'] }));
  t.same([analystJwt.status, analystJwt.body.error.code], [403, 'forbidden'], "an analyst's JWT on a client route");
  t.equal((await chat('team.prod.key1')).status, 200, 'an API key shaped like a JWT is the key it is');
  t.equal((await call('POST', '/api/auth/sessions', undefined, { api_key: 'team.prod.key1' })).status, 201, 'and makes a session as a key');
  // A token past its exp but within the clock skew the verifier allows: no session dead on arrival.
  const stale = await call('POST', '/api/auth/sessions', await jwt({ sub: 'late', roles: ['agent'], exp: Math.floor(Date.now() / 1000) - 5 }));
  t.same([stale.status, stale.body.error.code], [401, 'unauthorized']);
  t.match(stale.body.error.message, /expired/);
  // A session lives no longer than the JWT it was made from (SESSION_TTL_S is an hour here).
  const exp = Math.floor(Date.now() / 1000) + 120;
  const short = await call('POST', '/api/auth/sessions', await jwt({ sub: 'analyst-8', roles: ['analyst'], exp }));
  t.equal(short.status, 201);
  t.equal(Date.parse(short.body.expiresAt), exp * 1000, "the session ends with its token");
  // A session revokes itself.
  t.equal((await call('DELETE', `/api/auth/sessions/${s.body.session}`, s.body.session)).status, 200);
  let refused = false;
  for (let i = 0; i < 40 && !refused; i++) {
    refused = (await chat(s.body.session)).status === 401;
    if (!refused) await new Promise((r) => setTimeout(r, 50));
  }
  t.ok(refused, 'revoked: refused (thread caches hold a session at most 1 s)');
  // An operator revokes every session of a subject.
  const a = await call('POST', '/api/auth/sessions', await jwt({ sub: 'bob', roles: ['agent'] }));
  const b = await call('POST', '/api/auth/sessions', await jwt({ sub: 'bob', roles: ['agent'] }));
  t.same((await call('DELETE', '/api/auth/sessions/subject/bob', ADMIN_TOKEN)).body, { subject: 'bob', revoked: 2 });
  for (const sess of [a.body.session, b.body.session]) t.equal((await call('GET', '/api/industrial/status', sess)).status, 401);
  t.equal((await call('POST', '/api/auth/sessions', undefined, { api_key: 'nope' })).status, 401);
});

t.test('the audit trail: who, what, before and after; readers may read it, clients may not', async (t) => {
  const carol = await jwt({ sub: 'carol', roles: ['manager'] });
  await call('PUT', '/api/industrial/flags/quota_enforcement', carol, { enabled: true });
  // A POST that only reads is no change: it stays out of the trail.
  t.equal((await call('POST', '/api/industrial/qos/resolve', carol, { tier: 'standard' })).status, 200);
  const trail = await call('GET', '/api/audit?subject=carol', await jwt({ sub: 'dave', roles: ['analyst'] }));
  t.equal(trail.status, 200);
  t.same(trail.body.entries.map((x: { action: string }) => x.action), ['PUT /api/industrial/flags/quota_enforcement'], 'the change only, not the query');
  const e = trail.body.entries[0];
  t.equal(e.subject, 'carol');
  t.equal(e.role, 'manager');
  t.equal(e.action, 'PUT /api/industrial/flags/quota_enforcement');
  t.equal(e.target, 'quota_enforcement');
  t.same([e.before, e.after], [false, true], 'the flag before and after');
  t.type(e.replica, 'string');
  t.equal((await call('GET', '/api/audit', await jwt({ roles: ['agent'] }))).status, 403);
  // A fleet change says what it did: maintenance on and off are told apart.
  for (const enabled of [true, false]) t.equal((await call('POST', '/api/orchestrator/servers/d1/maintenance', carol, { enabled, reason: 'disk' })).status, 200);
  const fleet = await call('GET', `/api/audit?subject=carol&action=${encodeURIComponent('POST /api/orchestrator/servers/d1/maintenance')}`, ADMIN_TOKEN);
  t.same(fleet.body.entries.map((x: { after: unknown }) => x.after), [
    { change: 'maintenance', server: 'd1', enabled: false, reason: 'disk' },
    { change: 'maintenance', server: 'd1', enabled: true, reason: 'disk' },
  ]);
  t.equal((await call('GET', '/api/audit?limit=0', ADMIN_TOKEN)).status, 400);
});

t.test('no secret in logs, config dumps or error bodies', async (t) => {
  const made = await call('POST', '/api/auth/keys', ADMIN_TOKEN, { name: 'leak-check' });
  const session = (await call('POST', '/api/auth/sessions', undefined, { api_key: made.body.key })).body.session;
  const token = await jwt({ roles: ['admin'] });
  await chat(made.body.key);
  await chat(session);
  await call('GET', '/api/industrial/status', token);
  await call('GET', '/api/industrial/status', 'wrong-' + made.body.key);
  // Its id in a path: the access log and the audit trail mask it.
  t.equal((await call('DELETE', `/api/auth/sessions/${session}`, session)).status, 200);
  const dumps = JSON.stringify([(await call('GET', '/api/orchestrator/config', ADMIN_TOKEN)).body, (await call('GET', '/api/industrial/status', ADMIN_TOKEN)).body, (await call('GET', '/api/audit?limit=1000', ADMIN_TOKEN)).body, (await call('GET', '/api/auth/keys', ADMIN_TOKEN)).body]);
  await new Promise((r) => setTimeout(r, 200));
  const logs = JSON.stringify(tb.logs);
  for (const [name, secret] of [['the API key', made.body.key], ['the session id', session], ['the JWT', token], ['JWT_SECRET', SECRET], ['ADMIN_TOKEN', ADMIN_TOKEN]] as const) {
    t.notOk(logs.includes(secret), `${name} is in no log line`);
    t.notOk(dumps.includes(secret), `${name} is in no config dump or admin reply`);
  }
});

t.test('/api/health and /api/ready', async (t) => {
  const h = await call('GET', '/api/health', undefined);
  t.same([h.status, h.body.status, h.body.store], [200, 'ok', 'memory']);
  t.equal((await call('GET', '/api/ready', undefined)).status, 200);
  t.ok(admin.authorization.length > 0);
});

t.test('failed admin credentials are throttled per address', async (t) => {
  const nb = await startFleetBroker(t, fleetFile, { INFER_ENABLED: 'false', ADMIN_AUTH_MAX_FAILURES: '5' });
  const status = async (token: string) => (await fetch(`${nb.url}/api/industrial/status`, { headers: { authorization: `Bearer ${token}` } })).status;
  for (let i = 0; i < 5; i++) t.equal(await status(`guess-${i}`), 403);
  const res = await fetch(`${nb.url}/api/industrial/status`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  t.equal(res.status, 429, 'past 5 failures even the right token waits');
  t.ok(Number(res.headers.get('retry-after')) > 0, 'with Retry-After');
  t.equal((await json(res)).error.code, 'rate_limited');
  t.equal((await fetch(`${nb.url}/health`)).status, 200, 'the rest of the broker serves on');
});
