// npm run soak -- [--minutes N] [--measure-s S] [--share F] [--tsx]
//
// A broker child (data-plane threads, real models) in front of a streaming mock LLM
// upstream, under mixed traffic: /v1/infer with a real image, and LLM streams over the
// OpenAI and Ollama APIs, half and half. First the maximum is measured briefly (closed
// loop, `--measure-s`, default 15 s); then requests arrive at `--share` (default 0.7) of it,
// open loop, for `--minutes` (default 10). Reports errors, p50/p99 per minute and RSS over
// time to bench/results/soak.json. Goal: 0 errors, and RSS growth at most 5 % between
// minute 2 and the end. A stream counts as an error unless it ends with its terminal event
// ([DONE], or Ollama's done: true).
import { parseArgs } from 'node:util';
import { Agent, setGlobalDispatcher } from 'undici';
import { createMockUpstream } from '../src/mock-upstream/server.ts';
import { buildDist, startBroker, type BrokerRuntime } from './lib/process.ts';
import { memoryStatus } from './lib/proc.ts';
import { fashionPng } from './lib/images.ts';
import { machine, writeResults } from './lib/report.ts';
import { percentile, round, sleep } from './lib/stats.ts';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';

const { values } = parseArgs({
  options: { tsx: { type: 'boolean', default: false }, minutes: { type: 'string', default: '10' }, 'measure-s': { type: 'string', default: '15' }, share: { type: 'string', default: '0.7' }, concurrency: { type: 'string', default: '32' } },
});
const minutes = Number(values.minutes);
const measureS = Number(values['measure-s']);
const share = Number(values.share);
const closedConcurrency = Number(values.concurrency);
if (!(minutes > 0) || !(measureS > 0) || !(share > 0 && share <= 1)) throw new Error('--minutes and --measure-s must be > 0, --share in (0, 1]');
if (!(Number.isInteger(closedConcurrency) && closedConcurrency >= 1)) throw new Error(`--concurrency must be an integer >= 1, got ${JSON.stringify(values.concurrency)}`);

setGlobalDispatcher(new Agent({ connections: 256, keepAliveTimeout: 30_000 }));

// A streaming upstream: 32 tokens at 400 tokens/s (an 80 ms stream after a 20 ms first token).
const mock = await createMockUpstream({ tokens: 32, tps: 400, ttftMs: 20 });
const dir = mkdtempSync(join(tmpdir(), 'eb-soak-'));
writeFileSync(
  join(dir, 'broker.yaml'),
  stringify({
    modelGroups: {
      chat: {
        deployments: [
          { id: 'mock-openai', provider: 'openai', url: mock.url, model: 'mock-model', concurrencyLimit: 512 },
          { id: 'mock-ollama', provider: 'ollama', url: mock.url, model: 'mock-model', concurrencyLimit: 512 },
        ],
      },
    },
  }),
);
// The broker as `npm start` runs it (dist/main.js, built first); `--tsx` runs the sources.
const runtime: BrokerRuntime = values.tsx ? 'tsx' : 'dist';
if (runtime === 'dist') {
  const b = buildDist();
  if (!b.ok) throw new Error(`build failed: ${b.message}`);
}
const broker = await startBroker('broker', { BROKER_CONFIG: join(dir, 'broker.yaml'), FRONT_THREADS: '2', LOG_LEVEL: 'warn', INFER_MAX_QUEUE: '1024' }, [], 120_000, runtime);
const { png } = await fashionPng(3);
const inferBody = JSON.stringify({ image_b64: png.toString('base64'), top_k: 3 });
const openaiBody = JSON.stringify({ model: 'chat', stream: true, messages: [{ role: 'user', content: 'soak' }] });
const ollamaBody = JSON.stringify({ model: 'chat', stream: true, messages: [{ role: 'user', content: 'soak' }] });

type Kind = 'infer' | 'openai_stream' | 'ollama_stream';
const KINDS: Kind[] = ['infer', 'openai_stream', 'infer', 'ollama_stream'];

