// Real worker threads attached to the same SharedArrayBuffers, hammering at once:
// the totals must be exact, as if one thread had done all the work. Each worker
// loads the TypeScript modules through shared-worker.mjs (tsx's API), since Node 20
// does not give worker threads the parent's `--import tsx` (run compiled, the .js modules).
import t from 'tap';
import { Worker } from 'node:worker_threads';
import { SharedTable } from '../../../src/sched/shared-table.ts';
import { createRateLimiter, rateLimitBuffer } from '../../../src/guard/rate-limit.ts';
import { QuotaLedger } from '../../../src/policy/quota.ts';

const ENTRY = new URL('./shared-worker.mjs', import.meta.url);
// Compiled (npm test: .test-build/), the workers import the compiled modules, with no tsx.
const SRC = import.meta.url.endsWith('.js') ? new URL('../../../src/', import.meta.url).href : undefined;
const CLOCK = 1_700_000_000_000;

/** Starts one worker per data, releases them together once all are ready, returns what each posted. */
async function inWorkers<R>(data: Record<string, unknown>[]): Promise<R[]> {
  const start = new SharedArrayBuffer(8);
  const gate = new Int32Array(start);
  const workers = data.map((d) => new Worker(ENTRY, { workerData: { ...d, start, src: SRC } }));
  const results = workers.map(
    (w) =>
      new Promise<R>((resolve, reject) => {
        w.once('message', resolve);
        w.once('error', reject);
        w.once('exit', (code) => reject(new Error(`worker exited with ${code} before answering`)));
      }),
  );
  // Loading tsx in a worker takes a while; poll (no busy wait) until every worker waits at the gate.
  const deadline = Date.now() + 60_000;
  while (Atomics.load(gate, 1) < workers.length) {
    if (Date.now() > deadline) throw new Error('workers did not start');
    await new Promise((r) => setTimeout(r, 10));
  }
  Atomics.store(gate, 0, 1);
  Atomics.notify(gate, 0);
  try {
    return await Promise.all(results);
  } finally {
    await Promise.all(workers.map((w) => w.terminate()));
  }
}

t.test('shared table: two threads inserting the same keys at once get the same slots', async (t) => {
  // 30% load: a key finds all 16 of its slots taken with odds ~0.3^16, so -1 never shows here.
  const table = new SharedTable(8192, undefined, { payloadBytes: 16 });
  const keys = Array.from({ length: 2500 }, (_, i) => `client:${i}`);
  // Opposite orders, so that both threads insert many keys first and race on the rest in the middle.
  const [a, b] = await inWorkers<{ slots: number[] }>([
    { task: 'slots', buffer: table.buffer, capacity: 8192, opts: { payloadBytes: 16 }, keys },
    { task: 'slots', buffer: table.buffer, capacity: 8192, opts: { payloadBytes: 16 }, keys: [...keys].reverse() },
  ]);
  const bByKey = [...b!.slots].reverse();
  t.notOk(a!.slots.includes(-1), 'every key got a slot');
  t.same(a!.slots, bByKey, 'each key has one slot, whichever thread inserted it');
  t.equal(new Set(a!.slots).size, keys.length, 'distinct keys, distinct slots');
  t.equal(table.size, keys.length, 'no key inserted twice');
  t.same(keys.map((k) => table.find(k)), a!.slots, 'the main thread sees the same slots');
  t.equal(table.keyOf(a!.slots[7]!), 'client:7');
});

t.test('rate limiter: two threads admit burst in total, not burst each', async (t) => {
  const buffer = rateLimitBuffer(1024);
  const rate = { task: 'rate', buffer, clock: CLOCK, rps: 1, burst: 2, attempts: 2000, keys: ['key:a'] };
  const res = await inWorkers<{ admitted: number }>([rate, rate]);
  t.equal(res[0]!.admitted + res[1]!.admitted, 2, 'RATE_LIMIT_RPS=1 BURST=2: 2 admitted of 4000');

  const buffer2 = rateLimitBuffer(1024);
  const keys = ['key:a', 'key:b', 'ip:10.0.0.1'];
  const many = { task: 'rate', buffer: buffer2, clock: CLOCK, rps: 1, burst: 50, attempts: 400, keys };
  const res2 = await inWorkers<{ admitted: number }>([many, many]);
  t.equal(res2[0]!.admitted + res2[1]!.admitted, 150, 'burst 50 for each of 3 keys');
  const main = createRateLimiter(1, 50, { now: () => CLOCK, buffer: buffer2 });
  t.equal(main.size, 3, 'the main thread sees the buckets the workers made');
  t.throws(() => main.check('key:b'), { code: 'rate_limited' }, 'and finds them spent');
});

t.test('quota: reserve is all-or-nothing across threads; totals are exact', async (t) => {
  const q = new QuotaLedger(() => CLOCK, { maxSubjects: 64 });
  q.setLimits('key:a', { rpm: 1000 });
  const job = { task: 'quota', buffer: q.buffer, clock: CLOCK, subjects: ['key:a', 'model:m'], tokens: 3, actual: 1, attempts: 800 };
  const res = await inWorkers<{ admitted: number; settled: number }>([job, job]);
  const admitted = res[0]!.admitted + res[1]!.admitted;
  const settled = res[0]!.settled + res[1]!.settled;
  t.equal(admitted, 1000, 'rpm 1000, 2 threads × 800 attempts: exactly 1000 admitted');
  const a = q.usage('key:a');
  t.equal(a.rpm, 1000);
  t.equal(q.usage('model:m').rpm, 1000, 'the subject without a limit was charged exactly with it');
  // Settled ones count 1 token (reconciled), the others still their estimate of 3.
  t.equal(a.tpm, settled * 1 + (admitted - settled) * 3);
  t.equal(a.reservedTokens, (admitted - settled) * 3);
  t.same(Object.keys(q.snapshot()).sort(), ['key:a', 'model:m'], 'the main thread lists subjects only workers touched');

  // A tpm limit on a second subject binds first; a limit set by the main thread is in force in the workers at once.
  const q2 = new QuotaLedger(() => CLOCK, { maxSubjects: 64 });
  q2.setLimits('deployment:d', { tpm: 5000 });
  const job2 = { task: 'quota', buffer: q2.buffer, clock: CLOCK, subjects: ['key:b', 'deployment:d'], tokens: 10, actual: 10, attempts: 800 };
  const res2 = await inWorkers<{ admitted: number }>([job2, job2]);
  t.equal(res2[0]!.admitted + res2[1]!.admitted, 500, 'tpm 5000 at 10 tokens each: exactly 500');
  t.equal(q2.usage('key:b').rpm, 500, 'nothing was counted for rejected requests');
  t.equal(q2.usage('deployment:d').tpm, 5000);
});
