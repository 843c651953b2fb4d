// Guessing credentials is slowed wherever one is taken: a client route's wrong keys spend the
// address's rate limit (a made-up key has no bucket of its own), and POST /api/auth/sessions,
// which turns a key into a session, counts refused ones as the admin routes do.
import t from 'tap';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const m = await startMock(t);
const fleet = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: m.url, model: 'm' }] } }, apiKeys: { 'good-key-1': {} } };
const tb = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', AUTH_MODE: 'keys', RATE_LIMIT_RPS: '5', RATE_LIMIT_BURST: '5', ADMIN_AUTH_MAX_FAILURES: '10' });

t.test('wrong keys on a client route: 401, then 429 once the address spent its rate limit', async (t) => {
  const statuses: number[] = [];
  const started = Date.now();
  for (let i = 0; i < 15; i++) {
    const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { authorization: `Bearer guess-${i}`, 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'x' }] }) });
    await res.arrayBuffer();
    statuses.push(res.status);
  }
  t.ok(statuses.slice(0, 3).every((s) => s === 401), `the first are refused as wrong (${statuses.join(' ')})`);
  t.ok(statuses.includes(429), 'then the address is rate limited');
  // The burst (5), then 5 a second as the bucket refills: a slow machine takes longer over the 15 and refills more.
  const allowed = 5 + Math.ceil((5 * (Date.now() - started)) / 1000);
  t.ok(statuses.filter((s) => s === 401).length <= allowed, `no more guesses than the rate limit lets through (${allowed} over ${Date.now() - started} ms)`);
});

t.test('wrong keys for a session: throttled like admin credentials', async (t) => {
  const statuses: number[] = [];
  for (let i = 0; i < 14; i++) {
    const res = await fetch(`${tb.url}/api/auth/sessions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ api_key: `guess-${i}` }) });
    await res.arrayBuffer();
    statuses.push(res.status);
  }
  t.same(statuses.slice(0, 10), Array(10).fill(401), 'ADMIN_AUTH_MAX_FAILURES (10) refused');
  t.same(statuses.slice(10), Array(4).fill(429), 'then 429 from that address');
});
