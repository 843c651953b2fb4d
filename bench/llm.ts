// `npm run bench:llm`: the LLM proxy against the upstream it proxies, a minimal proxy
// (the floor) and a peer gateway, with the broker in its two execution layouts side by
// side, in one run (about 6 minutes on 2 cores; `-- --quick` for a smoke run under 3 minutes).
// Every server is its own child process on 127.0.0.1; the load generators run in this
// process. Only ratios within one run count: the load generator shares the cores.
//
//   direct        straight to the mock upstream (src/mock-upstream)
//   floor         bench/llm/floor-proxy.ts: uWS + undici, the least a proxy on the
//                 broker's stack does (a reference, not a contender)
//   ft0           the broker, FRONT_THREADS=0 (everything on the main thread)
//   ft2           the broker, FRONT_THREADS=2 (two data-plane threads on one port)
//   portkey       @portkey-ai/gateway, non-streaming only (its streaming fails on Node 20)
//
// The brokers run the compiled dist/main.js (built first, as `npm run build`); `-- --tsx`
// runs src/main.ts through tsx instead.
//
// 1. Non-streaming POST /v1/chat/completions: max req/s (autocannon, 50 connections);
//    latency at 500 and 2,000 req/s with an open-loop paced client; CPU per request.
// 2. Streaming (SSE), bench/llm/streams.ts:
//    a. single stream: sequential requests, one at a time: TTFT;
//    b. saturation: 200 streams kept open, replaced as they end, upstream answering at once:
//       streams/s completed, CPU per stream and per event;
//    c. realistic: 1,000 streams of 128 tokens at 30 tokens/s kept open, replaced as they
//       end: TTFT, inter-token gap, CPU per event, RSS.
// 3. Idle RSS of the broker with INFER_ENABLED=false (ft2 and ft0).
// 4. CPU per request and per event, split main thread / other threads (Node 20 does not
//    name worker threads in /proc), and what they imply on 16 cores.
//
// Writes bench/results/llm.json and prints markdown tables. BENCH_LLM_SCALE (default 1,
// --quick = 0.25) scales every duration; results of a scaled run are marked.
// `-- --cpu-prof` instead profiles the ft0 broker under the non-streaming max-rate load and
// prints its top self-time functions (no results file).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { performance } from 'node:perf_hooks';
import { cannon, type CannonResult } from './llm/cannon.ts';
import { paced, type PacedResult } from './llm/paced.ts';
import { ROOT, buildDist, startBroker, type BrokerRuntime, type Child } from './lib/process.ts';
import { cpuBetween, threadCpu, threadNames, type CpuSplit } from './lib/proc.ts';
import { machine, mdTable, writeResults } from './lib/report.ts';
import { round, sleep } from './lib/stats.ts';
import { cpuAccount, rssMiB, rssPeak, startFloorProxy, startMock, startPortkey, waitForQuietMachine, type CpuUse, type MockFlags } from './llm/procs.ts';
import { profileSummary } from './llm/profile.ts';
import { bucketPercentile, histogramDelta, promHistogram, type PromHistogram } from './llm/stats.ts';
import { StreamClient, type StreamRunResult } from './llm/streams.ts';

const QUICK = process.argv.includes('--quick');
const RUNTIME: BrokerRuntime = process.argv.includes('--tsx') ? 'tsx' : 'dist';
const SCALE = QUICK ? 0.25 : Number(process.env.BENCH_LLM_SCALE ?? '1');
if (!(SCALE > 0 && SCALE <= 1)) throw new Error(`BENCH_LLM_SCALE must be in (0, 1], got "${process.env.BENCH_LLM_SCALE}"`);
const s = (seconds: number): number => Math.max(0.5, round(seconds * SCALE, 1));

const BROKERS = ['ft0', 'ft2'] as const;
type Broker = (typeof BROKERS)[number];
type Path = 'direct' | 'floor' | Broker | 'portkey';
type StreamPath = Exclude<Path, 'portkey'>;
const NS_PATHS: readonly Path[] = ['direct', 'floor', 'ft0', 'ft2', 'portkey'];
const ST_PATHS: readonly StreamPath[] = ['direct', 'floor', 'ft0', 'ft2'];
const LABEL: Record<Path, string> = { direct: 'direct', floor: 'floor proxy', ft0: 'broker FRONT_THREADS=0', ft2: 'broker FRONT_THREADS=2', portkey: 'Portkey' };

const MOCKS = {
  /** Non-streaming replies, 16 tokens at once. */
  small: { tokens: 16, tps: 0, ttftMs: 0 },
  /** Single stream: 16 tokens at 500/s (about 30 ms), the first one at once in its own write. */
  short: { tokens: 16, tps: 500, ttftMs: 0 },
  /** Saturation: 128 tokens written at once, so the proxy, not the upstream, sets the pace. */
  burst: { tokens: 128, tps: 0, ttftMs: 0 },
  /** Realistic: 128 tokens at 30 tokens/s, about 4.3 s a stream. */
  real: { tokens: 128, tps: 30, ttftMs: 0 },
} satisfies Record<string, MockFlags>;
type MockName = keyof typeof MOCKS;
const GROUP: Record<MockName, string> = { small: 'bench-small', short: 'bench-short', burst: 'bench-burst', real: 'bench-real' };

