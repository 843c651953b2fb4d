// Scheduler unit tests: real counters, queue and policies, a fake clock and a seeded
// random source. Every test ends with finish(): each lease released twice (release is
// idempotent, so the second call must change nothing) and every counter back at 0.
import t, { type Test } from 'tap';
import { Scheduler, type Admission, type Lease } from '../../../src/sched/scheduler.ts';
import { CapacityCounters } from '../../../src/sched/capacity.ts';
import { WaitQueue } from '../../../src/sched/queue.ts';
import { DEFAULT_PERFORMANCE, PerformanceTracker, type PerformanceThresholds } from '../../../src/policy/performance.ts';
import { StickyPins } from '../../../src/policy/sticky.ts';
import { QuotaLedger } from '../../../src/policy/quota.ts';
import type { QosTier } from '../../../src/policy/qos.ts';
import { FLAGS, type FlagName, type FlagSet } from '../../../src/config/flags.ts';
import { DEFAULT_ROUTER, DEFAULT_SCHEDULER, DEFAULT_TIMEOUTS, type DeploymentConfig, type ModelGroupConfig, type RouterConfig, type SchedulerConfig } from '../../../src/config/broker-config.ts';
import type { BrokerError } from '../../../src/errors.ts';
import { fakeClock, seeded, settled, ticks } from './helpers.ts';
import { BANNED, BREAKER_OPEN, COLD, DRAINING, HALF_OPEN, MAINTENANCE, UNHEALTHY, describeBits } from '../../../src/fleet/route-bits.ts';

const flagSet = (o: Partial<Record<FlagName, boolean>> = {}): FlagSet => Object.freeze({ ...FLAGS, ...o });
/** Least-loaded choice (no performance routing) unless a test says otherwise. */
const PLAIN = { performance_routing: false } as const;

function dep(id: string, o: Partial<DeploymentConfig> = {}): DeploymentConfig {
  return { ...DEFAULT_TIMEOUTS, id, server: id, provider: 'openai', url: `http://127.0.0.1:1/${id}`, model: 'm', concurrencyLimit: 10, weight: 1, apiKeyEnv: undefined, apiKey: undefined, rpm: undefined, tpm: undefined, ...o };
}

const group = (name: string, deployments: DeploymentConfig[]): ModelGroupConfig => ({ name, deployments });

const tier = (name: string, capacityShare: number, o: Partial<QosTier> = {}): QosTier => ({ name, maxQueueWaitMs: 60_000, maxOutputTokens: null, allowedGroups: ['*'], capacityShare, priority: 5, ...o });

class CountingCapacity extends CapacityCounters {
  reads = 0;
  override inFlight(slot: number): number {
    this.reads++;
    return super.inFlight(slot);
  }
}

interface Options {
  flags?: Partial<Record<FlagName, boolean>>;
  router?: Partial<RouterConfig>;
  scheduler?: Partial<SchedulerConfig>;
  performance?: Partial<PerformanceThresholds>;
  seed?: number;
  stickyTtlMs?: number;
  capacity?: CapacityCounters;
}

function harness(groups: ModelGroupConfig[], o: Options = {}) {
  const clock = fakeClock();
  const scheduler: SchedulerConfig = { ...DEFAULT_SCHEDULER, ...o.scheduler };
  const capacity = o.capacity ?? new CapacityCounters(2048);
  const queue = new WaitQueue(scheduler.maxQueue, scheduler.agingMs, clock.read);
  const performance = new PerformanceTracker({ ...DEFAULT_PERFORMANCE, ...o.performance }, clock.read);
  const sticky = new StickyPins(o.stickyTtlMs ?? 60_000, 1_000, clock.read);
  const quota = new QuotaLedger(clock.read);
  const lookups: boolean[] = [];
  const s = new Scheduler(
    { router: { ...DEFAULT_ROUTER, ...o.router }, scheduler, capacity, queue, performance, sticky, quota, now: clock.read, random: seeded(o.seed ?? 1), onStickyLookup: (hit) => lookups.push(hit) },
    flagSet(o.flags),
  );
  s.register(groups);
  const leases: Lease[] = [];
  const admission = (g: ModelGroupConfig, a: Partial<Admission> = {}): Admission => ({
    group: g,
    tried: new Set(),
    priority: 5,
    tier: null,
    stickyKey: undefined,
    tokens: 10,
    since: clock.now,
    signal: new AbortController().signal,
    ...a,
  });
  const acquire = async (g: ModelGroupConfig, a: Partial<Admission> = {}): Promise<Lease> => {
    const l = await s.acquire(admission(g, a));
    leases.push(l);
    return l;
  };
  /** Acquires and releases at once, n times: which deployments were chosen. */
  const sequential = async (g: ModelGroupConfig, n: number, a: Partial<Admission> = {}): Promise<string[]> => {
    const ids: string[] = [];
    for (let i = 0; i < n; i++) {
      const l = await acquire(g, a);
      ids.push(l.dep.config.id);
      l.release();
    }
    return ids;
  };
  const inFlight = (id: string): number => capacity.inFlight(s.get(id)!.slot);
  const finish = async (t: Test): Promise<void> => {
    // Released leases wake waiters, which may take new leases: repeat until none are left.
    const errors: unknown[] = [];
    for (let done = 0; done < leases.length; ) {
      for (; done < leases.length; done++) {
        const l = leases[done]!;
        l.release();
        try {
          l.release();
        } catch (err) {
          errors.push(err);
        }
      }
      await ticks();
    }
    t.same(errors, [], `a second release of each of ${leases.length} leases is a no-op`);
    t.equal(capacity.totals().totalInFlight, 0, 'every counter back at 0 once all leases are released');
    t.ok(
      s.all().every((d) => capacity.inFlight(d.slot) === 0),
      'each deployment at 0',
    );
    t.equal(queue.size, 0, 'nobody left in the queue');
  };
  return { clock, capacity, queue, performance, sticky, quota, s, lookups, admission, acquire, sequential, inFlight, finish };
}

