// Worker-thread entry for the cross-thread tests. Node 20 does not apply the
// parent's `--import tsx` hooks inside worker threads (nor does execArgv
// ['--import', 'tsx'] help: the worker fails with "Unknown file extension .ts"),
// so this plain-JS entry loads the TypeScript modules through tsx's API, as
// src/workers/ts-entry.mjs does.
//
// workerData: { task, src?, ...args }. The worker waits on `start` (an Int32Array cell
// over a SharedArrayBuffer) so that all workers begin hammering together, then
// posts back what it counted. With `src`, the URL of a compiled src/ (`npm test` runs
// the tests compiled, from .test-build/), it imports the compiled .js modules, no tsx.
import { parentPort, workerData } from 'node:worker_threads';

const { task } = workerData;
/** A module of src/, named by its path relative to src/ as a .ts file. */
const load = async (path) =>
  workerData.src !== undefined
    ? import(new URL(path.replace(/\.ts$/, '.js'), workerData.src).href)
    : (await import('tsx/esm/api')).tsImport(`../../../src/${path}`, import.meta.url);
const gate = new Int32Array(workerData.start);

function waitForStart() {
  Atomics.add(gate, 1, 1); // ready count
  Atomics.wait(gate, 0, 0);
}

if (task === 'slots') {
  const { SharedTable } = await load('sched/shared-table.ts');
  const table = new SharedTable(workerData.capacity, workerData.buffer, workerData.opts);
  waitForStart();
  const slots = workerData.keys.map((k) => table.acquire(k));
  parentPort.postMessage({ slots });
} else if (task === 'rate') {
  const { createRateLimiter } = await load('guard/rate-limit.ts');
  const now = () => workerData.clock; // frozen clock: no refill during the run, totals are exact
  const rl = createRateLimiter(workerData.rps, workerData.burst, { now, buffer: workerData.buffer });
  waitForStart();
  let admitted = 0;
  for (let i = 0; i < workerData.attempts; i++) {
    for (const key of workerData.keys) {
      try {
        rl.check(key);
        admitted++;
      } catch (err) {
        if (err?.code !== 'rate_limited') throw err;
      }
    }
  }
  parentPort.postMessage({ admitted });
} else if (task === 'quota') {
  const { QuotaLedger } = await load('policy/quota.ts');
  const q = new QuotaLedger(() => workerData.clock, { buffer: workerData.buffer });
  waitForStart();
  let admitted = 0;
  let settled = 0;
  for (let i = 0; i < workerData.attempts; i++) {
    try {
      const r = q.reserve(workerData.subjects, workerData.tokens);
      admitted++;
      // Every other admitted request settles at once, so reconcile races reserve too.
      if (admitted % 2 === 0) {
        r.reconcile(workerData.actual);
        settled++;
      }
    } catch (err) {
      if (err?.code !== 'quota_exceeded') throw err;
    }
  }
  parentPort.postMessage({ admitted, settled });
} else {
  throw new Error(`unknown task ${task}`);
}
