// An OpenAI client served by an Ollama provider.
//   request:  /v1/chat/completions body → /api/chat body, /v1/completions body → /api/generate body
//   response: /api/chat reply → chat.completion, /api/generate reply → text_completion
//   stream:   /api/chat and /api/generate NDJSON lines → chat.completion.chunk / text_completion SSE events

import { BrokerError } from '../../errors.ts';
import { JSON_MAX_KEYS, keysWithin } from '../../front/json-depth.ts';
import { SSE_DONE } from '../codec/sse.ts';
import {
  argumentsJsonFromOllama,
  base64FromImageUrl,
  customInput,
  customTool,
  finishFromOllama,
  ollamaOptionsFromOpenAI,
  openaiUsage,
  requireArray,
  requireObject,
  unixFromIso,
  usageFromOllama,
} from './common.ts';
import type {
  OllamaChatRequest,
  OllamaChatResponse,
  OllamaFormat,
  OllamaGenerateRequest,
  OllamaGenerateResponse,
  OllamaMessage,
  OllamaToolCall,
  OpenAIChatCompletion,
  OpenAICompletion,
  OpenAIMessage,
  OpenAIToolCall,
  ReplyContext,
  Usage,
} from './types.ts';

// ---- request ----

function refuse(field: string, what: string): BrokerError {
  return new BrokerError('invalid_request', `${field} ${what}`, { details: { field } });
}

/** A field that asks for something: set, and not null or false (nor a top_logprobs of 0). */
function asks(v: unknown): boolean {
  return v !== undefined && v !== null && v !== false && v !== 0;
}

const NO_LOGPROBS = "is not supported by this model (Ollama's log probabilities are not translated into OpenAI's)";

/**
 * What Ollama has no word for and its reply would silently lack: several choices, log
 * probabilities, the prompt echoed. Refused (a mixed group sends it to a deployment that
 * carries it). A completion's logprobs is a count whose 0 still asks for the sampled tokens'.
 */
function rejectUncarried(b: Record<string, unknown>, kind: 'chat' | 'completion'): void {
  const n = b['n'];
  if (typeof n === 'number' && n > 1) throw refuse('n', '> 1 is not supported by this model');
  const lp = b['logprobs'];
  if (kind === 'chat' ? asks(lp) : lp !== undefined && lp !== null && lp !== false) throw refuse('logprobs', NO_LOGPROBS);
  if (kind === 'chat' && asks(b['top_logprobs'])) throw refuse('top_logprobs', NO_LOGPROBS);
  // best_of: the server samples that many and answers the best; Ollama would answer one sample.
  if (kind === 'completion' && typeof b['best_of'] === 'number' && b['best_of'] > 1) throw refuse('best_of', '> 1 is not supported by this model');
  if (kind === 'completion' && asks(b['echo'])) throw refuse('echo', 'is not supported by this model (Ollama does not repeat the prompt in its reply)');
  // Audio output: Ollama answers text only.
  if (kind === 'chat' && Array.isArray(b['modalities']) && b['modalities'].includes('audio')) throw refuse('modalities', 'with "audio" is not supported by this model (Ollama answers text only)');
  if (kind === 'chat' && b['audio'] !== undefined && b['audio'] !== null) throw refuse('audio', 'is not supported by this model (Ollama answers text only)');
  // Token biases: Ollama has no such option, and the model would sample the tokens anyway.
  if (asks(b['logit_bias']) && Object.keys(b['logit_bias'] as object).length > 0) throw refuse('logit_bias', 'is not supported by this model (Ollama has no token biases)');
  // OpenAI's deprecated function calling: its reply (function_call) has no Ollama form.
  if (kind === 'chat' && (asks(b['functions']) || asks(b['function_call']))) throw refuse(asks(b['functions']) ? 'functions' : 'function_call', 'is not supported by this model (deprecated by OpenAI: send tools and tool_choice)');
}

function formatFromResponseFormat(rf: unknown): OllamaFormat | undefined {
  if (rf === null || typeof rf !== 'object') return undefined;
  const r = rf as Record<string, unknown>;
  if (r['type'] === 'json_object') return 'json';
  if (r['type'] === 'json_schema') {
    const js = r['json_schema'] as Record<string, unknown> | undefined;
    // OpenAI's 400 (missing parameter); taken as JSON mode, the schema the client meant was lost.
    if (js === null || typeof js !== 'object' || Array.isArray(js)) throw refuse('response_format.json_schema', 'is required with type "json_schema": an object with a name and a schema');
    const schema = js['schema'];
    if (schema === undefined || schema === null) return 'json';
    if (typeof schema !== 'object' || Array.isArray(schema)) throw refuse('response_format.json_schema.schema', 'must be an object (a JSON Schema)');
    return schema as Record<string, unknown>;
  }
  // Dropped, the reply would be free text where the client asked for a format.
  if (r['type'] !== 'text') throw refuse('response_format.type', `${JSON.stringify(r['type'])} is not supported by this model: "text", "json_object" or "json_schema"`);
  return undefined;
}

