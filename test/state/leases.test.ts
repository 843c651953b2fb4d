// Cluster quotas spent from leases (src/state/leases.ts), against a real redis-server:
// two replicas (each its own shared-memory ledger, Redis connection and lease keeper)
// never admit more than the limit per minute between them; with Redis gone each spends
// its share, limit ÷ replicas seen; with Redis back they lease from it again. Then two
// real brokers: an RPM quota of N over both holds at most N plus one lease per replica.
import t from 'tap';
import { QuotaLedger, leaseBlock, type Reservation } from '../../src/policy/quota.ts';
import { LeaseKeeper } from '../../src/state/leases.ts';
import { RedisStore } from '../../src/state/redis.ts';
import { createLogger } from '../../src/obs/logger.ts';
import { ADMIN_TOKEN, json, metricValue, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { startRedis } from '../helpers/redis.ts';

const redis = await startRedis(t);
const MINUTE = 60_000;
// The clock every replica reads: a second into a minute, moved by the test. (Each replica's
// own 60 s sliding window applies too: a minute later, the first test's requests have left it.)
let now = Math.floor(Date.now() / MINUTE) * MINUTE + 1000 * MINUTE + 1_000;
const clock = () => now;

interface Replica {
  ledger: QuotaLedger;
  keeper: LeaseKeeper;
  store: RedisStore;
}

/** `beat`: says it is alive (the heartbeats count replicas: the Redis-gone test expects two). */
async function replica(name: string, beat = true): Promise<Replica> {
  const store = new RedisStore({ url: redis.url, replica: name, logger: createLogger('silent') });
  await store.connect();
  const ledger = new QuotaLedger(clock);
  const keeper = new LeaseKeeper({ ledger, backend: store, now: clock });
  ledger.setCluster(true);
  if (beat) await keeper.heartbeat();
  t.teardown(() => store.close());
  return { ledger, keeper, store };
}

const a = await replica('a');
const b = await replica('b');
const RPM = 50;
for (const r of [a, b]) r.ledger.setLimits('key:x', { rpm: RPM, tpm: 10_000 });

/** A reservation, or undefined when the quota refuses it (any other error is thrown). */
function tryReserve(r: Replica, subject: string, tokens: number): Reservation | undefined {
  try {
    return r.ledger.reserve([subject], tokens);
  } catch (err) {
    if ((err as { code?: string }).code !== 'quota_exceeded') throw err;
    return undefined;
  }
}

/** Alternates requests over the replicas, each topping up its lease when it runs dry; counts admissions per replica. */
async function drive(reps: Replica[], attempts: number, tokens = 0, actual?: number): Promise<number[]> {
  const admitted = reps.map(() => 0);
  for (let i = 0; i < attempts; i++) {
    const k = i % reps.length;
    const res = tryReserve(reps[k]!, 'key:x', tokens);
    if (res !== undefined) {
      admitted[k]!++;
      res.reconcile(actual ?? tokens);
    }
    await reps[k]!.keeper.tick();
  }
  return admitted;
}

t.test('two replicas, one Redis: the RPM limit holds across both, exactly', async (t) => {
  const admitted = await drive([a, b], 4 * RPM);
  const total = admitted[0]! + admitted[1]!;
  // A replica may lend one request ahead of a lease, in the minute the cluster runs dry.
  t.ok(total >= RPM && total <= RPM + 2, `admitted ${admitted.join(' + ')} of ${4 * RPM}: the limit, plus at most one request per replica`);
  t.ok(admitted[0]! > 0 && admitted[1]! > 0, 'both replicas served');
  t.ok(total <= RPM + 2 * leaseBlock(RPM), 'within N plus one lease per replica');
});

t.test('a new minute brings a new budget, leased ahead by the active replicas', async (t) => {
  now += 57_000; // 58 s into the minute: the next one is leased ahead for the replicas still asked
  t.throws(() => a.ledger.reserve(['key:x'], 0), { code: 'quota_exceeded' });
  t.throws(() => b.ledger.reserve(['key:x'], 0), { code: 'quota_exceeded' });
  await a.keeper.tick();
  await b.keeper.tick();
  now += 3_000; // 1 s into the next minute
  const first = a.ledger.reserve(['key:x'], 0);
  t.ok(first, 'the first request of the minute finds budget, with no wait');
  first.release();
  const admitted = await drive([a, b], 4 * RPM);
  const total = 1 + admitted[0]! + admitted[1]!;
  t.ok(total >= RPM && total <= RPM + 2, `${total}: a new budget of ${RPM}`);
});

t.test('an idle replica takes no lease: a client on one replica of several gets the whole limit', async (t) => {
  now += MINUTE;
  const idle = [await replica('idle-1', false), await replica('idle-2', false), await replica('idle-3', false)];
  for (const r of [a, ...idle]) r.ledger.setLimits('key:small', { rpm: 3 });
  // Every replica looks at its leases (as every 50 ms); only A's client asks.
  for (const r of [a, ...idle]) await r.keeper.tick();
  let admitted = 0;
  for (let i = 0; i < 10; i++) {
    try {
      a.ledger.reserve(['key:small'], 0);
      admitted++;
    } catch (err) {
      if ((err as { code?: string }).code !== 'quota_exceeded') throw err;
    }
    for (const r of [a, ...idle]) await r.keeper.tick();
  }
  t.ok(admitted >= 3 && admitted <= 4, `A admitted ${admitted} of its 3 a minute (one may be lent ahead)`);
  for (const r of idle) t.equal(r.ledger.usage('key:small').rpm, 0, 'the idle replicas spent nothing');
});

t.test('TPM: a lease is spent by the estimate and gets back what the request did not use', async (t) => {
  now += MINUTE;
  const ledgerA = a.ledger;
  ledgerA.setLimits('key:x', { tpm: 1000 });
  b.ledger.setLimits('key:x', { tpm: 1000 });
  // Each request reserves 100 tokens and uses 40: about 25 fit in 1000, not 10.
  const admitted = await drive([a, b], 100, 100, 40);
  const total = admitted[0]! + admitted[1]!;
  t.ok(total > 10, `the unused part of each estimate went back to the lease (${total} admitted)`);
  t.ok(total * 40 <= 1000 + 2 * leaseBlock(1000), `${total * 40} tokens used, within the limit plus one lease per replica`);
  for (const r of [a, b]) r.ledger.setLimits('key:x', { rpm: RPM, tpm: 10_000 });
});

t.test('TPM over three replicas, estimates far above use: what comes back past a block returns to the cluster, for any replica', async (t) => {
  now += MINUTE;
  // A third replica that sends no heartbeat: the later tests count two.
  const c = await replica('c', false);
  const reps = [a, b, c];
  for (const r of reps) r.ledger.setLimits('key:big', { tpm: 1000 });
  // Each request reserves 266 (a prompt and no max_tokens) and uses 30, one replica after another.
  let admitted = 0;
  for (let i = 0; i < 200; i++) {
    const r = reps[i % 3]!;
    const res = tryReserve(r, 'key:big', 266);
    res?.reconcile(30);
    if (res !== undefined) admitted++;
    await r.keeper.tick();
  }
  t.ok(admitted * 30 >= 500, `${admitted} admitted, ${admitted * 30} of 1,000 tokens used: not stranded on the replicas that served them`);
  t.ok(admitted * 30 <= 1000, 'within the limit');

  // The lease looked at while each request runs (its estimate still reserved, the top-up
  // covering it): what comes back when it ends, past a block, goes back to Redis.
  now += MINUTE;
  admitted = 0;
  for (let i = 0; i < 200; i++) {
    const r = reps[i % 3]!;
    const res = tryReserve(r, 'key:big', 266);
    await r.keeper.tick();
    if (res !== undefined) {
      res.reconcile(30);
      admitted++;
    }
    await r.keeper.tick();
  }
  t.ok(admitted * 30 >= 500, `${admitted} admitted with the lease topped up mid-request, ${admitted * 30} tokens used`);
  t.ok(admitted * 30 <= 1000, 'within the limit');
});

t.test('Redis gone: each replica spends limit ÷ replicas seen; Redis back: leases from it again', async (t) => {
  await a.keeper.heartbeat();
  t.equal(a.keeper.replicasSeen, 2, 'the heartbeats saw two replicas');
  // Half the minute's RPM spent from Redis's leases before it goes away: what each replica
  // leased counts against its local share, so the minute stays near its limit.
  const MID = 40;
  for (const r of [a, b]) r.ledger.setLimits('key:mid', { rpm: MID });
  let spent = 0;
  const spend = async (attempts: number): Promise<void> => {
    for (let i = 0; i < attempts; i++) {
      const r = i % 2 === 0 ? a : b;
      const res = tryReserve(r, 'key:mid', 0);
      res?.reconcile(0);
      if (res !== undefined) spent++;
      await r.keeper.tick();
    }
  };
  await spend(MID / 2);
  t.equal(spent, MID / 2, 'half the limit, from Redis');
  await redis.kill();
  for (let i = 0; i < 100 && (a.store.up || b.store.up); i++) await new Promise((r) => setTimeout(r, 20));
  t.notOk(a.store.up, 'redis is down');
  await spend(4 * MID);
  t.ok(spent <= MID + 2, `${spent} in the minute Redis went away: its limit (${MID}, plus one lent per replica), not its limit and every share again`);
  now += MINUTE;
  const admitted = await drive([a, b], 4 * RPM);
  t.same(admitted, [RPM / 2, RPM / 2], 'each its share of the limit');
  // A small limit, two requests between ticks: once a replica's lease came, a request short
  // of it waits for the next top-up instead of being lent one (RPM 4 gave 3 + 3).
  for (const r of [a, b]) r.ledger.setLimits('key:small', { rpm: 4 });
  const attempt = (r: Replica): number => (tryReserve(r, 'key:small', 0) === undefined ? 0 : 1);
  const small = [0, 0];
  for (const [k, r] of [a, b].entries()) {
    small[k]! += attempt(r); // no lease yet: lent
    await r.keeper.tick(); // the lease covers the debt, and one more
    small[k]! += attempt(r) + attempt(r);
    await r.keeper.tick();
    small[k]! += attempt(r);
  }
  t.same(small, [2, 2], 'RPM 4 over two replicas on their local shares: 2 each, not one more lent');
  await redis.restart();
  for (let i = 0; i < 250 && !(a.store.up && b.store.up); i++) await new Promise((r) => setTimeout(r, 20));
  t.ok(a.store.up && b.store.up, 'both reconnected, no restart');
  now += MINUTE;
  const again = await drive([a, b], 4 * RPM);
  const total = again[0]! + again[1]!;
  t.ok(total >= RPM && total <= RPM + 2, `${total}: the cluster limit again, from Redis`);
});

t.test("an operator's new limit mid-minute: raised, served at once (not refused to the minute's end); lowered, held across the replicas", async (t) => {
  now += MINUTE;
  /** Admitted, or the refusal's Retry-After. */
  const ask = (r: Replica, subject: string): 'ok' | number => {
    try {
      r.ledger.reserve([subject], 0).reconcile(0);
      return 'ok';
    } catch (err) {
      if ((err as { code?: string }).code !== 'quota_exceeded') throw err;
      return (err as { retryAfter: number }).retryAfter;
    }
  };
  for (const r of [a, b]) r.ledger.setLimits('key:raise', { rpm: 3 });
  const before: Array<'ok' | number> = [];
  for (let i = 0; i < 6; i++) {
    before.push(ask(a, 'key:raise'));
    await a.keeper.tick();
  }
  t.equal(before.filter((x) => x === 'ok').length, 3, `rpm 3 spent: ${before.join(' ')}`);
  t.ok((before.at(-1) as number) > 10, 'then refused to the end of the minute (the cluster is dry)');
  for (const r of [a, b]) r.ledger.setLimits('key:raise', { rpm: 100 });
  const first = ask(a, 'key:raise');
  t.ok(first === 'ok' || first === 1, `the replica that was dry waits for a top-up at most (got ${first}), not the minute's end`);
  await a.keeper.tick();
  t.equal(ask(a, 'key:raise'), 'ok', 'and is served from the new limit');
  // Lowered: each replica had leased under rpm 100; the new rpm 5 holds over both.
  now += MINUTE;
  /** Requests alternating over A and B, each replica's keeper ticking after its own; how many were admitted. */
  const alternate = async (subject: string, n: number, between: () => void = () => undefined): Promise<number> => {
    let ok = 0;
    for (let i = 0; i < n; i++) {
      const r = i % 2 === 0 ? a : b;
      if (ask(r, subject) === 'ok') ok++;
      between();
      await r.keeper.tick();
    }
    return ok;
  };
  for (const r of [a, b]) r.ledger.setLimits('key:lower', { rpm: 100 });
  let admitted = await alternate('key:lower', 4);
  t.equal(admitted, 4, 'two each under the old limit');
  for (const r of [a, b]) r.ledger.setLimits('key:lower', { rpm: 5 });
  admitted += await alternate('key:lower', 20);
  t.ok(admitted <= 5 + 2, `${admitted} admitted in the minute for the new rpm 5 (plus at most one lent per replica), not each replica's old lease`);
  // Unchanged limits set again (every key change re-sets them all) move nothing.
  now += MINUTE;
  for (const r of [a, b]) r.ledger.setLimits('key:same', { rpm: 6 });
  const same = await alternate('key:same', 12, () => {
    for (const x of [a, b]) x.ledger.setLimits('key:same', { rpm: 6 });
  });
  t.ok(same >= 6 && same <= 8, `${same} admitted for rpm 6 with its limits set again between every request`);
});

t.test('two brokers, one Redis: an RPM quota of N over both admits at most N plus one lease per replica', async (t) => {
  // Not across a minute boundary: a new minute is a new budget.
  while (Date.now() % MINUTE > 45_000) await new Promise((r) => setTimeout(r, 250));
  const up = await startMock(t, { tokens: 2 });
  const N = 20;
  const fleet = { modelGroups: { g: { deployments: [{ id: 'q1', provider: 'openai', url: up.url, model: 'm', rpm: N }] } } };
  const env = { INFER_ENABLED: 'false', REDIS_URL: redis.url, BROKER_FF_QUOTA_ENFORCEMENT: 'true' };
  const brokers: TestBroker[] = [await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'broker-a' }), await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'broker-b' })];
  const statuses: number[][] = [[], []];
  for (let i = 0; i < 3 * N; i++) {
    const k = i % 2;
    const res = await fetch(`${brokers[k]!.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) });
    const body = await json(res);
    statuses[k]!.push(res.status);
    if (res.status === 429) t.equal(body.error.code, 'quota_exceeded');
    // Give the control plane a moment to top the lease up, as real traffic spreads over time.
    await new Promise((r) => setTimeout(r, 10));
  }
  const ok = statuses.flat().filter((s) => s === 200).length;
  t.ok(ok <= N + 2 * leaseBlock(N), `${ok} admitted over both brokers, limit ${N}`);
  t.ok(ok >= N - 2 * leaseBlock(N), `${ok}: the budget was used, not lost`);
  t.ok(statuses.every((s) => s.includes(429)), 'both brokers refused past the limit');
  const m = await (await fetch(`${brokers[0]!.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).text();
  t.match(m, /quota_leases_total\{source="redis"\} [1-9]/);
});

