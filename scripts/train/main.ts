// `npm run train`: trains vA and vB on Fashion-MNIST (one worker thread each),
// exports them to ONNX, checks the exported graphs with ONNX Runtime against
// the TypeScript forward pass on the full 10k test set, and writes
// models/<id>.onnx + models/<id>.json.
//
// Flags:
//   --val           hold out the last 5000 training images and report validation
//                   accuracy per epoch; writes nothing (for tuning)
//   --only vA|vB    train (and rewrite) just one model; the vB > vA check is then skipped
//   --epochs N      override the epoch count (with --val only, so the committed
//                   models always match configs.ts)

import { Worker } from 'node:worker_threads';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { LABELS, MEAN, STD, loadSplit, normalise } from './idx.ts';
import { accuracy, argmaxRows, predictLogits, type Layer, type MlpWeights } from './mlp.ts';
import { encodeModel, mlpGraph } from './onnx.ts';
import { SPECS, architecture, type ModelSpec } from './configs.ts';
import { formatManifest, type ModelManifest } from './manifest.ts';
import type { WorkerJob, WorkerMsg } from './worker.ts';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const MODELS_DIR = join(ROOT, 'models');
const INPUT = { name: 'input', channels: 1, height: 28, width: 28 };
const OUTPUT = 'logits';

// Node 20 does not apply the --import tsx hooks to a worker's entry module, so
// the worker registers tsx itself before importing worker.ts.
const WORKER_BOOTSTRAP = `import(${JSON.stringify(import.meta.resolve('tsx/esm/api'))})
  .then((tsx) => { tsx.register(); return import(${JSON.stringify(new URL('./worker.ts', import.meta.url).href)}); });`;

const { values: args } = parseArgs({
  options: {
    val: { type: 'boolean', default: false },
    only: { type: 'string' },
    epochs: { type: 'string' },
  },
});
if (args.epochs && !args.val) throw new Error('--epochs is only allowed with --val');
const specs = SPECS.filter((s) => !args.only || s.id === args.only)
  .map((s) => (args.epochs ? { ...s, train: { ...s.train, epochs: Number(args.epochs) } } : s));
if (specs.length === 0) throw new Error(`no model ${args.only}`);
const holdout = args.val ? 5000 : 0;

function trainInWorker(spec: ModelSpec): Promise<{ weights: { W: Float32Array; b: Float32Array }[]; seconds: number }> {
  return new Promise((resolve, reject) => {
    const job: WorkerJob = { id: spec.id, cfg: spec.train, holdout };
    const w = new Worker(WORKER_BOOTSTRAP, { eval: true, workerData: job });
    w.on('message', (msg: WorkerMsg) => {
      if (msg.type === 'epoch') {
        const val = msg.valAcc === null ? '' : ` val_acc ${msg.valAcc.toFixed(4)}`;
        console.log(`[${msg.id}] epoch ${String(msg.epoch).padStart(2)}/${spec.train.epochs} loss ${msg.loss.toFixed(4)} train_acc ${msg.trainAcc.toFixed(4)}${val} (${msg.seconds.toFixed(1)}s)`);
      } else {
        resolve({ weights: msg.weights, seconds: msg.seconds });
      }
    });
    w.on('error', reject);
    w.on('exit', (code) => { if (code !== 0) reject(new Error(`${spec.id} worker exited with ${code}`)); });
  });
}

async function ortLogits(session: ort.InferenceSession, x: Float32Array, n: number, chunk = 1000): Promise<Float32Array> {
  const out = new Float32Array(n * 10);
  for (let s = 0; s < n; s += chunk) {
    const rows = Math.min(chunk, n - s);
    const input = new ort.Tensor('float32', x.slice(s * 784, (s + rows) * 784), [rows, 1, 28, 28]);
    const res = await session.run({ [INPUT.name]: input });
    const logits = res[OUTPUT];
    if (!logits || logits.dims.join(',') !== `${rows},10`) throw new Error(`unexpected output ${logits?.dims}`);
    out.set(logits.data as Float32Array, s * 10);
  }
  return out;
}

interface Result {
  spec: ModelSpec;
  onnx: Uint8Array;
  jsAcc: number;
  ortAcc: number;
  seconds: number;
}

