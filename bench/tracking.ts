// `npm run bench:tracking`: what request tracking costs the hot path, and how many rows
// one writer sustains. A local PostgreSQL is started for the run (test/helpers/postgres.ts:
// initdb + pg_ctl in a temp dir, removed at the end).
//
// 1. Writer throughput, in this process: the same rows written by COPY (pg-copy-streams)
//    and by one multi-row INSERT over unnest() per batch, at batch sizes 500 and 2,000, on
//    one connection: rows/s. Then the TrackingWriter itself (the one the broker runs: cost,
//    budgets, ring, flush loop) fed rows without pause: its sustained rows/s.
// 2. Hot path: the compiled broker (dist/main.js, INFER_ENABLED=false, FRONT_THREADS=1 so
//    every row crosses from a data-plane thread to the writer) proxies non-streaming
//    POST /v1/chat/completions to the mock upstream at a fixed --rate (2,000 req/s) for
//    --seconds, in three settings, a fresh broker each, rotated over --rounds:
//      off             no DATABASE_URL (the default)
//      off (control)   the same again: the noise floor between two identical brokers
//      on              DATABASE_URL set: every request a row
//      on, db nice 19  the same, the PostgreSQL server and its backends at nice 19: the
//                      database's own CPU no longer competes at equal weight with the broker
//                      and the load generator on the same 2 cores (what a database on
//                      its own machine gives)
//    Reported: client p50/p99 per setting (median over rounds), and the rows written and
//    dropped by the tracked broker. Writes bench/results/tracking.json.
//
// Also (0.) the hot path's own cost in-process: the recorder per request, a row's clone
// through a port, and an in-process A/B of process CPU per request, tracking off and on.
//
//   npm run bench:tracking -- [--rounds 2] [--seconds 8] [--rate 2000] [--rows 200000] [--front-threads 1] [--in-process-rounds 6]
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { Pool as UndiciPool } from 'undici';
import { startBroker as startBrokerInProcess } from '../src/app.ts';
import { createMockUpstream } from '../src/mock-upstream/server.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import { startPostgres } from '../test/helpers/postgres.ts';
import { COPY_SQL, copyLines, INSERT_SQL, insertParams, type StoredRow } from '../src/track/encode.ts';
import { migrate, maintainPartitions } from '../src/track/migrate.ts';
import { rowOf } from '../src/track/facts.ts';
import { TrackingWriter } from '../src/track/writer.ts';
import { RowRecorder } from '../src/track/recorder.ts';
import { createMetrics } from '../src/obs/metrics.ts';
import { createLogger } from '../src/obs/logger.ts';
import { loadConfig } from '../src/config/env.ts';
import { NO_PRICES } from '../src/config/broker-config.ts';
import { paced } from './llm/paced.ts';
import { buildDist, startBroker } from './lib/process.ts';
import { cpuBetween, threadCpu } from './lib/proc.ts';
import { startMock } from './llm/procs.ts';
import { machine, mdTable, writeResults } from './lib/report.ts';
import { round } from './lib/stats.ts';
import { knownFlags, numberFlag } from './lib/args.ts';

knownFlags(['rounds', 'seconds', 'rate', 'rows', 'front-threads', 'in-process-rounds']);
const arg = (name: string, def: number): number => numberFlag(name, def, { min: name === 'front-threads' ? 0 : 1, integer: name !== 'seconds' });
const ROUNDS = arg('rounds', 2);
const SECONDS = arg('seconds', 8);
const RATE = arg('rate', 2000);
const ROWS = arg('rows', 200_000);
const FRONT_THREADS = arg('front-threads', 1);
const MAX_CONNECTIONS = 256;

/** Sum of a metric's samples in /metrics text. */
function metricSum(text: string, name: string): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m !== null && m[1] === name) sum += Number(m[3]);
  }
  return sum;
}

