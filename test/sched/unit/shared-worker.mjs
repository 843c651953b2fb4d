// Worker-thread entry for the cross-thread tests. Node 20 does not apply the
// parent's `--import tsx` hooks inside worker threads (nor does execArgv
// ['--import', 'tsx'] help: the worker fails with "Unknown file extension .ts"),
// so this plain-JS entry loads the TypeScript modules through tsx's API, as
// src/workers/ts-entry.mjs does.
//
// workerData: { task, ...args }. The worker waits on `start` (an Int32Array cell
// over a SharedArrayBuffer) so that all workers begin hammering together, then
// posts back what it counted.
import { parentPort, workerData } from 'node:worker_threads';
import { tsImport } from 'tsx/esm/api';

const { task } = workerData;
const gate = new Int32Array(workerData.start);

function waitForStart() {
  Atomics.add(gate, 1, 1); // ready count
  Atomics.wait(gate, 0, 0);
}

if (task === 'slots') {
  const { SharedTable } = await tsImport('../../../src/sched/shared-table.ts', import.meta.url);
  const table = new SharedTable(workerData.capacity, workerData.buffer, workerData.opts);
  waitForStart();
  const slots = workerData.keys.map((k) => table.acquire(k));
  parentPort.postMessage({ slots });
} else if (task === 'rate') {
  const { createRateLimiter } = await tsImport('../../../src/guard/rate-limit.ts', import.meta.url);
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
  const { QuotaLedger } = await tsImport('../../../src/policy/quota.ts', import.meta.url);
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
