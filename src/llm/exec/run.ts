// One upstream attempt, wherever it runs (main thread or pool worker): request via
// undici, then for a streamed reply the compiled chain, chunk by chunk, into a target.
import { performance } from 'node:perf_hooks';
import { errors as undiciErrors } from 'undici';
import { once } from 'node:events';
import { BrokerError } from '../../errors.ts';
import { compileChain, type ChainContext, type ChainStats } from '../chain/compile.ts';
import { createStagedBaseline, type Pipeline } from '../chain/staged-baseline.ts';
import { closedUnder, type Upstreams, type UpstreamResponse } from '../../fleet/upstreams.ts';
import type { AttemptRequest, StreamResult, StreamTarget } from './types.ts';
import type { AbortLike } from '../../abort.ts';

/** Called with every upstream body chunk as it arrives (the attempt's deadline and timing). */
export type OnChunk = () => void;

function noop(): void {}

export function send(upstreams: Upstreams, req: AttemptRequest, signal: AbortLike): Promise<UpstreamResponse> {
  return upstreams.post(req.deployment, req.kind, req.body, signal, req.traceparent === undefined ? undefined : traceHeaders(req.traceparent, req.tracestate));
}

function traceHeaders(traceparent: string, tracestate: string | undefined): Record<string, string> {
  return tracestate === undefined ? { traceparent } : { traceparent, tracestate };
}

export function retryAfterOf(res: UpstreamResponse): string | undefined {
  const v = res.headers['retry-after'];
  return typeof v === 'string' ? v : undefined;
}

/**
 * Streams `body` through the request's chain into `target`. Never throws. With the
 * compiled_chain flag the stages run fused in one function per chunk; without it,
 * one node:stream Transform per stage (the baseline bench:chain compares against).
 */
export function pumpChain(req: AttemptRequest, body: AsyncIterable<Uint8Array>, target: StreamTarget, signal: AbortLike, onChunk: OnChunk = noop): Promise<StreamResult> {
  const headersAt = performance.now();
  let firstTokenMs: number | null = null;
  const gaps: number[] = [];
  const ctx: ChainContext = {
    model: req.model,
    id: req.id,
    requestId: req.requestId,
    includeUsage: req.includeUsage,
    ...(req.promptEstimate !== undefined ? { promptEstimate: req.promptEstimate } : {}),
    ...(req.request !== undefined ? { request: req.request } : {}),
    now: () => performance.now(),
    durationClock: () => performance.now(),
    ...(req.deployment.apiKey !== undefined ? { secrets: [req.deployment.apiKey] } : {}),
    onFirstToken: (at) => {
      firstTokenMs = at - headersAt;
    },
    onToken: (at, previousAt) => {
      // Bounded: a very long stream keeps the first gaps only.
      if (previousAt !== null && gaps.length < 4096) gaps.push(at - previousAt);
    },
  };
  const finish = (s: Finishable, waited: number, ended: StreamResult['ended'], errorCode: string | null = null, errorMessage: string | null = null): StreamResult => ({
    ended,
    errorCode,
    errorMessage,
    promptTokens: s.stats.promptTokens,
    completionTokens: s.stats.completionTokens,
    usageFromUpstream: s.stats.usageFromUpstream,
    firstTokenMs,
    interTokenMs: gaps,
    waitedMs: waited,
    malformed: s.stats.malformed,
    finishReason: s.stats.finishReason,
  });
  // The staged baseline has no gRPC encoder and knows only the OpenAI and Ollama clients:
  // gRPC, Responses and Messages streams always run the compiled chain.
  const c = req.chain.client;
  const run = req.compiled || req.chain.encoder === 'grpc' || (c !== 'openai' && c !== 'ollama') ? pumpCompiled : pumpPipeline;
  return run(req, ctx, body, target, signal, finish, onChunk);
}

interface Finishable {
  readonly stats: ChainStats;
  readonly truncated: boolean;
  fail(message: string, code: string): string;
}

type Finish = (s: Finishable, waited: number, ended: StreamResult['ended'], errorCode?: string | null, errorMessage?: string | null) => StreamResult;

/** How a stream that ran to its end (or failed) is reported. */
function settle(s: Finishable, waited: number, finish: Finish): StreamResult {
  if (s.truncated) return finish(s, waited, 'truncated', 'upstream_error', 'upstream closed the stream before it was complete');
  if (s.stats.error !== null) return finish(s, waited, 'upstream_error', s.stats.error.code, s.stats.error.message);
  return finish(s, waited, 'complete');
}