/**
 * 0. In this process, no HTTP: the hot path's own cost per request, which load elsewhere on
 * the machine moves far less than a latency percentile: RowRecorder.end (what the front calls
 * when a request ends) plus the end-of-turn row build and hand-over, and the structured clone
 * of a thread's batch through a MessagePort (50 rows a message), per row. Best of 15 trials.
 */
async function micro(): Promise<{ recorder_us_per_request: number; port_clone_us_per_row: number }> {
  const { MessageChannel } = await import('node:worker_threads');
  let handed = 0;
  const rec = new RowRecorder({ hand: (r) => (handed += r.length), maxRows: 1_000_000, dropped: () => undefined });
  let best = Infinity;
  for (let trial = 0; trial < 15; trial++) {
    const N = 20_000;
    const t0 = performance.now();
    for (let i = 0; i < N; i++) {
      const f = rec.start('openai.chat')!;
      f.model = 'bench';
      f.deployment = 'mock-1';
      f.label = 'bench';
      f.promptTokens = 12;
      f.completionTokens = 16;
      rec.end(f, 'abc123', t0, 'http', '/v1/chat/completions', 200, undefined, false);
    }
    rec.flush();
    best = Math.min(best, ((performance.now() - t0) / N) * 1000);
  }
  const batch = Array.from({ length: 50 }, (_, i) => rowOf({ api: 'openai.chat', model: 'bench', deployment: 'mock-1', label: 'bench', promptTokens: 12, completionTokens: 16 }, `req-${i}`, 'http', '/v1/chat/completions', 200, undefined, false, 2.5, Date.now()));
  const { port1, port2 } = new MessageChannel();
  let got = 0;
  port2.on('message', (m: unknown[]) => (got += m.length));
  let bestClone = Infinity;
  for (let trial = 0; trial < 15; trial++) {
    const M = 400;
    got = 0;
    const t0 = performance.now();
    for (let i = 0; i < M; i++) port1.postMessage(batch);
    while (got < M * batch.length) await new Promise((r) => setImmediate(r));
    bestClone = Math.min(bestClone, ((performance.now() - t0) / (M * batch.length)) * 1000);
  }
  port1.close();
  port2.close();
  return { recorder_us_per_request: round(best, 3), port_clone_us_per_row: round(bestClone, 3) };
}
const microFigures = await micro();
console.log('hot path, in-process:', microFigures);

/**
 * 0b. An A/B in this one process: a broker with tracking off and one with it on
 * (FRONT_THREADS=0, the mock upstream and the load generator in-process too), alternated,
 * process CPU per request. Both sides pay the same client and mock, so the difference is
 * tracking's own (recorder, writer, COPY encoding and the pg client; PostgreSQL's own CPU
 * is another process, not counted); load elsewhere on the machine moves both alike.
 */
