// bench:sched — what governance costs, in one run:
//  1. routing cost per request (Scheduler.tryAcquire + release, in process) with 10 and with
//     1,000 deployments in a group, with the default flags and with every flag on
//     (goal: 1,000 at most 2x the cost of 10);
//  2. proxy overhead through the broker with every flag off against every flag on, next to
//     the direct path to the same mock (non-streaming chat, fixed rate then closed loop).
// Writes bench/results/sched.json. Ratios within this run are what count.
import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { stringify } from 'yaml';
import { DEFAULT_ROUTER, DEFAULT_SCHEDULER, DEFAULT_TIMEOUTS, type DeploymentConfig, type ModelGroupConfig } from '../src/config/broker-config.ts';
import { FLAGS, FLAG_NAMES, envName, type FlagSet } from '../src/config/flags.ts';
import { CapacityCounters } from '../src/sched/capacity.ts';
import { WaitQueue } from '../src/sched/queue.ts';
import { Scheduler, type Admission } from '../src/sched/scheduler.ts';
import { DEFAULT_PERFORMANCE, PerformanceTracker } from '../src/policy/performance.ts';
import { StickyPins } from '../src/policy/sticky.ts';
import { QuotaLedger } from '../src/policy/quota.ts';
import { mulberry32 } from '../scripts/train/prng.ts';
import { cannon } from './llm/cannon.ts';
import { paced } from './llm/paced.ts';
import { ROOT, startBroker } from './lib/process.ts';
import { round, table } from './lib/stats.ts';
import { startMock } from './llm/procs.ts';

const ALL_ON = Object.fromEntries(FLAG_NAMES.map((f) => [f, true])) as FlagSet;
const ALL_OFF = Object.fromEntries(FLAG_NAMES.map((f) => [f, false])) as FlagSet;
const DEFAULTS = { ...FLAGS } as FlagSet;

// ---- 1. routing cost ----

function group(n: number): ModelGroupConfig {
  const deployments: DeploymentConfig[] = Array.from({ length: n }, (_, i) => ({
    id: `d${i}`,
    server: `d${i}`,
    provider: 'openai',
    url: `http://127.0.0.1:${10000 + i}`,
    model: 'm',
    concurrencyLimit: 64,
    weight: 1,
    apiKeyEnv: undefined,
    apiKey: undefined,
    rpm: 1e9,
    tpm: 1e12,
    ...DEFAULT_TIMEOUTS,
  }));
  return { name: `g${n}`, deployments };
}

