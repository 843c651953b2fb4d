// One LLM request, read once at the front from the client's body and headers: what
// admission, the scheduler, the sticky and quota policies and the proxy need, typed.
// Nothing after this reads the body again except the translators, which map it whole
// to the provider's API.
import { randomUUID } from 'node:crypto';
import { requestIdFrom } from '../obs/request-id.ts';
import { BrokerError } from '../errors.ts';
import type { BrokerRequest, Caller } from '../front/reply.ts';
import { apiKeyOf } from '../guard/api-key.ts';
import type { RequestFacts } from '../track/facts.ts';
import type { ClientApi, Kind } from './translate/index.ts';
import { cacheDirectiveOf, type CacheDirective } from './cache/cache.ts';
import { headerPriority } from '../policy/priority.ts';
import { parseTraceparent, validTracestate } from '../obs/trace/context.ts';

export interface LlmRequest {
  readonly id: string;
  /**
   * The reply's ids (`chatcmpl-…`, `msg_…`, `resp_…`, made-up tool call ids): the request id when the
   * broker made it, a fresh one when the client sent its own X-Request-ID (a fixed header gave every
   * turn of an agent loop the same message and tool-call ids, with the header's characters in them).
   */
  readonly replyId: string;
  /** performance.now() when the request arrived. */
  readonly startedAt: number;
  readonly api: ClientApi;
  readonly kind: Kind;
  /** The model group the client asked for. */
  readonly model: string;
  /** The client's body, parsed once; the translators map it to the provider's API. */
  readonly body: Readonly<Record<string, unknown>>;
  /**
   * Chat messages (chat; a Responses client's input items) or the prompt (completion; a
   * Responses input string; embeddings' inputs joined), and the system text (Ollama's
   * `system`, Anthropic's `system`, Responses' `instructions`).
   */
  readonly messages: readonly unknown[] | undefined;
  readonly prompt: string | undefined;
  readonly system: string | undefined;
  /** max_tokens, max_completion_tokens or options.num_predict, when the client set one. */
  readonly maxTokens: number | undefined;
  /** Characters of prompt text (messages, prompt, system), counted once at the front. */
  readonly promptChars: number;
  /**
   * Characters that must fit one context window (a group's maxContextTokens), when not the whole
   * prompt: an embeddings batch's longest input (each is embedded on its own; 0 when Ollama
   * truncates them, its default).
   */
  readonly contextChars?: number;
  /** OpenAI `n`: completions asked for (quotas reserve n × the output). */
  readonly choices: number;
  readonly apiKey: string | undefined;
  /** Who a session or JWT speaks for (client auth): admission holds it to that key, that tier. */
  readonly caller: Caller | undefined;
  /** x-broker-label, x-broker-priority (a digit or low/normal/high/critical), x-broker-qos. */
  readonly label: string | undefined;
  readonly priority: number | undefined;
  readonly tier: string | undefined;
  /** x-broker-cache: use, bypass or refresh (llm/cache/cache.ts). */
  readonly cache?: CacheDirective | undefined;
  /** 'grpc': the reply is gRPC messages (the compiled chain's gRPC encoder), not `api`'s wire format. */
  readonly encoder?: 'grpc';
  /** Request tracking's record of it (the front's), when tracked. */
  readonly facts?: RequestFacts | undefined;
  /**
   * The client's W3C trace context, when valid: passed upstream unchanged when the broker does
   * not record the trace (sampled out, or tracing off), as a participant that does not trace must.
   */
  readonly traceparent?: string | undefined;
  readonly tracestate?: string | undefined;
}

/** How large a prompt may be (LLM_MAX_MESSAGES, LLM_MAX_PROMPT_CHARS): a huge body would hold a thread for its translation. */
export interface PromptLimits {
  readonly maxMessages: number;
  readonly maxPromptChars: number;
}

/** Stop sequences a request may name (`stop`, `stop_sequences`, Ollama's `options.stop`). */
export const MAX_STOP_SEQUENCES = 64;

export const DEFAULT_PROMPT_LIMITS: PromptLimits = Object.freeze({ maxMessages: 4096, maxPromptChars: 4_000_000 });

/** An OpenAI client's sampling numbers besides temperature and top_p (checked below); top_k is vLLM's. */
const OPENAI_SAMPLING = ['seed', 'presence_penalty', 'frequency_penalty', 'top_k'] as const;

