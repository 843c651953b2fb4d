// An Ollama client served by an OpenAI-compatible provider.
//   request:  /api/chat body → /v1/chat/completions body; /api/generate body → /v1/chat/completions
//             body (Ollama applies the model's chat template to a prompt, as chat does; OpenAI's
//             own models answer only there), or → /v1/completions body with `raw` or `suffix`
//   response: chat.completion → /api/chat or /api/generate reply, text_completion → /api/generate reply
//   stream:   chat.completion.chunk / text_completion SSE events → /api/chat and /api/generate NDJSON lines

import { BrokerError } from '../../errors.ts';
import {
  appendToolName,
  argumentsJsonFromOllama,
  choiceZero,
  doneReasonFromOpenAI,
  imageUrlFromBase64,
  isoFromUnix,
  ollamaDurations,
  openaiSamplingFromOllama,
  requireArray,
  requireObject,
  usageFromOpenAI,
} from './common.ts';
import { openaiToolState, toolIndex, type OpenAIToolState } from './deltas.ts';
import type {
  OllamaChatResponse,
  OllamaGenerateResponse,
  OllamaMessage,
  OllamaToolCall,
  OpenAIChatCompletion,
  OpenAIChatRequest,
  OpenAIChunk,
  OpenAICompletion,
  OpenAICompletionRequest,
  OpenAIContentPart,
  OpenAIMessage,
  OpenAIToolCall,
  ReplyContext,
  Usage,
} from './types.ts';

// ---- request ----

function responseFormat(format: unknown): OpenAIChatRequest['response_format'] | undefined {
  if (format === 'json') return { type: 'json_object' };
  if (format !== null && typeof format === 'object') return { type: 'json_schema', json_schema: { name: 'response', schema: format } };
  return undefined;
}

interface PendingCall {
  name: string;
  id: string;
}

function openaiMessage(m: unknown, index: number, pending: PendingCall[]): OpenAIMessage {
  if (m === null || typeof m !== 'object') throw new BrokerError('invalid_request', 'messages[] must be objects');
  const msg = m as OllamaMessage;
  const role = String(msg.role);
  const content = typeof msg.content === 'string' ? msg.content : '';
  const out: OpenAIMessage = { role, content };
  // A tool result's images (a screenshot tool's) follow in a user message (chatRequest):
  // OpenAI's chat takes images in user messages only.
  if (Array.isArray(msg.images) && msg.images.length > 0 && role !== 'tool') {
    const parts: OpenAIContentPart[] = [];
    if (content !== '') parts.push({ type: 'text', text: content });
    for (const img of msg.images) parts.push({ type: 'image_url', image_url: { url: imageUrlFromBase64(String(img)) } });
    out.content = parts;
  }
  if (Array.isArray(msg.tool_calls) && msg.tool_calls.length > 0) {
    out.tool_calls = msg.tool_calls.map((tc: OllamaToolCall, i): OpenAIToolCall => {
      const name = String(tc.function?.name ?? '');
      const id = typeof tc.id === 'string' && tc.id !== '' ? tc.id : `call_${index}_${i}`;
      pending.push({ name, id });
      return { id, type: 'function', function: { name, arguments: argumentsJsonFromOllama(tc.function?.arguments) } };
    });
    if (content === '') out.content = null;
  }
  if (role === 'tool') {
    // OpenAI pairs a tool result with its call by id; Ollama by tool name, and since 0.12.10 by
    // `tool_call_id` too: that wins (two calls of one tool answered in another order were swapped).
    const name = typeof msg.tool_name === 'string' ? msg.tool_name : undefined;
    const callId = typeof msg.tool_call_id === 'string' ? msg.tool_call_id : undefined;
    const byId = callId === undefined ? -1 : pending.findIndex((p) => p.id === callId);
    const at = byId >= 0 ? byId : pending.findIndex((p) => name === undefined || p.name === name);
    if (at === -1) throw new BrokerError('invalid_request', 'a tool message has no matching tool call before it');
    out.tool_call_id = pending[at]!.id;
    pending.splice(at, 1);
  }
  return out;
}

/**
 * The messages, each translated, with the images of tool results in a user message after
 * the run of tool messages they came in: tool messages must follow their calls unbroken
 * (OpenAI refuses a user message between two), as Messages' tool_result and Responses' outputs do.
 */