/** Object keys the client's tool-call arguments (JSON in strings) may still hold, over the whole request. */
interface KeyBudget {
  keys: number;
}

function parseArguments(args: unknown, budget: KeyBudget): Record<string, unknown> {
  if (args === undefined || args === null || args === '') return {};
  if (typeof args === 'object' && !Array.isArray(args)) return args as Record<string, unknown>;
  if (typeof args === 'string') {
    try {
      // A client's text: JSON.parse's time grows with the nesting and the keys (each is parsed,
      // then written again for Ollama), so one past the front's limits is kept as text unparsed.
      // Every call's counts: many small ones add up as one large one does.
      const keys = keysWithin(Buffer.from(args), budget.keys);
      if (keys === undefined) throw new Error('past the JSON limits');
      budget.keys -= keys;
      const v: unknown = JSON.parse(args);
      if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
    } catch {
      // fall through
    }
    // A model can write arguments that are not a JSON object, and a client sends them back in
    // the history as it got them: kept as text (as Messages' tool_use input does), not refused.
    return { arguments: args };
  }
  throw new BrokerError('invalid_request', 'tool_calls[].function.arguments must be a JSON object or a string');
}

function ollamaMessage(m: unknown, toolNames: Map<string, string>, i: number, budget: KeyBudget): OllamaMessage {
  if (m === null || typeof m !== 'object') throw new BrokerError('invalid_request', 'messages[] must be objects');
  const msg = m as OpenAIMessage;
  if (msg.role === 'function' || asks(msg.function_call)) throw refuse(`messages[${i}]${msg.role === 'function' ? '.role' : '.function_call'}`, 'is not supported by this model (OpenAI\'s deprecated function calling: send tool_calls and role "tool" messages)');
  const role = msg.role === 'developer' ? 'system' : String(msg.role);
  const out: OllamaMessage = { role, content: '' };
  const c = msg.content;
  if (typeof c === 'string') {
    out.content = c;
  } else if (Array.isArray(c)) {
    const texts: string[] = [];
    const images: string[] = [];
    c.forEach((part, j) => {
      const field = `messages[${i}].content[${j}]`;
      if (part.type === 'text' && typeof part['text'] === 'string') texts.push(part['text']);
      // An assistant turn's refusal is what it said.
      else if (part.type === 'refusal' && typeof part['refusal'] === 'string') texts.push(part['refusal']);
      else if (part.type === 'image_url') {
        const iu = part['image_url'] as string | { url?: unknown } | undefined;
        const url = typeof iu === 'string' ? iu : iu?.url;
        if (typeof url !== 'string') throw refuse(`${field}.image_url.url`, 'must be a string');
        images.push(base64FromImageUrl(url, `${field}.image_url.url`));
      } else {
        // input_audio, file, ...: left out, the model would answer without what the client sent.
        throw refuse(`${field}.type`, `${JSON.stringify(part?.type)} is not supported by this model (Ollama takes text and base64 images)`);
      }
    });
    out.content = texts.join('\n');
    if (images.length > 0) out.images = images;
  }
  if (Array.isArray(msg.tool_calls) && msg.tool_calls.length > 0) {
    out.tool_calls = msg.tool_calls.map((tc: OpenAIToolCall): OllamaToolCall => {
      // A custom tool's call goes back as the one-string function it was offered as (chatTools).
      const custom = tc.type === 'custom' ? tc.custom : undefined;
      const name = String(custom !== undefined ? (custom.name ?? '') : (tc.function?.name ?? ''));
      if (typeof tc.id === 'string') toolNames.set(tc.id, name);
      return { ...(typeof tc.id === 'string' && tc.id !== '' ? { id: tc.id } : {}), function: { name, arguments: custom !== undefined ? { input: String(custom.input ?? '') } : parseArguments(tc.function?.arguments, budget) } };
    });
  }
  if (role === 'tool') {
    const name = typeof msg.name === 'string' ? msg.name : toolNames.get(String(msg.tool_call_id));
    if (name !== undefined) out.tool_name = name;
    if (typeof msg.tool_call_id === 'string' && msg.tool_call_id !== '') out.tool_call_id = msg.tool_call_id;
  }
  const thinking = msg.reasoning_content ?? msg.reasoning;
  if (typeof thinking === 'string' && thinking !== '') out.thinking = thinking;
  return out;
}

