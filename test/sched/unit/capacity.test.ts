import t from 'tap';
import { Worker } from 'node:worker_threads';
import { CapacityCounters } from '../../../src/sched/capacity.ts';

t.test('tryAcquire stops at the limit; release gives the slot back', async (t) => {
  const c = new CapacityCounters(8);
  const s = c.register('a', 3);
  t.equal(s, 0);
  t.equal(c.slotOf('a'), 0);
  t.equal(c.slotOf('nope'), undefined);
  const got = Array.from({ length: 5 }, () => c.tryAcquire(s));
  t.same(got, [true, true, true, false, false]);
  t.equal(c.inFlight(s), 3);
  t.notOk(c.hasRoom(s));
  c.release(s);
  t.equal(c.inFlight(s), 2);
  t.ok(c.hasRoom(s));
  t.ok(c.tryAcquire(s), 'the freed slot can be taken again');
  t.notOk(c.tryAcquire(s));
  t.equal(c.stats('a')!.acquired, 4, 'only successful acquires are counted');
});

t.test('a cap below the limit (a tier share) gates earlier; a cap above it does not raise it', async (t) => {
  const c = new CapacityCounters(8);
  const s = c.register('a', 4);
  t.ok(c.tryAcquire(s, 2));
  t.ok(c.tryAcquire(s, 2));
  t.notOk(c.tryAcquire(s, 2), 'at the cap');
  t.equal(c.inFlight(s), 2);
  t.ok(c.tryAcquire(s, 100));
  t.ok(c.tryAcquire(s));
  t.notOk(c.tryAcquire(s, 100), 'the limit still holds with a larger cap');
  t.notOk(c.tryAcquire(s, 0), 'cap 0 admits nothing');
  t.equal(c.inFlight(s), 4);
});

t.test('limit 0 admits nothing', async (t) => {
  const c = new CapacityCounters(8);
  const s = c.register('a', 0);
  t.notOk(c.tryAcquire(s));
  t.equal(c.inFlight(s), 0);
  t.same(c.stats('a'), { id: 'a', inFlight: 0, concurrencyLimit: 0, rejected: 0, acquired: 0, utilisation: 0 });
});

t.test('release below zero throws and leaves the counter at zero', async (t) => {
  const c = new CapacityCounters(8);
  const s = c.register('a', 2);
  t.throws(() => c.release(s), /released more often than acquired/);
  t.equal(c.inFlight(s), 0, 'not -1');
  t.ok(c.tryAcquire(s));
  t.ok(c.tryAcquire(s));
  t.notOk(c.tryAcquire(s), 'the bad release did not create room');
  c.release(s);
  c.release(s);
  t.throws(() => c.release(s));
  t.equal(c.inFlight(s), 0);
});

t.test('acquireUngated counts past the limit; releases bring it back', async (t) => {
  const c = new CapacityCounters(8);
  const s = c.register('a', 1);
  for (let i = 0; i < 3; i++) c.acquireUngated(s);
  t.equal(c.inFlight(s), 3);
  t.equal(c.stats('a')!.acquired, 3);
  t.equal(c.stats('a')!.utilisation, 3);
  t.notOk(c.tryAcquire(s), 'the gate sees the ungated load');
  for (let i = 0; i < 3; i++) c.release(s);
  t.equal(c.inFlight(s), 0);
});

t.test('stats and totals', async (t) => {
  const c = new CapacityCounters(8);
  const a = c.register('a', 4);
  const b = c.register('b', 2);
  c.tryAcquire(a);
  c.tryAcquire(b);
  c.tryAcquire(b);
  c.countRejection(b);
  c.countRejection(b);
  c.countRejection(a);
  t.same(c.stats('a'), { id: 'a', inFlight: 1, concurrencyLimit: 4, rejected: 1, acquired: 1, utilisation: 0.25 });
  t.same(c.stats('b'), { id: 'b', inFlight: 2, concurrencyLimit: 2, rejected: 2, acquired: 2, utilisation: 1 });
  t.equal(c.stats('c'), undefined);
  t.same(c.ids(), ['a', 'b']);
  t.same(c.totals(), { totalInFlight: 3, totalRejected: 3, totalLimit: 6, deployments: 2 });
  c.release(a);
  c.release(b);
  c.release(b);
  t.same(c.totals(), { totalInFlight: 0, totalRejected: 3, totalLimit: 6, deployments: 2 });
});

