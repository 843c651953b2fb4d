// The compiled stream chain: upstream bytes in, client bytes out, with the
// per-route stages (parse, instrument, count tokens, translate, encode) fused
// into one function per spec, built once and cached. A disabled stage is not
// in the function at all: the stage list is chosen here, at compile time, and
// composed into a fixed-arity closure, so the per-event path never asks "is
// instrumentation on?". The naive one-Transform-per-stage version is
// pipeline.ts; bench/chain.ts compares the two on 10k token chunks with both
// flags on (Node 20, bench/results/chain.json): 0.55-1.6 us per chunk
// compiled against 3.3-5.3 us through the pipeline, 3-6x depending on route.
//
// Per event: frame (SSE or NDJSON parser, bytes scanned, only complete lines
// decoded) → classify (error? terminal? usage? finish?) → [token probe] →
// [instrument] → [count] → emit. Same-API routes classify with regex probes on
// the JSON text and forward the upstream bytes untouched (probe.ts); cross-API
// routes JSON.parse once per event and write the client's format directly.
//
// Terminal semantics. Upstream: an OpenAI stream ends with `data: [DONE]`
// (a finish_reason is accepted as the end of the content when [DONE] never
// comes); an Ollama stream with a `"done": true` line. An upstream error event
// (`{"error":...}`) becomes the client's error event. Client: an OpenAI client
// gets `data: [DONE]` exactly once on success, or a final
// `data: {"error":{...}}` and no [DONE] on failure; an Ollama client gets the
// done line, or a final `{"error":"..."}` line.
//
// Responses and Messages clients (translate/responses_to_chat.ts, anthropic_to_chat.ts):
// each upstream event, parsed as on any cross-API route, becomes a provider-neutral
// Delta (translate/deltas.ts) that the client's writer turns into its events; its
// terminal events are written at the upstream's end ([DONE] or the done line), where
// the usage is known. A failure ends a Responses stream with response.failed, a
// Messages stream with an `error` event. A Responses client on a deployment with
// `responses: true` (kind 'responses') gets the upstream's events as they are, read
// for tokens, usage and the terminal event (response.completed, .incomplete, .failed).
//
// gRPC encoder (spec.encoder 'grpc', the gRPC front's Chat and Complete): the last
// stage writes protobuf GenerateResponse messages instead of the client API's text:
// the text of one upstream chunk as one Delta, then at the upstream's terminal event
// one Final with finish reason and usage (src/front/grpc/wire.ts). Each event is
// parsed as on a cross-API route. Errors are not written in-band: stats.error holds
// them and the gRPC front ends the call with their status.

import { BrokerError } from '../../errors.ts';
import { EMPTY } from '../codec/bytes.ts';
import { NdjsonParser, type NdjsonLine } from '../codec/ndjson.ts';
import { SSE_DONE, SseParser, isPlainBlock, type SseEvent } from '../codec/sse.ts';
import { ABORTED_MESSAGE, abortedFinish, choiceZero, finishFromOllama, ollamaHasToken, openaiChunkFinish, openaiChunkHasToken, usageFromOllama, usageFromOpenAI } from '../translate/common.ts';
import { streamErrorEvent } from '../../front/error-body.ts';
import { deltaMessage, finalMessage } from '../../front/grpc/wire.ts';
import { upstreamErrorMessage, upstreamText } from '../translate/errors.ts';
import * as ollamaToOpenai from '../translate/ollama_to_openai.ts';
import * as openaiToOllama from '../translate/openai_to_ollama.ts';
import { isUsageOnlyChunk } from '../translate/openai_to_openai.ts';
import type { Api, ClientApi, Kind, OllamaChatResponse, OllamaGenerateResponse, OpenAIChunk, ReplyContext } from '../translate/types.ts';
import { deltaFromOllama, deltaFromOpenAI, openaiToolState, type Delta, type OllamaToolState, type OpenAIToolState } from '../translate/deltas.ts';
import { responsesDelta, responsesDone, responsesFailed, responsesUsage, responsesWriter, type ResponseIdentity } from '../translate/responses_to_chat.ts';
import { anthropicDelta, anthropicDone, anthropicWriter } from '../translate/anthropic_to_chat.ts';
import {
  ERROR_PROBE,
  OLLAMA_DONE_PROBE,
  OLLAMA_TOOLS_PROBE,
  OLLAMA_TOKEN_PROBE,
  OPENAI_FINISH_PROBE,
  OPENAI_TOKEN_PROBE,
  OPENAI_USAGE_PROBE,
  tryParse,
  looksLikeObject,
  MALFORMED_RUN_LIMIT,
  MALFORMED_RUN_MESSAGE,
} from './probe.ts';

export interface ChainSpec {
  readonly client: ClientApi;
  readonly provider: Api;
  readonly kind: Kind;
  /** Time the first and every token (TTFT, inter-token gaps). */
  readonly instrument: boolean;
  /** Fill stats.promptTokens/completionTokens: upstream usage when sent, else one per token event. */
  readonly countTokens: boolean;
  /**
   * 'grpc': the output is delimited protobuf GenerateResponse messages for the gRPC
   * front, not `client`'s text (which then only says how the request was translated).
   */
  readonly encoder?: 'grpc';
}