/** One request; resolves with its latency, or throws with what went wrong. */
async function one(kind: Kind): Promise<number> {
  const t0 = performance.now();
  const [path, body] = kind === 'infer' ? ['/v1/infer', inferBody] : kind === 'openai_stream' ? ['/v1/chat/completions', openaiBody] : ['/api/chat', ollamaBody];
  const res = await fetch(`${broker.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal: AbortSignal.timeout(30_000) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${kind}: ${res.status} ${text.slice(0, 200)}`);
  if (kind === 'infer' && !text.includes('"predictions"')) throw new Error(`infer: no predictions: ${text.slice(0, 200)}`);
  if (kind === 'openai_stream' && !text.trimEnd().endsWith('data: [DONE]')) throw new Error(`openai stream without [DONE]: ${text.slice(-200)}`);
  if (kind === 'ollama_stream' && !/"done":\s*true/.test(text.trimEnd().split('\n').at(-1) ?? '')) throw new Error(`ollama stream without done: ${text.slice(-200)}`);
  return performance.now() - t0;
}

// 1. Warm up, then the maximum: a closed loop of `closedConcurrency` clients.
for (let i = 0; i < 20; i++) await one(KINDS[i % KINDS.length]!);
let measured = 0;
let measureErrors = 0;
{
  const until = performance.now() + measureS * 1000;
  let k = 0;
  await Promise.all(
    Array.from({ length: closedConcurrency }, async () => {
      while (performance.now() < until) {
        try {
          await one(KINDS[k++ % KINDS.length]!);
          measured++;
        } catch {
          measureErrors++;
        }
      }
    }),
  );
}
const maxRps = measured / measureS;
const targetRps = maxRps * share;
console.log(`maximum: ${round(maxRps, 1)} req/s (closed loop, ${closedConcurrency} clients, ${measureS} s, ${measureErrors} errors); soak at ${round(targetRps, 1)} req/s for ${minutes} min`);
await sleep(3000);

// 2. The soak: open loop at targetRps, arrivals evenly spaced.
interface Window {
  minute: number;
  requests: number;
  errors: number;
  latencies: number[];
  rss_kb: number[];
}
const windows: Window[] = [];
const rssSeries: { t_s: number; rss_kb: number }[] = [];
const errorExamples: string[] = [];
let errors = 0;
let sent = 0;
let inFlight = 0;
let maxInFlight = 0;
const start = performance.now();
const end = start + minutes * 60_000;
const windowOf = (now: number): Window => {
  const m = Math.floor((now - start) / 60_000);
  while (windows.length <= m) windows.push({ minute: windows.length + 1, requests: 0, errors: 0, latencies: [], rss_kb: [] });
  return windows[m]!;
};
const sampler = setInterval(() => {
  const now = performance.now();
  if (now > end) return;
  const rss = memoryStatus(broker.pid).rss_kb;
  rssSeries.push({ t_s: Math.round((now - start) / 1000), rss_kb: rss });
  windowOf(now).rss_kb.push(rss);
}, 5000);
const reporter = setInterval(() => {
  const w = windows.at(-2);
  if (w !== undefined && (w as Window & { printed?: boolean }).printed !== true) {
    (w as Window & { printed?: boolean }).printed = true;
    const s = Float64Array.from(w.latencies).sort();
    console.log(`minute ${w.minute}: ${w.requests} requests, ${w.errors} errors, p50 ${round(percentile(s, 50), 1)} ms, p99 ${round(percentile(s, 99), 1)} ms, RSS ${Math.round((w.rss_kb.at(-1) ?? 0) / 1024)} MiB`);
  }
}, 5000);
const pending = new Set<Promise<void>>();
const interval = 1000 / targetRps;
for (let next = start; next < end; next += interval) {
  const wait = next - performance.now();
  if (wait > 1) await sleep(wait);
  const kind = KINDS[sent++ % KINDS.length]!;
  const w = windowOf(performance.now());
  inFlight++;
  maxInFlight = Math.max(maxInFlight, inFlight);
  const p = one(kind).then(
    (ms) => {
      w.requests++;
      w.latencies.push(ms);
    },
    (err: Error) => {
      w.requests++;
      w.errors++;
      errors++;
      if (errorExamples.length < 10) errorExamples.push(err.message);
    },
  );
  const tracked = p.finally(() => {
    inFlight--;
    pending.delete(tracked);
  });
  pending.add(tracked);
}
await Promise.all(pending);
clearInterval(sampler);
clearInterval(reporter);
const seconds = (performance.now() - start) / 1000;

