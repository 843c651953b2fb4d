// Upstream attempts on the main thread: the default, and the faster mode measured
// by bench:llm (see docs/benchmarks.md).
import { Upstreams } from '../../fleet/upstreams.ts';
import { pumpChain, retryAfterOf, send } from './run.ts';
import type { Executor } from './types.ts';

export function threadExecutor(): Executor {
  const upstreams = new Upstreams();
  return {
    mode: 'thread',
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
