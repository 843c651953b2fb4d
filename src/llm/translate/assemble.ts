// A non-streamed request asked of its upstream as a stream (`upstreamStreaming`: `always`, or
// `auto` on Ollama deployments; docs/llm.md#timeouts-per-phase): the upstream's stream, read
// as it comes, assembled back into a whole reply in the upstream's API. translateResponse then
// reads it as it reads any whole reply, so nothing downstream knows the difference;
// what changes is that the attempt's first-token and idle-chunk timeouts apply to it
// (a whole reply's headers come only when its generation ends), and that a stream cut
// halfway, nothing having reached the client, may still go elsewhere.
//
// The merge, chunk after chunk, per the wire formats:
//   - text fields (content, reasoning, arguments, an Ollama response...) are concatenated;
//   - arrays are concatenated (logprobs, Ollama tool calls, annotations), except OpenAI's
//     choices and tool_calls, merged by their `index`;
//   - objects merge field by field; any other value is the latest one, and null or an
//     empty string never replaces a value (a tool call's id comes in its first delta only).
// Complete when the stream said so: [DONE] or a finish_reason on every choice (OpenAI),
// the done line (Ollama), response.completed or response.incomplete (Responses). A
// stream that ends before is upstream_error, as a cut whole body is. An error event is
// returned as the upstream's error reply (`{"error": ...}`): translateResponse says it.
import { BrokerError } from '../../errors.ts';
import { SseParser } from '../codec/sse.ts';
import { NdjsonParser } from '../codec/ndjson.ts';
import { MAX_EVENT_BYTES, tooLarge } from '../codec/bytes.ts';
import { appendToolName, ollamaHasToken, openaiChunkHasToken } from './common.ts';
import { MALFORMED_RUN_LIMIT, MALFORMED_RUN_MESSAGE } from '../chain/probe.ts';
import { upstreamErrorMessage } from './errors.ts';
import { withUsage } from './openai_to_openai.ts';
import type { Api, Kind, OllamaChatResponse, OpenAIChunk } from './types.ts';

type Json = Record<string, unknown>;

/** Fields whose pieces make one text. */
const TEXT = new Set(['content', 'refusal', 'reasoning_content', 'reasoning', 'text', 'arguments', 'response', 'thinking']);
/** Stream-only fields a whole reply does not have. */
const STREAM_ONLY = new Set(['obfuscation']);

export const CUT_MESSAGE = 'upstream closed the stream before the reply was complete';