const count = (ids: string[]): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const id of ids) out[id] = (out[id] ?? 0) + 1;
  return out;
};

async function rejection(p: Promise<unknown>): Promise<BrokerError> {
  try {
    await p;
  } catch (e) {
    return e as BrokerError;
  }
  throw new Error('expected a rejection');
}

/** Makes `id` degraded by three failures, its last request at the clock's now (so it is avoided). */
function degrade(h: ReturnType<typeof harness>, id: string): void {
  h.performance.started(id);
  for (let i = 0; i < 3; i++) h.performance.failed(id);
}

for (const perf of [false, true]) {
  t.test(`least-loaded by weight: weights 1 and 3 share concurrent leases 1:3 (performance routing ${perf ? 'on' : 'off'})`, async (t) => {
    const g = group('g', [dep('light', { weight: 1, concurrencyLimit: 100 }), dep('heavy', { weight: 3, concurrencyLimit: 100 })]);
    const h = harness([g], { flags: { performance_routing: perf } });
    const held = await Promise.all(Array.from({ length: 40 }, () => h.acquire(g)));
    const c = count(held.map((l) => l.dep.config.id));
    t.ok(c.light! >= 9 && c.light! <= 11, `light got ${c.light} of 40`);
    t.ok(c.heavy! >= 29 && c.heavy! <= 31, `heavy got ${c.heavy} of 40`);
    t.equal(h.inFlight('light'), c.light);
    t.equal(h.inFlight('heavy'), c.heavy);
    await h.finish(t);
  });
}

t.test('random tie-break spreads sequential requests over equal deployments', async (t) => {
  const g = group('g', ['a', 'b', 'c', 'd'].map((id) => dep(id)));
  const h = harness([g], { flags: PLAIN, seed: 3 });
  const c = count(await h.sequential(g, 400));
  t.same(Object.keys(c).sort(), ['a', 'b', 'c', 'd']);
  for (const id of ['a', 'b', 'c', 'd']) t.ok(c[id]! >= 60 && c[id]! <= 140, `${id} got ${c[id]} of 400`);
  await h.finish(t);
});

t.test('capacity gating: at the limit acquire waits; a release wakes it', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 2 })]);
  const h = harness([g], { flags: PLAIN });
  const first = await h.acquire(g);
  await h.acquire(g);
  const third = h.acquire(g);
  t.notOk(await settled(third), 'the third waits');
  t.equal(h.queue.size, 1);
  t.equal(h.inFlight('a'), 2, 'never past the limit');
  first.release();
  const l = await third;
  t.equal(l.dep.config.id, 'a');
  t.equal(h.inFlight('a'), 2);
  t.equal(h.queue.size, 0);
  t.equal(h.capacity.stats('a')!.acquired, 3);
  await h.finish(t);
});

t.test('a second release neither frees a slot nor wakes another waiter', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 1 })]);
  const h = harness([g], { flags: PLAIN });
  const held = await h.acquire(g);
  const w1 = h.acquire(g);
  const w2 = h.acquire(g);
  await ticks();
  t.equal(h.queue.size, 2);
  held.release();
  held.release();
  held.release();
  t.ok(await settled(w1), 'one waiter got the freed slot');
  t.notOk(await settled(w2), 'the other still waits: the extra releases gave nothing');
  t.equal(h.queue.size, 1);
  t.equal(h.inFlight('a'), 1);
  (await w1).release();
  await w2;
  await h.finish(t);
});

t.test('queueWhenFull false: a full group is rejected at once with capacity_exhausted', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 1 }), dep('b', { concurrencyLimit: 1 })]);
  const h = harness([g], { flags: PLAIN, scheduler: { queueWhenFull: false } });
  await h.acquire(g);
  await h.acquire(g);
  const e = await rejection(h.acquire(g));
  t.equal(e.code, 'capacity_exhausted');
  t.equal(e.retryAfter, 1);
  t.match(e.message, /every deployment of g is at capacity/);
  t.equal(h.queue.size, 0, 'not queued');
  await h.finish(t);
});

