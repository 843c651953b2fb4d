// bench:wake — how a data-plane thread (A) that frees a capacity slot wakes a request
// waiting on another data-plane thread (B), by three mechanisms:
//  control  the broker today (src/sched/scheduler.ts wakeElsewhere → src/plane/worker.ts
//           post({t:'wake'}) → src/plane/planes.ts 'wake' case on the main thread →
//           worker.postMessage → B's parentPort 'message' handler);
//  atomics  shared memory: B keeps an Atomics.waitAsync pending on a SharedArrayBuffer
//           cell; A writes its timestamp into a shared ring, bumps the cell (Atomics.store)
//           and Atomics.notify; B drains every wake the counter says it missed and re-arms;
//  port     a MessageChannel between A and B, its ports transferred at start (reference).
// Latency is from A's send (process.hrtime.bigint(): one monotonic clock for every thread)
// to the start of B's handler. Scenarios: B idle or B busy (a setImmediate loop of
// 1 ms of synthetic work per turn: how long until B notices), each with wakes one at a
// time (A waits for B's ack, then a random pause so B is asleep or mid-turn) and in
// bursts of 1,000 back to back; and the main thread (control plane) busy the same way.
// CPU per wake is each thread's own run time from /proc/thread-self/schedstat (ns),
// divided by the wakes. The main thread is the control plane: it relays 'wake' for
// control and does nothing for the others.
// Writes bench/results/wake.json. Bounded: no round starts after 30 s, nor one that
// would end past 55 s at the last round's pace.
import { Worker, MessageChannel } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { readFileSync } from 'node:fs';
import { availableParallelism, loadavg } from 'node:os';
import { machine, writeResults } from './lib/report.ts';
import { machineBusy } from './lib/proc.ts';
import { percentile, round, table } from './lib/stats.ts';
import { envNumber } from './lib/args.ts';

const ROUNDS = envNumber('WAKE_ROUNDS', 2, { min: 1, integer: true });
const SCALE = envNumber('WAKE_SCALE', 1, { min: 0.01 });
const BUDGET_MS = 30_000;
const HARD_MS = 55_000;
const MECHS = ['control', 'atomics', 'port'] as const;
type Mech = (typeof MECHS)[number];

interface Scenario {
  readonly name: string;
  /** Wakes over all rounds. */
  readonly n: number;
  /** Wakes sent back to back before A waits for B's ack. */
  readonly burst: number;
  /** A's pause before each send (or burst): gap + uniform [0, jitter) µs. */
  readonly gapUs: number;
  readonly jitterUs: number;
  /** B's synthetic work per setImmediate turn; 0 = B idle. */
  readonly busyMs: number;
  /** The same on the main thread (the control plane); 0 = idle. */
  readonly mainBusyMs: number;
}
const SCENARIOS: readonly Scenario[] = [
  { name: 'B idle, one at a time', n: 20_000 * SCALE, burst: 1, gapUs: 50, jitterUs: 100, busyMs: 0, mainBusyMs: 0 },
  { name: 'B idle, bursts of 1,000', n: 20_000 * SCALE, burst: 1000, gapUs: 200, jitterUs: 0, busyMs: 0, mainBusyMs: 0 },
  { name: 'B busy 1 ms/turn, one at a time', n: 4_000 * SCALE, burst: 1, gapUs: 0, jitterUs: 1000, busyMs: 1, mainBusyMs: 0 },
  { name: 'B busy 1 ms/turn, bursts of 1,000', n: 6_000 * SCALE, burst: 1000, gapUs: 0, jitterUs: 1000, busyMs: 1, mainBusyMs: 0 },
  { name: 'B idle, main busy 1 ms/turn, one at a time', n: 3_000 * SCALE, burst: 1, gapUs: 0, jitterUs: 1000, busyMs: 0, mainBusyMs: 1 },
];

// Shared Int32 cells, each on its own 64-byte line: the atomics wake counter, B's acks,
// and a cell that never changes (A sleeps on it for its pauses).
const SEQ = 0;
const ACK = 16;
const NAP = 32;
const RING = 4096;

