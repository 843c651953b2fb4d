import t from 'tap';
import { WaitQueue, pickNext, type Waiter } from '../../../src/sched/queue.ts';
import { BrokerError } from '../../../src/errors.ts';
import { ShedBoard, waitersBuffer } from '../../../src/sched/shed-board.ts';
import { fakeClock, settled, ticks } from './helpers.ts';

const w = (seq: number, priority: number, enqueuedAt: number): Waiter => ({ group: 'g', seq, priority, enqueuedAt });

t.test('pickNext: highest priority first', async (t) => {
  const list = [w(0, 1, 1000), w(1, 8, 1000), w(2, 5, 1000)];
  t.equal(pickNext(list, 1000, 1000, true), 1);
  t.equal(pickNext([], 0, 1000, true), -1, 'nobody waiting');
});

t.test('pickNext: equal priority goes to the oldest (lowest seq), wherever it sits', async (t) => {
  t.equal(pickNext([w(5, 3, 1000), w(2, 3, 1000), w(9, 3, 1000)], 1000, 1000, true), 1);
  t.equal(pickNext([w(2, 3, 1000), w(5, 3, 1000)], 1000, 1000, true), 0);
});

t.test('pickNext: aging lets a long-waiting low priority overtake', async (t) => {
  // Priority 1 since t=0 against priority 5: the old one needs more than 4 levels
  // (4 s at agingMs 1000) of extra age to go first.
  const now = 10_000;
  const against = (newSince: number) => [w(1, 5, newSince), w(0, 1, 0)];
  t.equal(pickNext(against(5_000), now, 1_000, true), 1, '5 s older: 1 + 10 beats 5 + 5');
  t.equal(pickNext(against(3_000), now, 1_000, true), 0, '3 s older: 1 + 10 loses to 5 + 7');
  t.equal(pickNext(against(4_000), now, 1_000, true), 1, 'exactly 4 s older: a tie, to the older');
  t.equal(pickNext(against(5_000), now, 10_000, true), 0, 'slow aging (10 s a level): priority wins');
  t.equal(pickNext([w(0, 1, 0), w(1, 5, 5_000)], now, 1_000, true), 0, 'the order in the list does not matter');
});

t.test('pickNext: without priority it is first come first served', async (t) => {
  const list = [w(3, 9, 100), w(1, 0, 100), w(2, 9, 50)];
  t.equal(pickNext(list, 10_000, 1_000, false), 1, 'lowest seq, priority ignored');
});

const err = async (p: Promise<unknown>): Promise<BrokerError> => {
  try {
    await p;
  } catch (e) {
    return e as BrokerError;
  }
  throw new Error('expected a rejection');
};

t.test('wait/wake: wake resolves the waiter pickNext chooses, one per wake', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(10, 1_000, clock.read);
  const far = clock.now + 60_000;
  const sig = new AbortController().signal;
  const order: string[] = [];
  const low = q.wait('g', 1, far, clock.now, sig).then(() => order.push('low'));
  const high = q.wait('g', 8, far, clock.now, sig).then(() => order.push('high'));
  const other = q.wait('h', 9, far, clock.now, sig).then(() => order.push('other'));
  t.equal(q.size, 3);
  t.same(q.stats(), { size: 3, byGroup: { g: 2, h: 1 }, timedOut: 0, rejectedFull: 0, shed: 0, oldestWaitMs: 0 }, 'the oldest waiter arrived just now');
  clock.advance(250);
  t.equal(q.stats().oldestWaitMs, 250, 'the oldest waiter has waited 250 ms');

  q.wake('g', true);
  await ticks();
  t.same(order, ['high'], 'the higher priority of group g, not h');
  t.equal(q.size, 2);
  q.wake('g', true);
  await ticks();
  t.same(order, ['high', 'low']);
  q.wake('g', true); // nobody left in g: no effect
  q.wake('nobody', true);
  await ticks();
  t.same(order, ['high', 'low']);
  t.same(q.stats().byGroup, { h: 1 }, 'empty groups are not listed');
  q.wake('h', false);
  await Promise.all([low, high, other]);
  t.same(order, ['high', 'low', 'other']);
  t.same(q.stats(), { size: 0, byGroup: {}, timedOut: 0, rejectedFull: 0, shed: 0, oldestWaitMs: 0 });
});

