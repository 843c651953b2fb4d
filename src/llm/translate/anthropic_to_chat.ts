// An Anthropic Messages API client (POST /v1/messages) served by a chat upstream,
// OpenAI-compatible or Ollama (the chat body is then mapped on by openai_to_ollama).
//   request:  system, messages with text (and image, tool_use, tool_result) blocks,
//             max_tokens, stop_sequences, tools → a chat body
//   response: a whole chat reply (deltas.ts WholeReply) → a Message
//   stream:   deltas → message_start, ping, content_block_start / _delta / _stop per
//             block (text, then tool_use), message_delta (stop_reason, usage), message_stop.
//             A failure after the first byte ends with an `error` event, as Anthropic's own.
//
// Blocks are written one at a time, as Anthropic does: a tool call closes the text
// block before it. A tool call's block closes when what follows it (the next call, text)
// begins and its arguments are a whole JSON object, so that no fragment of it can follow;
// else what follows waits, and is written whole at the end. A tool call's input is written
// as one input_json_delta when its block closes, always a JSON object (the same `input` as
// a whole reply's). Reasoning text from the upstream is a thinking block before the
// answer when the request asked for thinking (`thinking.type` enabled or adaptive), as
// Anthropic's, with an empty signature (there is none to give; a thinking block sent back
// in a later turn is not passed on); asked for none, it is dropped.

import { createHash } from 'node:crypto';
import { BrokerError } from '../../errors.ts';
import { appendToolName, isBase64DataUrl, isWholeJsonObject, requireObject } from './common.ts';
import { QUIET_EVENTS, keepAliveDue, type Delta, type WholeReply } from './deltas.ts';
import type { Api, OpenAIChatRequest, OpenAIMessage, OpenAIToolCall, ReplyContext, Usage } from './types.ts';

/** The longest `user` OpenAI takes. */
const MAX_USER_CHARS = 64;

// ---- request ----

function invalid(field: string, what: string): BrokerError {
  return new BrokerError('invalid_request', `${field} ${what}`, { details: { field } });
}

function textOfBlocks(v: unknown, field: string): string {
  if (typeof v === 'string') return v;
  if (!Array.isArray(v)) throw invalid(field, 'must be a string or an array of text blocks');
  return v
    .map((b, i) => {
      const o = b as Record<string, unknown> | null;
      if (o?.['type'] !== 'text' || typeof o['text'] !== 'string') throw invalid(`${field}[${i}]`, 'must be a text block');
      return o['text'];
    })
    .join('\n');
}

/**
 * An image block → an image_url part (a data URL for base64 sources). `ollama`: the upstream
 * takes base64 only, so a URL source is refused here, naming the client's field (past this
 * point it is chat's image_url).
 */
function imagePart(b: Record<string, unknown>, field: string, ollama: boolean): { type: string; [k: string]: unknown } {
  const src = b['source'] as Record<string, unknown> | undefined;
  if (src?.['type'] === 'base64' && typeof src['data'] === 'string') return { type: 'image_url', image_url: { url: `data:${String(src['media_type'] ?? 'image/png')};base64,${src['data']}` } };
  if (src?.['type'] === 'url' && typeof src['url'] === 'string') {
    if (ollama && !isBase64DataUrl(src['url'])) throw invalid(`${field}.source.url`, 'cannot be sent to this model, which Ollama serves: it takes images as base64 only (a base64 source)');
    return { type: 'image_url', image_url: { url: src['url'] } };
  }
  throw invalid(`${field}.source`, 'must be a base64 or url image source');
}

/**
 * A tool_result's content: its text for the tool message, and its images (a screenshot
 * tool's, say), which a chat tool message cannot carry: they follow in the user turn.
 */
function toolResultOf(c: unknown, field: string, ollama: boolean): { text: string; images: Array<{ type: string; [k: string]: unknown }> } {
  if (c === undefined || c === null) return { text: '', images: [] };
  if (typeof c === 'string') return { text: c, images: [] };
  if (!Array.isArray(c)) throw invalid(field, 'must be a string or an array of text and image blocks');
  const texts: string[] = [];
  const images: Array<{ type: string; [k: string]: unknown }> = [];
  const loaded: string[] = [];
  c.forEach((b, i) => {
    const o = b as Record<string, unknown> | null;
    if (o?.['type'] === 'text' && typeof o['text'] === 'string') texts.push(o['text']);
    // What a client-run tool search found (Claude Code's ToolSearch): the tools are offered from now on (toolsOf).
    else if (o?.['type'] === 'tool_reference' && typeof o['tool_name'] === 'string') loaded.push(o['tool_name']);
    else if (o?.['type'] === 'image') images.push(imagePart(o, `${field}[${i}]`, ollama));
    else if (o?.['type'] === 'document') {
      const d = documentOf(o, `${field}[${i}]`, ollama);
      if (d.text !== '') texts.push(d.text);
      images.push(...d.images);
    }
    else if (o?.['type'] === 'search_result') texts.push(searchResultText(o, `${field}[${i}]`));
    else throw invalid(`${field}[${i}]`, 'must be a text, image, document, search_result or tool_reference block');
  });
  if (loaded.length > 0) texts.push(`Tools loaded: ${loaded.join(', ')}`);
  return { text: texts.join('\n'), images };
}