export function readLlmRequest(req: BrokerRequest, api: ClientApi, kind: Kind, body: Record<string, unknown>, limits: PromptLimits = DEFAULT_PROMPT_LIMITS): LlmRequest {
  const model = body.model;
  if (typeof model !== 'string' || model === '') throw invalidField('model', 'is required and must be a string');
  checkDepth(body);
  if (api === 'anthropic') {
    // Message threads keep the conversation server-side: a `continue` carries only the new turn
    // (no history, system or tools). Not kept here: refused, so the SDK resends it whole.
    if (body.thread !== undefined && body.thread !== null) {
      throw new BrokerError('thread_unsupported_request', 'message threads (`thread`) are not supported here: send the whole conversation without `thread`', { details: { field: 'thread' } });
    }
    // As Anthropic's API: both are required there, and a client relying on that learns it here too.
    if (!Array.isArray(body.messages) || body.messages.length === 0) throw invalidField('messages', 'must be a non-empty array');
    if (body.max_tokens === undefined) throw invalidField('max_tokens', 'is required');
  }
  checkMessages(body.messages);
  // Sampling numbers of the wrong type and a forced function not offered: the client's mistake,
  // refused here, before admission (in the translators, they waited for a free deployment: a
  // 504 after the queue's timeout instead of a 400).
  if (api === 'openai') {
    checkSampling(body, OPENAI_SAMPLING);
    if (kind === 'chat') checkForcedFunction(body);
  } else if (api === 'anthropic') checkSampling(body, ['top_k']);
  // OpenAI's chat requires a conversation (it answers 400 otherwise); a translating upstream
  // would take an empty one silently. Ollama's own empty chat loads the model. Roles are the
  // upstream's to judge: vLLM's templates take their own (Llama 3.1's ipython).
  if (api === 'openai' && kind === 'chat' && (!Array.isArray(body.messages) || body.messages.length === 0)) throw invalidField('messages', 'must be a non-empty array');
  if (body.tools !== undefined && body.tools !== null && !Array.isArray(body.tools)) throw invalidField('tools', 'must be an array');
  if ((api === 'openai' || api === 'ollama') && kind !== 'embed') checkChatTools(body, api);
  if (api === 'anthropic') checkToolResults(body.messages as unknown[]);
  if (kind === 'embed' && api === 'openai') checkOpenAIEmbed(body);
  if (kind === 'embed') checkEmbedInput(body, api);
  const own = kind === 'embed' ? embedParts(body, limits) : api === 'responses' ? responsesParts(body) : api === 'anthropic' ? anthropicParts(body) : promptParts(body);
  // Tool definitions are prompt too (an agent's schemas run to thousands of tokens): counted
  // against the limit, a group's window and the token quota.
  const parts: PromptParts = kind === 'embed' || body.tools === undefined ? own : { ...own, tools: body.tools };
  const promptChars = checkSize(parts, limits, api === 'anthropic' ? upstreamMessageCount(body.messages as unknown[]) : (parts.messages?.length ?? 0), api === 'responses' || kind === 'embed' ? 'input' : undefined);
  checkNumber(body.temperature, 'temperature');
  checkNumber(body.top_p, 'top_p');
  // "stream": "yes" read as not streamed would surprise its sender: say so instead (both vendors answer 400).
  if (body.stream !== undefined && body.stream !== null && typeof body.stream !== 'boolean') throw invalidField('stream', 'must be a boolean');
  if (api === 'anthropic' && body.stop_sequences !== undefined && body.stop_sequences !== null && !(Array.isArray(body.stop_sequences) && body.stop_sequences.every((x) => typeof x === 'string'))) {
    throw invalidField('stop_sequences', 'must be an array of strings');
  }
  if (api === 'anthropic' && Array.isArray(body.stop_sequences) && body.stop_sequences.length > MAX_STOP_SEQUENCES) throw invalidField('stop_sequences', `has ${body.stop_sequences.length} sequences; at most ${MAX_STOP_SEQUENCES}`);
  checkInt(body.max_output_tokens, 'max_output_tokens', 1, MAX_OUTPUT_TOKENS);
  checkInt(body.max_tokens, 'max_tokens', 1, MAX_OUTPUT_TOKENS);
  checkInt(body.max_completion_tokens, 'max_completion_tokens', 1, MAX_OUTPUT_TOKENS);
  const options = body.options as Record<string, unknown> | undefined;
  // Ollama refuses options that are not an object; passed on, an upstream would have ignored them or failed with a 500.
  if (api === 'ollama' && options !== undefined && options !== null && (typeof options !== 'object' || Array.isArray(options))) throw invalidField('options', 'must be an object');
  if (options !== undefined && options !== null && typeof options === 'object') {
    checkInt(options.num_predict, 'options.num_predict', -2, MAX_OUTPUT_TOKENS);
    // As Ollama answers them (400): a number option that is not one, rather than dropped in translation.
    for (const k of OLLAMA_NUMBER_OPTIONS) checkNumber(options[k], `options.${k}`);
    if (Array.isArray(options.stop) && options.stop.length > MAX_STOP_SEQUENCES) throw invalidField('options.stop', `has ${options.stop.length} sequences; at most ${MAX_STOP_SEQUENCES}`);
  }
  if (api === 'openai' && kind !== 'embed') {
    // As OpenAI answers them: a stop that is not a string or strings, stream_options that are not an object.
    const stop = body.stop;
    if (stop !== undefined && stop !== null && typeof stop !== 'string' && !(Array.isArray(stop) && stop.every((x) => typeof x === 'string'))) throw invalidField('stop', 'must be a string or an array of strings');
    // OpenAI takes 4; vLLM and Ollama more. Bounded, so that half a million stop strings are not sent on.
    if (Array.isArray(stop) && stop.length > MAX_STOP_SEQUENCES) throw invalidField('stop', `has ${stop.length} sequences; at most ${MAX_STOP_SEQUENCES}`);
    const so = body.stream_options;
    if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so))) throw invalidField('stream_options', 'must be an object');
    const rf = body.response_format as Record<string, unknown> | null | undefined;
    if (rf !== undefined && rf !== null && (!isObject(rf) || typeof rf.type !== 'string')) throw invalidField('response_format', 'must be an object with a string type ("text", "json_object", "json_schema")');
    if (kind === 'completion') checkCompletionPrompt(body.prompt);
  }
  // Ollama's format: "json" or a JSON Schema.
  const format = body.format;
  // Another string ("xml") is Ollama's 400 too: passed on, it was dropped on the way to an OpenAI upstream.
  if (api === 'ollama' && format !== undefined && format !== null && !(format === 'json' || format === '' || isObject(format))) throw invalidField('format', 'must be "json" or a JSON schema object');
  checkInt(body.n, 'n', 1, MAX_CHOICES);
  if (api === 'ollama') {
    // Ollama's images are base64 strings in an array; anything else is its 400, not silently dropped.
    checkImages(body.images, 'images');
    if (Array.isArray(body.messages)) body.messages.forEach((m: unknown, i: number) => checkImages((m as { images?: unknown } | null)?.images, `messages[${i}].images`));
  }
  const h = req.headers;
  if (api === 'anthropic') checkThinkingBudget(body, h['anthropic-beta']);
  const apiKey = apiKeyOf(h);
  const facts = req.facts;
  // The key's id is the front's (RowRecorder.start).
  if (facts !== undefined) facts.model = model;
  return {
    id: req.id,
    // A Response's id names a stored conversation (stored/responses.ts): not guessable from another's.
    replyId: api === 'responses' ? randomUUID().replaceAll('-', '') : h['x-request-id'] === req.id ? requestIdFrom(undefined) : req.id,
    startedAt: req.startedAt,
    api,
    kind,
    model,
    body,
    ...parts,
    promptChars,
    ...(kind === 'embed' ? { contextChars: api === 'ollama' && body.truncate !== false ? 0 : longestInput(body.input) } : {}),
    maxTokens: maxOutputTokensOf(body, api),
    choices: typeof body.n === 'number' ? body.n : 1,
    apiKey,
    caller: req.caller,
    label: labelOf(h['x-broker-label']),
    priority: headerPriority(h['x-broker-priority']),
    tier: h['x-broker-qos'],
    cache: cacheDirectiveOf(h['x-broker-cache']),
    facts,
    ...(parseTraceparent(h['traceparent']) !== undefined ? { traceparent: h['traceparent']!.trim(), tracestate: validTracestate(h['tracestate']) } : {}),
  };
}

