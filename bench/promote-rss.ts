// `npm run bench:promote-rss`: does promoting again and again leak memory?
//
// promote builds a new worker pool (new threads, new onnxruntime sessions) and
// retires the old one, instead of re-creating sessions inside long-lived threads,
// because that grows RSS (microsoft/onnxruntime#25325). This bench checks the
// result: a broker child process with ADMIN_TOKEN, A and B two different models, some
// inference traffic, then PROMOTES pool swaps, POST /admin/promote and POST /admin/rollback
// in turn (each builds a new pool: a promote between two copies of one model does nothing
// since B became A), with a few inferences after each, reading the child's VmRSS from
// /proc/<pid>/status after each. A swap that did not happen stops the bench. Writes
// bench/results/promote-rss.json.
//
// Knobs (env): PROMOTE_MODEL (models/vA.onnx, A), PROMOTE_MODEL_B (models/vB.onnx, B),
// INFER_THREADS (the broker's default).
import { randomBytes } from 'node:crypto';
import { relative, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { loadConfig } from '../src/config/env.ts';
import { ROOT, startBroker, type Child } from './lib/process.ts';
import { fashionPng } from './lib/images.ts';
import { VA_PATH, VB_PATH, waitForModel } from './lib/models.ts';
import { memoryStatus, type MemoryStatus } from './lib/proc.ts';
import { machine, writeResults } from './lib/report.ts';
import { round, sleep, table } from './lib/stats.ts';

const PROMOTES = 20;
const WARM_REQUESTS = 200;
const REQUESTS_BETWEEN = 10;
/** Growth from promote FROM to promote TO is the headline: the first few promotes fill allocator arenas and caches. */
const FROM = 5;
const TO = PROMOTES;

const log = (msg: string) => console.log(`[bench:promote-rss] ${msg}`);

interface Sample extends MemoryStatus {
  readonly promote: number;
  readonly promote_ms: number;
}

async function infer(broker: Child, body: string, count: number, concurrency: number): Promise<void> {
  let left = count;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (left-- > 0) {
        const res = await fetch(`${broker.url}/v1/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
        const text = await res.text();
        if (res.status !== 200) throw new Error(`infer got ${res.status}: ${text}`);
      }
    }),
  );
}

async function main(): Promise<void> {
  const started = performance.now();
  const info = machine();
  const modelPath = resolve(ROOT, process.env.PROMOTE_MODEL ?? VA_PATH);
  const modelB = resolve(ROOT, process.env.PROMOTE_MODEL_B ?? VB_PATH);
  const threads = loadConfig({ INFER_THREADS: process.env.INFER_THREADS }).inferThreads;
  const model = await waitForModel(modelPath, 20 * 60_000, log);
  const { png } = await fashionPng(0);
  const body = JSON.stringify({ image_b64: png.toString('base64'), top_k: 5 });
  const token = randomBytes(18).toString('base64url');
  const auth = { authorization: `Bearer ${token}` };

  log(`node ${info.node}, ${info.cpu_count} cpus; A ${relative(ROOT, modelPath)}, B ${relative(ROOT, modelB)}, ${threads} inference threads`);
  const broker = await startBroker('broker', {
    MODEL_VA_PATH: modelPath,
    MODEL_VB_PATH: modelB,
    ADMIN_TOKEN: token,
    INFER_THREADS: String(threads),
    RATE_LIMIT_RPS: '0',
    AB_WEIGHT_A: '1',
    AB_WEIGHT_B: '0',
    SHADOW_ENABLED: 'false',
    CANARY_ENABLED: 'false',
  });
  const samples: Sample[] = [];
  try {
    const atStart = memoryStatus(broker.pid);
    await infer(broker, body, WARM_REQUESTS, threads * 2);
    await sleep(200);
    samples.push({ promote: 0, promote_ms: 0, ...memoryStatus(broker.pid) });
    log(`after ${WARM_REQUESTS} inferences: RSS ${mb(samples[0]!.rss_kb)} MB (at start ${mb(atStart.rss_kb)} MB)`);

    for (let i = 1; i <= PROMOTES; i++) {
      const t0 = performance.now();
      // Promote, then roll back, in turn: each swaps the pool for a new one.
      const action = i % 2 === 1 ? 'promote' : 'rollback';
      const res = await fetch(`${broker.url}/admin/${action}`, { method: 'POST', headers: auth });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`${action} ${i} got ${res.status}: ${text}`);
      const done = JSON.parse(text) as { promoted?: boolean; rolled_back?: boolean };
      if ((done.promoted ?? done.rolled_back) !== true) throw new Error(`${action} ${i} swapped no pool: ${text}`);
      const promoteMs = performance.now() - t0;
      await infer(broker, body, REQUESTS_BETWEEN, threads);
      // Let the retired pool's threads finish exiting before reading RSS.
      await sleep(200);
      samples.push({ promote: i, promote_ms: round(promoteMs, 1), ...memoryStatus(broker.pid) });
    }
  } catch (err) {
    console.error(broker.output());
    throw err;
  } finally {
    await broker.stop(15_000);
  }

  const at = (n: number) => samples.find((s) => s.promote === n)!;
  const growthKb = at(TO).rss_kb - at(FROM).rss_kb;
  const results = {
    bench: 'promote-rss',
    ...info,
    settings: {
      model: { name: model.manifest.name, version: model.manifest.version, path: relative(ROOT, modelPath) },
      model_b: relative(ROOT, modelB),
      swaps: 'promote and rollback in turn',
      infer_threads: threads,
      promotes: PROMOTES,
      warm_requests: WARM_REQUESTS,
      requests_between_promotes: REQUESTS_BETWEEN,
    },
    rss_before_promotes_kb: at(0).rss_kb,
    growth: {
      from_promote: FROM,
      to_promote: TO,
      rss_kb: growthKb,
      rss_mb: round(growthKb / 1024, 1),
      per_promote_kb: Math.round(growthKb / (TO - FROM)),
      // Least-squares slope over the same promotes: less sensitive than two endpoints to RSS noise.
      slope_kb_per_promote: Math.round(slope(samples.filter((s) => s.promote >= FROM).map((s) => [s.promote, s.rss_kb]))),
      // RSS grows by itself at first (allocator arenas, JIT code); this is the total since warm traffic.
      since_warm_mb: round((at(TO).rss_kb - at(0).rss_kb) / 1024, 1),
    },
    series: samples,
    wall_s: round((performance.now() - started) / 1000, 1),
  };
  const file = writeResults('promote-rss', results);

  console.log();
  console.log(
    table(
      ['promote', 'RSS MB', 'delta MB', 'peak MB', 'threads', 'promote ms'],
      samples.map((s, i) => [s.promote, mb(s.rss_kb), i === 0 ? '-' : mb(s.rss_kb - samples[i - 1]!.rss_kb), mb(s.hwm_kb), s.threads, s.promote_ms]),
    ),
  );
  console.log();
  log(
    `RSS growth promote ${FROM} -> ${TO}: ${results.growth.rss_mb} MB (${results.growth.per_promote_kb} KB per promote, ` +
      `fitted slope ${results.growth.slope_kb_per_promote} KB per promote); ` +
      `since warm traffic: ${results.growth.since_warm_mb} MB; wrote ${relative(ROOT, file)} in ${results.wall_s}s`,
  );
}

function slope(points: readonly (readonly [number, number])[]): number {
  const n = points.length;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

function mb(kb: number): number {
  return round(kb / 1024, 1);
}

await main();