t.test('nothing waits forever: the scheduler deadline, or a shorter tier deadline (small real waits)', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 1 })]);
  const h = harness([g], { flags: PLAIN, scheduler: { maxWaitMs: 20 } });
  await h.acquire(g);
  const e = await rejection(h.acquire(g));
  t.equal(e.code, 'queue_timeout');
  t.equal(h.queue.stats().timedOut, 1);

  const h2 = harness([g], { flags: PLAIN, scheduler: { maxWaitMs: 600_000 } });
  await h2.acquire(g);
  const e2 = await rejection(h2.acquire(g, { tier: tier('fast', 1, { maxQueueWaitMs: 20 }) }));
  t.equal(e2.code, 'queue_timeout', "the tier's wait, not the scheduler's 10 minutes");
  // The deadline counts from when the request arrived, not from when it queued.
  const e3 = await rejection(h2.acquire(g, { since: h2.clock.now - 700_000 }));
  t.equal(e3.code, 'queue_timeout');
  await h.finish(t);
  await h2.finish(t);
});

t.test('tryAcquire: a lease now, undefined when full (nothing queued), throws when none is eligible', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 1 })]);
  const h = harness([g], { flags: PLAIN });
  const l = h.s.tryAcquire(h.admission(g));
  t.equal(l?.dep.config.id, 'a');
  t.equal(h.s.tryAcquire(h.admission(g)), undefined, 'full');
  t.equal(h.queue.size, 0);
  t.equal(h.inFlight('a'), 1);
  t.throws(() => h.s.tryAcquire(h.admission(g, { tried: new Set(['a']) })), { code: 'upstream_unavailable' });
  l!.release();
  l!.release();
  t.equal(h.inFlight('a'), 0);
  await h.finish(t);
});

t.test('gating off: no limit, but the counters still count', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 1 })]);
  const h = harness([g], { flags: { ...PLAIN, capacity_gating: false }, scheduler: { queueWhenFull: false } });
  for (let i = 0; i < 5; i++) await h.acquire(g);
  t.equal(h.inFlight('a'), 5, 'five in flight on a limit of 1');
  t.equal(h.capacity.stats('a')!.acquired, 5);
  t.equal(h.capacity.stats('a')!.rejected, 0);
  t.equal(h.queue.size, 0);
  await h.finish(t);
});

t.test('deployments already tried are never chosen again', async (t) => {
  const g = group('g', ['a', 'b', 'c'].map((id) => dep(id)));
  const h = harness([g], { flags: PLAIN });
  const c = count(await h.sequential(g, 30, { tried: new Set(['a', 'b']) }));
  t.same(c, { c: 30 });
  const e = await rejection(h.acquire(g, { tried: new Set(['a', 'b', 'c']) }));
  t.equal(e.code, 'upstream_unavailable');
  t.match(e.message, /no deployment of g is available/);
  await h.finish(t);
});

t.test('draining deployments take no new requests; undraining brings them back', async (t) => {
  const g = group('g', ['a', 'b', 'c'].map((id) => dep(id)));
  const h = harness([g], { flags: PLAIN });
  t.ok(h.s.setDraining('a', true));
  t.notOk(h.s.setDraining('nope', true), 'unknown id');
  t.same(Object.keys(count(await h.sequential(g, 30))).sort(), ['b', 'c']);
  h.s.setDraining('b', true);
  h.s.setDraining('c', true);
  t.equal((await rejection(h.acquire(g))).code, 'upstream_unavailable', 'all draining: none available, not queued');
  t.equal(h.queue.size, 0);
  h.s.setDraining('a', false);
  t.same(count(await h.sequential(g, 5)), { a: 5 });
  await h.finish(t);
});

t.test('route bits: a blocked deployment is never chosen, half-open lets its trial permits through, warm-first prefers loaded', async (t) => {
  const g = group('g', [dep('a'), dep('b')]);
  const h = harness([g], { flags: PLAIN });
  const a = h.s.get('a')!;
  for (const bit of [UNHEALTHY, BANNED, BREAKER_OPEN, DRAINING, MAINTENANCE]) {
    h.capacity.setRouteWord(a.slot, bit);
    t.same(count(await h.sequential(g, 20)), { b: 20 }, `${describeBits(bit)}: skipped`);
  }
  h.capacity.setRouteWord(h.s.get('b')!.slot, DRAINING);
  const none = await rejection(h.acquire(g));
  t.equal(none.code, 'upstream_unavailable', 'nothing routable: 503 at once, not queued');
  t.match(none.message, /a \(maintenance\), b \(draining\)/, 'the message says why');
  h.capacity.setRouteWord(h.s.get('b')!.slot, 0);

  // Half-open with 2 permits: exactly two requests reach a while b is full.
  h.capacity.setRouteWord(a.slot, HALF_OPEN);
  h.capacity.setTrials(a.slot, 2);
  const held = [];
  for (let i = 0; i < 10; i++) held.push(await h.acquire(g));
  t.equal(held.filter((l) => l.dep.config.id === 'a').length, 2, 'two trials, no more');
  t.equal(h.capacity.trials(a.slot), 0);
  for (const l of held) l.release();

  // Warm-first: b is cold, so a (warm) takes every request while it has room.
  h.capacity.setRouteWord(a.slot, 0);
  h.capacity.setRouteWord(h.s.get('b')!.slot, COLD);
  t.same(count(await h.sequential(g, 20)), { a: 20 }, 'the warm one first');
  h.s.setFlags({ ...FLAGS, ...PLAIN, warm_first_routing: false });
  t.ok((count(await h.sequential(g, 40)).b ?? 0) > 0, 'flag off: the cold one gets its share');
  await h.finish(t);
});

