// The inference work of one image, stage by stage, on one thread with nothing else of
// the bench running: CPU ms per image for sharp (decode + resize + colour), the JS
// pixel conversion (uint8 HWC -> float32 NCHW with mean/std: the stage a native addon
// would take over, issue 11 §4), session.run at batch sizes 1..max (what batching can
// save, §2), and top-k. CPU time, not wall time, from process.cpuUsage() over the whole
// loop, so that another process taking the core does not count; sharp's decode runs on
// the libuv pool (another thread of this process) and still counts.
import sharp from 'sharp';
import * as ort from 'onnxruntime-node';
import { performance } from 'node:perf_hooks';
import type { LoadedModel } from '../../src/infer/manifest.ts';
import { luma601, preprocess, toTensorJs, toTensor } from '../../src/infer/preprocess.ts';
import { conversionAddon } from '../../src/infer/native.ts';
import { topK } from '../../src/infer/postprocess.ts';

export interface StageFigures {
  readonly model: string;
  /** CPU ms per image. */
  readonly sharp_ms: number;
  /** The JavaScript conversion. */
  readonly convert_ms: number;
  /** native/'s addon doing the same (null: not built); and JavaScript's time over it. */
  readonly convert_native_ms: number | null;
  readonly native_stage_gain: number | null;
  /** preprocess() as the worker calls it: sharp + convert (native when built). */
  readonly preprocess_ms: number;
  /** session.run CPU ms per image, by batch size. */
  readonly compute_ms_by_batch: Record<string, number>;
  readonly topk_ms: number;
  /** Compute per image at batch 1 over at the largest batch. */
  readonly compute_batch_gain: number;
  /** Whole-image CPU at batch 1 over at the largest batch: the most batching can give when decode is not shared. */
  readonly batching_ceiling: number;
  /** The whole-image CPU over itself without the conversion: what an infinitely fast native stage could give. */
  readonly native_ceiling: number;
}

function cpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** CPU ms per call of `fn`, over at least `minMs` of wall time, after a short warm-up. */
async function perCall(fn: () => unknown | Promise<unknown>, minMs: number): Promise<number> {
  for (let i = 0; i < 5; i++) await fn();
  const c0 = cpuMs();
  const t0 = performance.now();
  let n = 0;
  while (performance.now() - t0 < minMs || n < 20) {
    await fn();
    n++;
  }
  return (cpuMs() - c0) / n;
}

export async function measureStages(model: LoadedModel, image: Buffer, maxPixels: number, minMs = 1500): Promise<StageFigures> {
  const { manifest } = model;
  const { input } = manifest;
  const h = input.height ?? input.defaultSize;
  const w = input.width ?? input.defaultSize;
  const c = input.channels;
  const per = c * h * w;
  sharp.concurrency(1);
  sharp.cache(false);

  // preprocess()'s sharp call: sRGB whatever the model's channels (a 1-channel model's luma is the conversion's).
  const sharpOnly = () => sharp(image, { limitInputPixels: maxPixels, failOn: 'error' }).resize(w, h, { fit: 'cover' }).removeAlpha().toColourspace('srgb').raw().toBuffer();
  const raw = await sharpOnly();
  const sharpMs = await perCall(sharpOnly, minMs);
  const out = new Float32Array(per);
  // The conversion of preprocess(), on the raw pixels it gets from sharp (BT.601 luma first for
  // a 1-channel model, on a copy: luma601 writes over its input).
  const got = raw.length / (w * h);
  const scratch = Buffer.alloc(raw.length);
  const pixels = (): Uint8Array => (c === 1 ? luma601((raw.copy(scratch), scratch), got, w * h) : raw);
  const convertMs = await perCall(() => toTensorJs(pixels(), c === 1 ? 1 : got, manifest, w * h, out), minMs);
  const nativeMs = conversionAddon() === undefined ? null : await perCall(() => toTensor(pixels(), c === 1 ? 1 : got, manifest, w * h, out), minMs);
  const preMs = await perCall(() => preprocess(image, manifest, undefined, maxPixels), minMs);

  const session = await ort.InferenceSession.create(model.path, { intraOpNumThreads: 1, interOpNumThreads: 1, executionMode: 'sequential', graphOptimizationLevel: 'all' });
  const dims = (b: number) => (input.layout === 'NCHW' ? [b, c, h, w] : [b, h, w, c]);
  const byBatch: Record<string, number> = {};
  let scores: Float32Array = new Float32Array(0);
  const sizes = [...new Set([1, 2, 4, manifest.batching.maxBatchSize])].filter((b) => b <= manifest.batching.maxBatchSize).sort((a, b) => a - b);
  for (const b of sizes) {
    const x = new Float32Array(b * per);
    for (let i = 0; i < b; i++) x.set(out, i * per);
    const feeds = { [input.name]: new ort.Tensor('float32', x, dims(b)) };
    byBatch[b] = (await perCall(async () => {
      const r = await session.run(feeds);
      scores = r[manifest.output.name]!.data as Float32Array;
    }, minMs)) / b;
  }
  await session.release();
  const row = scores.subarray(0, scores.length / sizes[sizes.length - 1]!);
  const topkMs = await perCall(() => topK(row, manifest.labels, 5, manifest.output.kind === 'logits'), 300);

  const one = preMs + byBatch[1]! + topkMs;
  const many = preMs + byBatch[sizes[sizes.length - 1]!]! + topkMs;
  const r3 = (v: number) => Math.round(v * 1000) / 1000;
  return {
    model: manifest.name,
    sharp_ms: r3(sharpMs),
    convert_ms: r3(convertMs),
    convert_native_ms: nativeMs === null ? null : r3(nativeMs),
    native_stage_gain: nativeMs === null ? null : Math.round((convertMs / nativeMs) * 100) / 100,
    preprocess_ms: r3(preMs),
    compute_ms_by_batch: Object.fromEntries(Object.entries(byBatch).map(([k, v]) => [k, r3(v)])),
    topk_ms: r3(topkMs),
    compute_batch_gain: r3(byBatch[1]! / byBatch[sizes[sizes.length - 1]!]!),
    batching_ceiling: r3(one / many),
    native_ceiling: r3(one / (one - convertMs)),
  };
}