// Plain JS, so the workers need no TypeScript loader.
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { readFileSync } = require('node:fs');
const { performance } = require('node:perf_hooks');
const { role } = workerData;
const [SEQ, ACK, NAP, RING] = [${SEQ}, ${ACK}, ${NAP}, ${RING}];
const sig = new Int32Array(workerData.sig);
const ring = new Float64Array(workerData.ring);
const now = () => Number(process.hrtime.bigint());
const cpuNs = () => Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
let direct;

if (role === 'A') {
  let seq = 0;
  const send = (mech) => {
    const ts = now();
    if (mech === 'atomics') {
      ring[seq % RING] = ts;
      Atomics.store(sig, SEQ, ++seq);
      Atomics.notify(sig, SEQ, 1);
    } else if (mech === 'control') {
      // src/plane/worker.ts wakeElsewhere: post({ t: 'wake', group, thread })
      parentPort.postMessage({ t: 'wake', group: 'chat', thread: 1, ts });
    } else {
      direct.postMessage({ t: 'wake', group: 'chat', ts });
    }
  };
  parentPort.on('message', (m) => {
    if (m.t === 'port') return void (direct = m.port);
    // One run: m.n wakes in bursts of m.burst, each burst acked by B before the next.
    const c0 = cpuNs();
    let sendNs = 0;
    let acked = Atomics.load(sig, ACK);
    let lost = 0;
    for (let r = 0; r < m.n / m.burst; r++) {
      const pauseUs = m.gapUs + Math.random() * m.jitterUs;
      if (pauseUs > 0) Atomics.wait(sig, NAP, 0, pauseUs / 1000);
      const s0 = now();
      for (let i = 0; i < m.burst; i++) send(m.mech);
      sendNs += now() - s0;
      const target = acked + 1;
      while ((acked = Atomics.load(sig, ACK)) < target) {
        if (Atomics.wait(sig, ACK, acked, 5000) === 'timed-out') {
          lost++;
          break;
        }
      }
    }
    parentPort.postMessage({ t: 'done', cpuNs: cpuNs() - c0, sendNs, lost });
  });
} else {
  // B: the thread with the waiting request.
  let cfg;
  let lat;
  let got = 0;
  let sinceAck = 0;
  let c0 = 0;
  let spinning = false;
  const wake = (ts, t) => {
    if (cfg === undefined) return;
    if (got < lat.length) lat[got++] = t - ts;
    if (++sinceAck === cfg.burst) {
      sinceAck = 0;
      Atomics.add(sig, ACK, 1);
      Atomics.notify(sig, ACK);
    }
  };
  // atomics: one waitAsync always pending, re-armed after each drain.
  let seen = Atomics.load(sig, SEQ);
  const drain = () => {
    const t = now();
    const cur = Atomics.load(sig, SEQ);
    for (; seen < cur; seen++) wake(ring[seen % RING], t);
  };
  const arm = () => {
    for (;;) {
      const w = Atomics.waitAsync(sig, SEQ, seen);
      if (w.async) return void w.value.then(woken);
      drain();
    }
  };
  const woken = () => {
    drain();
    arm();
  };
  arm();
  const spin = () => {
    if (!spinning) return;
    const end = performance.now() + cfg.busyMs;
    while (performance.now() < end);
    setImmediate(spin);
  };
  parentPort.on('message', (m) => {
    const t = now();
    switch (m.t) {
      case 'wake': // src/plane/worker.ts: case 'wake': gov.wake(m.group)
        return wake(m.ts, t);
      case 'port':
        direct = m.port;
        direct.on('message', (w) => wake(w.ts, now()));
        return;
      case 'arm':
        cfg = m;
        lat = new Float64Array(m.n);
        got = 0;
        sinceAck = 0;
        c0 = cpuNs();
        if (m.busyMs > 0) {
          spinning = true;
          setImmediate(spin);
        }
        return parentPort.postMessage({ t: 'armed' });
      case 'report': {
        spinning = false;
        const cpu = cpuNs() - c0;
        cfg = undefined;
        return parentPort.postMessage({ t: 'report', cpuNs: cpu, got, lat }, [lat.buffer]);
      }
    }
  });
}
`;

const sig = new SharedArrayBuffer(64 * 4);
const ring = new SharedArrayBuffer(RING * 8);
const A = new Worker(WORKER, { eval: true, workerData: { role: 'A', sig, ring } });
const B = new Worker(WORKER, { eval: true, workerData: { role: 'B', sig, ring } });
const planes = [A, B];
const cpuNs = (): number => Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);

// Replies by type, one at a time per worker.
type Reply = { t: 'done'; cpuNs: number; sendNs: number; lost: number } | { t: 'armed' } | { t: 'report'; cpuNs: number; got: number; lat: Float64Array };
const waiting = new Map<Worker, (m: Reply) => void>();
for (const w of planes) {
  w.on('error', (err) => {
    console.error(err);
    process.exit(1);
  });
  w.on('message', (m: Reply | { t: 'wake'; group: string; thread: number; ts: number }) => {
    if (m.t === 'wake') {
      // src/plane/planes.ts: case 'wake': this.send(this.planes[m.thread], { t: 'wake', group })
      const to = planes[m.thread];
      if (to !== undefined) to.postMessage({ t: 'wake', group: m.group, ts: m.ts });
      return;
    }
    const cb = waiting.get(w);
    waiting.delete(w);
    cb?.(m);
  });
}
function ask<T extends Reply['t']>(w: Worker, m: object): Promise<Extract<Reply, { t: T }>> {
  return new Promise((resolve) => {
    waiting.set(w, resolve as (m: Reply) => void);
    w.postMessage(m);
  });
}

const { port1, port2 } = new MessageChannel();
A.postMessage({ t: 'port', port: port1 }, [port1]);
B.postMessage({ t: 'port', port: port2 }, [port2]);

interface Run {
  lat: Float64Array;
  a_ns: number;
  a_send_ns: number;
  main_ns: number;
  b_ns: number;
  lost: number;
}

async function run(mech: Mech, s: Scenario, n: number): Promise<Run> {
  const cfg = { mech, n, burst: s.burst, gapUs: s.gapUs, jitterUs: s.jitterUs, busyMs: s.busyMs };
  await ask<'armed'>(B, { t: 'arm', ...cfg });
  const m0 = cpuNs();
  let spinning = s.mainBusyMs > 0;
  const spin = (): void => {
    if (!spinning) return;
    const end = performance.now() + s.mainBusyMs;
    while (performance.now() < end);
    setImmediate(spin);
  };
  if (spinning) setImmediate(spin);
  const a = await ask<'done'>(A, { t: 'run', ...cfg });
  spinning = false;
  const mainNs = cpuNs() - m0;
  const b = await ask<'report'>(B, { t: 'report' });
  return { lat: b.lat.subarray(0, b.got), a_ns: a.cpuNs, a_send_ns: a.sendNs, main_ns: mainNs, b_ns: b.cpuNs, lost: a.lost + (n - b.got) };
}

const started = performance.now();
const info = machine();
const busy0 = machineBusy();
const own0 = process.cpuUsage();
// Warm-up: every path optimised before anything is timed.
for (const mech of MECHS) {
  await run(mech, SCENARIOS[0]!, 2000);
  await run(mech, SCENARIOS[1]!, 2000);
}

const key = (s: number, mech: Mech) => `${s}:${mech}`;
const runs = new Map<string, Run[]>();
let rounds = 0;
let roundMs = 0;
for (let r = 0; r < ROUNDS && performance.now() - started < BUDGET_MS && performance.now() - started + roundMs < HARD_MS; r++) {
  rounds++;
  const r0 = performance.now();
  // Interleaved, so drift in the machine's load spreads over every mechanism alike.
  for (const [i, s] of SCENARIOS.entries()) {
    for (const mech of MECHS) {
      const n = Math.max(s.burst, Math.round(s.n / ROUNDS / s.burst) * s.burst);
      runs.set(key(i, mech), [...(runs.get(key(i, mech)) ?? []), await run(mech, s, n)]);
    }
  }
  roundMs = performance.now() - r0;
}
await Promise.all(planes.map((w) => w.terminate()));
const wallS = (performance.now() - started) / 1000;
const own = process.cpuUsage(own0);
const foreignS = Math.max(0, machineBusy() - busy0 - (own.user + own.system) / 1e6);

const us = (ns: number) => round(ns / 1000, 2);
const results = SCENARIOS.map((s, i) => ({
  scenario: s.name,
  burst: s.burst,
  b_busy_ms_per_turn: s.busyMs,
  main_busy_ms_per_turn: s.mainBusyMs,
  mechanisms: MECHS.map((mech) => {
    const all = runs.get(key(i, mech))!;
    const wakes = all.reduce((k, r) => k + r.lat.length, 0);
    const lat = new Float64Array(wakes);
    let at = 0;
    for (const r of all) {
      lat.set(r.lat, at);
      at += r.lat.length;
    }
    lat.sort();
    const sum = (f: (r: Run) => number) => all.reduce((k, r) => k + f(r), 0);
    return {
      mechanism: mech,
      wakes,
      lost: sum((r) => r.lost),
      latency_us: { p50: us(percentile(lat, 50)), p90: us(percentile(lat, 90)), p99: us(percentile(lat, 99)), max: us(lat[lat.length - 1] ?? NaN) },
      // CPU per wake, µs of each thread's own run time. A's includes its pauses and ack waits
      // (futex); B's includes the ack (Atomics.notify). Null where the thread runs synthetic work.
      cpu_us_per_wake: { a: us(sum((r) => r.a_ns) / wakes), a_send_call: us(sum((r) => r.a_send_ns) / wakes), main: s.mainBusyMs > 0 ? null : us(sum((r) => r.main_ns) / wakes), b: s.busyMs > 0 ? null : us(sum((r) => r.b_ns) / wakes) },
    };
  }),
}));

const out = {
  bench: 'wake',
  machine: info,
  loadavg_1m_at_end: round(loadavg()[0]!, 2),
  cores: availableParallelism(),
  /** CPU seconds other processes used during the bench, as a share of the machine. */
  foreign_cpu_share: round(foreignS / (wallS * availableParallelism()), 3),
  rounds,
  seconds: round(wallS, 1),
  note: 'latency: A send (hrtime) to start of B handler, µs; cpu: µs of each thread (schedstat) per wake; control = via main thread (broker today), atomics = Atomics.waitAsync on a SharedArrayBuffer cell, port = direct MessageChannel A↔B',
  results,
};
const file = writeResults('wake', out);

for (const r of results) {
  console.log(`\n${r.scenario}`);
  console.log(
    table(
      ['mechanism', 'wakes', 'p50 µs', 'p90 µs', 'p99 µs', 'max µs', 'A send µs', 'A cpu µs', 'main cpu µs', 'B cpu µs'],
      r.mechanisms.map((m) => [m.mechanism, m.wakes, m.latency_us.p50, m.latency_us.p90, m.latency_us.p99, m.latency_us.max, m.cpu_us_per_wake.a_send_call, m.cpu_us_per_wake.a, m.cpu_us_per_wake.main, m.cpu_us_per_wake.b]),
    ),
  );
  for (const m of r.mechanisms) if (m.lost > 0) console.log(`WARNING: ${m.mechanism} lost ${m.lost} wakes`);
}
if (out.foreign_cpu_share > 0.1) console.log(`\nWARNING: other processes used ${Math.round(out.foreign_cpu_share * 100)}% of the machine: latencies include their scheduling noise.`);
console.log(`\n${rounds} rounds in ${out.seconds} s, loadavg ${info.loadavg_1m_at_start} → ${out.loadavg_1m_at_end} on ${out.cores} cores; wrote ${file}`);