/** /v1/chat/completions body → /api/chat body for `upstreamModel`. */
export function chatRequest(body: unknown, upstreamModel: string): OllamaChatRequest {
  const b = requireObject(body);
  const messages = requireArray(b, 'messages');
  rejectUncarried(b, 'chat');
  const toolNames = new Map<string, string>();
  const budget: KeyBudget = { keys: JSON_MAX_KEYS };
  const out: OllamaChatRequest = {
    model: upstreamModel,
    messages: messages.map((m, i) => ollamaMessage(m, toolNames, i, budget)),
    // Ollama streams by default; OpenAI does not.
    stream: b['stream'] === true,
  };
  const options = ollamaOptionsFromOpenAI(b);
  if (options !== undefined) out.options = options;
  const format = formatFromResponseFormat(b['response_format']);
  if (format !== undefined) out.format = format;
  // Ollama's own switch for a thinking model (what an Anthropic client's disabled `thinking`
  // becomes). reasoning_effort "none" is think: false, as Ollama's OpenAI API maps it; a level
  // is not passed on as think (Ollama refuses that for a model that cannot think, and agents
  // send one whatever the model), so the model keeps its default.
  if (typeof b['think'] === 'boolean') out['think'] = b['think'];
  else if (b['reasoning_effort'] === 'none') out['think'] = false;
  const tools = chatTools(b['tools'], b['tool_choice']);
  if (tools !== undefined) out.tools = tools;
  return out;
}

/** A chat tool's name: a function's, or a custom tool's (OpenAI's `{type: "custom", custom: {name}}`). */
function toolName(t: unknown): string | undefined {
  if (t === null || typeof t !== 'object') return undefined;
  const o = t as Record<string, unknown>;
  const inner = (o['type'] === 'custom' ? o['custom'] : o['function']) as Record<string, unknown> | null | undefined;
  return typeof inner?.['name'] === 'string' ? inner['name'] : undefined;
}

/**
 * The tools Ollama is offered. Ollama has no tool_choice: "none" is kept by offering none, a
 * named tool or allowed_tools by offering only those. A custom (free-form) tool goes as a
 * function of one string argument, its calls coming back as custom tool calls (customToolNames).
 */
function chatTools(tools: unknown, choice: unknown): unknown[] | undefined {
  if (!Array.isArray(tools) || tools.length === 0 || choice === 'none') return undefined;
  let allowed: Set<string> | undefined;
  const c = choice as Record<string, unknown> | null | undefined;
  if (c !== null && typeof c === 'object' && c['type'] === 'allowed_tools') {
    const list = (c['allowed_tools'] as Record<string, unknown> | null | undefined)?.['tools'];
    if (!Array.isArray(list)) throw refuse('tool_choice.allowed_tools.tools', 'must be an array of tools ({"type": "function", "function": {"name": ...}})');
    allowed = new Set(list.map(toolName).filter((n): n is string => n !== undefined));
  } else if (c !== null && typeof c === 'object') {
    const named = toolName(c);
    if (named !== undefined) allowed = new Set([named]);
  }
  const out: unknown[] = [];
  tools.forEach((t: unknown, i) => {
    const name = toolName(t);
    if (allowed !== undefined && (name === undefined || !allowed.has(name))) return;
    const o = t as Record<string, unknown>;
    out.push(o['type'] === 'custom' && name !== undefined ? customTool(o['custom'] as Record<string, unknown>, name, `tools[${i}].custom`) : t);
  });
  // A tool_choice that names no offered tool: OpenAI's 400, not a request sent without tools.
  if (allowed !== undefined && out.length === 0) throw refuse(c!['type'] === 'allowed_tools' ? 'tool_choice.allowed_tools.tools' : 'tool_choice', 'names no tool in tools');
  return out.length > 0 ? out : undefined;
}

/** The names of a chat request's custom tools: their calls are answered as custom tool calls. */
function customToolNames(request: Readonly<Record<string, unknown>> | undefined): ReadonlySet<string> | undefined {
  const tools = request?.['tools'];
  if (!Array.isArray(tools)) return undefined;
  let out: Set<string> | undefined;
  for (const t of tools) {
    // Only chat's shape: Anthropic's tools say type "custom" too, without a `custom` object.
    if (t !== null && typeof t === 'object' && t['type'] === 'custom' && typeof t['custom']?.['name'] === 'string') (out ??= new Set()).add(t['custom']['name']);
  }
  return out;
}