async function main(): Promise<void> {
  const t0 = performance.now();
  console.log(`training ${specs.map((s) => `${s.id} (${architecture(s.train.sizes)}, ${s.train.epochs} epochs)`).join(' and ')}${args.val ? ' with a 5000-image validation hold-out' : ''}`);
  const trained = await Promise.all(specs.map(async (spec) => ({ spec, ...(await trainInWorker(spec)) })));
  if (args.val) {
    console.log(`done in ${((performance.now() - t0) / 1000).toFixed(1)}s (validation run, nothing written)`);
    return;
  }

  const test = loadSplit('t10k');
  const xTest = normalise(test.images);
  const results: Result[] = [];
  for (const { spec, weights, seconds } of trained) {
    const sizes = spec.train.sizes;
    const layers: Layer[] = weights.map((w, i) => ({ ...w, inDim: sizes[i]!, outDim: sizes[i + 1]! }));
    const model: MlpWeights = { sizes, layers };
    const jsLogits = predictLogits(model, xTest, test.n);
    const jsPred = argmaxRows(jsLogits, test.n, 10);
    const jsAcc = accuracy(jsPred, test.labels);

    const onnx = encodeModel({
      producerName: 'edge-broker scripts/train',
      producerVersion: '1.0.0',
      docString: spec.description,
      graph: mlpGraph(spec.name, INPUT, OUTPUT, layers),
      metadata: { architecture: architecture(sizes), seed: String(spec.train.seed), epochs: String(spec.train.epochs) },
    });
    const session = await ort.InferenceSession.create(onnx);
    if (session.inputNames.join() !== INPUT.name || session.outputNames.join() !== OUTPUT) {
      throw new Error(`${spec.id}: ONNX names ${session.inputNames} -> ${session.outputNames}`);
    }
    const ortL = await ortLogits(session, xTest, test.n);
    await session.release();
    const ortPred = argmaxRows(ortL, test.n, 10);
    const ortAcc = accuracy(ortPred, test.labels);
    let maxDiff = 0;
    for (let i = 0; i < ortL.length; i++) maxDiff = Math.max(maxDiff, Math.abs(ortL[i]! - jsLogits[i]!));
    let disagree = 0;
    for (let i = 0; i < test.n; i++) if (ortPred[i] !== jsPred[i]) disagree++;
    console.log(`[${spec.id}] test accuracy: TypeScript ${jsAcc.toFixed(4)}, ONNX Runtime ${ortAcc.toFixed(4)}; ${disagree} predictions differ, max |logit diff| ${maxDiff.toExponential(2)}`);
    if (ortAcc !== jsAcc || maxDiff > 1e-3) throw new Error(`${spec.id}: ONNX Runtime disagrees with the TypeScript forward pass`);
    results.push({ spec, onnx, jsAcc, ortAcc, seconds });
  }

  const byId = new Map(results.map((r) => [r.spec.id, r]));
  const a = byId.get('vA'), b = byId.get('vB');
  if (a && a.ortAcc < 0.87) throw new Error(`vA test accuracy ${a.ortAcc} < 0.87`);
  if (a && b && !(b.ortAcc > a.ortAcc)) throw new Error(`vB (${b.ortAcc}) is not better than vA (${a.ortAcc})`);

  mkdirSync(MODELS_DIR, { recursive: true });
  // Settings measured with bench:infer (docs/benchmarks.md, "Dynamic batching").
  const BATCHING = { max_batch_size: 32, preferred_batch_sizes: [] as number[], max_queue_delay_us: 0 };
  const QUEUE = { max_size: null, timeout_ms: 10_000 };
  for (const r of results) {
    const onnxPath = join(MODELS_DIR, `${r.spec.id}.onnx`);
    writeFileSync(onnxPath, r.onnx);
    const manifest: ModelManifest = {
      name: r.spec.name,
      version: r.spec.version,
      description: r.spec.description,
      input: { name: INPUT.name, layout: 'NCHW', channels: INPUT.channels, height: INPUT.height, width: INPUT.width, mean: [MEAN], std: [STD] },
      output: { name: OUTPUT, kind: 'logits' },
      labels: [...LABELS],
      // The graph's batch dimension is symbolic ('batch', see onnx.ts), so the server may batch.
      batching: { ...BATCHING },
      queue: { ...QUEUE },
      training: {
        seed: r.spec.train.seed,
        epochs: r.spec.train.epochs,
        test_accuracy: Number(r.ortAcc.toFixed(4)),
        architecture: architecture(r.spec.train.sizes),
      },
    };
    writeFileSync(join(MODELS_DIR, `${r.spec.id}.json`), formatManifest(manifest));
    // Final smoke check: the file on disk loads.
    const s = await ort.InferenceSession.create(onnxPath);
    await s.release();
    console.log(`wrote ${onnxPath} (${r.onnx.length} bytes) and ${r.spec.id}.json; trained in ${r.seconds.toFixed(1)}s`);
  }
  console.log(`done in ${((performance.now() - t0) / 1000).toFixed(1)}s`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
