// `npm run bench:llm`: the LLM proxy against the upstream it proxies and against a
// peer gateway, in one run (about 4 minutes on 2 cores). Every server is its own
// child process on 127.0.0.1; the load generators run in this process.
//
//   mock-small    mock upstream, 16-token replies at once (non-streaming)
//   mock-stream   mock upstream, 32 tokens at 200 tokens/s (streams overlap)
//   broker-thread the broker, LLM_EXECUTION=thread
//   broker-pool   the broker, LLM_EXECUTION=pool (streaming only)
//   portkey       @portkey-ai/gateway (non-streaming only: its streaming fails on Node 20)
//   floor-proxy   a reference, not a contender: the least a uWS + undici proxy does
//                 (bench/llm/floor-proxy.ts), to split the broker's overhead into the
//                 price of an extra hop on this machine and the broker's own work
//
// 1. Non-streaming POST /v1/chat/completions, direct vs broker vs Portkey (and floor):
//    max req/s (autocannon, 50 connections); latency at fixed rates with an open-loop
//    paced client (bench/llm/paced.ts: why not autocannon's overallRate is explained
//    there; its figures are recorded too); broker overhead = broker - direct.
// 2. Streaming (SSE), direct vs broker thread vs broker pool, 1 and 1,000 concurrent
//    streams (bench/llm/streams.ts): TTFT, total time, completion, broker RSS.
// 3. Thread vs pool, from 2.
//
// Writes bench/results/llm.json. Only ratios within one run count: the load generator
// shares the cores with the servers. BENCH_LLM_SCALE (default 1) scales every duration,
// for a quick try; results of a scaled run are marked. `-- --cpu-prof` instead profiles
// the broker under the non-streaming max-rate load and prints its top self-time
// functions (no results file).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync, renameSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { join, relative } from 'node:path';
import { performance } from 'node:perf_hooks';
import { cannon, type CannonResult } from './llm/cannon.ts';
import { paced, type PacedResult } from './llm/paced.ts';
import { ROOT, startBroker, type Child } from './lib/process.ts';
import { round, sleep, table } from './lib/stats.ts';
import { cpuAccount, rssMiB, rssPeak, startFloorProxy, startMock, startPortkey, waitForQuietMachine, type CpuUse } from './llm/procs.ts';
import { profileSummary } from './llm/profile.ts';
import { bucketPercentile, histogramDelta, promHistogram, type PromHistogram } from './llm/stats.ts';
import { StreamClient, type StreamRunResult } from './llm/streams.ts';

const SCALE = Number(process.env.BENCH_LLM_SCALE ?? '1');
if (!(SCALE > 0 && SCALE <= 1)) throw new Error(`BENCH_LLM_SCALE must be in (0, 1], got "${process.env.BENCH_LLM_SCALE}"`);
const s = (seconds: number): number => Math.max(0.5, round(seconds * SCALE, 1));

const SETTINGS = Object.freeze({
  scale: SCALE,
  route: '/v1/chat/completions',
  broker_env: { LLM_EXECUTION: 'thread | pool', LLM_POOL_THREADS: '1', INFER_THREADS: '1', RATE_LIMIT_RPS: '0', LOG_LEVEL: 'warn' },
  non_streaming: {
    mock: { tokens: 16, tps: 0, ttftMs: 0 },
    deployment_concurrency_limit: 256,
    warmup_s: s(2),
    max_rps: { tool: 'autocannon', connections: 50, duration_s: s(8) },
    fixed_rates_rps: [500, 2000],
    fixed_rate_duration_s: s(8),
    paced: { tool: 'bench/llm/paced.ts (open loop, raw HTTP/1.1 keep-alive)', max_connections: 256, timeout_ms: 5000 },
    autocannon_overall_rate: { connections: 20 },
    /** A fixed rate is run through Portkey only if it is at most this share of Portkey's max req/s. */
    portkey_sustainable_share: 0.8,
    floor_proxy: 'bench/llm/floor-proxy.ts: uWS + undici pool, body parsed and re-written, reply passed through (a reference)',
    portkey_headers: { 'x-portkey-provider': 'openai', 'x-portkey-custom-host': 'http://127.0.0.1:<mock-small>/v1', authorization: 'Bearer x' },
  },
  streaming: {
    mock: { tokens: 32, tps: 200, ttftMs: 0 },
    deployment_concurrency_limit: 1024,
    client: 'bench/llm/streams.ts (undici Pool.dispatch)',
    client_connections: 1100,
    stream_timeout_ms: 30_000,
    single: { concurrency: 1, duration_s: s(6), max_streams: 200 },
    /** The brief's measure: 1,000 streams opened at once, repeated in rounds. */
    many: { concurrency: 1000, duration_s: s(8), max_rounds: 10, round_timeout_ms: 30_000 },
    /** Extra: 1,000 streams kept open, started over a ramp and replaced as they end (no arrival burst). */
    steady: { concurrency: 1000, duration_s: s(8), ramp_ms: 500, drain_timeout_ms: 30_000 },
    rss_sample_every_ms: 50,
  },
});