/** A system message's text: a string or text blocks, one a line; never empty. */
function systemText(content: unknown, field: string): string {
  const text = textOfBlocks(content, field);
  if (text === '') throw invalid(field, 'a system message needs text: a string or text blocks');
  return text;
}

/** Blocks of tools Anthropic's servers run: `server_tool_use`, `web_search_tool_result`, `mcp_tool_use`, … */
const SERVER_TOOL_BLOCK = /^(server_tool_use|mcp_tool_use|mcp_tool_result|container_upload|[a-z_]+_tool_result)$/;

/** One Anthropic message → its chat messages (a user turn with tool results becomes tool messages first). */
function chatMessages(m: unknown, i: number, last: boolean, ollama: boolean): OpenAIMessage[] {
  const msg = m as Record<string, unknown>;
  const role = msg['role'];
  const content = msg['content'];
  // Claude Code's system messages between the turns (its mid-conversation-system beta): a chat
  // system message where they stand.
  if (role === 'system') return [{ role: 'system', content: systemText(content, `messages[${i}].content`) }];
  if (role !== 'user' && role !== 'assistant') throw invalid(`messages[${i}].role`, 'must be user, assistant or system');
  // Anthropic's rule: every message has content but an optional final assistant one (a
  // prefill, here with nothing to prefill: dropped). Forwarded, an empty turn became a
  // chat request with no prompt, answered 200.
  const empty = content === '' || (Array.isArray(content) && content.length === 0);
  if (empty) {
    if (last && role === 'assistant') return [];
    throw invalid(`messages[${i}].content`, 'must not be empty: all messages must have non-empty content except for the optional final assistant message');
  }
  if (typeof content === 'string') return [{ role, content }];
  if (!Array.isArray(content)) throw invalid(`messages[${i}].content`, 'must be a string or an array of content blocks');
  const out: OpenAIMessage[] = [];
  const parts: Array<{ type: string; [k: string]: unknown }> = [];
  const calls: OpenAIToolCall[] = [];
  let image = false;
  for (let j = 0; j < content.length; j++) {
    const b = content[j] as Record<string, unknown>;
    const field = `messages[${i}].content[${j}]`;
    switch (b['type']) {
      case 'text':
        if (typeof b['text'] !== 'string') throw invalid(`${field}.text`, 'must be a string');
        if (b['text'] === '') throw invalid(`${field}.text`, 'text content blocks must be non-empty');
        parts.push({ type: 'text', text: b['text'] });
        break;
      case 'image':
        parts.push(imagePart(b, field, ollama));
        image = true;
        break;
      case 'tool_use': {
        const input = b['input'] ?? {};
        if (typeof b['name'] !== 'string' || b['name'] === '') throw invalid(`${field}.name`, 'must be a non-empty string');
        if (typeof input !== 'object' || Array.isArray(input)) throw invalid(`${field}.input`, 'must be an object');
        calls.push({ id: String(b['id'] ?? ''), type: 'function', function: { name: b['name'], arguments: JSON.stringify(input) } });
        break;
      }
      case 'tool_result': {
        const r = toolResultOf(b['content'], `${field}.content`, ollama);
        // Chat has no error flag on a tool result: the model reads it in the text (once: a
        // tool's own "Error: ..." is not prefixed again).
        const text = b['is_error'] !== true ? r.text : r.text === '' ? 'Error' : /^error\b/i.test(r.text) ? r.text : `Error: ${r.text}`;
        out.push({ role: 'tool', tool_call_id: String(b['tool_use_id'] ?? ''), content: text });
        if (r.images.length > 0) {
          parts.push(...r.images);
          image = true;
        }
        break;
      }
      case 'document': {
        const d = documentOf(b, field, ollama);
        if (d.text !== '') parts.push({ type: 'text', text: d.text });
        if (d.images.length > 0) {
          parts.push(...d.images);
          image = true;
        }
        break;
      }
      case 'search_result':
        parts.push({ type: 'text', text: searchResultText(b, field) });
        break;
      case 'thinking':
      case 'redacted_thinking':
        break;
      default:
        // A server tool's call and result in the history of a session begun against Anthropic's
        // API (web search, web fetch, code execution, MCP): nothing here ran them, and a chat
        // upstream has no such turns; left out, as server tools in `tools` are.
        if (typeof b['type'] === 'string' && SERVER_TOOL_BLOCK.test(b['type'])) break;
        throw invalid(`${field}.type`, `${String(b['type'])} is not supported (text, image, document with a text source, search_result, tool_use, tool_result)`);
    }
  }
  if (parts.length > 0 || calls.length > 0) {
    const text = image ? parts : parts.map((p) => p['text'] as string).join('\n');
    const turn: OpenAIMessage = { role, content: calls.length > 0 && text === '' ? null : text };
    if (calls.length > 0) turn.tool_calls = calls;
    out.push(turn);
  }
  return out;
}

