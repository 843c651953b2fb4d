// `npm run bench:otel`: does tracing cost anything when it is off, and what does it cost on?
// The broker (compiled dist/main.js, INFER_ENABLED=false) proxies non-streaming
// POST /v1/chat/completions to the mock upstream (16 tokens, at once), in four settings:
//
//   off             OTEL_ENABLED=false (the default)
//   off (control)   the same again: how far two identical brokers differ is the noise floor
//   on 1.0          OTEL_ENABLED=true, OTEL_TRACES_SAMPLER_ARG=1: every request traced (4 spans)
//   on 0.01         OTEL_ENABLED=true, OTEL_TRACES_SAMPLER_ARG=0.01
//
// The traced brokers export to an OTLP/HTTP receiver in this process, which drains and
// answers 200 without parsing: parsing every span here took CPU from the load generator in
// the same process, and the traced brokers' req/s fell for it (a first version did). Spans
// are counted by the brokers' own otel_spans_total.
// Each round starts a fresh broker per setting (rotated order, so that a process's own luck
// and the drift of a shared machine hit each alike), warms it for 1 s, then loads it for
// `--seconds` at max rate (autocannon, 16 connections) and `--seconds` at `--paced` req/s.
// Reported per setting: req/s, and the broker's CPU per request (utime + stime of its process
// over 2xx replies; at the paced rate also split main thread / other threads). Only
// differences within one run count: on a shared 2-core box, process CPU per
// request moves by 2x from one window to the next. So, last, the off and on-1.0 brokers run
// once more under --cpu-prof (`--seconds` of load each), and the profile says which share of
// the busy CPU the tracing modules (dist/obs/trace/) and the garbage collector took: a
// figure that load elsewhere on the machine does not move. And first, in this process (no
// HTTP): what making the spans of one request and encoding a span cost (`micro`); then an
// A/B in this one process (`in_process`): a broker with tracing off and one with every
// request traced, FRONT_THREADS=0, the mock upstream and the load generator in-process too,
// alternated, process CPU per request: both sides pay the same client and mock, so the
// difference is tracing's, and load elsewhere on the machine moves both alike.
// Writes bench/results/otel.json.
//
//   npm run bench:otel -- [--rounds 2] [--seconds 5] [--paced 1500] [--front-threads 0] [--micro] [--in-process] [--in-process-rounds 6]
import { createServer } from 'node:http';
import { Writable } from 'node:stream';
import { Pool } from 'undici';
import { loadConfig } from '../src/config/env.ts';
import { startBroker as startBrokerInProcess } from '../src/app.ts';
import { createMockUpstream } from '../src/mock-upstream/server.ts';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cannon } from './llm/cannon.ts';
import { buildDist, startBroker } from './lib/process.ts';
import { startMock } from './llm/procs.ts';
import { cpuBetween, threadCpu } from './lib/proc.ts';
import { profileSummary } from './llm/profile.ts';
import { machine, mdTable, writeResults } from './lib/report.ts';
import { round, sleep } from './lib/stats.ts';
import { performance } from 'node:perf_hooks';
import { Tracer } from '../src/obs/trace/tracer.ts';
import { encodeSpan, encodeTraces, otlpObject } from '../src/obs/trace/otlp.ts';
import { endRequestSpan, startRequestSpan } from '../src/obs/trace/http.ts';
import { attemptSpan, queueWaitSpan } from '../src/obs/trace/llm.ts';
import type { SpanData } from '../src/obs/trace/span.ts';
import type { DeploymentConfig } from '../src/config/broker-config.ts';
import { knownFlags, numberFlag } from './lib/args.ts';

knownFlags(['rounds', 'seconds', 'front-threads', 'in-process-rounds', 'paced', 'micro', 'in-process']);
const arg = (name: string, def: number): number => numberFlag(name, def, { min: name === 'front-threads' ? 0 : 1, integer: name !== 'seconds' });
/**
 * In this process, no HTTP: what the spans of one traced LLM request cost to make (request,
 * admission, queue wait, upstream attempt, as the broker makes them), and what a span costs
 * to encode, by hand (otlp.ts) and as objects through JSON.stringify (the reference).
 */
