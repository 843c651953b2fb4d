// Inference worker (a Piscina thread). At start it opens one onnxruntime session per
// model with an explicit thread count, checks that a batched model's batch dimension
// is dynamic, warms each (at batch 1 and at its largest batch), and counts itself
// ready in shared memory. A task is a batch: the transferred images decode side by side straight into
// their slots of one input tensor, then one session.run, and the scores are split
// back per image. Expected failures come back as values (error codes do not survive
// the thread boundary as exceptions), per image: a bad image fails itself only.
import { workerData } from 'piscina';
import { threadId } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { performance } from 'node:perf_hooks';
import { basename } from 'node:path';
import type { ModelManifest } from './manifest.ts';
import { graphProblem, outputProblem } from './graph-check.ts';
import { preprocess } from './preprocess.ts';
import { setConversionMode } from './native.ts';
import { asFloat32, topK } from './postprocess.ts';
import { workerSpans } from '../obs/trace/infer.ts';
import type { SpanData } from '../obs/trace/span.ts';
import { MAX_BATCH_INPUT_BYTES, type BatchOutcome, type BatchTask, type ItemOutcome, type MetadataTask, type ModelProblems, type ProblemsTask, type SessionsMetadata, type TensorMeta, type UnbatchableTask, type WorkerData, type WarmupTask } from './protocol.ts';

const data = workerData as WorkerData;

// One libvips thread per image: the images of a batch (and of the next batch, decoding
// while this one computes) run side by side on the libuv pool instead, and the cores
// are shared by workers x (decode + intra-op) threads, not multiplied by libvips' own.
sharp.concurrency(1);
// sharp's operation cache only helps repeated pipelines on the same file.
sharp.cache(false);
setConversionMode(data.native);

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
    // onnxruntime writes its warnings (an initializer listed as a graph input, say) to stderr
    // as coloured lines amid the JSON log: errors only; a model that cannot run is reported by
    // the broker in its own words (broken, below).
    logSeverityLevel: 3,
  });
  return { session, manifest };
}

// A model that cannot run (a file onnxruntime cannot load, a manifest that does not fit its
// graph) is marked broken instead of taking the worker down with it: the pool reads why (a
// 'problems' task), the service logs it and refuses the model, and the other arm keeps serving.
const broken: Record<string, { readonly message: string; readonly detail?: string }> = {};
/** Models that failed their warm-up run at batching.max_batch_size, with the runtime's words. */
const unbatchable: Record<string, string> = {};

/** Tries to load a model before it is taken for broken: a passing failure (memory, file descriptors, a file mid-rename) is not. */
const LOAD_TRIES = 3;
const LOAD_RETRY_MS = 200;

const models: Record<string, Loaded> = {};
for (const [key, m] of Object.entries(data.models)) {
  if (m.unusable !== undefined) broken[key] = { message: m.unusable };
  for (let attempt = 1; models[key] === undefined && broken[key] === undefined; attempt++) {
    try {
      models[key] = await open(m.path, m.manifest);
    } catch (err) {
      if (attempt < LOAD_TRIES) await new Promise((r) => setTimeout(r, LOAD_RETRY_MS));
      // Else the worker died at start, its replacement too, for ever (the other arm with them).
      else broken[key] = { message: `model ${m.manifest.name} cannot be loaded by onnxruntime: ${loadReason((err as Error).message, m.path)}`, detail: (err as Error).message };
    }
  }
}

/**
 * The runtime's reason, for /ready and a 503's message as well as the log: its first line, the
 * model's directory left out (the file's name says which), at most 200 characters.
 */
function loadReason(message: string, path: string): string {
  const line = (message.split('\n')[0] ?? '').split(path).join(basename(path)).trim();
  return line.length > 200 ? `${line.slice(0, 199)}…` : line || 'no reason given';
}

function dimsOf(manifest: ModelManifest, batch: number, height: number, width: number): number[] {
  const c = manifest.input.channels;
  return manifest.input.layout === 'NCHW' ? [batch, c, height, width] : [batch, height, width, c];
}

