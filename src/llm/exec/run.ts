// One upstream attempt, wherever it runs (main thread or pool worker): request via
// undici, then for a streamed reply the compiled chain, chunk by chunk, into a target.
import { performance } from 'node:perf_hooks';
import { errors as undiciErrors } from 'undici';
import { compileChain } from '../chain/compile.ts';
import type { Upstreams, UpstreamResponse } from '../upstream.ts';
import type { AttemptRequest, StreamResult, StreamTarget } from './types.ts';

export function send(upstreams: Upstreams, req: AttemptRequest, signal: AbortSignal): Promise<UpstreamResponse> {
  return upstreams.post(req.deployment, req.kind, req.body, signal);
}

export function retryAfterOf(res: UpstreamResponse): string | undefined {
  const v = res.headers['retry-after'];
  return typeof v === 'string' ? v : undefined;
}

/** Streams `body` through the request's compiled chain into `target`. Never throws. */
export async function pumpChain(req: AttemptRequest, body: AsyncIterable<Uint8Array>, target: StreamTarget, signal: AbortSignal): Promise<StreamResult> {
  const headersAt = performance.now();
  let firstTokenMs: number | null = null;
  const gaps: number[] = [];
  const s = compileChain(req.chain).open({
    model: req.model,
    id: req.id,
    includeUsage: req.includeUsage,
    now: () => performance.now(),
    onFirstToken: (at) => {
      firstTokenMs = at - headersAt;
    },
    onToken: (at, previousAt) => {
      // Bounded: a very long stream keeps the first gaps only.
      if (previousAt !== null && gaps.length < 4096) gaps.push(at - previousAt);
    },
  });
  let waited = 0;
  let t = performance.now();
  const result = (ended: StreamResult['ended'], errorCode: string | null = null, errorMessage: string | null = null): StreamResult => ({
    ended,
    errorCode,
    errorMessage,
    promptTokens: s.stats.promptTokens,
    completionTokens: s.stats.completionTokens,
    firstTokenMs,
    interTokenMs: gaps,
    waitedMs: waited,
  });
  try {
    for await (const chunk of body) {
      waited += performance.now() - t;
      const out = s.push(chunk);
      if (out !== null && !target.write(out)) await target.drained();
      t = performance.now();
    }
    waited += performance.now() - t;
    // end() returns what is still owed: [DONE] or the done line, or the error event of a cut stream.
    const tail = s.end();
    if (tail !== null) target.write(tail);
    if (s.truncated) return result('truncated', 'upstream_error', 'upstream closed the stream before it was complete');
    if (s.stats.error !== null) return result('upstream_error', s.stats.error.code, s.stats.error.message);
    return result('complete');
  } catch (err) {
    if (signal.aborted) return result('aborted');
    const { code, message } = describeBodyError(err);
    const tail = s.fail(message, code);
    if (tail !== '') target.write(tail);
    return result('failed', code, message);
  }
}

export function describeBodyError(err: unknown): { code: string; message: string } {
  if (err instanceof undiciErrors.BodyTimeoutError) return { code: 'upstream_timeout', message: 'upstream stopped sending (idle timeout)' };
  const e = err as Error & { code?: string };
  return { code: 'upstream_error', message: `upstream connection failed: ${e.code ?? e.message}` };
}
