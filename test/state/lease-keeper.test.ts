// The lease keeper's accounting against a backend that keeps Redis's counters in a map
// (the Lua scripts' arithmetic; test/state/leases.test.ts runs the real Redis): what a
// replica gives back is only ever what Redis leased it, and its local share (Redis away)
// counts every Redis lease of the minute, however Redis came and went.
import t from 'tap';
import { QuotaLedger } from '../../src/policy/quota.ts';
import { LeaseKeeper, type LeaseAmounts, type LeaseBackend } from '../../src/state/leases.ts';

const MINUTE = 60_000;

function fakeRedis(replicas: number) {
  const counters = new Map<string, number>();
  let fail = false;
  const backend: LeaseBackend & { up: boolean } = {
    up: true,
    async takeLease(s: string, w: number, want: LeaseAmounts, limit: LeaseAmounts) {
      if (fail || !backend.up) throw new Error('Connection is closed.');
      const take = (k: string, n: number, max: number): number => {
        const used = counters.get(k) ?? 0;
        const g = Math.max(0, Math.min(n, max - used));
        counters.set(k, used + g);
        return g;
      };
      return { requests: take(`${s}:${w}:r`, want.requests, limit.requests), tokens: take(`${s}:${w}:t`, want.tokens, limit.tokens) };
    },
    async returnLease(s: string, w: number, a: LeaseAmounts) {
      if (!backend.up) throw new Error('Connection is closed.');
      for (const [kind, n] of [['r', a.requests], ['t', a.tokens]] as const) counters.set(`${s}:${w}:${kind}`, Math.max(0, (counters.get(`${s}:${w}:${kind}`) ?? 0) - n));
    },
    async heartbeat() {
      return replicas;
    },
  };
  return { backend, counters, failing: (f: boolean) => (fail = f) };
}

t.test('tokens granted from the local share (Redis away) are never given back to Redis as if it had leased them', async (t) => {
  let now = 1000 * MINUTE + 1_000;
  const redis = fakeRedis(3);
  const ledger = new QuotaLedger(() => now);
  ledger.setCluster(true);
  ledger.setLimits('key:a', { tpm: 1000 });
  const keeper = new LeaseKeeper({ ledger, backend: redis.backend, now: () => now });
  await keeper.heartbeat();
  const minute = Math.floor(now / MINUTE);
  redis.counters.set(`key:a:${minute}:t`, 900); // the other replicas' leases
  redis.backend.up = false;
  // Redis away: requests reserve 300 and use 10, from the local share.
  for (let i = 0; i < 10; i++) {
    now += 100;
    try {
      const r = ledger.reserve(['key:a'], 300);
      await keeper.tick();
      r.reconcile(10);
    } catch {
      await keeper.tick();
    }
  }
  t.ok(ledger.leaseState('key:a')!.tokensLeft > 200, 'unused estimates piled up in the lease');
  redis.backend.up = true;
  now += 100;
  await keeper.tick();
  t.equal(redis.counters.get(`key:a:${minute}:t`), 900, "Redis's count of the minute is untouched: the other replicas' 900 are not freed again");
});

t.test('the local share counts every Redis lease of the minute, even after Redis came and went within it', async (t) => {
  let now = 1000 * MINUTE + 1_000;
  const redis = fakeRedis(3);
  const ledger = new QuotaLedger(() => now);
  ledger.setCluster(true);
  ledger.setLimits('key:a', { rpm: 60 }); // a block of 6; a local share of 20
  const keeper = new LeaseKeeper({ ledger, backend: redis.backend, now: () => now });
  await keeper.heartbeat();
  let admitted = 0;
  const run = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      now += 50;
      try {
        ledger.reserve(['key:a'], 0).reconcile(0);
        admitted++;
      } catch {
        // refused
      }
      await keeper.tick();
    }
  };
  redis.failing(true);
  await run(3); // one failed lease: the local share starts counting this minute
  redis.failing(false);
  await run(30); // Redis back: leases from it
  const fromRedis = redis.counters.get(`key:a:${Math.floor(now / MINUTE)}:r`)!;
  redis.failing(true);
  redis.backend.up = false;
  await run(200); // away for the rest of the minute
  t.ok(fromRedis >= 20, `Redis leased ${fromRedis}, past the local share of 20`);
  t.ok(admitted <= fromRedis + 8, `${admitted} admitted in the minute: Redis's ${fromRedis} and the first failure's one block (and one lent), not the whole share again`);
});

t.test('a lease Redis could not fill is asked again within its minute: budget the other replicas gave back is spent, not left to the next minute', async (t) => {
  let now = 2000 * MINUTE + 1_000;
  const redis = fakeRedis(2);
  const ledger = new QuotaLedger(() => now);
  ledger.setCluster(true);
  ledger.setLimits('key:a', { tpm: 400 });
  const keeper = new LeaseKeeper({ ledger, backend: redis.backend, now: () => now });
  await keeper.heartbeat();
  const minute = Math.floor(now / MINUTE);
  redis.counters.set(`key:a:${minute}:t`, 390); // the other replica holds nearly all of it
  // The first request is lent its tokens; the top-up (block and debt) finds 10 left: dry.
  ledger.reserve(['key:a'], 100).reconcile(100);
  await keeper.tick();
  t.equal(ledger.leaseState('key:a')!.dryWindow, minute, 'dry');
  t.throws(() => ledger.reserve(['key:a'], 50), { code: 'quota_exceeded' }, 'nothing left here');
  // The other replica gives back its unused estimates.
  redis.counters.set(`key:a:${minute}:t`, 150);
  now += 200;
  await keeper.tick();
  t.throws(() => ledger.reserve(['key:a'], 50), { code: 'quota_exceeded' }, 'not asked again at once');
  now += 1_000;
  await keeper.tick();
  t.not(ledger.leaseState('key:a')!.dryWindow, minute, 'asked again, filled: no longer dry');
  t.ok(ledger.reserve(['key:a'], 30), 'served from the budget given back');
  t.ok((redis.counters.get(`key:a:${minute}:t`) ?? 0) <= 400, 'the cluster never leased past the limit');
});

t.test('Redis back from an outage: the heartbeat goes at the next tick, not at the next heartbeat period', async (t) => {
  const redis = fakeRedis(2);
  let beats = 0;
  const heartbeat = redis.backend.heartbeat;
  redis.backend.heartbeat = async () => (beats++, heartbeat());
  const ledger = new QuotaLedger(() => 1000 * MINUTE);
  const keeper = new LeaseKeeper({ ledger, backend: redis.backend, now: () => 1000 * MINUTE, active: () => false });
  await keeper.tick();
  t.equal(beats, 0, 'up all along: no extra heartbeat');
  redis.backend.up = false;
  await keeper.tick();
  t.equal(beats, 0, 'away: none');
  redis.backend.up = true;
  await keeper.tick();
  t.equal(beats, 1, 'back: one at once (a restarted Redis has lost every heartbeat)');
  await keeper.tick();
  t.equal(beats, 1, 'and only one');
  await new Promise((r) => setImmediate(r));
  t.equal(keeper.replicasSeen, 2, 'its answer counted');
});
