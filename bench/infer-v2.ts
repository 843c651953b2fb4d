// `npm run bench:infer-v2`: the Open Inference Protocol's binary tensor form
// (POST /v2/models/{m}/infer, the image as a BYTES element after a JSON header,
// classification 5 as binary output) against POST /v1/infer (the image in base64
// JSON, top_k 5), on the same image and the same broker, in alternating rounds so that
// other load on the machine falls on both alike. Reports throughput and CPU per request
// (the broker's threads, and with the load generator). Goal (issue 15): v2 binary at
// least as fast as /v1/infer, since it carries no base64.
//
// Cases: vA (Fashion-MNIST PNG, 871 B) and heavy (224x224 conv net, a 256x256 JPEG of
// some 30 KB, where base64 weighs more). Writes bench/results/infer-v2.json.
//
// Knobs (env): BENCH_ROUNDS (3), BENCH_ROUND_S (4), BENCH_WARMUP_S (2),
// BENCH_CONN_FACTOR (3), BENCH_MODELS (vA,heavy), INFER_THREADS, FRONT_THREADS.
import { performance } from 'node:perf_hooks';
import { loadConfig } from '../src/config/env.ts';
import type { LoadedModel } from '../src/infer/manifest.ts';
import { startBroker, type Child } from './lib/process.ts';
import { fashionPng, syntheticJpeg } from './lib/images.ts';
import { combine, fire, type LoadRun } from './lib/load.ts';
import { VA_PATH, ensureLoadModel, waitForModel } from './lib/models.ts';
import { cpuBetween, machineBusy, threadCpu } from './lib/proc.ts';
import { machine, writeResults } from './lib/report.ts';
import { round, table } from './lib/stats.ts';

const TOP_K = 5;
const NOISE = 0.05;