const GOALS = Object.freeze({
  overhead_p50_ms_at_2000: 0.15,
  overhead_p99_ms_at_2000: 0.5,
  broker_vs_portkey_max_rps: 5,
  added_ttft_p99_ms_at_1000: 1,
  rss_mib_at_1000: 200,
});

/** Waiting for a quiet machine before measuring, and when a run counts as disturbed. */
const QUIET = Object.freeze({ benches_max_s: 600, cpu_max_s: 120, max_busy_share_at_start: 0.25, noisy_other_cpu_share: 0.15 });

const log = (msg: string): void => void process.stderr.write(`[bench:llm] ${msg}\n`);
const PATH = SETTINGS.route;

type NsPath = 'direct' | 'floor' | 'broker' | 'portkey';
type StreamPath = 'direct' | 'thread' | 'pool';
interface Target {
  readonly url: string;
  readonly headers: Record<string, string>;
}

function machine() {
  return {
    node: process.version,
    platform: `${process.platform}-${process.arch}`,
    cpus: availableParallelism(),
    cpu_model: cpus()[0]?.model ?? 'unknown',
    memory_gib: Math.round(totalmem() / 2 ** 30),
    loadavg_1m_at_start: round(loadavg()[0]!, 2),
    date: new Date().toISOString(),
  };
}

function writeResults(results: unknown): string {
  const dir = join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'llm.json');
  writeFileSync(`${file}.tmp`, JSON.stringify(results, null, 2) + '\n');
  renameSync(`${file}.tmp`, file);
  return file;
}

/** broker_overhead_seconds for one route, from the broker's /metrics. */
async function overheadHistogram(broker: Child, route: 'llm' | 'llm_stream'): Promise<PromHistogram> {
  const res = await fetch(`${broker.url}/metrics`);
  return promHistogram(await res.text(), 'broker_overhead_seconds', `route="${route}"`);
}

function overheadSummary(h: PromHistogram) {
  return {
    count: h.count,
    mean_ms: h.count > 0 ? round((h.sum / h.count) * 1000, 4) : null,
    // Upper bounds of the bucket holding the percentile (the buckets are coarse).
    p50_le_ms: h.count > 0 ? round(bucketPercentile(h, 50) * 1000, 3) : null,
    p99_le_ms: h.count > 0 ? round(bucketPercentile(h, 99) * 1000, 3) : null,
  };
}

/** Runs whose CPU share used by other processes exceeded QUIET.noisy_other_cpu_share. */
const noisyRuns: string[] = [];
/** Every server started; a run after which one has exited is thrown away with the whole bench. */
const servers: Child[] = [];

function checkServers(label: string): void {
  for (const c of servers) {
    const how = c.exited();
    if (how !== undefined) {
      throw new Error(`${c.name} (pid ${c.pid}) exited (${how}) during ${label}, not stopped by the bench: something else on the machine ended it (a broad pkill?). No results written.\n${c.output().slice(-500)}`);
    }
  }
}

async function withCpu<T>(label: string, pids: Record<string, number>, f: () => Promise<T>): Promise<T & { cpu: CpuUse }> {
  const acct = cpuAccount(pids);
  const r = await f();
  const cpu = acct.stop();
  checkServers(label);
  const share = cpu.other_s / Math.max(0.001, cpu.window_s * availableParallelism());
  if (share > QUIET.noisy_other_cpu_share) {
    noisyRuns.push(`${label}: other processes used ${Math.round(share * 100)}% of the CPU`);
    log(`  (disturbed: other processes used ${Math.round(share * 100)}% of the CPU during ${label})`);
  }
  return { ...r, cpu };
}

/** The broker's feature flags in effect: the defaults of src/config/flags.ts, and any BROKER_FF_* this process passes on. */
async function brokerFlags() {
  let defaults: unknown = 'unknown';
  try {
    defaults = (await import('../src/config/flags.ts')).FLAGS;
  } catch {
    // an older or newer tree without flags.ts
  }
  return { defaults, from_env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('BROKER_FF_'))) };
}

