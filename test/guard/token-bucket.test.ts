import t from 'tap';
import { take, type Bucket } from '../../src/guard/token-bucket.ts';
import { createRateLimiter, clientKeyOf } from '../../src/guard/rate-limit.ts';
import { BrokerError } from '../../src/errors.ts';
import { keyId } from '../../src/guard/api-key.ts';

t.test('token bucket admits a burst, then refills at the rate', async (t) => {
  const limits = { rate: 2, burst: 3 };
  const b: Bucket = { tokens: 3, at: 0 };
  t.equal(take(b, limits, 0), 0);
  t.equal(take(b, limits, 0), 0);
  t.equal(take(b, limits, 0), 0);
  const wait = take(b, limits, 0);
  t.equal(wait, 0.5, 'one token comes back after 1/rate seconds');
  t.ok(take(b, limits, 499) > 0, 'still empty just before');
  t.equal(take(b, limits, 1000), 0, 'admitted after refill');
  t.equal(take(b, limits, 100_000), 0);
  t.ok(b.tokens <= 3, 'never more than burst');
});

t.test('rate limiter: per client key, Retry-After in whole seconds', async (t) => {
  let now = 0;
  const rl = createRateLimiter(1, 2, () => now);
  rl.check('a');
  rl.check('a');
  const err = t.throws(() => rl.check('a')) as BrokerError;
  t.equal(err.code, 'rate_limited');
  t.equal(err.retryAfter, 1);
  rl.check('b'); // another client has its own bucket
  now = 1000;
  rl.check('a');
  t.equal(rl.size, 2);
});

t.test('rate limiter with rps 0 admits everything', async (t) => {
  const rl = createRateLimiter(0, 0);
  let admitted = 0;
  for (let i = 0; i < 1000; i++) {
    rl.check('x');
    admitted++;
  }
  t.equal(admitted, 1000);
  t.equal(rl.size, 0, 'keeps no buckets');
  t.equal(rl.buffer, undefined, 'and no shared buffer');
});

t.test('client key prefers the API key over the address', async (t) => {
  const known = (k: string) => k === 'k1' || k === 'k2';
  t.equal(clientKeyOf({ 'x-api-key': 'k1' }, '1.2.3.4', known), `key:${keyId('k1')}`, "by the key's id, never the key");
  t.equal(clientKeyOf({ authorization: 'Bearer k2' }, '1.2.3.4', known), `key:${keyId('k2')}`);
  t.equal(clientKeyOf({ authorization: 'Bearer sess_abc' }, '1.2.3.4', known, { keyId: keyId('k1') }), `key:${keyId('k1')}`, "a session shares its key's bucket");
  t.equal(clientKeyOf({ authorization: 'Bearer sess_abc' }, '1.2.3.4', known, { tier: 'batch' }), 'ip:1.2.3.4', 'a session of no key counts as its address');
  t.equal(clientKeyOf({}, '1.2.3.4', known), 'ip:1.2.3.4');
  t.equal(clientKeyOf({ 'x-api-key': 'made-up' }, '1.2.3.4', known), 'ip:1.2.3.4', 'an unknown key counts as its address');
  t.equal(clientKeyOf({ 'x-api-key': 'k1' }, '1.2.3.4'), 'ip:1.2.3.4', 'no key is known unless said so');
});