export interface ChainContext {
  /** The model name the client asked for (written into translated replies). */
  model: string;
  /** The reply's ids (`chatcmpl-<id>`, LlmRequest.replyId). */
  id: string;
  /** The request id: error events' `request_id`; `id` when unset. */
  requestId?: string;
  /** The OpenAI client asked `stream_options.include_usage` (UpstreamRequest.includeUsage). */
  includeUsage: boolean;
  /** The prompt's estimated tokens, for a gRPC Final when the upstream reports no usage (chat.proto: "estimated when it did not say"). */
  promptEstimate?: number;
  /** The client's body, when its reply echoes request fields (Responses). */
  request?: Readonly<Record<string, unknown>>;
  /** Milliseconds, e.g. `() => performance.now()`; read only when instrumenting. */
  now: () => number;
  /** The clock of the durations a translated Ollama done line carries (ReplyContext.durationClock). */
  durationClock?: () => number;
  /** What the broker sent upstream that an upstream's error may echo (the deployment's API key): masked in error events and logs. */
  secrets?: readonly string[];
  onFirstToken?: (at: number) => void;
  /** Every token event; previousAt is null for the first. */
  onToken?: (at: number, previousAt: number | null) => void;
}

export interface ChainStats {
  /** From upstream usage when sent; 0 otherwise. Maintained only with countTokens. */
  promptTokens: number;
  /** From upstream usage when sent, else the number of token events. Maintained only with countTokens. */
  completionTokens: number;
  /** The upstream's reason in OpenAI words (stop, length, tool_calls, content_filter); Ollama gives stop or length. */
  finishReason: string | null;
  /** ctx.now() at the first token event; only with instrument. */
  firstTokenAt: number | null;
  lastTokenAt: number | null;
  /** Upstream events with data (SSE events, non-blank NDJSON lines), the terminal one included. */
  chunks: number;
  /** The upstream reached its end: [DONE] or a finish_reason (OpenAI), the done line (Ollama). */
  sawTerminal: boolean;
  /** The token counts came from the upstream's usage. */
  usageFromUpstream: boolean;
  /** Set when the stream ended in an error event: an upstream error, a truncation, or fail(). */
  error: { code: string; message: string } | null;
  /** Upstream events that were not JSON objects: dropped, never forwarded (see MALFORMED_RUN_LIMIT). */
  malformed: number;
}

export function newChainStats(): ChainStats {
  return { promptTokens: 0, completionTokens: 0, finishReason: null, firstTokenAt: null, lastTokenAt: null, chunks: 0, sawTerminal: false, usageFromUpstream: false, error: null, malformed: 0 };
}

/** Bytes or text to write to the client now; null when there is nothing. */
export type ChainOutput = Uint8Array | string | null;

export interface ChainStream {
  readonly stats: ChainStats;
  /** end() found the upstream cut before its terminal event; end() then wrote the error event. */
  readonly truncated: boolean;
  /** The client's stream is finished (terminal or error event written): later input is ignored. */
  readonly closed: boolean;
  /**
   * One upstream chunk, split anywhere. Returned bytes may be views of `chunk`
   * (pass-through forwards the upstream bytes) or of a shared allocation, so do
   * not reuse the chunk's memory, and copy before transferring the output's
   * ArrayBuffer to another thread.
   */
  push(chunk: Uint8Array): ChainOutput;
  /**
   * The upstream ended. Returns what is still owed: [DONE] or the done line if
   * the upstream finished without sending it, or, when it was cut before its
   * terminal event, the error event (then `truncated` is true). Null if nothing.
   */
  end(): ChainOutput;
  /** The stream failed (upstream error, timeout, ...): the client's terminal error event; '' if already closed. */
  fail(message: string, code: string): string;
}

export interface ChainFactory {
  readonly spec: Readonly<ChainSpec>;
  readonly key: string;
  /** Content-Type of the client's stream. */
  readonly contentType: string;
  open(ctx: ChainContext): ChainStream;
}

// ---- per-stream state ----

interface Framer {
  push(chunk: Uint8Array): void;
  end(): number;
}

function noop(): void {}

const NL = Buffer.from('\n');
const TRUNCATED = 'upstream stream ended before the response was complete';

/** Per-stream state shared by the stage functions; the current event's facts live here too, so stages pass nothing. */
class Run {
  readonly ctx: ChainContext;
  readonly stats: ChainStats = newChainStats();
  readonly onFirstToken: (at: number) => void;
  readonly onToken: (at: number, previousAt: number | null) => void;
  readonly dropUsage: boolean;
  framer: Framer | null = null;
  /** Translator state (SseWriter or NdjsonWriter) for cross-API routes. */
  w: unknown = null;
  closed = false;
  ended = false;
  truncated = false;
  // The current event.
  data = '';
  raw: Uint8Array = EMPTY;
  terminated = true;
  json: Record<string, unknown> | null = null;
  isToken = false;
  hasUsage = false;
  usagePrompt = 0;
  usageCompletion = 0;
  usageOnly = false;
  // Output of the current call.
  parts: Uint8Array[] = [];
  out = '';
  /** SSE pass-through: the last block was forwarded (so is the LF that completes its CRLF). */
  lastKept = false;
  /** Some output left the chain: the client's reply has begun. */
  sent = false;
  /** When the first keep-alive held before the first event came (ctx.now), -1 before. */
  keepAliveSince = -1;
  /** An OpenAI upstream sent a chunk with a choice (not only usage): [DONE] then ends a reply. */
  replied = false;
  /**
   * The upstream failed before anything was written for the client (an error event or line
   * first, as an Ollama whose runner died, or a stream with no reply): its error event is held
   * back until end(), so that a caller that has not answered the client yet may try elsewhere.
   */
  held: { message: string; code: string } | null = null;
  /** Malformed upstream events in a row. */
  malformedRun = 0;
  // gRPC encoder: the delta text and role gathered from this chunk, and whether the final is owed.
  gText = '';
  gRole = '';
  gRoleSent = false;
  gFinal = false;
  /** gRPC encoder: an OpenAI upstream's chunk carried tool calls (chat.proto carries none; its final says so). */
  gTools = false;
  /** Ollama tool calls seen, for a Responses or Messages client (their indexes and ids). */
  ot: OllamaToolState | null = null;
  /** OpenAI tool calls seen, for a Responses or Messages client (calls sent without index). */
  oat: OpenAIToolState | null = null;
  /** An Ollama line carried tool calls: its done line's `stop` is a tool_calls finish. */
  ollamaTools = false;

