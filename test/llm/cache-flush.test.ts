// The response cache across fleet changes and its flush: a group that serves another model
// starts on new entries (another server of the same model keeps them), and
// POST /api/orchestrator/cache/flush drops every entry, on every thread and every replica.
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, setGlobalDispatcher } from 'undici';
import { Redis } from 'ioredis';
import { stringify } from 'yaml';
import { createMockUpstream, type MockUpstream } from '../../src/mock-upstream/server.ts';
import { startTestBroker, admin, logLine } from '../helpers/broker.ts';
import { startRedis } from '../helpers/redis.ts';

// One connection per origin: a repeat reaches the thread that stored the entry.
setGlobalDispatcher(new Agent({ connections: 1 }));

const redis = await startRedis(t);
const one = await createMockUpstream({ tokens: 4 });
const two = await createMockUpstream({ tokens: 4 });
// Its first token after 800 ms: a request still in flight when the flush comes.
const slow = await createMockUpstream({ tokens: 4, ttftMs: 800 });
t.teardown(() => Promise.all([one.close(), two.close(), slow.close()]));

const dir = mkdtempSync(join(tmpdir(), 'eb-cache-flush-'));
const file = join(dir, 'broker.yaml');
const fleet = (deployments: { id: string; m: MockUpstream; model: string }[]) =>
  stringify({
    cache: { mode: 'on', maxBytes: 1_000_000, ttlSeconds: 600 },
    modelGroups: { g: { deployments: deployments.map((d) => ({ id: d.id, provider: 'openai', url: d.m.url, model: d.model })) }, slow: { deployments: [{ id: 's', provider: 'openai', url: slow.url, model: 'm' }] } },
  });
writeFileSync(file, fleet([{ id: 'a', m: one, model: 'm1' }]));
const env = { BROKER_CONFIG: file, INFER_ENABLED: 'false', REDIS_URL: redis.url };
const tb = await startTestBroker({ ...env, FRONT_THREADS: '2' });
t.teardown(() => tb.close());