t.test('a half-open breaker whose trials are out holds the next requests for its outcome: served when it closes, refused when it reopens', async (t) => {
  const g = group('g', [dep('a')]);
  const h = harness([g], { flags: PLAIN });
  const a = h.s.get('a')!;
  h.capacity.setRouteWord(a.slot, HALF_OPEN);
  h.capacity.setTrials(a.slot, 1);
  const trial = await h.acquire(g);
  let settled = false;
  const next = h.acquire(g).finally(() => (settled = true));
  await new Promise((r) => setTimeout(r, 20));
  t.notOk(settled, 'not refused while the trial runs: it waits');
  // The trial succeeded: the breaker closes (the fleet manager clears the bit and wakes the queue).
  trial.release();
  h.capacity.setRouteWord(a.slot, 0);
  h.s.wakeAll();
  const served = await next;
  t.equal(served.dep.config.id, 'a', 'served once the breaker closed');
  served.release();

  h.capacity.setRouteWord(a.slot, HALF_OPEN);
  h.capacity.setTrials(a.slot, 1);
  const trial2 = await h.acquire(g);
  const refused = rejection(h.acquire(g));
  await new Promise((r) => setTimeout(r, 20));
  // The trial failed: the breaker opens again.
  h.capacity.setRouteWord(a.slot, BREAKER_OPEN);
  trial2.release();
  h.s.wakeAll();
  t.equal((await refused).code, 'upstream_unavailable', 'refused once the breaker reopened, not left to its queue timeout');

  // More waiters than the deployment has slots: every one learns of the reopen, not only as many as there are free slots.
  const g3 = group('g3', [dep('c', { concurrencyLimit: 3 })]);
  const h3 = harness([g3], { flags: PLAIN });
  const c = h3.s.get('c')!;
  h3.capacity.setRouteWord(c.slot, HALF_OPEN);
  h3.capacity.setTrials(c.slot, 1);
  const trial3 = await h3.acquire(g3);
  const held = Array.from({ length: 8 }, () => rejection(h3.acquire(g3)));
  await new Promise((r) => setTimeout(r, 20));
  h3.capacity.setRouteWord(c.slot, BREAKER_OPEN);
  trial3.release();
  h3.s.wakeAll();
  t.same((await Promise.all(held)).map((e) => e.code), Array(8).fill('upstream_unavailable'), 'all 8 refused at the reopen');
  await h.finish(t);
  await h3.finish(t);
});

t.test('performance routing: degraded avoided; if all are degraded they still route', async (t) => {
  const g = group('g', [dep('a'), dep('b')]);
  const h = harness([g]);
  degrade(h, 'a');
  t.ok(h.performance.avoid('a'));
  t.same(count(await h.sequential(g, 30)), { b: 30 }, 'a avoided although a and b are equally loaded');
  degrade(h, 'b');
  const ids = await h.sequential(g, 30);
  t.equal(ids.length, 30, 'every request still routed');
  t.ok(ids.every((id) => id === 'a' || id === 'b'));
  await h.finish(t);
});

t.test('a degraded deployment gets one probe request per probe interval', async (t) => {
  const g = group('g', [dep('a'), dep('b')]);
  const h = harness([g], { performance: { probeIntervalMs: 2_000 } });
  // b is healthy and fast, a is degraded by a slow TTFT: on cost alone a would never be
  // chosen, so only the probe sends it a request.
  for (let i = 0; i < 3; i++) h.performance.succeeded('b', 10, null);
  h.performance.started('a');
  for (let i = 0; i < 3; i++) h.performance.succeeded('a', 8_000, null);
  t.ok(h.performance.snapshot('a')!.degraded);
  h.clock.advance(1_999);
  t.same(count(await h.sequential(g, 10)), { b: 10 }, 'not yet due');
  h.clock.advance(1);
  t.same(await h.sequential(g, 5), ['a', 'b', 'b', 'b', 'b'], 'due: exactly one request probes a');
  h.clock.advance(2_000);
  t.same(await h.sequential(g, 3), ['a', 'b', 'b'], 'and again one interval later');
  // The probe succeeds enough to recover: a is no longer degraded.
  for (let i = 0; i < 30; i++) h.performance.succeeded('a', 1, null);
  t.notOk(h.performance.snapshot('a')!.degraded);
  t.same(count(await h.sequential(g, 10)), { a: 10 }, 'a is back, and now the fastest');
  await h.finish(t);
});