const SETTINGS = Object.freeze({
  scale: SCALE,
  quick: QUICK,
  broker_runtime: RUNTIME === 'dist' ? 'node dist/main.js (compiled; built first with tsc -b tsconfig.build.json)' : 'node --import tsx src/main.ts',
  route: '/v1/chat/completions',
  broker_env_common: { INFER_THREADS: '1', RATE_LIMIT_RPS: '0', LOG_LEVEL: 'warn' },
  brokers: {
    ft0: { FRONT_THREADS: '0' },
    ft2: { FRONT_THREADS: '2' },
  } as Record<Broker, Record<string, string>>,
  mocks: MOCKS,
  deployment_concurrency_limit: { small: 256, short: 64, burst: 1024, real: 2048 },
  floor_proxy: 'bench/llm/floor-proxy.ts (under tsx): uWS + one undici pool per upstream, body parsed and re-written, reply passed through (streams chunk by chunk)',
  non_streaming: {
    warmup_s: s(2),
    max_rps: { tool: 'autocannon', connections: 50, duration_s: s(8) },
    fixed_rates_rps: [500, 2000],
    fixed_rate_duration_s: s(8),
    paced: { tool: 'bench/llm/paced.ts (open loop, raw HTTP/1.1 keep-alive)', max_connections: 256, timeout_ms: 5000 },
    /** A fixed rate is run through Portkey only if it is at most this share of Portkey's max req/s. */
    portkey_sustainable_share: 0.8,
    portkey_headers: { 'x-portkey-provider': 'openai', 'x-portkey-custom-host': 'http://127.0.0.1:<mock-small>/v1', authorization: 'Bearer x' },
  },
  streaming: {
    client: 'bench/llm/streams.ts (undici Pool.dispatch)',
    stream_timeout_ms: 30_000,
    single: { mock: 'short', concurrency: 1, warmup_streams: 20, duration_s: s(5), max_streams: 400 },
    saturation: { mock: 'burst', concurrency: 200, ramp_ms: 200, warmup_s: s(2), duration_s: s(6), drain_timeout_ms: 30_000 },
    // A stream lasts 128 / 30 = 4.27 s. The streams start spread over one stream's lifetime
    // and each is replaced as it ends, so arrivals stay uniform (about 234/s) instead of
    // coming back in waves; only streams started after the ramp are recorded, so the
    // window must hold more than one lifetime, even in a quick run.
    realistic: { mock: 'real', concurrency: 1000, ramp_ms: 4300, duration_s: QUICK ? 5 : Math.max(5, s(12)), drain_timeout_ms: 30_000, client_connections: 1100 },
    rss_sample_every_ms: 100,
  },
  idle_rss: { settle_s: QUICK ? 1 : 3, env: { INFER_ENABLED: 'false' } },
  projection_cores: 16,
});

const GOALS = Object.freeze({
  max_rps_vs_floor: 0.8,
  overhead_p50_ms_at_2000: 0.25,
  overhead_p99_ms_at_2000: 1,
  realistic_added_ttft_p99_ms: 5,
  realistic_added_gap_p99_ms: 2,
  rss_mb_at_1000_streams: 200,
  idle_rss_mb_infer_disabled: 120,
  single_added_ttft_p50_ms: 0.3,
  saturation_vs_floor: 0.8,
});

/** Waiting for a quiet machine before measuring, and when a run counts as disturbed. */
const QUIET = Object.freeze({ benches_max_s: QUICK ? 10 : 600, cpu_max_s: QUICK ? 5 : 120, max_busy_share_at_start: 0.25, noisy_other_cpu_share: 0.15 });

const log = (msg: string): void => void process.stderr.write(`[bench:llm] ${msg}\n`);
const PATH = SETTINGS.route;
const MB = (mib: number | undefined): number | null => (mib === undefined ? null : round((mib * 1024 * 1024) / 1e6, 1));

interface Target {
  readonly url: string;
  readonly headers: Record<string, string>;
}

/** Every server started; a run after which one has exited is thrown away with the whole bench. */
const servers: Child[] = [];
/** Runs whose CPU share used by other processes exceeded QUIET.noisy_other_cpu_share. */
const noisyRuns: string[] = [];
/** Non-2xx replies, errors and incomplete streams, by run: src-side problems show here. */
const problems: string[] = [];

function checkServers(label: string): void {
  for (const c of servers) {
    const how = c.exited();
    if (how !== undefined) {
      throw new Error(`${c.name} (pid ${c.pid}) exited (${how}) during ${label}, not stopped by the bench. No results written.\n${c.output().slice(-1500)}`);
    }
  }
}

/** CPU of each broker's threads: the main thread (control plane, or everything with FRONT_THREADS=0) and the rest. */
type Threads = Partial<Record<Broker, CpuSplit>>;
type WithCpu<T> = T & { cpu: CpuUse; threads: Threads };

async function withCpu<T>(label: string, pids: Record<string, number>, brokers: Partial<Record<Broker, number>>, f: () => Promise<T>): Promise<WithCpu<T>> {
  const acct = cpuAccount(pids);
  const t0 = Object.fromEntries(Object.entries(brokers).map(([k, pid]) => [k, threadCpu(pid)]));
  const r = await f();
  const threads: Threads = {};
  for (const [k, pid] of Object.entries(brokers) as [Broker, number][]) threads[k] = cpuBetween(pid, t0[k]!, threadCpu(pid));
  const cpu = acct.stop();
  checkServers(label);
  const share = cpu.other_s / Math.max(0.001, cpu.window_s * availableParallelism());
  if (share > QUIET.noisy_other_cpu_share) {
    noisyRuns.push(`${label}: other processes used ${Math.round(share * 100)}% of the CPU`);
    log(`  (disturbed: other processes used ${Math.round(share * 100)}% of the CPU during ${label})`);
  }
  return { ...r, cpu, threads };
}

/** The broker's feature flags in effect: the defaults of src/config/flags.ts, and any BROKER_FF_* passed on. */
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

const body = (mock: MockName, stream: boolean): string =>
  JSON.stringify({ model: GROUP[mock], ...(stream ? { stream: true } : {}), messages: [{ role: 'user', content: 'Say hello in a few words.' }] });
const nonStreamBody = body('small', false);

function brokerConfig(mocks: Record<MockName, Child>): string {
  const dir = mkdtempSync(join(tmpdir(), 'bench-llm-'));
  const file = join(dir, 'broker.json');
  const groups = Object.fromEntries(
    (Object.keys(MOCKS) as MockName[]).map((m) => [
      GROUP[m],
      { deployments: [{ id: `mock-${m}`, provider: 'openai', url: `${mocks[m].url}/v1`, model: 'mock-model', concurrencyLimit: SETTINGS.deployment_concurrency_limit[m] }] },
    ]),
  );
  writeFileSync(file, JSON.stringify({ modelGroups: groups }));
  return file;
}

function brokerEnv(configFile: string, b: Broker, extra: Record<string, string> = {}): Record<string, string> {
  return { BROKER_CONFIG: configFile, ...SETTINGS.broker_env_common, ...SETTINGS.brokers[b], ...extra };
}

async function metricsText(broker: Child): Promise<string> {
  const res = await fetch(`${broker.url}/metrics`);
  return res.text();
}