function routingCost(n: number, flags: FlagSet, iterations: number): number {
  const random = mulberry32(7);
  const now = (): number => 1_000_000;
  const quota = new QuotaLedger(now);
  const performance_ = new PerformanceTracker(DEFAULT_PERFORMANCE, now);
  const g = group(n);
  for (const d of g.deployments) performance_.succeeded(d.id, 50 + (Number(d.id.slice(1)) % 7), 40);
  const s = new Scheduler(
    {
      router: DEFAULT_ROUTER,
      scheduler: DEFAULT_SCHEDULER,
      capacity: new CapacityCounters(Math.max(4096, n)),
      queue: new WaitQueue(1000, 1000, now),
      performance: performance_,
      sticky: new StickyPins(300_000, 100_000, now),
      quota,
      now,
      random,
    },
    flags,
  );
  s.register([g]);
  const signal = new AbortController().signal;
  const keys = Array.from({ length: 64 }, (_, i) => `prefix-${i}`);
  const tried = new Set<string>();
  const admission = (i: number): Admission => ({ group: g, tried, priority: 5, tier: null, stickyKey: flags.sticky_routing ? keys[i & 63] : undefined, tokens: 100, since: 0, signal });
  // Keep a few leases open so the counters are not all zero.
  const open = Array.from({ length: 8 }, (_, i) => s.tryAcquire(admission(i))!);
  for (let i = 0; i < 20_000; i++) s.tryAcquire(admission(i))!.release(); // warm up the JIT
  const t0 = performance.now();
  for (let i = 0; i < iterations; i++) s.tryAcquire(admission(i))!.release();
  const ns = ((performance.now() - t0) * 1e6) / iterations;
  for (const l of open) l.release();
  return ns;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const routing: Record<string, { flags: string; deployments: number; ns_per_request: number }> = {};
const rows: (string | number)[][] = [];
for (const [name, flags] of [
  ['defaults', DEFAULTS],
  ['all on', ALL_ON],
  ['all off', ALL_OFF],
] as const) {
  const r: Record<number, number> = {};
  for (const n of [10, 1000]) {
    r[n] = median(Array.from({ length: 5 }, () => routingCost(n, flags, 100_000)));
    routing[`${name}/${n}`] = { flags: name, deployments: n, ns_per_request: round(r[n]!, 1) };
  }
  rows.push([name, round(r[10]!, 0), round(r[1000]!, 0), round(r[1000]! / r[10]!, 2)]);
}
console.log('\nRouting cost per request (tryAcquire + release, ns, median of 5 x 100k)');
console.log(table(['flags', '10 deployments', '1000 deployments', 'ratio'], rows));

// ---- 2. proxy overhead: every flag off vs every flag on ----

const dir = mkdtempSync(join(tmpdir(), 'eb-bench-sched-'));
const mock = await startMock('mock', { tokens: 16, tps: 0, ttftMs: 0 });
const fleet = join(dir, 'broker.yaml');
writeFileSync(fleet, stringify({ modelGroups: { bench: { deployments: [{ id: 'mock-1', provider: 'openai', url: mock.url, model: 'mock', concurrencyLimit: 4096, rpm: 100_000_000, tpm: 1_000_000_000 }] } } }));
const common = { BROKER_CONFIG: fleet, LOG_LEVEL: 'warn', INFER_THREADS: '1', RATE_LIMIT_RPS: '0' };
const flagEnv = (on: boolean) => Object.fromEntries(FLAG_NAMES.map((f) => [envName(f), String(on)]));
const off = await startBroker('flags-off', { ...common, ...flagEnv(false) });
const on = await startBroker('flags-on', { ...common, ...flagEnv(true) });
const body = JSON.stringify({ model: 'bench', messages: [{ role: 'user', content: 'Say something short.' }], max_tokens: 32 });
const targets = { direct: `${mock.url}/v1/chat/completions`, 'flags off': `http://127.0.0.1:${off.port}/v1/chat/completions`, 'flags on': `http://127.0.0.1:${on.port}/v1/chat/completions` };
const httpRows: (string | number)[][] = [];
const proxy: Record<string, unknown> = {};
try {
  for (const url of Object.values(targets)) await cannon({ url, body, connections: 10, durationS: 2 }); // warm up
  for (const [name, url] of Object.entries(targets)) {
    // Open loop at a fixed rate (autocannon's overallRate sends each second's budget in a burst).
    const steady = await paced({ url, body, rate: 1000, durationS: 6, maxConnections: 64, timeoutMs: 5000 });
    const max = await cannon({ url, body, connections: 50, durationS: 6 });
    proxy[name] = { paced_1000rps: steady, max };
    httpRows.push([name, steady.latency.p50_ms, steady.latency.p99_ms, round(max.rps, 0), steady.non_2xx + max.non_2xx + steady.errors + max.errors + steady.timeouts]);
  }
} finally {
  await Promise.all([off.stop(), on.stop(), mock.stop()]);
}
const lat = (n: string) => (proxy[n] as { paced_1000rps: { latency: { p50_ms: number; p99_ms: number } } }).paced_1000rps.latency;
const overhead = {
  flags_off: { p50_ms: round(lat('flags off').p50_ms - lat('direct').p50_ms), p99_ms: round(lat('flags off').p99_ms - lat('direct').p99_ms) },
  flags_on: { p50_ms: round(lat('flags on').p50_ms - lat('direct').p50_ms), p99_ms: round(lat('flags on').p99_ms - lat('direct').p99_ms) },
};
console.log('\nProxy overhead, non-streaming chat (1,000 req/s paced, then max over 50 connections)');
console.log(table(['path', 'p50 ms @1000/s', 'p99 ms @1000/s', 'max req/s', 'errors'], httpRows));
console.log(`overhead vs direct: flags off p50 +${overhead.flags_off.p50_ms} ms, p99 +${overhead.flags_off.p99_ms} ms; flags on p50 +${overhead.flags_on.p50_ms} ms, p99 +${overhead.flags_on.p99_ms} ms`);

const ratioDefaults = routing['defaults/1000']!.ns_per_request / routing['defaults/10']!.ns_per_request;
const ratioAllOn = routing['all on/1000']!.ns_per_request / routing['all on/10']!.ns_per_request;
mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
writeFileSync(
  join(ROOT, 'bench/results/sched.json'),
  JSON.stringify(
    {
      bench: 'sched',
      command: 'npm run bench:sched',
      node: process.version,
      cpus: cpus().length,
      date: new Date().toISOString(),
      routing_cost: routing,
      routing_goal: { goal: '1000 deployments at most 2x the cost of 10', ratio_defaults: round(ratioDefaults, 2), ratio_all_on: round(ratioAllOn, 2), met: ratioDefaults <= 2 && ratioAllOn <= 2 },
      proxy_overhead: { settings: { paced_rate: 1000, paced_client: 'open loop (bench/llm/paced.ts)', max_connections: 50, duration_s: 6, reply_tokens: 16 }, results: proxy, overhead_vs_direct: overhead },
      note: 'Two cores: the load generator shares them with the servers. Compare ratios within this run, not absolute numbers across runs.',
    },
    null,
    2,
  ) + '\n',
);
console.log('\nwrote bench/results/sched.json');