function withToolImages(messages: unknown[], one: (m: unknown, i: number) => OpenAIMessage): OpenAIMessage[] {
  const out: OpenAIMessage[] = [];
  let images: OpenAIContentPart[] = [];
  messages.forEach((m, i) => {
    const o = one(m, i);
    if (o.role !== 'tool' && images.length > 0) {
      out.push({ role: 'user', content: images });
      images = [];
    }
    out.push(o);
    const imgs = o.role === 'tool' ? (m as OllamaMessage).images : undefined;
    if (Array.isArray(imgs)) for (const img of imgs) images.push({ type: 'image_url', image_url: { url: imageUrlFromBase64(String(img)) } });
  });
  if (images.length > 0) out.push({ role: 'user', content: images });
  return out;
}

/** /api/chat body → /v1/chat/completions body for `upstreamModel`. Streaming asks for usage. */
export function chatRequest(body: unknown, upstreamModel: string): OpenAIChatRequest {
  const b = requireObject(body);
  const messages = requireArray(b, 'messages');
  rejectLogprobs(b);
  const stream = b['stream'] !== false;
  const pending: PendingCall[] = [];
  const out: OpenAIChatRequest = {
    model: upstreamModel,
    messages: withToolImages(messages, (m, i) => openaiMessage(m, i, pending)),
    stream,
    ...openaiSamplingFromOllama(b['options']),
  };
  if (stream) out.stream_options = { include_usage: true };
  const effort = reasoningEffortOf(b['think']);
  if (effort !== undefined) out.reasoning_effort = effort;
  const rf = responseFormat(b['format']);
  if (rf !== undefined) out.response_format = rf;
  // Ollama lets a tool leave out `type`; OpenAI requires it ("Missing required parameter: 'tools[0].type'").
  if (Array.isArray(b['tools']) && b['tools'].length > 0) {
    out.tools = b['tools'].map((t: unknown) => (t !== null && typeof t === 'object' && (t as Record<string, unknown>)['type'] == null ? { ...(t as Record<string, unknown>), type: 'function' } : t)) as OpenAIChatRequest['tools'];
  }
  return out;
}

/**
 * Whether an /api/generate body goes to /v1/completions: `raw` (no template: the prompt is
 * the model's input as it is) or `suffix` (fill-in-the-middle) have no chat equivalent.
 */
export function generateWantsCompletions(body: unknown): boolean {
  if (body === null || typeof body !== 'object') return false;
  const b = body as Record<string, unknown>;
  return b['raw'] === true || (typeof b['suffix'] === 'string' && b['suffix'] !== '');
}

/**
 * Log probabilities (Ollama 0.12.11 and later): the broker does not carry an OpenAI-compatible
 * server's into Ollama's reply, which came without them (200). Refused, so that a mixed group
 * sends the request to an Ollama deployment, as an OpenAI client's goes the other way.
 */
function rejectLogprobs(b: Record<string, unknown>): void {
  const asked = b['logprobs'] === true ? 'logprobs' : typeof b['top_logprobs'] === 'number' && b['top_logprobs'] > 0 ? 'top_logprobs' : undefined;
  if (asked !== undefined) throw new BrokerError('invalid_request', `${asked} is not supported by this model (an OpenAI-compatible server: the broker does not translate its log probabilities into Ollama's)`, { details: { field: asked } });
}

/**
 * What an /api/generate body can ask of Ollama alone: its tokens of the conversation so far
 * (`context`), and its prompt template. A chat server has neither: the reply would come
 * without the conversation, or in another format.
 */
function rejectOllamaOnly(b: Record<string, unknown>, template: boolean): void {
  rejectLogprobs(b);
  if (Array.isArray(b['context']) && b['context'].length > 0) throw new BrokerError('invalid_request', 'context is not supported by this model (an OpenAI-compatible server: send the conversation to /api/chat as messages)', { details: { field: 'context' } });
  if (template && typeof b['template'] === 'string' && b['template'] !== '') throw new BrokerError('invalid_request', 'template is not supported by this model (an OpenAI-compatible server applies its own)', { details: { field: 'template' } });
}

/** /api/generate body → /v1/chat/completions body: `system` and `prompt` (with its images) as two messages. */
export function generateChatRequest(body: unknown, upstreamModel: string): OpenAIChatRequest {
  const b = requireObject(body);
  const prompt = b['prompt'] ?? '';
  if (typeof prompt !== 'string') throw new BrokerError('invalid_request', 'prompt must be a string', { details: { field: 'prompt' } });
  rejectOllamaOnly(b, true);
  const messages: OllamaMessage[] = [];
  if (typeof b['system'] === 'string' && b['system'] !== '') messages.push({ role: 'system', content: b['system'] });
  messages.push({ role: 'user', content: prompt, ...(Array.isArray(b['images']) ? { images: b['images'] as string[] } : {}) });
  return chatRequest({ stream: b['stream'], options: b['options'], format: b['format'], think: b['think'], messages }, upstreamModel);
}