/** broker_overhead_seconds for one route, from the broker's /metrics. */
async function overheadHistogram(broker: Child, route: 'llm' | 'llm_stream'): Promise<PromHistogram> {
  return promHistogram(await metricsText(broker), 'broker_overhead_seconds', `route="${route}"`);
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

/** Server CPU per unit of work, µs: the named processes, and for a broker its main thread and other threads. */
function cpuPer(r: { cpu: CpuUse; threads: Threads }, proc: string, units: number, broker?: Broker) {
  const n = Math.max(1, units);
  const us = (x: number) => round((x * 1e6) / n, 1);
  const out: { process_us: number; main_thread_us?: number; other_threads_us?: number; busiest_threads_us?: number[] } = { process_us: us(r.cpu.by_process_s[proc] ?? 0) };
  const t = broker !== undefined ? r.threads[broker] : undefined;
  if (t !== undefined) {
    out.main_thread_us = us(t.main_s);
    out.other_threads_us = us(t.other_threads_s);
    out.busiest_threads_us = t.top_threads_s.slice(0, 4).map(us);
  }
  return out;
}

// ---------------------------------------------------------------------------------
// 1. Non-streaming

type NsRun<R> = WithCpu<R> | { readonly skipped: string };

async function nonStreaming(ch: Record<Path, Child>, mock: Child, pids: Record<string, number>, brokerPids: Record<Broker, number>) {
  const ns = SETTINGS.non_streaming;
  const targets = Object.fromEntries(
    NS_PATHS.map((p) => [
      p,
      p === 'portkey'
        ? { url: ch.portkey.url + PATH, headers: { 'x-portkey-provider': 'openai', 'x-portkey-custom-host': `${mock.url}/v1`, authorization: 'Bearer x' } }
        : { url: ch[p].url + PATH, headers: {} },
    ]),
  ) as Record<Path, Target>;
  const metricAt0 = Object.fromEntries(await Promise.all(BROKERS.map(async (b) => [b, await overheadHistogram(ch[b], 'llm')] as const))) as Record<Broker, PromHistogram>;

  for (const p of NS_PATHS) {
    log(`non-streaming warm-up: ${p}`);
    await cannon({ url: targets[p].url, body: nonStreamBody, headers: targets[p].headers, connections: ns.max_rps.connections, durationS: ns.warmup_s });
  }

  const max = {} as Record<Path, WithCpu<CannonResult>>;
  for (const p of NS_PATHS) {
    const b = (BROKERS as readonly string[]).includes(p) ? { [p]: brokerPids[p as Broker] } : {};
    max[p] = await withCpu(`max req/s ${p}`, pids, b, () => cannon({ url: targets[p].url, body: nonStreamBody, headers: targets[p].headers, connections: ns.max_rps.connections, durationS: ns.max_rps.duration_s }));
    const bad = max[p].errors + max[p].non_2xx + max[p].timeouts;
    if (bad > 0) problems.push(`max req/s ${p}: ${max[p].non_2xx} non-2xx, ${max[p].errors} errors, ${max[p].timeouts} timeouts`);
    log(`max req/s ${p}: ${max[p].rps} (p50 ${max[p].latency.p50_ms} ms, errors ${bad})`);
    await sleep(500);
  }
  const procOf: Record<Path, string> = { direct: 'mock_small', floor: 'floor_proxy', ft0: 'ft0', ft2: 'ft2', portkey: 'portkey' };
  const cpuUs = Object.fromEntries(
    NS_PATHS.map((p) => [p, { server: cpuPer(max[p], procOf[p], max[p].ok, (BROKERS as readonly string[]).includes(p) ? (p as Broker) : undefined), mock_us: cpuPer(max[p], 'mock_small', max[p].ok).process_us }]),
  ) as Record<Path, { server: ReturnType<typeof cpuPer>; mock_us: number }>;
  const maxRps = {
    ...max,
    ratio_vs_floor: Object.fromEntries([...BROKERS, 'portkey' as const].map((p) => [p, round(max[p].rps / max.floor.rps, 3)])) as Record<Broker | 'portkey', number>,
    ratio_vs_direct: Object.fromEntries([...BROKERS, 'floor' as const].map((p) => [p, round(max[p].rps / max.direct.rps, 3)])) as Record<Broker | 'floor', number>,
    ratio_vs_portkey: Object.fromEntries(BROKERS.map((p) => [p, round(max[p].rps / max.portkey.rps, 2)])) as Record<Broker, number>,
    /** Server CPU per reply at the max rate, µs (the load generator's is not in it). */
    cpu_us_per_reply: cpuUs,
  };

  const portkeyCeiling = ns.portkey_sustainable_share * max.portkey.rps;
  const fixed: Record<string, Record<Path, NsRun<PacedResult>> & { overhead_ms: Record<Broker | 'floor', { p50: number; p99: number }>; over_floor_ms: Record<Broker, { p50: number; p99: number }> }> = {};
  for (const rate of ns.fixed_rates_rps) {
    const r = {} as Record<Path, NsRun<PacedResult>>;
    for (const p of NS_PATHS) {
      if (p === 'portkey' && rate > portkeyCeiling) {
        r[p] = { skipped: `${rate} req/s is above ${ns.portkey_sustainable_share} x Portkey's max (${max.portkey.rps} req/s in this run)` };
        continue;
      }
      const b = (BROKERS as readonly string[]).includes(p) ? { [p]: brokerPids[p as Broker] } : {};
      const x = await withCpu(`paced ${rate}/s ${p}`, pids, b, () =>
        paced({ url: targets[p].url, body: nonStreamBody, headers: targets[p].headers, rate, durationS: ns.fixed_rate_duration_s, maxConnections: ns.paced.max_connections, timeoutMs: ns.paced.timeout_ms }),
      );
      r[p] = x;
      if (x.non_2xx + x.errors + x.timeouts > 0) problems.push(`paced ${rate}/s ${p}: ${x.non_2xx} non-2xx, ${x.errors} errors, ${x.timeouts} timeouts`);
      log(`paced ${rate}/s ${p}: p50 ${x.latency.p50_ms} ms, p99 ${x.latency.p99_ms} ms${x.sustained ? '' : ' (rate NOT sustained)'}`);
      await sleep(500);
    }
    const lat = (p: Path) => (r[p] as PacedResult).latency;
    const diff = (a: Path, b: Path) => ({ p50: round(lat(a).p50_ms - lat(b).p50_ms), p99: round(lat(a).p99_ms - lat(b).p99_ms) });
    fixed[String(rate)] = {
      ...r,
      overhead_ms: Object.fromEntries([...BROKERS, 'floor' as const].map((p) => [p, diff(p, 'direct')])) as Record<Broker | 'floor', { p50: number; p99: number }>,
      over_floor_ms: Object.fromEntries(BROKERS.map((p) => [p, diff(p, 'floor')])) as Record<Broker, { p50: number; p99: number }>,
    };
  }

  const metric = Object.fromEntries(await Promise.all(BROKERS.map(async (b) => [b, overheadSummary(histogramDelta(metricAt0[b], await overheadHistogram(ch[b], 'llm')))] as const)));
  return {
    max_rps: maxRps,
    fixed_rate: fixed,
    /** broker_overhead_seconds{route="llm"} over the whole non-streaming section (warm-up included), per broker. */
    broker_overhead_metric: metric as Record<Broker, ReturnType<typeof overheadSummary>>,
  };
}

/** One streamed request through Portkey, to record how it fails (PEERS.md: `TypeError: immutable` on Node 20). */
async function portkeyStreamProbe(portkey: Child, mockStream: Child) {
  try {
    const res = await fetch(portkey.url + PATH, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-portkey-provider': 'openai', 'x-portkey-custom-host': `${mockStream.url}/v1`, authorization: 'Bearer x' },
      body: body('short', true),
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

type StRun = WithCpu<StreamRunResult> & { rss_start_mb?: number | null; rss_peak_mb?: number | null };

function recordStreamProblems(label: string, r: StreamRunResult): void {
  if (r.completed < r.streams) problems.push(`${label}: ${r.streams - r.completed} of ${r.streams} streams incomplete (${JSON.stringify(r.failures)})`);
}

/** `ch` holds the floor proxy and the brokers; "direct" goes to the mock of each workload. */
async function streaming(mocks: Record<MockName, Child>, ch: Record<Exclude<StreamPath, 'direct'>, Child>, pids: Record<string, number>, brokerPids: Record<Broker, number>) {
  const st = SETTINGS.streaming;
  const brokerOf = (p: StreamPath): Partial<Record<Broker, number>> => ((BROKERS as readonly string[]).includes(p) ? { [p]: brokerPids[p as Broker] } : {});
  const client = (p: StreamPath, mock: MockName, conns: number) => new StreamClient((p === 'direct' ? mocks[mock] : ch[p]).url + PATH, body(mock, true), conns, st.stream_timeout_ms);

  // a. Single stream, sequential.
  const single = {} as Record<StreamPath, StRun>;
  for (const p of ST_PATHS) {
    const c = client(p, 'short', 2);
    try {
      await c.run({ concurrency: 1, durationS: 30, maxRounds: st.single.warmup_streams, roundTimeoutMs: 10_000 });
      single[p] = await withCpu(`single stream ${p}`, pids, brokerOf(p), () => c.run({ concurrency: 1, durationS: st.single.duration_s, maxRounds: st.single.max_streams, roundTimeoutMs: 10_000 }));
    } finally {
      await c.close();
    }
    recordStreamProblems(`single stream ${p}`, single[p]);
    log(`single stream ${p}: TTFT p50 ${single[p].ttft.p50_ms} p99 ${single[p].ttft.p99_ms} ms, total p50 ${single[p].total.p50_ms} ms, ${single[p].completed}/${single[p].streams}`);
    await sleep(300);
  }

  // b. Saturation: the proxy sets the pace.
  const sat = {} as Record<StreamPath, StRun>;
  for (const p of ST_PATHS) {
    const c = client(p, 'burst', st.saturation.concurrency + 50);
    const go = (durationS: number) => c.steady({ concurrency: st.saturation.concurrency, durationS, rampMs: st.saturation.ramp_ms, drainTimeoutMs: st.saturation.drain_timeout_ms });
    try {
      await go(st.saturation.warmup_s);
      sat[p] = await withCpu(`saturation ${p}`, pids, brokerOf(p), () => go(st.saturation.duration_s));
    } finally {
      await c.close();
    }
    recordStreamProblems(`saturation ${p}`, sat[p]);
    log(`saturation ${p}: ${sat[p].streams_per_s} streams/s (${sat[p].events_per_s} events/s), TTFT p50 ${sat[p].ttft.p50_ms} ms, ${sat[p].completed}/${sat[p].streams}`);
    await sleep(1000);
  }

  // c. Realistic: 1,000 streams at 30 tokens/s.
  const real = {} as Record<StreamPath, StRun>;
  for (const p of ST_PATHS) {
    const pid = p === 'direct' ? mocks.real.pid : ch[p].pid;
    const watch = p !== 'direct';
    const rssStart = watch ? rssMiB(pid) : undefined;
    const peak = watch ? rssPeak(pid, st.rss_sample_every_ms) : undefined;
    const c = client(p, 'real', st.realistic.client_connections);
    try {
      real[p] = await withCpu(`realistic ${p}`, pids, brokerOf(p), () =>
        c.steady({ concurrency: st.realistic.concurrency, durationS: st.realistic.duration_s, rampMs: st.realistic.ramp_ms, drainTimeoutMs: st.realistic.drain_timeout_ms, gaps: true }),
      );
    } finally {
      await c.close();
    }
    if (peak !== undefined) real[p].rss_peak_mb = MB(peak.stop());
    if (watch) real[p].rss_start_mb = MB(rssStart);
    recordStreamProblems(`realistic ${p}`, real[p]);
    const r = real[p];
    log(`realistic ${p}: TTFT p50 ${r.ttft.p50_ms} p99 ${r.ttft.p99_ms} ms, gap p50 ${r.gap?.p50_ms} p99 ${r.gap?.p99_ms} ms, ${r.completed}/${r.streams}${r.rss_peak_mb != null ? `, RSS peak ${r.rss_peak_mb} MB` : ''}`);
    await sleep(1000);
  }

  const versus = (runs: Record<StreamPath, StRun>, f: (r: StRun) => number) =>
    Object.fromEntries((['floor', ...BROKERS] as const).map((p) => [p, round(f(runs[p]) - f(runs.direct))])) as Record<'floor' | Broker, number>;
  const procOf = (p: StreamPath, mock: string) => (p === 'direct' ? mock : p === 'floor' ? 'floor_proxy' : p);
  const cpuOf = (runs: Record<StreamPath, StRun>, mock: string) =>
    Object.fromEntries(
      ST_PATHS.map((p) => {
        const r = runs[p];
        const b = (BROKERS as readonly string[]).includes(p) ? (p as Broker) : undefined;
        return [p, { per_stream: cpuPer(r, procOf(p, mock), r.completed_all, b), per_event: cpuPer(r, procOf(p, mock), r.events_all, b), mock_us_per_event: cpuPer(r, mock, r.events_all).process_us }];
      }),
    ) as Record<StreamPath, { per_stream: ReturnType<typeof cpuPer>; per_event: ReturnType<typeof cpuPer>; mock_us_per_event: number }>;
  return {
    portkey: { measured: false, reason: 'Portkey streaming fails on Node 20 inside the gateway (TypeError: immutable when it appends response headers; PEERS.md)' },
    single: { ...single, added_ttft_p50_ms: versus(single, (r) => r.ttft.p50_ms), added_ttft_p99_ms: versus(single, (r) => r.ttft.p99_ms) },
    saturation: {
      ...sat,
      ratio_vs_floor: Object.fromEntries(BROKERS.map((b) => [b, round(sat[b].streams_per_s! / sat.floor.streams_per_s!, 3)])) as Record<Broker, number>,
      ratio_vs_direct: Object.fromEntries((['floor', ...BROKERS] as const).map((b) => [b, round(sat[b].streams_per_s! / sat.direct.streams_per_s!, 3)])) as Record<'floor' | Broker, number>,
      cpu_us: cpuOf(sat, 'mock_burst'),
    },
    realistic: {
      ...real,
      added_ttft_p50_ms: versus(real, (r) => r.ttft.p50_ms),
      added_ttft_p99_ms: versus(real, (r) => r.ttft.p99_ms),
      added_gap_p99_ms: versus(real, (r) => r.gap!.p99_ms),
      cpu_us: cpuOf(real, 'mock_real'),
    },
  };
}

// ---------------------------------------------------------------------------------
// 3. Idle RSS without the inference pool

async function idleRss(configFile: string) {
  const one = async (name: string, env: Record<string, string>) => {
    const c = await startBroker(name, env, [], 60_000, RUNTIME);
    try {
      await sleep(SETTINGS.idle_rss.settle_s * 1000);
      const r = { rss_mb: MB(rssMiB(c.pid)), threads: threadNames(c.pid).size };
      log(`idle RSS, ${name}: ${r.rss_mb} MB, ${r.threads} threads`);
      return r;
    } finally {
      await c.stop();
    }
  };
  const ft2 = await one('ft2, INFER_ENABLED=false', brokerEnv(configFile, 'ft2', SETTINGS.idle_rss.env));
  const ft0 = await one('ft0, INFER_ENABLED=false', brokerEnv(configFile, 'ft0', SETTINGS.idle_rss.env));
  return { ft2, ft0 };
}

// ---------------------------------------------------------------------------------
// 4. Per-thread CPU and the projection to more cores

function projection(ns: Awaited<ReturnType<typeof nonStreaming>>, st: Awaited<ReturnType<typeof streaming>>, rssStart: Record<Broker, number | null>, names: string[]) {
  const cores = SETTINGS.projection_cores;
  const req = ns.max_rps.cpu_us_per_reply.ft2.server;
  const ev = st.realistic.cpu_us.ft2.per_event;
  const satStream = st.saturation.cpu_us.ft2.per_stream;
  const evRate = st.realistic.ft2.events_per_s ?? 0;
  const perThreadRss = rssStart.ft2 !== null && rssStart.ft0 !== null ? round((rssStart.ft2 - rssStart.ft0) / 2, 1) : null;
  const cap = (us: number | undefined) => (us !== undefined && us > 0 ? Math.round(1e6 / us) : null);
  const allCores = (us: number) => (us > 0 ? Math.round((cores * 1e6) / us) : null);
  // Realistic streams: each open stream costs (µs per event) × (events per stream-second).
  const eventsPerStreamS = evRate / SETTINGS.streaming.realistic.concurrency;
  const streamsAt = (us: number | undefined) => (us !== undefined && us > 0 && eventsPerStreamS > 0 ? Math.round(1e6 / (us * eventsPerStreamS)) : null);
  return {
    /** What /proc says the threads are called: Node 20 leaves every thread "node", so data-plane threads cannot be told apart by name. */
    thread_names_seen: names,
    data_plane_threads_named: names.some((n) => n.startsWith('data-plane')),
    measured_on: `${availableParallelism()} cores, FRONT_THREADS=2, load generator and upstream on the same cores`,
    per_request_us: req,
    per_event_us_realistic: ev,
    per_stream_us_saturation: satStream,
    cores,
    /** All cores busy at the measured process CPU per request (load generator and upstream elsewhere). */
    rps_all_cores: allCores(req.process_us),
    /** The main thread (control plane) is one thread: its CPU per request caps the whole process. */
    rps_main_thread_ceiling: cap(req.main_thread_us),
    streams_per_s_all_cores: allCores(satStream.process_us),
    streams_per_s_main_thread_ceiling: cap(satStream.main_thread_us),
    /** Concurrent 30 tokens/s streams all cores could carry at the measured CPU per event. */
    realistic_streams_all_cores: streamsAt(ev.process_us) === null ? null : streamsAt(ev.process_us)! * cores,
    realistic_streams_main_thread_ceiling: streamsAt(ev.main_thread_us),
    rss_per_data_plane_thread_mb: perThreadRss,
    idle_rss_mb_at_16_threads: perThreadRss !== null && rssStart.ft0 !== null ? round(rssStart.ft0 + cores * perThreadRss, 0) : null,
  };
}

// ---------------------------------------------------------------------------------
// 5. Goals

interface Goal {
  readonly goal: string;
  readonly target: string;
  readonly values: Partial<Record<Broker, number | null>>;
  readonly met: Partial<Record<Broker, boolean>>;
}

function goals(ns: Awaited<ReturnType<typeof nonStreaming>>, st: Awaited<ReturnType<typeof streaming>>, idle: Awaited<ReturnType<typeof idleRss>>): Goal[] {
  const per = (goal: string, target: string, v: (b: Broker) => number | null, ok: (x: number, b: Broker) => boolean, only: readonly Broker[] = BROKERS): Goal => {
    const values: Partial<Record<Broker, number | null>> = {};
    const met: Partial<Record<Broker, boolean>> = {};
    for (const b of only) {
      const x = v(b);
      values[b] = x;
      met[b] = x !== null && Number.isFinite(x) && ok(x, b);
    }
    return { goal, target, values, met };
  };
  const at2000 = ns.fixed_rate['2000']!;
  const sustained = (b: Broker) => (at2000[b] as PacedResult).sustained;
  return [
    per('max req/s vs floor proxy', `>= ${GOALS.max_rps_vs_floor}x`, (b) => ns.max_rps.ratio_vs_floor[b], (x) => x >= GOALS.max_rps_vs_floor),
    per('overhead vs direct at 2,000 req/s, p50 (paced)', `<= ${GOALS.overhead_p50_ms_at_2000} ms`, (b) => at2000.overhead_ms[b].p50, (x, b) => sustained(b) && x <= GOALS.overhead_p50_ms_at_2000),
    per('overhead vs direct at 2,000 req/s, p99 (paced)', `<= ${GOALS.overhead_p99_ms_at_2000} ms`, (b) => at2000.overhead_ms[b].p99, (x, b) => sustained(b) && x <= GOALS.overhead_p99_ms_at_2000),
    per('realistic streaming (1,000 x 30 tok/s): added TTFT p99', `<= ${GOALS.realistic_added_ttft_p99_ms} ms`, (b) => st.realistic.added_ttft_p99_ms[b], (x) => x <= GOALS.realistic_added_ttft_p99_ms),
    per('realistic streaming: added inter-token gap p99', `<= ${GOALS.realistic_added_gap_p99_ms} ms`, (b) => st.realistic.added_gap_p99_ms[b], (x) => x <= GOALS.realistic_added_gap_p99_ms),
    per('RSS peak at 1,000 streams (inference pool running)', `<= ${GOALS.rss_mb_at_1000_streams} MB`, (b) => st.realistic[b].rss_peak_mb ?? null, (x) => x <= GOALS.rss_mb_at_1000_streams),
    per('idle RSS with INFER_ENABLED=false', `<= ${GOALS.idle_rss_mb_infer_disabled} MB`, (b) => idle[b].rss_mb, (x) => x <= GOALS.idle_rss_mb_infer_disabled),
    per('single stream: added TTFT p50', `<= ${GOALS.single_added_ttft_p50_ms} ms`, (b) => st.single.added_ttft_p50_ms[b], (x) => x <= GOALS.single_added_ttft_p50_ms),
    per('streaming saturation vs floor proxy (streams/s)', `>= ${GOALS.saturation_vs_floor}x`, (b) => st.saturation.ratio_vs_floor[b], (x) => x >= GOALS.saturation_vs_floor),
    per(
      'every stream completed, no non-2xx',
      '100 %',
      (b) => Math.min(st.single[b].completion_rate, st.saturation[b].completion_rate, st.realistic[b].completion_rate),
      (x, b) => x === 1 && ns.max_rps[b].non_2xx === 0,
    ),
  ];
}

// ---------------------------------------------------------------------------------

async function profileOnly(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-llm-prof-'));
  if (RUNTIME === 'dist') log(`build: ${JSON.stringify(buildDist())}`);
  const mocks = Object.fromEntries(await Promise.all((Object.keys(MOCKS) as MockName[]).map(async (m) => [m, await startMock(`mock-${m}`, MOCKS[m], RUNTIME)] as const))) as Record<MockName, Child>;
  const config = brokerConfig(mocks);
  const broker = await startBroker('ft0', brokerEnv(config, 'ft0'), ['--cpu-prof', `--cpu-prof-dir=${dir}`], 120_000, RUNTIME);
  try {
    const url = broker.url + PATH;
    await cannon({ url, body: nonStreamBody, connections: 50, durationS: s(2) });
    const r = await cannon({ url, body: nonStreamBody, connections: 50, durationS: s(8) });
    log(`profiled run: ${r.rps} req/s through the broker`);
  } finally {
    await broker.stop(15_000); // SIGTERM: the broker exits cleanly and V8 writes the profile
    await Promise.all(Object.values(mocks).map((m) => m.stop()));
    rmSync(join(config, '..'), { recursive: true, force: true });
  }
  console.log(profileSummary(dir, 25));
  log(`profile kept in ${dir}`);
}

async function main(): Promise<void> {
  const started = performance.now();
  const build = RUNTIME === 'dist' ? buildDist() : undefined;
  if (build !== undefined) {
    if (build.ok) log(`dist/ up to date (tsc -b, ${build.ms} ms)`);
    else log(`tsc -b failed; measuring the dist/ already there, which may be stale:\n${build.message}`);
  }
  const quiet = await waitForQuietMachine(QUIET.benches_max_s * 1000, QUIET.cpu_max_s * 1000, QUIET.max_busy_share_at_start, availableParallelism(), log);
  if (quiet.benches_still_running.length > 0) log(`other benchmarks still running after ${quiet.waited_for_benches_s}s; measuring anyway (results marked)`);
  if (quiet.cpu_busy_share_at_start >= QUIET.max_busy_share_at_start) log(`machine still ${Math.round(quiet.cpu_busy_share_at_start * 100)}% busy; measuring anyway (results marked)`);
  const info = machine();
  const source = { ...sourceState(), dist_build: build ?? 'not used (--tsx)', broker_flags: await brokerFlags() };
  const measureStarted = performance.now();
  const spawned = <T extends Child>(c: T): T => (servers.push(c), c);
  let configFile: string | undefined;
  try {
    log(`starting the mock upstreams, the brokers (${RUNTIME}), the floor proxy and Portkey`);
    const mocks = Object.fromEntries(await Promise.all((Object.keys(MOCKS) as MockName[]).map(async (m) => [m, spawned(await startMock(`mock-${m}`, MOCKS[m], RUNTIME))] as const))) as Record<MockName, Child>;
    configFile = brokerConfig(mocks);
    const cfg = configFile;
    const brokers = Object.fromEntries(await Promise.all(BROKERS.map(async (b) => [b, spawned(await startBroker(b, brokerEnv(cfg, b), [], 120_000, RUNTIME))] as const))) as Record<Broker, Child>;
    const [floor, portkey] = await Promise.all([
      startFloorProxy('mock-model', Object.fromEntries((Object.keys(MOCKS) as MockName[]).map((m) => [GROUP[m], mocks[m].url]))).then(spawned),
      startPortkey().then(spawned),
    ]);
    await sleep(1000);
    const rssStart = Object.fromEntries(BROKERS.map((b) => [b, MB(rssMiB(brokers[b].pid))])) as Record<Broker, number | null>;
    const names = [...new Set(threadNames(brokers.ft2.pid).values())];
    const threadCount = Object.fromEntries(BROKERS.map((b) => [b, threadNames(brokers[b].pid).size]));
    log(`broker RSS once ready: ${BROKERS.map((b) => `${b} ${rssStart[b]} MB (${threadCount[b]} threads)`).join(', ')}; thread names in ft2: ${names.join(', ')}`);

    const pids = {
      mock_small: mocks.small.pid,
      mock_short: mocks.short.pid,
      mock_burst: mocks.burst.pid,
      mock_real: mocks.real.pid,
      floor_proxy: floor.pid,
      ft0: brokers.ft0.pid,
      ft2: brokers.ft2.pid,
      portkey: portkey.pid,
    };
    const brokerPids = { ft0: brokers.ft0.pid, ft2: brokers.ft2.pid };
    const ch = { direct: mocks.small, floor, ...brokers, portkey } as Record<Path, Child>;
    const ns = await nonStreaming(ch, mocks.small, pids, brokerPids);
    const probe = await portkeyStreamProbe(portkey, mocks.short);
    await portkey.stop();
    servers.splice(servers.indexOf(portkey), 1);

    // Streaming: "direct" is whichever mock the workload uses; the proxies pick it by model.
    const { portkey: _gone, ...stPids } = pids;
    const st = await streaming(mocks, { floor, ...brokers }, stPids, brokerPids);

    for (const b of BROKERS) servers.splice(servers.indexOf(brokers[b]), 1);
    await Promise.all(BROKERS.map((b) => brokers[b].stop()));
    const idle = await idleRss(configFile);

    const proj = projection(ns, st, rssStart, names);
    const g = goals(ns, st, idle);
    const results = {
      bench: 'llm',
      ...info,
      scaled: SCALE !== 1,
      source,
      quiet_check: quiet,
      quiet_config: QUIET,
      /** Runs disturbed by other processes on the machine: compare their figures with care. */
      noisy_runs: noisyRuns,
      /** Non-2xx replies, errors and incomplete streams seen, by run. */
      problems,
      settings: SETTINGS,
      goals_config: GOALS,
      /** VmRSS of each broker once ready (inference pool running, INFER_THREADS=1), before any load, MB (10^6 bytes). */
      broker_rss_at_start_mb: rssStart,
      broker_threads_at_start: threadCount,
      non_streaming: ns,
      portkey_stream_probe: probe,
      streaming: st,
      idle_rss_infer_disabled: idle,
      per_thread_cpu_and_projection: proj,
      goals: g,
      /** Seconds from start to the results, waiting for a quiet machine included; measure_s without it. */
      wall_s: round((performance.now() - started) / 1000, 1),
      measure_s: round((performance.now() - measureStarted) / 1000, 1),
    };
    const file = writeResults('llm', results);
    console.log(report(results));
    if (noisyRuns.length > 0) log(`${noisyRuns.length} run(s) disturbed by other processes (listed in noisy_runs)`);
    if (problems.length > 0) log(`problems seen:\n  ${problems.join('\n  ')}`);
    log(`wrote ${relative(ROOT, file)}: measured in ${results.measure_s}s (${results.wall_s}s with the build and the wait for a quiet machine)`);
  } finally {
    await Promise.all(servers.map((c) => c.stop()));
    if (configFile !== undefined) rmSync(join(configFile, '..'), { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------------------------

type Results = {
  non_streaming: Awaited<ReturnType<typeof nonStreaming>>;
  streaming: Awaited<ReturnType<typeof streaming>>;
  idle_rss_infer_disabled: Awaited<ReturnType<typeof idleRss>>;
  per_thread_cpu_and_projection: ReturnType<typeof projection>;
  goals: Goal[];
  broker_rss_at_start_mb: Record<Broker, number | null>;
};

function report(r: Results): string {
  const ns = r.non_streaming;
  const st = r.streaming;
  const out: string[] = [];
  const m = ns.max_rps;
  out.push('\n### Non-streaming, max req/s (autocannon, 50 connections)\n');
  out.push(
    mdTable(
      ['path', 'req/s', 'vs floor', 'p50 ms', 'p99 ms', 'errors', 'server CPU µs/reply', 'main thread µs', 'other threads µs'],
      NS_PATHS.map((p) => {
        const c = m.cpu_us_per_reply[p].server;
        return [LABEL[p], m[p].rps, p === 'direct' || p === 'floor' ? null : (m.ratio_vs_floor as Record<string, number>)[p]!, m[p].latency.p50_ms, m[p].latency.p99_ms, m[p].errors + m[p].non_2xx + m[p].timeouts, c.process_us, c.main_thread_us ?? null, c.other_threads_us ?? null];
      }),
    ),
  );
  for (const [rate, x] of Object.entries(ns.fixed_rate)) {
    out.push(`\n### Non-streaming at ${rate} req/s (paced open loop), ms\n`);
    out.push(
      mdTable(
        ['path', 'req/s', 'p50', 'p99', 'added p50 vs direct', 'added p99 vs direct', 'sustained'],
        NS_PATHS.map((p) => {
          const v = x[p] as PacedResult | { skipped: string };
          if ('skipped' in v) return [LABEL[p], 'skipped', null, null, null, null, null];
          const o = p === 'direct' || p === 'portkey' ? null : x.overhead_ms[p as Broker | 'floor'];
          return [LABEL[p], v.achieved_rps, v.latency.p50_ms, v.latency.p99_ms, o?.p50 ?? null, o?.p99 ?? null, v.sustained ? 'yes' : 'NO'];
        }),
      ),
    );
  }
  out.push('\n### Streaming, single stream (sequential; 16 tokens at 500/s), ms\n');
  out.push(
    mdTable(
      ['path', 'n', 'TTFT p50', 'TTFT p99', 'added TTFT p50', 'total p50'],
      ST_PATHS.map((p) => [LABEL[p], st.single[p].streams, st.single[p].ttft.p50_ms, st.single[p].ttft.p99_ms, p === 'direct' ? null : st.single.added_ttft_p50_ms[p], st.single[p].total.p50_ms]),
    ),
  );
  out.push(`\n### Streaming saturation (${SETTINGS.streaming.saturation.concurrency} streams kept open, 128 tokens written at once upstream)\n`);
  out.push(
    mdTable(
      ['path', 'streams/s', 'vs floor', 'events/s', 'completed', 'TTFT p50 ms', 'CPU µs/stream', 'CPU µs/event', 'main thread µs/event', 'other threads µs/event'],
      ST_PATHS.map((p) => {
        const c = st.saturation.cpu_us[p];
        const x = st.saturation[p];
        return [LABEL[p], x.streams_per_s!, p === 'direct' || p === 'floor' ? null : st.saturation.ratio_vs_floor[p], x.events_per_s!, `${round(x.completion_rate * 100, 2)}%`, x.ttft.p50_ms, c.per_stream.process_us, c.per_event.process_us, c.per_event.main_thread_us ?? null, c.per_event.other_threads_us ?? null];
      }),
    ),
  );
  out.push(`\n### Realistic streaming (${SETTINGS.streaming.realistic.concurrency} streams kept open, 128 tokens at 30/s), ms\n`);
  out.push(
    mdTable(
      ['path', 'streams', 'completed', 'TTFT p50', 'TTFT p99', '+TTFT p50', '+TTFT p99', 'gap p50', 'gap p99', '+gap p99', 'events/s', 'CPU µs/event', 'main thread µs/event', 'CPU cores', 'RSS start MB', 'RSS peak MB'],
      ST_PATHS.map((p) => {
        const x = st.realistic[p];
        const c = st.realistic.cpu_us[p].per_event;
        const d = p === 'direct' ? undefined : p;
        const proc = p === 'direct' ? 'mock_real' : p === 'floor' ? 'floor_proxy' : p;
        return [
          LABEL[p],
          x.streams,
          `${round(x.completion_rate * 100, 2)}%`,
          x.ttft.p50_ms,
          x.ttft.p99_ms,
          d ? st.realistic.added_ttft_p50_ms[d] : null,
          d ? st.realistic.added_ttft_p99_ms[d] : null,
          x.gap!.p50_ms,
          x.gap!.p99_ms,
          d ? st.realistic.added_gap_p99_ms[d] : null,
          x.events_per_s!,
          c.process_us,
          c.main_thread_us ?? null,
          round((x.cpu.by_process_s[proc] ?? 0) / x.cpu.window_s, 2),
          x.rss_start_mb ?? null,
          x.rss_peak_mb ?? null,
        ];
      }),
    ),
  );
  const idle = r.idle_rss_infer_disabled;
  out.push(`\nBroker RSS once ready (inference pool running, INFER_THREADS=1): ${BROKERS.map((b) => `${LABEL[b]} ${r.broker_rss_at_start_mb[b]} MB`).join(', ')}.`);
  out.push(`Idle RSS with INFER_ENABLED=false: FRONT_THREADS=2 ${idle.ft2.rss_mb} MB (${idle.ft2.threads} threads), FRONT_THREADS=0 ${idle.ft0.rss_mb} MB (${idle.ft0.threads} threads).`);

  const pj = r.per_thread_cpu_and_projection;
  // The two busiest non-main threads are the data-plane threads (by load, not by name): their sum per unit.
  const two = (c: ReturnType<typeof cpuPer>): string | null => (c.busiest_threads_us === undefined ? null : `${round((c.busiest_threads_us[0] ?? 0) + (c.busiest_threads_us[1] ?? 0), 1)} (${c.busiest_threads_us.slice(0, 2).join(' + ')})`);
  out.push(`\n### CPU per request and per event (FRONT_THREADS=2), projected to ${pj.cores} cores\n`);
  out.push(`Thread names in /proc: ${pj.thread_names_seen.join(', ')} (data-plane threads ${pj.data_plane_threads_named ? 'named' : 'not named: per process, main thread = control plane, other threads = data planes + V8/libuv helpers + inference worker'}).\n`);
  out.push(
    mdTable(
      ['measure', 'process µs', 'main thread µs', 'other threads µs', '2 busiest other threads µs', `${pj.cores} cores (all busy)`, 'main-thread ceiling'],
      [
        ['per request (max req/s run)', pj.per_request_us.process_us, pj.per_request_us.main_thread_us ?? null, pj.per_request_us.other_threads_us ?? null, two(pj.per_request_us), pj.rps_all_cores === null ? null : `${pj.rps_all_cores.toLocaleString('en-US')} req/s`, pj.rps_main_thread_ceiling === null ? null : `${pj.rps_main_thread_ceiling.toLocaleString('en-US')} req/s`],
        ['per stream (saturation)', pj.per_stream_us_saturation.process_us, pj.per_stream_us_saturation.main_thread_us ?? null, pj.per_stream_us_saturation.other_threads_us ?? null, two(pj.per_stream_us_saturation), pj.streams_per_s_all_cores === null ? null : `${pj.streams_per_s_all_cores.toLocaleString('en-US')} streams/s`, pj.streams_per_s_main_thread_ceiling === null ? null : `${pj.streams_per_s_main_thread_ceiling.toLocaleString('en-US')} streams/s`],
        ['per event (realistic)', pj.per_event_us_realistic.process_us, pj.per_event_us_realistic.main_thread_us ?? null, pj.per_event_us_realistic.other_threads_us ?? null, two(pj.per_event_us_realistic), pj.realistic_streams_all_cores === null ? null : `${pj.realistic_streams_all_cores.toLocaleString('en-US')} open streams`, pj.realistic_streams_main_thread_ceiling === null ? null : `${pj.realistic_streams_main_thread_ceiling.toLocaleString('en-US')} open streams`],
      ],
    ),
  );
  out.push(`\nRSS per data-plane thread (idle, FRONT_THREADS=2 − FRONT_THREADS=0, / 2): ${pj.rss_per_data_plane_thread_mb} MB; FRONT_THREADS=${pj.cores} would start at about ${pj.idle_rss_mb_at_16_threads} MB.`);

  out.push('\n### Goals\n');
  const yn = (g: Goal, b: Broker) => (g.values[b] === undefined ? '–' : `${g.values[b] ?? 'n/a'} ${g.met[b] ? 'met' : 'MISSED'}`);
  out.push(mdTable(['goal', 'target', 'FRONT_THREADS=2', 'FRONT_THREADS=0'], r.goals.map((g) => [g.goal, g.target, yn(g, 'ft2'), yn(g, 'ft0')])));
  if (problems.length > 0) out.push(`\nProblems: ${problems.join('; ')}`);
  if (noisyRuns.length > 0) out.push(`\nDisturbed runs: ${noisyRuns.join('; ')}`);
  return out.join('\n');
}

if (process.argv.includes('--cpu-prof')) await profileOnly();
else await main();
