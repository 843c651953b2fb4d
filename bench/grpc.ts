// `npm run bench:grpc`: the gRPC front against HTTP through the same broker and the
// same mock upstream, in one run (about 2 minutes on 2 cores). The broker (compiled
// dist/main.js) runs with FRONT_THREADS=0, so both protocols are served by the same one
// thread: CPU per stream compares like with like. Servers are child processes on
// 127.0.0.1; the load generators run in this process and share the cores, so only
// ratios within one run count.
//
// 1. Chat, one stream at a time (16 tokens at 500/s, bench:llm's "short" mock): TTFT
//    p50/p99, HTTP SSE (/v1/chat/completions) vs gRPC ChatService/Chat.
// 2. Chat, 1,000 concurrent streams (128 tokens at 30/s, bench:llm's "realistic" settings),
//    kept open and replaced as they end: TTFT p50/p99, and broker CPU per completed stream
//    (the broker process's CPU over the run / streams completed). Then 1,000 again, 500 of
//    each protocol at the same time: the added TTFT p99 is judged there (see 2b below).
// 3. Unary inference, closed loop at 16 in flight: HTTP POST /v1/infer (base64 JSON) vs
//    gRPC InferenceService/Infer (raw bytes): req/s, p50, p99.
//
// Writes bench/results/grpc.json and prints markdown tables. BENCH_GRPC_SCALE (default 1)
// scales the durations; BENCH_GRPC_CHANNELS (default 2) is how many gRPC connections carry
// the concurrent streams (a gRPC client multiplexes its streams over a channel; HTTP/1.1
// needs a connection per open stream).
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { Pool } from 'undici';
import { buildDist, freePort, startBroker, type Child } from './lib/process.ts';
import { machine, mdTable, writeResults } from './lib/report.ts';
import { round, summarize, type Latency } from './lib/stats.ts';
import { fashionPng } from './lib/images.ts';
import { machineBusyS, processCpuS, startMock } from './llm/procs.ts';
import { StreamClient, type StreamRunResult } from './llm/streams.ts';
import { PROTO_FILES, PROTO_ROOT } from '../src/front/grpc/protos.ts';
import { envNumber } from './lib/args.ts';

const SCALE = Number(process.env.BENCH_GRPC_SCALE ?? '1');
if (!(SCALE > 0 && SCALE <= 1)) throw new Error(`BENCH_GRPC_SCALE must be in (0, 1], got "${process.env.BENCH_GRPC_SCALE}"`);
const s = (seconds: number): number => Math.max(1, round(seconds * SCALE, 1));

const SETTINGS = Object.freeze({
  scale: SCALE,
  broker: 'node dist/main.js, FRONT_THREADS=0 (HTTP and gRPC on the same thread), INFER_THREADS=1, LOG_LEVEL=warn',
  mocks: { short: { tokens: 16, tps: 500, ttftMs: 0 }, real: { tokens: 128, tps: 30, ttftMs: 0 } },
  single: { mock: 'short', streams: Math.round(150 * SCALE) + 10, warmup: 10 },
  // As bench:llm's realistic run: 1,000 streams started over one stream's lifetime (4.3 s),
  // replaced as they end; streams started after the ramp are recorded.
  concurrent: { mock: 'real', concurrency: 1000, ramp_ms: 4300, duration_s: s(10), drain_timeout_ms: 30_000, http_connections: 1100, grpc_channels: envNumber('BENCH_GRPC_CHANNELS', 2, { min: 1, integer: true }) },
  infer: { concurrency: 16, duration_s: s(8), warmup_s: 2, image: 'Fashion-MNIST t10k #0 as PNG' },
});

const log = (m: string): void => void process.stderr.write(`[bench:grpc] ${m}\n`);

// ---------------------------------------------------------------- gRPC clients

const def = protoLoader.loadSync([...PROTO_FILES], { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_ROOT] });
const pkg = grpc.loadPackageDefinition(def) as any;
/** Separate channels get separate connections (no shared subchannel pool), as separate clients would. */
const channelOptions = { 'grpc.use_local_subchannel_pool': 1, 'grpc.max_receive_message_length': 64 * 1024 * 1024 };

interface One {
  ttft: number;
  total: number;
  ok: boolean;
  failure?: string;
}