/**
 * Ollama's `think`: true or false (false also leaves the reply's reasoning out: wantsThinking),
 * or a level for models that take one (gpt-oss's "low", "medium", "high"; newer Ollamas take
 * others): OpenAI's reasoning_effort, whose upstream says which levels it knows.
 */
function reasoningEffortOf(think: unknown): string | undefined {
  if (think === undefined || think === null || typeof think === 'boolean') return undefined;
  if (typeof think === 'string' && think !== '') return think;
  throw new BrokerError('invalid_request', 'think must be true, false or a level ("low", "medium", "high")', { details: { field: 'think' } });
}

/**
 * /api/generate body → /v1/completions body for `upstreamModel` (a `raw` or `suffix` request).
 * `system` is dropped, as Ollama drops it there: a raw prompt is already templated, and a
 * fill-in-the-middle template has no place for it (before the prompt it would be code).
 */
export function completionRequest(body: unknown, upstreamModel: string): OpenAICompletionRequest {
  const b = requireObject(body);
  const prompt = b['prompt'] ?? '';
  if (typeof prompt !== 'string') throw new BrokerError('invalid_request', 'prompt must be a string', { details: { field: 'prompt' } });
  // A raw prompt is templated already, and Ollama ignores `template` with it.
  rejectOllamaOnly(b, false);
  if (Array.isArray(b['images']) && b['images'].length > 0) {
    throw new BrokerError('invalid_request', 'images are not supported by this model on /api/generate; use /api/chat');
  }
  const stream = b['stream'] !== false;
  const out: OpenAICompletionRequest = { model: upstreamModel, prompt, stream, ...openaiSamplingFromOllama(b['options']) };
  if (typeof b['suffix'] === 'string' && b['suffix'] !== '') out.suffix = b['suffix'];
  // Not in OpenAI's own /v1/completions, but the servers an Ollama client reaches through it (vLLM,
  // llama.cpp) take it there too: dropped, the client's JSON would silently not be asked for.
  const rf = responseFormat(b['format']);
  if (rf !== undefined) out['response_format'] = rf;
  if (stream) out.stream_options = { include_usage: true };
  return out;
}

// ---- non-streaming response ----

function textOf(content: OpenAIMessage['content']): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content.map((p) => (p.type === 'text' && typeof p['text'] === 'string' ? p['text'] : '')).join('');
  }
  return '';
}

function toolArguments(args: string | undefined): Record<string, unknown> {
  if (args === undefined || args === '') return {};
  try {
    const v: unknown = JSON.parse(args);
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // a model can emit broken JSON; keep the text rather than lose it
  }
  return { arguments: args };
}

function ollamaToolCalls(calls: OpenAIToolCall[] | undefined): OllamaToolCall[] | undefined {
  if (!Array.isArray(calls) || calls.length === 0) return undefined;
  // The upstream's call id, as Ollama 0.12.10+ gives one (its clients send it back as tool_call_id).
  return calls.map((tc) => ({ ...(typeof tc.id === 'string' && tc.id !== '' ? { id: tc.id } : {}), function: { name: tc.function?.name ?? '', arguments: toolArguments(tc.function?.arguments) } }));
}

/** The done object's counters and durations, in Ollama's order. */
function counters(u: Usage | null, ctx: ReplyContext): Record<string, number> {
  const d = ollamaDurations(ctx.elapsedMs ?? 0, null);
  return { total_duration: d.total_duration, load_duration: 0, prompt_eval_count: u?.promptTokens ?? 0, prompt_eval_duration: d.prompt_eval_duration, eval_count: u?.completionTokens ?? 0, eval_duration: d.eval_duration };
}