t.test('register again updates the limit and keeps the slot and its counts', async (t) => {
  const c = new CapacityCounters(8);
  const a = c.register('a', 1);
  c.register('b', 1);
  t.ok(c.tryAcquire(a));
  t.notOk(c.tryAcquire(a));
  t.equal(c.register('a', 3), a, 'same slot');
  t.equal(c.limit(a), 3);
  t.equal(c.inFlight(a), 1, 'in-flight count kept');
  t.ok(c.tryAcquire(a));
  t.ok(c.tryAcquire(a));
  t.notOk(c.tryAcquire(a));
  c.register('a', 1);
  t.notOk(c.tryAcquire(a), 'lowering the limit below in-flight blocks new acquires');
  t.equal(c.inFlight(a), 3, 'and takes nothing away');
  t.same(c.ids(), ['a', 'b']);
});

t.test('more deployments than the buffer holds is an error', async (t) => {
  const c = new CapacityCounters(2);
  c.register('a', 1);
  c.register('b', 1);
  t.throws(() => c.register('c', 1), /more than 2 deployments/);
  t.equal(c.register('a', 5), 0, 'existing ids still update');
});

t.test('two instances over one buffer see the same numbers', async (t) => {
  const one = new CapacityCounters(4);
  const two = new CapacityCounters(4, one.buffer);
  const s1 = one.register('a', 2);
  t.throws(() => two.register('a', 2), /no capacity slot/, 'an attached instance does not assign slots');
  two.bind('a', s1);
  const s2 = two.register('a', 9);
  t.equal(s1, s2);
  t.equal(one.limit(s1), 2, 'an attached instance does not write limits: the owner does');
  t.ok(one.tryAcquire(s1));
  t.ok(two.tryAcquire(s2));
  t.notOk(one.tryAcquire(s1), 'the other instance took the second slot');
  t.equal(two.inFlight(s2), 2);
  two.release(s2);
  t.equal(one.inFlight(s1), 1);
});

// Two threads take and give back slots of one deployment as fast as they can, each
// trying to hold up to 3 at a time against a limit of 3. A shared `held` counter,
// bumped only after a successful tryAcquire and dropped before release, is the
// ground truth: it must never go past the limit.
const WORKER = `
const { workerData, parentPort } = require('node:worker_threads');
(async () => {
  // Compiled (npm test), the module itself; from the sources, through tsx's API.
  const { CapacityCounters } = workerData.entry.endsWith('.js')
    ? await import(workerData.entry)
    : await (await import(workerData.tsxApi)).tsImport(workerData.entry, workerData.parentURL);
  const c = new CapacityCounters(workerData.maxDeployments, workerData.buffer);
  c.bind('shared', workerData.slot);
  const slot = c.register('shared', workerData.limit);
  const ctl = new Int32Array(workerData.control); // [ready, held, maxHeld, contended]
  Atomics.add(ctl, 0, 1);
  while (Atomics.load(ctl, 0) < workerData.threads) {} // start together
  let acquired = 0;
  let refused = 0;
  let over = 0;
  const mine = [];
  // Past the planned rounds, go on (bounded) until the threads have really overlapped:
  // on a busy machine one thread may otherwise run alone.
  for (let i = 0; i < workerData.rounds || (Atomics.load(ctl, 3) < workerData.minContended && i < workerData.maxRounds); i++) {
    for (let k = 0; k < workerData.want; k++) {
      if (c.tryAcquire(slot)) {
        acquired++;
        const held = Atomics.add(ctl, 1, 1) + 1;
        if (held > workerData.limit) over++;
        if (c.inFlight(slot) > workerData.limit) over++;
        for (let m = Atomics.load(ctl, 2); held > m; m = Atomics.load(ctl, 2)) Atomics.compareExchange(ctl, 2, m, held);
        mine.push(slot);
      } else {
        refused++;
        // Refused while holding fewer than the limit: the other thread held the rest.
        if (mine.length < workerData.limit) Atomics.add(ctl, 3, 1);
      }
    }
    while (mine.length > 0) {
      mine.pop();
      Atomics.sub(ctl, 1, 1);
      c.release(slot);
    }
  }
  parentPort.postMessage({ acquired, refused, over });
})().catch((err) => parentPort.postMessage({ error: String(err && err.stack || err) }));
`;