// The Chat client reads GenerateResponse bytes as they come, without decoding them: as
// the SSE client scans text instead of parsing JSON, so that with 1,000 streams the load
// generator, which shares the cores, stays cheap. Field numbers: proto/edge_broker/v1/chat.proto.
const ChatRaw = grpc.makeGenericClientConstructor(
  Object.fromEntries(Object.entries(pkg.edge_broker.v1.ChatService.service as grpc.ServiceDefinition).map(([k, d]) => [k, { ...d, responseDeserialize: (b: Buffer) => b }])),
  'ChatService',
);

/** A GenerateResponse holding a Delta (field 1) whose content (field 2) is not empty. */
function hasContent(b: Buffer): boolean {
  if (b[0] !== 0x0a) return false;
  let i = 1;
  while (b[i]! & 0x80) i++;
  i++;
  while (i < b.length) {
    const tag = b[i++]!;
    let len = 0;
    let shift = 1;
    let x: number;
    do {
      x = b[i++]!;
      len += (x & 0x7f) * shift;
      shift *= 128;
    } while (x & 0x80);
    if (tag === 0x12 && len > 0) return true;
    i += len;
  }
  return false;
}

/** One Chat stream: TTFT is the call start to the first delta with content. */
function grpcOne(client: any, model: string): Promise<One> {
  return new Promise((resolve) => {
    const start = performance.now();
    let ttft = -1;
    let final = false;
    const call = client.Chat({ model, messages: [{ role: 'user', content: 'Say hello in a few words.' }] });
    call.on('data', (m: Buffer) => {
      if (ttft < 0 && hasContent(m)) ttft = performance.now() - start;
      // Final is field 2 of GenerateResponse.
      if (m[0] === 0x12) final = true;
    });
    call.on('error', () => undefined);
    call.on('status', (st: grpc.StatusObject) => {
      const ok = st.code === grpc.status.OK && final && ttft >= 0;
      resolve({ ttft, total: performance.now() - start, ok, ...(ok ? {} : { failure: grpc.status[st.code] ?? String(st.code) }) });
    });
  });
}

interface SteadyResult {
  readonly concurrency: number;
  readonly streams: number;
  readonly completed: number;
  readonly completed_all: number;
  readonly failures: Record<string, number>;
  readonly ttft: Latency;
  readonly total: Latency;
  readonly elapsed_s: number;
}

/** `concurrency` gRPC streams kept open as StreamClient.steady keeps SSE ones. */
async function grpcSteady(clients: any[], model: string, o: { concurrency: number; durationS: number; rampMs: number; drainTimeoutMs: number }): Promise<SteadyResult> {
  const ttft: number[] = [];
  const total: number[] = [];
  const failures: Record<string, number> = {};
  let streams = 0;
  let completed = 0;
  let completedAll = 0;
  let open = 0;
  let n = 0;
  const t0 = performance.now();
  const endAt = t0 + o.rampMs + o.durationS * 1000;
  let drained: () => void = () => {};
  const allDone = new Promise<void>((r) => (drained = r));
  const launch = (): void => {
    const startedAt = performance.now();
    const recorded = startedAt >= t0 + o.rampMs;
    open++;
    void grpcOne(clients[n++ % clients.length], model).then((r) => {
      open--;
      if (r.ok) completedAll++;
      if (recorded) {
        streams++;
        if (r.ttft >= 0) ttft.push(r.ttft);
        if (r.ok) {
          completed++;
          total.push(r.total);
        } else failures[r.failure!] = (failures[r.failure!] ?? 0) + 1;
      }
      if (performance.now() < endAt) launch();
      else if (open === 0) drained();
    });
  };
  const timers: NodeJS.Timeout[] = [];
  for (let i = 0; i < o.concurrency; i++) timers.push(setTimeout(launch, (i * o.rampMs) / o.concurrency));
  const cut = new Promise<void>((r) => timers.push(setTimeout(r, o.rampMs + o.durationS * 1000 + o.drainTimeoutMs)));
  await Promise.race([allDone, cut]);
  for (const t of timers) clearTimeout(t);
  if (open > 0) failures.drain_timeout = open;
  return { concurrency: o.concurrency, streams: streams + open, completed, completed_all: completedAll, failures, ttft: summarize(ttft), total: summarize(total), elapsed_s: round((performance.now() - t0) / 1000, 2) };
}