/** The parts of a body that make the prompt: messages, prompt, system. */
export interface PromptParts {
  readonly messages: readonly unknown[] | undefined;
  readonly prompt: string | undefined;
  readonly system: string | undefined;
  /** The request's tool definitions, as sent. */
  readonly tools?: unknown;
  /** A completion's suffix (fill-in-the-middle). */
  readonly suffix?: string;
  /** Token ids in a completion's prompt (each counts as one token): its longest prompt's. */
  readonly promptTokenIds?: number;
  /** Images beside the prompt (Ollama generate's `images`). */
  readonly images?: number;
}

export function promptParts(body: Readonly<Record<string, unknown>>): PromptParts {
  const p = body.prompt;
  const longest = Array.isArray(p) ? longestPrompt(p) : undefined;
  return {
    messages: Array.isArray(body.messages) ? body.messages : undefined,
    prompt: typeof p === 'string' ? p : longest?.text,
    system: typeof body.system === 'string' ? body.system : undefined,
    // Fill-in-the-middle: the text after the gap is prompt too.
    ...(typeof body.suffix === 'string' && body.suffix !== '' ? { suffix: body.suffix } : {}),
    ...(longest?.ids !== undefined ? { promptTokenIds: longest.ids } : {}),
    ...(Array.isArray(body.images) && body.images.length > 0 ? { images: body.images.length } : {}),
  };
}

/**
 * A completion's prompt given as an array (OpenAI's, vLLM's): strings, each a prompt of a
 * batch; token ids, one prompt; or arrays of token ids, each a prompt. The longest counts, as
 * one string prompt would (against LLM_MAX_PROMPT_CHARS and a group's window, which each
 * prompt of a batch must fit alone; the upstream's usage then settles the token quota).
 */
function longestPrompt(p: readonly unknown[]): { text?: string; ids?: number } {
  let text: string | undefined;
  let ids = 0;
  let flat = 0;
  for (const x of p) {
    if (typeof x === 'string') {
      if (text === undefined || x.length > text.length) text = x;
    } else if (Number.isInteger(x)) flat++;
    else if (Array.isArray(x)) ids = Math.max(ids, x.length);
  }
  ids = Math.max(ids, flat);
  if (ids * CHARS_PER_TOKEN > (text?.length ?? 0)) return { ids };
  return text === undefined ? {} : { text };
}

/** A Responses body: `input` (a string, or items whose text counts as messages), `instructions`. */
function responsesParts(body: Readonly<Record<string, unknown>>): PromptParts {
  const input = body.input;
  if (typeof input !== 'string' && !Array.isArray(input)) throw invalidField('input', 'is required: a string or an array of items');
  // No conversation: a chat upstream would be sent none (OpenAI's own answers 400).
  if (Array.isArray(input) && input.length === 0) throw invalidField('input', 'must not be empty: a string or a non-empty array of items');
  if (Array.isArray(input)) {
    for (let i = 0; i < input.length; i++) {
      const it = input[i] as unknown;
      if (it === null || typeof it !== 'object' || Array.isArray(it)) throw invalidField(`input[${i}]`, 'must be an object');
      checkItem(it as Record<string, unknown>, i);
    }
  }
  if (body.instructions !== undefined && body.instructions !== null && typeof body.instructions !== 'string') throw invalidField('instructions', 'must be a string');
  checkResponsesFields(body);
  return {
    messages: Array.isArray(input) ? input : undefined,
    prompt: typeof input === 'string' ? input : undefined,
    system: typeof body.instructions === 'string' ? body.instructions : undefined,
  };
}

