import t, { type Test } from 'tap';
import { QuotaLedger } from '../../src/policy/quota.ts';
import { BrokerError } from '../../src/errors.ts';

function ledger(start = 0) {
  const clock = { now: start };
  return { clock, q: new QuotaLedger(() => clock.now) };
}

function rejected(t: Test, fn: () => unknown): BrokerError {
  const err = t.throws(fn) as BrokerError;
  t.ok(err instanceof BrokerError, 'throws a BrokerError');
  t.equal(err.code, 'quota_exceeded');
  t.equal(err.status, 429);
  return err;
}

t.test('rpm: window slides, retryAfter counts down to the oldest bucket leaving', async (t) => {
  const { clock, q } = ledger();
  q.setLimits('key:a', { rpm: 2 });
  q.reserve(['key:a'], 0);
  q.reserve(['key:a'], 0);
  clock.now = 30_000;
  const err = rejected(t, () => q.reserve(['key:a'], 0));
  t.equal(err.retryAfter, 30);
  t.match(err.message, /key:a/);
  t.match(err.message, /rpm/);
  t.same(err.details, { subject: 'key:a', limit: 'rpm' });
  t.equal(q.usage('key:a').rpm, 2, 'a rejected request is not counted');

  clock.now = 59_999;
  t.equal(rejected(t, () => q.reserve(['key:a'], 0)).retryAfter, 1, 'never less than 1');
  clock.now = 60_001;
  q.reserve(['key:a'], 0);
  t.equal(q.usage('key:a').rpm, 1, 'the t=0 requests left the window');
});

t.test('cancel gives back the request as well as the tokens; release keeps the request', async (t) => {
  const { q } = ledger();
  q.setLimits('key:a', { rpm: 2, tpm: 100 });
  q.reserve(['key:a'], 40).cancel();
  t.same([q.usage('key:a').rpm, q.usage('key:a').tpm, q.usage('key:a').reservedTokens], [0, 0, 0], 'as if never counted');
  const r = q.reserve(['key:a'], 40);
  r.release();
  r.cancel();
  t.same([q.usage('key:a').rpm, q.usage('key:a').tpm], [1, 0], 'released: the request still counts; a second settle does nothing');
  q.reserve(['key:a'], 0);
  rejected(t, () => q.reserve(['key:a'], 0));
});

t.test('rpm: retryAfter waits for enough of the window, not just the oldest bucket', async (t) => {
  const { clock, q } = ledger();
  q.setLimits('s', { rpm: 3 });
  q.reserve(['s'], 0); // t=0
  clock.now = 10_000;
  q.reserve(['s'], 0); // t=10
  clock.now = 20_500;
  q.reserve(['s'], 0); // t=20.5
  clock.now = 25_000;
  // One slot is needed: the t=0 bucket frees it at 60 s.
  t.equal(rejected(t, () => q.reserve(['s'], 0)).retryAfter, 35);
  clock.now = 60_000;
  q.reserve(['s'], 0);
  // Now full with t=10, t=20, t=60: next fits when t=10 leaves at 70 s.
  t.equal(rejected(t, () => q.reserve(['s'], 0)).retryAfter, 10);
});

