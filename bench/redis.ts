// `npm run bench:redis`: what Redis (REDIS_URL) costs on the LLM hot path (issue 9: "at
// 2,000 req/s, Redis adds at most 0.05 ms to the p50 overhead"). Six brokers side by
// side in one run, all FRONT_THREADS=2, compiled dist/main.js (built first as
// `npm run build`), in front of one mock upstream (src/mock-upstream, 16 tokens at once):
//
//   open           no REDIS_URL, AUTH_MODE=open                      (the baseline)
//   redis          REDIS_URL, AUTH_MODE=open
//   redis-key      REDIS_URL, AUTH_MODE=keys, an API key made through POST /api/auth/keys
//   redis-session  REDIS_URL, AUTH_MODE=keys, a session id from POST /api/auth/sessions
//   keys-quota     no REDIS_URL, AUTH_MODE=keys, quota_enforcement on, the key with RPM and
//                  TPM limits: the replica's own shared-memory ledger
//   redis-quota    the same with REDIS_URL: the limits are the cluster's, spent from leases
//                  (src/state/leases.ts); keys-quota is its baseline
//
// Each Redis broker has its own redis-server (no persistence, a free port), so the
// commands counted in a window are that broker's alone, and a key made on one broker
// does not wake the others through pub/sub. The load is bench/llm/paced.ts (open loop,
// non-streaming POST /v1/chat/completions), in rounds that alternate the order
// (1 2 ... 6, then 6 5 ... 1, ...) so that drift on the shared machine hits every config
// alike. Per window: client latency, broker_overhead_seconds{route="llm"} from /metrics
// deltas, the broker's CPU per request (/proc), and the commands Redis executed
// (INFO commandstats delta, the INFO calls themselves left out).
//
// Env: BENCH_REDIS_RATE (req/s, default 2000), BENCH_REDIS_WINDOW_S (seconds per window,
// default 5), BENCH_REDIS_ROUNDS (default 2): each config gets ROUNDS x WINDOW_S of load,
// about 10 s by default, and the whole run takes about 1.5 minutes.
// Writes bench/results/redis.json and prints a markdown table.
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { performance } from 'node:perf_hooks';
import { paced, type PacedResult } from './llm/paced.ts';
import { cpuAccount, startMock, waitForQuietMachine, type CpuUse } from './llm/procs.ts';
import { bucketPercentile, histogramDelta, promHistogram, type PromHistogram } from './llm/stats.ts';
import { ROOT, buildDist, freePort, live, startBroker, type Child } from './lib/process.ts';
import { machine, mdTable, writeResults } from './lib/report.ts';
import { round, sleep } from './lib/stats.ts';

const num = (name: string, dflt: number): number => {
  const v = Number(process.env[name] ?? dflt);
  if (!(v > 0)) throw new Error(`${name} must be a positive number, got "${process.env[name]}"`);
  return v;
};
const RATE = num('BENCH_REDIS_RATE', 2000);
const WINDOW_S = num('BENCH_REDIS_WINDOW_S', 5);
const ROUNDS = Math.round(num('BENCH_REDIS_ROUNDS', 2));

const CONFIGS = ['open', 'redis', 'redis-key', 'redis-session', 'keys-quota', 'redis-quota'] as const;
type Config = (typeof CONFIGS)[number];
const LABEL: Record<Config, string> = {
  open: '1. no Redis, AUTH_MODE=open',
  redis: '2. REDIS_URL, AUTH_MODE=open',
  'redis-key': '3. REDIS_URL, AUTH_MODE=keys, API key',
  'redis-session': '4. REDIS_URL, AUTH_MODE=keys, session',
  'keys-quota': '5. no Redis, API key with RPM/TPM quota',
  'redis-quota': '6. REDIS_URL, API key with RPM/TPM quota (leases)',
};
/** The quota configs' key limits: twice the bench's rate, so that nothing is refused and leases (a tenth each) are taken every few seconds. */
const KEY_LIMITS = { rpm: Math.round(RATE * 60 * 2), tpm: Math.round(RATE * 60 * 2 * 64) };
const withQuota = (c: Config): boolean => c === 'keys-quota' || c === 'redis-quota';
const ADMIN_TOKEN = 'bench-redis-admin-token-of-32-characters';

