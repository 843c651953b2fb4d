// A cached reply written in the API and mode of the request it answers: a stream
// keeps the stored chunking (one event per stored chunk) but not the upstream's
// timing, since every event is written at once; a whole reply joins the chunks.
// Usage reports the stored counts; OpenAI's also says the prompt was cached
// (prompt_tokens_details.cached_tokens), as OpenAI does for its own prompt cache.
// The Responses and Messages APIs are written by the live reply's own writers, fed
// the stored chunks as deltas: the same events in the same order as a live reply;
// their usage says the prompt was cached in each API's words (cached_tokens,
// cache_read_input_tokens).
import type { ClientApi, Kind } from '../translate/index.ts';
import type { Delta } from '../translate/deltas.ts';
import { response, responsesDelta, responsesDone, responsesWriter } from '../translate/responses_to_chat.ts';
import { anthropicDelta, anthropicDone, anthropicWriter, message } from '../translate/anthropic_to_chat.ts';
import type { CachedReply } from './entry.ts';

export interface ReplayContext {
  /** The model name the client asked for. */
  readonly model: string;
  /** The reply's id (LlmRequest.replyId): completion ids are `chatcmpl-<id>` / `cmpl-<id>` (`resp_`, `msg_` for Responses, Messages), as on a live reply. */
  readonly id: string;
  /** The OpenAI client asked for the usage chunk (stream_options.include_usage). */
  readonly includeUsage: boolean;
  /** Epoch ms. */
  readonly now: number;
  /** How long the broker took to answer, ms: an Ollama reply's durations (clients divide by them). */
  readonly elapsedMs?: number;
  /** The client's body: a Response echoes some of its fields. */
  readonly request?: Readonly<Record<string, unknown>>;
}

export interface Replay {
  readonly contentType: string;
  readonly body: string;
}

function openaiUsage(e: CachedReply): Record<string, unknown> {
  return { prompt_tokens: e.promptTokens, completion_tokens: e.completionTokens, total_tokens: e.promptTokens + e.completionTokens, prompt_tokens_details: { cached_tokens: e.promptTokens } };
}

/** A Responses or Messages reply, by the writers a live reply goes through (translate/). */
function replayEvents(api: 'responses' | 'anthropic', stream: boolean, e: CachedReply, ctx: ReplayContext): Replay {
  const usage = { promptTokens: e.promptTokens, completionTokens: e.completionTokens, cachedTokens: e.promptTokens };
  const rc = { model: ctx.model, id: ctx.id, ...(ctx.request !== undefined ? { request: ctx.request } : {}) };
  if (!stream) {
    const whole = { text: e.chunks.join(''), thinking: '', tools: [], finish: e.finish, usage };
    return { contentType: 'application/json', body: JSON.stringify(api === 'responses' ? response(whole, rc) : message(whole, rc)) };
  }
  const piece = (text: string): Delta => ({ text, thinking: '', tools: null, finish: null, usage: null });
  let out = '';
  if (api === 'responses') {
    const w = responsesWriter(rc);
    for (const c of e.chunks) out += responsesDelta(w, piece(c));
    out += responsesDelta(w, { ...piece(''), finish: e.finish, usage }) + responsesDone(w);
  } else {
    const w = anthropicWriter(rc, usage);
    for (const c of e.chunks) out += anthropicDelta(w, piece(c));
    out += anthropicDelta(w, { ...piece(''), finish: e.finish, usage }) + anthropicDone(w);
  }
  return { contentType: 'text/event-stream', body: out };
}

// Each stored chunk as a JSON string literal, made once per entry: a hit replays the same
// entry many times, and escaping its chunks was most of a replay's cost.
const quoted = new WeakMap<CachedReply, readonly string[]>();
function quotedChunks(e: CachedReply): readonly string[] {
  let q = quoted.get(e);
  if (q === undefined) quoted.set(e, (q = e.chunks.map((c) => JSON.stringify(c))));
  return q;
}

export function replay(api: ClientApi, kind: Kind, stream: boolean, e: CachedReply, ctx: ReplayContext): Replay {
  if (api === 'responses' || api === 'anthropic') return replayEvents(api, stream, e, ctx);
  const text = e.chunks.join('');
  const created = Math.floor(ctx.now / 1000);
  if (api === 'openai') {
    const chat = kind === 'chat';
    const id = (chat ? 'chatcmpl-' : 'cmpl-') + ctx.id;
    if (!stream) {
      const choice = chat
        ? { index: 0, message: { role: 'assistant', content: text }, logprobs: null, finish_reason: e.finish }
        : { index: 0, text, logprobs: null, finish_reason: e.finish };
      return { contentType: 'application/json', body: JSON.stringify({ id, object: chat ? 'chat.completion' : 'text_completion', created, model: ctx.model, choices: [choice], usage: openaiUsage(e) }) };
    }
    const object = chat ? 'chat.completion.chunk' : 'text_completion';
    const head = 'data: {"id":' + JSON.stringify(id) + ',"object":"' + object + '","created":' + created + ',"model":' + JSON.stringify(ctx.model) + ',"choices":';
    let out = '';
    if (chat) out += head + '[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}\n\n';
    for (const c of quotedChunks(e)) {
      out += head + (chat ? '[{"index":0,"delta":{"content":' + c + '},"logprobs":null,"finish_reason":null}]}\n\n' : '[{"index":0,"text":' + c + ',"logprobs":null,"finish_reason":null}]}\n\n');
    }
    out += head + (chat ? '[{"index":0,"delta":{},"logprobs":null,"finish_reason":' : '[{"index":0,"text":"","logprobs":null,"finish_reason":') + JSON.stringify(e.finish) + '}]}\n\n';
    if (ctx.includeUsage) out += head + '[],"usage":' + JSON.stringify(openaiUsage(e)) + '}\n\n';
    return { contentType: 'text/event-stream', body: out + 'data: [DONE]\n\n' };
  }
  const at = new Date(ctx.now).toISOString();
  const head = '{"model":' + JSON.stringify(ctx.model) + ',"created_at":"' + at + '",';
  const piece = (q: string): string => (kind === 'chat' ? '"message":{"role":"assistant","content":' + q + '},' : '"response":' + q + ',');
  const doneReason = e.finish === 'length' ? 'length' : 'stop';
  // The time the hit took, at least 2 ns: nothing was evaluated (1 ns), the rest is eval.
  // Ollama clients compute tokens/s as eval_count / eval_duration: never 0.
  const total = Math.max(2, Math.round((ctx.elapsedMs ?? 0) * 1e6));
  const tail = '"done_reason":"' + doneReason + '","done":true,"total_duration":' + total + ',"load_duration":0,"prompt_eval_count":' + e.promptTokens + ',"prompt_eval_duration":1,"eval_count":' + e.completionTokens + ',"eval_duration":' + (total - 1) + (e.context !== undefined ? ',"context":' + JSON.stringify(e.context) : '') + '}';
  if (!stream) return { contentType: 'application/json', body: head + piece(JSON.stringify(text)) + tail };
  let out = '';
  for (const q of quotedChunks(e)) out += head + piece(q) + '"done":false}\n';
  return { contentType: 'application/x-ndjson', body: out + head + piece('""') + tail + '\n' };
}
