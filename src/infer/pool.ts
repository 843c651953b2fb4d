// The inference worker pool: a Piscina pool whose workers each hold one session per
// model. A pool is immutable in what it serves; promote builds a new pool and
// retires the old one, which also gives onnxruntime's native memory back
// (sessions recreated inside a long-lived thread grow RSS: microsoft/onnxruntime#25325).
import { Piscina } from 'piscina';
// sharp is loaded on the main thread before any worker loads it: its native module must
// not be first loaded (and unloaded) by a worker thread (lovell/sharp#2263).
import 'sharp';
import { performance } from 'node:perf_hooks';
import { BrokerError } from '../errors.ts';
import type { LoadedModel } from './manifest.ts';
import type { InferOutcome, InferTask, WorkerData } from './protocol.ts';
import { workerEntry } from '../workers/entry.ts';

export interface InferPoolOptions {
  readonly models: Readonly<Record<string, LoadedModel>>;
  readonly threads: number;
  readonly intraOpThreads: number;
  readonly maxQueue: number;
  readonly maxPixels: number;
  /** Called when a worker dies outside of close(). */
  readonly onWorkerFailure?: () => void;
}

export interface InferPool {
  readonly models: Readonly<Record<string, LoadedModel>>;
  /** Runs one image on one model; `image` is transferred and unusable afterwards. */
  run(model: string, image: ArrayBuffer, size: number | undefined, topK: number): Promise<Extract<InferOutcome, { ok: true }>>;
  /** Runs every model of every worker once more (after a cold spell, say). */
  warmup(): Promise<number>;
  readonly ready: boolean;
  waitReady(timeoutMs?: number): Promise<void>;
  readonly queueSize: number;
  /** Worker threads, for tests that kill one. */
  readonly threads: readonly { terminate(): Promise<number> }[];
  /** Waits for started tasks, then stops the workers. */
  close(): Promise<void>;
}

export function createInferPool(opts: InferPoolOptions): InferPool {
  const readyCounter = new SharedArrayBuffer(4);
  const ready = new Int32Array(readyCounter);
  const data: WorkerData = {
    models: Object.fromEntries(Object.entries(opts.models).map(([k, m]) => [k, { path: m.path, manifest: m.manifest }])),
    intraOpThreads: opts.intraOpThreads,
    maxPixels: opts.maxPixels,
    readyCounter,
  };
  // worker.js itself when compiled; from the sources, worker.ts through tsx (see workers/entry.ts).
  const { filename, workerData } = workerEntry('./worker.ts', import.meta.url, data);
  const piscina = new Piscina({
    filename,
    minThreads: opts.threads,
    maxThreads: opts.threads,
    maxQueue: opts.maxQueue,
    idleTimeout: Infinity,
    workerData,
    recordTiming: false,
  });
  let closing = false;
  piscina.on('workerDestroy', () => {
    if (!closing) opts.onWorkerFailure?.();
  });
  let lastError: Error | undefined;
  piscina.on('error', (err: Error) => {
    lastError = err;
    if (!closing) opts.onWorkerFailure?.();
  });

  return {
    models: opts.models,
    async run(model, image, size, topK) {
      if (piscina.queueSize >= opts.maxQueue) {
        throw new BrokerError('overloaded', `inference queue is full (${opts.maxQueue} waiting)`, { retryAfter: 1 });
      }
      const task: InferTask = { kind: 'infer', model, image, size, topK, submittedAt: performance.timeOrigin + performance.now() };
      let outcome: InferOutcome;
      try {
        outcome = await piscina.run(task, { transferList: [image] });
      } catch (err) {
        if ((err as Error).message === 'Task queue is at limit') {
          throw new BrokerError('overloaded', `inference queue is full (${opts.maxQueue} waiting)`, { retryAfter: 1 });
        }
        // The worker crashed or was terminated; Piscina starts a replacement.
        throw new BrokerError('internal', 'inference worker failed', { cause: err });
      }
      if (!outcome.ok) throw new BrokerError(outcome.code, outcome.message);
      return outcome;
    },
    async warmup() {
      const n = opts.threads * 2;
      await Promise.all(Array.from({ length: n }, () => piscina.run({ kind: 'warmup' })));
      return n;
    },
    get ready() {
      return Atomics.load(ready, 0) >= opts.threads;
    },
    async waitReady(timeoutMs = 120_000) {
      const deadline = Date.now() + timeoutMs;
      while (Atomics.load(ready, 0) < opts.threads) {
        if (Date.now() > deadline) throw new Error(`inference workers not ready after ${timeoutMs} ms${lastError ? `: ${lastError.message}` : ''}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    get queueSize() {
      return piscina.queueSize;
    },
    get threads() {
      return piscina.threads;
    },
    async close() {
      closing = true;
      await piscina.close();
    },
  };
}