t.test('tpm: retryAfter from token buckets; a request over the limit can never fit', async (t) => {
  const { clock, q } = ledger(1_700_000_000_000);
  const t0 = clock.now;
  q.setLimits('d', { tpm: 1000 });
  // Requests that have finished: their usage is known (reconciled), nothing is in flight.
  q.reserve(['d'], 400).reconcile(400); // t0
  clock.now = t0 + 5_000;
  q.reserve(['d'], 400).reconcile(400); // t0+5
  clock.now = t0 + 20_000;
  // 800 used, 700 asked: 500 must leave, i.e. both buckets → t0+65 s, 45 s from now.
  let err = rejected(t, () => q.reserve(['d'], 700));
  t.equal(err.retryAfter, 45);
  t.match(err.message, /tpm/);
  // 300 asked: only 100 must leave → first bucket at t0+60 s.
  t.equal(rejected(t, () => q.reserve(['d'], 300)).retryAfter, 40);
  q.reserve(['d'], 200).reconcile(200); // exactly fits
  t.equal(q.usage('d').tpm, 1000);

  // Over the whole limit of a deployment: another deployment of its group may take it, so the
  // refusal stays retryable (the scheduler looks further).
  err = rejected(t, () => q.reserve(['d'], 1001));
  t.equal(err.retryAfter, 60);
  t.equal(err.details?.['retryable'], undefined);
  t.match(err.message, /never fit/);
  // Over the whole limit of a key: no wait helps, so no Retry-After, and the SDKs are told not to retry.
  q.setLimits('key:k', { tpm: 1000 });
  const key = rejected(t, () => q.reserve(['key:k'], 1001));
  t.equal(key.retryAfter, undefined);
  t.equal(key.details?.['retryable'], false);
  clock.now = t0 + 120_000;
  t.equal(rejected(t, () => q.reserve(['key:k'], 1001)).details?.['retryable'], false, 'even with an empty window');
  q.reserve(['d'], 1000);
});

t.test('tpm: output guesses of requests in flight may come back when they finish: a short Retry-After, and the message says so', async (t) => {
  const { clock, q } = ledger(1_700_000_000_000);
  q.setLimits('d', { tpm: 600 });
  const a = q.reserve(['d'], 205, 200); // a 5-token prompt, 200 output tokens guessed
  q.reserve(['d'], 205, 200).reconcile(85);
  clock.now += 2_000;
  // 290 used, 205 of them reserved by a request in flight (200 of which may come back); 410 asked: 100 must go.
  const err = rejected(t, () => q.reserve(['d'], 410));
  t.equal(err.retryAfter, 1, 'the request in flight may give back enough');
  t.match(err.message, /290 tokens in the last 60 s, 205 of them reserved by requests in flight \+ 410 requested/);
  a.reconcile(85);
  t.equal(q.reserve(['d'], 410).tokens, 410, 'once it has finished, the request fits');
  // Past what the requests in flight hold: the window's wait.
  const { clock: c2, q: q2 } = ledger(1_700_000_000_000);
  q2.setLimits('d', { tpm: 600 });
  q2.reserve(['d'], 500).reconcile(500);
  c2.now += 10_000;
  q2.reserve(['d'], 50);
  t.equal(rejected(t, () => q2.reserve(['d'], 200)).retryAfter, 50, 'the finished request must leave the window');
  // A request in flight whose reservation is mostly its prompt: that part is spent whatever
  // happens, so it cannot make room soon.
  const { clock: c3, q: q3 } = ledger(1_700_000_000_000);
  q3.setLimits('d', { tpm: 10_000 });
  q3.reserve(['d'], 8_256, 256);
  c3.now += 5_000;
  t.equal(rejected(t, () => q3.reserve(['d'], 3_000, 256)).retryAfter, 55, 'its 256 guessed tokens cannot cover 1,256: the window decides');
});

t.test('all-or-nothing across subjects', async (t) => {
  const { clock, q } = ledger();
  q.setLimits('key:abc', { tpm: 10_000 });
  q.setLimits('deployment:d1', { tpm: 1000 });
  q.reserve(['key:abc', 'deployment:d1'], 600).reconcile(600);
  clock.now = 10_000;
  const err = rejected(t, () => q.reserve(['key:abc', 'deployment:d1'], 600));
  t.match(err.message, /deployment:d1/);
  t.same(err.details, { subject: 'deployment:d1', limit: 'tpm' });
  t.equal(err.retryAfter, 50);
  t.equal(q.usage('key:abc').tpm, 600, 'the subject with room was not charged');
  t.equal(q.usage('key:abc').rpm, 1);
  t.equal(q.usage('deployment:d1').tpm, 600);

  // Several subjects over: the request fits only when all do, so the longest wait wins.
  const { clock: c3, q: q3 } = ledger();
  q3.setLimits('A', { rpm: 1 });
  q3.setLimits('B', { rpm: 1 });
  q3.reserve(['A'], 0);
  c3.now = 20_000;
  q3.reserve(['B'], 0);
  c3.now = 30_000;
  for (const order of [['A', 'B'], ['B', 'A']]) {
    const both = rejected(t, () => q3.reserve(order, 0));
    t.equal(both.retryAfter, 50, 'B frees at 80 s, A already at 60 s');
    t.equal(both.details?.['subject'], 'B');
  }

  // The same subject twice counts once.
  const { q: q2 } = ledger();
  q2.setLimits('x', { rpm: 1 });
  q2.reserve(['x', 'x'], 0);
  t.equal(q2.usage('x').rpm, 1);
});