// The common event, a piece of plain text (choice 0's, on OpenAI routes), in the exact shape
// the servers write it: its text is appended without a JSON.parse of the event, which was
// most of an assembled reply's cost (1.35 µs an event). Inside a JSON string every `"` is
// escaped, so these keys cannot be matched within generated text (chain/probe.ts); any
// other shape (a tool call, logprobs, a finish, another choice) takes the full merge.
const STRING = '("(?:[^"\\\\]|\\\\.)*")';
const OPENAI_TEXT = new RegExp(`"choices":\\[\\{"index":0,"delta":\\{"content":${STRING}\\},"logprobs":null,"finish_reason":null\\}\\]`);
const OLLAMA_CHAT_TEXT = new RegExp(`^\\{"model":"[^"\\\\]*","created_at":"[^"\\\\]*","message":\\{"role":"assistant","content":${STRING}\\},"done":false\\}$`);
const OLLAMA_GENERATE_TEXT = new RegExp(`^\\{"model":"[^"\\\\]*","created_at":"[^"\\\\]*","response":${STRING},"done":false\\}$`);
/** An OpenAI event that says more than its text (checked on the fast path's candidates). */
const OPENAI_MORE = /"usage"\s*:\s*\{|^\s*\{\s*"error"/;

/**
 * The text of a JSON string literal cut from an event. A slice of 13 characters or more would
 * be a view of the whole event (V8's sliced strings), keeping it alive as long as the reply:
 * JSON.parse makes a string of its own.
 */
function stringValue(literal: string): string {
  return literal.length > 14 || literal.includes('\\') ? (JSON.parse(literal) as string) : literal.slice(1, -1);
}

/** Accepts the upstream's stream chunk by chunk; `end()` returns the whole reply's JSON text. */
export class ReplyAssembler {
  private readonly parser: { push(chunk: Uint8Array): void; end(): number };
  private readonly top: Json = {};
  /** OpenAI choices by index, in the order they first came. */
  private readonly choices = new Map<number, Json>();
  private done = false;
  private error: unknown = undefined;
  /** Responses passthrough: the final Response. */
  private response: Json | null = null;
  /**
   * What the reply holds, bounded by UPSTREAM_MAX_BODY_BYTES: the text appended, plus the
   * whole of each event that adds to an array (logprobs, calls), an upper bound of what it adds.
   */
  private size = 0;
  /** The current event's length, charged once if it adds to an array. */
  private eventBytes = 0;

  /** Per object, its texts being appended to, with the pieces each took since it was last copied flat (append). */
  private readonly ropes = new WeakMap<Json, Map<string, number>>();

  /** Events that carried text or a tool call's piece: the completion's tokens when the upstream reports no usage, as the stream chain counts them. */
  private tokenEvents = 0;
  /** Events that were not JSON objects: dropped, and counted as the stream chain counts them. */
  malformed = 0;
  private malformedRun = 0;

  /** `promptEstimate`: the prompt's tokens as admission estimated them, for an upstream that reports no usage. */
  constructor(readonly provider: Api, private readonly kind: Kind, private readonly maxBytes: number, private readonly promptEstimate = 0) {
    const maxEvent = Math.min(maxBytes, MAX_EVENT_BYTES);
    this.parser =
      provider === 'ollama'
        ? new NdjsonParser((l) => {
            if (l.text.trim() !== '') this.event(l.text);
          }, maxEvent)
        : new SseParser((ev) => {
            if (ev.data !== null) this.event(ev.data);
          }, maxEvent);
  }

  push(chunk: Uint8Array): void {
    if (this.done || this.error !== undefined) return;
    this.parser.push(chunk);
    if (this.size > this.maxBytes) throw tooLarge(this.maxBytes);
  }

  /** Tokens generated so far, one per event (what a request whose client left is charged, as a stream is). */
  get tokens(): number {
    return this.tokenEvents;
  }

  end(): string {
    this.parser.end();
    if (this.error !== undefined) return JSON.stringify({ error: this.error });
    if (this.kind === 'responses') {
      if (this.response === null) throw new BrokerError('upstream_error', CUT_MESSAGE);
      return JSON.stringify(this.response);
    }
    if (this.provider === 'ollama') {
      if (!this.done) throw new BrokerError('upstream_error', CUT_MESSAGE);
      return JSON.stringify(this.top);
    }
    // In index order, whatever order their chunks came in.
    const choices = [...this.choices.values()].sort((a, b) => (a['index'] as number) - (b['index'] as number));
    // [DONE] with no choice at all is no reply either.
    if (choices.length === 0 || (!this.done && choices.some((c) => c['finish_reason'] === undefined || c['finish_reason'] === null))) throw new BrokerError('upstream_error', CUT_MESSAGE);
    // A server that ignores stream_options.include_usage: the estimate and the events counted, as
    // a stream's are (a whole reply without usage would charge no quota and say no tokens).
    const usage = this.top['usage'];
    if (usage === undefined || usage === null) this.top['usage'] = { prompt_tokens: this.promptEstimate, completion_tokens: this.tokenEvents, total_tokens: this.promptEstimate + this.tokenEvents };
    return JSON.stringify(this.kind === 'chat' ? this.chatCompletion(choices) : this.textCompletion(choices));
  }

  private event(data: string): void {
    if (this.done || this.error !== undefined) return;
    if (this.provider === 'openai' && data === '[DONE]') {
      this.done = true;
      return;
    }
    if (this.text(data)) {
      this.malformedRun = 0;
      return;
    }
    let j: unknown;
    try {
      j = JSON.parse(data);
    } catch {
      j = null;
    }
    // Not a JSON object: dropped, as the stream chain drops it; a run of them ends the reply.
    if (j === null || typeof j !== 'object' || Array.isArray(j)) {
      this.malformed++;
      if (++this.malformedRun >= MALFORMED_RUN_LIMIT) this.error = { message: MALFORMED_RUN_MESSAGE, type: 'upstream_error' };
      return;
    }
    this.malformedRun = 0;
    const o = j as Json;
    if (this.kind === 'responses') return this.responsesEvent(o);
    // {"error": ...}, or vLLM's {"object": "error", "message": ...}.
    const said = upstreamErrorMessage(o);
    if (said !== null) {
      this.error = o['error'] ?? { message: said, type: o['type'] ?? 'error', code: o['code'] ?? null };
      return;
    }
    this.eventBytes = data.length;
    if (this.provider === 'ollama') {
      if (o['done'] !== true && ollamaHasToken(o as unknown as OllamaChatResponse)) this.tokenEvents++;
      this.merge(this.top, o);
      if (o['done'] === true) this.done = true;
      return;
    }
    if (openaiChunkHasToken(o as unknown as OpenAIChunk)) this.tokenEvents++;
    const { choices, ...rest } = o;
    this.merge(this.top, rest);
    if (Array.isArray(choices)) for (const c of choices) if (c !== null && typeof c === 'object') this.mergeChoice(c as Json);
  }

  /** The fast path: a plain text event appended to what an earlier event began; false to merge it in full. */
  private text(data: string): boolean {
    let m: RegExpExecArray | null;
    let into: Json | undefined;
    let key: string;
    if (this.provider === 'openai') {
      if (this.kind !== 'chat' || (m = OPENAI_TEXT.exec(data)) === null || OPENAI_MORE.test(data)) return false;
      into = this.choices.get(0)?.['delta'] as Json | undefined;
      key = 'content';
    } else if (this.kind === 'chat') {
      if ((m = OLLAMA_CHAT_TEXT.exec(data)) === null) return false;
      into = this.top['message'] as Json | undefined;
      key = 'content';
    } else {
      if ((m = OLLAMA_GENERATE_TEXT.exec(data)) === null) return false;
      into = this.top;
      key = 'response';
    }
    if (into === undefined || into === null || typeof into !== 'object') return false;
    const piece = stringValue(m[1]!);
    const cur = into[key];
    if (typeof cur === 'string') this.append(into, key, cur, piece);
    else into[key] = piece;
    this.size += piece.length;
    if (piece !== '') this.tokenEvents++;
    return true;
  }

  private responsesEvent(o: Json): void {
    const type = o['type'];
    if (type === 'error') {
      this.error = { message: o['message'], type: o['code'] ?? 'error', code: o['code'] ?? null };
      return;
    }
    // The final event carries the whole Response; a failed one is the upstream's error.
    if (type === 'response.completed' || type === 'response.incomplete' || type === 'response.failed') {
      const r = o['response'];
      if (r !== null && typeof r === 'object') {
        this.response = r as Json;
        this.size += JSON.stringify(r).length;
      }
      this.done = true;
    }
  }

  /**
   * `into[key] = cur + piece`. V8 keeps a string grown piece by piece as a rope, one node of
   * about 32 bytes per piece: a reply of one-character tokens would hold 30 times its text,
   * far past UPSTREAM_MAX_BODY_BYTES, which counts the text. So once a text's pieces since it
   * was last copied pass a 32nd of its length, the next piece is joined to it by
   * Array.prototype.join, which writes one flat string (a search through the rope flattens
   * it only while it is young). Its nodes stay about the size of its text, and the copies,
   * each a 32nd longer than the last, add up to about 33 times the text: linear.
   */
  private append(into: Json, key: string, cur: string, piece: string): void {
    let texts = this.ropes.get(into);
    if (texts === undefined) this.ropes.set(into, (texts = new Map()));
    const pieces = (texts.get(key) ?? 0) + 1;
    if (pieces >= 64 && pieces * 32 > cur.length) {
      into[key] = [cur, piece].join('');
      texts.set(key, 0);
    } else {
      into[key] = cur + piece;
      texts.set(key, pieces);
    }
  }

  private mergeChoice(c: Json): void {
    const i = typeof c['index'] === 'number' ? c['index'] : 0;
    let into = this.choices.get(i);
    if (into === undefined) this.choices.set(i, (into = { index: i }));
    this.merge(into, c);
  }

  private merge(into: Json, from: Json): void {
    for (const k in from) {
      if (STREAM_ONLY.has(k)) continue;
      const v = from[k];
      const cur = into[k];
      if (v === null || v === undefined || v === '') {
        if (!(k in into)) into[k] = v;
      } else if (typeof v === 'string') {
        // Replaced strings are bounded by their event; only what grows is counted.
        if (TEXT.has(k) && typeof cur === 'string') {
          this.append(into, k, cur, v);
          this.size += v.length;
        } else into[k] = v;
      } else if (Array.isArray(v)) {
        if (k === 'tool_calls' && this.provider === 'openai') this.mergeToolCalls(into, v);
        else into[k] = Array.isArray(cur) ? cur.concat(v) : v.slice();
        this.size += this.eventBytes;
        this.eventBytes = 0;
      } else if (typeof v === 'object') {
        const sub = cur !== null && typeof cur === 'object' && !Array.isArray(cur) ? (cur as Json) : {};
        into[k] = sub;
        this.merge(sub, v as Json);
      } else into[k] = v;
    }
  }

  /**
   * OpenAI's streamed tool calls: the first delta of a call names it, the rest add to its
   * arguments; a name split in pieces is joined as the stream chain joins it (appendToolName).
   */
  private mergeToolCalls(into: Json, deltas: unknown[]): void {
    const list = Array.isArray(into['tool_calls']) ? (into['tool_calls'] as Json[]) : (into['tool_calls'] = []);
    for (const d of deltas) {
      if (d === null || typeof d !== 'object') continue;
      const { function: fn, ...delta } = d as Json;
      const id = typeof delta['id'] === 'string' && delta['id'] !== '' ? delta['id'] : undefined;
      let call: Json | undefined;
      if (typeof delta['index'] === 'number') call = list.find((t) => t['index'] === delta['index']);
      // No index (some servers send each call whole): the call of that id, else the last one when no id.
      else call = id !== undefined ? list.find((t) => t['id'] === id) : list[list.length - 1];
      if (call === undefined) list.push((call = { index: typeof delta['index'] === 'number' ? delta['index'] : list.length }));
      this.merge(call, delta);
      if (fn !== null && typeof fn === 'object') {
        const f = (call['function'] ??= { name: '', arguments: '' }) as Json;
        const { name, arguments: args, ...more } = fn as Json;
        const sofar = typeof f['arguments'] === 'string' ? f['arguments'] : '';
        f['name'] = appendToolName(typeof f['name'] === 'string' ? f['name'] : '', name, sofar);
        if (typeof args === 'string') {
          this.append(f, 'arguments', sofar, args);
          this.size += args.length;
        }
        this.merge(f, more);
      }
    }
  }

  private chatCompletion(choices: Json[]): Json {
    const out: Json = { ...this.top, object: 'chat.completion' };
    out['choices'] = choices.map((c) => {
      const { delta, ...rest } = c;
      // OpenAI's whole message names refusal and annotations even when empty.
      const message: Json = { role: 'assistant', content: null, refusal: null, annotations: [], ...(delta !== null && typeof delta === 'object' ? (delta as Json) : {}) };
      if (message['content'] === '' && Array.isArray(message['tool_calls'])) message['content'] = null;
      // A whole reply's tool calls carry no index; a call without arguments says `{}`, as OpenAI's do.
      if (Array.isArray(message['tool_calls'])) {
        message['tool_calls'] = (message['tool_calls'] as Json[]).map(({ index: _index, ...t }) => {
          const f = t['function'] as Json | undefined;
          return { type: 'function', ...t, ...(f !== undefined && f['arguments'] === '' ? { function: { ...f, arguments: '{}' } } : {}) };
        });
      }
      return { index: rest['index'], message, logprobs: rest['logprobs'] ?? null, finish_reason: rest['finish_reason'] ?? null, ...rest };
    });
    return out;
  }

  private textCompletion(choices: Json[]): Json {
    return { ...this.top, object: 'text_completion', choices: choices.map((c) => ({ text: '', logprobs: null, finish_reason: null, ...c })) };
  }
}

/**
 * The upstream body for an assembled reply: the same request, streamed, and for an
 * OpenAI-compatible chat or completion, with the usage chunk asked for.
 */
export function streamedBody(out: Json, provider: Api, kind: Kind): Json {
  if (provider === 'ollama' || kind === 'responses') return { ...out, stream: true };
  return withUsage({ ...out, stream: true });
}

/**
 * Whether a request can be asked as a stream and assembled: not OpenAI audio output (its
 * stream is pcm16 only, in pieces a whole reply does not join) nor a completion's `best_of`
 * (refused streamed).
 */
export function assemblable(out: Json): boolean {
  const modalities = out['modalities'];
  if (out['audio'] !== undefined || (Array.isArray(modalities) && modalities.includes('audio'))) return false;
  return !(typeof out['best_of'] === 'number' && out['best_of'] > 1);
}