t.test("a burst on a key's fresh lease waits for the top-up: served, not 429 (a key with budget left)", async (t) => {
  while (Date.now() % MINUTE > 50_000) await new Promise((r) => setTimeout(r, 250));
  const up = await startMock(t, { tokens: 2 });
  // Each request reserves about 300 tokens of 2,000: three fit. The lease is 200 at a time,
  // the first request is lent its 300, and the next two find the lease in debt until the
  // control plane's tick (every 50 ms) has topped it up.
  const fleet = { apiKeys: { 'sk-burst': { tpm: 2000 } }, modelGroups: { g: { deployments: [{ id: 'b1', provider: 'openai', url: up.url, model: 'm' }] } } };
  const broker = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', REDIS_URL: redis.url, BROKER_FF_QUOTA_ENFORCEMENT: 'true', REPLICA_ID: 'burst' });
  const ask = () =>
    fetch(`${broker.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-burst' },
      body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }], max_tokens: 290 }),
    });
  const replies = await Promise.all([ask(), ask(), ask()]);
  const bodies = await Promise.all(replies.map((r) => r.text()));
  t.same(replies.map((r) => r.status), [200, 200, 200], `all served: ${bodies.filter((b) => b.includes('error')).join(' ')}`);
  t.equal(await metricValue(broker.url, 'broker_quota_rejections_total', { subject: 'api_key' }), 0, 'no refusal counted');
});

t.test("a burst on a deployment's fresh lease waits for the top-up too: served, not 429", async (t) => {
  while (Date.now() % MINUTE > 50_000) await new Promise((r) => setTimeout(r, 250));
  const up = await startMock(t, { tokens: 2 });
  // An RPM of 7 leases one request at a time: the second and third of a burst find the lease
  // spent until the control plane's tick (every 50 ms) has topped it up.
  const fleet = { modelGroups: { g: { deployments: [{ id: 'd-burst', provider: 'openai', url: up.url, model: 'm', rpm: 7 }] } } };
  const broker = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', REDIS_URL: redis.url, BROKER_FF_QUOTA_ENFORCEMENT: 'true', REPLICA_ID: 'dep-burst' });
  const ask = () => fetch(`${broker.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) });
  const replies = await Promise.all([ask(), ask(), ask()]);
  const bodies = await Promise.all(replies.map((r) => r.text()));
  t.same(replies.map((r) => r.status), [200, 200, 200], `all served: ${bodies.filter((b) => b.includes('error')).join(' ')}`);
});