const SETTINGS = Object.freeze({
  rate_rps: RATE,
  window_s: WINDOW_S,
  rounds: ROUNDS,
  order: 'rounds alternate: configs in order, then reversed',
  warmup_s: 2,
  route: '/v1/chat/completions (non-streaming)',
  broker_runtime: 'node dist/main.js (compiled; built first with tsc -b tsconfig.build.json)',
  // Inference is off: this bench is about the LLM path, and six brokers with an ONNX
  // pool each would only crowd the shared 2-core machine.
  broker_env_common: { FRONT_THREADS: '2', INFER_ENABLED: 'false', RATE_LIMIT_RPS: '0', LOG_LEVEL: 'warn', ADMIN_TOKEN: '<set>', GRPC_PORT: '<a free port each>' },
  broker_env: {
    open: { AUTH_MODE: 'open' },
    redis: { AUTH_MODE: 'open', REDIS_URL: 'redis://127.0.0.1:<own port>' },
    'redis-key': { AUTH_MODE: 'keys', REDIS_URL: 'redis://127.0.0.1:<own port>', credential: 'Authorization: Bearer <key from POST /api/auth/keys>' },
    'redis-session': { AUTH_MODE: 'keys', REDIS_URL: 'redis://127.0.0.1:<own port>', credential: 'Authorization: Bearer <sess_ from POST /api/auth/sessions>' },
    'keys-quota': { AUTH_MODE: 'keys', BROKER_FF_QUOTA_ENFORCEMENT: 'true', credential: `Authorization: Bearer <key with rpm ${KEY_LIMITS.rpm}, tpm ${KEY_LIMITS.tpm}>` },
    'redis-quota': { AUTH_MODE: 'keys', BROKER_FF_QUOTA_ENFORCEMENT: 'true', REDIS_URL: 'redis://127.0.0.1:<own port>', credential: `Authorization: Bearer <key with rpm ${KEY_LIMITS.rpm}, tpm ${KEY_LIMITS.tpm}>` },
  } as Record<Config, Record<string, string>>,
  mock: { tokens: 16, tps: 0, ttftMs: 0 },
  deployment_concurrency_limit: 256,
  paced: { max_connections: 256, timeout_ms: 5000 },
  redis_server: 'redis-server --save "" --appendonly no, one per Redis config, 127.0.0.1, a free port',
  goal_added_overhead_p50_ms: 0.05,
});

const log = (msg: string): void => void process.stderr.write(`[bench:redis] ${msg}\n`);

// ---------------------------------------------------------------------------------
// redis-server

interface RedisServer {
  readonly port: number;
  readonly pid: number;
  readonly url: string;
  stop(): Promise<void>;
}

/** A redis-server as test/helpers/redis.ts starts one (no persistence), killed with the bench. */
async function startRedis(): Promise<RedisServer> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'bench-redis-'));
  const c = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(c);
  c.once('exit', () => live.delete(c));
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    c.stdout!.on('data', (d: Buffer) => {
      buf = (buf + d.toString()).slice(-4000);
      if (buf.includes('Ready to accept connections')) resolve();
    });
    c.once('error', reject);
    c.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${buf.slice(-500)}`)));
  });
  return {
    port,
    pid: c.pid!,
    url: `redis://127.0.0.1:${port}`,
    async stop() {
      if (c.exitCode !== null || c.signalCode !== null) return;
      await new Promise<void>((r) => {
        c.once('exit', () => r());
        c.kill('SIGKILL');
      });
    },
  };
}

/** Calls per command since redis-server started (INFO commandstats). */
function commandStats(port: number): Map<string, number> {
  const text = execFileSync('redis-cli', ['-p', String(port), 'info', 'commandstats'], { encoding: 'utf8' });
  const out = new Map<string, number>();
  for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) out.set(m[1]!, Number(m[2]));
  return out;
}

/** Commands run between two snapshots, by name; our own INFO calls left out. */
function commandDelta(before: Map<string, number>, after: Map<string, number>): Record<string, number> {
  const d: Record<string, number> = {};
  for (const [k, v] of after) {
    if (k === 'info') continue;
    const n = v - (before.get(k) ?? 0);
    if (n > 0) d[k] = n;
  }
  return d;
}

// ---------------------------------------------------------------------------------
// the broker

async function overhead(b: Child): Promise<PromHistogram> {
  const text = await (await fetch(`${b.url}/metrics`)).text();
  return promHistogram(text, 'broker_overhead_seconds', 'route="llm"');
}

