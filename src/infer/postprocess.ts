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

/**
 * A model's output as float32 scores. float16 comes from onnxruntime-node as the raw half-float
 * bits in a Uint16Array (read as numbers they would rank the classes wrongly); float64 is narrowed.
 * Other types are refused when the model loads (graph-check.ts SCORE_TYPES).
 */
export function asFloat32(type: string, data: unknown): Float32Array {
  if (data instanceof Float32Array) return data;
  if (type === 'float16' && data instanceof Uint16Array) {
    const out = new Float32Array(data.length);
    for (let i = 0; i < data.length; i++) out[i] = halfToFloat(data[i]!);
    return out;
  }
  if (type === 'float64' || type === 'float16') return Float32Array.from(data as ArrayLike<number>);
  throw new Error(`output type ${type} is not read as scores`);
}

/** IEEE 754 binary16 bits → the number. */
export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac === 0 ? sign * Infinity : NaN;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}