function envNumber(name: string, def: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return def;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got "${raw}"`);
  return n;
}

const rounds = Math.round(envNumber('BENCH_ROUNDS', 3));
const roundS = envNumber('BENCH_ROUND_S', 4);
const warmupS = envNumber('BENCH_WARMUP_S', 2);
const connFactor = envNumber('BENCH_CONN_FACTOR', 3);
const only = new Set((process.env.BENCH_MODELS ?? 'vA,heavy').split(',').map((s) => s.trim()));
const cfg = loadConfig({ INFER_THREADS: process.env.INFER_THREADS, FRONT_THREADS: process.env.FRONT_THREADS });
const connections = Math.max(cfg.inferThreads + 1, Math.round(connFactor * cfg.inferThreads));
const log = (msg: string) => console.log(`[bench:infer-v2] ${msg}`);

interface Protocol {
  readonly key: 'v1_base64_json' | 'v2_binary';
  readonly path: string;
  readonly headers: Record<string, string>;
  readonly body: string | Buffer;
}

/** The two requests for one image: /v1/infer's base64 JSON and v2's binary form, asking for the same top 5. */
function protocols(model: LoadedModel, image: Buffer): Protocol[] {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(image.length);
  const element = Buffer.concat([len, image]);
  const header = Buffer.from(
    JSON.stringify({
      inputs: [{ name: model.manifest.input.name, shape: [1], datatype: 'BYTES', parameters: { binary_data_size: element.length } }],
      outputs: [{ name: model.manifest.output.name, parameters: { classification: TOP_K, binary_data: true } }],
    }),
  );
  return [
    { key: 'v1_base64_json', path: '/v1/infer', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image_b64: image.toString('base64'), top_k: TOP_K }) },
    {
      key: 'v2_binary',
      path: `/v2/models/${encodeURIComponent(model.manifest.name)}/infer`,
      headers: { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) },
      body: Buffer.concat([header, element]),
    },
  ];
}

/** Top-1 class index of each protocol's reply, so that a broken request fails the bench before it measures. */
async function probe(url: string, p: Protocol): Promise<number> {
  const res = await fetch(url + p.path, { method: 'POST', headers: p.headers, body: p.body });
  const body = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) throw new Error(`${p.key} probe got ${res.status}: ${body.toString('utf8').slice(0, 300)}`);
  if (p.key === 'v1_base64_json') return (JSON.parse(body.toString('utf8')) as { predictions: { index: number }[] }).predictions[0]!.index;
  const hl = Number(res.headers.get('inference-header-content-length'));
  // First BYTES element of the binary classification output: "value:index:label".
  const first = body.toString('utf8', hl + 4, hl + 4 + body.readUInt32LE(hl));
  return Number(first.split(':')[1]);
}

interface Round {
  readonly load: LoadRun;
  readonly brokerCpuS: number;
  readonly mainCpuS: number;
  readonly loadgenS: number;
  readonly foreignS: number;
  readonly windowS: number;
}

async function measure(broker: Child, p: Protocol, durationS: number): Promise<Round> {
  const cpu0 = threadCpu(broker.pid);
  const self0 = process.cpuUsage();
  const busy0 = machineBusy();
  const t0 = performance.now();
  const load = await fire({ url: broker.url + p.path, body: p.body, headers: p.headers, connections, durationS });
  const windowS = (performance.now() - t0) / 1000;
  const self = process.cpuUsage(self0);
  const busy = machineBusy() - busy0;
  const cpu = cpuBetween(broker.pid, cpu0, threadCpu(broker.pid));
  const loadgenS = (self.user + self.system) / 1e6;
  const brokerCpuS = cpu.main_s + cpu.other_threads_s;
  return { load, brokerCpuS, mainCpuS: cpu.main_s, loadgenS, windowS, foreignS: Math.max(0, busy - brokerCpuS - loadgenS) };
}

async function benchCase(key: string, model: LoadedModel, image: Buffer, cpuCount: number) {
  const broker = await startBroker('broker', {
    MODEL_VA_PATH: model.path,
    MODEL_VB_PATH: model.path,
    RATE_LIMIT_RPS: '0',
    AB_WEIGHT_A: '1',
    AB_WEIGHT_B: '0',
    SHADOW_ENABLED: 'false',
    CANARY_ENABLED: 'false',
    ADMIN_TOKEN: '',
    ...(process.env.INFER_THREADS ? { INFER_THREADS: process.env.INFER_THREADS } : {}),
    ...(process.env.FRONT_THREADS ? { FRONT_THREADS: process.env.FRONT_THREADS } : {}),
  });
  try {
    const ps = protocols(model, image);
    const tops = await Promise.all(ps.map((p) => probe(broker.url, p)));
    if (tops[0] !== tops[1]) throw new Error(`${key}: /v1/infer says class ${tops[0]}, v2 says ${tops[1]}`);
    log(`${key}: both protocols answer class ${tops[0]}; warm-up ${warmupS}s each`);
    for (const p of ps) await fire({ url: broker.url + p.path, body: p.body, headers: p.headers, connections, durationS: warmupS });
    const runs: Record<string, Round[]> = { v1_base64_json: [], v2_binary: [] };
    for (let r = 1; r <= rounds; r++) {
      // Alternate which goes first, so that neither always follows the other.
      const order = r % 2 === 1 ? ps : [...ps].reverse();
      log(`${key}: round ${r}/${rounds}: ${order.map((p) => p.key).join(', then ')}, ${roundS}s each at ${connections} connections`);
      for (const p of order) runs[p.key]!.push(await measure(broker, p, roundS));
    }
    const out: Record<string, unknown> = {};
    for (const p of ps) {
      const rs = runs[p.key]!;
      const load = combine(connections, rs.map((x) => x.load));
      const sum = (f: (x: Round) => number) => rs.reduce((a, x) => a + f(x), 0);
      out[p.key] = {
        request_bytes: typeof p.body === 'string' ? Buffer.byteLength(p.body) : p.body.length,
        ...load,
        broker_cpu_ms_per_request: round((sum((x) => x.brokerCpuS) * 1000) / load.ok),
        broker_main_thread_cpu_ms_per_request: round((sum((x) => x.mainCpuS) * 1000) / load.ok),
        cpu_ms_per_request_with_load_generator: round((sum((x) => x.brokerCpuS + x.loadgenS) * 1000) / load.ok),
        throughput_per_round: rs.map((x) => round(x.load.ok / x.load.durationS, 1)),
        foreign_cpu_share: round(sum((x) => x.foreignS) / (cpuCount * sum((x) => x.windowS)), 2),
      };
    }
    return { model: { name: model.manifest.name, path: model.path }, image_bytes: image.length, top_class: tops[0], ...out };
  } finally {
    await broker.stop(15_000);
  }
}

async function main(): Promise<void> {
  const started = performance.now();
  const info = machine();
  log(`node ${info.node}, ${info.cpu_count} cpus, load average ${info.loadavg_1m_at_start}; ${rounds} rounds of ${roundS}s per protocol, ${connections} connections`);
  const budgetS = 2 * (2 * warmupS + 2 * rounds * roundS + 60);
  setTimeout(() => {
    log(`still running after ${budgetS}s: giving up`);
    process.exit(1);
  }, budgetS * 1000).unref();

  const results: Record<string, unknown> = {};
  const rows: (string | number)[][] = [];
  let met = true;
  let noisy = false;
  let failures = 0;
  const cases: [string, () => Promise<{ model: LoadedModel; image: Buffer }>][] = [
    ['vA', async () => ({ model: await waitForModel(VA_PATH, 60_000, log), image: (await fashionPng(0)).png })],
    ['heavy', async () => ({ model: ensureLoadModel(log), image: await syntheticJpeg(256) })],
  ];
  for (const [key, make] of cases) {
    if (!only.has(key)) continue;
    const { model, image } = await make();
    const r = (await benchCase(key, model, image, info.cpu_count)) as Record<string, any>;
    results[key] = r;
    const v1 = r['v1_base64_json'];
    const v2 = r['v2_binary'];
    const ratio = v2.throughput_rps / v1.throughput_rps;
    r['v2_over_v1'] = { throughput: round(ratio), broker_cpu_per_request: round(v2.broker_cpu_ms_per_request / v1.broker_cpu_ms_per_request) };
    met &&= ratio >= 1;
    noisy ||= v1.foreign_cpu_share > NOISE || v2.foreign_cpu_share > NOISE;
    failures += v1.non_2xx + v1.errors + v2.non_2xx + v2.errors;
    for (const [name, x] of [['/v1/infer base64 JSON', v1], ['v2 binary', v2]] as const) {
      rows.push([key, name, x.request_bytes, x.throughput_rps, x.latency.p50_ms, x.latency.p99_ms, x.broker_cpu_ms_per_request, x.broker_main_thread_cpu_ms_per_request, x.cpu_ms_per_request_with_load_generator, x.non_2xx + x.errors]);
    }
  }
  const file = writeResults('infer-v2', {
    bench: 'infer-v2',
    ...info,
    settings: { rounds, round_s: roundS, warmup_s: warmupS, connections, infer_threads: cfg.inferThreads, front_threads: cfg.frontThreads, top_k: TOP_K },
    cases: results,
    goal: 'v2 binary throughput >= /v1/infer',
    goal_met: met,
    noisy,
    wall_s: round((performance.now() - started) / 1000, 1),
  });
  console.log();
  console.log(table(['model', 'protocol', 'request B', 'req/s', 'p50 ms', 'p99 ms', 'broker CPU ms/req', 'main thread CPU ms/req', 'CPU ms/req incl. load gen', 'non-2xx+err'], rows));
  console.log();
  if (noisy) log(`other processes used more than ${NOISE * 100}% of the CPU during a run: the figures are noisy`);
  if (failures > 0) log(`${failures} non-2xx replies or errors`);
  log(`goal (v2 binary >= /v1/infer throughput): ${met ? 'met' : 'NOT met'}; results in ${file}`);
  process.exitCode = failures > 0 ? 1 : 0;
}

await main();
