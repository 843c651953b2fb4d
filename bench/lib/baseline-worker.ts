// One baseline thread: the broker worker's per-request work (src/infer/worker.ts)
// without the broker around it. Its own onnxruntime session with the broker's
// session options, then decode + preprocess + session.run + top-k in a closed loop
// for as long as each 'run' command says.
import { parentPort, workerData } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import * as ort from 'onnxruntime-node';
import { preprocess } from '../../src/infer/preprocess.ts';
import { topK } from '../../src/infer/postprocess.ts';
import type { BaselineWorkerData, BaselineMessage, BaselineCommand } from './baseline.ts';

const data = workerData as BaselineWorkerData;
const port = parentPort!;
const { manifest } = data;

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
  const pre = await preprocess(data.image, manifest, undefined, data.maxPixels);
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
