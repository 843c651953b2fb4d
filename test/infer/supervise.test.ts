// The inference pool stays whole when workers die, even one that dies while starting:
// Piscina then stops replacing workers for good, and the pool starts itself anew.
import t from 'tap';
import { loadManifest } from '../../src/infer/manifest.ts';
import { createInferPool, type InferPoolOptions } from '../../src/infer/pool.ts';
import { fashionPngs } from '../helpers/images.ts';

const until = async (what: string, ok: () => boolean, timeoutMs = 30_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
};

/** A pool of two workers serving vA, with `o` on top. */
const twoWorkers = (o: Partial<InferPoolOptions>) => createInferPool({ models: { A: loadManifest('models/vA.onnx') }, threads: 2, intraOpThreads: 1, maxQueue: 64, maxPixels: 4096 * 4096, ...o });

t.test('a replacement worker killed while it loads: the pool starts anew, is whole and serves again', async (t) => {
  let failures = 0;
  const restarts: [number, number][] = [];
  const pool = twoWorkers({
    superviseMs: 200,
    onWorkerFailure: () => failures++,
    onRestart: (live, wanted) => restarts.push([live, wanted]),
  });
  t.teardown(() => pool.close());
  await pool.waitReady();
  t.equal(process.env.ORT_DISABLE_TELEMETRY, '1', "onnxruntime's telemetry is off unless the operator turned it on");
  const images = (await fashionPngs(8)).map((i) => Buffer.from(i.b64, 'base64'));
  const run = () => Promise.all(images.map((png) => pool.run('A', new Uint8Array(png).buffer, undefined, 1)));
  t.equal((await run()).length, 8, 'serves before');

  const first = new Set(pool.threads);
  await pool.threads[0]!.terminate();
  // Piscina starts a replacement at once; it dies before it has loaded the models.
  await until('a replacement thread', () => pool.threads.some((w) => !first.has(w)));
  const replacement = pool.threads.find((w) => !first.has(w))!;
  await replacement.terminate();
  t.ok(pool.ready, 'still ready: one live worker serves');

  await until('the pool whole again', () => restarts.length > 0 && pool.threads.length === 2 && pool.ready);
  t.same(restarts[0], [1, 2], 'one live worker of two: the pool started anew');
  t.ok(failures >= 2, `both deaths reported (${failures})`);
  const after = await run();
  t.equal(after.length, 8, 'serves again');
  t.ok(after.every((r) => r.predictions.length === 1));
  await until('two ready workers', () => pool.threads.length === 2);
  t.equal(pool.threads.length, 2, 'two workers, as configured');
});

// Warm-ups, the metadata and the model check take a slot as a batch does: with one worker
// holding one task, three warm-ups at once under load once overfilled Piscina's queue; the
// warm-ups failed, and so did live batches, as 503 inference_worker_lost though no worker died.
t.test('warm-ups and metadata under load wait for a slot: every request and every warm-up succeeds', async (t) => {
  let failures = 0;
  const pool = createInferPool({ models: { A: loadManifest('models/vA.onnx') }, threads: 1, tasksPerWorker: 1, intraOpThreads: 1, maxQueue: 1024, maxPixels: 4096 * 4096, onWorkerFailure: () => failures++ });
  t.teardown(() => pool.close());
  await pool.waitReady();
  const images = (await fashionPngs(16)).map((i) => Buffer.from(i.b64, 'base64'));
  const requests = Array.from({ length: 12 }, () => Promise.all(images.map((png) => pool.run('A', new Uint8Array(png).buffer, undefined, 1))));
  const control = [pool.warmup(), pool.warmup(), pool.warmup(), pool.metadata(), pool.problems()];
  const [served, done] = await Promise.all([Promise.allSettled(requests), Promise.allSettled(control)]);
  t.same(served.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'no request failed');
  t.same(done.filter((r) => r.status === 'rejected').map((r) => String((r as PromiseRejectedResult).reason)), [], 'no warm-up, metadata or check failed');
  t.equal(failures, 0, 'no worker died');
  t.equal(pool.queueSize, 0);
});

// A start that neither loads nor dies held readiness for good (seen twice in the suite under
// load). Here the workers load normally but past a 1 ms limit: waitReady starts a new pool
// once, destroying the first, and that pool is given the time left and serves.
t.test('a start slower than stuckStartMs: one new pool, which becomes ready and serves', async (t) => {
  const restarts: [number, number][] = [];
  const pool = twoWorkers({
    stuckStartMs: 1,
    onRestart: (live, wanted) => restarts.push([live, wanted]),
  });
  t.teardown(() => pool.close());
  const first = new Set(pool.threads);
  t.ok(first.size > 0, 'the first pool has started its workers');
  await pool.waitReady();
  t.equal(restarts.length, 1, 'one restart, not one per look');
  t.same(restarts[0]![1], 2);
  t.ok(pool.threads.every((w) => !first.has(w)), 'the workers are those of the new pool');
  const images = (await fashionPngs(4)).map((i) => Buffer.from(i.b64, 'base64'));
  const out = await Promise.all(images.map((png) => pool.run('A', new Uint8Array(png).buffer, undefined, 1)));
  t.ok(out.every((r) => r.predictions.length === 1), 'serves');
});

// onnxruntime's native completion, landing in a worker that close() had terminated while it
// loaded its models, aborted the whole process (Napi::Error, exit 134): a SIGTERM a moment
// after start did it about once in 12. close() now lets the workers' start finish first.
t.test('a pool closed while its workers still load lets them finish loading before it terminates them', async (t) => {
  const pool = twoWorkers({});
  t.notOk(pool.ready, 'still loading');
  await pool.close();
  // `ready` keeps the pool's readiness once reached: the close waited for it, so it was.
  t.ok(pool.ready, 'every worker loaded and warmed its models before the pool closed');
});