function failed(s: Finishable, err: unknown, waited: number, target: StreamTarget, signal: AbortLike, finish: Finish): StreamResult {
  // Aborted by the client: nobody to tell. Aborted by shutdown or a timeout: the client gets the error event.
  if (signal.aborted && !(signal.reason instanceof BrokerError)) return finish(s, waited, 'aborted');
  const { code, message } = signal.aborted ? (signal.reason as BrokerError) : describeBodyError(err);
  // Nothing reached the client yet: the proxy may still try elsewhere, so no error event.
  if (target.committed?.() === false) {
    s.fail(message, code);
    return finish(s, waited, 'failed', code, message);
  }
  const tail = s.fail(message, code);
  if (tail !== '') target.write(tail);
  return finish(s, waited, 'failed', code, message);
}

async function pumpCompiled(req: AttemptRequest, ctx: ChainContext, body: AsyncIterable<Uint8Array>, target: StreamTarget, signal: AbortLike, finish: Finish, onChunk: OnChunk): Promise<StreamResult> {
  const s = compileChain(req.chain).open(ctx);
  // The wait for the first chunk is the timeline's (written → first byte): counted from then on.
  let waited = 0;
  let t = -1;
  try {
    for await (const chunk of body) {
      onChunk();
      if (t >= 0) waited += performance.now() - t;
      const out = s.push(chunk);
      // The terminal event closes the client's stream: that chunk says so (see StreamTarget.write).
      if (out !== null && !target.write(out, s.closed && s.stats.error === null ? s.stats : undefined)) await target.drained();
      t = performance.now();
      // The upstream said it failed (an error event): nothing more of it is read. A held
      // failure (nothing sent yet) is then tried elsewhere at once, not after an idle timeout.
      if (s.closed && s.stats.error !== null) break;
    }
    if (t >= 0) waited += performance.now() - t;
    // end() returns what is still owed: [DONE] or the done line, or the error event of a cut stream.
    const tail = s.end();
    // A 200 that ended with nothing for the client (an empty body, a cut before the first
    // event): as a failure before the first byte, the proxy may still try elsewhere.
    if (target.committed?.() === false && (s.truncated || s.stats.error !== null)) {
      const r = settle(s, waited, finish);
      return { ...r, ended: 'failed', upstreamSaid: !s.truncated };
    }
    if (tail !== null) target.write(tail, s.truncated || s.stats.error !== null ? undefined : s.stats);
    return settle(s, waited, finish);
  } catch (err) {
    return failed(s, err, waited, target, signal, finish);
  }
}

async function pumpPipeline(req: AttemptRequest, ctx: ChainContext, body: AsyncIterable<Uint8Array>, target: StreamTarget, signal: AbortLike, finish: Finish, onChunk: OnChunk): Promise<StreamResult> {
  const p = createStagedBaseline(req.chain, ctx);
  // As the compiled chain: a failure before anything reached the client stays out of its reply,
  // and an upstream that said it failed is read no more (its stages see that a turn later,
  // when the loop below already waits for a chunk that may never come).
  let upstreamFailed = false;
  if (target.committed !== undefined) {
    p.holdFailures(() => {
      upstreamFailed = true;
      (body as { destroy?: () => void }).destroy?.();
    });
  }
  p.output.on('data', (b: Buffer) => {
    if (!target.write(b)) {
      p.output.pause();
      void target.drained().then(() => p.output.resume());
    }
  });
  const ended = once(p.output, 'end');
  let waited = 0;
  let t = -1;
  try {
    for await (const chunk of body) {
      onChunk();
      if (t >= 0) waited += performance.now() - t;
      if (!p.input.write(chunk)) await once(p.input, 'drain');
      t = performance.now();
    }
    if (t >= 0) waited += performance.now() - t;
    p.input.end();
    await ended;
    return settlePipeline(p, waited, target, finish);
  } catch (err) {
    // The body destroyed because the upstream said it failed: its own error is the outcome.
    if (upstreamFailed && !signal.aborted) {
      p.input.end();
      await ended;
      return settlePipeline(p, waited, target, finish);
    }
    return failed(p, err, waited, target, signal, finish);
  }
}

/** A pipeline ran out: a failure it held back fails the attempt (nothing reached the client), or is written now. */
function settlePipeline(p: Pipeline, waited: number, target: StreamTarget, finish: Finish): StreamResult {
  const held = p.held;
  if (held !== null) {
    if (target.committed?.() === false) return { ...settle(p, waited, finish), ended: 'failed', upstreamSaid: !p.truncated };
    target.write(held);
  }
  return settle(p, waited, finish);
}


export function describeBodyError(err: unknown): { code: string; message: string } {
  if (err instanceof BrokerError) return { code: err.code, message: err.message };
  if (err instanceof undiciErrors.BodyTimeoutError) return { code: 'upstream_timeout', message: 'upstream stopped sending (idle timeout)' };
  const e = err as Error & { code?: string };
  if (closedUnder(err)) return { code: 'upstream_error', message: 'upstream closed the connection mid-stream' };
  return { code: 'upstream_error', message: `upstream connection failed: ${e.code ?? e.message}` };
}
