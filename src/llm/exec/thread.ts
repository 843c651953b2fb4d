// Upstream attempts on the thread that serves the request, with its own undici pools.
// Whole bodies are read with a cap: an upstream must not be able to make the broker
// buffer what it likes (a 64 MiB error body once took it from 190 to 390 MB).
import { Upstreams } from '../../fleet/upstreams.ts';
import { performance } from 'node:perf_hooks';
import { pumpChain, retryAfterOf, send } from './run.ts';
import { AttemptDeadline } from './deadline.ts';
import { timed } from './wire-timing.ts';
import { ReplyAssembler } from '../translate/assemble.ts';
import { tooLarge } from '../codec/bytes.ts';
import { firstByte, streamOfReply } from './sniff.ts';
import type { AttemptTiming, Executor, StreamTarget } from './types.ts';
import type { AbortLike } from '../../abort.ts';

/** An upstream's error text is read up to this much: enough for any message, and the rest is dropped. */
export const ERROR_BODY_BYTES = 64 * 1024;

/** The largest non-streamed upstream reply: `body` (UPSTREAM_MAX_BODY_BYTES), `embed` an embeddings reply's (UPSTREAM_MAX_EMBED_BYTES). */
export interface ReplyLimits {
  readonly body: number;
  readonly embed: number;
}

/** `limits`: the largest whole replies read; a number: one limit for every kind. */
export function threadExecutor(limits: ReplyLimits | number, log?: { warn(obj: object, msg: string): void }): Executor {
  const { body: maxReplyBytes, embed: maxEmbedBytes } = typeof limits === 'number' ? { body: limits, embed: limits } : limits;
  const upstreams = new Upstreams();
  /**
   * Deployments that answered a stream request with one JSON body (a server that cannot
   * stream): their non-streamed requests are timed as whole replies from then on, since
   * the first-token limit would cut a reply that comes only when it is generated. Learnt
   * from a reply that came within the limit: one that comes after it is never seen (the
   * request is aborted), so such a server whose first replies are all slow needs
   * `upstreamStreaming: client`.
   */
  const answersWhole = new Set<string>();
  return {
    async attempt(req, signal) {
      // The attempt's own signal: the request's abort, or a phase that ran over (deadline.ts).
      // An assembled reply streams from the upstream: its phases are a stream's.
      const assembled = req.assemble === true && !answersWhole.has(req.deployment.id);
      const deadline = new AttemptDeadline(req.deployment, req.stream || assembled, signal, undefined, assembled);
      const timing: AttemptTiming = { writtenAt: -1, headersAt: -1, wireFirstByteAt: -1, firstByteAt: -1, lastChunkAt: -1 };
      const onChunk = (): void => {
        const at = deadline.chunk();
        if (timing.firstByteAt < 0) timing.lastChunkAt = timing.firstByteAt = timing.wireFirstByteAt >= 0 ? timing.wireFirstByteAt : at;
        else timing.lastChunkAt = at;
      };
      let res;
      try {
        res = await untilAborted(timed(timing, () => send(upstreams, req, deadline.signal)), deadline.signal);
      } catch (err) {
        deadline.done();
        throw deadline.expired !== null ? deadline.signal.reason : err;
      }
      deadline.headers();
      const embed = req.kind === 'embed';
      const maxBodyBytes = embed ? maxEmbedBytes : maxReplyBytes;
      const assembler = req.assemble === true ? new ReplyAssembler(req.deployment.provider, req.kind, maxBodyBytes, req.promptEstimate) : undefined;
      if (!req.stream && assembler === undefined) timing.firstByteAt = timing.headersAt >= 0 ? timing.headersAt : performance.now();
      // An OpenAI-compatible upstream that answered a stream request with one JSON body: read as
      // one (a streamed client's as its stream), and its whole replies timed as whole replies
      // from then on (said once in the log).
      const answeredWhole = (): void => {
        if (answersWhole.has(req.deployment.id)) return;
        answersWhole.add(req.deployment.id);
        log?.warn({ deployment: req.deployment.id }, 'deployment answered a stream request with one JSON body: its non-streamed requests wait for whole replies (headersTimeoutMs); set upstreamStreaming: client for it');
      };
      const settle = <T>(p: Promise<T>): Promise<T> =>
        p.then(
          (v) => {
            deadline.done();
            return v;
          },
          (err: unknown) => {
            deadline.done();
            throw deadline.expired !== null ? deadline.signal.reason : err;
          },
        );
      return {
        status: res.statusCode,
        timing,
        expired: () => deadline.expired,
        retryAfter: retryAfterOf(res),
        errorText: () => settle(readCapped(res.body, ERROR_BODY_BYTES, false, onChunk).then((b) => Buffer.from(b).toString('utf8'))),
        bytes: () => settle(assembler !== undefined ? readAssembled(res.body, assembler, maxBodyBytes, onChunk, answeredWhole) : readCapped(res.body, maxBodyBytes, true, onChunk, embed)),
        ...(assembler !== undefined ? { assembled: () => ({ tokens: assembler.tokens, malformed: assembler.malformed }) } : {}),
        // An OpenAI-compatible server that ignored `stream: true` answers one JSON body: read as its stream.
        pump: (target) => settle(pumpChain(req, req.deployment.provider === 'openai' ? streamOfReply(res.body, maxBodyBytes, onChunk, answeredWhole) : res.body, paused(target, deadline), deadline.signal, onChunk)),
      };
    },
    close: () => upstreams.close(),
  };
}