/** /v1/completions body → /api/generate body for `upstreamModel`. */
export function completionRequest(body: unknown, upstreamModel: string): OllamaGenerateRequest {
  const b = requireObject(body);
  rejectUncarried(b, 'completion');
  let prompt = b['prompt'];
  if (Array.isArray(prompt) && prompt.length === 1) prompt = prompt[0];
  if (typeof prompt !== 'string') throw new BrokerError('invalid_request', 'prompt must be a string (or an array of one string)', { details: { field: 'prompt' } });
  const out: OllamaGenerateRequest = { model: upstreamModel, prompt, stream: b['stream'] === true };
  if (typeof b['suffix'] === 'string' && b['suffix'] !== '') out.suffix = b['suffix'];
  const options = ollamaOptionsFromOpenAI(b);
  if (options !== undefined) out.options = options;
  // vLLM's and llama.cpp's completions take response_format too; /api/generate's word is format.
  const format = formatFromResponseFormat(b['response_format']);
  if (format !== undefined) out.format = format;
  return out;
}

// ---- non-streaming response ----

function openaiToolCalls(calls: OllamaToolCall[] | undefined, id: string, first: number, custom: ReadonlySet<string> | undefined): OpenAIToolCall[] | undefined {
  if (!Array.isArray(calls) || calls.length === 0) return undefined;
  return calls.map((tc, i) => {
    const callId = typeof tc.id === 'string' && tc.id !== '' ? tc.id : `call_${id}_${first + i}`;
    const name = tc.function?.name ?? '';
    const args = argumentsJsonFromOllama(tc.function?.arguments);
    // A custom tool's call carries its free-form input (streamed whole: Ollama sends calls whole).
    if (custom?.has(name) === true) return { index: first + i, id: callId, type: 'custom', custom: { name, input: customInput(args) } };
    return { index: first + i, id: callId, type: 'function', function: { name, arguments: args } };
  });
}

function usageOf(r: OllamaChatResponse | OllamaGenerateResponse): Usage {
  return usageFromOllama(r) ?? { promptTokens: 0, completionTokens: 0 };
}

/** /api/chat reply → chat.completion. */
export function chatResponse(res: OllamaChatResponse, ctx: ReplyContext): OpenAIChatCompletion {
  const m = res.message;
  const toolCalls = openaiToolCalls(m?.tool_calls, ctx.id, 0, customToolNames(ctx.request));
  const content = typeof m?.content === 'string' ? m.content : '';
  const message: OpenAIMessage = { role: 'assistant', content: toolCalls !== undefined && content === '' ? null : content };
  // Both names: vLLM's and DeepSeek's clients read reasoning_content, Ollama's own /v1 and the
  // Agents SDK's chat model read reasoning.
  if (typeof m?.thinking === 'string' && m.thinking !== '') message.reasoning_content = message.reasoning = m.thinking;
  if (toolCalls !== undefined) message.tool_calls = toolCalls.map(({ index: _index, ...tc }) => tc);
  return {
    id: 'chatcmpl-' + ctx.id,
    object: 'chat.completion',
    created: unixFromIso(res.created_at),
    model: ctx.model,
    choices: [{ index: 0, message, logprobs: null, finish_reason: finishFromOllama(res.done_reason, toolCalls !== undefined) }],
    usage: openaiUsage(usageOf(res)),
  };
}

/** /api/generate reply → text_completion. */
export function completionResponse(res: OllamaGenerateResponse, ctx: ReplyContext): OpenAICompletion {
  return {
    id: 'cmpl-' + ctx.id,
    object: 'text_completion',
    created: unixFromIso(res.created_at),
    model: ctx.model,
    choices: [{ text: typeof res.response === 'string' ? res.response : '', index: 0, logprobs: null, finish_reason: finishFromOllama(res.done_reason, false) }],
    usage: openaiUsage(usageOf(res)),
  };
}

// ---- streaming ----
//
// Chunks are written by hand around JSON.stringify of the one changing field:
// the id/object/created/model prefix is built once per stream. Every chunk of a
// stream shares the `created` of the first Ollama line, as OpenAI's do.

