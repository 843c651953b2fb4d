// The model manifest that sits next to every .onnx (same base name, .json).
// models/README.md documents every field.

export interface ModelManifest {
  name: string;
  version: string;
  description: string;
  input: {
    name: string;
    layout: 'NCHW' | 'NHWC';
    channels: number;
    /** null = dynamic size; then defaultSize / maxSize apply. */
    height: number | null;
    width: number | null;
    /** One per channel, applied after pixel/255: (x - mean) / std. */
    mean: number[];
    std: number[];
    defaultSize?: number;
    maxSize?: number;
  };
  output: { name: string; kind: 'logits' | 'probabilities' };
  labels: string[];
  /** Dynamic batching (Triton's dynamic_batching); the model's first input dim must be dynamic. */
  batching?: { max_batch_size: number; preferred_batch_sizes?: number[]; max_queue_delay_us: number };
  /** Admission queue (Triton's default_queue_policy); max_size null = INFER_MAX_QUEUE. */
  queue?: { max_size: number | null; timeout_ms: number };
  training: {
    seed: number;
    epochs: number;
    test_accuracy: number | null;
    architecture: string;
  };
}

/** JSON with 2-space indentation, but arrays of primitives kept on one line. */
export function formatManifest(m: ModelManifest): string {
  const fmt = (v: unknown, indent: string): string => {
    if (Array.isArray(v)) {
      if (v.every((x) => x === null || typeof x !== 'object')) return `[${v.map((x) => JSON.stringify(x)).join(', ')}]`;
      const inner = indent + '  ';
      return `[\n${v.map((x) => inner + fmt(x, inner)).join(',\n')}\n${indent}]`;
    }
    if (v !== null && typeof v === 'object') {
      const inner = indent + '  ';
      const entries = Object.entries(v).filter(([, x]) => x !== undefined);
      return `{\n${entries.map(([k, x]) => `${inner}${JSON.stringify(k)}: ${fmt(x, inner)}`).join(',\n')}\n${indent}}`;
    }
    return JSON.stringify(v);
  };
  return fmt(m, '') + '\n';
}