/** Tools Anthropic's servers run (web search and fetch, code execution, tool search): nothing here runs them. */
const SERVER_TOOL = /^(web_search|web_fetch|code_execution|tool_search_tool)_/;

/** Whether a tool is one Anthropic's servers run (left out: offered, it cannot be run here). */
function isServerTool(t: unknown): boolean {
  const type = (t as Record<string, unknown> | null)?.['type'];
  return typeof type === 'string' && SERVER_TOOL.test(type);
}

/** The tools a conversation's tool results reference (tool_reference blocks: what a tool search found). */
function referencedTools(messages: readonly unknown[]): Set<string> {
  const names = new Set<string>();
  for (const m of messages) {
    const content = (m as Record<string, unknown> | null)?.['content'];
    if (!Array.isArray(content)) continue;
    for (const b of content) {
      const r = (b as Record<string, unknown> | null)?.['content'];
      if ((b as Record<string, unknown> | null)?.['type'] !== 'tool_result' || !Array.isArray(r)) continue;
      for (const x of r) if ((x as Record<string, unknown> | null)?.['type'] === 'tool_reference' && typeof (x as Record<string, unknown>)['tool_name'] === 'string') names.add((x as Record<string, string>)['tool_name']!);
    }
  }
  return names;
}

/**
 * Custom tools → chat functions; server tools left out; tools Anthropic defines the schema of
 * (bash, text editor, computer) have none to send. A deferred tool (`defer_loading`, for a
 * client-run tool search) is offered once a tool result references it, as Anthropic loads it.
 */
function toolsOf(tools: unknown, referenced: ReadonlySet<string>): unknown[] | undefined {
  if (tools === undefined || tools === null) return undefined;
  if (!Array.isArray(tools)) throw invalid('tools', 'must be an array');
  const out: unknown[] = [];
  tools.forEach((t, i) => {
    if (isServerTool(t)) return;
    const o = t as Record<string, unknown> | null;
    if (o === null || typeof o['name'] !== 'string' || o['input_schema'] === undefined) throw invalid(`tools[${i}]`, 'must be a custom tool with a name and an input_schema (server tools are left out; tools whose schema Anthropic defines have none to send a chat upstream)');
    if (o['defer_loading'] === true && !referenced.has(o['name'])) return;
    const fn: Record<string, unknown> = { name: o['name'], parameters: o['input_schema'] };
    if (typeof o['description'] === 'string') fn['description'] = o['description'];
    out.push({ type: 'function', function: fn });
  });
  return out;
}

/**
 * A document block whose source is text (`{type: "text", data}`, or `content` blocks): its
 * text for a chat upstream, its title and context first, and the images among its content
 * blocks (a content source takes text and image blocks), which go on as image parts. A PDF
 * (base64 or URL) has no chat form: refused, naming the block.
 */