/**
 * Reads a body up to `max` bytes. Past it the body is destroyed (the connection is not
 * worth draining) and, when `strict`, the read fails with upstream_error; otherwise what
 * was read is returned, cut.
 */
async function readCapped(body: AsyncIterable<Uint8Array> & { destroy(err?: Error): unknown }, max: number, strict: boolean, onChunk: () => void, embed = false): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of body) {
    onChunk();
    if (size + chunk.byteLength > max) {
      body.destroy();
      if (strict) throw tooLarge(max, embed);
      parts.push(chunk.subarray(0, max - size));
      size = max;
      break;
    }
    parts.push(chunk);
    size += chunk.byteLength;
  }
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, size);
}

/**
 * Reads an upstream's stream into its assembler; the whole reply's JSON bytes. An
 * OpenAI-compatible body that begins with `{` is one JSON reply, not an event stream
 * (whatever its content type says: the stream chain does not read it either): read whole.
 * An Ollama whole reply is one NDJSON line with `done: true`, which the assembler reads as is.
 */
async function readAssembled(body: AsyncIterable<Uint8Array> & { destroy(err?: Error): unknown }, a: ReplyAssembler, max: number, onChunk: () => void, answeredWhole: () => void): Promise<Uint8Array> {
  const it = body[Symbol.asyncIterator]();
  let first: IteratorResult<Uint8Array>;
  do first = await it.next();
  while (!first.done && firstByte(first.value) === -1);
  if (first.done) return Buffer.from(a.end());
  if (a.provider === 'openai' && firstByte(first.value) === 0x7b) {
    answeredWhole();
    return readCapped(prepend(first.value, it), max, true, onChunk);
  }
  try {
    onChunk();
    a.push(first.value);
    for (let r = await it.next(); !r.done; r = await it.next()) {
      onChunk();
      a.push(r.value);
    }
  } catch (err) {
    body.destroy();
    throw err;
  }
  return Buffer.from(a.end());
}

function prepend(first: Uint8Array, rest: AsyncIterator<Uint8Array>): AsyncIterable<Uint8Array> & { destroy(): void } {
  return {
    async *[Symbol.asyncIterator]() {
      yield first;
      for (let r = await rest.next(); !r.done; r = await rest.next()) yield r.value;
    },
    destroy: () => void rest.return?.(),
  };
}

/**
 * `p`, or the signal's reason as soon as it aborts: undici does not give up a connect in
 * progress on abort, so a phase that ran over (or a client gone) waited for connectTimeoutMs.
 * A reply that still comes is let go (its body destroyed, the connection freed).
 */
function untilAborted<T extends { body: { destroy(): unknown } }>(p: Promise<T>, signal: AbortLike): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort);
    p.then(
      (r) => {
        signal.removeEventListener('abort', onAbort);
        if (signal.aborted) r.body.destroy();
        else resolve(r);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** The target with the idle timeout paused while it drains: a slow client's wait is not the upstream's silence. */
function paused(target: StreamTarget, deadline: AttemptDeadline): StreamTarget {
  return {
    write: (chunk, done) => target.write(chunk, done),
    drained: () => {
      deadline.pause();
      return target.drained().finally(() => deadline.resume());
    },
    ...(target.committed !== undefined ? { committed: () => target.committed!() } : {}),
  };
}
