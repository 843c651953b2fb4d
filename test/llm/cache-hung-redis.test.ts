// The response cache with a Redis that stops answering but keeps its connections open
// (SIGSTOP: a frozen host, a blackhole). The first lookup waits out the command timeout, and
// a PING after it too: the cache then drops its connections, so the next lookups miss
// without asking Redis, and stores go to memory only, until Redis is ready again. Each outage is logged once,
// and its end too.
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createMockUpstream } from '../../src/mock-upstream/server.ts';
import { startTestBroker, metricValue } from '../helpers/broker.ts';
import { startRedis } from '../helpers/redis.ts';

const redis = await startRedis(t);
const up = await createMockUpstream({ tokens: 4 });
const dir = mkdtempSync(join(tmpdir(), 'eb-cache-hung-'));
writeFileSync(join(dir, 'broker.yaml'), stringify({ cache: { mode: 'on' }, modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: up.url, model: 'm' }] } } }));
// One serving thread: one cache, one Redis connection, counted exactly.
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false', REDIS_URL: redis.url, FRONT_THREADS: '1' });
t.teardown(async () => {
  redis.thaw();
  await tb.close();
  await up.close();
});

let n = 0;
async function ask(): Promise<{ status: number; cache: string | null }> {
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: `q ${++n}` }] }) });
  await res.text();
  return { status: res.status, cache: res.headers.get('x-broker-cache') };
}

async function until(what: string, check: () => boolean | Promise<boolean>): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}`);
}

const failed = () => tb.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('response cache: redis failed')).length;
const back = () => tb.logs.filter((l) => l.msg === 'response cache: redis answers again').length;

t.test('a hung Redis costs one lookup its timeout, not every miss; logged once per outage, and its end', async (t) => {
  t.same(await ask(), { status: 200, cache: 'miss' }, 'Redis up: a miss, stored');
  t.equal(await metricValue(tb.url, 'llm_cache_redis_errors_total'), 0);
  redis.freeze();
  try {
    const answers = [];
    for (let i = 0; i < 5; i++) answers.push(await ask());
    // The first lookup's timeout, then a PING's: Redis is hung. Those in flight meanwhile fail too.
    const early = await metricValue(tb.url, 'llm_cache_redis_errors_total');
    t.ok(early >= 1, `the first lookups waited for Redis and failed (${early})`);
    for (let i = 0; i < 5; i++) answers.push(await ask());
    t.same(answers, Array(10).fill({ status: 200, cache: 'miss' }), 'every request served, a miss');
    t.equal(await metricValue(tb.url, 'llm_cache_redis_errors_total'), early, 'the later ones missed without asking it');
    t.equal(failed(), 1, 'the outage logged once');
  } finally {
    redis.thaw();
  }
  await until('the cache to find Redis again', () => back() === 1);

  // A second outage after the first ended is logged again.
  redis.freeze();
  try {
    t.same(await ask(), { status: 200, cache: 'miss' });
    t.equal(failed(), 2, 'the next outage logged');
  } finally {
    redis.thaw();
  }
  await until('the cache to find Redis again', () => back() === 2);
});