function documentOf(b: Record<string, unknown>, field: string, ollama: boolean): { text: string; images: Array<{ type: string; [k: string]: unknown }> } {
  const src = b['source'] as Record<string, unknown> | null | undefined;
  let text: string | undefined;
  const images: Array<{ type: string; [k: string]: unknown }> = [];
  if (src?.['type'] === 'text' && typeof src['data'] === 'string') text = src['data'];
  else if (src?.['type'] === 'content') {
    const c = src['content'];
    if (typeof c === 'string') text = c;
    else if (Array.isArray(c)) {
      const texts: string[] = [];
      c.forEach((x, k) => {
        const o = x as Record<string, unknown> | null;
        if (o?.['type'] === 'text' && typeof o['text'] === 'string') {
          if (o['text'] !== '') texts.push(o['text']);
        } else if (o?.['type'] === 'image') images.push(imagePart(o, `${field}.source.content[${k}]`, ollama));
        else throw invalid(`${field}.source.content[${k}]`, 'must be a text or image block');
      });
      text = texts.join('\n');
    }
  }
  if (text === undefined) throw invalid(`${field}.source`, 'a document is taken with a text source only ({"type": "text", "data": ...} or text and image content blocks): a PDF, a URL or a file has no form a chat upstream reads');
  const head = [b['title'], b['context']].filter((x): x is string => typeof x === 'string' && x !== '');
  return { text: [...head, text].filter((x) => x !== '').join('\n'), images };
}

/**
 * A search_result block (a RAG tool's or the client's retrieved passage, for citations): its
 * title, source and text blocks for a chat upstream, which has no citations.
 */
function searchResultText(b: Record<string, unknown>, field: string): string {
  const c = b['content'];
  if (!Array.isArray(c) || !c.every((x) => typeof (x as { text?: unknown } | null)?.text === 'string')) throw invalid(`${field}.content`, 'must be an array of text blocks');
  const head = [b['title'], b['source']].filter((x): x is string => typeof x === 'string' && x !== '');
  return [...head, ...c.map((x) => (x as { text: string }).text)].join('\n');
}

/** disable_parallel_tool_use: chat's parallel_tool_calls false. */
function noParallel(tc: unknown): boolean {
  return tc !== null && typeof tc === 'object' && (tc as Record<string, unknown>)['disable_parallel_tool_use'] === true;
}

function toolChoiceOf(tc: unknown): unknown {
  if (tc === null || tc === undefined) return undefined;
  if (typeof tc !== 'object' || Array.isArray(tc)) throw invalid('tool_choice', 'must be an object: {"type": "auto" | "any" | "tool" | "none"}');
  const o = tc as Record<string, unknown>;
  switch (o['type']) {
    case 'auto':
      return 'auto';
    case 'any':
      return 'required';
    case 'none':
      return 'none';
    case 'tool':
      if (typeof o['name'] !== 'string' || o['name'] === '') throw invalid('tool_choice.name', 'must name a tool');
      return { type: 'function', function: { name: o['name'] } };
    default:
      throw invalid('tool_choice.type', 'must be auto, any, tool or none');
  }
}

/**
 * Structured output: `output_config.format` (and `output_format`, its beta name), a JSON
 * schema the reply must follow; the SDKs rely on the server to hold the model to it.
 */
function outputFormat(b: Record<string, unknown>): Record<string, unknown> | undefined {
  const cfg = b['output_config'];
  const [field, f] = cfg !== null && typeof cfg === 'object' && (cfg as Record<string, unknown>)['format'] != null ? ['output_config.format', (cfg as Record<string, unknown>)['format']] : ['output_format', b['output_format']];
  if (f === undefined || f === null) return undefined;
  const o = f as Record<string, unknown>;
  if (typeof f !== 'object' || o['type'] !== 'json_schema') throw invalid(`${field}.type`, 'must be json_schema');
  const schema = o['schema'];
  if (schema === null || typeof schema !== 'object' || Array.isArray(schema)) throw invalid(`${field}.schema`, 'must be a JSON schema object');
  return schema as Record<string, unknown>;
}

/** `thinking`: true (enabled, adaptive), false (disabled), undefined (not said); anything else is 400. */
function thinkingOf(b: Record<string, unknown>): boolean | undefined {
  const t = b['thinking'];
  if (t === undefined || t === null) return undefined;
  const type = typeof t === 'object' ? (t as Record<string, unknown>)['type'] : undefined;
  // enabled's budget is checked at the front (request.ts), against the client's own max_tokens.
  if (type === 'enabled' || type === 'adaptive') return true;
  // between_tools (SDK 0.129): thinking off, the model's short notes between tool calls coming
  // back as thinking blocks; the SDK itself degrades it to disabled on fallback hops.
  if (type === 'disabled' || type === 'between_tools') return false;
  throw invalid('thinking.type', 'must be enabled, adaptive, between_tools or disabled');
}