t.test('wake without priority is FIFO; with priority aging is measured on the injected clock', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(10, 1_000, clock.read);
  const far = clock.now + 60_000;
  const sig = new AbortController().signal;
  const order: number[] = [];
  const ps = [
    q.wait('g', 1, far, clock.now - 5_000, sig).then(() => order.push(1)), // waited 5 s already (came back after a lost race)
    q.wait('g', 5, far, clock.now, sig).then(() => order.push(5)),
    q.wait('g', 9, far, clock.now, sig).then(() => order.push(9)),
  ];
  q.wake('g', false);
  await ticks();
  t.same(order, [1], 'first in, whatever its priority');
  // Left: priority 5 and 9, both since now. Advance: no effect on their order (same age).
  clock.advance(10_000);
  q.wake('g', true);
  await ticks();
  t.same(order, [1, 9]);
  q.wake('g', true);
  await Promise.all(ps);
  t.same(order, [1, 9, 5]);
});

t.test('an old low-priority waiter overtakes by aging (the since of a retry counts)', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(10, 1_000, clock.read);
  const far = clock.now + 60_000;
  const sig = new AbortController().signal;
  const order: string[] = [];
  const a = q.wait('g', 5, far, clock.now, sig).then(() => order.push('new-high'));
  const b = q.wait('g', 1, far, clock.now - 6_000, sig).then(() => order.push('old-low'));
  q.wake('g', true);
  await ticks();
  t.same(order, ['old-low'], '1 + 6 levels of age beat 5');
  q.wake('g', true);
  await Promise.all([a, b]);
});

t.test('a full queue rejects at once with capacity_exhausted and retryAfter', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(2, 1_000, clock.read);
  const far = clock.now + 60_000;
  const sig = new AbortController().signal;
  const a = q.wait('g', 5, far, clock.now, sig);
  const b = q.wait('h', 5, far, clock.now, sig);
  const e = await err(q.wait('g', 5, far, clock.now, sig));
  t.ok(e instanceof BrokerError);
  t.equal(e.code, 'capacity_exhausted');
  t.equal(e.status, 429);
  t.equal(e.retryAfter, 1);
  t.match(e.message, /queue is full \(2\)/);
  t.equal(q.size, 2, 'the rejected one took no place');
  t.equal(q.stats().rejectedFull, 1);
  q.wake('g', false);
  q.wake('h', false);
  await Promise.all([a, b]);
  // Room again after the wake.
  const c = q.wait('g', 5, far, clock.now, sig);
  t.equal(q.size, 1);
  q.wake('g', false);
  await c;
});

t.test('the deadline rejects with queue_timeout and frees the place (small real deadline)', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(10, 1_000, clock.read);
  const sig = new AbortController().signal;
  const keep = q.wait('g', 5, clock.now + 60_000, clock.now, sig);
  const p = q.wait('g', 5, clock.now + 20, clock.now - 480, sig);
  t.equal(q.size, 2);
  t.notOk(await settled(p), 'not before its deadline');
  // The fake clock says 500 ms have passed since the request arrived when the timer fires.
  clock.advance(20);
  const e = await err(p);
  t.equal(e.code, 'queue_timeout');
  t.equal(e.status, 504);
  t.match(e.message, /waited 500 ms for a free deployment of g/);
  t.equal(q.size, 1);
  t.same(q.stats().timedOut, 1);
  q.wake('g', false);
  await keep;
});

t.test('a deadline already past rejects on the next timer turn', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(10, 1_000, clock.read);
  const e = await err(q.wait('g', 5, clock.now - 1, clock.now, new AbortController().signal));
  t.equal(e.code, 'queue_timeout');
  t.equal(q.size, 0);
});

t.test('abort removes the waiter; a later wake goes to the next one', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(10, 1_000, clock.read);
  const far = clock.now + 60_000;
  const gone = new AbortController();
  const stay = new AbortController();
  const first = q.wait('g', 5, far, clock.now, gone.signal);
  const second = q.wait('g', 5, far, clock.now, stay.signal);
  gone.abort();
  const e = await err(first);
  t.equal(e.code, 'internal');
  t.match(e.message, /went away/);
  t.equal(q.size, 1);
  t.same(q.stats().byGroup, { g: 1 });
  q.wake('g', false);
  t.ok(await settled(second), 'the wake went to the waiter still there');
  await second;
  t.equal(q.size, 0);
  // Aborting after being woken has no effect.
  stay.abort();
  t.equal(q.size, 0);
  t.equal(q.stats().timedOut, 0);
});