/** The code under test: src/ changes while other people work, so say which. */
function sourceState() {
  const git = (...args: string[]): string => {
    try {
      return execFileSync('git', args, { cwd: ROOT, encoding: 'utf8' }).trim();
    } catch {
      return 'unknown';
    }
  };
  const dirty = git('status', '--porcelain', '--', 'src');
  return { commit: git('rev-parse', 'HEAD'), src_uncommitted_changes: dirty === '' ? 0 : dirty.split('\n').length };
}

const nonStreamBody = JSON.stringify({ model: 'bench-small', messages: [{ role: 'user', content: 'Say hello in a few words.' }] });
const streamBody = JSON.stringify({ model: 'bench-stream', stream: true, messages: [{ role: 'user', content: 'Say hello in a few words.' }] });

function brokerConfig(small: Child, stream: Child): string {
  const dir = mkdtempSync(join(tmpdir(), 'bench-llm-'));
  const file = join(dir, 'broker.json');
  const dep = (id: string, mock: Child, limit: number) => ({ id, provider: 'openai', url: `${mock.url}/v1`, model: 'mock-model', concurrencyLimit: limit });
  writeFileSync(
    file,
    JSON.stringify({
      modelGroups: {
        'bench-small': { deployments: [dep('mock-small', small, SETTINGS.non_streaming.deployment_concurrency_limit)] },
        'bench-stream': { deployments: [dep('mock-stream', stream, SETTINGS.streaming.deployment_concurrency_limit)] },
      },
    }),
  );
  return file;
}

function brokerEnv(configFile: string, mode: 'thread' | 'pool'): Record<string, string> {
  return { BROKER_CONFIG: configFile, LLM_EXECUTION: mode, LLM_POOL_THREADS: '1', INFER_THREADS: '1', RATE_LIMIT_RPS: '0', LOG_LEVEL: 'warn' };
}

// ---------------------------------------------------------------------------------
// 1. Non-streaming

interface FixedRate<R> {
  readonly direct: R;
  readonly floor: R;
  readonly broker: R;
  readonly portkey: R | { readonly skipped: string };
  /** broker - direct, ms: what the goals are about. */
  readonly overhead_ms: { readonly p50: number; readonly p99: number };
  /** floor-proxy - direct, ms: the price of an extra hop through a minimal proxy here. */
  readonly floor_overhead_ms: { readonly p50: number; readonly p99: number };
  /** broker - floor-proxy, ms: the broker's own share. */
  readonly broker_over_floor_ms: { readonly p50: number; readonly p99: number };
  readonly broker_overhead_metric: ReturnType<typeof overheadSummary>;
}