/** Closed loop: `concurrency` workers calling `once` back to back for `durationS`. */
async function closedLoop(concurrency: number, durationS: number, once: () => Promise<boolean>): Promise<{ rps: number; ok: number; failed: number; latency: Latency }> {
  const lat: number[] = [];
  let ok = 0;
  let failed = 0;
  const t0 = performance.now();
  const end = t0 + durationS * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < end) {
        const a = performance.now();
        if (await once()) {
          ok++;
          lat.push(performance.now() - a);
        } else failed++;
      }
    }),
  );
  return { rps: round(ok / ((performance.now() - t0) / 1000), 1), ok, failed, latency: summarize(lat) };
}

interface Cpu {
  readonly broker_cpu_s: number;
  readonly machine_busy_s: number;
}

async function withCpu<T>(pid: number, f: () => Promise<T>): Promise<T & { cpu: Cpu }> {
  const c0 = processCpuS(pid);
  const m0 = machineBusyS();
  const r = await f();
  return { ...r, cpu: { broker_cpu_s: round(processCpuS(pid) - c0, 2), machine_busy_s: round(machineBusyS() - m0, 2) } };
}

// ---------------------------------------------------------------- run

const build = buildDist();
if (!build.ok) throw new Error(`build failed: ${build.message}`);
log(`dist built in ${build.ms} ms`);
const mocks: Record<string, Child> = {};
const stops: (() => Promise<void>)[] = [];
try {
  for (const [name, f] of Object.entries(SETTINGS.mocks)) {
    mocks[name] = await startMock(`mock-${name}`, f, 'dist');
    stops.push(() => mocks[name]!.stop());
  }
  const dir = mkdtempSync(join(tmpdir(), 'bench-grpc-'));
  const configFile = join(dir, 'broker.json');
  writeFileSync(
    configFile,
    JSON.stringify({
      modelGroups: Object.fromEntries(Object.keys(SETTINGS.mocks).map((m) => [`bench-${m}`, { deployments: [{ id: `mock-${m}`, provider: 'openai', url: `${mocks[m]!.url}/v1`, model: 'mock-model', concurrencyLimit: 2048 }] }])),
    }),
  );
  const grpcPort = await freePort();
  const broker = await startBroker('broker', { BROKER_CONFIG: configFile, FRONT_THREADS: '0', INFER_THREADS: '1', LOG_LEVEL: 'warn', GRPC_PORT: String(grpcPort) }, [], 120_000, 'dist');
  stops.push(() => broker.stop(10_000));
  const address = `127.0.0.1:${grpcPort}`;
  const chatClients = Array.from({ length: SETTINGS.concurrent.grpc_channels }, () => new ChatRaw(address, grpc.credentials.createInsecure(), channelOptions));
  const inferClient = new pkg.edge_broker.v1.InferenceService(address, grpc.credentials.createInsecure(), channelOptions);
  const sseBody = (mock: string): string => JSON.stringify({ model: `bench-${mock}`, stream: true, messages: [{ role: 'user', content: 'Say hello in a few words.' }] });

  // 1. One stream at a time.
  log('single stream: HTTP SSE');
  const httpSingle = new StreamClient(`${broker.url}/v1/chat/completions`, sseBody('short'), 4, 30_000);
  await httpSingle.run({ concurrency: 1, durationS: 60, maxRounds: SETTINGS.single.warmup, roundTimeoutMs: 30_000 });
  const single_http = await withCpu(broker.pid, () => httpSingle.run({ concurrency: 1, durationS: 120, maxRounds: SETTINGS.single.streams, roundTimeoutMs: 30_000 }));
  await httpSingle.close();
  log('single stream: gRPC');
  const grpcSingleRun = async (count: number) => {
    const ttft: number[] = [];
    let ok = 0;
    for (let i = 0; i < count; i++) {
      const r = await grpcOne(chatClients[0], 'bench-short');
      if (r.ok) {
        ok++;
        ttft.push(r.ttft);
      }
    }
    return { streams: count, completed: ok, ttft: summarize(ttft) };
  };
  await grpcSingleRun(SETTINGS.single.warmup);
  const single_grpc = await withCpu(broker.pid, () => grpcSingleRun(SETTINGS.single.streams));

  // 2. 1,000 concurrent streams.
  const c = SETTINGS.concurrent;
  log(`${c.concurrency} streams: HTTP SSE`);
  const httpMany = new StreamClient(`${broker.url}/v1/chat/completions`, sseBody('real'), c.http_connections, 60_000);
  const many_http: StreamRunResult & { cpu: Cpu } = await withCpu(broker.pid, () => httpMany.steady({ concurrency: c.concurrency, durationS: c.duration_s, rampMs: c.ramp_ms, drainTimeoutMs: c.drain_timeout_ms }));
  await httpMany.close();
  log(`${c.concurrency} streams: gRPC`);
  const many_grpc = await withCpu(broker.pid, () => grpcSteady(chatClients, 'bench-real', { concurrency: c.concurrency, durationS: c.duration_s, rampMs: c.ramp_ms, drainTimeoutMs: c.drain_timeout_ms }));

  // 2b. The same 1,000 streams, half of them HTTP SSE and half gRPC, at the same time: at
  // this load the 2 cores are saturated and TTFT is mostly the wait for them, which shifts
  // by hundreds of ms between two runs one after the other. Side by side, both protocols
  // meet the same queue, and the difference between their TTFTs is the protocol's own.
  log(`${c.concurrency} streams, half HTTP SSE and half gRPC at once`);
  const half = { concurrency: c.concurrency / 2, durationS: c.duration_s, rampMs: c.ramp_ms, drainTimeoutMs: c.drain_timeout_ms };
  const httpHalf = new StreamClient(`${broker.url}/v1/chat/completions`, sseBody('real'), c.http_connections / 2, 60_000);
  const [mixed_http, mixed_grpc] = await Promise.all([httpHalf.steady(half), grpcSteady(chatClients, 'bench-real', half)]);
  await httpHalf.close();

  // 3. Unary inference.
  const { png } = await fashionPng(0);
  const b64 = JSON.stringify({ image_b64: png.toString('base64') });
  const pool = new Pool(broker.url, { connections: SETTINGS.infer.concurrency });
  const httpInfer = async (): Promise<boolean> => {
    const r = await pool.request({ method: 'POST', path: '/v1/infer', headers: { 'content-type': 'application/json' }, body: b64 });
    await r.body.arrayBuffer();
    return r.statusCode === 200;
  };
  const grpcInfer = (): Promise<boolean> => new Promise((resolve) => inferClient.Infer({ image: png }, (err: grpc.ServiceError | null) => resolve(err === null)));
  log('infer: HTTP');
  await closedLoop(SETTINGS.infer.concurrency, SETTINGS.infer.warmup_s, httpInfer);
  const infer_http = await withCpu(broker.pid, () => closedLoop(SETTINGS.infer.concurrency, SETTINGS.infer.duration_s, httpInfer));
  log('infer: gRPC');
  await closedLoop(SETTINGS.infer.concurrency, SETTINGS.infer.warmup_s, grpcInfer);
  const infer_grpc = await withCpu(broker.pid, () => closedLoop(SETTINGS.infer.concurrency, SETTINGS.infer.duration_s, grpcInfer));
  await pool.close();
  for (const cl of [...chatClients, inferClient]) cl.close();

  const perStream = (cpu: Cpu, n: number): number => round((cpu.broker_cpu_s * 1000) / Math.max(1, n), 3);
  const cpuHttp = perStream(many_http.cpu, many_http.completed_all);
  const cpuGrpc = perStream(many_grpc.cpu, many_grpc.completed_all);
  const summary = {
    single_ttft_ms: { http: { p50: single_http.ttft.p50_ms, p99: single_http.ttft.p99_ms }, grpc: { p50: single_grpc.ttft.p50_ms, p99: single_grpc.ttft.p99_ms } },
    concurrent_ttft_ms: { http: { p50: many_http.ttft.p50_ms, p99: many_http.ttft.p99_ms }, grpc: { p50: many_grpc.ttft.p50_ms, p99: many_grpc.ttft.p99_ms } },
    concurrent_cpu_ms_per_stream: { http: cpuHttp, grpc: cpuGrpc, ratio: round(cpuGrpc / cpuHttp, 3) },
    added_ttft_p99_ms_at_1000: round(many_grpc.ttft.p99_ms - many_http.ttft.p99_ms, 2),
    mixed_ttft_ms: { http: { p50: mixed_http.ttft.p50_ms, p99: mixed_http.ttft.p99_ms, completed: mixed_http.completed }, grpc: { p50: mixed_grpc.ttft.p50_ms, p99: mixed_grpc.ttft.p99_ms, completed: mixed_grpc.completed } },
    added_ttft_p99_ms_mixed: round(mixed_grpc.ttft.p99_ms - mixed_http.ttft.p99_ms, 2),
    goals: {
      'gRPC CPU per stream within 1.2x of HTTP': cpuGrpc <= 1.2 * cpuHttp,
      // Judged side by side (2b): one after the other, the saturated machine's queue differs between the two runs by more than the goal.
      'added TTFT p99 <= 5 ms at 1,000 streams (side by side)': mixed_grpc.ttft.p99_ms - mixed_http.ttft.p99_ms <= 5,
    },
    infer: { http: { rps: infer_http.rps, p50: infer_http.latency.p50_ms, p99: infer_http.latency.p99_ms }, grpc: { rps: infer_grpc.rps, p50: infer_grpc.latency.p50_ms, p99: infer_grpc.latency.p99_ms } },
  };
  const file = writeResults('grpc', { machine: machine(), settings: SETTINGS, summary, single: { http: single_http, grpc: single_grpc }, concurrent: { http: many_http, grpc: many_grpc }, mixed: { http: mixed_http, grpc: mixed_grpc }, infer: { http: infer_http, grpc: infer_grpc } });

  console.log('\n### Chat: one stream at a time (TTFT, ms)\n');
  console.log(mdTable(['protocol', 'streams', 'p50', 'p99'], [['HTTP SSE', single_http.completed, single_http.ttft.p50_ms, single_http.ttft.p99_ms], ['gRPC', single_grpc.completed, single_grpc.ttft.p50_ms, single_grpc.ttft.p99_ms]]));
  console.log(`\n### Chat: ${c.concurrency} concurrent streams (128 tokens at 30/s)\n`);
  console.log(
    mdTable(
      ['protocol', 'completed (all)', 'failed', 'TTFT p50', 'TTFT p99', 'broker CPU s', 'CPU ms / stream'],
      [
        ['HTTP SSE', many_http.completed_all, Object.values(many_http.failures).reduce((a, b) => a + b, 0), many_http.ttft.p50_ms, many_http.ttft.p99_ms, many_http.cpu.broker_cpu_s, cpuHttp],
        ['gRPC', many_grpc.completed_all, Object.values(many_grpc.failures).reduce((a, b) => a + b, 0), many_grpc.ttft.p50_ms, many_grpc.ttft.p99_ms, many_grpc.cpu.broker_cpu_s, cpuGrpc],
      ],
    ),
  );
  console.log(`\n### Chat: ${c.concurrency} streams at once, half HTTP SSE and half gRPC (TTFT, ms)\n`);
  console.log(mdTable(['protocol', 'completed', 'TTFT p50', 'TTFT p99'], [['HTTP SSE', mixed_http.completed, mixed_http.ttft.p50_ms, mixed_http.ttft.p99_ms], ['gRPC', mixed_grpc.completed, mixed_grpc.ttft.p50_ms, mixed_grpc.ttft.p99_ms]]));
  console.log(`\n### Unary inference (${SETTINGS.infer.concurrency} in flight)\n`);
  console.log(mdTable(['protocol', 'req/s', 'p50 ms', 'p99 ms', 'failed'], [['HTTP /v1/infer', infer_http.rps, infer_http.latency.p50_ms, infer_http.latency.p99_ms, infer_http.failed], ['gRPC Infer', infer_grpc.rps, infer_grpc.latency.p50_ms, infer_grpc.latency.p99_ms, infer_grpc.failed]]));
  console.log(`\n${JSON.stringify(summary.goals)}\nwrote ${file}`);
} finally {
  for (const stop of stops.reverse()) await stop();
}