async function warm(): Promise<void> {
  for (const [key, { session, manifest }] of Object.entries(models)) {
    const h = manifest.input.height ?? manifest.input.defaultSize;
    const w = manifest.input.width ?? manifest.input.defaultSize;
    const { maxBatchSize } = manifest.batching;
    const misfit = graphProblem(manifest, session.inputMetadata, session.outputMetadata);
    if (misfit !== null) {
      broken[key] = { message: `model ${manifest.name} does not fit its manifest: ${misfit}` };
      continue;
    }
    try {
      const out = await session.run({ [manifest.input.name]: zeros(manifest, 1, h, w) });
      const scores = out[manifest.output.name];
      const bad = scores === undefined ? `no output '${manifest.output.name}'` : outputProblem(manifest, scores.dims, 1);
      if (bad !== null) {
        broken[key] = { message: `model ${manifest.name} does not fit its manifest: ${bad}` };
        continue;
      }
      delete broken[key];
    } catch (err) {
      // The runtime's own words go to the log (detail), not to clients.
      broken[key] = { message: `model ${manifest.name} failed its warm-up run`, detail: (err as Error).message };
      continue;
    }
    // Once at the largest batch too, so that the first full batch does not pay for the
    // memory arena. A graph that runs one image but not a batch (a Reshape to a batch of 1,
    // say) is not refused: the service sends it one image at a time, and says so.
    // Its output must still be one row per image: a graph whose output has a fixed batch of 1
    // (a reduction over the batch, say) would give wrong answers to batched requests.
    // The largest batch the pool sends at the default size: no more input than it ever holds.
    const largest = Math.max(1, Math.min(maxBatchSize, Math.floor(MAX_BATCH_INPUT_BYTES / (h * w * manifest.input.channels * 4))));
    if (largest > 1) {
      const out = await session.run({ [manifest.input.name]: zeros(manifest, largest, h, w) }).then(
        (o) => {
          delete unbatchable[key];
          return o;
        },
        (err: unknown) => {
          unbatchable[key] = (err as Error).message;
          return undefined;
        },
      );
      const scores = out?.[manifest.output.name];
      const bad = scores === undefined ? null : outputProblem(manifest, scores.dims, largest);
      if (bad !== null) broken[key] = { message: `model ${manifest.name} does not fit its manifest: ${bad} (batching.max_batch_size is ${maxBatchSize}; a graph that cannot batch needs 1)` };
    }
  }
}