// Regression (was a bug): a waiter whose signal is already aborted when it calls wait() is queued anyway
// and sits there until its deadline (holding a queue place, and taking a wake meant for
// someone else), because addEventListener('abort') never fires for a signal that has
// already aborted. Expected: reject at once, as for an abort while queued. Reachable from
// LlmProxy: a retry after an upstream 429/5xx calls acquire() with abort.signal even if
// the client left during the failed attempt.
t.test('a signal aborted before wait() is rejected at once, not queued', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(10, 1_000, clock.read);
  const ac = new AbortController();
  ac.abort();
  const p = q.wait('g', 5, clock.now + 50, clock.now, ac.signal);
  const queued = q.size;
  const e = await err(p);
  t.equal(queued, 0, 'never takes a place in the queue');
  t.equal(e.code, 'internal', 'rejected as a client that went away, not as a timeout');
});

t.test('setAgingMs: a config change reorders the waiters already queued', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(10, 60_000, clock.read);
  const far = clock.now + 600_000;
  const sig = new AbortController().signal;
  const order: string[] = [];
  const old = q.wait('g', 1, far, clock.now, sig).then(() => order.push('old low'));
  clock.advance(5_000);
  const fresh = q.wait('g', 5, far, clock.now, sig).then(() => order.push('new high'));
  // One level a minute: 5 s of age is not worth 4 levels. One level a second: it is.
  q.setAgingMs(1_000);
  q.wake('g', true);
  await ticks();
  t.same(order, ['old low'], 'aged by the new agingMs');
  q.wake('g', true);
  await Promise.all([old, fresh]);
  t.same(order, ['old low', 'new high']);
});

t.test('full: a newcomer of a higher level sheds the newest waiter of the lowest level below it', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(3, 1_000, clock.read);
  const far = clock.now + 60_000;
  const sig = new AbortController().signal;
  const oldLow = q.wait('g', 2, far, clock.now, sig);
  const newLow = q.wait('h', 2, far, clock.now, sig);
  const normal = q.wait('g', 5, far, clock.now, sig);
  // Equal to the lowest level and below: refused, nothing shed.
  t.equal((await err(q.wait('g', 2, far, clock.now, sig))).code, 'capacity_exhausted');
  t.equal((await err(q.wait('g', 1, far, clock.now, sig))).code, 'capacity_exhausted');
  t.same([await settled(oldLow), await settled(newLow)], [false, false], 'no waiter left the queue');
  t.equal(q.stats().rejectedFull, 2);
  // Higher: the newest low one (of another group, even) makes room.
  const high = q.wait('g', 8, far, clock.now, sig);
  const shed = await err(newLow);
  t.equal(shed.code, 'capacity_exhausted');
  t.equal(shed.retryAfter, 1);
  t.match(shed.message, /shed from the full queue \(3\) for a request of higher priority/);
  t.equal(q.size, 3, 'the newcomer took the shed one\'s place');
  t.same(q.stats().byGroup, { g: 3 });
  t.equal(q.stats().shed, 1);
  // A level-3 newcomer may shed the remaining level-2 waiter, but not the normal one.
  const three = q.wait('g', 3, far, clock.now, sig);
  t.equal((await err(oldLow)).code, 'capacity_exhausted');
  t.equal((await err(q.wait('g', 3, far, clock.now, sig))).code, 'capacity_exhausted', 'nothing below level 3 is left');
  t.equal(q.stats().shed, 2);
  // The queue still serves in priority order.
  const order: string[] = [];
  void high.then(() => order.push('high'));
  void normal.then(() => order.push('normal'));
  void three.then(() => order.push('three'));
  for (let i = 0; i < 3; i++) q.wake('g', true);
  await ticks();
  t.same(order, ['high', 'normal', 'three']);
  t.equal(q.size, 0);
});

t.test('full, priority routing off: nobody is shed, whatever the levels queued', async (t) => {
  const clock = fakeClock();
  const q = new WaitQueue(1, 1_000, clock.read);
  const far = clock.now + 60_000;
  const sig = new AbortController().signal;
  const low = q.wait('g', 1, far, clock.now, sig);
  t.equal((await err(q.wait('g', 9, far, clock.now, sig, undefined, false))).code, 'capacity_exhausted');
  t.equal(await settled(low), false, 'the low one still waits');
  t.same([q.stats().shed, q.stats().rejectedFull], [0, 1]);
  q.wake('g', false);
  await low;
});