// RSS growth between the end of minute 2 (warm: pools, JIT, heaps sized) and the end.
const at = (s: number): number => rssSeries.reduce((best, p) => (Math.abs(p.t_s - s) < Math.abs(best.t_s - s) ? p : best), rssSeries[0]!).rss_kb;
const rssMinute2 = minutes >= 3 ? at(120) : rssSeries[0]?.rss_kb ?? NaN;
const rssEnd = rssSeries.at(-1)?.rss_kb ?? NaN;
const growthPct = round(((rssEnd - rssMinute2) / rssMinute2) * 100, 2);
// A step (heaps resized once) and a leak both miss the 5 %; the slope of the second half tells them apart.
const half = rssSeries.filter((p) => p.t_s >= (minutes * 60) / 2);
const mx = half.reduce((a, p) => a + p.t_s, 0) / half.length;
const my = half.reduce((a, p) => a + p.rss_kb, 0) / half.length;
const slope = half.reduce((a, p) => a + (p.t_s - mx) * (p.rss_kb - my), 0) / half.reduce((a, p) => a + (p.t_s - mx) ** 2, 0);
const slopeMibPerMin = round((slope * 60) / 1024, 2);
const results = {
  minutes,
  duration_s: round(seconds, 1),
  runtime,
  mix: 'half /v1/infer (Fashion-MNIST PNG), a quarter OpenAI streams, a quarter Ollama streams (32 tokens at 400 tokens/s from the mock)',
  max: { rps: round(maxRps, 1), closed_loop_clients: closedConcurrency, seconds: measureS, errors: measureErrors },
  target_rps: round(targetRps, 1),
  share,
  requests: sent,
  achieved_rps: round(sent / seconds, 1),
  errors,
  error_examples: errorExamples,
  max_in_flight: maxInFlight,
  per_minute: windows.map((w) => {
    const s = Float64Array.from(w.latencies).sort();
    return { minute: w.minute, requests: w.requests, errors: w.errors, p50_ms: round(percentile(s, 50), 1), p99_ms: round(percentile(s, 99), 1), rss_mb: Math.round((w.rss_kb.at(-1) ?? NaN) / 1024) };
  }),
  rss_kb: rssSeries,
  rss_growth: { from_minute_2_kb: rssMinute2, baseline: minutes >= 3 ? 'minute 2' : 'first sample (run under 3 minutes)', end_kb: rssEnd, pct: growthPct, goal_pct: 5, second_half_slope_mib_per_min: slopeMibPerMin },
  pass: errors === 0 && growthPct <= 5,
  machine: machine(),
};
const file = writeResults('soak', results);
for (const m of results.per_minute) console.log(`minute ${m.minute}: ${m.requests} requests, ${m.errors} errors, p50 ${m.p50_ms} ms, p99 ${m.p99_ms} ms, RSS ${m.rss_mb} MiB`);
console.log(`\n${sent} requests in ${round(seconds, 0)} s at ${results.achieved_rps} req/s (target ${results.target_rps}), ${errors} errors, max in flight ${maxInFlight}`);
// Under 3 minutes there is no warm minute 2: the baseline is the first sample, a cold start.
console.log(`RSS ${Math.round(rssMinute2 / 1024)} MiB at ${minutes >= 3 ? 'minute 2' : 'the start (a run under 3 minutes has no warm minute 2: the growth includes warming up)'}, ${Math.round(rssEnd / 1024)} MiB at the end: ${growthPct} % (goal <= 5 %); second half: ${slopeMibPerMin} MiB/min`);
if (errorExamples.length > 0) console.log('errors:', errorExamples.slice(0, 5));
console.log(results.pass ? 'PASS' : 'FAIL', `results: ${file}`);
await broker.stop(30_000);
await mock.close();
process.exit(results.pass ? 0 : 1);
