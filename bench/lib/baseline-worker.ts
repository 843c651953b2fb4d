// One baseline thread: the broker worker's per-request work (src/infer/worker.ts)
// without the broker around it. Its own onnxruntime session with the broker's
// session options, then decode + preprocess + session.run + top-k in a closed loop
// for as long as each 'run' command says. Decode is either the broker's own
// (preprocess(), which skips sharp for a PNG at the model's size) or plain sharp for
// every image, as a hand-written loop does (issue 11's "plain sharp + onnxruntime loop").
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import sharp from 'sharp';
import { luma601, preprocess, toTensorJs, type Preprocessed } from '../../src/infer/preprocess.ts';
import { topK } from '../../src/infer/postprocess.ts';
import type { BaselineWorkerData, BaselineMessage, BaselineCommand } from './baseline.ts';

const data = workerData as BaselineWorkerData;
const port = parentPort!;
const { manifest } = data;
// As the broker's workers: one libvips thread per image.
sharp.concurrency(1);
sharp.cache(false);

/** Decode, resize, colour and normalise with sharp alone, as a plain loop would. */
async function plainSharp(bytes: Uint8Array): Promise<Preprocessed> {
  const { input } = manifest;
  const height = input.height ?? input.defaultSize;
  const width = input.width ?? input.defaultSize;
  // The broker's colour step: sRGB, then BT.601 luma for a 1-channel model (preprocess.ts).
  const raw = await sharp(bytes, { limitInputPixels: data.maxPixels, failOn: 'error' }).resize(width, height, { fit: 'cover' }).removeAlpha().toColourspace('srgb').raw().toBuffer();
  const plane = width * height;
  const tensor = new Float32Array(input.channels * plane);
  if (input.channels === 1) toTensorJs(luma601(raw, raw.length / plane, plane), 1, manifest, plane, tensor);
  else toTensorJs(raw, raw.length / plane, manifest, plane, tensor);
  return { ok: true, tensor, dims: input.layout === 'NCHW' ? [1, input.channels, height, width] : [1, height, width, input.channels] };
}
const decode = data.decoder === 'sharp' ? plainSharp : (b: Uint8Array) => preprocess(b, manifest, undefined, data.maxPixels);

// Same options as open() in src/infer/worker.ts.
const session = await ort.InferenceSession.create(data.modelPath, {
  intraOpNumThreads: data.intraOpThreads,
  interOpNumThreads: 1,
  executionMode: 'sequential',
  graphOptimizationLevel: 'all',
});

// Decode and compute time summed over a run, to set beside the broker's
// inference_decode/compute_duration_seconds.
let decodeMs = 0;
let computeMs = 0;

async function once(): Promise<void> {
  const t0 = performance.now();
  const pre = await decode(data.image);
  if (!pre.ok) throw new Error(`baseline preprocess failed: ${pre.message}`);
  const t1 = performance.now();
  const out = await session.run({ [manifest.input.name]: new ort.Tensor('float32', pre.tensor, pre.dims) });
  const t2 = performance.now();
  const scores = out[manifest.output.name]!.data as Float32Array;
  topK(scores, manifest.labels, data.topK, manifest.output.kind === 'logits');
  decodeMs += t1 - t0;
  computeMs += t2 - t1;
}

await once();

port.on('message', async (cmd: BaselineCommand) => {
  if (cmd.type === 'stop') {
    await session.release();
    port.close();
    return;
  }
  decodeMs = 0;
  computeMs = 0;
  const latencies: number[] = [];
  const start = performance.now();
  const end = start + cmd.durationMs;
  let t = start;
  while (t < end) {
    await once();
    const done = performance.now();
    latencies.push(done - t);
    t = done;
  }
  port.postMessage({ type: 'done', elapsedMs: t - start, latencies: Float64Array.from(latencies), decodeMs, computeMs } satisfies BaselineMessage);
});

// Listen first, then say ready: a command must not arrive before the listener.
port.postMessage({ type: 'ready' } satisfies BaselineMessage);