/**
 * Sampling numbers of the wrong type (seed, the penalties, top_k): refused, as `temperature` is,
 * not dropped on the way to an upstream that would have refused it. `seed` must be whole. Null
 * is the API's default.
 */
function checkSampling(body: Readonly<Record<string, unknown>>, fields: readonly string[]): void {
  for (const field of fields) {
    const v = body[field];
    if (v === undefined || v === null) continue;
    const whole = field === 'seed';
    if (typeof v !== 'number' || !Number.isFinite(v) || (whole && !Number.isInteger(v))) throw invalidField(field, `must be ${whole ? 'an integer' : 'a number'}`);
  }
}

/**
 * An OpenAI chat tool_choice that forces a function must name one in `tools`, as OpenAI
 * answers (400); an Ollama deployment, which has no tool_choice, dropped it and answered as
 * it liked (the Responses and Messages routes refuse it the same way).
 */
function checkForcedFunction(body: Readonly<Record<string, unknown>>): void {
  const tc = body.tool_choice as { type?: unknown; function?: { name?: unknown } } | null | undefined;
  if (tc === null || typeof tc !== 'object' || tc.type !== 'function') return;
  const forced = tc.function?.name;
  if (typeof forced !== 'string') return;
  const tools = Array.isArray(body.tools) ? body.tools : [];
  if (!tools.some((t) => (t as { function?: { name?: unknown } } | null)?.function?.name === forced)) {
    throw invalidField('tool_choice.function.name', `${forced} is not one of the function tools in tools`);
  }
}

/** Tool calls and outputs that pair by call_id (a local_shell_call's output may name the call by its id). */
const CALL_ITEMS = new Set(['function_call', 'function_call_output', 'custom_tool_call', 'custom_tool_call_output', 'local_shell_call', 'local_shell_call_output']);

/**
 * Fields a Response echoes (and some go upstream), of the types OpenAI takes (it answers 400
 * otherwise): of another type, they broke the Response's schema for typed clients
 * (`"reasoning": "high"` came back as it was, `"parallel_tool_calls": "yes"` went upstream).
 */
function checkResponsesFields(body: Readonly<Record<string, unknown>>): void {
  const set = (k: string): boolean => body[k] !== undefined && body[k] !== null;
  for (const k of ['reasoning', 'text', 'metadata']) if (set(k) && !isObject(body[k])) throw invalidField(k, 'must be an object');
  for (const k of ['user', 'safety_identifier', 'prompt_cache_key', 'service_tier']) if (set(k) && typeof body[k] !== 'string') throw invalidField(k, 'must be a string');
  for (const k of ['parallel_tool_calls', 'store', 'background']) if (set(k) && typeof body[k] !== 'boolean') throw invalidField(k, 'must be a boolean');
  if (set('truncation') && body.truncation !== 'auto' && body.truncation !== 'disabled') throw invalidField('truncation', 'must be "auto" or "disabled"');
  const format = (body.text as Record<string, unknown> | null | undefined)?.['format'];
  if (format !== undefined && format !== null && !isObject(format)) throw invalidField('text.format', 'must be an object ({"type": "text"}, "json_object" or "json_schema")');
}

/** What OpenAI requires of a function call and its output (it answers 400 without them); sent on, they would be ''. */
function checkItem(it: Record<string, unknown>, i: number): void {
  const type = it.type;
  if (typeof type !== 'string' || !CALL_ITEMS.has(type)) return;
  const shell = type === 'local_shell_call' || type === 'local_shell_call_output';
  if ((typeof it.call_id !== 'string' || it.call_id === '') && !(shell && typeof it.id === 'string' && it.id !== '')) throw invalidField(`input[${i}].call_id`, `is required in a ${type} item: a string`);
  if (type === 'custom_tool_call' && (typeof it.name !== 'string' || it.name === '')) throw invalidField(`input[${i}].name`, 'is required in a custom_tool_call item: a string');
  if (type === 'function_call' && (typeof it.name !== 'string' || it.name === '')) throw invalidField(`input[${i}].name`, 'is required in a function_call item: a string');
  if (type === 'function_call' && it.arguments !== undefined && typeof it.arguments !== 'string') throw invalidField(`input[${i}].arguments`, 'must be a string (the arguments as JSON text)');
  if (type === 'function_call_output' && typeof it.output !== 'string' && !Array.isArray(it.output)) throw invalidField(`input[${i}].output`, 'is required in a function_call_output item: a string or an array of content parts');
}

/** Each tool_result names the call it answers, as Anthropic requires (400 there). */
function checkToolResults(messages: unknown[]): void {
  for (let i = 0; i < messages.length; i++) {
    const c = (messages[i] as { content?: unknown }).content;
    if (!Array.isArray(c)) continue;
    for (let j = 0; j < c.length; j++) {
      const b = c[j] as Record<string, unknown>;
      if (b.type === 'tool_result' && (typeof b.tool_use_id !== 'string' || b.tool_use_id === '')) throw invalidField(`messages[${i}].content[${j}].tool_use_id`, 'is required in a tool_result block: a string');
    }
  }
}

