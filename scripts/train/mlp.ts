// A fully connected ReLU network trained with mini-batch Adam(W) on softmax
// cross-entropy. Weights are kept in the layout ONNX Gemm(transB=1) wants:
// W[out,in] row-major, so export is a straight copy.

import { gemmABt, transpose } from './gemm.ts';
import { mulberry32, normalSampler, shuffle, type Rng } from './prng.ts';

export interface Layer {
  inDim: number;
  outDim: number;
  /** [outDim, inDim] row-major */
  W: Float32Array;
  b: Float32Array;
}

export interface MlpWeights {
  sizes: number[];
  layers: Layer[];
}

/** He-normal weights (std sqrt(2/fan_in)), zero biases. */
export function initMlp(sizes: number[], rng: Rng): MlpWeights {
  const normal = normalSampler(rng);
  const layers: Layer[] = [];
  for (let l = 0; l + 1 < sizes.length; l++) {
    const inDim = sizes[l]!, outDim = sizes[l + 1]!;
    const W = new Float32Array(outDim * inDim);
    const std = Math.sqrt(2 / inDim);
    for (let i = 0; i < W.length; i++) W[i] = normal() * std;
    layers.push({ inDim, outDim, W, b: new Float32Array(outDim) });
  }
  return { sizes: [...sizes], layers };
}

/** Logits for n rows of x ([n, sizes[0]]), computed in chunks. */
export function predictLogits(model: MlpWeights, x: Float32Array, n: number, chunk = 500): Float32Array {
  const L = model.layers.length;
  const nOut = model.sizes[L]!;
  const out = new Float32Array(n * nOut);
  const bufs = model.layers.map((ly) => new Float32Array(chunk * ly.outDim));
  for (let start = 0; start < n; start += chunk) {
    const rows = Math.min(chunk, n - start);
    let a = x.subarray(start * model.sizes[0]!, (start + rows) * model.sizes[0]!);
    for (let l = 0; l < L; l++) {
      const ly = model.layers[l]!;
      const z = bufs[l]!;
      gemmABt(a, ly.W, z, rows, ly.outDim, ly.inDim);
      const relu = l + 1 < L;
      for (let r = 0; r < rows; r++) {
        const o = r * ly.outDim;
        for (let j = 0; j < ly.outDim; j++) {
          const v = z[o + j]! + ly.b[j]!;
          z[o + j] = relu && v < 0 ? 0 : v;
        }
      }
      a = z.subarray(0, rows * ly.outDim);
    }
    out.set(a, start * nOut);
  }
  return out;
}

export function argmaxRows(logits: Float32Array, n: number, k: number): Uint8Array {
  const pred = new Uint8Array(n);
  for (let r = 0; r < n; r++) {
    let best = 0;
    let bv = logits[r * k]!;
    for (let j = 1; j < k; j++) {
      const v = logits[r * k + j]!;
      if (v > bv) { bv = v; best = j; }
    }
    pred[r] = best;
  }
  return pred;
}

export function accuracy(pred: Uint8Array, labels: Uint8Array): number {
  let ok = 0;
  for (let i = 0; i < pred.length; i++) if (pred[i] === labels[i]) ok++;
  return ok / pred.length;
}

export interface TrainConfig {
  sizes: number[];
  seed: number;
  epochs: number;
  batchSize: number;
  /** Peak learning rate; cosine-decayed to lrMin over all steps after a short linear warm-up. */
  lr: number;
  lrMin: number;
  warmupSteps: number;
  beta1: number;
  beta2: number;
  eps: number;
  /** Decoupled weight decay (AdamW) on weight matrices, not biases. */
  weightDecay: number;
  /** Inverted dropout on hidden activations (0 = off). */
  dropout: number;
}

export interface EpochLog {
  epoch: number;
  loss: number;
  trainAcc: number;
  seconds: number;
}

/**
 * Train on x ([n, sizes[0]] normalised floats) / y. `onEpoch` is called after
 * every epoch with the model so far (e.g. to evaluate on held-out data).
 */
