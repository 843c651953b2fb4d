// The baseline of the inference bench: N worker threads, each with its own
// onnxruntime session, running the broker's per-request work in a closed loop for a
// fixed time. No HTTP, no JSON, no base64, no queue: what the hardware can do.
// The threads stay up between runs so that the bench can alternate baseline and
// broker rounds (other load on the machine then hits both alike).
import { Worker } from 'node:worker_threads';
import type { ModelManifest } from '../../src/infer/manifest.ts';
import { cpuBetween, machineBusy, threadCpu, type CpuSplit } from './proc.ts';

export interface BaselineWorkerData {
  readonly modelPath: string;
  readonly manifest: ModelManifest;
  readonly intraOpThreads: number;
  readonly maxPixels: number;
  readonly image: Uint8Array;
  readonly topK: number;
  /** 'broker': the broker's own preprocess(); 'sharp': sharp for every image. */
  readonly decoder: 'broker' | 'sharp';
}

export type BaselineCommand = { readonly type: 'run'; readonly durationMs: number } | { readonly type: 'stop' };
export type BaselineMessage = { type: 'ready' } | { type: 'done'; elapsedMs: number; latencies: Float64Array; decodeMs: number; computeMs: number };

export interface BaselineOptions extends Omit<BaselineWorkerData, 'image'> {
  readonly image: Buffer;
  readonly threads: number;
}

/** One timed run of all N threads. */
export interface BaselineRun {
  readonly throughput_rps: number;
  /** Per-item latencies (ms) of every thread. */
  readonly latencies: Float64Array;
  /** Summed over items: decode + preprocess (sharp), and session.run. */
  readonly decode_ms_total: number;
  readonly compute_ms_total: number;
  readonly window_s: number;
  /** CPU of this process's threads during the run. */
  readonly cpu: CpuSplit;
  /** CPU seconds other processes on the machine used meanwhile: noise if well above 0. */
  readonly foreign_cpu_s: number;
}

export interface Baseline {
  run(durationMs: number): Promise<BaselineRun>;
  close(): Promise<void>;
}

const ENTRY = new URL('./baseline-worker.mjs', import.meta.url);

export async function startBaseline(opts: BaselineOptions): Promise<Baseline> {
  const { threads, ...shared } = opts;
  const workers = Array.from({ length: threads }, () => {
    const workerData: BaselineWorkerData = { ...shared, image: new Uint8Array(opts.image) };
    return new Worker(ENTRY, { workerData });
  });
  try {
    await Promise.all(workers.map((w) => next(w, 'ready')));
  } catch (err) {
    await Promise.all(workers.map((w) => w.terminate()));
    throw err;
  }
  return {
    async run(durationMs) {
      const results = workers.map((w) => next(w, 'done'));
      const cpu0 = threadCpu(process.pid);
      const busy0 = machineBusy();
      const t0 = performance.now();
      for (const w of workers) w.postMessage({ type: 'run', durationMs } satisfies BaselineCommand);
      const done = await Promise.all(results);
      const windowS = (performance.now() - t0) / 1000;
      const cpu = cpuBetween(process.pid, cpu0, threadCpu(process.pid));
      const foreign = machineBusy() - busy0 - cpu.main_s - cpu.other_threads_s;
      let rps = 0;
      let decode = 0;
      let compute = 0;
      for (const d of done) {
        rps += d.latencies.length / (d.elapsedMs / 1000);
        decode += d.decodeMs;
        compute += d.computeMs;
      }
      const latencies = new Float64Array(done.reduce((n, d) => n + d.latencies.length, 0));
      let at = 0;
      for (const d of done) {
        latencies.set(d.latencies, at);
        at += d.latencies.length;
      }
      return { throughput_rps: rps, latencies, decode_ms_total: decode, compute_ms_total: compute, window_s: windowS, cpu, foreign_cpu_s: Math.max(0, foreign) };
    },
    async close() {
      for (const w of workers) w.postMessage({ type: 'stop' } satisfies BaselineCommand);
      await Promise.all(workers.map((w) => w.terminate()));
    },
  };
}

function next<T extends BaselineMessage['type']>(w: Worker, type: T): Promise<Extract<BaselineMessage, { type: T }>> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: BaselineMessage) => {
      if (m.type !== type) return;
      w.off('error', onError);
      w.off('message', onMessage);
      resolve(m as Extract<BaselineMessage, { type: T }>);
    };
    const onError = (err: Error) => {
      w.off('message', onMessage);
      reject(err);
    };
    w.on('message', onMessage);
    w.once('error', onError);
  });
}