/** The client asked for thinking blocks (a reply holds them only then, as Anthropic's). */
function wantsThinking(request: Readonly<Record<string, unknown>> | undefined): boolean {
  const type = (request?.['thinking'] as Record<string, unknown> | null | undefined)?.['type'];
  return type === 'enabled' || type === 'adaptive' || type === 'between_tools';
}

/** A Messages body → an OpenAI chat body (model left as sent; the provider translator sets it) for `provider`'s upstream. */
export function chatRequest(body: unknown, provider: Api = 'openai'): OpenAIChatRequest {
  const b = requireObject(body);
  if (!Array.isArray(b['messages'])) throw invalid('messages', 'must be an array');
  const messages: OpenAIMessage[] = [];
  if (b['system'] !== undefined && b['system'] !== null) {
    const system = textOfBlocks(b['system'], 'system');
    if (system !== '') messages.push({ role: 'system', content: system });
  }
  b['messages'].forEach((m, i, all) => messages.push(...chatMessages(m, i, i === all.length - 1, provider === 'ollama')));
  const out: OpenAIChatRequest = { model: String(b['model']), messages, stream: b['stream'] === true };
  if (typeof b['max_tokens'] === 'number') out.max_tokens = b['max_tokens'];
  if (Array.isArray(b['stop_sequences']) && b['stop_sequences'].length > 0) out.stop = b['stop_sequences'].filter((s): s is string => typeof s === 'string');
  for (const k of ['temperature', 'top_p'] as const) if (typeof b[k] === 'number') out[k] = b[k];
  // For an Ollama upstream (its options.top_k); OpenAI refuses the field (translate/index.ts leaves it out there).
  if (typeof b['top_k'] === 'number') out['top_k'] = b['top_k'];
  // Thinking disabled is Ollama's `think: false` (an OpenAI-compatible server has no such field).
  // Enabled is not `think: true`: Ollama refuses that for a model that cannot think, where
  // Anthropic's API, and the model's default here, just answer.
  if (thinkingOf(b) === false) out['think'] = false;
  const format = outputFormat(b);
  if (format !== undefined) out.response_format = { type: 'json_schema', json_schema: { name: 'response', schema: format } };
  const tools = toolsOf(b['tools'], referencedTools(b['messages']));
  // Checked with or without tools, as Anthropic does.
  const choice = toolChoiceOf(b['tool_choice']);
  const forced = (b['tool_choice'] as Record<string, unknown> | null | undefined)?.['name'];
  if (typeof forced === 'string' && Array.isArray(b['tools']) && b['tools'].some((t) => isServerTool(t) && (t as Record<string, unknown>)['name'] === forced)) {
    throw invalid('tool_choice.name', `${forced} is a server tool: nothing here runs it`);
  }
  // A tool forced that is not offered: Anthropic's 400 (forwarded, Ollama dropped it and answered as it liked).
  if (typeof forced === 'string' && (b['tool_choice'] as Record<string, unknown>)['type'] === 'tool' && !(tools ?? []).some((t) => (t as { function: { name: string } }).function.name === forced)) {
    throw invalid('tool_choice.name', `${forced} is not one of the tools in tools`);
  }
  if (tools !== undefined && tools.length > 0) {
    out.tools = tools;
    if (choice !== undefined) out['tool_choice'] = choice;
    if (noParallel(b['tool_choice'])) out['parallel_tool_calls'] = false;
  }
  // OpenAI refuses a `user` over 64 characters, and Claude Code's user_id is about 150: a
  // longer one goes as its SHA-256 (64 hex digits), which still tells users apart.
  const user = (b['metadata'] as Record<string, unknown> | undefined)?.['user_id'];
  if (typeof user === 'string') out['user'] = user.length <= MAX_USER_CHARS ? user : createHash('sha256').update(user).digest('hex');
  return out;
}

// ---- the Message ----

/**
 * OpenAI finish reasons → Anthropic stop reasons. A reply with tool calls that says `stop`
 * (OpenAI's own when tool_choice names a function, some vLLM tool parsers) or the legacy
 * `function_call` is `tool_use`: an agent loop runs the tools only on that reason.
 */
export function stopReason(finish: string, hadToolCalls = false): string {
  if (finish === 'length') return 'max_tokens';
  if (finish === 'tool_calls' || (hadToolCalls && (finish === 'stop' || finish === 'function_call'))) return 'tool_use';
  if (finish === 'content_filter') return 'refusal';
  return 'end_turn';
}

/** The request's stop_sequences (strings only: the rest were refused). */
function stopSequences(request: Readonly<Record<string, unknown>> | undefined): readonly string[] {
  const s = request?.['stop_sequences'];
  return Array.isArray(s) ? s.filter((x): x is string => typeof x === 'string') : [];
}

