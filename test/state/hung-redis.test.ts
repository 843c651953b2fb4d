// A Redis that stops answering without closing its connections (SIGSTOP: a frozen host, a
// network blackhole): commands fail after REDIS_COMMAND_TIMEOUT_MS instead of hanging, the
// store says it is down (redis_up 0) and fails the next commands at once, a broker starts and
// stops without it, and all comes back when Redis answers again.
import t from 'tap';
import { RedisStore } from '../../src/state/redis.ts';
import { createLogger } from '../../src/obs/logger.ts';
import { startRedis } from '../helpers/redis.ts';
import { startTestBroker, metricValue } from '../helpers/broker.ts';

const redis = await startRedis(t);

async function until(what: string, check: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not ${what} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

t.test('a hung Redis: a command fails after the timeout, the store goes down, the next commands fail at once; back when it answers', async (t) => {
  const ups: boolean[] = [];
  const store = new RedisStore({ url: redis.url, replica: 'r1', logger: createLogger('silent'), commandTimeoutMs: 200, onUp: (up) => ups.push(up) });
  t.teardown(() => store.close());
  await store.connect();
  t.ok(store.up);
  await store.putDoc('flags', { a: 1 });
  await new Promise((r) => setTimeout(r, 100));
  const reread = new Set<string>();
  store.onChange((kind) => reread.add(kind));
  await new Promise((r) => setTimeout(r, 50));
  reread.clear();
  redis.freeze();
  try {
    await t.rejects(store.getDoc('flags'), /Command timed out/, 'no reply: the command fails');
    t.equal(store.up, false, 'down');
    t.same(ups, [true, false]);
    await t.rejects(store.getSession('s1'), 'the next command fails without waiting for Redis');
    t.equal(store.up, false);
  } finally {
    redis.thaw();
  }
  await until('up again', () => store.up);
  t.same(await store.getDoc('flags'), { a: 1 }, 'serves again after a reconnect');
  await until('every doc re-read after the outage', () => reread.size === 3);
  t.same([...reread].sort(), ['flags', 'fleet', 'keys'], 'as after a restart: what changed meanwhile is merged');
});

t.test('a store started while Redis is hung: connect() returns, the store is down, and comes up when Redis answers', async (t) => {
  redis.freeze();
  const store = new RedisStore({ url: redis.url, replica: 'r2', logger: createLogger('silent'), commandTimeoutMs: 200 });
  t.teardown(() => store.close());
  try {
    await store.connect();
    t.equal(store.up, false);
    await t.rejects(store.getDoc('flags'));
  } finally {
    redis.thaw();
  }
  await until('up', () => store.up);
  t.same(await store.getDoc('flags'), { a: 1 });
});

t.test('a broker running when Redis hangs: its heartbeat finds it (redis_up 0), it serves on, and it stops', async (t) => {
  const tb = await startTestBroker({ REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: '200', INFER_ENABLED: 'false', FRONT_THREADS: '0' });
  let closed = false;
  t.teardown(async () => {
    redis.thaw();
    if (!closed) await tb.close();
  });
  t.equal(await metricValue(tb.url, 'redis_up'), 1);
  redis.freeze();
  await until('redis_up 0', async () => (await metricValue(tb.url, 'redis_up')) === 0);
  t.equal((await fetch(`${tb.url}/healthz`)).status, 200, 'still serving');
  await tb.close();
  closed = true;
  t.pass('closed while Redis is hung');
  redis.thaw();
});

t.test('a broker started while Redis is hung: it listens and serves, then finds Redis when it answers', async (t) => {
  redis.freeze();
  let tb: Awaited<ReturnType<typeof startTestBroker>> | undefined;
  t.teardown(async () => {
    redis.thaw();
    await tb?.close();
  });
  tb = await startTestBroker({ REDIS_URL: redis.url, REDIS_COMMAND_TIMEOUT_MS: '200', INFER_ENABLED: 'false', FRONT_THREADS: '1' });
  t.equal((await fetch(`${tb.url}/healthz`)).status, 200, 'serving');
  t.equal(await metricValue(tb.url, 'redis_up'), 0);
  redis.thaw();
  await until('redis_up 1', async () => (await metricValue(tb!.url, 'redis_up')) === 1);
});

// A busy host: this thread stalls past the command timeout while Redis has answered. The
// command's timer fires first after the stall (timers before the poll phase that reads the
// reply); it was read as a hung Redis (redis_up 0, connections dropped, every doc re-read).
t.test('this thread stalled past the command timeout, Redis answering: the store stays up and keeps its connection', async (t) => {
  const ups: boolean[] = [];
  const store = new RedisStore({ url: redis.url, replica: 'r-stall', logger: createLogger('silent'), commandTimeoutMs: 200, onUp: (up) => ups.push(up) });
  t.teardown(() => store.close());
  await store.connect();
  await store.putDoc('flags', { a: 2 });
  await new Promise((r) => setTimeout(r, 300));
  // Sent, then the thread busy for 3x the timeout, as a start compiling models or a long GC
  // would hold it; from the check phase, so that the next turn of the loop runs the expired
  // timers before its poll phase reads the reply.
  const pending = await new Promise<Promise<string>>((r) =>
    setImmediate(() => {
      const p = store.getDoc('flags').then(() => 'read', (err: Error) => err.message);
      const until = Date.now() + 600;
      while (Date.now() < until);
      r(p);
    }),
  );
  t.equal(await pending, 'Command timed out', "the command's own timer fired first");
  await new Promise((r) => setTimeout(r, 100));
  t.equal(store.up, true, 'not counted as a hung Redis');
  t.same(ups, [true], 'never down');
  t.same(await store.getDoc('flags'), { a: 2 }, 'the next command is answered on the same connection');
});