/** Chat messages an Anthropic conversation becomes upstream: each tool_result is a message of its own. */
function upstreamMessageCount(messages: unknown[]): number {
  let n = 0;
  for (const m of messages) {
    const c = (m as { content?: unknown }).content;
    if (!Array.isArray(c)) {
      n++;
      continue;
    }
    let results = 0;
    for (const b of c) if ((b as { type?: unknown }).type === 'tool_result') results++;
    n += results + (results < c.length || results === 0 ? 1 : 0);
  }
  return n;
}

/** An Anthropic body: `messages`, and `system` as a string or text blocks. */
function anthropicParts(body: Readonly<Record<string, unknown>>): PromptParts {
  const sys = body.system;
  let system: string | undefined;
  if (typeof sys === 'string') system = sys;
  else if (Array.isArray(sys)) system = sys.map((b) => (typeof (b as { text?: unknown })?.text === 'string' ? (b as { text: string }).text : '')).join('\n');
  else if (sys !== undefined && sys !== null) throw invalidField('system', 'must be a string or an array of text blocks');
  return { messages: body.messages as unknown[], prompt: undefined, system };
}

/** What OpenAI's embeddings endpoint refuses with a 400 and an upstream might not: empty inputs, an unknown encoding. */
function checkOpenAIEmbed(body: Readonly<Record<string, unknown>>): void {
  const input = body.input;
  if (input === '') throw invalidField('input', 'must not be an empty string');
  if (Array.isArray(input)) {
    const i = input.findIndex((v) => v === '' || (Array.isArray(v) && v.length === 0));
    if (i >= 0) throw invalidField(`input[${i}]`, 'must not be empty');
  }
  const f = body.encoding_format;
  if (f !== undefined && f !== null && f !== 'float' && f !== 'base64') throw invalidField('encoding_format', "must be 'float' or 'base64'");
}

/** Largest `dimensions` an embedding request may ask for. */
const MAX_DIMENSIONS = 65_536;

/**
 * Embeddings' input as each vendor takes it: Ollama's a string or strings; OpenAI's a string,
 * strings, token ids or arrays of token ids, one kind per request. Else the upstream's 400, in
 * its words, and counted against the deployment; or, translated, sent where it cannot go.
 */
function checkEmbedInput(body: Readonly<Record<string, unknown>>, api: ClientApi): void {
  checkInt(body.dimensions, 'dimensions', 1, MAX_DIMENSIONS);
  const input = body.input;
  if (!Array.isArray(input)) return;
  const kindOf = (v: unknown): string => (typeof v === 'string' ? 'text' : isTokenId(v) ? 'id' : isTokenIds(v) && (v as unknown[]).length > 0 ? 'ids' : 'other');
  const first = input.length > 0 ? kindOf(input[0]) : 'text';
  for (let i = 0; i < input.length; i++) {
    const k = kindOf(input[i]);
    if (api === 'ollama' && k !== 'text') throw invalidField(`input[${i}]`, 'must be a string (Ollama takes a string or an array of strings)');
    if (k === 'other') throw invalidField(`input[${i}]`, 'must be a string, a token id (a whole number >= 0) or a non-empty array of token ids');
    if (k !== first) throw invalidField(`input[${i}]`, first === 'text' || k === 'text' ? 'mixes strings and token ids: one kind per request' : 'mixes token ids and arrays of them: one kind per request');
  }
}

/** Characters of an embeddings batch's longest input (token ids at 4 characters each, as embedParts counts them). */
function longestInput(input: unknown): number {
  const one = (v: unknown): number => (typeof v === 'string' ? v.length : typeof v === 'number' ? 4 : Array.isArray(v) ? 4 * v.length : 0);
  if (!Array.isArray(input) || (input.length > 0 && typeof input[0] === 'number')) return one(input);
  let most = 0;
  for (const v of input) most = Math.max(most, one(v));
  return most;
}

/** An embeddings body: `input`, a string or a batch (strings, or token arrays for an OpenAI upstream); a batch is bounded like messages. */
function embedParts(body: Readonly<Record<string, unknown>>, limits: PromptLimits): PromptParts {
  const input = body.input;
  if (typeof input === 'string') return { messages: undefined, prompt: input, system: undefined };
  if (!Array.isArray(input) || input.length === 0) throw invalidField('input', 'is required: a string or a non-empty array');
  if (input.length > limits.maxMessages) throw invalidField('input', `has ${input.length} inputs; at most ${limits.maxMessages} (LLM_MAX_MESSAGES)`);
  let text = '';
  for (let i = 0; i < input.length; i++) {
    const v = input[i] as unknown;
    if (typeof v === 'string') text += v;
    else if (typeof v === 'number' || (Array.isArray(v) && v.every((x) => typeof x === 'number'))) text += ' '.repeat(4 * (typeof v === 'number' ? 1 : v.length));
    else throw invalidField(`input[${i}]`, 'must be a string (or an array of token ids)');
  }
  return { messages: undefined, prompt: text, system: undefined };
}

export function maxOutputTokensOf(body: Readonly<Record<string, unknown>>, api: ClientApi): number | undefined {
  // The fields the client API's translators and upstreams read, the largest if several: a decoy
  // max_tokens of 1 beside max_completion_tokens of 64 (which vLLM and Ollama's translation
  // prefer) must not pass under a QoS tier's output cap, nor reserve 1 token of a quota.
  const fields =
    api === 'responses' ? [body.max_output_tokens]
    : api === 'anthropic' ? [body.max_tokens]
    : api === 'ollama' ? [(body.options as Record<string, unknown> | null | undefined)?.num_predict]
    : [body.max_tokens, body.max_completion_tokens];
  let most: number | undefined;
  for (const v of fields) if (typeof v === 'number' && v > 0 && (most === undefined || v > most)) most = v;
  return most;
}