t.test('subjects without limits are counted but never reject', async (t) => {
  const { q } = ledger();
  for (let i = 0; i < 100; i++) q.reserve(['ip:1', 'model:m'], 1000);
  t.same(q.usage('ip:1'), { rpm: 100, tpm: 100_000, limits: {}, reservedTokens: 100_000 });
  t.equal(q.limits('ip:1'), undefined);
  t.same(Object.keys(q.snapshot()).sort(), ['ip:1', 'model:m']);
  q.setLimits('ip:1', { rpm: 100 });
  rejected(t, () => q.reserve(['ip:1'], 0));
  q.setLimits('ip:1', {});
  t.equal(q.limits('ip:1'), undefined, 'empty limits remove them');
  q.reserve(['ip:1'], 0);
});

t.test('limit 0 suspends; invalid limits are refused', async (t) => {
  const { q } = ledger();
  q.setLimits('k', { rpm: 0 });
  const err = rejected(t, () => q.reserve(['k'], 0));
  t.equal(err.retryAfter, 60);
  t.throws(() => q.setLimits('k', { tpm: -1 }), { code: 'invalid_request' });
  t.throws(() => q.setLimits('k', { rpm: Number.NaN }), { code: 'invalid_request' });
  t.throws(() => q.reserve(['k'], Number.NaN), RangeError);
});

t.test('reconcile replaces the estimate in the bucket where it was reserved', async (t) => {
  const { clock, q } = ledger();
  q.setLimits('k', { tpm: 1000 });
  const r = q.reserve(['k', 'other'], 800);
  t.equal(q.usage('k').reservedTokens, 800);
  clock.now = 5_000;
  r.reconcile(100);
  t.equal(q.usage('k').tpm, 100);
  t.equal(q.usage('other').tpm, 100, 'every subject of the reservation');
  t.equal(q.usage('k').reservedTokens, 0);
  t.equal(q.usage('k').rpm, 1);
  q.reserve(['k'], 900); // fits only because the estimate was replaced
  t.equal(q.usage('k').tpm, 1000);
  clock.now = 60_000;
  // The reconciled 100 sat in the t=0 bucket (not t=5), so it has already left.
  t.equal(q.usage('k').tpm, 900);

  r.reconcile(5000);
  r.release();
  t.equal(q.usage('k').tpm, 900, 'only the first settle counts');
});

t.test('reconcile and release are idempotent, in the window and in reservedTokens', async (t) => {
  const { q } = ledger();
  const a = q.reserve(['k'], 500);
  q.reserve(['k'], 300); // still in flight
  a.reconcile(200);
  t.same(q.usage('k'), { rpm: 2, tpm: 500, limits: {}, reservedTokens: 300 });
  a.reconcile(200);
  a.reconcile(0);
  a.release();
  t.same(q.usage('k'), { rpm: 2, tpm: 500, limits: {}, reservedTokens: 300 });
  const b = q.reserve(['k'], 100);
  b.release();
  b.release();
  b.reconcile(50);
  t.same(q.usage('k'), { rpm: 3, tpm: 500, limits: {}, reservedTokens: 300 });
});

t.test('reconcile upwards narrows the window; it never goes negative', async (t) => {
  const { q } = ledger();
  q.setLimits('k', { tpm: 1000 });
  const r = q.reserve(['k'], 100);
  r.reconcile(950);
  t.equal(q.usage('k').tpm, 950);
  t.equal(rejected(t, () => q.reserve(['k'], 100)).retryAfter, 60);
  const r2 = q.reserve(['j'], 10);
  r2.reconcile(Number.NaN); // no usage reported: keep the estimate
  t.equal(q.usage('j').tpm, 10);
  t.equal(q.usage('j').reservedTokens, 0);
});