// Regression (was a bug): the probe of a degraded deployment ignored its cool-down, so a
// deployment that had just failed several times in a row got a probe request while a
// healthy one was free. Now the breaker (fleet manager) marks it open in the route bits.
t.test('a deployment whose breaker is open is not probed', async (t) => {
  const g = group('g', [dep('a'), dep('b')]);
  const h = harness([g]);
  for (let i = 0; i < 3; i++) h.performance.succeeded('b', 10, null);
  const a = h.s.get('a')!;
  h.performance.started('a');
  for (let i = 0; i < 3; i++) h.performance.failed('a');
  h.capacity.setRouteWord(a.slot, BREAKER_OPEN);
  h.clock.advance(DEFAULT_PERFORMANCE.probeIntervalMs);
  t.ok(h.performance.probeDue('a'), 'a probe is due');
  const l = await h.acquire(g);
  t.equal(l.dep.config.id, 'b', 'the healthy deployment, not the one whose breaker is open');
  await h.finish(t);
});

t.test('sticky routing: a pin is followed, and reported as a hit', async (t) => {
  const g = group('g', ['a', 'b', 'c'].map((id) => dep(id)));
  const h = harness([g], { flags: { ...PLAIN, sticky_routing: true } });
  const first = await h.acquire(g, { stickyKey: 'k' });
  const pinned = first.dep.config.id;
  t.equal(first.stickyHit, false, 'no pin yet');
  t.equal(h.sticky.get('k'), pinned, 'the choice is pinned');
  for (let i = 0; i < 5; i++) {
    const l = await h.acquire(g, { stickyKey: 'k' });
    t.equal(l.dep.config.id, pinned, 'follows the pin although it is the busiest');
    t.equal(l.stickyHit, true);
  }
  t.equal(h.inFlight(pinned), 6);
  const free = await h.acquire(g);
  t.not(free.dep.config.id, pinned, 'without a key: least loaded');
  t.equal(free.stickyHit, null, 'no sticky lookup without a key');
  t.same(h.lookups, [false, true, true, true, true, true]);
  await h.finish(t);
});

t.test('sticky routing: a pin to a draining or full deployment is dropped and replaced', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 2 }), dep('b', { concurrencyLimit: 2 }), dep('c', { concurrencyLimit: 2 })]);
  const h = harness([g], { flags: { ...PLAIN, sticky_routing: true } });
  h.sticky.pin('k', 'a');
  t.equal((await h.acquire(g, { stickyKey: 'k' })).dep.config.id, 'a');
  h.s.setDraining('a', true);
  const moved = await h.acquire(g, { stickyKey: 'k' });
  t.not(moved.dep.config.id, 'a', 'not the draining one');
  t.equal(moved.stickyHit, false);
  t.equal(h.sticky.get('k'), moved.dep.config.id, 're-pinned to where it went');

  const x = moved.dep.config.id;
  t.equal((await h.acquire(g, { stickyKey: 'k' })).dep.config.id, x, 'the new pin is followed');
  t.equal(h.inFlight(x), 2, 'now full');
  const again = await h.acquire(g, { stickyKey: 'k' });
  t.not(again.dep.config.id, x, 'a full deployment loses the pin');
  t.not(again.dep.config.id, 'a');
  t.equal(again.stickyHit, false);
  t.equal(h.sticky.get('k'), again.dep.config.id);
  await h.finish(t);
});

t.test('sticky routing: a pin is dropped even when the request finds no room anywhere', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 1 }), dep('b', { concurrencyLimit: 1 })]);
  const h = harness([g], { flags: { ...PLAIN, sticky_routing: true }, scheduler: { queueWhenFull: false } });
  await h.acquire(g, { tried: new Set(['b']) });
  await h.acquire(g, { tried: new Set(['a']) });
  h.sticky.pin('k', 'a');
  t.equal((await rejection(h.acquire(g, { stickyKey: 'k' }))).code, 'capacity_exhausted');
  t.equal(h.sticky.get('k'), undefined, 'the pin to the full deployment is gone');
  t.same(h.lookups, [false]);
  await h.finish(t);
});

t.test('sticky routing: expired pins and pins to another group are not followed', async (t) => {
  const g = group('g', ['a', 'b'].map((id) => dep(id)));
  const other = group('other', [dep('o')]);
  const h = harness([g, other], { flags: { ...PLAIN, sticky_routing: true }, stickyTtlMs: 1_000 });
  h.sticky.pin('k', 'o');
  const l = await h.acquire(g, { stickyKey: 'k' });
  t.not(l.dep.config.id, 'o', 'a deployment of another group');
  t.equal(l.stickyHit, false);
  t.equal(h.sticky.get('k'), l.dep.config.id);

  // The pinned one still holds that lease: only a live pin would send the next request there.
  const pinned = l.dep.config.id;
  h.clock.advance(1_000);
  const after = await h.acquire(g, { stickyKey: 'k' });
  t.equal(after.stickyHit, false, 'expired');
  t.not(after.dep.config.id, pinned, 'least loaded instead');
  await h.finish(t);
});