async function inProcess(pgUrl: string, rounds: number, requests: number): Promise<Record<'off' | 'on', { us_per_req: number[]; median: number }>> {
  const mock = await createMockUpstream({ tokens: 16 });
  const d = mkdtempSync(join(tmpdir(), 'eb-bench-tracking-ip-'));
  writeFileSync(join(d, 'fleet.json'), JSON.stringify({ modelGroups: { bench: { deployments: [{ id: 'mock-1', provider: 'openai', url: mock.url, model: 'm', concurrencyLimit: 256 }] } }, prices: { models: { bench: { inputPer1M: 1, outputPer1M: 2 } } } }));
  const quiet = new Writable({ write: (_c, _e, cb) => cb() });
  const start = (env: Record<string, string>) =>
    startBrokerInProcess(loadConfig({ PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'warn', FRONT_THREADS: '0', GRPC_PORT: '0', INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false', BROKER_CONFIG: join(d, 'fleet.json'), ...env }), { logDestination: quiet });
  const body1 = JSON.stringify({ model: 'bench', messages: [{ role: 'user', content: 'Say something.' }], max_tokens: 16 });
  const load = async (port: number, n: number): Promise<void> => {
    const pool = new UndiciPool(`http://127.0.0.1:${port}`, { connections: 16 });
    let left = n;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (left-- > 0) await (await pool.request({ method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json' }, body: body1 })).body.text();
      }),
    );
    await pool.close();
  };
  const brokers = { off: await start({}), on: await start({ DATABASE_URL: pgUrl }) };
  for (const n of ['off', 'on'] as const) await load(brokers[n].port, 2000);
  const out = { off: [] as number[], on: [] as number[] };
  for (let r = 0; r < rounds; r++) {
    for (const name of r % 2 === 0 ? (['off', 'on'] as const) : (['on', 'off'] as const)) {
      const c0 = process.cpuUsage();
      await load(brokers[name].port, requests);
      // Both wait the same, so that the tracked broker's last flush is counted in its own window.
      await new Promise((res) => setTimeout(res, 400));
      const c = process.cpuUsage(c0);
      out[name].push(round((c.user + c.system) / requests, 1));
    }
  }
  await Promise.all([brokers.off.close(100), brokers.on.close(2000)]);
  await mock.close();
  const med = (xs: number[]): number => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
  return { off: { us_per_req: out.off, median: med(out.off) }, on: { us_per_req: out.on, median: med(out.on) } };
}

/** Sets the nice value of a cluster's postmaster and of every process it has forked. */
function reniceCluster(dataDir: string, nice: number): void {
  const pid = readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]!.trim();
  const children = spawnSync('pgrep', ['-P', pid], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
  const r = spawnSync('renice', ['-n', String(nice), '-p', pid, ...children], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`renice failed: ${r.stderr}`);
}

const teardowns: (() => unknown)[] = [];
const pgc = await startPostgres({ teardown: (fn) => teardowns.push(fn) });
try {
  const inProcessFigures = await inProcess(await pgc.createDatabase('in_process'), arg('in-process-rounds', 6), 4000);
  console.log('in-process A/B, process CPU µs per request:', inProcessFigures);

  // ---------------------------------------------------------------- 1. writer throughput
  const now = Date.now();
  const rows: StoredRow[] = Array.from({ length: 2000 }, (_, i) => ({
    ...rowOf({ api: 'openai.chat', model: 'bench', deployment: 'mock-1', keyId: 'k_0123456789ab', label: 'bench', priority: 5, promptTokens: 12, completionTokens: 16, queueMs: 0.05, ttftMs: 1.2, upstreamMs: 1.5, retries: 0 }, `req-${i}`, 'http', '/v1/chat/completions', 200, undefined, false, 2.5, now),
    cost: 0.00004,
    replica: 'bench',
  }));
  const direct: Record<string, number> = {};
  for (const mode of ['copy', 'insert'] as const) {
    for (const batch of [500, 2000]) {
      const db = await pgc.createDatabase(`w_${mode}_${batch}`);
      const pool = new pg.Pool({ connectionString: db, max: 1 });
      await migrate(pool);
      await maintainPartitions(pool, now, 1, 30);
      const slice = rows.slice(0, batch);
      const batches = Math.ceil(ROWS / batch);
      const client = await pool.connect();
      const t0 = performance.now();
      for (let b = 0; b < batches; b++) {
        if (mode === 'copy') await pipeline(Readable.from([copyLines(slice)]), client.query(copyFrom(COPY_SQL)));
        else await client.query(INSERT_SQL, insertParams(slice));
      }
      const s = (performance.now() - t0) / 1000;
      client.release();
      await pool.end();
      direct[`${mode} ×${batch}`] = Math.round((batches * batch) / s);
      console.log(`${mode}, batches of ${batch}: ${direct[`${mode} ×${batch}`]} rows/s`);
    }
  }

  // The broker's own writer, fed without pause.
  const writerFigures: Record<string, number> = {};
  for (const mode of ['copy', 'insert'] as const) {
    const db = await pgc.createDatabase(`writer_${mode}`);
    const metrics = createMetrics({ defaults: false });
    const config = loadConfig({ DATABASE_URL: db, TRACKING_BUFFER_ROWS: String(ROWS + 1), TRACKING_WRITE_MODE: mode }).tracking!;
    const writer = new TrackingWriter({ config, replica: 'bench', logger: createLogger('warn'), metrics, prices: () => NO_PRICES, budgets: () => new Map(), onSpend: () => undefined });
    await writer.start();
    const t0 = performance.now();
    for (let n = 0; n < ROWS; n += 1000) writer.accept(rows.slice(0, 1000));
    while (writer.buffered > 0) await new Promise((r) => setTimeout(r, 5));
    const s = (performance.now() - t0) / 1000;
    await writer.close(Date.now() + 5000);
    writerFigures[mode] = Math.round(ROWS / s);
    console.log(`TrackingWriter (${mode}, batches of ${config.batchRows}): ${writerFigures[mode]} rows/s sustained`);
  }

  // ---------------------------------------------------------------- 2. the hot path
  const built = buildDist();
  if (!built.ok) throw new Error(`build failed: ${built.message}`);
  const mock = await startMock('mock', { tokens: 16, tps: 0, ttftMs: 0 }, 'dist');
  const dir = mkdtempSync(join(tmpdir(), 'eb-bench-tracking-'));
  const fleetFile = join(dir, 'fleet.json');
  writeFileSync(fleetFile, JSON.stringify({ modelGroups: { bench: { deployments: [{ id: 'mock-1', provider: 'openai', url: mock.url, model: 'm', concurrencyLimit: 512 }] } }, prices: { models: { bench: { inputPer1M: 1, outputPer1M: 2 } } } }));
  const body = JSON.stringify({ model: 'bench', messages: [{ role: 'user', content: 'Say something.' }], max_tokens: 16 });
  const SETTINGS = ['off', 'off (control)', 'on', 'on, db nice 19'] as const;
  type Setting = (typeof SETTINGS)[number];
  const runs: Record<Setting, { p50_ms: number; p99_ms: number; rps: number; non_2xx: number; cpu_us_per_req: number; control_plane_us_per_req: number; rows_written?: number; rows_dropped?: number }[]> = { off: [], 'off (control)': [], on: [], 'on, db nice 19': [] };
  for (let r = 0; r < ROUNDS; r++) {
    for (let i = 0; i < SETTINGS.length; i++) {
      const name = SETTINGS[(i + r) % SETTINGS.length]!;
      const db = name.startsWith('on') ? await pgc.createDatabase(`hot_${r}_${i}`) : undefined;
      // Backends fork from the postmaster and inherit its nice value.
      reniceCluster(pgc.dataDir, name === 'on, db nice 19' ? 19 : 0);
      const b = await startBroker(`broker ${name}`, { BROKER_CONFIG: fleetFile, INFER_ENABLED: 'false', FRONT_THREADS: String(FRONT_THREADS), FLEET_HEALTH_CHECKS: 'false', GRPC_PORT: '0', ...(db !== undefined ? { DATABASE_URL: db } : {}) }, [], 60_000, 'dist');
      try {
        // The open-loop paced client of bench:llm (autocannon's overallRate sends each second's
        // requests in one burst and measures that burst's queueing, bench/llm/paced.ts).
        const load = (durationS: number) => paced({ url: `${b.url}/v1/chat/completions`, body, rate: RATE, durationS, maxConnections: MAX_CONNECTIONS, timeoutMs: 5000 });
        await load(1);
        const cpu0 = threadCpu(b.pid);
        const res = await load(SECONDS);
        const cpu = cpuBetween(b.pid, cpu0, threadCpu(b.pid));
        const served = res.achieved_rps * SECONDS;
        // The last rows are flushed within TRACKING_FLUSH_MS (250 ms by default).
        await new Promise((res) => setTimeout(res, 600));
        const text = await (await fetch(`${b.url}/metrics`)).text();
        runs[name].push({
          p50_ms: res.latency.p50_ms,
          p99_ms: res.latency.p99_ms,
          rps: res.achieved_rps,
          non_2xx: res.non_2xx,
          // The broker's CPU per request over the window: the whole process, and its main
          // thread (the control plane, where the writer runs). Steadier than latency on a
          // shared machine.
          cpu_us_per_req: round(((cpu.main_s + cpu.other_threads_s) * 1e6) / served),
          control_plane_us_per_req: round((cpu.main_s * 1e6) / served),
          ...(db !== undefined ? { rows_written: metricSum(text, 'tracking_rows_written_total'), rows_dropped: metricSum(text, 'tracking_rows_dropped_total') } : {}),
        });
        const last = runs[name].at(-1)!;
        console.log(`round ${r + 1} ${name}: p50 ${res.latency.p50_ms} ms, p99 ${res.latency.p99_ms} ms, ${res.achieved_rps} req/s, broker CPU ${last.cpu_us_per_req} µs/req (control plane ${last.control_plane_us_per_req})`);
      } finally {
        await b.stop(15_000);
      }
    }
  }
  await mock.stop();
  const med = (xs: number[]): number => {
    const s = [...xs].sort((a, b) => a - b);
    return s.length % 2 === 1 ? s[s.length >> 1]! : round((s[s.length / 2 - 1]! + s[s.length / 2]!) / 2);
  };
  const summary = Object.fromEntries(SETTINGS.map((n) => [n, { p50_ms: med(runs[n].map((x) => x.p50_ms)), p99_ms: med(runs[n].map((x) => x.p99_ms)), rps: med(runs[n].map((x) => x.rps)), cpu_us_per_req: med(runs[n].map((x) => x.cpu_us_per_req)), control_plane_us_per_req: med(runs[n].map((x) => x.control_plane_us_per_req)) }])) as Record<Setting, { p50_ms: number; p99_ms: number; rps: number; cpu_us_per_req: number; control_plane_us_per_req: number }>;
  const results = {
    machine: machine(),
    settings: { rounds: ROUNDS, seconds: SECONDS, rate: RATE, rows: ROWS, front_threads: FRONT_THREADS, max_connections: MAX_CONNECTIONS, client: 'bench/llm/paced.ts (open loop)' },
    hot_path_micro: microFigures,
    in_process_cpu_us_per_request: inProcessFigures,
    writer_rows_per_s: { direct_one_connection: direct, tracking_writer: writerFigures },
    hot_path: { runs, summary, on_minus_off_p50_ms: round(summary.on.p50_ms - summary.off.p50_ms), on_db_nice_minus_off_p50_ms: round(summary['on, db nice 19'].p50_ms - summary.off.p50_ms), on_db_nice_minus_off_p99_ms: round(summary['on, db nice 19'].p99_ms - summary.off.p99_ms), control_minus_off_p50_ms: round(summary['off (control)'].p50_ms - summary.off.p50_ms), on_minus_off_p99_ms: round(summary.on.p99_ms - summary.off.p99_ms), control_minus_off_p99_ms: round(summary['off (control)'].p99_ms - summary.off.p99_ms) },
  };
  console.log('\n' + mdTable(['write path', 'rows/s'], Object.entries(direct).map(([k, v]) => [k, v])));
  console.log('\n' + mdTable(['TrackingWriter', 'rows/s'], Object.entries(writerFigures).map(([k, v]) => [k, v])));
  console.log('\n' + mdTable(['setting', 'p50 ms', 'p99 ms', 'req/s', 'broker CPU µs/req', 'of which control plane'], SETTINGS.map((n) => [n, summary[n].p50_ms, summary[n].p99_ms, summary[n].rps, summary[n].cpu_us_per_req, summary[n].control_plane_us_per_req])));
  console.log(`\nwrote ${writeResults('tracking', results)}`);
} finally {
  for (const fn of teardowns.reverse()) await fn();
}
