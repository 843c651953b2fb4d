// The timing engine shared by every API: when the first token goes out, how
// fast the rest follow, and where an injected failure cuts the answer.
// Token i is due at startedAt + ttftMs + i * (1000 / tps); a tick sends every
// token that is due, so pacing does not drift and a tps above timer resolution
// still holds on average.

import type { ServerResponse } from 'node:http';

/** Raw header list for writeHead: name, value, name, value... */
export type RawHeaders = readonly string[];

/**
 * `'none'`, `'reset'`, `'stall'`, `'garbage'` (one event that is not JSON after `failAfter`
 * tokens, then the rest of a good stream) or an HTTP status to answer with before any byte.
 * A status answers with the generic body of that status; `context`, `ratelimit`, `overloaded`
 * and `badrequest` answer with the error body the real server sends for that case (per
 * `flavor` on the OpenAI routes: api.openai.com or vLLM).
 */
export type FailMode = 'none' | 'reset' | 'stall' | 'garbage' | ErrorCase | number;
export type ErrorCase = 'context' | 'ratelimit' | 'overloaded' | 'badrequest';
export const ERROR_CASES: readonly string[] = ['context', 'ratelimit', 'overloaded', 'badrequest'];

/** The behaviour knobs, per process (options/CLI) and per request (x-mock-* headers). */
export interface Knobs {
  /** Delay before the first token, ms. */
  readonly ttftMs: number;
  /** Tokens per second after the first one; 0 = as fast as possible. */
  readonly tps: number;
  /** Output length in tokens, before `max_tokens` / `num_predict`. */
  readonly tokens: number;
  readonly fail: FailMode;
  /** For `reset` and `stall`: content tokens written before the cut. */
  readonly failAfter: number;
  /** Chat answers are this many tool calls instead of text (0: text). See tools.ts. */
  readonly toolCalls: number;
  /** Whose error bodies the OpenAI routes send: api.openai.com's or vLLM's. */
  readonly flavor: 'openai' | 'vllm';
  /** /v1/embeddings answers floats whatever encoding_format asks, as some OpenAI-compatible servers do. */
  readonly embedFloats: boolean;
}

/** One request in flight. The server flips `closed` and clears `timer` when the response closes. */
export class Exchange {
  closed = false;
  /** True when the mock itself cut the connection (`reset`): not counted as a client abort. */
  selfDestroyed = false;
  timer: NodeJS.Timeout | undefined = undefined;
  constructor(
    readonly res: ServerResponse,
    /** performance.now() when the request arrived. */
    readonly startedAt: number,
    /** Sequence number of the request in this mock instance, used for ids. */
    readonly seq: number,
  ) {}
}

/** Builds the body of one streamed answer. Times are performance.now() ms. */
export interface StreamEncoder {
  /** Sent once, together with the first token (OpenAI chat: the role chunk). */
  head(): string;
  /** The events for tokens [from, to). */
  tokens(from: number, to: number): string;
  /** The events after the last token (finish chunk, usage, [DONE], or Ollama's done line). */
  tail(firstTokenAt: number, endedAt: number): string;
}

/** Builds the body of a non-streamed answer. */
export type UnaryEncoder = (firstTokenAt: number, endedAt: number) => string;

export interface Plan {
  /** Tokens in the full answer, already capped by max_tokens / num_predict. */
  readonly n: number;
  readonly knobs: Knobs;
}

function intervalMs(k: Knobs): number {
  return k.tps > 0 ? 1000 / k.tps : 0;
}

/**
 * Cut the connection with a TCP RST once what was written has reached the
 * kernel (an RST discards unsent data). A client that does not read is given
 * up to a second before the cut happens anyway.
 */
export function resetConnection(ex: Exchange, attempt = 0): void {
  ex.selfDestroyed = true;
  const socket = ex.res.socket;
  if (socket === null || socket.destroyed) return;
  if (socket.writableLength > 0 && attempt < 200) {
    setTimeout(resetConnection, 5, ex, attempt + 1);
    return;
  }
  socket.resetAndDestroy();
}