function addHistograms(a: PromHistogram, b: PromHistogram): PromHistogram {
  if (a.buckets.length === 0) return b;
  const m = new Map(b.buckets);
  return { sum: a.sum + b.sum, count: a.count + b.count, buckets: a.buckets.map(([le, c]) => [le, c + (m.get(le) ?? 0)] as const) };
}

/** The p-th percentile, linear within its bucket (the buckets are 0.05, 0.1, 0.25, 0.5 ms...: coarse). */
function interpolated(h: PromHistogram, p: number): number {
  const target = (p / 100) * h.count;
  let lo = 0;
  let below = 0;
  for (const [le, c] of h.buckets) {
    if (c >= target) return le === Infinity ? lo : lo + ((le - lo) * (target - below)) / Math.max(1, c - below);
    lo = le;
    below = c;
  }
  return NaN;
}

function overheadSummary(h: PromHistogram) {
  if (h.count === 0) return { count: 0, mean_ms: null, p50_ms: null, p50_le_ms: null, p99_le_ms: null };
  return {
    count: h.count,
    /** Exact: the histogram's sum over its count. */
    mean_ms: round((h.sum / h.count) * 1000, 4),
    /** Linear within the bucket holding it: an estimate. */
    p50_ms: round(interpolated(h, 50) * 1000, 4),
    /** Upper bounds of the buckets holding the percentile. */
    p50_le_ms: round(bucketPercentile(h, 50) * 1000, 3),
    p99_le_ms: round(bucketPercentile(h, 99) * 1000, 3),
  };
}

async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Record<string, unknown>> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body), signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  if (!res.ok) throw new Error(`POST ${url}: ${res.status} ${text.slice(0, 300)}`);
  return JSON.parse(text) as Record<string, unknown>;
}

/** The credential the load sends to a config, made through the admin API where it needs one. */
async function credential(c: Config, b: Child): Promise<Record<string, string>> {
  if (c === 'open' || c === 'redis') return {};
  const made = await post(`${b.url}/api/auth/keys`, { name: 'bench-redis', role: 'integration', ...(withQuota(c) ? KEY_LIMITS : {}) }, { authorization: `Bearer ${ADMIN_TOKEN}` });
  const key = String(made.key);
  if (!key.startsWith('sk-')) throw new Error(`POST /api/auth/keys returned no key: ${JSON.stringify(made).slice(0, 200)}`);
  if (c !== 'redis-session') return { authorization: `Bearer ${key}` };
  const s = await post(`${b.url}/api/auth/sessions`, { api_key: key });
  const id = String(s.session);
  if (!id.startsWith('sess_')) throw new Error(`POST /api/auth/sessions returned no session: ${JSON.stringify(s).slice(0, 200)}`);
  return { authorization: `Bearer ${id}` };
}

// ---------------------------------------------------------------------------------

interface Window {
  readonly round: number;
  readonly paced: PacedResult;
  readonly overhead: ReturnType<typeof overheadSummary>;
  readonly overhead_histogram: PromHistogram;
  readonly cpu: CpuUse;
  readonly broker_cpu_us_per_request: number;
  readonly redis_cpu_ms: number | null;
  readonly redis_commands: Record<string, number> | null;
  readonly redis_commands_total: number | null;
}

const mean = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