  constructor(ctx: ChainContext) {
    this.ctx = ctx;
    this.onFirstToken = ctx.onFirstToken ?? noop;
    this.onToken = ctx.onToken ?? noop;
    this.dropUsage = !ctx.includeUsage;
  }
}

type Stage = (r: Run) => void;
type Gate = (r: Run) => boolean;

// ---- stages ----

function instrument(r: Run): void {
  if (!r.isToken) return;
  const t = r.ctx.now();
  const s = r.stats;
  const prev = s.lastTokenAt;
  if (prev === null) {
    s.firstTokenAt = t;
    r.onFirstToken(t);
  }
  s.lastTokenAt = t;
  r.onToken(t, prev);
}

function count(r: Run): void {
  const s = r.stats;
  if (r.hasUsage) {
    s.promptTokens = r.usagePrompt;
    s.completionTokens = r.usageCompletion;
    s.usageFromUpstream = true;
  } else if (r.isToken && !s.usageFromUpstream) {
    s.completionTokens++;
  }
}

/** Compose stages into one closure of fixed arity (no loop, no flags, per event). */
function fuse(stages: Stage[]): Stage {
  switch (stages.length) {
    case 1:
      return stages[0]!;
    case 2: {
      const [a, b] = stages as [Stage, Stage];
      return (r) => {
        a(r);
        b(r);
      };
    }
    case 3: {
      const [a, b, c] = stages as [Stage, Stage, Stage];
      return (r) => {
        a(r);
        b(r);
        c(r);
      };
    }
    case 4: {
      const [a, b, c, d] = stages as [Stage, Stage, Stage, Stage];
      return (r) => {
        a(r);
        b(r);
        c(r);
        d(r);
      };
    }
    default:
      throw new BrokerError('internal', `compileChain: cannot fuse ${stages.length} stages`);
  }
}

function gated(gate: Gate, rest: Stage): Stage {
  return (r) => {
    if (gate(r)) rest(r);
  };
}

function setUsage(r: Run, prompt: number, completion: number): void {
  r.hasUsage = true;
  r.usagePrompt = prompt;
  r.usageCompletion = completion;
}

// ---- the compiler ----

const NO_SECRETS: readonly string[] = [];

/** A stream's terminal error event in the client's framing ('' for gRPC, whose errors are statuses). */
type ErrorText = (r: Run, message: string, code: string) => string;

function upstreamFailure(r: Run, emitText: (r: Run, s: string) => void, errorText: ErrorText, upstreamMessage: string): void {
  const message = upstreamText(upstreamMessage, r.ctx.secrets ?? NO_SECRETS);
  r.stats.error = { code: 'upstream_error', message };
  if (unsent(r)) r.held = { message, code: 'upstream_error' };
  else emitText(r, errorText(r, message, 'upstream_error'));
  r.closed = true;
  r.lastKept = false;
}

/** Nothing has been written for the client, nor is waiting to be. */
function unsent(r: Run): boolean {
  // A gRPC role waiting for its text is not output yet (take() keeps it for the first text).
  return !r.sent && r.parts.length === 0 && r.out === '' && r.gText === '';
}

export const NO_REPLY = 'upstream ended its stream with no reply ([DONE] before any choice)';

/**
 * [DONE] with no chunk of a choice before it: no reply at all, not an empty one (which has its
 * role or finish chunk). Nothing was sent then, so the caller may still try elsewhere.
 */
function onlyDone(r: Run): boolean {
  return !r.replied && unsent(r);
}

/**
 * How long an upstream's keep-alives (SSE comments, Ollama blank lines) are held back before
 * its first event. One forwarded commits the client's reply (its status line), after which a
 * failure can no longer fall back; held for ever, the client sees nothing at all, and a proxy in
 * front of the broker may cut it for idling (60 s is common). After this long, they pass.
 */
export const KEEPALIVE_HOLD_MS = 10_000;

/** An upstream's keep-alive as a translated SSE client gets it (translated output is text): a comment, which every SSE parser skips. */
const SSE_KEEPALIVE = ': keep-alive\n\n';

/** Whether a keep-alive is held back: nothing sent yet, and the first one came under KEEPALIVE_HOLD_MS ago. */
function holdKeepAlive(r: Run): boolean {
  if (!unsent(r)) return false;
  const now = r.ctx.now();
  if (r.keepAliveSince < 0) r.keepAliveSince = now;
  return now - r.keepAliveSince < KEEPALIVE_HOLD_MS;
}

