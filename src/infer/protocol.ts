// Messages between the main thread and inference workers.
import type { ModelManifest } from './manifest.ts';
import type { TraceContext } from '../obs/trace/context.ts';
import type { SpanData } from '../obs/trace/span.ts';
import type { ConversionMode } from './native.ts';

export interface WorkerData {
  readonly models: Readonly<Record<string, { path: string; manifest: ModelManifest; unusable?: string }>>;
  readonly intraOpThreads: number;
  readonly maxPixels: number;
  /** INFER_NATIVE: whether the worker may convert pixels with native/'s addon. */
  readonly native: ConversionMode;
  /** Int32 slot 0: how many workers loaded and warmed their models; then a ring of their thread ids. */
  readonly readyCounter: SharedArrayBuffer;
}

/** One image of a batch. */
export interface BatchItem {
  /** Image bytes, transferred (not copied) to the worker; with `tensor`, the model input's own values. */
  readonly image: ArrayBuffer;
  readonly topK: number;
  /** `image` holds one item of the model's float32 input, laid out as the model takes it: no decode, no preprocess (v2). */
  readonly tensor?: boolean;
  /** Also send back the item's raw output row (v2 returns the model's output tensor). */
  readonly scores?: boolean;
  /** The request's span context when it is traced: the worker's decode and compute spans go under it. */
  readonly trace?: TraceContext;
}

/**
 * Up to the model's max_batch_size images of one model and one size: decoded together
 * (sharp runs them side by side on the libuv pool), then one session.run.
 */
export interface BatchTask {
  readonly kind: 'batch';
  /** Key of the model in WorkerData.models ('A' or 'B'). */
  readonly model: string;
  /** Resize target for dynamic-size models, or undefined for the model's own size. */
  readonly size: number | undefined;
  readonly items: readonly BatchItem[];
  /** Epoch milliseconds (timeOrigin + now) when the batch was handed to Piscina. */
  readonly submittedAt: number;
}

export interface WarmupTask {
  readonly kind: 'warmup';
}

/** What the loaded sessions say about their inputs and outputs (v2 model metadata). */
export interface MetadataTask {
  readonly kind: 'metadata';
}

/** Why each broken model cannot run, by model key; empty: every model fits its manifest and ran its warm-up. */
export interface ProblemsTask {
  readonly kind: 'problems';
}

export type ModelProblems = Readonly<Record<string, { readonly message: string; readonly detail?: string }>>;

/** The most input tensor one batch holds (the pool's batchSize). The bundled models' 32 images are 0.1 to 19 MB. */
export const MAX_BATCH_INPUT_BYTES = 64 * 1024 * 1024;

/** The largest square size one image of `channels` may be resized to: its float32 tensor within MAX_BATCH_INPUT_BYTES. */
export function largestImageSize(channels: number): number {
  return Math.floor(Math.sqrt(MAX_BATCH_INPUT_BYTES / (4 * channels)));
}

/** Models whose warm-up run at batching.max_batch_size failed, by model key, with the runtime's words. */
export interface UnbatchableTask {
  readonly kind: 'unbatchable';
}

export interface TensorMeta {
  readonly name: string;
  /** onnxruntime's element type (`float32`, ...). */
  readonly type: string;
  /** Symbolic or unknown dimensions are -1. */
  readonly shape: readonly number[];
}

/** By model key ('A', 'B'). */
export type SessionsMetadata = Readonly<Record<string, { readonly inputs: readonly TensorMeta[]; readonly outputs: readonly TensorMeta[] }>>;

export interface Prediction {
  readonly label: string;
  readonly index: number;
  readonly score: number;
}

export type ItemFailure = { ok: false; code: 'unsupported_image' | 'image_too_large' | 'invalid_image' | 'internal' | 'model_unavailable'; message: string; /** For the log only: never sent to the client. */ detail?: string };
export type ItemOutcome = { ok: true; predictions: Prediction[]; /** With BatchItem.scores. */ scores?: Float32Array } | ItemFailure;

export interface BatchOutcome {
  /** One per item, in order. A bad image fails its own item only. */
  readonly items: ItemOutcome[];
  /** Wait between hand-off and the worker starting the batch. */
  readonly handoffMs: number;
  /** Decode + preprocess of the whole batch (images in parallel). */
  readonly decodeMs: number;
  /** session.run time, all executions of this batch. */
  readonly inferMs: number;
  /** session.run calls: 1, or one per image when the batched run failed and was retried singly. */
  readonly executions: number;
  /** Images in the batched run (the items that decoded). */
  readonly executedBatch: number;
  /** Decode and compute spans of the traced items (obs/trace/infer.ts). */
  readonly spans?: SpanData[];
}
