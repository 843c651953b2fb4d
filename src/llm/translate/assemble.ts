// A non-streamed request asked of its upstream as a stream (`upstreamStreaming: always`,
// docs/llm.md#timeouts): the upstream's stream, read as it comes, assembled back into
// the whole reply the same upstream would have sent unstreamed. translateResponse then
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
import type { Api, Kind } from './types.ts';

type Json = Record<string, unknown>;

/** Fields whose pieces make one text. */
const TEXT = new Set(['content', 'refusal', 'reasoning_content', 'reasoning', 'text', 'arguments', 'response', 'thinking']);
/** Stream-only fields a whole reply does not have. */
const STREAM_ONLY = new Set(['obfuscation']);

export const CUT_MESSAGE = 'upstream closed the stream before the reply was complete';

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
  /** Characters of text and array events merged so far: the bound on what an upstream can make us hold. */
  private size = 0;

  /** OpenAI events that carried text or a tool call's piece: the completion's tokens when the upstream reports no usage, as the stream chain counts them. */
  private tokenEvents = 0;

  /** `promptEstimate`: the prompt's tokens as admission estimated them, for an upstream that reports no usage. */
  constructor(private readonly provider: Api, private readonly kind: Kind, private readonly maxBytes: number, private readonly promptEstimate = 0) {
    this.parser =
      provider === 'ollama'
        ? new NdjsonParser((l) => {
            if (l.text.trim() !== '') this.event(l.text);
          })
        : new SseParser((ev) => {
            if (ev.data !== null) this.event(ev.data);
          });
  }

  push(chunk: Uint8Array): void {
    if (this.done || this.error !== undefined) return;
    this.parser.push(chunk);
    if (this.size > this.maxBytes) throw new BrokerError('upstream_error', `upstream reply is larger than UPSTREAM_MAX_BODY_BYTES (${this.maxBytes} bytes)`);
  }

  /** True once the upstream said its reply is complete (or failed): the rest is not needed. */
  get finished(): boolean {
    return this.done || this.error !== undefined;
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
    if (!this.done && (choices.length === 0 || choices.some((c) => c['finish_reason'] === undefined || c['finish_reason'] === null))) throw new BrokerError('upstream_error', CUT_MESSAGE);
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
    let j: unknown;
    try {
      j = JSON.parse(data);
    } catch {
      return; // Not JSON: dropped, as the stream chain drops it.
    }
    if (j === null || typeof j !== 'object' || Array.isArray(j)) return;
    const o = j as Json;
    if (this.kind === 'responses') return this.responsesEvent(o);
    if (o['error'] !== undefined && o['error'] !== null) {
      this.error = o['error'];
      return;
    }
    if (this.provider === 'ollama') {
      this.merge(this.top, o);
      if (o['done'] === true) this.done = true;
      return;
    }
    const { choices, ...rest } = o;
    this.merge(this.top, rest);
    if (Array.isArray(choices)) for (const c of choices) if (c !== null && typeof c === 'object') this.mergeChoice(c as Json);
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

  private mergeChoice(c: Json): void {
    const d = (c['delta'] ?? null) as Json | null;
    if ((typeof c['text'] === 'string' && c['text'] !== '') || (d !== null && ((typeof d['content'] === 'string' && d['content'] !== '') || Array.isArray(d['tool_calls']) || (typeof d['reasoning_content'] === 'string' && d['reasoning_content'] !== '')))) this.tokenEvents++;
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
        if (TEXT.has(k) && typeof cur === 'string') into[k] = cur + v;
        else into[k] = v;
        this.size += v.length;
      } else if (Array.isArray(v)) {
        if (k === 'tool_calls' && this.provider === 'openai') this.mergeToolCalls(into, v);
        else into[k] = Array.isArray(cur) ? cur.concat(v) : v.slice();
        this.size += v.length * 16;
      } else if (typeof v === 'object') {
        const sub = cur !== null && typeof cur === 'object' && !Array.isArray(cur) ? (cur as Json) : {};
        into[k] = sub;
        this.merge(sub, v as Json);
      } else into[k] = v;
    }
  }

  /** OpenAI's streamed tool calls: the first delta of a call names it, the rest add to its arguments. */
  private mergeToolCalls(into: Json, deltas: unknown[]): void {
    const list = Array.isArray(into['tool_calls']) ? (into['tool_calls'] as Json[]) : (into['tool_calls'] = []);
    for (const d of deltas) {
      if (d === null || typeof d !== 'object') continue;
      const delta = d as Json;
      let call: Json | undefined;
      if (typeof delta['index'] === 'number') call = list.find((t) => t['index'] === delta['index']);
      // No index (some servers send each call whole): a new call unless it only adds arguments.
      else if (delta['id'] === undefined && list.length > 0) call = list[list.length - 1];
      if (call === undefined) list.push((call = { index: typeof delta['index'] === 'number' ? delta['index'] : list.length }));
      this.merge(call, delta);
    }
  }

  private chatCompletion(choices: Json[]): Json {
    const out: Json = { ...this.top, object: 'chat.completion' };
    out['choices'] = choices.map((c) => {
      const { delta, ...rest } = c;
      // OpenAI's whole message names refusal and annotations even when empty.
      const message: Json = { role: 'assistant', content: null, refusal: null, annotations: [], ...(delta !== null && typeof delta === 'object' ? (delta as Json) : {}) };
      if (message['content'] === '' && Array.isArray(message['tool_calls'])) message['content'] = null;
      // A whole reply's tool calls carry no index.
      if (Array.isArray(message['tool_calls'])) message['tool_calls'] = (message['tool_calls'] as Json[]).map(({ index: _index, ...t }) => ({ type: 'function', ...t }));
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
  const so = out['stream_options'];
  const base = so !== null && typeof so === 'object' ? (so as Json) : {};
  return { ...out, stream: true, stream_options: { ...base, include_usage: true } };
}