/**
 * A garbage event is dropped and counted, never forwarded: a client's SDK would choke on it.
 * The stream goes on, unless the upstream sends nothing else (MALFORMED_RUN_LIMIT in a row).
 */
function malformed(r: Run, emitText: (r: Run, s: string) => void, errorText: ErrorText): false {
  r.stats.malformed++;
  r.lastKept = false;
  if (++r.malformedRun >= MALFORMED_RUN_LIMIT) upstreamFailure(r, emitText, errorText, MALFORMED_RUN_MESSAGE);
  return false;
}

function errorMessageOf(text: string): string {
  return upstreamErrorMessage(tryParse(text)) ?? text;
}

/**
 * llama.cpp's server before late 2025 wrote a failure as an `error:` field of its own
 * (`error: {"code":500,"message":...}`), which SSE ignores: its text, else null. Read as the
 * upstream's error, not as garbage followed by a cut that lost its message.
 */
function errorFieldOf(raw: Uint8Array): string | null {
  // 'error:' in bytes: no text is made of any other block.
  if (raw.length < 6 || raw[0] !== 0x65 || raw[1] !== 0x72 || raw[2] !== 0x72 || raw[3] !== 0x6f || raw[4] !== 0x72 || raw[5] !== 0x3a) return null;
  return Buffer.from(raw.buffer, raw.byteOffset + 6, raw.byteLength - 6).toString('utf8').trim();
}

/** A passed-through Responses stream's state: the upstream's last sequence number + 1, and its response's identity. */
interface PassedThrough {
  seq: number;
  response: ResponseIdentity | null;
  /** The upstream's output items as streamed so far (a failure's response.failed repeats them). */
  items: Record<string, unknown>[];
}

/**
 * The upstream's Response as its response.created described it (id, model, instructions,
 * the request's echoes), without what a failure replaces (status, output, usage, error).
 */
function responseIdentity(v: unknown): ResponseIdentity | null {
  if (v === null || typeof v !== 'object') return null;
  const { status: _s, output: _o, usage: _u, error: _e, incomplete_details: _i, ...rest } = v as Record<string, unknown>;
  return typeof rest['id'] === 'string' ? (rest as ResponseIdentity) : null;
}

/** A JSON object, or undefined. */
function obj(v: unknown): Record<string, unknown> | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

/** Keeps a passed-through stream's output items up to date with one of its events (already parsed: ours to keep). */
function trackOutput(items: Record<string, unknown>[], type: string, j: Record<string, unknown>): void {
  const at = j['output_index'];
  if (typeof at !== 'number' || at < 0 || at > 1024) return;
  if (type === 'response.output_item.added' || type === 'response.output_item.done') {
    const item = obj(j['item']);
    if (item !== undefined) items[at] = item;
    return;
  }
  const item = items[at];
  if (item === undefined) return;
  const delta = j['delta'];
  if (type === 'response.function_call_arguments.delta' && typeof delta === 'string') {
    item['arguments'] = (typeof item['arguments'] === 'string' ? item['arguments'] : '') + delta;
    return;
  }
  const ci = j['content_index'];
  if (typeof ci !== 'number' || ci < 0 || ci > 1024) return;
  const content = Array.isArray(item['content']) ? (item['content'] as unknown[]) : (item['content'] = []);
  if (type === 'response.content_part.added' || type === 'response.content_part.done') {
    const part = obj(j['part']);
    if (part !== undefined) content[ci] = part;
  } else if (type === 'response.output_text.delta' && typeof delta === 'string') {
    const part = obj(content[ci]);
    if (part !== undefined) part['text'] = (typeof part['text'] === 'string' ? part['text'] : '') + delta;
  }
}

/** How a Responses or Messages client's events are written from deltas. */
interface EventWriter {
  open(ctx: ReplyContext): unknown;
  delta(w: unknown, d: Delta): string;
  done(w: unknown): string;
}

const EVENT_WRITERS: Readonly<Record<'responses' | 'anthropic', EventWriter>> = {
  responses: { open: responsesWriter, delta: responsesDelta as EventWriter['delta'], done: responsesDone as EventWriter['done'] },
  anthropic: { open: anthropicWriter, delta: anthropicDelta as EventWriter['delta'], done: anthropicDone as EventWriter['done'] },
};

