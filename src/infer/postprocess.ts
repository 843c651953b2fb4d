import type { Prediction } from './protocol.ts';

/** The k best classes, with scores as probabilities (softmax applied to logits). */
export function topK(scores: Float32Array, labels: readonly string[], k: number, logits: boolean): Prediction[] {
  const n = scores.length;
  let probs: ArrayLike<number> = scores;
  if (logits) {
    let max = -Infinity;
    for (let i = 0; i < n; i++) if (scores[i]! > max) max = scores[i]!;
    const exps = new Float64Array(n);
    let sum = 0;
    for (let i = 0; i < n; i++) sum += exps[i] = Math.exp(scores[i]! - max);
    for (let i = 0; i < n; i++) exps[i]! /= sum;
    probs = exps;
  }
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => probs[b]! - probs[a]!);
  return order.slice(0, Math.min(k, n)).map((index) => ({ label: labels[index] ?? `class_${index}`, index, score: probs[index]! }));
}