/** chat.completion → /api/chat reply. */
export function chatResponse(res: OpenAIChatCompletion, ctx: ReplyContext): OllamaChatResponse {
  const choice = choiceZero(res.choices);
  const m = choice?.message;
  // A refusal (OpenAI's structured outputs) is the model's answer: as text, Ollama has no field for it.
  const refusal = (m as { refusal?: unknown } | undefined)?.refusal;
  const message: OllamaMessage = { role: 'assistant', content: textOf(m?.content) + (typeof refusal === 'string' ? refusal : '') };
  const thinking = m?.reasoning_content ?? m?.reasoning;
  if (typeof thinking === 'string' && thinking !== '' && wantsThinking(ctx)) message.thinking = thinking;
  const tools = ollamaToolCalls(m?.tool_calls);
  if (tools !== undefined) message.tool_calls = tools;
  return {
    model: ctx.model,
    created_at: isoFromUnix(res.created),
    message,
    done_reason: doneReasonFromOpenAI(choice?.finish_reason ?? null),
    done: true,
    ...counters(usageFromOpenAI(res.usage), ctx),
  };
}

/** chat.completion → /api/generate reply (a generate served by chat). */
export function generateFromChat(res: OpenAIChatCompletion, ctx: ReplyContext): OllamaGenerateResponse {
  const { message, model, created_at, done_reason, ...done } = chatResponse(res, ctx);
  const thinking = message?.thinking;
  return { model, created_at, response: message?.content ?? '', ...(thinking !== undefined ? { thinking } : {}), ...done, done: true, done_reason };
}

/** text_completion → /api/generate reply. */
export function completionResponse(res: OpenAICompletion, ctx: ReplyContext): OllamaGenerateResponse {
  const choice = choiceZero(res.choices);
  return {
    model: ctx.model,
    created_at: isoFromUnix(res.created),
    response: typeof choice?.text === 'string' ? choice.text : '',
    done: true,
    done_reason: doneReasonFromOpenAI(choice?.finish_reason ?? null),
    ...counters(usageFromOpenAI(res.usage), ctx),
  };
}

// ---- streaming ----
//
// OpenAI streams tool-call arguments in fragments; Ollama sends whole calls, so
// fragments are gathered and written as one line when the stream finishes.
// finish_reason and usage arrive in separate chunks before [DONE], so the done
// line is written at [DONE] (or at a clean end without it).

export interface NdjsonWriter {
  readonly model: string;
  /** `{"model":...,"created_at":...,` built from the first chunk; '' until then. */
  head: string;
  finish: string | null;
  usage: Usage | null;
  /** Token events written: eval_count when the upstream sends no usage. */
  tokens: number;
  /** The prompt's estimated tokens: prompt_eval_count when the upstream sends no usage. */
  readonly promptEstimate: number;
  tools: Array<{ id: string; name: string; args: string }>;
  /** Tool calls sent without index: which call a delta continues. */
  readonly toolIndexes: OpenAIToolState;
  done: boolean;
  /** The clock, when the stream opened, and when its first token came (-1: not yet): the done line's durations. */
  readonly now: () => number;
  readonly openAt: number;
  firstAt: number;
  /** The client said `think: false`: an upstream's reasoning is not passed on (Ollama sends none then). */
  readonly thinking: boolean;
}

const STILL = (): number => 0;

/** Ollama's `think: false`: no thinking in the reply, whatever an OpenAI-compatible upstream reasons. */
function wantsThinking(ctx: ReplyContext): boolean {
  return ctx.request?.['think'] !== false;
}

export function ndjsonWriter(ctx: ReplyContext): NdjsonWriter {
  const now = ctx.durationClock ?? STILL;
  return { model: ctx.model, head: '', finish: null, usage: null, tokens: 0, promptEstimate: ctx.promptEstimate ?? 0, tools: [], toolIndexes: openaiToolState(), done: false, now, openAt: now(), firstAt: -1, thinking: wantsThinking(ctx) };
}

/** A token (text, reasoning or a tool call) went by: the first one ends the prompt's evaluation. */
function token(w: NdjsonWriter): void {
  w.tokens++;
  if (w.firstAt < 0) w.firstAt = w.now();
}

function start(w: NdjsonWriter, created: unknown): void {
  w.head = '{"model":' + JSON.stringify(w.model) + ',"created_at":"' + isoFromUnix(created) + '",';
}

function record(w: NdjsonWriter, chunk: OpenAIChunk): OpenAIChunk['choices'][number] | undefined {
  if (w.head === '') start(w, chunk.created);
  const u = usageFromOpenAI(chunk.usage);
  if (u !== null) w.usage = u;
  // Ollama has no `n`: choice 0 is the reply.
  const c = choiceZero(chunk.choices);
  if (c === undefined) return undefined;
  if (typeof c.finish_reason === 'string') w.finish = c.finish_reason;
  return c;
}