function build(spec: ChainSpec, key: string): ChainFactory {
  const { client, provider, kind } = spec;
  const grpc = spec.encoder === 'grpc';
  const passthrough = client === provider && !grpc;
  // A translated SSE client (Anthropic, Responses, OpenAI from Ollama) gets an upstream's
  // keep-alives as SSE comments, past the hold, as a pass-through one does: a Claude Code
  // client behind a 60 s idle timeout otherwise saw nothing while a model thought. NDJSON
  // (Ollama's clients parse every line) and gRPC have no comment to send.
  const sseKeepAlive = !passthrough && !grpc && client !== 'ollama';
  // A Responses client on a Responses deployment: its events pass through.
  const responsesPass = kind === 'responses';
  const events = !grpc && (client === 'responses' || client === 'anthropic') && !responsesPass ? EVENT_WRITERS[client] : null;
  const wantTokens = spec.instrument || spec.countTokens;

  // Output: pass-through collects byte views, translation builds a string, gRPC
  // encodes messages in take(); its errors are statuses, never text in the stream.
  const bytesOut = passthrough || responsesPass;
  const emitText = grpc
    ? noop
    : bytesOut
    ? (r: Run, s: string): void => {
        r.parts.push(Buffer.from(s));
      }
    : (r: Run, s: string): void => {
        r.out += s;
      };
  const take = grpc
    ? (r: Run): ChainOutput => {
        let out: Buffer | null = null;
        // The role alone waits for the first text (or the final), as a translated reply's first event does.
        if (r.gText !== '' || (r.gRole !== '' && r.gFinal)) {
          out = deltaMessage(r.gRole, r.gText);
          r.gText = '';
          r.gRole = '';
        }
        if (r.gFinal) {
          r.gFinal = false;
          const s = r.stats;
          // An answer of tool calls says tool_calls whatever the upstream said (or did not: some
          // servers send none, or stop), as the other clients' replies do (docs/grpc.md).
          const finish = r.gTools && (s.finishReason === null || s.finishReason === 'stop') ? 'tool_calls' : (s.finishReason ?? '');
          const f = finalMessage(finish, s.usageFromUpstream ? s.promptTokens : (r.ctx.promptEstimate ?? s.promptTokens), s.completionTokens);
          out = out === null ? f : Buffer.concat([out, f]);
        }
        return out;
      }
    : bytesOut
    ? (r: Run): ChainOutput => {
        const p = r.parts;
        if (p.length === 0) return null;
        if (p.length === 1) {
          const one = p[0]!;
          p.length = 0;
          return one;
        }
        const all = Buffer.concat(p);
        p.length = 0;
        return all;
      }
    : (r: Run): ChainOutput => {
        const o = r.out;
        if (o === '') return null;
        r.out = '';
        return o;
      };

  // A Responses stream's failure event carries the next sequence number: the writer's
  // (translated) or one past the upstream's last (passed through, r.w is PassedThrough),
  // and, passed through, the upstream's response id and model (the client saw them in response.created).
  const errorText: ErrorText = grpc
    ? () => ''
    : client === 'responses'
    ? (r, message, code) => responsesFailed(r.w as Parameters<typeof responsesFailed>[0], r.ctx.id, r.ctx.model, code, message)
    : (r, message, code) => streamErrorEvent(client as 'openai' | 'ollama' | 'anthropic', message, code, r.ctx.requestId ?? r.ctx.id);
  const fail = (r: Run, message: string): void => upstreamFailure(r, emitText, errorText, message);
  const drop = (r: Run): false => malformed(r, emitText, errorText);

  // classify: the gate that reads the event and may end the stream.
  let classify: Gate;
  // token probe, only if some stage reads r.isToken.
  let tokenStage: Stage | null = null;
  // emit: the event in the client's format.
  let emit: Stage;
  // on [DONE] (OpenAI provider only).
  let onDone: Stage = noop;
  // end() after the content but without the upstream's terminal event (OpenAI provider only).
  let closeAtEnd: Stage = noop;
  // translator state for cross-API routes
  let newWriter: (ctx: ChainContext) => unknown = () => null;

  if (responsesPass) {
    classify = (r) => {
      const j = tryParse(r.data);
      if (j === null) return drop(r);
      r.malformedRun = 0;
      r.json = j;
      r.hasUsage = false;
      const w = r.w as PassedThrough;
      if (typeof j['sequence_number'] === 'number') w.seq = j['sequence_number'] + 1;
      const type = j['type'];
      if (type === 'response.created') w.response = responseIdentity(j['response']);
      else if (typeof type === 'string' && type.startsWith('response.')) trackOutput(w.items, type, j);
      if (type === 'response.completed' || type === 'response.incomplete') {
        r.stats.sawTerminal = true;
        r.stats.finishReason = type === 'response.incomplete' ? 'length' : 'stop';
        r.closed = true;
        const u = responsesUsage(j['response'] as Record<string, unknown> | undefined);
        if (u !== null) setUsage(r, u.promptTokens, u.completionTokens);
      } else if (type === 'response.failed' || type === 'error') {
        // The upstream's own failure event reaches the client as it is.
        const e = type === 'error' ? j : (j['response'] as Record<string, unknown> | undefined)?.['error'];
        const m = (e as Record<string, unknown> | null | undefined)?.['message'];
        const secrets = r.ctx.secrets ?? NO_SECRETS;
        r.stats.error = { code: 'upstream_error', message: upstreamText(typeof m === 'string' ? m : 'upstream response failed', secrets) };
        // Passed on as it came, but never with what the broker sent upstream in it.
        for (const k of secrets) if (k !== '' && r.data.includes(k)) r.raw = Buffer.from(Buffer.from(r.raw.buffer, r.raw.byteOffset, r.raw.byteLength).toString('utf8').split(k).join('[redacted]'));
        r.closed = true;
        // Its first event: nothing reached the client, which may still be served elsewhere.
        if (unsent(r)) {
          r.held = { message: r.stats.error.message, code: 'upstream_error' };
          return false;
        }
      }
      return true;
    };
    tokenStage = (r) => {
      const j = r.json!;
      const t = j['type'];
      const d = j['delta'];
      r.isToken = typeof t === 'string' && t.endsWith('.delta') && typeof d === 'string' && d !== '';
    };
    emit = (r) => {
      r.parts.push(r.raw);
      r.lastKept = true;
    };
    newWriter = (): PassedThrough => ({ seq: 0, response: null, items: [] });
  } else if (provider === 'openai') {
    if (passthrough) {
      classify = (r) => {
        const d = r.data;
        if (!looksLikeObject(d)) return drop(r);
        r.malformedRun = 0;
        if (ERROR_PROBE.test(d)) {
          const j = tryParse(d);
          const msg = upstreamErrorMessage(j);
          if (msg !== null && j!['choices'] === undefined) {
            fail(r, msg);
            return false;
          }
        }
        const f = OPENAI_FINISH_PROBE.exec(d);
        if (f !== null) {
          r.stats.finishReason = f[1]!;
          r.stats.sawTerminal = true;
        }
        r.hasUsage = false;
        r.usageOnly = false;
        if (OPENAI_USAGE_PROBE.test(d)) {
          const j = tryParse(d);
          const u = j === null ? null : usageFromOpenAI(j['usage'] as OpenAIChunk['usage']);
          if (u !== null) {
            setUsage(r, u.promptTokens, u.completionTokens);
            r.usageOnly = isUsageOnlyChunk(j as unknown as OpenAIChunk);
          }
        }
        if (!r.usageOnly) r.replied = true;
        return true;
      };
      tokenStage = (r) => {
        r.isToken = OPENAI_TOKEN_PROBE.test(r.data);
      };
      emit = (r) => {
        if (r.usageOnly && r.dropUsage) {
          // We added include_usage; the client did not ask for this chunk.
          r.lastKept = false;
          return;
        }
        r.parts.push(r.raw);
        r.lastKept = true;
      };
      onDone = (r) => {
        r.parts.push(r.raw);
        r.lastKept = true;
      };
      closeAtEnd = (r) => emitText(r, SSE_DONE);
    } else {
      classify = (r) => {
        const j = tryParse(r.data);
        if (j === null) return drop(r);
        r.malformedRun = 0;
        // {"error": ...}, or vLLM's (before 0.10) {"object": "error", "message": ...}.
        if ((j['error'] !== undefined || j['object'] === 'error') && j['choices'] === undefined) {
          fail(r, upstreamErrorMessage(j) ?? 'upstream error');
          return false;
        }
        r.json = j;
        const chunk = j as unknown as OpenAIChunk;
        if (!r.replied && Array.isArray(chunk.choices) && chunk.choices.length > 0) r.replied = true;
        const f = openaiChunkFinish(chunk);
        if (abortedFinish(f)) {
          // The server cut the generation: the translated client's API has no word for it.
          fail(r, ABORTED_MESSAGE);
          return false;
        }
        if (f !== null) {
          r.stats.finishReason = f;
          r.stats.sawTerminal = true;
        }
        const u = usageFromOpenAI(chunk.usage);
        r.hasUsage = u !== null;
        if (u !== null) setUsage(r, u.promptTokens, u.completionTokens);
        return true;
      };
      tokenStage = (r) => {
        r.isToken = openaiChunkHasToken(r.json as unknown as OpenAIChunk);
      };
      if (grpc) {
        emit = (r) => {
          const c = choiceZero((r.json as unknown as OpenAIChunk).choices);
          if (c === undefined) return;
          const d = c.delta;
          if (d !== undefined) {
            if (typeof d.role === 'string' && !r.gRoleSent) {
              r.gRole = d.role;
              r.gRoleSent = true;
            }
            if (typeof d.content === 'string') r.gText += d.content;
            if (Array.isArray(d.tool_calls) && d.tool_calls.length > 0) r.gTools = true;
          } else if (typeof c.text === 'string') {
            r.gText += c.text;
          }
        };
        onDone = (r) => {
          r.gFinal = true;
        };
      } else if (events !== null) {
        emit = (r) => {
          const d = deltaFromOpenAI(r.json as unknown as OpenAIChunk, (r.oat ??= openaiToolState()));
          // A chunk that carries nothing (the role chunk OpenAI and vLLM send first) begins no
          // reply: the first event waits for content, so that a failure before it may fall back.
          if (d.text === '' && d.thinking === '' && d.tools === null && d.finish === null && d.usage === null) return;
          r.out += events.delta(r.w, d);
        };
        onDone = (r) => {
          r.out += events.done(r.w);
        };
        newWriter = events.open;
      } else {
        const toLines = kind === 'chat' ? ollamaToOpenai.chatChunk : ollamaToOpenai.completionChunk;
        const done = kind === 'chat' ? ollamaToOpenai.chatDone : ollamaToOpenai.completionDone;
        emit = (r) => {
          r.out += toLines(r.w as ollamaToOpenai.NdjsonWriter, r.json as unknown as OpenAIChunk);
        };
        onDone = (r) => {
          r.out += done(r.w as ollamaToOpenai.NdjsonWriter);
        };
        newWriter = (ctx) => ollamaToOpenai.ndjsonWriter(ctx);
      }
      closeAtEnd = onDone;
    }
  } else {
    const markDone = (r: Run, j: Record<string, unknown>): void => {
      r.stats.sawTerminal = true;
      r.stats.finishReason = finishFromOllama(j['done_reason'] as string | undefined, r.ollamaTools);
      r.closed = true;
      const u = usageFromOllama(j);
      if (u !== null) setUsage(r, u.promptTokens, u.completionTokens);
    };
    if (passthrough) {
      classify = (r) => {
        const d = r.data;
        if (!looksLikeObject(d)) return drop(r);
        r.malformedRun = 0;
        if (ERROR_PROBE.test(d)) {
          const msg = upstreamErrorMessage(tryParse(d));
          if (msg !== null) {
            fail(r, msg);
            return false;
          }
        }
        r.hasUsage = false;
        r.json = null;
        if (!r.ollamaTools && OLLAMA_TOOLS_PROBE.test(d)) r.ollamaTools = true;
        if (OLLAMA_DONE_PROBE.test(d)) {
          const j = tryParse(d);
          if (j !== null && j['done'] === true) {
            markDone(r, j);
            r.json = j;
          }
        }
        return true;
      };
      tokenStage = (r) => {
        // The done line is parsed already; other lines are probed.
        r.isToken = r.json !== null ? ollamaHasToken(r.json as unknown as OllamaChatResponse) : OLLAMA_TOKEN_PROBE.test(r.data);
      };
      emit = (r) => {
        r.parts.push(r.raw);
        if (!r.terminated) r.parts.push(NL);
      };
    } else {
      classify = (r) => {
        const j = tryParse(r.data);
        if (j === null) return drop(r);
        r.malformedRun = 0;
        if (j['error'] !== undefined) {
          fail(r, upstreamErrorMessage(j) ?? 'upstream error');
          return false;
        }
        r.json = j;
        r.hasUsage = false;
        const calls = (j['message'] as { tool_calls?: unknown } | undefined)?.tool_calls;
        if (Array.isArray(calls) && calls.length > 0) r.ollamaTools = true;
        if (j['done'] === true) markDone(r, j);
        return true;
      };
      tokenStage = (r) => {
        r.isToken = ollamaHasToken(r.json as unknown as OllamaChatResponse);
      };
      if (grpc) {
        emit = (r) => {
          const j = r.json!;
          if (kind === 'chat') {
            const m = (j as unknown as OllamaChatResponse).message;
            if (m !== undefined) {
              if (typeof m.role === 'string' && !r.gRoleSent) {
                r.gRole = m.role;
                r.gRoleSent = true;
              }
              if (typeof m.content === 'string') r.gText += m.content;
            }
          } else {
            const t = (j as unknown as OllamaGenerateResponse).response;
            if (typeof t === 'string') r.gText += t;
          }
          if (j['done'] === true) r.gFinal = true;
        };
      } else if (events !== null) {
        emit = (r) => {
          const j = r.json!;
          r.out += events.delta(r.w, deltaFromOllama(j as unknown as OllamaChatResponse, (r.ot ??= { toolCalls: 0, id: r.ctx.id })));
          if (j['done'] === true) r.out += events.done(r.w);
        };
        newWriter = events.open;
      } else {
        emit =
          kind === 'chat'
            ? (r) => {
                r.out += openaiToOllama.chatLine(r.w as openaiToOllama.SseWriter, r.json as unknown as OllamaChatResponse);
              }
            : (r) => {
                r.out += openaiToOllama.generateLine(r.w as openaiToOllama.SseWriter, r.json as unknown as OllamaGenerateResponse);
              };
        newWriter = (ctx) => openaiToOllama.sseWriter(ctx);
      }
    }
  }

  // The stage list for this spec. Absent stages are simply not here.
  const stages: Stage[] = [];
  if (wantTokens && tokenStage !== null) stages.push(tokenStage);
  if (spec.instrument) stages.push(instrument);
  if (spec.countTokens) stages.push(count);
  stages.push(emit);
  const step = gated(classify, fuse(stages));

  // Framing: the SSE or NDJSON shell around `step`.
  let framer: (r: Run) => Framer;
  if (responsesPass) {
    const onEvent = (r: Run, ev: SseEvent): void => {
      if (ev.continuation) {
        if (r.lastKept) r.parts.push(ev.raw);
        return;
      }
      if (r.closed) return;
      if (ev.data === null) {
        if (!isPlainBlock(ev.raw)) return void drop(r);
        // Held before the first event (as in the OpenAI pass-through below).
        if (holdKeepAlive(r)) return;
        r.parts.push(ev.raw);
        r.lastKept = true;
        return;
      }
      r.stats.chunks++;
      r.data = ev.data;
      r.raw = ev.raw;
      step(r);
    };
    framer = (r) => new SseParser((ev) => onEvent(r, ev));
  } else if (provider === 'openai') {
    const onEvent: (r: Run, ev: SseEvent) => void = passthrough
      ? (r, ev) => {
          if (ev.continuation) {
            if (r.lastKept) r.parts.push(ev.raw);
            return;
          }
          if (r.closed) return;
          const data = ev.data;
          if (data === null) {
            const said = errorFieldOf(ev.raw);
            if (said !== null) return fail(r, errorMessageOf(said));
            // comment or keep-alive: forwarded as is once the stream has begun; a line of garbage
            // without data is not. Before the first event one would commit the client's reply
            // (its status and headers), so that a failure after it (an error event, a cut, a
            // timeout) could no longer fall back: it stays the upstream's.
            if (!isPlainBlock(ev.raw)) return void drop(r);
            if (holdKeepAlive(r)) return;
            r.parts.push(ev.raw);
            r.lastKept = true;
            return;
          }
          r.stats.chunks++;
          if (ev.event === 'error') return fail(r, errorMessageOf(data));
          if (data === '[DONE]') {
            if (onlyDone(r)) return fail(r, NO_REPLY);
            r.stats.sawTerminal = true;
            r.closed = true;
            r.raw = ev.raw;
            return onDone(r);
          }
          r.data = data;
          r.raw = ev.raw;
          step(r);
        }
      : (r, ev) => {
          if (r.closed) return;
          if (ev.data === null) {
            const said = errorFieldOf(ev.raw);
            if (said !== null) return fail(r, errorMessageOf(said));
            if (sseKeepAlive && !ev.continuation && isPlainBlock(ev.raw) && !holdKeepAlive(r)) r.out += SSE_KEEPALIVE;
            return;
          }
          const data = ev.data;
          r.stats.chunks++;
          if (ev.event === 'error') return fail(r, errorMessageOf(data));
          if (data === '[DONE]') {
            if (onlyDone(r)) return fail(r, NO_REPLY);
            r.stats.sawTerminal = true;
            r.closed = true;
            return onDone(r);
          }
          r.data = data;
          step(r);
        };
    framer = (r) => new SseParser((ev) => onEvent(r, ev));
  } else {
    const onLine: (r: Run, line: NdjsonLine) => void = (r, line) => {
      if (r.closed) return;
      const text = line.text;
      if (text === '' || (text.charCodeAt(0) <= 32 && text.trim() === '')) {
        // As an SSE keep-alive: not before the first line, which would commit the reply.
        if (passthrough && !holdKeepAlive(r)) r.parts.push(line.raw);
        else if (sseKeepAlive && !holdKeepAlive(r)) r.out += SSE_KEEPALIVE;
        return;
      }
      // A last line without LF that is not whole JSON was cut by the end of the
      // stream: it is dropped, and end() reports the truncation.
      if (!line.terminated && tryParse(text) === null) return;
      r.stats.chunks++;
      r.data = text;
      r.raw = line.raw;
      r.terminated = line.terminated;
      step(r);
    };
    framer = (r) => new NdjsonParser((line) => onLine(r, line));
  }

  class CompiledStream implements ChainStream {
    private readonly r: Run;

    constructor(ctx: ChainContext) {
      const r = new Run(ctx);
      r.w = newWriter(ctx);
      r.framer = framer(r);
      this.r = r;
    }

    get stats(): ChainStats {
      return this.r.stats;
    }

    get truncated(): boolean {
      return this.r.truncated;
    }

    get closed(): boolean {
      return this.r.closed;
    }

    push(chunk: Uint8Array): ChainOutput {
      const r = this.r;
      if (r.ended) return null;
      r.framer!.push(chunk);
      return this.taken(take(r));
    }

    private taken(out: ChainOutput): ChainOutput {
      if (out !== null) this.r.sent = true;
      return out;
    }

    end(): ChainOutput {
      const r = this.r;
      if (r.ended) return null;
      r.ended = true;
      r.framer!.end();
      if (r.held !== null) {
        emitText(r, errorText(r, r.held.message, r.held.code));
        r.held = null;
      } else if (!r.closed) {
        if (r.stats.sawTerminal) {
          closeAtEnd(r);
        } else {
          r.truncated = true;
          r.stats.error = { code: 'upstream_error', message: TRUNCATED };
          emitText(r, errorText(r, TRUNCATED, 'upstream_error'));
        }
        r.closed = true;
      }
      return this.taken(take(r));
    }

    fail(message: string, code: string): string {
      const r = this.r;
      r.ended = true;
      if (r.held !== null) {
        // The upstream's own error, held back, is what the client is told.
        const h = r.held;
        r.held = null;
        return errorText(r, h.message, h.code);
      }
      if (r.closed) return '';
      r.closed = true;
      r.stats.error = { code, message };
      return errorText(r, message, code);
    }
  }

  return Object.freeze({
    spec: Object.freeze({ ...spec }),
    key,
    contentType: grpc ? 'application/grpc' : client === 'ollama' ? 'application/x-ndjson' : 'text/event-stream',
    open: (ctx: ChainContext): ChainStream => new CompiledStream(ctx),
  });
}