function micro(): { make_4_spans_us: number; encode_per_span_us: number; encode_per_span_objects_us: number; bytes_per_span: number } {
  const kept: SpanData[] = [];
  const tracer = new Tracer({ serviceName: 'bench', url: 'http://127.0.0.1:9/v1/traces', sampleRatio: 1, thread: 'main' });
  // The exporter is replaced by a sink that keeps one batch: the figure is the making, not the queue.
  (tracer as unknown as { sink: { push(s: SpanData): void } }).sink = { push: (s) => void (kept.length < 512 && kept.push(s)) };
  const dep = { id: 'mock-1', url: 'http://127.0.0.1:1234', provider: 'openai', model: 'm' } as DeploymentConfig;
  const headers = { 'content-type': 'application/json' };
  const one = (): string => {
    const s = startRequestSpan(tracer, headers, 'POST', 'abc123', '127.0.0.1', performance.now())!;
    s.child('llm.admission').set('llm.model_group', 'bench').set('llm.priority', 5).end();
    queueWaitSpan(s, 'bench', 0).set('llm.deployment', 'mock-1').end();
    const u = attemptSpan(s, dep, 'bench', 0, false, 'chat');
    const tp = u.traceparent;
    u.set('http.response.status_code', 200).set('llm.ttft_ms', 1.234).set('gen_ai.usage.input_tokens', 10).set('gen_ai.usage.output_tokens', 16).end();
    endRequestSpan(s, '/v1/chat/completions', '/v1/chat/completions', 200, undefined, false);
    return tp;
  };
  const resource = { 'service.name': 'bench' };
  const scope = { name: 'edge-broker', version: '0' };
  const buf = Buffer.allocUnsafe(1 << 20);
  // The best of 15 trials each: on a shared box the minimum is the figure other load moved least.
  const best = { make: Infinity, hand: Infinity, objects: Infinity };
  for (let trial = 0; trial < 15; trial++) {
    const N = 5000;
    let t0 = performance.now();
    for (let i = 0; i < N; i++) one();
    best.make = Math.min(best.make, ((performance.now() - t0) / N) * 1000);
    const R = 10;
    // As the exporter does: each span encoded and its bytes appended to the batch.
    t0 = performance.now();
    for (let i = 0; i < R; i++) {
      let len = 0;
      for (const s of kept) len += buf.write(encodeSpan(s), len);
    }
    best.hand = Math.min(best.hand, ((performance.now() - t0) / (R * kept.length)) * 1000);
    t0 = performance.now();
    for (let i = 0; i < R; i++) buf.write(JSON.stringify(otlpObject(resource, scope, kept)));
    best.objects = Math.min(best.objects, ((performance.now() - t0) / (R * kept.length)) * 1000);
  }
  void tracer.shutdown(0);
  return { make_4_spans_us: round(best.make, 2), encode_per_span_us: round(best.hand, 2), encode_per_span_objects_us: round(best.objects, 2), bytes_per_span: Math.round(encodeTraces(resource, scope, kept).length / kept.length) };
}

const HZ = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
/** User and system CPU seconds of a process (all its threads: the GC's helpers and the kernel's share of its sockets too). */
function cpuUserSys(pid: number): { user: number; sys: number } {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return { user: Number(fields[11]) / HZ, sys: Number(fields[12]) / HZ };
}

const microFigures = micro();
console.log('micro (in-process):', microFigures);
// `-- --micro`: only these figures, no servers, no results file.
if (process.argv.includes('--micro')) process.exit(0);