/** Bounds of what a client may ask for; beyond them the request is refused, not passed on. */
export const MAX_OUTPUT_TOKENS = 1_000_000;
export const MAX_CHOICES = 128;

/** A sampling number (both vendors answer 400 to `"temperature": "hot"`); null is the API's default. */
/** Ollama's options that take a number (api/types.go Options, Runner). */
const OLLAMA_NUMBER_OPTIONS = ['temperature', 'top_p', 'top_k', 'min_p', 'typical_p', 'seed', 'num_ctx', 'num_keep', 'repeat_last_n', 'repeat_penalty', 'presence_penalty', 'frequency_penalty', 'num_batch', 'num_gpu', 'num_thread'] as const;

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

/** A prompt given as token ids (completions, embeddings). */
/** A token id: a whole number >= 0 (OpenAI's 400 for anything else, counted against the deployment). */
function isTokenId(v: unknown): boolean {
  return Number.isInteger(v) && (v as number) >= 0;
}

function isTokenIds(v: unknown): boolean {
  return Array.isArray(v) && v.every(isTokenId);
}

const TOOL_CHOICE_MODES = ['none', 'auto', 'required'];

/**
 * OpenAI chat's and Ollama's tools, and OpenAI's tool_choice, as their APIs answer them (400):
 * a translation reads a function tool's name, and would otherwise send on what the upstream
 * refuses with its own words, or nothing at all. Tools of other types pass on to an upstream
 * that may serve them; OpenAI's custom tools are translated for Ollama (openai_to_ollama.ts).
 */
function checkChatTools(body: Readonly<Record<string, unknown>>, api: 'openai' | 'ollama'): void {
  const tools = body.tools;
  if (Array.isArray(tools)) {
    for (let i = 0; i < tools.length; i++) {
      const tool: unknown = tools[i];
      // Ollama reads a tool without a type as a function (its Go struct); OpenAI requires one.
      const type = isObject(tool) ? (tool.type ?? (api === 'ollama' ? 'function' : undefined)) : undefined;
      if (!isObject(tool) || typeof type !== 'string') throw invalidField(`tools[${i}]`, 'must be an object with a string type ("function")');
      if (type === 'custom' && api === 'openai') {
        const custom = tool.custom;
        if (!isObject(custom) || typeof custom.name !== 'string' || custom.name === '') throw invalidField(`tools[${i}].custom.name`, 'is required: a string');
      }
      if (type !== 'function') continue;
      const fn = tool.function;
      if (!isObject(fn) || typeof fn.name !== 'string' || fn.name === '') throw invalidField(`tools[${i}].function.name`, 'is required: a string');
      if (fn.parameters !== undefined && fn.parameters !== null && !isObject(fn.parameters)) throw invalidField(`tools[${i}].function.parameters`, 'must be an object (a JSON Schema)');
    }
  }
  const tc = body.tool_choice;
  if (api !== 'openai' || tc === undefined || tc === null) return;
  if (typeof tc === 'string') {
    if (!TOOL_CHOICE_MODES.includes(tc)) throw invalidField('tool_choice', 'must be "none", "auto", "required" or an object naming a tool');
    return;
  }
  if (!isObject(tc) || typeof tc.type !== 'string') throw invalidField('tool_choice', 'must be "none", "auto", "required" or an object naming a tool');
  if (tc.type === 'function' && (!isObject(tc.function) || typeof tc.function.name !== 'string' || tc.function.name === '')) throw invalidField('tool_choice.function.name', 'must name a function tool');
  if (tc.type === 'custom' && (!isObject(tc.custom) || typeof tc.custom.name !== 'string' || tc.custom.name === '')) throw invalidField('tool_choice.custom.name', 'must name a custom tool');
  if (tc.type === 'allowed_tools' && (!isObject(tc.allowed_tools) || !Array.isArray(tc.allowed_tools.tools))) throw invalidField('tool_choice.allowed_tools.tools', 'must be an array of tools');
}

/** A completion's prompt, as OpenAI takes it: a string, strings, token ids, or arrays of token ids. */
function checkCompletionPrompt(prompt: unknown): void {
  if (prompt === undefined || prompt === null || typeof prompt === 'string') return;
  if (Array.isArray(prompt) && prompt.every((p) => typeof p === 'string' || isTokenId(p) || isTokenIds(p))) return;
  throw invalidField('prompt', 'must be a string, an array of strings, or token ids');
}

/** Base64 of the standard alphabet, as Ollama decodes an image; a `data:` URL of it is taken too (translate/common.ts). */
const BASE64 = /^(?:data:[\w.+-]+\/[\w.+-]+;base64,)?[A-Za-z0-9+/]*={0,2}$/;

function checkImages(v: unknown, field: string): void {
  if (v === undefined || v === null) return;
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'string')) throw invalidField(field, 'must be an array of base64-encoded images');
  v.forEach((x: string, i) => {
    // Unpadded is taken (padded on the way to Ollama); one character past a multiple of 4 is no base64 at all.
    if (x === '' || !BASE64.test(x) || x.slice(x.indexOf(',') + 1).replace(/=+$/, '').length % 4 === 1) throw invalidField(`${field}[${i}]`, 'is not base64 (an encoded image, or a data: URL of one)');
  });
}