export function trainMlp(
  cfg: TrainConfig, x: Float32Array, y: Uint8Array, n: number,
  onEpoch?: (log: EpochLog, model: MlpWeights) => void,
): MlpWeights {
  const rng = mulberry32(cfg.seed);
  const model = initMlp(cfg.sizes, rng);
  const { layers } = model;
  const L = layers.length;
  const B = cfg.batchSize;
  const inDim = cfg.sizes[0]!;
  const nClass = cfg.sizes[L]!;

  // Adam moments.
  const mW = layers.map((ly) => new Float32Array(ly.W.length));
  const vW = layers.map((ly) => new Float32Array(ly.W.length));
  const mB = layers.map((ly) => new Float32Array(ly.b.length));
  const vB = layers.map((ly) => new Float32Array(ly.b.length));
  // Work buffers. acts[0] is the input batch, acts[l+1] the output of layer l.
  const acts = [new Float32Array(B * inDim), ...layers.map((ly) => new Float32Array(B * ly.outDim))];
  // gate[l] = dReLU * dropout scale for hidden layer l (so a = z * gate).
  const gates = layers.map((ly) => new Float32Array(B * ly.outDim));
  const dZ = layers.map((ly) => new Float32Array(B * ly.outDim));
  const dZT = layers.map((ly) => new Float32Array(B * ly.outDim));
  const actT = acts.map((a) => new Float32Array(a.length));
  const WT = layers.map((ly) => new Float32Array(ly.W.length));
  const gW = layers.map((ly) => new Float32Array(ly.W.length));
  const gB = layers.map((ly) => new Float64Array(ly.b.length));
  const probs = new Float64Array(nClass);

  const order = new Uint32Array(n);
  for (let i = 0; i < n; i++) order[i] = i;
  const stepsPerEpoch = Math.floor(n / B); // drop the ragged last batch
  const totalSteps = stepsPerEpoch * cfg.epochs;
  const keep = 1 - cfg.dropout;
  let step = 0;

  for (let epoch = 1; epoch <= cfg.epochs; epoch++) {
    const t0 = performance.now();
    shuffle(order, rng);
    let lossSum = 0;
    let correct = 0;
    for (let s = 0; s < stepsPerEpoch; s++) {
      // Gather the batch.
      const xb = acts[0]!;
      for (let r = 0; r < B; r++) {
        const src = order[s * B + r]! * inDim;
        xb.set(x.subarray(src, src + inDim), r * inDim);
      }
      // Forward.
      for (let l = 0; l < L; l++) {
        const ly = layers[l]!;
        const z = acts[l + 1]!;
        gemmABt(acts[l]!, ly.W, z, B, ly.outDim, ly.inDim);
        const hidden = l + 1 < L;
        const g = gates[l]!;
        for (let r = 0; r < B; r++) {
          const o = r * ly.outDim;
          for (let j = 0; j < ly.outDim; j++) {
            const v = z[o + j]! + ly.b[j]!;
            if (!hidden) { z[o + j] = v; continue; }
            let gate = v > 0 ? 1 : 0;
            if (cfg.dropout > 0) gate = rng() < keep ? gate / keep : 0;
            g[o + j] = gate;
            z[o + j] = v * gate;
          }
        }
      }
      // Softmax cross-entropy; dZ = (p - onehot) / B.
      const logits = acts[L]!;
      const dOut = dZ[L - 1]!;
      for (let r = 0; r < B; r++) {
        const o = r * nClass;
        const label = y[order[s * B + r]!]!;
        let mx = -Infinity, arg = 0;
        for (let j = 0; j < nClass; j++) if (logits[o + j]! > mx) { mx = logits[o + j]!; arg = j; }
        if (arg === label) correct++;
        let sum = 0;
        for (let j = 0; j < nClass; j++) { const e = Math.exp(logits[o + j]! - mx); probs[j] = e; sum += e; }
        lossSum += Math.log(sum) - (logits[o + label]! - mx);
        for (let j = 0; j < nClass; j++) dOut[o + j] = (probs[j]! / sum - (j === label ? 1 : 0)) / B;
      }
      // Backward.
      for (let l = L - 1; l >= 0; l--) {
        const ly = layers[l]!;
        const dz = dZ[l]!;
        // dW = dZ^T * A_prev
        transpose(dz, dZT[l]!, B, ly.outDim);
        transpose(acts[l]!, actT[l]!, B, ly.inDim);
        gemmABt(dZT[l]!, actT[l]!, gW[l]!, ly.outDim, ly.inDim, B);
        const gb = gB[l]!;
        gb.fill(0);
        for (let r = 0; r < B; r++) for (let j = 0; j < ly.outDim; j++) gb[j] += dz[r * ly.outDim + j]!;
        if (l > 0) {
          // dA_prev = dZ * W, then through ReLU/dropout of the previous layer.
          transpose(ly.W, WT[l]!, ly.outDim, ly.inDim);
          const dPrev = dZ[l - 1]!;
          gemmABt(dz, WT[l]!, dPrev, B, ly.inDim, ly.outDim);
          const g = gates[l - 1]!;
          for (let i = 0; i < dPrev.length; i++) dPrev[i] = dPrev[i]! * g[i]!;
        }
      }
      // AdamW update with warm-up + cosine schedule.
      step++;
      const lr = step <= cfg.warmupSteps
        ? cfg.lr * step / cfg.warmupSteps
        : cfg.lrMin + 0.5 * (cfg.lr - cfg.lrMin) * (1 + Math.cos(Math.PI * (step - cfg.warmupSteps) / Math.max(1, totalSteps - cfg.warmupSteps)));
      const bc1 = 1 - Math.pow(cfg.beta1, step);
      const bc2 = 1 - Math.pow(cfg.beta2, step);
      const { beta1, beta2, eps } = cfg;
      const decay = 1 - lr * cfg.weightDecay;
      for (let l = 0; l < L; l++) {
        const ly = layers[l]!;
        const W = ly.W, g = gW[l]!, m = mW[l]!, v = vW[l]!;
        for (let i = 0; i < W.length; i++) {
          const gi = g[i]!;
          const mi = beta1 * m[i]! + (1 - beta1) * gi;
          const vi = beta2 * v[i]! + (1 - beta2) * gi * gi;
          m[i] = mi; v[i] = vi;
          W[i] = W[i]! * decay - lr * (mi / bc1) / (Math.sqrt(vi / bc2) + eps);
        }
        const b = ly.b, gb = gB[l]!, mb = mB[l]!, vb = vB[l]!;
        for (let j = 0; j < b.length; j++) {
          const gj = gb[j]!;
          const mj = beta1 * mb[j]! + (1 - beta1) * gj;
          const vj = beta2 * vb[j]! + (1 - beta2) * gj * gj;
          mb[j] = mj; vb[j] = vj;
          b[j] = b[j]! - lr * (mj / bc1) / (Math.sqrt(vj / bc2) + eps);
        }
      }
    }
    const seen = stepsPerEpoch * B;
    onEpoch?.({ epoch, loss: lossSum / seen, trainAcc: correct / seen, seconds: (performance.now() - t0) / 1000 }, model);
  }
  return model;
}
