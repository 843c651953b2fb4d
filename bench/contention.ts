// bench:contention — what sharing a cache line costs two threads that update
// different counters in one SharedArrayBuffer (false sharing), in one run:
//  1. Atomics.add on two Int32 counters 4 bytes apart (same 64-byte line), 16 bytes
//     apart (src/sched/capacity.ts today: 4 Int32 fields per deployment), and 64 or
//     128 bytes apart (own line; 128 also defeats the adjacent-line prefetcher);
//  2. the capacity-counter pattern of capacity.ts (load + compareExchange to acquire,
//     Atomics.sub to release) on the same layouts;
//  3. each op on one thread alone, for the uncontended floor.
// Each thread counts in its own counter, so any slowdown is the cache line moving
// between cores. With fewer than 2 idle cores the threads take turns on one core
// and the figures show no contention: loadavg is recorded for that reason.
// Writes bench/results/contention.json. Bounded: stops adding rounds after ~20 s.
import { Worker } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { availableParallelism, loadavg } from 'node:os';
import { machine, writeResults } from './lib/report.ts';
import { round, table } from './lib/stats.ts';
import { envNumber } from './lib/args.ts';

const ADDS = envNumber('CONTENTION_OPS', 10_000_000, { min: 1, integer: true });
const ROUNDS = envNumber('CONTENTION_ROUNDS', 5, { min: 1, integer: true });
const BUDGET_MS = 20_000;
const LAYOUTS = [
  { name: 'adjacent (4 B apart)', stride: 4 },
  { name: 'capacity.ts today (16 B)', stride: 16 },
  { name: 'padded 64 B', stride: 64 },
  { name: 'padded 128 B', stride: 128 },
] as const;
const OPS = ['add', 'capacity'] as const;
type Op = (typeof OPS)[number];

// Plain JS, so the workers need no TypeScript loader. The loop bodies are what is measured.
const WORKER = `
const { parentPort } = require('node:worker_threads');
const { performance } = require('node:perf_hooks');
parentPort.on('message', ({ sab, gate, index, n, op }) => {
  const a = new Int32Array(sab);
  const g = new Int32Array(gate);
  Atomics.add(g, 1, 1);
  Atomics.wait(g, 0, 0);
  const t0 = performance.now();
  if (op === 'add') {
    for (let i = 0; i < n; i++) Atomics.add(a, index, 1);
  } else {
    // capacity.ts tryAcquire + release: never past the limit, given back at once.
    const limit = 1 << 30;
    for (let i = 0; i < n; i++) {
      for (;;) {
        const cur = Atomics.load(a, index);
        if (cur >= limit) break;
        if (Atomics.compareExchange(a, index, cur, cur + 1) === cur) break;
      }
      Atomics.sub(a, index, 1);
    }
  }
  parentPort.postMessage({ ms: performance.now() - t0, final: Atomics.load(a, index) });
});
`;

const workers = [new Worker(WORKER, { eval: true }), new Worker(WORKER, { eval: true })];

async function run(threads: number, stride: number, op: Op, n: number): Promise<number> {
  const sab = new SharedArrayBuffer(256 + 2 * stride);
  const gate = new SharedArrayBuffer(8);
  const g = new Int32Array(gate);
  // Counters start on a 128-byte boundary, so "4 B apart" is one line and the padded ones are not.
  const done = workers.slice(0, threads).map(
    (w, t) =>
      new Promise<{ ms: number; final: number }>((resolve, reject) => {
        const fail = (err: Error) => reject(err);
        w.once('error', fail);
        w.once('message', (m: { ms: number; final: number }) => {
          w.off('error', fail);
          resolve(m);
        });
        w.postMessage({ sab, gate, index: (128 + t * stride) >> 2, n, op });
      }),
  );
  while (Atomics.load(g, 1) < threads) await new Promise((r) => setTimeout(r, 1));
  Atomics.store(g, 0, 1);
  Atomics.notify(g, 0);
  const res = await Promise.all(done);
  for (const r of res) if (r.final !== (op === 'add' ? n : 0)) throw new Error(`counter ended at ${r.final}`);
  // ns per op on each thread (its own clock), averaged over the threads
  return (res.reduce((s, r) => s + r.ms, 0) / threads / n) * 1e6;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

const started = performance.now();
const info = machine();
const opsFor = (op: Op) => (op === 'add' ? ADDS : ADDS / 2);
// Warm-up: let the loops get optimised before anything is timed.
for (const op of OPS) await run(2, 64, op, 200_000);

const samples = new Map<string, number[]>();
const key = (threads: number, stride: number, op: Op) => `${threads}:${stride}:${op}`;
let rounds = 0;
for (let r = 0; r < ROUNDS && performance.now() - started < BUDGET_MS; r++) {
  rounds++;
  // Interleaved, so drift in the machine's load spreads over every layout alike.
  for (const op of OPS) {
    samples.set(key(1, 64, op), [...(samples.get(key(1, 64, op)) ?? []), await run(1, 64, op, opsFor(op))]);
    for (const l of LAYOUTS) samples.set(key(2, l.stride, op), [...(samples.get(key(2, l.stride, op)) ?? []), await run(2, l.stride, op, opsFor(op))]);
  }
}
await Promise.all(workers.map((w) => w.terminate()));

const results = OPS.map((op) => {
  const alone = median(samples.get(key(1, 64, op))!);
  const padded = median(samples.get(key(2, 64, op))!);
  return {
    op,
    ops_per_thread: opsFor(op),
    one_thread_ns: round(alone, 2),
    layouts: LAYOUTS.map((l) => {
      const all = samples.get(key(2, l.stride, op))!;
      const ns = median(all);
      return { layout: l.name, stride_bytes: l.stride, ns_per_op: round(ns, 2), samples_ns: all.map((x) => round(x, 2)), vs_padded_64: round(ns / padded, 2), vs_one_thread: round(ns / alone, 2) };
    }),
  };
});

// Own-line counters on two cores cost about what one thread alone costs; near 2x
// means the threads took turns on one core, and then no layout shows contention.
const addRow = results[0]!;
const parallel = addRow.layouts.find((l) => l.stride_bytes === 64)!.vs_one_thread < 1.5;

const out = {
  bench: 'contention',
  threads_ran_in_parallel: parallel,
  machine: info,
  loadavg_1m_at_end: round(loadavg()[0]!, 2),
  cores: availableParallelism(),
  rounds,
  seconds: round((performance.now() - started) / 1000, 1),
  note: 'ns per op per thread, median of rounds; 2 threads each update their own counter, stride_bytes apart',
  results,
};
const file = writeResults('contention', out);

for (const r of results) {
  console.log(`\n${r.op === 'add' ? 'Atomics.add' : 'capacity acquire (CAS) + release (sub)'}: ${r.ops_per_thread} ops per thread, alone ${r.one_thread_ns} ns/op`);
  console.log(table(['layout (2 threads)', 'ns/op', 'x padded 64', 'x alone'], r.layouts.map((l) => [l.layout, l.ns_per_op, l.vs_padded_64, l.vs_one_thread])));
}
if (!parallel) console.log('\nWARNING: padded counters cost ~2x one thread: the threads shared a core (busy machine), so these figures understate contention.');
console.log(`\n${rounds} rounds in ${out.seconds} s, loadavg ${info.loadavg_1m_at_start} → ${out.loadavg_1m_at_end} on ${out.cores} cores; wrote ${file}`);