/**
 * stop_reason and stop_sequence. A stop on one of the request's stop_sequences is Anthropic's
 * `stop_sequence` with the string, when the upstream says which (vLLM's stop_reason; OpenAI
 * and Ollama do not: then end_turn and null).
 */
function stopOf(finish: string, hadToolCalls: boolean, said: string | null | undefined, stops: readonly string[]): { stop_reason: string; stop_sequence: string | null } {
  const reason = stopReason(finish, hadToolCalls);
  if (reason === 'end_turn' && typeof said === 'string' && stops.includes(said)) return { stop_reason: 'stop_sequence', stop_sequence: said };
  return { stop_reason: reason, stop_sequence: null };
}

/**
 * Anthropic counts cache reads apart from input_tokens (the prompt is their sum), unlike
 * OpenAI's cached_tokens, a part of it. Its usage always has both cache fields, 0 when unused.
 */
function usageObject(u: Usage): Record<string, number> {
  const cached = u.cachedTokens ?? 0;
  return { input_tokens: u.promptTokens - cached, cache_creation_input_tokens: 0, cache_read_input_tokens: cached, output_tokens: u.completionTokens };
}

function parsedInput(args: string): unknown {
  try {
    const v: unknown = JSON.parse(args === '' ? '{}' : args);
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v;
  } catch {
    // a model can write broken JSON; keep its text rather than lose it
  }
  return { arguments: args };
}

/**
 * A streamed call's input_json_delta text: the upstream's arguments when they are a JSON
 * object, else the JSON of what a whole reply says (parsedInput), so that the deltas
 * always add up to the same object as `input` in a whole reply ('' for none: input {}).
 */
function inputJson(args: string): string {
  if (args === '') return '';
  const v = parsedInput(args);
  return (v as { arguments?: unknown }).arguments === args ? JSON.stringify(v) : args;
}

/** A whole chat reply → the Message. */
export function message(reply: WholeReply, ctx: ReplyContext): Record<string, unknown> {
  const content: unknown[] = [];
  if (reply.thinking !== '' && wantsThinking(ctx.request)) content.push(thinkingBlock(reply.thinking));
  // An empty reply is one empty text block; one of thinking only (cut while the model thought) is its thinking block, as Anthropic's.
  if (reply.text !== '' || (reply.tools.length === 0 && content.length === 0)) content.push({ type: 'text', text: reply.text });
  for (const t of reply.tools) content.push({ type: 'tool_use', id: t.id, name: t.name, input: parsedInput(t.arguments) });
  return {
    id: 'msg_' + ctx.id,
    type: 'message',
    role: 'assistant',
    model: ctx.model,
    content,
    ...stopOf(reply.finish, reply.tools.length > 0, reply.stopSaid, stopSequences(ctx.request)),
    usage: usageObject(reply.usage),
  };
}

function thinkingBlock(thinking: string): Record<string, unknown> {
  return { type: 'thinking', thinking, signature: '' };
}

// ---- streaming ----

export interface AnthropicWriter {
  readonly id: string;
  readonly model: string;
  /** The prompt's usage when known before the reply (a cache replay): message_start says it, as Anthropic's does. */
  readonly known: Usage | null;
  /** Else the prompt's estimate, for message_start (message_delta carries the upstream's count). */
  readonly promptEstimate: number;
  started: boolean;
  /** Index of the block being written, -1 for none; 'text' or the tool call's index. */
  block: number;
  open: 'thinking' | 'text' | number | null;
  /** Tool call index → its block index, once started. */
  toolBlocks: Map<number, number>;
  /**
   * The open tool block's arguments so far: written as one input_json_delta when it closes,
   * since only then is it known whether they are a JSON object (a model can write broken
   * JSON, and the SDKs throw on deltas that do not add up to one).
   */
  args: string;
  /**
   * The open tool block's content_block_start, not written yet: it names the call, and a
   * name may come in pieces (some OpenAI-compatible servers split it), so it waits for the
   * first piece of the arguments, or for the block to close.
   */
  pendingStart: { id: string; name: string } | null;
  /**
   * What arrives once a tool block is open but belongs elsewhere, while the open call is not
   * whole: other calls (an upstream may interleave their fragments) and text. A block cannot
   * be reopened once closed, so these are written whole at the end instead of being lost.
   */
  lateTools: Map<number, { id: string | undefined; name: string; args: string }>;
  lateText: string;
  finish: string | null;
  /** The stop sequence the upstream said ended the reply (vLLM), and the request's. */
  stopSaid: string | null;
  readonly stops: readonly string[];
  usage: Usage | null;
  tokens: number;
  /** The request asked for thinking: reasoning before the answer is a thinking block. */
  readonly thinking: boolean;
  /** The thinking block's index once begun, else -1 (it is always the first block). */
  thinkingBlock: number;
  /** Upstream events of reasoning dropped (not asked for, or after the answer began) since the last ping (keepAliveDue). */
  quiet: number;
  done: boolean;
}