/**
 * Anthropic's `thinking: {type: "enabled"}` as Anthropic checks it: a `budget_tokens` integer of
 * at least 1,024, below the client's own `max_tokens` (read here, before a QoS tier caps it),
 * unless the interleaved-thinking beta lets the budget span a turn's tool calls.
 */
function checkThinkingBudget(body: Readonly<Record<string, unknown>>, beta: string | undefined): void {
  const t = body.thinking;
  if (!isObject(t) || t.type !== 'enabled') return;
  const budget = t.budget_tokens;
  if (typeof budget !== 'number' || !Number.isInteger(budget) || budget < 1024) throw invalidField('thinking.budget_tokens', 'is required with type "enabled": an integer of at least 1024');
  const max = body.max_tokens;
  if (typeof max === 'number' && budget >= max && !(beta ?? '').includes('interleaved-thinking')) throw invalidField('thinking.budget_tokens', `must be less than max_tokens (${max})`);
}

function checkNumber(v: unknown, field: string): void {
  if (v === undefined || v === null) return;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidField(field, 'must be a number');
}

function checkInt(v: unknown, field: string, min: number, max: number): void {
  if (v === undefined || v === null) return;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw invalidField(field, `must be an integer between ${min} and ${max}`);
}

/** Deeper than this, a body is refused: translators and JSON.stringify recurse. */
export const MAX_DEPTH = 32;

function checkDepth(v: unknown, d = 1): void {
  // Recursive, without a stack of pairs to allocate: the recursion stops at MAX_DEPTH + 1.
  if (v === null || typeof v !== 'object') return;
  if (d > MAX_DEPTH) throw new BrokerError('invalid_request', `request body nests deeper than ${MAX_DEPTH} levels`);
  if (Array.isArray(v)) for (let i = 0; i < v.length; i++) checkDepth(v[i], d + 1);
  else for (const k in v) checkDepth((v as Record<string, unknown>)[k], d + 1);
}

/** The shape every translator relies on: objects with a string role, content a string, null or parts with a type. */
function checkMessages(messages: unknown): void {
  if (messages === undefined) return;
  if (!Array.isArray(messages)) throw invalidField('messages', 'must be an array');
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i] as Record<string, unknown> | null;
    if (m === null || typeof m !== 'object' || Array.isArray(m)) throw invalidField(`messages[${i}]`, 'must be an object');
    if (typeof m.role !== 'string') throw invalidField(`messages[${i}].role`, 'must be a string');
    // An assistant turn's tool calls (OpenAI and Ollama): the translations read each one's function.
    const calls = m.tool_calls;
    if (calls !== undefined && calls !== null) {
      if (!Array.isArray(calls)) throw invalidField(`messages[${i}].tool_calls`, 'must be an array');
      for (let j = 0; j < calls.length; j++) {
        const call = calls[j] as Record<string, unknown> | null;
        if (call === null || typeof call !== 'object' || Array.isArray(call)) throw invalidField(`messages[${i}].tool_calls[${j}]`, 'must be an object');
        const fn = call.function;
        if (fn !== undefined && (fn === null || typeof fn !== 'object' || Array.isArray(fn))) throw invalidField(`messages[${i}].tool_calls[${j}].function`, 'must be an object');
      }
    }
    const c = m.content;
    if (c === undefined || c === null || typeof c === 'string') continue;
    if (!Array.isArray(c)) throw invalidField(`messages[${i}].content`, 'must be a string or an array of parts');
    for (let j = 0; j < c.length; j++) {
      const part = c[j] as Record<string, unknown> | null;
      if (part === null || typeof part !== 'object' || typeof part.type !== 'string') throw invalidField(`messages[${i}].content[${j}]`, 'must be an object with a string type');
      if (part.type === 'text' && typeof part.text !== 'string') throw invalidField(`messages[${i}].content[${j}].text`, 'is required in a text part: a string');
    }
  }
}

/**
 * Refuses a prompt past the limits; returns its characters. `count`: the messages sent
 * upstream; `field`: the client's name for the prompt when it has one (Responses' and
 * embeddings' `input`), else messages or prompt.
 */
function checkSize(parts: PromptParts, limits: PromptLimits, count: number, field?: string): number {
  if (count > limits.maxMessages) throw overLimit(field ?? 'messages', `has ${count} messages; at most ${limits.maxMessages} (LLM_MAX_MESSAGES)`);
  // The limit bounds text a thread translates; an image's bytes are the body limit's.
  const { chars, images } = promptSize(parts);
  if (chars > limits.maxPromptChars) throw overLimit(field ?? (parts.messages !== undefined ? 'messages' : 'prompt'), `holds ${chars} characters of prompt; at most ${limits.maxPromptChars} (LLM_MAX_PROMPT_CHARS)`);
  return chars + images * IMAGE_CHARS;
}

/** A prompt past LLM_MAX_MESSAGES or LLM_MAX_PROMPT_CHARS (details.limit: what a truncation may cure). */
function overLimit(field: string, what: string): BrokerError {
  return new BrokerError('invalid_request', `${field} ${what}`, { details: { field, limit: true } });
}

function invalidField(field: string, what: string): BrokerError {
  return new BrokerError('invalid_request', `${field} ${what}`, { details: { field } });
}

/** A label names a usage profile and a predictor: short and plain, or refused (it is kept in memory). */
const LABEL = /^[A-Za-z0-9._:-]{1,64}$/;