t.test('worker threads: concurrent tryAcquire/release never exceed the limit and end at 0', async (t) => {
  const LIMIT = 3;
  const THREADS = 2;
  const main = new CapacityCounters(4);
  const slot = main.register('shared', LIMIT);
  const control = new SharedArrayBuffer(4 * 4);
  const workerData = {
    tsxApi: import.meta.resolve('tsx/esm/api'),
    entry: new URL(`../../../src/sched/capacity${import.meta.url.endsWith('.js') ? '.js' : '.ts'}`, import.meta.url).href,
    parentURL: import.meta.url,
    buffer: main.buffer,
    maxDeployments: 4,
    slot,
    control,
    limit: LIMIT,
    threads: THREADS,
    rounds: 1_000_000,
    maxRounds: 5_000_000,
    minContended: 20_000,
    want: LIMIT,
  };
  const results = await Promise.all(
    Array.from(
      { length: THREADS },
      () =>
        new Promise<{ acquired: number; refused: number; over: number; error?: string }>((resolve, reject) => {
          const w = new Worker(WORKER, { eval: true, workerData, execArgv: [] });
          w.once('message', resolve);
          w.once('error', reject);
        }),
    ),
  );
  for (const r of results) t.equal(r.error, undefined, 'worker ran');
  const ctl = new Int32Array(control);
  t.equal(results.reduce((n, r) => n + r.over, 0), 0, 'no thread saw more than the limit held or in flight');
  t.ok(Atomics.load(ctl, 2) <= LIMIT, `most held at once: ${Atomics.load(ctl, 2)}`);
  t.equal(Atomics.load(ctl, 2), LIMIT, 'the limit was reached, so the gate was exercised');
  t.ok(Atomics.load(ctl, 3) >= 20_000, `the threads contended: ${Atomics.load(ctl, 3)} refusals while the other thread held slots`);
  t.equal(main.inFlight(slot), 0, 'every slot given back');
  t.equal(Atomics.load(ctl, 1), 0);
  const acquired = results.reduce((n, r) => n + r.acquired, 0);
  t.equal(main.stats('shared')!.acquired, acquired, 'the shared acquired count matches what the threads took');
});

t.test("reclaim gives back what one thread's counters hold, and nothing of the others'", async (t) => {
  const owner = new CapacityCounters(8);
  const a = owner.register('a', 10);
  const threads = [0, 1].map((row) => new CapacityCounters(8, owner.buffer, { buffer: owner.holdingsBuffer, row }));
  for (const c of threads) c.bind('a', a);
  for (let i = 0; i < 3; i++) t.ok(threads[0]!.tryAcquire(a));
  threads[0]!.acquireUngated(a);
  threads[0]!.release(a);
  t.ok(threads[1]!.tryAcquire(a));
  t.ok(owner.tryAcquire(a), "the control plane's own lease (not a thread's)");
  t.equal(owner.inFlight(a), 5);
  t.same([...owner.reclaim(0)], [[a, 3]], "thread 0's three");
  t.equal(owner.inFlight(a), 2, "thread 1's and the control plane's still held");
  t.same([...owner.reclaim(0)], [], 'nothing twice');
  threads[1]!.release(a);
  t.same([...owner.reclaim(1)], [], 'what a thread gave back is not taken again');
  t.equal(owner.inFlight(a), 1);
});
