// Upstream attempts on the thread that serves the request, with its own undici pools.
import { Upstreams } from '../../fleet/upstreams.ts';
import { pumpChain, retryAfterOf, send } from './run.ts';
import type { Executor } from './types.ts';

export function threadExecutor(): Executor {
  const upstreams = new Upstreams();
  return {
    async attempt(req, signal) {
      const res = await send(upstreams, req, signal);
      return {
        status: res.statusCode,
        retryAfter: retryAfterOf(res),
        errorText: () => res.body.text(),
        bytes: async () => new Uint8Array(await res.body.arrayBuffer()),
        pump: (target) => pumpChain(req, res.body, target, signal),
      };
    },
    close: () => upstreams.close(),
  };
}
