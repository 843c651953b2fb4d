// Trains one model in a worker thread so vA and vB train in parallel on two cores.

import { parentPort, workerData } from 'node:worker_threads';
import { loadSplit, normalise } from './idx.ts';
import { accuracy, argmaxRows, predictLogits, trainMlp, type TrainConfig } from './mlp.ts';

export interface WorkerJob {
  id: string;
  cfg: TrainConfig;
  /** Hold out the last `holdout` training images as a validation set (0 = train on all 60k). */
  holdout: number;
}

export type WorkerMsg =
  | { type: 'epoch'; id: string; epoch: number; loss: number; trainAcc: number; valAcc: number | null; seconds: number }
  | { type: 'done'; id: string; weights: { W: Float32Array; b: Float32Array }[]; seconds: number };

const job = workerData as WorkerJob;
const port = parentPort!;

const train = loadSplit('train');
const nTrain = train.n - job.holdout;
const xAll = normalise(train.images);
const xVal = xAll.subarray(nTrain * 784);
const yVal = train.labels.subarray(nTrain);

const t0 = performance.now();
const model = trainMlp(job.cfg, xAll, train.labels, nTrain, (log, m) => {
  let valAcc: number | null = null;
  if (job.holdout > 0) {
    valAcc = accuracy(argmaxRows(predictLogits(m, xVal, job.holdout), job.holdout, 10), yVal);
  }
  port.postMessage({ type: 'epoch', id: job.id, ...log, valAcc } satisfies WorkerMsg);
});
const weights = model.layers.map((l) => ({ W: l.W, b: l.b }));
port.postMessage(
  { type: 'done', id: job.id, weights, seconds: (performance.now() - t0) / 1000 } satisfies WorkerMsg,
  weights.flatMap((w) => [w.W.buffer as ArrayBuffer, w.b.buffer as ArrayBuffer]),
);