function labelOf(h: string | undefined): string | undefined {
  if (h === undefined || h === '') return undefined;
  if (!LABEL.test(h)) throw new BrokerError('invalid_request', 'x-broker-label must be 1 to 64 characters of A-Z a-z 0-9 . _ : -', { details: { field: 'x-broker-label' } });
  return h;
}

/** Characters of a field: a string's, else its JSON's (parts, blocks, tool calls); none when absent. */
function charsOf(v: unknown): number {
  return typeof v === 'string' ? v.length : v === undefined || v === null ? 0 : JSON.stringify(v).length;
}

/**
 * What an image counts, in characters of prompt: 1,024 tokens whatever its bytes. Vision
 * models take 256 (Gemma 3) to about 1,600 (Anthropic's largest) tokens an image; counted as
 * its base64, a 200 KB screenshot was 66,000 tokens, refused by any window and quota. Audio
 * and files (a PDF) count the same: their tokens depend on their length and pages, which
 * their base64 does not tell (150 KB of PDF read as 50,000 tokens, refused by a 32k window);
 * the upstream's usage corrects the quota after the reply.
 */
const IMAGE_CHARS = 1024 * 4;

/**
 * An image, audio or file part or block: OpenAI chat's image_url, input_audio and file,
 * Responses' input_image and input_file, Anthropic's image.
 */
function isMediaPart(x: unknown): boolean {
  if (x === null || typeof x !== 'object') return false;
  const type = (x as { type?: unknown }).type;
  return type === 'image_url' || type === 'input_image' || type === 'image' || type === 'input_audio' || type === 'file' || type === 'input_file';
}

/**
 * Blocks never sent upstream: an earlier turn's Anthropic thinking (text and signature, or
 * redacted data), which Anthropic leaves out of the context too. Counted, Claude Code's long
 * sessions with extended thinking reached the window long before their real size.
 */
function isDroppedBlock(x: unknown): boolean {
  if (x === null || typeof x !== 'object') return false;
  const type = (x as { type?: unknown }).type;
  return type === 'thinking' || type === 'redacted_thinking';
}

/** A prompt's size: characters of text (JSON for parts, blocks and tool calls) and images apart. */
interface PromptSize {
  chars: number;
  images: number;
}

/**
 * A message's content (or a tool's output): its JSON's characters, media parts apart, wherever
 * they are nested (a tool_result's screenshot), and thinking blocks left out.
 */
function addContent(size: PromptSize, v: unknown): void {
  if (typeof v === 'string') size.chars += v.length;
  else if (v !== undefined && v !== null) {
    size.chars += (
      JSON.stringify(v, (_k, x: unknown) => {
        if (isDroppedBlock(x)) return undefined;
        if (!isMediaPart(x)) return x;
        size.images++;
        return 0;
      }) ?? ''
    ).length;
  }
}

/**
 * The prompt's text: message contents (parts as JSON), an assistant turn's tool calls,
 * Responses' tool call arguments (custom input, shell action) and outputs, prompt, system, and the tool
 * definitions (as JSON); its images (parts, blocks, Ollama's `images`) counted apart.
 */
function promptSize(r: PromptParts): PromptSize {
  const size: PromptSize = { chars: 0, images: r.images ?? 0 };
  for (const m of r.messages ?? []) {
    const o = m as { content?: unknown; images?: unknown; tool_calls?: unknown; arguments?: unknown; output?: unknown; input?: unknown; action?: unknown; tools?: unknown } | null;
    if (o === null || typeof o !== 'object') continue;
    addContent(size, o.content);
    addContent(size, o.output);
    if (Array.isArray(o.images)) size.images += o.images.length;
    // Responses' custom_tool_call input and local_shell_call action go upstream as a call's arguments.
    size.chars += charsOf(o.tool_calls) + charsOf(o.arguments) + charsOf(o.input) + charsOf(o.action);
    // Tools offered in the input (Codex's additional_tools, what its tool_search found): definitions as JSON.
    if (o.tools !== undefined) size.chars += charsOf(o.tools);
  }
  if (r.prompt !== undefined) size.chars += r.prompt.length;
  if (r.suffix !== undefined) size.chars += r.suffix.length;
  if (r.promptTokenIds !== undefined) size.chars += r.promptTokenIds * CHARS_PER_TOKEN;
  if (r.system !== undefined) size.chars += r.system.length;
  size.chars += charsOf(r.tools);
  return size;
}

/** Characters of prompt, as tokens are estimated from them: the text's, and IMAGE_CHARS an image (not its base64). */
export function promptCharsOf(r: PromptParts): number {
  const { chars, images } = promptSize(r);
  return chars + images * IMAGE_CHARS;
}

/** The estimate's ratio: about 4 characters of English per token. */
export const CHARS_PER_TOKEN = 4;

/** Tokens that must fit one context window (a group's maxContextTokens): the prompt and its output, or an embeddings batch's longest input. */
export function contextTokensOf(r: Pick<LlmRequest, 'promptChars' | 'contextChars' | 'maxTokens'>): number {
  return r.contextChars !== undefined ? tokensOfChars(r.contextChars) : tokensOfChars(r.promptChars) + (r.maxTokens ?? 0);
}

/** Tokens estimated from characters of prompt text (4 per token). */
export function tokensOfChars(chars: number): number {
  return Math.ceil(chars / CHARS_PER_TOKEN);
}

export function promptTokensOf(r: PromptParts): number {
  return tokensOfChars(promptCharsOf(r));
}