let n = 0;
const fresh = () => [{ role: 'user', content: `flush question ${++n}` }];
async function ask(url: string, messages: unknown[], model = 'g') {
  const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, messages }) });
  const body = (await res.json()) as { model: string };
  return { cache: res.headers.get('x-broker-cache'), model: body.model };
}
const post = (url: string, path: string, body?: unknown, headers: Record<string, string> = admin) =>
  fetch(`${url}${path}`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
const reload = async (content: string): Promise<number> => {
  writeFileSync(file, content);
  return (await post(tb.url, '/api/orchestrator/config/reload')).status;
};
/** Until Redis holds `count` entries: a reply is stored a moment after the client read it. */
async function stored(r: Redis, count: number): Promise<number> {
  let keys = 0;
  for (let i = 0; i < 200 && keys < count; i++) {
    keys = (await r.keys('eb:cache:*')).length;
    if (keys < count) await new Promise((res) => setTimeout(res, 10));
  }
  return keys;
}

t.test('a group given another model misses; another server of the same model hits', async (t) => {
  const messages = fresh();
  t.same(await ask(tb.url, messages), { cache: 'miss', model: 'm1' });
  t.same(await ask(tb.url, messages), { cache: 'hit', model: 'm1' });
  t.equal(await reload(fleet([{ id: 'a', m: one, model: 'm1' }, { id: 'b', m: two, model: 'm1' }])), 200);
  t.same(await ask(tb.url, messages), { cache: 'hit', model: 'm1' }, 'one more server of the model: the entry still answers');
  t.equal(await reload(fleet([{ id: 'a', m: one, model: 'm2' }])), 200);
  t.same(await ask(tb.url, messages), { cache: 'miss', model: 'm2' }, 'the old model\'s reply does not answer for the new one');
  t.same(await ask(tb.url, messages), { cache: 'hit', model: 'm2' });
});

t.test('flush: every thread and every replica misses after it, and it is audited', async (t) => {
  const other = await startTestBroker({ ...env, FRONT_THREADS: '0' });
  t.teardown(() => other.close());
  const r = new Redis(redis.url);
  t.teardown(() => r.disconnect());
  const asked = Array.from({ length: 12 }, fresh);
  const before = (await r.keys('eb:cache:*')).length;
  for (const m of asked) t.equal((await ask(tb.url, m)).cache, 'miss');
  t.equal(await stored(r, before + asked.length), before + asked.length, 'stored in Redis');
  // The other replica holds them in memory too, once it has read them.
  for (const m of asked) t.equal((await ask(other.url, m)).cache, 'hit', 'the other replica hits');

  t.equal((await post(tb.url, '/api/orchestrator/cache/flush', undefined, {})).status, 401, 'admin only');
  const bad = await post(tb.url, '/api/orchestrator/cache/flush', { group: 'g' });
  t.equal(bad.status, 400, 'a field that would narrow it is refused, not ignored');
  t.match(await bad.json(), { error: { code: 'invalid_request', param: 'group' } });
  t.equal((await ask(tb.url, asked[0]!)).cache, 'hit', 'the refused flush dropped nothing');

  const res = await post(tb.url, '/api/orchestrator/cache/flush');
  t.equal(res.status, 200);
  t.same(await res.json(), { flushed: true, redisKeys: before + asked.length });
  t.same(await r.keys('eb:cache:*'), [], 'Redis holds none');
  t.ok(await logLine(tb, (l) => l['audit'] === 'cache_flush' && l['redisKeys'] === before + asked.length), 'audited');
  // The other replica hears of it on the refresh channel, a moment later: each entry is asked
  // once (a miss stores it again), until one misses; every one hitting means it never heard.
  let missed = -1;
  for (let i = 1; i < asked.length && missed < 0; i++) {
    if ((await ask(other.url, asked[i]!)).cache === 'miss') missed = i;
    else await new Promise((res) => setTimeout(res, 50));
  }
  t.ok(missed > 0, 'the other replica dropped its memory copies');
  for (const m of asked.slice(missed + 1)) t.equal((await ask(other.url, m)).cache, 'miss', 'all of them');
  // This broker's threads dropped theirs: a new connection may land on either thread.
  for (const m of asked.slice(0, missed)) {
    const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', connection: 'close' }, body: JSON.stringify({ model: 'g', messages: m }) });
    await res.arrayBuffer();
    t.equal(res.headers.get('x-broker-cache'), 'miss', 'this replica misses');
  }
});

t.test('a reply whose request began before the flush is not stored after it', async (t) => {
  // The model changed under its name: a reply begun on the old weights must not outlive the flush.
  const messages = fresh();
  const before = slow.stats.total;
  const pending = ask(tb.url, messages, 'slow');
  for (let i = 0; i < 500 && slow.stats.total === before; i++) await new Promise((res) => setTimeout(res, 5));
  t.equal(slow.stats.total, before + 1, 'the request is at its upstream');
  t.equal((await post(tb.url, '/api/orchestrator/cache/flush')).status, 200);
  t.equal((await pending).cache, 'miss');
  t.equal((await ask(tb.url, messages, 'slow')).cache, 'miss', 'not stored: it began before the flush');
  t.equal((await ask(tb.url, messages, 'slow')).cache, 'hit', 'the reply of a request begun after it is');
});

t.test('flush with Redis away: memory goes, and the call says the shared entries did not', async (t) => {
  const messages = fresh();
  t.equal((await ask(tb.url, messages)).cache, 'miss');
  t.equal((await ask(tb.url, messages)).cache, 'hit');
  await redis.kill();
  t.teardown(() => redis.restart());
  const res = await post(tb.url, '/api/orchestrator/cache/flush');
  t.equal(res.status, 503);
  t.match(await res.json(), { error: { code: 'state_unavailable', message: /memory entries were dropped/ } });
  t.equal((await ask(tb.url, messages)).cache, 'miss', 'the memory entry is gone');
});