t.test('setFlags switches behaviour at once: sticky on → off → on, gating on → off', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 5 }), dep('b', { concurrencyLimit: 5 })]);
  const h = harness([g], { flags: { ...PLAIN, sticky_routing: true }, scheduler: { queueWhenFull: false } });
  h.sticky.pin('k', 'a');
  for (let i = 0; i < 3; i++) t.equal((await h.acquire(g, { stickyKey: 'k' })).dep.config.id, 'a');
  const lookups = h.lookups.length;
  h.s.setFlags(flagSet({ ...PLAIN, sticky_routing: false }));
  const off = await h.acquire(g, { stickyKey: 'k' });
  t.equal(off.dep.config.id, 'b', 'sticky off: least loaded, the pin is ignored');
  t.equal(off.stickyHit, null);
  t.equal(h.lookups.length, lookups, 'no lookup at all');
  t.equal(h.sticky.get('k'), 'a', 'the pin is left alone');
  h.s.setFlags(flagSet({ ...PLAIN, sticky_routing: true }));
  const on = await h.acquire(g, { stickyKey: 'k' });
  t.equal(on.dep.config.id, 'a');
  t.equal(on.stickyHit, true);

  // a: 4 in flight, b: 1. Fill both, then switch gating off.
  while (h.inFlight('a') < 5) await h.acquire(g, { tried: new Set(['b']) });
  while (h.inFlight('b') < 5) await h.acquire(g, { tried: new Set(['a']) });
  t.equal((await rejection(h.acquire(g))).code, 'capacity_exhausted');
  h.s.setFlags(flagSet({ ...PLAIN, capacity_gating: false }));
  await h.acquire(g);
  t.equal(h.capacity.totals().totalInFlight, 11, 'admitted past the limits');
  h.s.setFlags(flagSet({ ...PLAIN }));
  t.equal((await rejection(h.acquire(g))).code, 'capacity_exhausted', 'gating back on');
  await h.finish(t);
});

t.test('per-deployment quota moves traffic elsewhere; quota_exceeded once all are spent', async (t) => {
  const g = group('g', [dep('a', { rpm: 1 }), dep('b', { rpm: 3 })]);
  const h = harness([g], { flags: { ...PLAIN, quota_enforcement: true } });
  const held: Lease[] = [];
  for (let i = 0; i < 4; i++) {
    const l = await h.acquire(g);
    t.not(l.reservation, null, 'a reservation comes with the lease');
    t.same(l.reservation!.subjects, [`deployment:${l.dep.config.id}`]);
    held.push(l);
    l.release();
  }
  t.same(count(held.map((l) => l.dep.config.id)), { a: 1, b: 3 });
  h.clock.advance(10_000);
  const e = await rejection(h.acquire(g));
  t.equal(e.code, 'quota_exceeded');
  t.ok(e.retryAfter !== undefined && e.retryAfter >= 1 && e.retryAfter <= 50, `retryAfter ${e.retryAfter}`);
  t.equal(h.queue.size, 0, 'not queued: waiting for capacity would not help');
  t.equal(h.capacity.totals().totalInFlight, 0, 'no slot taken by the refused request');
  h.clock.advance(60_000);
  t.ok(await h.acquire(g), 'the window has moved on');
  // Enforcement off: the same spent quotas do not matter.
  h.s.setFlags(flagSet({ ...PLAIN }));
  t.equal((await h.sequential(g, 10)).length, 10);
  t.equal((await h.acquire(g)).reservation, null, 'no reservation without enforcement');
  await h.finish(t);
});

t.test("one deployment's quota spent, the other full: the request queues for the full one, not 429", async (t) => {
  const g = group('g', [dep('a', { rpm: 1, concurrencyLimit: 1 }), dep('b', { concurrencyLimit: 1 })]);
  const h = harness([g], { flags: { ...PLAIN, quota_enforcement: true } });
  (await h.acquire(g, { tried: new Set(['b']) })).release(); // a's one request this minute
  const onB = await h.acquire(g, { tried: new Set(['a']) });
  const waiting = h.acquire(g);
  t.notOk(await settled(waiting), 'waits in the queue: b will have room');
  t.equal(h.queue.size, 1);
  onB.release();
  t.equal((await waiting).dep.config.id, 'b', 'served by b once it frees');
  // Nothing full anywhere: the spent quota is the answer, at once.
  const e = await rejection(h.acquire(g, { tried: new Set(['b']) }));
  t.equal(e.code, 'quota_exceeded');
  await h.finish(t);
});