t.test('release gives tokens back but the request still counts for rpm; idempotent', async (t) => {
  const { q } = ledger();
  q.setLimits('k', { rpm: 2, tpm: 1000 });
  const r = q.reserve(['k'], 1000);
  r.release();
  t.same(q.usage('k'), { rpm: 1, tpm: 0, limits: { rpm: 2, tpm: 1000 }, reservedTokens: 0 });
  const r2 = q.reserve(['k'], 1000);
  r2.release();
  r2.release();
  r2.reconcile(1000);
  t.equal(q.usage('k').tpm, 0);
  t.equal(q.usage('k').rpm, 2);
  t.equal(rejected(t, () => q.reserve(['k'], 1)).details?.['limit'], 'rpm');
});

t.test('a reconcile after its bucket left the window does not touch the newer bucket in that slot', async (t) => {
  const { clock, q } = ledger();
  const r = q.reserve(['k'], 500);
  clock.now = 60_000; // same slot (0), next minute
  q.reserve(['k'], 300);
  r.reconcile(0);
  t.equal(q.usage('k').tpm, 300);
  t.equal(q.usage('k').reservedTokens, 300);
});

t.test('memory stays bounded: LRU subjects and prune', async (t) => {
  const clock = { now: 0 };
  const q = new QuotaLedger(() => clock.now, { maxSubjects: 3 });
  q.setLimits('limited', { rpm: 10 });
  for (const s of ['a', 'b', 'c', 'd']) q.reserve([s], 0);
  t.equal(q.size, 3);
  t.equal(q.usage('a').rpm, 0, 'least recently used was forgotten');
  t.equal(q.usage('d').rpm, 1);
  t.ok('limited' in q.snapshot(), 'limits are listed even without traffic');
  clock.now = 61_000;
  const live = q.reserve(['e'], 5);
  t.equal(q.prune(), 2, 'c and d are idle (b was evicted by e); e holds a reservation');
  t.equal(q.size, 1);
  live.release();
  clock.now = 200_000;
  t.equal(q.prune(), 1);
  t.equal(q.limits('limited')?.rpm, 10, 'limits survive pruning');
});

t.test('headroom: what the limits leave in the window, and when the window holds none of it', async (t) => {
  const { clock, q } = ledger(1_000);
  t.equal(q.headroom('key:none'), undefined, 'no limits: nothing to say');
  q.setLimits('key:a', { rpm: 3, tpm: 1000 });
  t.same(q.headroom('key:a'), { requests: { limit: 3, remaining: 3, resetMs: 0 }, tokens: { limit: 1000, remaining: 1000, resetMs: 0 } }, 'untouched: whole, nothing to reset');
  q.reserve(['key:a'], 400);
  clock.now = 11_500;
  const r = q.reserve(['key:a'], 250);
  t.same(q.headroom('key:a'), { requests: { limit: 3, remaining: 1, resetMs: 60_000 - 500 }, tokens: { limit: 1000, remaining: 350, resetMs: 60_000 - 500 } }, 'the newest second leaves last');
  r.reconcile(100);
  t.equal(q.headroom('key:a')!.tokens!.remaining, 500, 'reconciled to the real usage');
  clock.now = 61_000;
  t.same(q.headroom('key:a')!.requests, { limit: 3, remaining: 2, resetMs: 10_000 }, 'the first second left the window');
  clock.now = 200_000;
  t.same(q.headroom('key:a')!.tokens, { limit: 1000, remaining: 1000, resetMs: 0 });
  q.setLimits('key:b', { tpm: 10 });
  q.reserve(['key:b'], 0);
  t.same(q.headroom('key:b'), { tokens: { limit: 10, remaining: 10, resetMs: 0 } }, 'only the limited field; no tokens counted, nothing to reset');
  q.setLimits('key:c', { rpm: 1 });
  q.reserve(['key:c'], 0);
  t.throws(() => q.reserve(['key:c'], 0));
  t.equal(q.headroom('key:c')!.requests!.remaining, 0, 'never negative');
});
