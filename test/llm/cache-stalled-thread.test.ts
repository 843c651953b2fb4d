// The response cache on a busy host: its thread stalls past the 250 ms command timeout while
// Redis has answered. The command's timer fires first after the stall (timers run before the
// poll phase reads the reply), and that was read as an outage: a warning in the log, a PING,
// and "answers again" after it, so a real outage right after was logged a second time.
import t from 'tap';
import { Redis } from 'ioredis';
import { DEFAULT_CACHE } from '../../src/config/broker-config.ts';
import { ResponseCache } from '../../src/llm/cache/cache.ts';
import { createLogger } from '../../src/obs/logger.ts';
import { createMetrics } from '../../src/obs/metrics.ts';
import { startRedis } from '../helpers/redis.ts';
import { Writable } from 'node:stream';

const redis = await startRedis(t);

t.test('a lookup timed out by a stall of its own thread is a miss, not an outage', async (t) => {
  const lines: { level: number; msg: string }[] = [];
  const sink = new Writable({ write: (chunk: Buffer, _enc, cb) => (lines.push(JSON.parse(chunk.toString()) as { level: number; msg: string }), cb()) });
  const metrics = createMetrics();
  const cache = new ResponseCache({ settings: { ...DEFAULT_CACHE, mode: 'on' }, metrics, logger: createLogger('info', sink), redisUrl: redis.url });
  t.teardown(() => cache.close());
  await cache.connect();
  const plan = { key: 'stalled-thread', lookup: true, store: true };
  t.equal(await cache.get(plan, 'g'), undefined, 'Redis up: a miss');
  await new Promise((r) => setTimeout(r, 400));
  // Sent, then the thread busy for 3x the timeout, from the check phase, so that the next
  // turn runs the expired timer before its poll phase reads the reply.
  const pending = await new Promise<Promise<unknown>>((r) =>
    setImmediate(() => {
      const p = cache.get(plan, 'g');
      const until = Date.now() + 750;
      while (Date.now() < until);
      r(Promise.resolve(p));
    }),
  );
  t.equal(await pending, undefined, 'the lookup is a miss');
  t.equal((await metrics.llmCacheRedisErrors.get()).values[0]?.value, 1, 'its command failed (the timer fired first)');
  await new Promise((r) => setTimeout(r, 300));
  t.same(lines.filter((l) => l.level >= 40 || /redis/.test(l.msg)).map((l) => l.msg), [], 'no outage said, and no end of one');
  // Still on the same connection: a store reaches Redis.
  cache.put({ ...plan, key: 'after-stall' }, 'g', { v: 1, kind: 'chat', chunks: ['hi'], finish: 'stop', promptTokens: 1, completionTokens: 1 }, Date.now());
  const direct = new Redis(redis.url);
  t.teardown(() => direct.disconnect());
  let found = 0;
  for (let i = 0; i < 40 && found === 0; i++) {
    found = (await direct.keys('eb:cache:*')).length;
    if (found === 0) await new Promise((r) => setTimeout(r, 50));
  }
  t.equal(found, 1, 'the next store is written to Redis');
});
