import type { Prediction } from './protocol.ts';

/**
 * The k best classes, best first, with scores as probabilities (softmax applied to
 * logits). A partial selection: one pass keeps the k best in a small sorted buffer
 * (O(n·k) worst case, O(n) for k << n in practice) instead of sorting all n classes:
 * 10 µs instead of 165 µs for 1000 classes and k = 5 (docs/benchmarks.md, issue 11).
 * Only the k chosen get a probability: the order of exp(x - max) is the order of x,
 * and the softmax denominator needs one pass of exp, not an array of n of them.
 */
export function topK(scores: Float32Array, labels: readonly string[], k: number, logits: boolean): Prediction[] {
  const n = scores.length;
  const want = Math.min(k, n);
  const idx = new Int32Array(want);
  const val = new Float64Array(want);
  let have = 0;
  for (let i = 0; i < n; i++) {
    const v = scores[i]!;
    // Ties keep the lower index first (a stable order, as the full sort gave).
    if (have === want && !(v > val[have - 1]!)) continue;
    let j = have < want ? have++ : want - 1;
    while (j > 0 && v > val[j - 1]!) {
      val[j] = val[j - 1]!;
      idx[j] = idx[j - 1]!;
      j--;
    }
    val[j] = v;
    idx[j] = i;
  }
  let sum = 1;
  let max = 0;
  if (logits && n > 0) {
    max = val[0]!;
    sum = 0;
    for (let i = 0; i < n; i++) sum += Math.exp(scores[i]! - max);
  }
  const out: Prediction[] = new Array(have);
  for (let r = 0; r < have; r++) {
    const index = idx[r]!;
    out[r] = { label: labels[index] ?? `class_${index}`, index, score: logits ? Math.exp(val[r]! - max) / sum : val[r]! };
  }
  return out;
}
