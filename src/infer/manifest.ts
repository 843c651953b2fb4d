// A model's manifest sits next to its .onnx file (vA.onnx -> vA.json) and says how
// to turn an image into the model's input tensor. Validated at load, errors name the field.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { largestImageSize, MAX_BATCH_INPUT_BYTES } from './protocol.ts';

export interface ModelManifest {
  readonly name: string;
  readonly version: string;
  readonly input: {
    readonly name: string;
    readonly layout: 'NCHW' | 'NHWC';
    readonly channels: 1 | 3;
    /** null: the model takes any size; img_size (or defaultSize) picks it. */
    readonly height: number | null;
    readonly width: number | null;
    readonly defaultSize: number;
    /** The img_size range a dynamic-size model takes (a convolution stack has a smallest input). */
    readonly minSize: number;
    readonly maxSize: number;
    readonly mean: readonly number[];
    readonly std: readonly number[];
  };
  readonly output: { readonly name: string; readonly kind: 'logits' | 'probabilities' };
  readonly labels: readonly string[];
  /** Triton's dynamic_batching, in the manifest's `batching` block. */
  readonly batching: {
    /** 1: one image per session.run. Above 1 the model's first input dim must be dynamic. */
    readonly maxBatchSize: number;
    /** Batch sizes to aim for, ascending; empty: any size up to maxBatchSize. */
    readonly preferredBatchSizes: readonly number[];
    /** How long the oldest request may wait for a batch to fill, in microseconds. */
    readonly maxQueueDelayUs: number;
  };
  /** Admission: Triton's default_queue_policy, in the manifest's `queue` block. */
  readonly queue: {
    /** Requests that may wait for this model; null: the broker's INFER_MAX_QUEUE. */
    readonly maxSize: number | null;
    /** A request that waited this long answers 504 queue_timeout. */
    readonly timeoutMs: number;
  };
}

export interface LoadedModel {
  readonly path: string;
  readonly manifest: ModelManifest;
  /** Why the model cannot serve though the broker runs (B's manifest did not load): its requests answer 503. */
  readonly unusable?: string;
  /** Fields of the manifest the broker does not read (a typo leaves its setting at the default): logged at start. */
  readonly ignored?: readonly string[];
}

/** Every field the broker reads, by block ('' the top level); `description` and `training` are for humans. */
const KNOWN_FIELDS: Record<string, readonly string[]> = {
  '': ['name', 'version', 'description', 'training', 'input', 'output', 'labels', 'batching', 'queue'],
  input: ['name', 'layout', 'channels', 'height', 'width', 'defaultSize', 'minSize', 'maxSize', 'mean', 'std'],
  output: ['name', 'kind'],
  batching: ['max_batch_size', 'preferred_batch_sizes', 'max_queue_delay_us'],
  queue: ['max_size', 'timeout_ms'],
};

/** The fields of a (valid) manifest no block knows, dotted: `batching.max_batchsize`. */
export function unknownManifestFields(raw: Record<string, unknown>): string[] {
  const out: string[] = [];
  for (const [block, known] of Object.entries(KNOWN_FIELDS)) {
    const o = block === '' ? raw : raw[block];
    if (o === null || typeof o !== 'object' || Array.isArray(o)) continue;
    for (const k of Object.keys(o)) if (!known.includes(k)) out.push(block === '' ? k : `${block}.${k}`);
  }
  return out;
}

export function manifestPathFor(modelPath: string): string {
  return modelPath.replace(/\.onnx$/i, '') + '.json';
}

export function loadManifest(modelPath: string): LoadedModel {
  const file = manifestPathFor(modelPath);
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    throw new Error(`model manifest ${file}: ${(err as Error).message}`);
  }
  const manifest = validateManifest(raw, file);
  const ignored = unknownManifestFields(raw as Record<string, unknown>);
  return { path: modelPath, manifest, ...(ignored.length > 0 ? { ignored } : {}) };
}

/**
 * B, the candidate: a manifest that does not load must not stop A from serving. B is then a
 * stand-in (A's input settings, B's file name) that the workers refuse with the reason.
 */
export function loadCandidate(modelPath: string, a: LoadedModel): LoadedModel {
  try {
    return loadManifest(modelPath);
  } catch (err) {
    const name = basename(modelPath).replace(/\.onnx$/i, '') || 'B';
    return { path: modelPath, manifest: Object.freeze({ ...a.manifest, name, version: 'unloaded' }), unusable: (err as Error).message };
  }
}