t.test("a tier's capacityShare caps its slots on each deployment", async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 4 })]);
  const h = harness([g], { flags: PLAIN, scheduler: { queueWhenFull: false } });
  const batch = tier('batch', 0.5);
  const realtime = tier('realtime', 1);
  await h.acquire(g, { tier: batch });
  await h.acquire(g, { tier: batch });
  t.equal((await rejection(h.acquire(g, { tier: batch }))).code, 'capacity_exhausted', 'batch fills 2 of 4');
  t.equal(h.inFlight('a'), 2);
  const r1 = await h.acquire(g, { tier: realtime });
  await h.acquire(g, { tier: realtime });
  t.equal(h.inFlight('a'), 4, 'realtime may fill the rest');
  t.equal((await rejection(h.acquire(g, { tier: realtime }))).code, 'capacity_exhausted', 'the limit holds for every tier');
  r1.release();
  t.equal((await rejection(h.acquire(g, { tier: batch }))).code, 'capacity_exhausted', 'a free slot above the batch share is not for batch');
  await h.acquire(g, { tier: realtime });
  t.equal(h.capacity.stats('a')!.acquired, 5);
  await h.finish(t);
});

t.test('a tier share counts all traffic on the deployment, not only its own', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 4 })]);
  const h = harness([g], { flags: PLAIN, scheduler: { queueWhenFull: false } });
  await h.acquire(g, { tier: tier('realtime', 1) });
  await h.acquire(g, { tier: tier('realtime', 1) });
  t.equal((await rejection(h.acquire(g, { tier: tier('batch', 0.5) }))).code, 'capacity_exhausted', 'half full already: batch gets nothing');
  await h.finish(t);
});

/** 1000 deployments; `kind(i)` says what each one is. */
function bigGroup(kind: (i: number) => 'tried' | 'draining' | 'full' | 'open') {
  const deps = Array.from({ length: 1000 }, (_, i) => dep(`d${i}`, { concurrencyLimit: kind(i) === 'full' ? 1 : 1_000 }));
  return { g: group('big', deps), deps };
}

function prepareBig(h: ReturnType<typeof harness>, deps: DeploymentConfig[], kind: (i: number) => string) {
  const tried = new Set<string>();
  const full: number[] = [];
  deps.forEach((d, i) => {
    const k = kind(i);
    if (k === 'tried') tried.add(d.id);
    if (k === 'draining') h.s.setDraining(d.id, true);
    if (k === 'full') {
      const slot = h.s.get(d.id)!.slot;
      h.capacity.tryAcquire(slot);
      full.push(slot);
    }
  });
  return { tried, releaseFull: () => full.forEach((slot) => h.capacity.release(slot)) };
}

for (const perf of [false, true]) {
  t.test(`1000 deployments: sampled choice still respects tried, draining and full (performance routing ${perf ? 'on' : 'off'})`, async (t) => {
    // One in ten is open; the rest are tried, draining or full.
    const kind = (i: number) => (['tried', 'tried', 'tried', 'tried', 'tried', 'draining', 'draining', 'full', 'full', 'open'] as const)[i % 10]!;
    const { g, deps } = bigGroup(kind);
    const h = harness([g], { flags: { performance_routing: perf }, seed: 11 });
    const { tried, releaseFull } = prepareBig(h, deps, kind);
    const ids = await h.sequential(g, 500, { tried });
    const wrong = ids.filter((id) => kind(Number(id.slice(1))) !== 'open');
    t.same(wrong, [], 'only open deployments chosen');
    t.ok(new Set(ids).size > 50, `spread over ${new Set(ids).size} of the 100 open ones`);

    // A single open deployment among 1000 (the other open ones made full with limit 0):
    // sampling rarely finds it, the scan behind it does.
    const only = 'd779';
    const others = deps.filter((d, i) => kind(i) === 'open' && d.id !== only);
    for (const d of others) h.s.setLimit(d.id, 0);
    t.same(count(await h.sequential(g, 20, { tried })), { [only]: 20 });
    for (const d of others) h.s.setLimit(d.id, 1_000);
    releaseFull();
    await h.finish(t);
  });
}

t.test('1000 deployments: a request looks at a few, not all (sampling, not a scan)', async (t) => {
  const kind = (i: number) => (i % 100 === 0 ? 'tried' : i % 100 === 1 ? 'draining' : i % 100 === 2 ? 'full' : 'open');
  const capacity = new CountingCapacity(2048);
  const { g, deps } = bigGroup(kind);
  const h = harness([g], { flags: PLAIN, capacity, seed: 5 });
  const { tried, releaseFull } = prepareBig(h, deps, kind);
  capacity.reads = 0;
  const ids = await h.sequential(g, 200, { tried });
  t.ok(capacity.reads / 200 < 30, `${(capacity.reads / 200).toFixed(1)} in-flight reads per request (a scan reads about 1000)`);
  t.same(
    ids.filter((id) => kind(Number(id.slice(1))) !== 'open'),
    [],
  );
  releaseFull();
  await h.finish(t);
});

t.test('1000 deployments: degraded ones are avoided by the sampled choice too', async (t) => {
  const deps = Array.from({ length: 1000 }, (_, i) => dep(`d${i}`));
  const g = group('big', deps);
  const h = harness([g], { seed: 9, performance: { probeIntervalMs: 1_000_000 } });
  for (let i = 0; i < 1000; i += 2) degrade(h, `d${i}`);
  const ids = await h.sequential(g, 300);
  t.same(
    ids.filter((id) => Number(id.slice(1)) % 2 === 0),
    [],
    'no degraded deployment chosen',
  );
  await h.finish(t);
});