export function anthropicWriter(ctx: ReplyContext, known: Usage | null = null): AnthropicWriter {
  return { id: ctx.id, model: ctx.model, known, promptEstimate: ctx.promptEstimate ?? 0, started: false, block: -1, open: null, toolBlocks: new Map(), args: '', pendingStart: null, lateTools: new Map(), lateText: '', finish: null, stopSaid: null, stops: stopSequences(ctx.request), usage: null, tokens: 0, thinking: wantsThinking(ctx.request), thinkingBlock: -1, quiet: 0, done: false };
}

function event(type: string, data: Record<string, unknown>): string {
  return 'event: ' + type + '\ndata: ' + JSON.stringify({ type, ...data }) + '\n\n';
}

function start(w: AnthropicWriter): string {
  if (w.started) return '';
  w.started = true;
  const msg = { id: 'msg_' + w.id, type: 'message', role: 'assistant', model: w.model, content: [], stop_reason: null, stop_sequence: null, usage: usageObject(w.known === null ? { promptTokens: w.promptEstimate, completionTokens: 0 } : { ...w.known, completionTokens: 0 }) };
  return event('message_start', { message: msg }) + event('ping', {});
}

/** The open tool block's content_block_start, if it waits still. */
function startTool(w: AnthropicWriter): string {
  const p = w.pendingStart;
  if (p === null) return '';
  w.pendingStart = null;
  return event('content_block_start', { index: w.block, content_block: { type: 'tool_use', id: p.id, name: p.name, input: {} } });
}

function closeBlock(w: AnthropicWriter): string {
  if (w.open === null) return '';
  const json = typeof w.open === 'number' ? inputJson(w.args) : '';
  const begin = startTool(w);
  w.open = null;
  w.args = '';
  const delta = json === '' ? '' : event('content_block_delta', { index: w.block, delta: { type: 'input_json_delta', partial_json: json } });
  return begin + delta + event('content_block_stop', { index: w.block });
}

/** One upstream event → its Messages events. */
export function anthropicDelta(w: AnthropicWriter, d: Delta): string {
  if (w.done) return '';
  let out = start(w);
  // Reasoning is output the upstream generated, shown or dropped: counted either way (Anthropic's output_tokens includes thinking).
  if (d.thinking !== '') {
    w.tokens++;
    out += think(w, d);
  }
  if (d.text !== '' && !movesOn(w)) {
    w.tokens++;
    w.lateText += d.text;
  } else if (d.text !== '') {
    if (w.open !== 'text') {
      out += closeBlock(w);
      w.open = 'text';
      w.block++;
      out += event('content_block_start', { index: w.block, content_block: { type: 'text', text: '' } });
    }
    w.tokens++;
    out += event('content_block_delta', { index: w.block, delta: { type: 'text_delta', text: d.text } });
  }
  if (d.tools !== null) {
    for (const t of d.tools) {
      let index = w.toolBlocks.get(t.index);
      // A fragment of a call whose block closed whole (a broken upstream): dropped, a block cannot reopen.
      if (index !== undefined && w.open !== t.index) continue;
      // One tool block is streamed at a time. A call that begins while it is open and not
      // whole streams into lateTools, since the open block must stay open until no fragment
      // of its call can follow.
      if (index === undefined && (w.lateTools.has(t.index) || !movesOn(w))) {
        let late = w.lateTools.get(t.index);
        if (late === undefined) w.lateTools.set(t.index, (late = { id: t.id, name: '', args: '' }));
        if (t.id !== undefined) late.id ??= t.id;
        late.name = appendToolName(late.name, t.name, late.args);
        if (t.arguments !== undefined && t.arguments !== '') {
          w.tokens++;
          late.args += t.arguments;
        }
        continue;
      }
      if (index === undefined) {
        out += closeBlock(w);
        index = ++w.block;
        w.toolBlocks.set(t.index, index);
        w.open = t.index;
        w.pendingStart = { id: t.id ?? `toolu_${w.id}_${t.index}`, name: t.name ?? '' };
      } else if (w.pendingStart !== null) {
        w.pendingStart.name = appendToolName(w.pendingStart.name, t.name, w.args);
      }
      if (t.arguments !== undefined && t.arguments !== '') {
        out += startTool(w);
        w.tokens++;
        w.args += t.arguments;
      }
      // A call that came whole (Ollama's) closes now: a cut after it leaves it whole, input and all.
      if (t.whole === true && w.open === t.index && (w.args === '' || isWholeJsonObject(w.args))) out += closeBlock(w);
    }
  }
  if (d.finish !== null) w.finish = d.finish;
  if (typeof d.stopSaid === 'string') w.stopSaid = d.stopSaid;
  if (d.usage !== null) w.usage = d.usage;
  // A tool call's arguments (and what waits behind them) are held until its block closes:
  // minutes for a whole file written by a local model. A ping now and then meanwhile, so
  // that the stream is seen alive (a proxy's read timeout cuts a silent one).
  if (out === '' && (d.text !== '' || d.tools !== null) && ++w.quiet >= QUIET_EVENTS) {
    w.quiet = 0;
    out = event('ping', {});
  }
  return out;
}