/** Stream an answer: headers now, then tokens on schedule, then the tail (or the injected cut). */
export function streamAnswer(ex: Exchange, plan: Plan, headers: RawHeaders, enc: StreamEncoder): void {
  const { res, startedAt } = ex;
  const k = plan.knobs;
  const interval = intervalMs(k);
  const cut = k.fail === 'reset' || k.fail === 'stall';
  const n = plan.n;
  const limit = cut ? Math.min(k.failAfter, n) : n;
  const firstAt = startedAt + k.ttftMs;

  // What a broken proxy in front of a model server might inject: not an event of the API.
  const junk = k.fail !== 'garbage' ? '' : headers.includes('text/event-stream') ? 'data: upstream hiccup\n\n' : 'upstream hiccup\n';
  const junkAt = junk === '' ? -1 : Math.min(k.failAfter, n);
  const tokens = (from: number, to: number): string =>
    junkAt >= from && junkAt < to ? enc.tokens(from, junkAt) + junk + enc.tokens(junkAt, to) : enc.tokens(from, to);

  res.writeHead(200, headers as string[]);
  if (!cut && k.ttftMs <= 0 && interval === 0) {
    // The benchmark baseline: headers and the whole body in one write.
    const now = performance.now();
    res.end(enc.head() + tokens(0, n) + (junkAt === n ? junk : '') + enc.tail(Math.min(firstAt, now), now));
    return;
  }
  res.flushHeaders();

  let sent = 0;
  let firstTokenAt = -1;
  const step = (): void => {
    ex.timer = undefined;
    if (ex.closed) return;
    const now = performance.now();
    let chunk = '';
    if (firstTokenAt < 0) {
      firstTokenAt = now;
      chunk = enc.head();
    }
    const due = interval === 0 ? limit : Math.min(limit, Math.floor((now - firstAt) / interval) + 1);
    if (due > sent) {
      chunk += tokens(sent, due);
      sent = due;
    }
    if (sent >= limit) {
      if (!cut) {
        res.end(chunk + (junkAt === n ? junk : '') + enc.tail(firstTokenAt, now));
      } else if (k.fail === 'reset') {
        ex.selfDestroyed = true;
        if (chunk.length > 0) res.write(chunk, () => resetConnection(ex));
        else resetConnection(ex);
      } else if (chunk.length > 0) {
        res.write(chunk); // stall: nothing more, the connection stays open until the client leaves
      }
      return;
    }
    const drained = chunk.length === 0 || res.write(chunk);
    if (!drained) {
      res.once('drain', step);
      return;
    }
    const delay = firstAt + sent * interval - performance.now();
    ex.timer = setTimeout(step, delay > 0 ? delay : 0);
  };

  const delay = firstAt - performance.now();
  if (delay > 0) ex.timer = setTimeout(step, delay);
  else step();
}

/** Answer in one body once the whole answer would have been generated (or apply the injected cut). */
export function unaryAnswer(ex: Exchange, plan: Plan, contentType: string, body: UnaryEncoder): void {
  const k = plan.knobs;
  const interval = intervalMs(k);
  const cut = k.fail === 'reset' || k.fail === 'stall';
  const limit = cut ? Math.min(k.failAfter, plan.n) : plan.n;
  const firstAt = ex.startedAt + k.ttftMs;
  const doneAt = firstAt + (limit > 0 ? (limit - 1) * interval : 0);

  const finish = (): void => {
    ex.timer = undefined;
    if (ex.closed) return;
    if (!cut) {
      const now = performance.now();
      sendBody(ex.res, 200, contentType, body(Math.min(firstAt, now), now));
    } else if (k.fail === 'reset') {
      resetConnection(ex);
    }
    // stall: never answer
  };

  const delay = doneAt - performance.now();
  if (delay > 0) ex.timer = setTimeout(finish, delay);
  else finish();
}

/** A whole reply with Content-Length. `extra` is a raw header list appended as is. */
export function sendBody(res: ServerResponse, status: number, contentType: string, body: string, extra?: RawHeaders): void {
  const len = String(Buffer.byteLength(body));
  const headers = extra === undefined
    ? ['content-type', contentType, 'content-length', len]
    : ['content-type', contentType, 'content-length', len, ...extra];
  res.writeHead(status, headers);
  res.end(body);
}