const APIS: readonly string[] = ['openai', 'ollama'];
const CLIENTS: readonly string[] = ['openai', 'ollama', 'responses', 'anthropic'];
const KINDS: readonly string[] = ['chat', 'completion', 'responses'];

export function chainKey(spec: ChainSpec): string {
  return `${spec.client}>${spec.provider}/${spec.kind}${spec.instrument ? '+instrument' : ''}${spec.countTokens ? '+count' : ''}${spec.encoder === 'grpc' ? '+grpc' : ''}`;
}

const compiled = new Map<string, ChainFactory>();

/**
 * The chain factory for a route and flag set: built on first use, then the
 * same object for every later call with an equal spec.
 */
export function compileChain(spec: ChainSpec): ChainFactory {
  const key = chainKey(spec);
  let f = compiled.get(key);
  if (f === undefined) {
    if (!CLIENTS.includes(spec.client)) throw new BrokerError('internal', `compileChain: spec.client must be openai, ollama, responses or anthropic, got ${String(spec.client)}`);
    if (!APIS.includes(spec.provider)) throw new BrokerError('internal', `compileChain: spec.provider must be openai or ollama, got ${String(spec.provider)}`);
    if (!KINDS.includes(spec.kind)) throw new BrokerError('internal', `compileChain: spec.kind must be chat, completion or responses, got ${String(spec.kind)}`);
    if (spec.kind === 'responses' && (spec.client !== 'responses' || spec.provider !== 'openai')) throw new BrokerError('internal', 'compileChain: kind responses is a Responses client on an OpenAI deployment');
    if ((spec.client === 'responses' || spec.client === 'anthropic') && spec.kind === 'completion') throw new BrokerError('internal', `compileChain: a ${spec.client} client has no completion kind`);
    f = build(spec, key);
    compiled.set(key, f);
  }
  return f;
}