/**
 * Reasoning asked for, before the answer began: the thinking block, opened at its first piece.
 * Else dropped (an answer's block cannot be followed by thinking, as in Anthropic's replies):
 * a ping now and then, as Anthropic's own while a model thinks.
 */
function think(w: AnthropicWriter, d: Delta): string {
  if (!w.thinking || (w.block !== -1 && w.open !== 'thinking')) return keepAliveDue(w, d) ? event('ping', {}) : '';
  let out = '';
  if (w.open !== 'thinking') {
    w.open = 'thinking';
    w.thinkingBlock = ++w.block;
    out += event('content_block_start', { index: w.block, content_block: thinkingBlock('') });
  }
  return out + event('content_block_delta', { index: w.block, delta: { type: 'thinking_delta', thinking: d.thinking } });
}

/**
 * Whether the next block may begin now: nothing waits for the end, and no tool block is open
 * or the open one's arguments are a whole JSON object (a fragment would break it, so none can
 * follow). Then its block is closed, a call finished before a later failure reaches the
 * client whole, and its input does not wait for the end of the reply.
 */
function movesOn(w: AnthropicWriter): boolean {
  if (w.lateTools.size > 0 || w.lateText !== '') return false;
  if (typeof w.open !== 'number') return true;
  return isWholeJsonObject(w.args);
}

/** A block written at once: its start, its one delta (if any), its stop. */
function wholeBlock(w: AnthropicWriter, block: Record<string, unknown>, delta: Record<string, unknown> | null): string {
  const index = ++w.block;
  const out = event('content_block_start', { index, content_block: block });
  return out + (delta === null ? '' : event('content_block_delta', { index, delta })) + event('content_block_stop', { index });
}

/** The upstream finished: close the open block, then message_delta with stop reason and usage, and message_stop. */
export function anthropicDone(w: AnthropicWriter): string {
  if (w.done) return '';
  let out = start(w);
  w.done = true;
  out += closeBlock(w);
  // The calls (and text) that came while the first call's block was open, each a whole block.
  for (const [i, late] of [...w.lateTools].sort((a, b) => a[0] - b[0])) {
    w.toolBlocks.set(i, w.block + 1);
    const block = { type: 'tool_use', id: late.id ?? `toolu_${w.id}_${i}`, name: late.name, input: {} };
    const json = inputJson(late.args);
    out += wholeBlock(w, block, json === '' ? null : { type: 'input_json_delta', partial_json: json });
  }
  if (w.lateText !== '') out += wholeBlock(w, { type: 'text', text: '' }, { type: 'text_delta', text: w.lateText });
  // An empty reply is one empty text block, as a whole reply's content (and Anthropic's stream) has; one of thinking only is its thinking block.
  if (w.block === -1) out += wholeBlock(w, { type: 'text', text: '' }, null);
  // An upstream that sent no usage: message_start's prompt figure again, not 0 (the SDKs keep
  // message_delta's input_tokens as the final one).
  const usage = w.usage ?? { ...(w.known ?? { promptTokens: w.promptEstimate }), completionTokens: w.tokens };
  out += event('message_delta', { delta: stopOf(w.finish ?? 'stop', w.toolBlocks.size > 0, w.stopSaid, w.stops), usage: usageObject(usage) });
  return out + event('message_stop', {});
}
