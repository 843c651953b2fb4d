// A cache refresh made while Redis is away reaches the other replicas once it is back: before,
// the refreshing replica served the new reply and the others their old copy until its TTL ran
// out (an hour by default), since neither the store nor the notice happened, and nothing
// remembered them.
import t from 'tap';
import { createMockUpstream } from '../../src/mock-upstream/server.ts';
import { startFleetBroker } from '../helpers/fleet.ts';
import { startRedis } from '../helpers/redis.ts';

const redis = await startRedis(t);
const up = await createMockUpstream({ tokens: 4 });
t.teardown(() => up.close());
const fleet = { cache: { mode: 'on' }, modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: up.url, model: 'm' }] } } };
const env = { INFER_ENABLED: 'false', REDIS_URL: redis.url, FRONT_THREADS: '1', FLEET_HEALTH_CHECKS: 'false' };
const a = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'cache-a' });
const b = await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'cache-b' });

async function ask(url: string, directive?: string): Promise<{ cache: string | null; text: string }> {
  const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...(directive ? { 'x-broker-cache': directive } : {}) }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'the question' }] }) });
  const body = (await res.json()) as { choices: { message: { content: string } }[] };
  return { cache: res.headers.get('x-broker-cache'), text: body.choices[0]!.message.content };
}

async function until(what: string, check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

t.test('a refresh made while Redis was away replaces the entry on every replica once it is back', async (t) => {
  const first = await ask(a.url);
  t.equal(first.cache, 'miss');
  await until('the entry on B', async () => (await ask(b.url)).cache === 'hit');
  up.setKnobs({ tokens: 2 });
  await redis.kill();
  const refreshed = await ask(a.url, 'refresh');
  t.not(refreshed.text, first.text, 'A has the new reply');
  t.equal((await ask(b.url)).text, first.text, 'B serves its copy meanwhile (it cannot know)');
  // Back (empty): A stores its refresh and tells; B drops the copies it kept while deaf.
  up.setKnobs({ tokens: 6 });
  await redis.restart();
  await until("A's refresh on B", async () => {
    const r = await ask(b.url);
    return r.cache === 'hit' && r.text === refreshed.text;
  });
  t.pass('B serves the refreshed reply, from the cache');
});