function zeros(manifest: ModelManifest, batch: number, h: number, w: number): ort.Tensor {
  const dims = dimsOf(manifest, batch, h, w);
  return new ort.Tensor('float32', new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
}

await warm();
// Ready: this thread's id into the pool's register (pool.ts counts the live ones).
{
  const register = new Int32Array(data.readyCounter);
  const at = Atomics.add(register, 0, 1);
  Atomics.store(register, 1 + (at % (register.length - 1)), threadId);
}

function now(): number {
  return performance.timeOrigin + performance.now();
}

const failAll = (n: number, message: string, detail?: string, code: 'internal' | 'model_unavailable' = 'internal'): ItemOutcome[] => Array.from({ length: n }, () => ({ ok: false, code, message, ...(detail !== undefined ? { detail } : {}) }));

function describe(list: readonly ort.InferenceSession.ValueMetadata[]): TensorMeta[] {
  return list.map((m) => (m.isTensor ? { name: m.name, type: m.type, shape: m.shape.map((d) => (typeof d === 'number' && d >= 0 ? d : -1)) } : { name: m.name, type: 'non-tensor', shape: [] }));
}

export default async function run(task: BatchTask | WarmupTask | MetadataTask | ProblemsTask | UnbatchableTask): Promise<BatchOutcome | SessionsMetadata | ModelProblems | Record<string, string> | { warmed: true }> {
  if (task.kind === 'warmup') {
    await warm();
    return { warmed: true };
  }
  if (task.kind === 'problems') return { ...broken };
  if (task.kind === 'unbatchable') return { ...unbatchable };
  if (task.kind === 'metadata') {
    return Object.fromEntries(Object.entries(models).map(([key, { session }]) => [key, { inputs: describe(session.inputMetadata), outputs: describe(session.outputMetadata) }]));
  }
  const startedAt = now();
  const base = { handoffMs: startedAt - task.submittedAt, decodeMs: 0, inferMs: 0, executions: 0, executedBatch: 0 };
  try {
    return await runBatch(task, startedAt, base);
  } catch (err) {
    // Even an unexpected failure comes back as a value: the pool reads a rejected task as
    // this thread having died (503 inference_worker_lost), which this is not.
    // The library's words go to the log only (detail), never to the client.
    return { ...base, items: failAll(task.items.length, 'inference failed', (err as Error).message) };
  }
}

async function runBatch(task: BatchTask, startedAt: number, base: Omit<BatchOutcome, 'items'>): Promise<BatchOutcome> {
  const n = task.items.length;
  const why = broken[task.model];
  if (why !== undefined) return { ...base, items: failAll(n, why.message, why.detail, 'model_unavailable') };
  const model = models[task.model];
  if (model === undefined) return { ...base, items: failAll(n, `worker has no model ${task.model}`) };
  const { manifest } = model;
  const h = manifest.input.height ?? task.size ?? manifest.input.defaultSize;
  const w = manifest.input.width ?? task.size ?? manifest.input.defaultSize;
  const per = manifest.input.channels * h * w;

  // Each image decodes into its own slot; a failed one leaves a hole that is closed below.
  const batch = takeInput(n * per);
  try {
    return await decodeAndRun(task, startedAt, base, model, batch, h, w, per);
  } finally {
    giveInput(batch);
  }
}

async function decodeAndRun(task: BatchTask, startedAt: number, base: Omit<BatchOutcome, 'items'>, { manifest, session }: Loaded, batch: Float32Array, h: number, w: number, per: number): Promise<BatchOutcome> {
  const n = task.items.length;
  const pre = await Promise.all(task.items.map((it, i) => (it.tensor ? place(it.image, batch, i * per, per) : preprocess(new Uint8Array(it.image), manifest, task.size, data.maxPixels, batch, i * per))));
  const decodedAt = now();
  const items: ItemOutcome[] = new Array(n);
  const good: number[] = [];
  for (let i = 0; i < n; i++) {
    const p = pre[i]!;
    if (p.ok) good.push(i);
    else items[i] = p;
  }
  let input = batch;
  if (good.length < n && good.length > 0) {
    input = new Float32Array(good.length * per);
    good.forEach((src, dst) => input.set(batch.subarray(src * per, (src + 1) * per), dst * per));
  }

  let executions = 0;
  const runOn = async (x: Float32Array, b: number): Promise<Float32Array> => {
    executions++;
    const out = await session.run({ [manifest.input.name]: new ort.Tensor('float32', x, dimsOf(manifest, b, h, w)) });
    const scores = out[manifest.output.name];
    if (scores === undefined) throw new Error(`model has no output ${manifest.output.name}`);
    // Never split a batch's output by a wrong row length (an answer for the wrong image):
    // a mismatch fails the batch, and the images are retried one by one.
    const bad = outputProblem(manifest, scores.dims, b);
    if (bad !== null) throw new Error(bad);
    return asFloat32(scores.type, scores.data);
  };
  const answer = (i: number, scores: Float32Array) => {
    const it = task.items[i]!;
    // A NaN would turn every softmax score into null: the model's fault, said as such. A
    // -Infinity logit is a masked class (its probability 0), as long as one class is not
    // masked. Raw scores (v2) go back as they are, and v2 says what its JSON cannot carry.
    if (!it.scores) {
      const logits = manifest.output.kind === 'logits';
      const at = scores.findIndex((v) => !Number.isFinite(v) && !(logits && v === -Infinity));
      const bad = at >= 0 ? `a score that is not a finite number (class ${at})` : logits && scores.length > 0 && scores.every((v) => v === -Infinity) ? 'only -Infinity logits (every class masked)' : undefined;
      if (bad !== undefined) {
        items[i] = { ok: false, code: 'internal', message: `model ${manifest.name} gave ${bad}` };
        return;
      }
    }
    const predictions = topK(scores, manifest.labels, it.topK, manifest.output.kind === 'logits');
    items[i] = it.scores ? { ok: true, predictions, scores: scores.slice() } : { ok: true, predictions };
  };
  if (good.length > 0) {
    try {
      const scores = await runOn(input, good.length);
      const classes = scores.length / good.length;
      good.forEach((i, r) => answer(i, scores.subarray(r * classes, (r + 1) * classes)));
    } catch (err) {
      // The batch failed as a whole: retry one image at a time, so that only the
      // image(s) that make the model fail get an error.
      if (good.length === 1) items[good[0]!] = { ok: false, code: 'internal', message: `model ${manifest.name} failed to run`, detail: (err as Error).message };
      else {
        for (const [r, i] of good.entries()) {
          try {
            answer(i, await runOn(input.slice(r * per, (r + 1) * per), 1));
          } catch (e) {
            items[i] = { ok: false, code: 'internal', message: `model ${manifest.name} failed to run`, detail: (e as Error).message };
          }
        }
      }
    }
  }
  const endedAt = now();
  const spans = traced(task, items, pre, { startedAt, decodedAt, endedAt }, manifest, executions, good.length);
  return { ...base, items, decodeMs: decodedAt - startedAt, inferMs: endedAt - decodedAt, executions, executedBatch: good.length, ...(spans !== undefined ? { spans } : {}) };
}

/** Decode and compute spans for the items whose request is traced (the parent ids came in the task); undefined when none is. */
function traced(task: BatchTask, items: ItemOutcome[], pre: readonly { ok: boolean }[], times: { startedAt: number; decodedAt: number; endedAt: number }, manifest: ModelManifest, executions: number, executed: number): SpanData[] | undefined {
  let spans: SpanData[] | undefined;
  for (const [i, it] of task.items.entries()) {
    if (it.trace === undefined) continue;
    // The batch's images, as its queue span says; of them, the ones that reached compute (a bad image's did not).
    const attributes = { 'infer.model': manifest.name, 'infer.model_version': manifest.version, 'infer.batch_size': task.items.length, 'infer.batch_computed': executed, 'infer.executions': executions };
    const out = items[i]!;
    const failed = out.ok ? undefined : { code: out.code, in: pre[i]!.ok ? ('compute' as const) : ('decode' as const) };
    (spans ??= []).push(...workerSpans(it.trace, times, attributes, failed));
  }
  return spans;
}

// Input tensors are reused, not allocated per batch: a new Float32Array of a 224x224x3
// image (600 KB) cost 0.2-0.4 ms in zero-filling, page faults and GC, as much as its
// conversion (docs/benchmarks.md, "native/"). Every slot that reaches session.run is
// written whole by its decode, so stale values never do. A few per size, bounded in
// bytes, since img_size lets a dynamic model take many sizes.
const spareInputs = new Map<number, Float32Array[]>();
const SPARE_INPUT_BYTES = 64 * 1024 * 1024;
const SPARE_PER_SIZE = 4;
let spareBytes = 0;

function takeInput(length: number): Float32Array {
  const list = spareInputs.get(length);
  const a = list?.pop();
  if (a === undefined) return new Float32Array(length);
  if (list!.length === 0) spareInputs.delete(length);
  spareBytes -= a.byteLength;
  return a;
}

function giveInput(a: Float32Array): void {
  if (spareBytes + a.byteLength > SPARE_INPUT_BYTES) return;
  let list = spareInputs.get(a.length);
  if (list === undefined) spareInputs.set(a.length, (list = []));
  if (list.length >= SPARE_PER_SIZE) return;
  list.push(a);
  spareBytes += a.byteLength;
}

/** A tensor item (v2): its float32 values go to their slot as they are; the front checked the shape. */
function place(values: ArrayBuffer, batch: Float32Array, offset: number, per: number): { ok: true } | ItemOutcome {
  if (values.byteLength !== per * 4) return { ok: false, code: 'internal', message: `tensor item has ${values.byteLength / 4} values, the model takes ${per}` };
  batch.set(new Float32Array(values), offset);
  return { ok: true };
}