export interface SseWriter {
  readonly id: string;
  readonly model: string;
  readonly includeUsage: boolean;
  /** `data: {...,"choices":[{"index":0,"delta":` (chat) or `...[{"text":` (completion); '' until the first line. */
  head: string;
  /** `data: {...,"choices":[],"usage":` for the usage chunk. */
  usageHead: string;
  roleSent: boolean;
  /** Token events written: the completion count when Ollama gives none. */
  tokens: number;
  /** The prompt's estimated tokens: the prompt count when Ollama gives none. */
  readonly promptEstimate: number;
  /** Tool calls written so far (their OpenAI `index`). */
  toolCalls: number;
  /** The request's custom tools (their calls are custom tool calls); absent: none. */
  readonly customTools: ReadonlySet<string> | undefined;
}

export interface StreamContext extends ReplyContext {
  /** The client asked `stream_options.include_usage`: send a usage chunk before [DONE]. */
  includeUsage: boolean;
}

export function sseWriter(ctx: StreamContext): SseWriter {
  return { id: ctx.id, model: ctx.model, includeUsage: ctx.includeUsage, head: '', usageHead: '', roleSent: false, tokens: 0, promptEstimate: ctx.promptEstimate ?? 0, toolCalls: 0, customTools: customToolNames(ctx.request) };
}

function start(w: SseWriter, createdAt: unknown, object: string, idPrefix: string, choiceOpen: string): void {
  const base =
    'data: {"id":' + JSON.stringify(idPrefix + w.id) + ',"object":"' + object + '","created":' + unixFromIso(createdAt) + ',"model":' + JSON.stringify(w.model) + ',"choices":[';
  w.head = base + choiceOpen;
  w.usageHead = base + '],"usage":';
}

const OPEN_TAIL = ',"logprobs":null,"finish_reason":null}]}\n\n';

function finishTail(finish: string): string {
  return ',"logprobs":null,"finish_reason":"' + finish + '"}]}\n\n';
}

function closing(w: SseWriter, line: OllamaChatResponse | OllamaGenerateResponse, finish: string, emptyDelta: string): string {
  let out = w.head + emptyDelta + finishTail(finish);
  if (w.includeUsage) {
    const u = usageFromOllama(line) ?? { promptTokens: w.promptEstimate, completionTokens: w.tokens };
    out += w.usageHead + JSON.stringify(openaiUsage(u)) + '}\n\n';
  }
  return out + SSE_DONE;
}

/** One /api/chat stream line → its chat.completion.chunk events; the done line also brings finish, usage and [DONE]. */
export function chatLine(w: SseWriter, line: OllamaChatResponse): string {
  if (w.head === '') start(w, line.created_at, 'chat.completion.chunk', 'chatcmpl-', '{"index":0,"delta":');
  let out = '';
  const m = line.message;
  if (m !== undefined && m !== null) {
    const content = m.content;
    const hasContent = typeof content === 'string' && content !== '';
    const hasThinking = typeof m.thinking === 'string' && m.thinking !== '';
    const hasTools = Array.isArray(m.tool_calls) && m.tool_calls.length > 0;
    if (hasContent && !hasThinking && !hasTools) {
      out = w.head + (w.roleSent ? '{"content":' : '{"role":"assistant","content":') + JSON.stringify(content) + '}' + OPEN_TAIL;
      w.roleSent = true;
      w.tokens++;
    } else if (hasContent || hasThinking || hasTools) {
      const delta: Record<string, unknown> = {};
      if (!w.roleSent) delta['role'] = 'assistant';
      delta['content'] = hasContent ? content : null;
      if (hasThinking) delta['reasoning_content'] = delta['reasoning'] = m.thinking;
      if (hasTools) {
        delta['tool_calls'] = openaiToolCalls(m.tool_calls, w.id, w.toolCalls, w.customTools);
        w.toolCalls += m.tool_calls!.length;
      }
      out = w.head + JSON.stringify(delta) + OPEN_TAIL;
      w.roleSent = true;
      w.tokens++;
    }
  }
  // An empty answer still names its role: the OpenAI SDK's stream helpers refuse a choice without one.
  if (line.done === true) out += closing(w, line, finishFromOllama(line.done_reason, w.toolCalls > 0), w.roleSent ? '{}' : '{"role":"assistant","content":""}');
  return out;
}

/** One /api/generate stream line → its text_completion events; the done line also brings finish, usage and [DONE]. */
export function generateLine(w: SseWriter, line: OllamaGenerateResponse): string {
  if (w.head === '') start(w, line.created_at, 'text_completion', 'cmpl-', '{"text":');
  let out = '';
  const text = line.response;
  if (typeof text === 'string' && text !== '') {
    out = w.head + JSON.stringify(text) + ',"index":0' + OPEN_TAIL;
    w.tokens++;
  }
  if (line.done === true) out += closing(w, line, finishFromOllama(line.done_reason, false), '""' + ',"index":0');
  return out;
}