export function validateManifest(raw: unknown, file: string): ModelManifest {
  const fail = (field: string, why: string): never => {
    throw new Error(`model manifest ${file}: ${field} ${why}`);
  };
  const obj = (v: unknown, field: string): Record<string, unknown> =>
    v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : fail(field, 'must be an object');
  const str = (v: unknown, field: string): string => (typeof v === 'string' && v !== '' ? v : fail(field, 'must be a non-empty string'));
  const size = (v: unknown, field: string): number | null =>
    v === null || v === undefined ? null : Number.isInteger(v) && (v as number) > 0 && (v as number) <= 8192 ? (v as number) : fail(field, 'must be a positive integer or null');

  const m = obj(raw, 'manifest');
  const input = obj(m.input, 'input');
  const output = obj(m.output ?? { name: 'output', kind: 'logits' }, 'output');
  const channels = input.channels ?? 3;
  if (channels !== 1 && channels !== 3) fail('input.channels', 'must be 1 or 3');
  const layout = input.layout ?? 'NCHW';
  if (layout !== 'NCHW' && layout !== 'NHWC') fail('input.layout', 'must be NCHW or NHWC');
  const nums = (v: unknown, field: string): number[] =>
    Array.isArray(v) && v.length === channels && v.every((x) => typeof x === 'number' && Number.isFinite(x)) ? (v as number[]) : fail(field, `must be ${channels === 1 ? 'an array of 1 number' : `${channels} numbers`}`);
  const std = nums(input.std ?? Array(channels).fill(1), 'input.std');
  if (std.some((s) => s === 0)) fail('input.std', 'must not contain 0');
  const height = size(input.height, 'input.height');
  const width = size(input.width, 'input.width');
  if ((height === null) !== (width === null)) fail('input.height', 'and input.width must both be set or both be null');
  const kind = output.kind ?? 'logits';
  if (kind !== 'logits' && kind !== 'probabilities') fail('output.kind', 'must be logits or probabilities');
  if (!Array.isArray(m.labels) || m.labels.length === 0 || !m.labels.every((l) => typeof l === 'string')) fail('labels', 'must be a non-empty array of strings');
  const int = (v: unknown, field: string, min: number, max: number, def: number): number =>
    v === undefined ? def : Number.isInteger(v) && (v as number) >= min && (v as number) <= max ? (v as number) : fail(field, `must be an integer between ${min} and ${max}`);
  const batching = obj(m.batching ?? {}, 'batching');
  const maxBatchSize = int(batching.max_batch_size, 'batching.max_batch_size', 1, 256, 1);
  const preferredRaw = batching.preferred_batch_sizes ?? [];
  if (!Array.isArray(preferredRaw)) fail('batching.preferred_batch_sizes', 'must be an array of integers');
  const preferred = (preferredRaw as unknown[]).map((v, i) => int(v, `batching.preferred_batch_sizes[${i}]`, 1, maxBatchSize, 1));
  preferred.sort((a, b) => a - b);
  const defaultSize = size(input.defaultSize, 'input.defaultSize') ?? height ?? 224;
  const maxSize = size(input.maxSize, 'input.maxSize') ?? 1024;
  const minSize = size(input.minSize, 'input.minSize') ?? 8;
  if (minSize > maxSize) fail('input.minSize', `must be between 1 and input.maxSize (${maxSize}), got ${minSize}`);
  // A dynamic-size model is resized to defaultSize when a request names no img_size, which must be a size it could name.
  if (height === null && (defaultSize < minSize || defaultSize > maxSize)) fail('input.defaultSize', `must be between input.minSize (${minSize}) and input.maxSize (${maxSize}), got ${defaultSize}`);
  // No request may ask past one image's tensor bound (service.ts checkSize): the sizes it could ask must be under it.
  const most = largestImageSize(channels as number);
  if (height === null && minSize > most) fail('input.minSize', `must be at most ${most} with ${channels} channel(s): one image's input tensor is at most ${MAX_BATCH_INPUT_BYTES / 1024 / 1024} MiB, got ${minSize}`);
  if (height === null && defaultSize > most) fail('input.defaultSize', `must be at most ${most} with ${channels} channel(s): one image's input tensor is at most ${MAX_BATCH_INPUT_BYTES / 1024 / 1024} MiB, got ${defaultSize}`);
  const queue = obj(m.queue ?? {}, 'queue');
  const maxQueueSize = queue.max_size === undefined || queue.max_size === null ? null : int(queue.max_size, 'queue.max_size', 1, 1_000_000, 1);

  return Object.freeze({
    name: str(m.name, 'name'),
    version: str(m.version, 'version'),
    input: Object.freeze({
      name: str(input.name, 'input.name'),
      layout: layout as 'NCHW' | 'NHWC',
      channels: channels as 1 | 3,
      height,
      width,
      defaultSize,
      minSize,
      maxSize,
      mean: nums(input.mean ?? Array(channels).fill(0), 'input.mean'),
      std,
    }),
    output: Object.freeze({ name: str(output.name, 'output.name'), kind: kind as 'logits' | 'probabilities' }),
    labels: Object.freeze([...(m.labels as string[])]),
    batching: Object.freeze({
      maxBatchSize,
      preferredBatchSizes: Object.freeze([...new Set(preferred)]),
      maxQueueDelayUs: int(batching.max_queue_delay_us, 'batching.max_queue_delay_us', 0, 10_000_000, 0),
    }),
    queue: Object.freeze({ maxSize: maxQueueSize, timeoutMs: int(queue.timeout_ms, 'queue.timeout_ms', 1, 3_600_000, 10_000) }),
  });
}
