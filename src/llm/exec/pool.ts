// Upstream attempts in Piscina workers (LLM_EXECUTION=pool). The worker does the
// upstream I/O and runs the compiled chain; the main thread only writes the chunks
// it gets back over a MessagePort to the client, and tells the worker to pause when
// the client is slow and to abort when it goes away.
import { MessageChannel, type MessagePort } from 'node:worker_threads';
import { Piscina } from 'piscina';
import type { Attempt, Executor, StreamResult, StreamTarget } from './types.ts';
import type { FromWorker, PoolTask, ToWorker } from './protocol.ts';

const ENTRY = new URL('../../workers/ts-entry.mjs', import.meta.url).href;
const WORKER = new URL('./worker.ts', import.meta.url).href;

export function poolExecutor(threads: number): Executor {
  const piscina = new Piscina({
    filename: ENTRY,
    workerData: { entry: WORKER },
    minThreads: threads,
    maxThreads: threads,
    // Attempts are I/O-bound and long-lived: many share one worker.
    concurrentTasksPerWorker: 100_000,
    idleTimeout: Infinity,
    recordTiming: false,
  });
  return {
    mode: 'pool',
    attempt(req, signal) {
      const { port1, port2 } = new MessageChannel();
      const task: PoolTask = { port: port2, req };
      const done = piscina.run(task, { transferList: [port2] });
      const conn = new PortConnection(port1);
      const onAbort = (): void => conn.send({ t: 'abort' });
      signal.addEventListener('abort', onAbort, { once: true });
      done.catch((err: Error) => conn.fail(err)).finally(() => signal.removeEventListener('abort', onAbort));
      return conn.head().then((head) => new PoolAttempt(head, conn));
    },
    close: () => piscina.close(),
  };
}

/** Buffers worker messages so that none is lost between the head and the pump. */
class PortConnection {
  private readonly queue: FromWorker[] = [];
  private waiter: (() => void) | undefined;
  private failure: Error | undefined;

  constructor(private readonly port: MessagePort) {
    port.on('message', (m: FromWorker) => {
      this.queue.push(m);
      this.wake();
    });
    port.on('close', () => {
      this.failure ??= new Error('LLM worker closed the attempt');
      this.wake();
    });
  }

  send(m: ToWorker): void {
    try {
      this.port.postMessage(m);
    } catch {
      // port already closed: the attempt is over
    }
  }

  fail(err: Error): void {
    this.failure ??= err;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async next(): Promise<FromWorker> {
    for (;;) {
      const m = this.queue.shift();
      if (m !== undefined) return m;
      if (this.failure !== undefined) throw this.failure;
      await new Promise<void>((r) => (this.waiter = r));
    }
  }

  async head(): Promise<Extract<FromWorker, { t: 'head' }>> {
    const m = await this.next();
    if (m.t === 'connect_error') throw Object.assign(new Error(m.message), { name: m.name, code: m.code });
    if (m.t !== 'head') throw new Error(`LLM worker sent ${m.t} before the head`);
    return m;
  }

  close(): void {
    this.port.close();
  }
}

class PoolAttempt implements Attempt {
  readonly status: number;
  readonly retryAfter: string | undefined;

  constructor(
    private readonly head: Extract<FromWorker, { t: 'head' }>,
    private readonly conn: PortConnection,
  ) {
    this.status = head.status;
    this.retryAfter = head.retryAfter;
  }

  async errorText(): Promise<string> {
    return this.head.errorText ?? '';
  }

  async bytes(): Promise<Uint8Array> {
    if (this.head.bodyError !== undefined) throw new Error(this.head.bodyError);
    return this.head.bytes ?? new Uint8Array(0);
  }

  async pump(target: StreamTarget): Promise<StreamResult> {
    try {
      for (;;) {
        const m = await this.conn.next();
        if (m.t === 'end') return m.result;
        if (m.t !== 'data') continue;
        if (!target.write(m.c)) {
          this.conn.send({ t: 'pause' });
          await target.drained();
          this.conn.send({ t: 'resume' });
        }
      }
    } catch (err) {
      // The worker died mid-stream: say so to the client like any cut stream.
      return { ended: 'failed', errorCode: 'internal', errorMessage: (err as Error).message, promptTokens: 0, completionTokens: 0, firstTokenMs: null, interTokenMs: [], waitedMs: 0 };
    } finally {
      this.conn.close();
    }
  }
}