t.test('full: a waiter of another thread is claimed, then shed by its own thread', async (t) => {
  const clock = fakeClock();
  const shared = new Int32Array(waitersBuffer());
  const far = clock.now + 60_000;
  const sig = new AbortController().signal;
  const sent: [number, number][] = [];
  const threads: WaitQueue[] = [];
  for (const row of [0, 1]) {
    threads.push(
      new WaitQueue(2, 1_000, clock.read, {
        shared,
        row,
        shedElsewhere: (to, level) => sent.push([to, level]),
      }),
    );
  }
  const [a, b] = threads as [WaitQueue, WaitQueue];
  const low = a.wait('g', 1, far, clock.now, sig);
  const normal = a.wait('g', 5, far, clock.now, sig);
  t.equal(shared[0], 2);
  // Thread b's high newcomer claims a's low waiter and queues at once (one over, until a sheds).
  const high = b.wait('g', 9, far, clock.now, sig);
  t.same(sent, [[0, 1]], 'asked thread 0 to shed one of level 1');
  t.equal(shared[0], 3);
  // A second newcomer above level 1 only, before the message arrives, finds that waiter claimed: refused.
  t.equal((await err(b.wait('g', 3, far, clock.now, sig))).code, 'capacity_exhausted');
  t.equal(sent.length, 1, 'a waiter is claimed once');
  a.shed(1);
  t.match((await err(low)).message, /shed/);
  t.equal(shared[0], 2);
  t.same([a.size, b.size], [1, 1]);
  // A claim whose waiter left meanwhile settles without shedding anyone.
  const low2 = a.wait('g', 1, far, clock.now, sig);
  t.equal((await err(low2)).code, 'capacity_exhausted', 'full again: refused, as its level is the lowest');
  a.wake('g', true);
  await normal;
  const low3 = a.wait('g', 1, far, clock.now, sig);
  const high2 = b.wait('g', 9, far, clock.now, sig);
  t.same(sent.at(-1), [0, 1]);
  a.wake('g', false);
  await low3;
  a.shed(1);
  t.equal(a.stats().shed, 1, 'nobody was left to shed');
  t.equal(shared[0], 2);
  // The claim was settled: a new low waiter can be claimed again.
  b.wake('g', true);
  await high;
  const low5 = a.wait('g', 1, far, clock.now, sig);
  const high3 = b.wait('g', 9, far, clock.now, sig);
  t.equal(sent.length, 3, 'claimed again');
  a.shed(1);
  t.match((await err(low5)).message, /shed/);
  b.wake('g', true);
  b.wake('g', true);
  await Promise.all([high2, high3]);
  t.equal(shared[0], 0);
});

t.test('a shed message with no claim behind it (meant for a dead thread) sheds nobody; a new thread clears a stale claim', async (t) => {
  const clock = fakeClock();
  const shared = new Int32Array(waitersBuffer());
  const far = clock.now + 60_000;
  const sig = new AbortController().signal;
  const q = new WaitQueue(10, 1_000, clock.read, { shared, row: 2, shedElsewhere: () => undefined });
  const low = q.wait('g', 1, far, clock.now, sig);
  q.shed(1);
  t.equal(await settled(low), false, 'not shed');
  t.equal(q.stats().shed, 0);
  q.wake('g', false);
  await low;
  // A claim that raced a reclaim is left on row 4 with no waiter: the thread that takes the row clears it.
  const claimCell = 1 + (64 + 4) * 10 + 1;
  shared[claimCell] = 1;
  new WaitQueue(10, 1_000, clock.read, { shared, row: 4 });
  t.equal(shared[claimCell], 0, 'cleared when the row was taken');
});

t.test('ShedBoard.reclaim: a dead thread\'s waiters leave the shared count', async (t) => {
  const clock = fakeClock();
  const shared = new Int32Array(waitersBuffer());
  const q = new WaitQueue(10, 1_000, clock.read, { shared, row: 3 });
  const sig = new AbortController().signal;
  const far = clock.now + 60_000;
  const waits = [q.wait('g', 1, far, clock.now, sig), q.wait('g', 7, far, clock.now, sig)];
  t.equal(shared[0], 2);
  t.equal(ShedBoard.reclaim(shared, 3), 2);
  t.equal(shared[0], 0);
  t.equal(ShedBoard.reclaim(shared, 3), 0, 'once');
  for (const _ of waits) q.wake('g', true);
  await Promise.all(waits);
});