/** One chat.completion.chunk → its /api/chat lines ('' for none). */
export function chatChunk(w: NdjsonWriter, chunk: OpenAIChunk): string {
  const c = record(w, chunk);
  const d = c?.delta;
  if (d === undefined || d === null) return '';
  if (Array.isArray(d.tool_calls)) {
    if (w.firstAt < 0) w.firstAt = w.now();
    for (let n = 0; n < d.tool_calls.length; n++) {
      const tc = d.tool_calls[n]!;
      const slot = (w.tools[toolIndex(w.toolIndexes, tc, n)] ??= { id: '', name: '', args: '' });
      if (typeof tc.id === 'string') slot.id = tc.id;
      slot.name = appendToolName(slot.name, tc.function?.name, slot.args);
      if (typeof tc.function?.arguments === 'string') slot.args += tc.function.arguments;
    }
  }
  const content = (typeof d.content === 'string' ? d.content : '') + (typeof d.refusal === 'string' ? d.refusal : '');
  const r = d.reasoning_content ?? d.reasoning;
  const thinking = typeof r === 'string' && w.thinking ? r : '';
  // Reasoning dropped (think: false) was still generated: counted, as the broker charges it.
  if (content === '' && thinking === '') {
    if (typeof r === 'string' && r !== '') token(w);
    return '';
  }
  token(w);
  return (
    w.head +
    '"message":{"role":"assistant","content":' +
    JSON.stringify(content) +
    (thinking === '' ? '' : ',"thinking":' + JSON.stringify(thinking)) +
    '},"done":false}\n'
  );
}

/** One text_completion chunk, or chat.completion.chunk of a generate served by chat → its /api/generate line ('' for none). */
export function completionChunk(w: NdjsonWriter, chunk: OpenAIChunk): string {
  const c = record(w, chunk);
  if (c === undefined) return '';
  let text = c.text;
  let thinking = '';
  const d = c.delta;
  if (typeof text !== 'string' && d !== undefined && d !== null) {
    text = (typeof d.content === 'string' ? d.content : '') + (typeof d.refusal === 'string' ? d.refusal : '');
    const r = d.reasoning_content ?? d.reasoning;
    if (typeof r === 'string' && w.thinking) thinking = r;
  }
  if ((typeof text !== 'string' || text === '') && thinking === '') return '';
  token(w);
  return w.head + '"response":' + JSON.stringify(text ?? '') + (thinking === '' ? '' : ',"thinking":' + JSON.stringify(thinking)) + ',"done":false}\n';
}

function counterFields(w: NdjsonWriter): string {
  const u = w.usage ?? { promptTokens: w.promptEstimate, completionTokens: w.tokens };
  const end = w.now();
  const d = ollamaDurations(end - w.openAt, w.firstAt < 0 ? null : w.firstAt - w.openAt);
  return ',"total_duration":' + d.total_duration + ',"load_duration":0,"prompt_eval_count":' + u.promptTokens + ',"prompt_eval_duration":' + d.prompt_eval_duration + ',"eval_count":' + u.completionTokens + ',"eval_duration":' + d.eval_duration + '}\n';
}

function ensureHead(w: NdjsonWriter): void {
  // A stream that ended before its first chunk: date the reply now.
  if (w.head === '') start(w, Date.now() / 1000);
}

/** The closing /api/chat lines: gathered tool calls, then the done line. Written once. */
export function chatDone(w: NdjsonWriter): string {
  if (w.done) return '';
  w.done = true;
  ensureHead(w);
  let out = '';
  const tools = w.tools.filter((t) => t !== undefined);
  if (tools.length > 0) {
    const calls: OllamaToolCall[] = tools.map((t) => ({ ...(t.id !== '' ? { id: t.id } : {}), function: { name: t.name, arguments: toolArguments(t.args) } }));
    out = w.head + '"message":{"role":"assistant","content":"","tool_calls":' + JSON.stringify(calls) + '},"done":false}\n';
  }
  return (
    out +
    w.head +
    '"message":{"role":"assistant","content":""},"done_reason":"' +
    doneReasonFromOpenAI(w.finish) +
    '","done":true' +
    counterFields(w)
  );
}

/** The closing /api/generate line. Written once. */
export function completionDone(w: NdjsonWriter): string {
  if (w.done) return '';
  w.done = true;
  ensureHead(w);
  return w.head + '"response":"","done":true,"done_reason":"' + doneReasonFromOpenAI(w.finish) + '"' + counterFields(w);
}
