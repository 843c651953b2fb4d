// Messages between the main thread and LLM pool workers, over a per-attempt MessagePort.
import type { AttemptRequest, StreamResult } from './types.ts';

export interface PoolTask {
  readonly port: import('node:worker_threads').MessagePort;
  readonly req: AttemptRequest;
}

/** Worker → main. */
export type FromWorker =
  | { t: 'connect_error'; code: string | undefined; name: string; message: string }
  | { t: 'head'; status: number; retryAfter: string | undefined; errorText?: string; bytes?: Uint8Array; bodyError?: string }
  | { t: 'data'; c: string | Uint8Array }
  | { t: 'end'; result: StreamResult };

/** Main → worker. */
export type ToWorker = { t: 'abort' } | { t: 'pause' } | { t: 'resume' };