t.test('the queue is served by priority when priority routing is on, first come otherwise', async (t) => {
  for (const byPriority of [true, false]) {
    const g = group('g', [dep('a', { concurrencyLimit: 1 })]);
    const h = harness([g], { flags: { ...PLAIN, priority_routing: byPriority } });
    const held = await h.acquire(g);
    const order: number[] = [];
    const low = h.acquire(g, { priority: 1 }).then((l) => (order.push(1), l));
    const high = h.acquire(g, { priority: 9 }).then((l) => (order.push(9), l));
    await ticks();
    held.release();
    (await Promise.race([low, high])).release();
    await Promise.all([low, high]);
    t.same(order, byPriority ? [9, 1] : [1, 9], `priority routing ${byPriority ? 'on' : 'off'}`);
    await h.finish(t);
  }
});

t.test('setLimit raises the limit and lets waiters in at once', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 1 })]);
  const h = harness([g], { flags: PLAIN });
  await h.acquire(g);
  const waiting = [h.acquire(g), h.acquire(g), h.acquire(g)];
  await ticks();
  t.equal(h.queue.size, 3);
  t.ok(h.s.setLimit('a', 3));
  t.notOk(h.s.setLimit('nope', 3));
  await ticks();
  const done = await Promise.all(waiting.map((p) => settled(p)));
  t.equal(done.filter(Boolean).length, 2, 'two more fit');
  t.equal(h.inFlight('a'), 3);
  t.equal(h.queue.size, 1);
  await h.finish(t);
  await Promise.all(waiting);
});

// Regression (was a bug): lost wake-up. A release wakes exactly one waiter (the one pickNext chooses). If
// that waiter cannot use the freed slot (here: its tier's capacityShare is used up; the
// same happens when the deployment is in its tried set), it goes back to the queue and
// the slot stays free while a waiter that could use it keeps waiting, until another
// release or its own queue_timeout. Expected: the freed slot goes to a waiter that can
// take it.
t.test('a freed slot goes to a waiter that can use it, even if the first one woken cannot', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 2 })]);
  const h = harness([g], { flags: PLAIN });
  const first = await h.acquire(g, { tier: tier('realtime', 1) });
  await h.acquire(g, { tier: tier('realtime', 1) });
  const batch = new AbortController();
  const waitingBatch = h.acquire(g, { tier: tier('batch', 0.5), signal: batch.signal }); // first in line, cap 1
  const realtime = h.acquire(g, { tier: tier('realtime', 1) });
  await ticks();
  t.equal(h.queue.size, 2);
  first.release(); // 1 in flight: batch still cannot (cap 1), realtime can
  const got = await settled(realtime);
  t.ok(got, 'the realtime waiter got the free slot');
  // Clean up whatever the outcome.
  batch.abort();
  await rejection(waitingBatch);
  if (!got) h.queue.wake('g', false);
  await realtime;
  await h.finish(t);
});

t.test('queueing off: a waiter held by a pause that cannot use the slot it is woken for passes it on', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 2 })]);
  const h = harness([g], { flags: PLAIN, scheduler: { queueWhenFull: false } });
  await h.acquire(g, { tier: tier('realtime', 1) });
  h.s.setPaused(true);
  const batch = h.acquire(g, { tier: tier('batch', 0.5) }); // first in line, cap 1: full
  const realtime = h.acquire(g, { tier: tier('realtime', 1) });
  await ticks();
  t.equal(h.queue.size, 2, 'both held by the pause');
  h.s.setPaused(false); // one free slot: one wake, to batch first
  t.equal((await rejection(batch)).code, 'capacity_exhausted', 'batch cannot use it and queueing is off');
  t.ok(await settled(realtime), 'realtime got the slot batch passed on');
  t.equal((await realtime).dep.config.id, 'a');
  await h.finish(t);
});

// Regression (was a bug): undraining a deployment wakes only one waiter (Scheduler.setDraining calls
// queue.wake once) although the deployment may have many free slots: the other waiters
// stay queued with free capacity until some lease is released or they time out.
t.test('undraining a deployment lets in as many waiters as it has free slots', async (t) => {
  const g = group('g', [dep('a', { concurrencyLimit: 3 }), dep('b', { concurrencyLimit: 1 })]);
  const h = harness([g], { flags: PLAIN });
  h.s.setDraining('a', true);
  await h.acquire(g); // b is full
  const waiting = [h.acquire(g), h.acquire(g), h.acquire(g)];
  await ticks();
  t.equal(h.queue.size, 3);
  h.s.setDraining('a', false);
  await ticks();
  const done = (await Promise.all(waiting.map((p) => settled(p)))).filter(Boolean).length;
  t.equal(done, 3, 'all three fit on a');
  // Clean up whatever the outcome.
  for (let i = 0; i < 3 - done; i++) h.queue.wake('g', false);
  await Promise.all(waiting);
  await h.finish(t);
});