async function nonStreaming(mock: Child, floor: Child, broker: Child, portkey: Child) {
  const ns = SETTINGS.non_streaming;
  const targets: Record<NsPath, Target> = {
    direct: { url: mock.url + PATH, headers: {} },
    floor: { url: floor.url + PATH, headers: {} },
    broker: { url: broker.url + PATH, headers: {} },
    portkey: { url: portkey.url + PATH, headers: { 'x-portkey-provider': 'openai', 'x-portkey-custom-host': `${mock.url}/v1`, authorization: 'Bearer x' } },
  };
  const pids = { mock_small: mock.pid, floor_proxy: floor.pid, broker_thread: broker.pid, portkey: portkey.pid };
  const order: NsPath[] = ['direct', 'floor', 'broker', 'portkey'];
  const metricAt0 = await overheadHistogram(broker, 'llm');

  for (const p of order) {
    log(`non-streaming warm-up: ${p}`);
    await cannon({ url: targets[p].url, body: nonStreamBody, headers: targets[p].headers, connections: ns.max_rps.connections, durationS: ns.warmup_s });
  }

  const max = {} as Record<NsPath, CannonResult & { cpu: CpuUse }>;
  let maxMetric: PromHistogram | undefined;
  for (const p of order) {
    const before = p === 'broker' ? await overheadHistogram(broker, 'llm') : undefined;
    max[p] = await withCpu(`max req/s ${p}`, pids, () => cannon({ url: targets[p].url, body: nonStreamBody, headers: targets[p].headers, connections: ns.max_rps.connections, durationS: ns.max_rps.duration_s }));
    if (before !== undefined) maxMetric = histogramDelta(before, await overheadHistogram(broker, 'llm'));
    log(`max req/s ${p}: ${max[p].rps} (p50 ${max[p].latency.p50_ms} ms, errors ${max[p].errors + max[p].non_2xx})`);
    await sleep(500);
  }
  // Server CPU per reply: where a path spends its CPU, apart from the load generator.
  const cpuPerReplyUs = (r: CannonResult & { cpu: CpuUse }, procs: string[]) =>
    round((procs.reduce((a, k) => a + (r.cpu.by_process_s[k] ?? 0), 0) * 1e6) / Math.max(1, r.ok), 1);
  const maxRps = {
    ...max,
    ratio_broker_vs_portkey: round(max.broker.rps / max.portkey.rps, 2),
    ratio_broker_vs_direct: round(max.broker.rps / max.direct.rps, 3),
    ratio_broker_vs_floor: round(max.broker.rps / max.floor.rps, 3),
    server_cpu_us_per_reply: {
      direct: { mock: cpuPerReplyUs(max.direct, ['mock_small']) },
      floor: { mock: cpuPerReplyUs(max.floor, ['mock_small']), floor_proxy: cpuPerReplyUs(max.floor, ['floor_proxy']) },
      broker: { mock: cpuPerReplyUs(max.broker, ['mock_small']), broker: cpuPerReplyUs(max.broker, ['broker_thread']) },
      portkey: { mock: cpuPerReplyUs(max.portkey, ['mock_small']), portkey: cpuPerReplyUs(max.portkey, ['portkey']) },
    },
    broker_overhead_metric: overheadSummary(maxMetric!),
  };

  const portkeyCeiling = ns.portkey_sustainable_share * max.portkey.rps;
  const fixed = async <R extends { latency: { p50_ms: number; p99_ms: number } }>(label: string, run: (t: Target, rate: number) => Promise<R>) => {
    const out: Record<string, FixedRate<R & { cpu: CpuUse }>> = {};
    for (const rate of ns.fixed_rates_rps) {
      const r = {} as Record<NsPath, (R & { cpu: CpuUse }) | { skipped: string }>;
      let metric: PromHistogram | undefined;
      for (const p of order) {
        if (p === 'portkey' && rate > portkeyCeiling) {
          r[p] = { skipped: `${rate} req/s is above ${ns.portkey_sustainable_share} x Portkey's max (${max.portkey.rps} req/s in this run)` };
          continue;
        }
        const before = p === 'broker' ? await overheadHistogram(broker, 'llm') : undefined;
        r[p] = await withCpu(`${label} ${rate}/s ${p}`, pids, () => run(targets[p], rate));
        if (before !== undefined) metric = histogramDelta(before, await overheadHistogram(broker, 'llm'));
        const x = r[p] as R;
        log(`${label} ${rate}/s ${p}: p50 ${x.latency.p50_ms} ms, p99 ${x.latency.p99_ms} ms`);
        await sleep(500);
      }
      const d = r.direct as R;
      const f = r.floor as R;
      const b = r.broker as R;
      const diff = (x: R, y: R) => ({ p50: round(x.latency.p50_ms - y.latency.p50_ms), p99: round(x.latency.p99_ms - y.latency.p99_ms) });
      out[String(rate)] = {
        direct: r.direct as R & { cpu: CpuUse },
        floor: r.floor as R & { cpu: CpuUse },
        broker: r.broker as R & { cpu: CpuUse },
        portkey: r.portkey,
        overhead_ms: diff(b, d),
        floor_overhead_ms: diff(f, d),
        broker_over_floor_ms: diff(b, f),
        broker_overhead_metric: overheadSummary(metric!),
      };
    }
    return out;
  };

  const fixedPaced = await fixed<PacedResult>('paced', (t, rate) =>
    paced({ url: t.url, body: nonStreamBody, headers: t.headers, rate, durationS: ns.fixed_rate_duration_s, maxConnections: ns.paced.max_connections, timeoutMs: ns.paced.timeout_ms }),
  );
  const fixedCannon = await fixed<CannonResult>('autocannon overallRate', (t, rate) =>
    cannon({ url: t.url, body: nonStreamBody, headers: t.headers, connections: ns.autocannon_overall_rate.connections, durationS: ns.fixed_rate_duration_s, overallRate: rate }),
  );

  const whole = histogramDelta(metricAt0, await overheadHistogram(broker, 'llm'));
  return {
    max_rps: maxRps,
    fixed_rate: fixedPaced,
    fixed_rate_autocannon_overall_rate: fixedCannon,
    /** broker_overhead_seconds{route="llm"} over the whole non-streaming section (warm-up included). */
    broker_overhead_metric: overheadSummary(whole),
  };
}

