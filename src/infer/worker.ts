// Inference worker (a Piscina thread). At start it opens one onnxruntime session per
// model with an explicit thread count, warms each once, and counts itself ready in
// shared memory. A task decodes the transferred image bytes with sharp, builds the
// tensor and runs the model. Expected failures come back as values (error codes do
// not survive the thread boundary as exceptions).
import { workerData } from 'piscina';
import * as ort from 'onnxruntime-node';
import { performance } from 'node:perf_hooks';
import type { ModelManifest } from './manifest.ts';
import { preprocess } from './preprocess.ts';
import { topK } from './postprocess.ts';
import type { InferTask, InferOutcome, WorkerData, WarmupTask } from './protocol.ts';

const data = workerData as WorkerData;

interface Loaded {
  session: ort.InferenceSession;
  manifest: ModelManifest;
}

async function open(path: string, manifest: ModelManifest): Promise<Loaded> {
  const session = await ort.InferenceSession.create(path, {
    intraOpNumThreads: data.intraOpThreads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  return { session, manifest };
}

const models: Record<string, Loaded> = {};
for (const [key, m] of Object.entries(data.models)) models[key] = await open(m.path, m.manifest);

// A model that cannot run (wrong manifest, say) is marked broken instead of taking
// the worker down with it: the other arm keeps serving and B's errors show in metrics.
const broken: Record<string, string> = {};

async function warm(): Promise<void> {
  for (const [key, { session, manifest }] of Object.entries(models)) {
    const size = manifest.input.height ?? manifest.input.defaultSize;
    const width = manifest.input.width ?? manifest.input.defaultSize;
    const dims = manifest.input.layout === 'NCHW' ? [1, manifest.input.channels, size, width] : [1, size, width, manifest.input.channels];
    const zeros = new Float32Array(dims.reduce((a, b) => a * b, 1));
    try {
      await session.run({ [manifest.input.name]: new ort.Tensor('float32', zeros, dims) });
      delete broken[key];
    } catch (err) {
      broken[key] = `model ${manifest.name} failed its warm-up run: ${(err as Error).message}`;
    }
  }
}

await warm();
Atomics.add(new Int32Array(data.readyCounter), 0, 1);

function now(): number {
  return performance.timeOrigin + performance.now();
}

export default async function run(task: InferTask | WarmupTask): Promise<InferOutcome | { warmed: true }> {
  if (task.kind === 'warmup') {
    await warm();
    return { warmed: true };
  }
  const startedAt = now();
  const model = models[task.model];
  if (model === undefined) return { ok: false, code: 'internal', message: `worker has no model ${task.model}` };
  if (broken[task.model] !== undefined) return { ok: false, code: 'internal', message: broken[task.model]! };
  const { manifest, session } = model;

  const pre = await preprocess(new Uint8Array(task.image), manifest, task.size, data.maxPixels);
  if (!pre.ok) return pre;
  const decodedAt = now();

  const feeds = { [manifest.input.name]: new ort.Tensor('float32', pre.tensor, pre.dims) };
  let out: ort.InferenceSession.OnnxValueMapType;
  try {
    out = await session.run(feeds);
  } catch (err) {
    return { ok: false, code: 'internal', message: `model ${manifest.name} failed: ${(err as Error).message}` };
  }
  const doneAt = now();
  const scores = out[manifest.output.name]?.data as Float32Array | undefined;
  if (scores === undefined) return { ok: false, code: 'internal', message: `model has no output ${manifest.output.name}` };

  return {
    ok: true,
    predictions: topK(scores, manifest.labels, task.topK, manifest.output.kind === 'logits'),
    queueMs: startedAt - task.submittedAt,
    decodeMs: decodedAt - startedAt,
    inferMs: doneAt - decodedAt,
  };
}
