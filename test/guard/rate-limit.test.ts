// The rate limiter's shared buckets on one thread: two limiters on one buffer stand
// in for two threads (real threads: test/sched/unit/cross-thread.test.ts).
import t from 'tap';
import { createRateLimiter, rateLimitBuffer, setRateLimitShare } from '../../src/guard/rate-limit.ts';
import { BrokerError } from '../../src/errors.ts';

function admitted(check: () => void): boolean {
  try {
    check();
    return true;
  } catch (err) {
    if ((err as BrokerError).code !== 'rate_limited') throw err;
    return false;
  }
}

t.test('limiters sharing a buffer spend the same buckets', async (t) => {
  let now = 1_700_000_000_000;
  const buffer = rateLimitBuffer(1000);
  const a = createRateLimiter(1, 2, { now: () => now, buffer });
  const b = createRateLimiter(1, 2, { now: () => now, buffer });
  t.equal(a.buffer, buffer);
  a.check('k');
  b.check('k');
  t.notOk(admitted(() => a.check('k')), 'burst 2 is spent across both');
  t.notOk(admitted(() => b.check('k')));
  t.ok(admitted(() => b.check('other')), 'other keys have their own bucket');
  t.equal(a.size, 2);
  t.equal(b.size, 2);
  now += 1000;
  t.ok(admitted(() => b.check('k')), 'one token back after 1 s, for either');
  t.notOk(admitted(() => a.check('k')));

  const separate = createRateLimiter(1, 2, { now: () => now });
  t.not(separate.buffer, buffer, 'without a buffer, a limiter has its own');
  t.ok(admitted(() => separate.check('k')));
});

t.test('a fixed table: idle buckets are taken over, else clients share the overflow bucket', async (t) => {
  let now = 0;
  let shared = 0;
  // 2 slots: a table no bigger than the probe window, so every key probes both.
  const rl = createRateLimiter(1, 2, { now: () => now, maxClients: 2, onSharedRefusal: () => shared++ });
  rl.check('a');
  rl.check('b');
  t.equal(rl.size, 2);
  // c and d find no slot (a and b were used 0 s ago, idle after 2 s): they share one bucket of burst 2.
  t.ok(admitted(() => rl.check('c')));
  t.ok(admitted(() => rl.check('d')));
  t.notOk(admitted(() => rl.check('c')), 'the overflow bucket is spent by c and d together');
  t.equal(shared, 1, 'a refusal in the shared bucket is told apart (rate_limit_shared_rejections_total)');
  t.throws(() => rl.check('d'), { message: /in the bucket clients share while the per-client table is full/ });
  t.ok(admitted(() => rl.check('a')), 'a still has its own bucket');
  t.notOk(admitted(() => rl.check('a')));
  t.notOk(admitted(() => rl.check('a')));
  t.equal(shared, 2, 'a refusal in its own bucket is not');
  t.equal(rl.size, 2, 'overflow clients hold no slot');

  now = 2_500; // b idle 2.5 s > burst/rate = 2 s: its bucket would be full again, so its slot is free to take
  t.ok(admitted(() => rl.check('c')));
  t.ok(admitted(() => rl.check('c')));
  t.notOk(admitted(() => rl.check('c')), 'c now has a bucket of its own (burst 2)');
  t.equal(rl.size, 2, 'taken over, not grown');
  t.ok(admitted(() => rl.check('b')), 'b starts full in the overflow bucket');
});

t.test('old positional clock and options clock agree; Retry-After in whole seconds', async (t) => {
  let now = 0;
  for (const rl of [createRateLimiter(2, 1, () => now), createRateLimiter(2, 1, { now: () => now })]) {
    now = 0;
    rl.check('x');
    const err = t.throws(() => rl.check('x')) as BrokerError;
    t.equal(err.code, 'rate_limited');
    t.equal(err.retryAfter, 1, '0.5 s rounds up to 1');
    now = 500;
    rl.check('x');
  }
});

t.test('a buffer from another layout is refused', async (t) => {
  t.throws(() => createRateLimiter(1, 1, { buffer: new SharedArrayBuffer(1024) }), /no shared table/);
});

t.test('replicas sharing Redis: each admits its share of the rate and burst, on every thread at once', async (t) => {
  let now = 1_700_000_000_000;
  const buffer = rateLimitBuffer(1000);
  const a = createRateLimiter(4, 8, { now: () => now, buffer });
  const b = createRateLimiter(4, 8, { now: () => now, buffer });
  setRateLimitShare(buffer, 2);
  let n = 0;
  for (let i = 0; i < 20; i++) if (admitted(() => (i % 2 === 0 ? a : b).check('k'))) n++;
  t.equal(n, 4, 'burst 8 over two replicas: 4 here');
  const err = (() => {
    try {
      a.check('k');
    } catch (e) {
      return e as BrokerError;
    }
  })();
  t.match(err?.message, /rate limit of 4 requests\/s exceeded \(2 on this replica, one of 2\)/);
  now += 1000;
  n = 0;
  for (let i = 0; i < 20; i++) if (admitted(() => a.check('k'))) n++;
  t.equal(n, 2, 'refills at 2/s, half the rate');
  setRateLimitShare(buffer, 1);
  now += 10_000;
  n = 0;
  for (let i = 0; i < 20; i++) if (admitted(() => b.check('k'))) n++;
  t.equal(n, 8, 'alone again: the whole burst');
});