/** One streamed request through Portkey, to record how it fails (PEERS.md: `TypeError: immutable` on Node 20). */
async function portkeyStreamProbe(portkey: Child, mockStream: Child) {
  try {
    const res = await fetch(portkey.url + PATH, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-portkey-provider': 'openai', 'x-portkey-custom-host': `${mockStream.url}/v1`, authorization: 'Bearer x' },
      body: streamBody,
      signal: AbortSignal.timeout(10_000),
    });
    const text = await res.text();
    return { status: res.status, done_seen: text.includes('data: [DONE]'), body_start: text.slice(0, 120), log_says_immutable: portkey.output().includes('immutable') };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

// ---------------------------------------------------------------------------------
// 2. Streaming

async function streaming(mock: Child, thread: Child, pool: Child) {
  const st = SETTINGS.streaming;
  const children: Record<StreamPath, Child> = { direct: mock, thread, pool };
  const order: StreamPath[] = ['direct', 'thread', 'pool'];
  const pids = { mock_stream: mock.pid, broker_thread: thread.pid, broker_pool: pool.pid };
  const clients = Object.fromEntries(order.map((p) => [p, new StreamClient(children[p].url + PATH, streamBody, st.client_connections, st.stream_timeout_ms)])) as Record<StreamPath, StreamClient>;
  try {
    // Warm-up of the JIT on every path; connections are opened again right before each
    // 1,000-stream run (below), as idle ones are dropped after 4 s.
    const warm = (p: StreamPath) => clients[p].run({ concurrency: st.many.concurrency, durationS: 0, maxRounds: 1, roundTimeoutMs: st.many.round_timeout_ms });
    for (const p of order) {
      log(`streaming warm-up: ${p}`);
      await warm(p);
      await clients[p].run({ concurrency: 1, durationS: 0.5, maxRounds: 20, roundTimeoutMs: 10_000 });
    }
    type Run = StreamRunResult & { cpu: CpuUse; rss_idle_mib?: number; rss_peak_mib?: number; broker_overhead_metric?: ReturnType<typeof overheadSummary> };
    const one = {} as Record<StreamPath, Run>;
    const many = {} as Record<StreamPath, Run>;
    const steady = {} as Record<StreamPath, Run>;
    for (const [kind, into] of [
      ['1 stream', one],
      ['1000 streams at once', many],
      ['1000 streams steady', steady],
    ] as const) {
      for (const p of order) {
        if (into === many) await warm(p);
        const broker = p === 'direct' ? undefined : children[p];
        const before = broker !== undefined ? await overheadHistogram(broker, 'llm_stream') : undefined;
        const idle = broker !== undefined ? rssMiB(broker.pid) : undefined;
        const peak = broker !== undefined && into !== one ? rssPeak(broker.pid, st.rss_sample_every_ms) : undefined;
        const c = clients[p];
        const go = (): Promise<StreamRunResult> =>
          into === one
            ? c.run({ concurrency: 1, durationS: st.single.duration_s, maxRounds: st.single.max_streams, roundTimeoutMs: 10_000 })
            : into === many
              ? c.run({ concurrency: st.many.concurrency, durationS: st.many.duration_s, maxRounds: st.many.max_rounds, roundTimeoutMs: st.many.round_timeout_ms })
              : c.steady({ concurrency: st.steady.concurrency, durationS: st.steady.duration_s, rampMs: st.steady.ramp_ms, drainTimeoutMs: st.steady.drain_timeout_ms });
        const r: Run = await withCpu(`${kind} ${p}`, pids, go);
        if (peak !== undefined) r.rss_peak_mib = round(peak.stop(), 1);
        if (idle !== undefined) r.rss_idle_mib = round(idle, 1);
        if (before !== undefined) r.broker_overhead_metric = overheadSummary(histogramDelta(before, await overheadHistogram(broker!, 'llm_stream')));
        into[p] = r;
        log(`${kind} ${p}: TTFT p50 ${r.ttft.p50_ms} p99 ${r.ttft.p99_ms} ms, total p50 ${r.total.p50_ms} ms, completed ${r.completed}/${r.streams}${r.rss_peak_mib !== undefined ? `, RSS peak ${r.rss_peak_mib} MiB` : ''}`);
        await sleep(500);
      }
    }
    const added = (runs: Record<StreamPath, Run>) => ({
      thread: { ttft_p50_ms: round(runs.thread.ttft.p50_ms - runs.direct.ttft.p50_ms), ttft_p99_ms: round(runs.thread.ttft.p99_ms - runs.direct.ttft.p99_ms) },
      pool: { ttft_p50_ms: round(runs.pool.ttft.p50_ms - runs.direct.ttft.p50_ms), ttft_p99_ms: round(runs.pool.ttft.p99_ms - runs.direct.ttft.p99_ms) },
    });
    return {
      portkey: { measured: false, reason: 'Portkey streaming fails on Node 20 inside the gateway (TypeError: immutable when it appends response headers; PEERS.md), so streaming is compared against direct-to-upstream only' },
      c1: { ...one, added_vs_direct: added(one) },
      c1000: { ...many, added_vs_direct: added(many) },
      c1000_steady: { ...steady, added_vs_direct: added(steady) },
    };
  } finally {
    await Promise.all(order.map((p) => clients[p].close()));
  }
}

// ---------------------------------------------------------------------------------
// 3. Thread vs pool

function threadVsPool(thread: StreamRunResult, pool: StreamRunResult) {
  // Lower is better for each; a metric within 5 % is a tie.
  const metrics = { ttft_p50_ms: [thread.ttft.p50_ms, pool.ttft.p50_ms], ttft_p99_ms: [thread.ttft.p99_ms, pool.ttft.p99_ms], total_p50_ms: [thread.total.p50_ms, pool.total.p50_ms] } as const;
  let t = 0;
  let p = 0;
  const by: Record<string, { thread: number; pool: number; faster: string }> = {};
  for (const [k, [a, b]] of Object.entries(metrics)) {
    const faster = Math.abs(a - b) <= 0.05 * Math.max(a, b) ? 'tie' : a < b ? 'thread' : 'pool';
    if (faster === 'thread') t++;
    if (faster === 'pool') p++;
    by[k] = { thread: a, pool: b, faster };
  }
  return { faster: t > p ? 'thread' : p > t ? 'pool' : 'tie', by_metric: by };
}

// ---------------------------------------------------------------------------------

async function profileOnly(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-llm-prof-'));
  const mock = await startMock('mock-small', SETTINGS.non_streaming.mock);
  const stream = await startMock('mock-stream', SETTINGS.streaming.mock);
  const config = brokerConfig(mock, stream);
  const broker = await startBroker('broker-thread', brokerEnv(config, 'thread'), ['--cpu-prof', `--cpu-prof-dir=${dir}`]);
  try {
    const url = broker.url + PATH;
    await cannon({ url, body: nonStreamBody, connections: 50, durationS: s(2) });
    const r = await cannon({ url, body: nonStreamBody, connections: 50, durationS: s(8) });
    log(`profiled run: ${r.rps} req/s through the broker`);
  } finally {
    await broker.stop(15_000); // SIGTERM: the broker exits cleanly and V8 writes the profile
    await Promise.all([mock.stop(), stream.stop()]);
    rmSync(join(config, '..'), { recursive: true, force: true });
  }
  console.log(profileSummary(dir, 25));
  log(`profile kept in ${dir}`);
}

async function main(): Promise<void> {
  const started = performance.now();
  const quiet = await waitForQuietMachine(QUIET.benches_max_s * 1000, QUIET.cpu_max_s * 1000, QUIET.max_busy_share_at_start, availableParallelism(), log);
  if (quiet.benches_still_running.length > 0) log(`other benchmarks still running after ${quiet.waited_for_benches_s}s; measuring anyway (results marked)`);
  if (quiet.cpu_busy_share_at_start >= QUIET.max_busy_share_at_start) log(`machine still ${Math.round(quiet.cpu_busy_share_at_start * 100)}% busy; measuring anyway (results marked)`);
  const info = machine();
  const source = { ...sourceState(), broker_flags: await brokerFlags() };
  const measureStarted = performance.now();
  const children = servers;
  const spawned = <T extends Child>(c: T): T => (children.push(c), c);
  let configFile: string | undefined;
  try {
    log('starting mock upstreams, broker (thread), Portkey and the floor proxy');
    const [mockSmall, mockStream] = await Promise.all([startMock('mock-small', SETTINGS.non_streaming.mock).then(spawned), startMock('mock-stream', SETTINGS.streaming.mock).then(spawned)]);
    configFile = brokerConfig(mockSmall, mockStream);
    const [thread, portkey, floor] = await Promise.all([
      startBroker('broker-thread', brokerEnv(configFile, 'thread')).then(spawned),
      startPortkey().then(spawned),
      startFloorProxy(mockSmall.url, 'mock-model').then(spawned),
    ]);
    const rssAtStart: Record<string, number | undefined> = { broker_thread: rssMiB(thread.pid) };

    const ns = await nonStreaming(mockSmall, floor, thread, portkey);
    const probe = await portkeyStreamProbe(portkey, mockStream);
    await Promise.all([portkey.stop(), floor.stop()]);

    log('starting broker (pool)');
    const pool = spawned(await startBroker('broker-pool', brokerEnv(configFile, 'pool')));
    rssAtStart.broker_pool = rssMiB(pool.pid);
    const st = await streaming(mockStream, thread, pool);
    const tvp = { c1: threadVsPool(st.c1.thread, st.c1.pool), c1000: threadVsPool(st.c1000.thread, st.c1000.pool), c1000_steady: threadVsPool(st.c1000_steady.thread, st.c1000_steady.pool) };

    const at2000 = ns.fixed_rate['2000']!;
    const goals = [
      { goal: 'non-streaming overhead p50 at 2,000 req/s (broker - direct, paced)', target: `<= ${GOALS.overhead_p50_ms_at_2000} ms`, value: at2000.overhead_ms.p50, met: at2000.broker.sustained && at2000.overhead_ms.p50 <= GOALS.overhead_p50_ms_at_2000 },
      { goal: 'non-streaming overhead p99 at 2,000 req/s (broker - direct, paced)', target: `<= ${GOALS.overhead_p99_ms_at_2000} ms`, value: at2000.overhead_ms.p99, met: at2000.broker.sustained && at2000.overhead_ms.p99 <= GOALS.overhead_p99_ms_at_2000 },
      { goal: 'non-streaming max req/s, broker / Portkey', target: `>= ${GOALS.broker_vs_portkey_max_rps}x`, value: ns.max_rps.ratio_broker_vs_portkey, met: ns.max_rps.ratio_broker_vs_portkey >= GOALS.broker_vs_portkey_max_rps },
      ...(['thread', 'pool'] as const).flatMap((m) => [
        { goal: `added TTFT p99 at 1,000 streams, ${m} mode`, target: `<= ${GOALS.added_ttft_p99_ms_at_1000} ms`, value: st.c1000.added_vs_direct[m].ttft_p99_ms, met: st.c1000.added_vs_direct[m].ttft_p99_ms <= GOALS.added_ttft_p99_ms_at_1000 },
        { goal: `broker RSS at 1,000 streams, ${m} mode`, target: `<= ${GOALS.rss_mib_at_1000} MiB`, value: st.c1000[m].rss_peak_mib!, met: st.c1000[m].rss_peak_mib! <= GOALS.rss_mib_at_1000 },
        { goal: `every stream completed ([DONE]), ${m} mode`, target: '100 %', value: Math.min(st.c1[m].completion_rate, st.c1000[m].completion_rate), met: st.c1[m].completion_rate === 1 && st.c1000[m].completion_rate === 1 },
      ]),
    ];

    const results = {
      bench: 'llm',
      ...info,
      scaled: SCALE !== 1,
      source,
      quiet_check: quiet,
      quiet_config: QUIET,
      /** Runs disturbed by other processes on the machine: compare their figures with care. */
      noisy_runs: noisyRuns,
      settings: SETTINGS,
      goals_config: GOALS,
      non_streaming: ns,
      portkey_stream_probe: probe,
      streaming: st,
      /** VmRSS of each broker once ready, before any load, MiB: what the streams add is on top. */
      broker_rss_at_start_mib: Object.fromEntries(Object.entries(rssAtStart).map(([k, v]) => [k, v === undefined ? null : round(v, 1)])),
      thread_vs_pool: tvp,
      goals,
      /** Seconds from start to the results, waiting for a quiet machine included; measure_s without it. */
      wall_s: round((performance.now() - started) / 1000, 1),
      measure_s: round((performance.now() - measureStarted) / 1000, 1),
    };
    const file = writeResults(results);
    report(results.non_streaming, st, tvp, goals);
    console.log(`\nbroker RSS once ready, before any load: ${Object.entries(results.broker_rss_at_start_mib).map(([k, v]) => `${k} ${v} MiB`).join(', ')}`);
    if (noisyRuns.length > 0) log(`${noisyRuns.length} run(s) disturbed by other processes (listed in noisy_runs): run again on a quiet machine`);
    log(`wrote ${relative(ROOT, file)}: measured in ${results.measure_s}s (${results.wall_s}s with the wait for a quiet machine)`);
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    if (configFile !== undefined) rmSync(join(configFile, '..'), { recursive: true, force: true });
  }
}

function report(ns: Awaited<ReturnType<typeof nonStreaming>>, st: Awaited<ReturnType<typeof streaming>>, tvp: Record<'c1' | 'c1000' | 'c1000_steady', ReturnType<typeof threadVsPool>>, goals: { goal: string; target: string; value: number; met: boolean }[]): void {
  const m = ns.max_rps;
  console.log('\nNon-streaming, max req/s (autocannon, 50 connections)');
  console.log(
    table(
      ['path', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'server CPU us/reply'],
      (['direct', 'floor', 'broker', 'portkey'] as const).map((p) => {
        const cpu = m.server_cpu_us_per_reply[p] as Record<string, number>;
        return [p, m[p].rps, m[p].latency.p50_ms, m[p].latency.p99_ms, m[p].errors + m[p].non_2xx + m[p].timeouts, Object.entries(cpu).map(([k, v]) => `${k} ${v}`).join(', ')];
      }),
    ),
  );
  console.log(`broker / Portkey ${m.ratio_broker_vs_portkey}x, broker / direct ${m.ratio_broker_vs_direct}x, broker / floor ${m.ratio_broker_vs_floor}x (floor = minimal uWS + undici proxy, a reference)`);

  for (const [title, fixed] of [
    ['paced open loop', ns.fixed_rate],
    ['autocannon overallRate, 20 connections (bursty: see bench/llm/paced.ts)', ns.fixed_rate_autocannon_overall_rate],
  ] as const) {
    console.log(`\nNon-streaming at fixed rates, ${title}`);
    const rows: (string | number | null)[][] = [];
    for (const [rate, r] of Object.entries(fixed)) {
      for (const p of ['direct', 'floor', 'broker', 'portkey'] as const) {
        const x = r[p] as { skipped?: string; latency?: { p50_ms: number; p99_ms: number }; achieved_rps?: number; rps?: number };
        if (x.skipped !== undefined) rows.push([`${rate}/s ${p}`, 'skipped', null, null]);
        else rows.push([`${rate}/s ${p}`, x.achieved_rps ?? x.rps ?? null, x.latency!.p50_ms, x.latency!.p99_ms]);
      }
      rows.push([`${rate}/s broker - direct`, null, r.overhead_ms.p50, r.overhead_ms.p99]);
      rows.push([`${rate}/s   of which floor - direct`, null, r.floor_overhead_ms.p50, r.floor_overhead_ms.p99]);
      rows.push([`${rate}/s   of which broker - floor`, null, r.broker_over_floor_ms.p50, r.broker_over_floor_ms.p99]);
      rows.push([`${rate}/s broker_overhead_seconds mean`, null, r.broker_overhead_metric.mean_ms, null]);
    }
    console.log(table(['rate / path', 'req/s', 'p50 ms', 'p99 ms'], rows));
  }
  console.log(`\nbroker_overhead_seconds{route="llm"} over the non-streaming section: mean ${ns.broker_overhead_metric.mean_ms} ms (${ns.broker_overhead_metric.count} requests)`);

  console.log('\nStreaming (32 tokens at 200/s), TTFT = request start to first content chunk; Portkey not measured (fails on Node 20)');
  const rows: (string | number | null)[][] = [];
  for (const [label, runs] of [
    ['1', st.c1],
    ['1000 at once', st.c1000],
    ['1000 steady', st.c1000_steady],
  ] as const) {
    for (const p of ['direct', 'thread', 'pool'] as const) {
      const r = runs[p];
      const add = p === 'direct' ? null : runs.added_vs_direct[p].ttft_p99_ms;
      rows.push([`${label} ${p}`, r.streams, `${round(r.completion_rate * 100, 2)}%`, r.ttft.p50_ms, r.ttft.p99_ms, add, r.total.p50_ms, r.total.p99_ms, r.rss_peak_mib ?? null]);
    }
  }
  console.log(table(['streams / path', 'n', 'completed', 'TTFT p50', 'TTFT p99', '+TTFT p99', 'total p50', 'total p99', 'RSS MiB'], rows));
  const word = (f: string): string => (f === 'tie' ? 'a tie (within 5 %)' : `${f} faster`);
  console.log(`thread vs pool: 1 stream ${word(tvp.c1.faster)}; 1,000 streams at once ${word(tvp.c1000.faster)}; 1,000 steady ${word(tvp.c1000_steady.faster)}`);

  console.log('\nGoals');
  console.log(table(['goal', 'target', 'value', 'met'], goals.map((g) => [g.goal, g.target, g.value, g.met ? 'yes' : 'NO'])));
}

if (process.argv.includes('--cpu-prof')) await profileOnly();
else await main();