/** Tracing off and fully on, alternated in this process (see the header). */
async function inProcess(rounds: number, requests: number): Promise<Record<'off' | 'on 1.0' | 'on 0.01', { us_per_req: number[]; median: number }>> {
  const recv = createServer((req, res) => {
    req.resume();
    req.on('end', () => res.writeHead(200).end('{}'));
  });
  await new Promise<void>((r) => recv.listen(0, '127.0.0.1', r));
  const mock = await createMockUpstream({ tokens: 16 });
  const d = mkdtempSync(join(tmpdir(), 'eb-bench-otel-ip-'));
  writeFileSync(join(d, 'fleet.json'), JSON.stringify({ modelGroups: { bench: { deployments: [{ id: 'mock-1', provider: 'openai', url: mock.url, model: 'm', concurrencyLimit: 256 }] } } }));
  const quiet = new Writable({ write: (_c, _e, cb) => cb() });
  const start = (env: Record<string, string>) =>
    startBrokerInProcess(loadConfig({ PORT: '0', GRPC_PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'warn', FRONT_THREADS: '0', INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false', BROKER_CONFIG: join(d, 'fleet.json'), OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${(recv.address() as { port: number }).port}`, ...env }), { logDestination: quiet });
  const body1 = JSON.stringify({ model: 'bench', messages: [{ role: 'user', content: 'Say something.' }], max_tokens: 16 });
  const load = async (port: number, n: number): Promise<void> => {
    const pool = new Pool(`http://127.0.0.1:${port}`, { connections: CONNECTIONS });
    let left = n;
    await Promise.all(
      Array.from({ length: CONNECTIONS }, async () => {
        while (left-- > 0) await (await pool.request({ method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json' }, body: body1 })).body.text();
      }),
    );
    await pool.close();
  };
  const names = ['off', 'on 1.0', 'on 0.01'] as const;
  const brokers = { off: await start({ OTEL_ENABLED: 'false' }), 'on 1.0': await start({ OTEL_ENABLED: 'true' }), 'on 0.01': await start({ OTEL_ENABLED: 'true', OTEL_TRACES_SAMPLER_ARG: '0.01' }) };
  for (const n of names) await load(brokers[n].port, 2000);
  const out = { off: [] as number[], 'on 1.0': [] as number[], 'on 0.01': [] as number[] };
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < names.length; i++) {
      const name = names[(i + r) % names.length]!;
      const c0 = process.cpuUsage();
      await load(brokers[name].port, requests);
      // Every window waits the same, so that a traced broker's export (within its 1 s interval) is counted in its own.
      await sleep(1100);
      const c = process.cpuUsage(c0);
      out[name].push(round((c.user + c.system) / requests, 1));
    }
  }
  await Promise.all(names.map((n) => brokers[n].close(100)));
  await mock.close();
  recv.close();
  return Object.fromEntries(names.map((n) => [n, { us_per_req: out[n], median: median(out[n]) }])) as Record<(typeof names)[number], { us_per_req: number[]; median: number }>;
}

function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : round((s[m - 1]! + s[m]!) / 2, 1);
}

const ROUNDS = arg('rounds', 2);
const SECONDS = arg('seconds', 5);
const FRONT_THREADS = arg('front-threads', 0);
const CONNECTIONS = 16;

const inProcessFigures = await inProcess(arg('in-process-rounds', 6), 4000);
console.log('in-process A/B, process CPU µs per request:', inProcessFigures);
// `-- --in-process`: only the figures so far, no results file.
if (process.argv.includes('--in-process')) process.exit(0);

const SETTINGS = {
  off: { OTEL_ENABLED: 'false' },
  'off (control)': { OTEL_ENABLED: 'false' },
  'on 1.0': { OTEL_ENABLED: 'true', OTEL_TRACES_SAMPLER_ARG: '1' },
  'on 0.01': { OTEL_ENABLED: 'true', OTEL_TRACES_SAMPLER_ARG: '0.01' },
} as const;
type Setting = keyof typeof SETTINGS;
const NAMES = Object.keys(SETTINGS) as Setting[];

// The OTLP receiver: drains the body, answers 200.
const receiver = createServer((req, res) => {
  req.resume();
  req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end('{}'));
});
/** Spans a broker exported so far, and dropped (its otel_spans_total). */
async function spanCounts(url: string): Promise<{ exported: number; dropped: number }> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const sum = (re: RegExp): number => [...text.matchAll(re)].reduce((a, m) => a + Number(m[1]), 0);
  return { exported: sum(/^otel_spans_total\{outcome="exported"\} (\d+)/gm), dropped: sum(/^otel_spans_total\{outcome="dropped_[a-z_]+"\} (\d+)/gm) };
}
await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
const otlpUrl = `http://127.0.0.1:${(receiver.address() as { port: number }).port}`;

const build = buildDist();
if (!build.ok) throw new Error(`build failed: ${build.message}`);
const mock = await startMock('mock', { tokens: 16, tps: 0, ttftMs: 0 }, 'dist');
const dir = mkdtempSync(join(tmpdir(), 'eb-bench-otel-'));
const fleetFile = join(dir, 'fleet.json');
writeFileSync(fleetFile, JSON.stringify({ modelGroups: { bench: { deployments: [{ id: 'mock-1', provider: 'openai', url: mock.url, model: 'm', concurrencyLimit: 256 }] } } }));

const brokerEnv = (name: Setting): Record<string, string> => ({ BROKER_CONFIG: fleetFile, INFER_ENABLED: 'false', FRONT_THREADS: String(FRONT_THREADS), FLEET_HEALTH_CHECKS: 'false', OTEL_EXPORTER_OTLP_ENDPOINT: otlpUrl, ...SETTINGS[name] });
const body = JSON.stringify({ model: 'bench', messages: [{ role: 'user', content: 'Say something.' }], max_tokens: 16 });
interface Run {
  readonly rps: number;
  readonly ok: number;
  readonly errors: number;
  readonly cpu_s: number;
  readonly cpu_us_per_req: number;
  readonly user_us_per_req: number;
  readonly sys_us_per_req: number;
  readonly p50_ms: number;
  readonly p99_ms: number;
}
interface Paced {
  readonly rps: number;
  readonly ok: number;
  /** The event loop's thread, and every other thread (V8's GC helpers, libuv's pool). */
  readonly main_thread_us_per_req: number;
  readonly other_threads_us_per_req: number;
  readonly cpu_us_per_req: number;
  readonly user_us_per_req: number;
  readonly sys_us_per_req: number;
}
const byName = <T>(make: () => T): Record<Setting, T> => Object.fromEntries(NAMES.map((n) => [n, make()])) as Record<Setting, T>;
const runs = byName<Run[]>(() => []);
const paced = byName<Paced[]>(() => []);
const spans = byName(() => 0);
const dropped = byName(() => 0);
// The same load for each (paced, --paced req/s): CPU per request at max rate also moves with
// the rate itself (fewer requests per wake-up, less coalescing), so the fair comparison of
// what tracing costs is at an equal rate.
const PACED = arg('paced', 1500);

// Each round starts a fresh broker per setting, in a rotated order: a process's own luck
// (core, layout, JIT) and the machine's drift average out over the rounds. The control is a
// second "off" broker: how far two identical brokers differ is the noise floor.
for (let r = 0; r < ROUNDS; r++) {
  const order = NAMES.map((_, i) => NAMES[(i + r) % NAMES.length]!);
  for (const name of order) {
    const b = await startBroker(`broker ${name}`, brokerEnv(name), [], 60_000, 'dist');
    try {
      // Warm-up: JIT, keep-alive pools.
      await cannon({ url: `${b.url}/v1/chat/completions`, body, connections: CONNECTIONS, durationS: 1 });
      const spans0 = (await spanCounts(b.url)).exported;
      const split0 = cpuUserSys(b.pid);
      const res = await cannon({ url: `${b.url}/v1/chat/completions`, body, connections: CONNECTIONS, durationS: SECONDS });
      const split1 = cpuUserSys(b.pid);
      const perReq = (s: number, ok: number): number => round((s / Math.max(1, ok)) * 1e6, 1);
      const cpu = split1.user + split1.sys - split0.user - split0.sys;
      runs[name].push({ rps: res.rps, ok: res.ok, errors: res.errors + res.non_2xx, cpu_s: round(cpu, 2), cpu_us_per_req: perReq(cpu, res.ok), user_us_per_req: perReq(split1.user - split0.user, res.ok), sys_us_per_req: perReq(split1.sys - split0.sys, res.ok), p50_ms: res.latency.p50_ms, p99_ms: res.latency.p99_ms });
      const threads1 = threadCpu(b.pid);
      const p = await cannon({ url: `${b.url}/v1/chat/completions`, body, connections: CONNECTIONS, durationS: SECONDS, overallRate: PACED });
      const split2 = cpuUserSys(b.pid);
      const threads = cpuBetween(b.pid, threads1, threadCpu(b.pid));
      const pcpu = split2.user + split2.sys - split1.user - split1.sys;
      paced[name].push({ rps: p.rps, ok: p.ok, main_thread_us_per_req: perReq(threads.main_s, p.ok), other_threads_us_per_req: perReq(threads.other_threads_s, p.ok), cpu_us_per_req: perReq(pcpu, p.ok), user_us_per_req: perReq(split2.user - split1.user, p.ok), sys_us_per_req: perReq(split2.sys - split1.sys, p.ok) });
      // Spans of these windows leave within the exporter's 1 s interval.
      await sleep(1300);
      const counts = await spanCounts(b.url);
      spans[name] += counts.exported - spans0;
      dropped[name] += counts.dropped;
      console.log(`round ${r + 1} ${name}: max ${res.rps} req/s, ${perReq(cpu, res.ok)} µs CPU/request; at ${PACED}/s: ${perReq(pcpu, p.ok)} µs CPU/request`);
    } finally {
      await b.stop();
    }
  }
}

/** Share (%) of the profiled broker's busy CPU in the tracing modules and in the GC, from profileSummary's tables. */
async function profiled(name: 'off' | 'on 1.0'): Promise<{ rps: number; trace_modules_pct: number; gc_pct: number; top: string }> {
  const profDir = join(dir, `prof-${name.replace(/\W+/g, '')}`);
  const b = await startBroker(`profiled ${name}`, { BROKER_CONFIG: fleetFile, INFER_ENABLED: 'false', FRONT_THREADS: String(FRONT_THREADS), FLEET_HEALTH_CHECKS: 'false', OTEL_EXPORTER_OTLP_ENDPOINT: otlpUrl, ...SETTINGS[name] }, ['--cpu-prof', `--cpu-prof-dir=${profDir}`], 60_000, 'dist');
  await cannon({ url: `${b.url}/v1/chat/completions`, body, connections: CONNECTIONS, durationS: 1 });
  const res = await cannon({ url: `${b.url}/v1/chat/completions`, body, connections: CONNECTIONS, durationS: SECONDS });
  await b.stop(15_000);
  const text = profileSummary(profDir, 15);
  const share = (re: RegExp): number => round([...text.matchAll(re)].reduce((a, m) => a + Number(m[1]), 0), 1);
  return { rps: res.rps, trace_modules_pct: share(/^dist\/obs\/trace\/\S+\s+[\d.]+\s+([\d.]+)%/gm), gc_pct: share(/^\(garbage collector\)\s+\S+ \S+ \S+\s+[\d.]+\s+([\d.]+)%/gm), top: text };
}
const profile = { off: await profiled('off'), 'on 1.0': await profiled('on 1.0') };
for (const [name, p] of Object.entries(profile)) console.log(`profiled ${name}: ${p.rps} req/s, tracing modules ${p.trace_modules_pct}% and GC ${p.gc_pct}% of busy CPU`);
await mock.stop();
receiver.close();

const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
const summary = Object.fromEntries(
  NAMES.map((name) => {
    const rs = runs[name];
    const ok = rs.reduce((a, x) => a + x.ok, 0);
    // Spans were counted over both windows, max rate and paced.
    const all = ok + paced[name].reduce((a, x) => a + x.ok, 0);
    return [
      name,
      {
        rps_mean: round(mean(rs.map((x) => x.rps)), 1),
        rps_median: median(rs.map((x) => x.rps)),
        cpu_us_per_req_median: median(rs.map((x) => x.cpu_us_per_req)),
        cpu_us_per_req: round((rs.reduce((a, x) => a + x.cpu_s, 0) / Math.max(1, ok)) * 1e6, 1),
        user_us_per_req: round(mean(rs.map((x) => x.user_us_per_req)), 1),
        sys_us_per_req: round(mean(rs.map((x) => x.sys_us_per_req)), 1),
        p50_ms_mean: round(mean(rs.map((x) => x.p50_ms)), 2),
        p99_ms_mean: round(mean(rs.map((x) => x.p99_ms)), 2),
        requests: ok,
        errors: rs.reduce((a, x) => a + x.errors, 0),
        spans_exported: spans[name],
        spans_per_request: round(spans[name] / Math.max(1, all), 3),
        spans_dropped: dropped[name],
      },
    ];
  }),
) as Record<Setting, { rps_mean: number; rps_median: number; cpu_us_per_req_median: number; cpu_us_per_req: number; user_us_per_req: number; sys_us_per_req: number; p50_ms_mean: number; p99_ms_mean: number; requests: number; errors: number; spans_exported: number; spans_per_request: number; spans_dropped: number }>;

const off = summary.off;
const pacedSummary = byName(() => ({ rps_mean: 0, cpu_us_per_req_median: 0, cpu_us_per_req: 0, user_us_per_req: 0, sys_us_per_req: 0, main_thread_us_per_req: 0, other_threads_us_per_req: 0 }));
for (const n of NAMES) {
  const ps = paced[n];
  pacedSummary[n] = { rps_mean: round(mean(ps.map((x) => x.rps)), 1), cpu_us_per_req_median: median(ps.map((x) => x.cpu_us_per_req)), cpu_us_per_req: round(mean(ps.map((x) => x.cpu_us_per_req)), 1), user_us_per_req: round(mean(ps.map((x) => x.user_us_per_req)), 1), sys_us_per_req: round(mean(ps.map((x) => x.sys_us_per_req)), 1), main_thread_us_per_req: round(mean(ps.map((x) => x.main_thread_us_per_req)), 1), other_threads_us_per_req: round(mean(ps.map((x) => x.other_threads_us_per_req)), 1) };
}
const results = {
  bench: 'otel',
  ...machine(),
  settings: { rounds: ROUNDS, seconds: SECONDS, connections: CONNECTIONS, front_threads: FRONT_THREADS, route: 'POST /v1/chat/completions (non-streaming, 16 tokens)', runtime: 'node dist/main.js' },
  summary,
  micro: microFigures,
  in_process: inProcessFigures,
  paced: {
    rate: PACED,
    summary: pacedSummary,
    runs: paced,
  },
  profile: Object.fromEntries(Object.entries(profile).map(([k, p]) => [k, { rps: p.rps, trace_modules_pct: p.trace_modules_pct, gc_pct: p.gc_pct, summary: p.top.split('\n') }])),
  vs_off: Object.fromEntries(
    NAMES.filter((n) => n !== 'off').map((n) => [
      n,
      { max_rps_ratio: round(summary[n].rps_mean / off.rps_mean, 3), max_cpu_per_req_ratio: round(summary[n].cpu_us_per_req / off.cpu_us_per_req, 3), paced_cpu_per_req_ratio: round(pacedSummary[n].cpu_us_per_req / pacedSummary.off.cpu_us_per_req, 3) },
    ]),
  ),
  runs,
};
const file = writeResults('otel', results);
console.log(
  mdTable(
    ['setting', 'req/s', 'req/s median', 'CPU µs/request', 'median', 'user', 'sys', 'p50 ms', 'p99 ms', 'spans/request', 'spans dropped'],
    NAMES.map((n) => [n, summary[n].rps_mean, summary[n].rps_median, summary[n].cpu_us_per_req, summary[n].cpu_us_per_req_median, summary[n].user_us_per_req, summary[n].sys_us_per_req, summary[n].p50_ms_mean, summary[n].p99_ms_mean, summary[n].spans_per_request, summary[n].spans_dropped]),
  ),
);
console.log(`\nAt ${PACED} req/s for each:`);
console.log(mdTable(['setting', 'req/s', 'CPU µs/request', 'median', 'user', 'sys', 'main thread', 'other threads'], NAMES.map((n) => [n, pacedSummary[n].rps_mean, pacedSummary[n].cpu_us_per_req, pacedSummary[n].cpu_us_per_req_median, pacedSummary[n].user_us_per_req, pacedSummary[n].sys_us_per_req, pacedSummary[n].main_thread_us_per_req, pacedSummary[n].other_threads_us_per_req])));
console.log(`\nwrote ${file}`);
