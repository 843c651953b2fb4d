// LLM pool worker: runs upstream attempts (undici + compiled chain) and hands the
// client-ready chunks back over the attempt's MessagePort. Many attempts share a worker.
import { Upstreams } from '../../fleet/upstreams.ts';
import { pumpChain, retryAfterOf, send } from './run.ts';
import type { FromWorker, PoolTask, ToWorker } from './protocol.ts';

const upstreams = new Upstreams();

export default async function attempt({ port, req }: PoolTask): Promise<void> {
  const post = (m: FromWorker, transfer?: ArrayBuffer[]): void => port.postMessage(m, transfer);
  const ac = new AbortController();
  let paused = false;
  let resume: (() => void) | undefined;
  port.on('message', (m: ToWorker) => {
    if (m.t === 'abort') {
      ac.abort();
      resume?.();
    } else if (m.t === 'pause') paused = true;
    else {
      paused = false;
      resume?.();
    }
  });
  try {
    let res;
    try {
      res = await send(upstreams, req, ac.signal);
    } catch (err) {
      const e = err as Error & { code?: string };
      return post({ t: 'connect_error', code: e.code, name: e.name, message: e.message });
    }
    const retryAfter = retryAfterOf(res);
    if (res.statusCode >= 300) return post({ t: 'head', status: res.statusCode, retryAfter, errorText: await res.body.text().catch(() => '') });
    if (!req.stream) {
      try {
        const bytes = new Uint8Array(await res.body.arrayBuffer());
        return post({ t: 'head', status: res.statusCode, retryAfter, bytes }, [bytes.buffer as ArrayBuffer]);
      } catch (err) {
        return post({ t: 'head', status: res.statusCode, retryAfter, bodyError: (err as Error).message });
      }
    }
    post({ t: 'head', status: res.statusCode, retryAfter });
    const result = await pumpChain(
      req,
      res.body,
      {
        write(c) {
          // Pass-through chunks are views of undici's buffers: copy exactly the bytes and
          // transfer the copy, instead of cloning the whole backing buffer.
          if (typeof c === 'string') post({ t: 'data', c });
          else {
            const own = c.slice();
            post({ t: 'data', c: own }, [own.buffer as ArrayBuffer]);
          }
          return !paused;
        },
        drained: () =>
          new Promise<void>((r) => {
            if (!paused || ac.signal.aborted) return r();
            resume = r;
          }),
      },
      ac.signal,
    );
    post({ t: 'end', result });
  } finally {
    port.close();
  }
}
