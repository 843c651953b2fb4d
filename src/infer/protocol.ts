// Messages between the main thread and inference workers.
import type { ModelManifest } from './manifest.ts';

export interface WorkerData {
  readonly models: Readonly<Record<string, { path: string; manifest: ModelManifest }>>;
  readonly intraOpThreads: number;
  readonly maxPixels: number;
  /** Int32 slot 0: workers that have loaded and warmed their models. */
  readonly readyCounter: SharedArrayBuffer;
}

export interface InferTask {
  readonly kind: 'infer';
  /** Key of the model in WorkerData.models ('A' or 'B'). */
  readonly model: string;
  /** Image bytes, transferred (not copied) to the worker. */
  readonly image: ArrayBuffer;
  /** Resize target for dynamic-size models, or undefined for the model's own size. */
  readonly size: number | undefined;
  readonly topK: number;
  /** Epoch milliseconds (timeOrigin + now) when the task was queued. */
  readonly submittedAt: number;
}

export interface WarmupTask {
  readonly kind: 'warmup';
}

export interface Prediction {
  readonly label: string;
  readonly index: number;
  readonly score: number;
}

export type InferOutcome =
  | { ok: true; predictions: Prediction[]; queueMs: number; decodeMs: number; inferMs: number }
  | { ok: false; code: 'unsupported_image' | 'image_too_large' | 'invalid_image' | 'internal'; message: string };