t.test('two brokers, one Redis: a client rate limit is divided among the replicas seen', async (t) => {
  const up = await startMock(t, { tokens: 2 });
  const fleet = { modelGroups: { g: { deployments: [{ id: 'r1', provider: 'openai', url: up.url, model: 'm' }] } } };
  const env = { INFER_ENABLED: 'false', REDIS_URL: redis.url, RATE_LIMIT_RPS: '1', RATE_LIMIT_BURST: '6' };
  const brokers: TestBroker[] = [await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'rate-a' }), await startFleetBroker(t, fleet, { ...env, REPLICA_ID: 'rate-b' })];
  // Heartbeats go every 5 s: wait until both have seen both (the other tests' replicas are gone by now).
  for (let i = 0; i < 150; i++) {
    const seen = await Promise.all(brokers.map(async (b) => metricValue(b.url, 'state_replicas_seen')));
    if (seen.every((n) => n === 2)) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const statuses: number[] = [];
  for (let i = 0; i < 12; i++) {
    const res = await fetch(`${brokers[i % 2]!.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) });
    await res.arrayBuffer();
    statuses.push(res.status);
  }
  const ok = statuses.filter((s) => s === 200).length;
  // Burst 6 over two replicas: 3 each; a second of refill at 1/s over both adds at most 1.
  t.ok(ok >= 6 && ok <= 7, `${ok} of 12 admitted over both (burst 6), not 12`);
  t.ok(statuses.includes(429));
});