async function main(): Promise<void> {
  const started = performance.now();
  const build = buildDist();
  if (build.ok) log(`dist/ up to date (tsc -b, ${build.ms} ms)`);
  else log(`tsc -b failed; measuring the dist/ already there, which may be stale:\n${build.message}`);
  const quiet = await waitForQuietMachine(180_000, 90_000, 0.25, availableParallelism(), log);
  const info = machine();
  const commit = execFileSync('git', ['rev-parse', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).trim();

  const children: { stop(): Promise<void> }[] = [];
  try {
    const mock = await startMock('mock', SETTINGS.mock, 'dist');
    children.push(mock);
    const dir = mkdtempSync(join(tmpdir(), 'bench-redis-'));
    const configFile = join(dir, 'broker.json');
    writeFileSync(configFile, JSON.stringify({ modelGroups: { 'bench-small': { deployments: [{ id: 'mock-small', provider: 'openai', url: `${mock.url}/v1`, model: 'mock-model', concurrencyLimit: SETTINGS.deployment_concurrency_limit }] } } }));

    const redis: Partial<Record<Config, RedisServer>> = {};
    for (const c of CONFIGS) {
      if (c === 'open' || c === 'keys-quota') continue;
      redis[c] = await startRedis();
      children.push(redis[c]);
    }
    log(`redis-server on ports ${CONFIGS.filter((c) => redis[c]).map((c) => `${c} ${redis[c]!.port}`).join(', ')}`);

    const { ADMIN_TOKEN: _shown, GRPC_PORT: _port, ...common } = SETTINGS.broker_env_common;
    const brokers = {} as Record<Config, Child>;
    for (const c of CONFIGS) {
      const env: Record<string, string> = { BROKER_CONFIG: configFile, ...common, ADMIN_TOKEN, AUTH_MODE: SETTINGS.broker_env[c].AUTH_MODE! };
      if (redis[c] !== undefined) env.REDIS_URL = redis[c].url;
      if (withQuota(c)) env.BROKER_FF_QUOTA_ENFORCEMENT = 'true';
      // Each its own gRPC port (the default 50051 would clash), kept on as by default.
      env.GRPC_PORT = String(await freePort());
      brokers[c] = await startBroker(c, env, [], 120_000, 'dist');
      children.push(brokers[c]);
    }
    const headers = {} as Record<Config, Record<string, string>>;
    for (const c of CONFIGS) {
      try {
        headers[c] = await credential(c, brokers[c]);
      } catch (err) {
        throw new Error(`${c}: no credential (${(err as Error).message}); the broker ${brokers[c].exited() === undefined ? 'runs' : `exited (${brokers[c].exited()})`}:\n${brokers[c].output().slice(-2000)}`);
      }
    }
    const body = JSON.stringify({ model: 'bench-small', messages: [{ role: 'user', content: 'Say hello in a few words.' }] });
    const load = (c: Config, durationS: number) =>
      paced({ url: `${brokers[c].url}/v1/chat/completions`, body, headers: headers[c], rate: RATE, durationS, maxConnections: SETTINGS.paced.max_connections, timeoutMs: SETTINGS.paced.timeout_ms });

    // A refused credential would make a fast 401 look like a cheap request: check first.
    for (const c of CONFIGS) {
      const res = await fetch(`${brokers[c].url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers[c] }, body });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`${c}: a request with its credential got ${res.status}: ${text.slice(0, 300)}`);
    }
    for (const c of CONFIGS) {
      log(`warm-up ${c}: ${SETTINGS.warmup_s}s at ${RATE}/s`);
      await load(c, SETTINGS.warmup_s);
      await sleep(300);
    }

    const windows = Object.fromEntries(CONFIGS.map((c) => [c, [] as Window[]])) as Record<Config, Window[]>;
    const problems: string[] = [];
    const noisy: string[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const order = r % 2 === 0 ? CONFIGS : [...CONFIGS].reverse();
      for (const c of order) {
        const b = brokers[c];
        const rs = redis[c];
        const h0 = await overhead(b);
        const cmd0 = rs ? commandStats(rs.port) : undefined;
        const acct = cpuAccount({ broker: b.pid, mock: mock.pid, ...(rs ? { redis: rs.pid } : {}) });
        const p = await load(c, WINDOW_S);
        const cpu = acct.stop();
        const cmd1 = rs ? commandStats(rs.port) : undefined;
        const h = histogramDelta(h0, await overhead(b));
        for (const x of [mock, b]) if (x.exited() !== undefined) throw new Error(`${x.name} exited (${x.exited()}) during the run:\n${x.output().slice(-1500)}`);
        const cmds = cmd0 && cmd1 ? commandDelta(cmd0, cmd1) : null;
        const w: Window = {
          round: r,
          paced: p,
          overhead: overheadSummary(h),
          overhead_histogram: h,
          cpu,
          broker_cpu_us_per_request: round(((cpu.by_process_s.broker ?? 0) * 1e6) / Math.max(1, p.ok), 1),
          redis_cpu_ms: rs ? round((cpu.by_process_s.redis ?? 0) * 1000, 1) : null,
          redis_commands: cmds,
          redis_commands_total: cmds ? Object.values(cmds).reduce((a, v) => a + v, 0) : null,
        };
        windows[c].push(w);
        if (p.non_2xx + p.errors + p.timeouts > 0) problems.push(`round ${r} ${c}: ${p.non_2xx} non-2xx, ${p.errors} errors, ${p.timeouts} timeouts`);
        const share = cpu.other_s / Math.max(0.001, cpu.window_s * availableParallelism());
        if (share > 0.15) noisy.push(`round ${r} ${c}: other processes used ${Math.round(share * 100)}% of the CPU`);
        log(
          `round ${r} ${c}: p50 ${p.latency.p50_ms} p99 ${p.latency.p99_ms} ms, overhead mean ${w.overhead.mean_ms} ms, ${w.broker_cpu_us_per_request} µs CPU/req, ` +
            `redis commands ${w.redis_commands_total ?? '-'}${cmds && w.redis_commands_total! > 0 ? ` ${JSON.stringify(cmds)}` : ''}${p.sustained ? '' : ' (rate NOT sustained)'}${share > 0.15 ? ` (other processes ${Math.round(share * 100)}%)` : ''}`,
        );
        await sleep(300);
      }
    }

    const summary = Object.fromEntries(
      CONFIGS.map((c) => {
        const ws = windows[c];
        const ok = ws.reduce((a, w) => a + w.paced.ok, 0);
        const hist = ws.reduce((a, w) => addHistograms(a, w.overhead_histogram), { sum: 0, count: 0, buckets: [] } as PromHistogram);
        const cpuS = ws.reduce((a, w) => a + (w.cpu.by_process_s.broker ?? 0), 0);
        const cmdTotal = redis[c] ? ws.reduce((a, w) => a + (w.redis_commands_total ?? 0), 0) : null;
        const cmdBy: Record<string, number> = {};
        for (const w of ws) for (const [k, v] of Object.entries(w.redis_commands ?? {})) cmdBy[k] = (cmdBy[k] ?? 0) + v;
        const seconds = ws.reduce((a, w) => a + w.cpu.window_s, 0);
        return [
          c,
          {
            label: LABEL[c],
            requests_ok: ok,
            achieved_rps: round(mean(ws.map((w) => w.paced.achieved_rps)), 1),
            all_sustained: ws.every((w) => w.paced.sustained),
            /** Means over the windows of each window's percentile. */
            client_p50_ms: round(mean(ws.map((w) => w.paced.latency.p50_ms))),
            client_p99_ms: round(mean(ws.map((w) => w.paced.latency.p99_ms))),
            overhead: overheadSummary(hist),
            broker_cpu_us_per_request: round((cpuS * 1e6) / Math.max(1, ok), 1),
            redis_cpu_ms: redis[c] ? round(ws.reduce((a, w) => a + (w.redis_cpu_ms ?? 0), 0), 1) : null,
            redis_commands: redis[c] ? cmdBy : null,
            redis_commands_total: cmdTotal,
            redis_commands_per_request: cmdTotal === null ? null : round(cmdTotal / Math.max(1, ok), 6),
            redis_commands_per_s: cmdTotal === null ? null : round(cmdTotal / Math.max(0.001, seconds), 2),
          },
        ];
      }),
    ) as Record<Config, {
      label: string; requests_ok: number; achieved_rps: number; all_sustained: boolean; client_p50_ms: number; client_p99_ms: number;
      overhead: ReturnType<typeof overheadSummary>; broker_cpu_us_per_request: number; redis_cpu_ms: number | null;
      redis_commands: Record<string, number> | null; redis_commands_total: number | null; redis_commands_per_request: number | null; redis_commands_per_s: number | null;
    }>;

    const base = summary.open;
    const vsBase = Object.fromEntries(
      CONFIGS.filter((c) => c !== 'open').map((c) => {
        const s = summary[c];
        const d = (a: number | null, b0: number | null) => (a === null || b0 === null ? null : round(a - b0, 4));
        const q = (a: number | null, b0: number | null) => (a === null || b0 === null || b0 === 0 ? null : round(a / b0, 3));
        return [
          c,
          {
            added_client_p50_ms: d(s.client_p50_ms, base.client_p50_ms),
            added_client_p99_ms: d(s.client_p99_ms, base.client_p99_ms),
            added_overhead_mean_ms: d(s.overhead.mean_ms, base.overhead.mean_ms),
            added_overhead_p50_ms: d(s.overhead.p50_ms, base.overhead.p50_ms),
            ratio_client_p50: q(s.client_p50_ms, base.client_p50_ms),
            ratio_client_p99: q(s.client_p99_ms, base.client_p99_ms),
            ratio_overhead_mean: q(s.overhead.mean_ms, base.overhead.mean_ms),
            ratio_overhead_p50: q(s.overhead.p50_ms, base.overhead.p50_ms),
            ratio_cpu_per_request: q(s.broker_cpu_us_per_request, base.broker_cpu_us_per_request),
          },
        ];
      }),
    );
    const goal = {
      what: `REDIS_URL (config 2) adds at most ${SETTINGS.goal_added_overhead_p50_ms} ms to the p50 broker overhead at ${RATE} req/s`,
      added_overhead_p50_ms: vsBase.redis!.added_overhead_p50_ms,
      added_overhead_mean_ms: vsBase.redis!.added_overhead_mean_ms,
      met: vsBase.redis!.added_overhead_p50_ms !== null && vsBase.redis!.added_overhead_p50_ms <= SETTINGS.goal_added_overhead_p50_ms,
    };

    // The cluster quota's own cost: the same key and limits, with and without Redis (leases).
    const dq = (a: number | null, b0: number | null) => (a === null || b0 === null ? null : round(a - b0, 4));
    const leaseGoal = {
      what: `cluster quotas from leases (config 6) add at most ${SETTINGS.goal_added_overhead_p50_ms} ms to the p50 broker overhead of the same quota without Redis (config 5)`,
      added_overhead_p50_ms: dq(summary['redis-quota'].overhead.p50_ms, summary['keys-quota'].overhead.p50_ms),
      added_overhead_mean_ms: dq(summary['redis-quota'].overhead.mean_ms, summary['keys-quota'].overhead.mean_ms),
      added_client_p50_ms: dq(summary['redis-quota'].client_p50_ms, summary['keys-quota'].client_p50_ms),
      redis_commands_per_request: summary['redis-quota'].redis_commands_per_request,
      met: false,
    };
    leaseGoal.met = leaseGoal.added_overhead_p50_ms !== null && leaseGoal.added_overhead_p50_ms <= SETTINGS.goal_added_overhead_p50_ms;

    const results = {
      bench: 'redis',
      ...info,
      commit,
      dist_build: build,
      quiet_check: quiet,
      noisy_runs: noisy,
      problems,
      settings: SETTINGS,
      summary,
      vs_config_1: vsBase,
      goal,
      lease_goal: leaseGoal,
      windows,
      wall_s: round((performance.now() - started) / 1000, 1),
    };
    const file = writeResults('redis', results);
    const rows = CONFIGS.map((c) => {
      const s = summary[c];
      const v = c === 'open' ? undefined : vsBase[c];
      return [
        s.label,
        s.achieved_rps,
        s.client_p50_ms,
        s.client_p99_ms,
        s.overhead.mean_ms,
        s.overhead.p50_ms,
        s.overhead.p99_le_ms === null ? null : `≤ ${s.overhead.p99_le_ms}`,
        s.broker_cpu_us_per_request,
        s.redis_commands_total,
        s.redis_commands_per_request,
        v ? `${v.ratio_client_p50} / ${v.ratio_overhead_mean} / ${v.ratio_cpu_per_request}` : '1 / 1 / 1',
      ];
    });
    console.log(
      mdTable(['config', 'req/s', 'client p50 ms', 'client p99 ms', 'overhead mean ms', 'overhead p50 ms (interp.)', 'overhead p99 ms', 'broker CPU µs/req', 'Redis cmds', 'Redis cmds/req', 'vs 1: p50 / overhead / CPU'], rows),
    );
    console.log(`\ngoal: ${goal.what}: added p50 ${goal.added_overhead_p50_ms} ms (mean ${goal.added_overhead_mean_ms} ms): ${goal.met ? 'met' : 'NOT met'}`);
    console.log(`goal: ${leaseGoal.what}: added p50 ${leaseGoal.added_overhead_p50_ms} ms (mean ${leaseGoal.added_overhead_mean_ms} ms), ${leaseGoal.redis_commands_per_request} Redis commands per request: ${leaseGoal.met ? 'met' : 'NOT met'}`);
    for (const c of CONFIGS) if (summary[c].redis_commands_total) console.log(`${c}: Redis commands ${JSON.stringify(summary[c].redis_commands)} (${summary[c].redis_commands_per_s}/s)`);
    if (noisy.length > 0) log(`disturbed windows:\n  ${noisy.join('\n  ')}`);
    if (problems.length > 0) log(`problems:\n  ${problems.join('\n  ')}`);
    log(`wrote ${relative(ROOT, file)} in ${results.wall_s}s`);
  } finally {
    await Promise.all(children.reverse().map((c) => c.stop()));
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
