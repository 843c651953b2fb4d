// An OpenAI Responses API client (POST /v1/responses) served by a chat upstream,
// OpenAI-compatible or Ollama (the chat body is then mapped on by openai_to_ollama).
//   request:  input (a string or items), instructions, max_output_tokens, tools → a chat body
//   response: a whole chat reply (deltas.ts WholeReply) → a Response object
//   stream:   deltas → Responses events: response.created, response.in_progress,
//             output_item.added, content_part.added, output_text.delta …, then
//             response.completed (or response.incomplete at max_output_tokens) with usage.
//             A failure after the first byte ends with response.failed.
// A deployment that declares `responses: true` is sent the client's body as is
// (see responsesUsage for what the broker reads from its replies).
//
// Stored responses (stored/responses.ts) are resolved before translation: the route puts a
// previous response's conversation into `input`, takes previous_response_id out of the body
// and leaves what the Response says of its state under RESPONSE_STATE. With the store off,
// previous_response_id answers 400 here; conversation and a stored `prompt` always do.
//
// Tools as Codex sends them: a `namespace` tool (its multi-agent and MCP tools) groups
// function tools, which chat has no word for: each goes upstream as a function named
// `<namespace>__<name>`, and a call of it comes back as Responses says one: its own `name`
// and `namespace` (Codex routes by both). A `custom` tool (free-form input, such as Codex's
// apply_patch with its grammar) goes upstream as a function of one string argument, `input`
// (the grammar in its description), and its calls come back as custom_tool_call items; their
// input is streamed whole when the call is done (the upstream's JSON is not decoded piece by
// piece). Tools the server runs (web_search, tool_search, file_search...) cannot run here:
// offered, they are left out; forced by tool_choice, 400.

import { createHash } from 'node:crypto';
import { BrokerError } from '../../errors.ts';
import { appendToolName, argumentsObject, customInput, customTool, isBase64DataUrl, isWholeJsonObject, requireObject } from './common.ts';
import { keepAliveDue, type Delta, type WholeReply } from './deltas.ts';
import type { Api, OpenAIChatRequest, OpenAIMessage, OpenAIToolCall, ReplyContext, Usage } from './types.ts';

// ---- request ----

function invalid(field: string, what: string): BrokerError {
  return new BrokerError('invalid_request', `${field} ${what}`, { details: { field } });
}

/** A message item's content → chat content (parts kept when there is an image); `ollama`: see imagePart in anthropic_to_chat.ts. */
function chatContent(content: unknown, field: string, ollama: boolean): OpenAIMessage['content'] {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) throw invalid(field, 'must be a string or an array of content parts');
  const parts: Array<{ type: string; [k: string]: unknown }> = [];
  let image = false;
  for (let i = 0; i < content.length; i++) {
    const p = content[i] as Record<string, unknown> | null;
    const t = p?.['type'];
    if ((t === 'input_text' || t === 'output_text' || t === 'text') && typeof p!['text'] === 'string') parts.push({ type: 'text', text: p!['text'] });
    else if (t === 'input_image' && typeof p!['image_url'] === 'string') {
      parts.push(imagePart(p!, `${field}[${i}]`, ollama));
      image = true;
    } else if (t === 'input_file') {
      parts.push(filePart(p!, `${field}[${i}]`));
      image = true;
    } else if (t === 'refusal' && typeof p!['refusal'] === 'string') parts.push({ type: 'text', text: p!['refusal'] });
    else throw invalid(`${field}[${i}]`, 'must be an input_text, output_text, input_image (URL) or input_file part');
  }
  // Separate parts stay separate for a chat upstream: one per line, as Messages' text blocks.
  return image ? parts : parts.map((p) => p['text'] as string).join('\n');
}

/** An input_image part (its image_url a string) → chat's image_url part. */
function imagePart(p: Record<string, unknown>, field: string, ollama: boolean): { type: string; [k: string]: unknown } {
  const url = p['image_url'] as string;
  if (ollama && !isBase64DataUrl(url)) throw invalid(`${field}.image_url`, 'must be a base64 data: URL (data:<type>;base64,...) for this model, which Ollama serves: it takes no image URLs');
  // detail (low, high, auto) is chat's too: the image's token cost on OpenAI's models. Responses'
  // `original` (Codex's view_image for GPT-5.5 models) chat has not: its nearest, high.
  const detail = p['detail'] === 'original' ? 'high' : p['detail'];
  return { type: 'image_url', image_url: typeof detail === 'string' ? { url, detail } : { url } };
}

/**
 * An input_file part → chat's file part (its base64 file_data or file_id, with the filename),
 * which an OpenAI-compatible upstream reads and an Ollama one refuses (as a chat client's).
 * A file_url has no chat form.
 */
function filePart(p: Record<string, unknown>, field: string): { type: string; [k: string]: unknown } {
  const file: Record<string, unknown> = {};
  if (typeof p['file_data'] === 'string') file['file_data'] = p['file_data'];
  else if (typeof p['file_id'] === 'string') file['file_id'] = p['file_id'];
  else throw invalid(field, 'an input_file is taken with its file_data (base64) or a file_id: a file_url has no form a chat upstream reads');
  if (typeof p['filename'] === 'string') file['filename'] = p['filename'];
  return { type: 'file', file };
}

function stringOf(v: unknown): string {
  return typeof v === 'string' ? v : JSON.stringify(v ?? '');
}

/**
 * A tool output: a string, or content parts whose text a chat tool message carries and whose
 * images (a screenshot tool's), which it cannot, follow in a user message (as Messages' tool_result).
 */
function outputOf(output: unknown, field: string, ollama: boolean): { text: string; images: Array<{ type: string; [k: string]: unknown }> } {
  if (!Array.isArray(output)) return { text: stringOf(output), images: [] };
  const texts: string[] = [];
  const images: Array<{ type: string; [k: string]: unknown }> = [];
  output.forEach((p, i) => {
    const o = p as Record<string, unknown> | null;
    if ((o?.['type'] === 'input_text' || o?.['type'] === 'output_text') && typeof o['text'] === 'string') texts.push(o['text']);
    else if (o?.['type'] === 'input_image' && typeof o['image_url'] === 'string') images.push(imagePart(o, `${field}[${i}]`, ollama));
    else throw invalid(`${field}[${i}]`, 'must be an input_text or input_image (URL) part (a chat upstream takes no files in a tool result)');
  });
  return { text: texts.join('\n'), images };
}

/** The longest function name OpenAI's chat (and Azure's, Groq's...) takes: `^[a-zA-Z0-9_-]{1,64}$`. */
const MAX_FUNCTION_NAME = 64;

/**
 * A namespace's function as chat names it (`mcp__browser__` + `navigate` →
 * `mcp__browser__navigate`). Past 64 characters (a verbose MCP server's tool: every turn that
 * offered it was a 400), its first 55 and 8 hex of its digest: the same every turn, so the
 * history's calls and a Response's (toolNames) map back.
 */
export function flatToolName(namespace: string, name: string): string {
  const flat = namespace.endsWith('_') ? namespace + name : `${namespace}__${name}`;
  if (flat.length <= MAX_FUNCTION_NAME) return flat;
  return `${flat.slice(0, MAX_FUNCTION_NAME - 9)}_${createHash('sha256').update(flat).digest('hex').slice(0, 8)}`;
}

/**
 * How a Response names a call of a chat function: the tool's own name, its namespace, and
 * whether it is a custom (free-form) tool or the client-run tool_search (their own item types).
 */
export interface ToolIdentity {
  readonly name: string;
  readonly namespace?: string;
  readonly custom?: true;
  readonly toolSearch?: true;
}

/** The chat function Codex's client-run tool_search goes upstream as. */
export const TOOL_SEARCH = 'tool_search';

/** A tool_search the client runs (Codex's, for GPT-5.5 models: it finds MCP tools itself); one OpenAI's server runs is hosted. */
function clientToolSearch(o: Record<string, unknown> | null): boolean {
  return o?.['type'] === 'tool_search' && o['execution'] === 'client';
}

/**
 * Tools a Responses request offers in its input: an additional_tools item's (Codex's for its
 * "lite" models), and those a tool_search found (tool_search_output), each with the field
 * it is named by in errors.
 */
function inputTools(input: unknown): Array<[unknown, string]> {
  if (!Array.isArray(input)) return [];
  const out: Array<[unknown, string]> = [];
  input.forEach((it, i) => {
    const o = it as Record<string, unknown> | null;
    if ((o?.['type'] === 'additional_tools' || o?.['type'] === 'tool_search_output') && Array.isArray(o['tools'])) (o['tools'] as unknown[]).forEach((t, j) => out.push([t, `input[${i}].tools[${j}]`]));
  });
  return out;
}

/** Chat function names → the Responses tools they stand for, where the call is reported otherwise than as a function_call of that name. */
export type ToolNames = ReadonlyMap<string, ToolIdentity>;

/** The namespaced and custom tools of a Responses request (none: undefined, the common case). */
export function toolNames(request: Readonly<Record<string, unknown>> | undefined): ToolNames | undefined {
  const own = request?.['tools'];
  const tools = [...(Array.isArray(own) ? own : []), ...inputTools(request?.['input']).map(([t]) => t)];
  let out: Map<string, ToolIdentity> | undefined;
  for (const t of tools) {
    const o = t as Record<string, unknown> | null;
    if (clientToolSearch(o)) (out ??= new Map()).set(TOOL_SEARCH, { name: TOOL_SEARCH, toolSearch: true });
    if (o?.['type'] === 'custom' && typeof o['name'] === 'string') (out ??= new Map()).set(o['name'], { name: o['name'], custom: true });
    if (o?.['type'] !== 'namespace' || typeof o['name'] !== 'string' || !Array.isArray(o['tools'])) continue;
    for (const inner of o['tools'] as unknown[]) {
      const f = inner as Record<string, unknown> | null;
      const name = f?.['name'];
      if (typeof name === 'string') (out ??= new Map()).set(flatToolName(o['name'], name), { namespace: o['name'], name, ...(f!['type'] === 'custom' ? { custom: true as const } : {}) });
    }
  }
  return out === undefined ? undefined : withAliases(out, tools);
}

/**
 * A model that calls a namespaced tool by its own name (`exec`) or as the prompt writes it
 * (`functions.exec`, Codex's for its "lite" models) rather than as offered (`functions__exec`):
 * mapped to it when no other tool has that name (else Codex aborted the call: "incompatible payload").
 */
function withAliases(names: Map<string, ToolIdentity>, tools: readonly unknown[]): Map<string, ToolIdentity> {
  const plain = new Set(tools.map((t) => (t as Record<string, unknown> | null)?.['name']).filter((n) => typeof n === 'string'));
  const bare = new Map<string, ToolIdentity | null>();
  for (const id of [...names.values()]) {
    if (id.namespace === undefined) continue;
    bare.set(id.name, bare.has(id.name) ? null : id);
    const dotted = `${id.namespace.replace(/_+$/, '')}.${id.name}`;
    if (!names.has(dotted)) names.set(dotted, id);
  }
  for (const [name, id] of bare) if (id !== null && !plain.has(name) && !names.has(name)) names.set(name, id);
  return names;
}

/**
 * Built-in tool types whose calls chat has no word for: those the Responses server runs itself
 * (search, files, code, images, MCP), and a computer or local shell the model drives in its own
 * item types. Offered, they are left out (Codex offers web_search on every turn).
 */
const HOSTED_TOOLS = new Set(['web_search', 'web_search_preview', 'web_search_preview_2025_03_11', 'web_search_2025_08_26', 'tool_search', 'file_search', 'code_interpreter', 'computer_use_preview', 'computer_use', 'computer', 'image_generation', 'mcp', 'local_shell']);

/** The text before the calls and parallel calls are one assistant turn in chat, as the model wrote them. */
function pushCall(out: OpenAIMessage[], call: OpenAIToolCall): void {
  const last = out[out.length - 1];
  if (last !== undefined && last.role === 'assistant' && !Array.isArray(last.content)) (last.tool_calls ??= []).push(call);
  else out.push({ role: 'assistant', content: null, tool_calls: [call] });
}

/**
 * Responses `input` → chat messages: message items, tool calls (merged into one assistant
 * turn) and their outputs. Calls of Codex's custom and local_shell tools in the history go on
 * as function calls (`{"input": ...}`, the shell action), paired with their outputs by call id;
 * items of tools the server ran (web_search_call), references to stored items and compaction
 * items have no chat form, nor anything here to resolve them: left out.
 */
function messagesOf(input: unknown, ollama: boolean): OpenAIMessage[] {
  if (typeof input === 'string') return [{ role: 'user', content: input }];
  if (!Array.isArray(input)) throw invalid('input', 'must be a string or an array of items');
  const out: OpenAIMessage[] = [];
  // Images of the tool outputs so far: a user message after them, since chat's tool messages
  // must follow their calls unbroken (OpenAI refuses a user message between two).
  let images: Array<{ type: string; [k: string]: unknown }> = [];
  // A local_shell_call's id → its chat call id: an output may name the call by either.
  const shellCalls = new Map<string, string>();
  const toolOutput = (callId: string, output: unknown, field: string): void => {
    const r = outputOf(output, field, ollama);
    out.push({ role: 'tool', tool_call_id: callId, content: r.text });
    images.push(...r.images);
  };
  for (let i = 0; i < input.length; i++) {
    const it = input[i] as Record<string, unknown> | null;
    if (it === null || typeof it !== 'object') throw invalid(`input[${i}]`, 'must be an object');
    const type = it['type'] ?? 'message';
    const isOutput = type === 'function_call_output' || type === 'custom_tool_call_output' || type === 'local_shell_call_output' || type === 'tool_search_output';
    if (!isOutput && images.length > 0 && !DROPPED_ITEMS.has(type as string)) {
      out.push({ role: 'user', content: images });
      images = [];
    }
    if (type === 'message') {
      const r = it['role'];
      if (r !== 'user' && r !== 'assistant' && r !== 'system' && r !== 'developer') throw invalid(`input[${i}].role`, 'must be user, assistant, system or developer (a tool result is a function_call_output item)');
      // Responses' developer role is chat's system to every chat server (vLLM's and llama.cpp's
      // templates know no developer; OpenAI's chat takes system as developer).
      const role = r === 'developer' ? 'system' : r;
      out.push({ role, content: chatContent(it['content'], `input[${i}].content`, ollama) });
    } else if (type === 'function_call') {
      // A call without arguments has an empty object of them: chat upstreams parse the string.
      const args = stringOf(it['arguments']);
      pushCall(out, { id: String(it['call_id'] ?? ''), type: 'function', function: { name: offeredName(it), arguments: args === '' ? '{}' : args } });
    } else if (type === 'custom_tool_call') {
      // Free-form input, as the function's one argument it was offered as (customTool).
      pushCall(out, { id: String(it['call_id'] ?? ''), type: 'function', function: { name: offeredName(it), arguments: JSON.stringify({ input: it['input'] ?? '' }) } });
    } else if (type === 'local_shell_call') {
      // call_id, or (as checkItem allows) the item's id when call_id is empty or missing.
      const id = String(it['call_id'] || it['id'] || '');
      if (typeof it['id'] === 'string') shellCalls.set(it['id'], id);
      pushCall(out, { id, type: 'function', function: { name: 'local_shell', arguments: JSON.stringify(it['action'] ?? {}) } });
    } else if (type === 'tool_search_call') {
      // The client's own tool search: a call of the function it was offered as.
      pushCall(out, { id: String(it['call_id'] ?? it['id'] ?? ''), type: 'function', function: { name: TOOL_SEARCH, arguments: typeof it['arguments'] === 'string' ? it['arguments'] : JSON.stringify(it['arguments'] ?? {}) } });
    } else if (type === 'tool_search_output') {
      // What it found: offered as tools from now on (chatRequest), named here for the model.
      const found = Array.isArray(it['tools']) ? (it['tools'] as unknown[]).flatMap((t) => toolLabels(t)) : [];
      out.push({ role: 'tool', tool_call_id: String(it['call_id'] ?? it['id'] ?? ''), content: found.length > 0 ? `Tools loaded: ${found.join(', ')}` : 'No tools found.' });
    } else if (type === 'additional_tools') {
      // Its tools are offered (chatRequest); the item itself is no turn.
    } else if (type === 'function_call_output' || type === 'custom_tool_call_output') {
      toolOutput(String(it['call_id'] ?? ''), it['output'], `input[${i}].output`);
    } else if (type === 'local_shell_call_output') {
      const id = it['call_id'] ?? it['id'];
      toolOutput(typeof id === 'string' ? (shellCalls.get(id) ?? id) : '', it['output'], `input[${i}].output`);
    } else if (type === 'reasoning' || DROPPED_ITEMS.has(type as string)) {
      // The model's own reasoning from an earlier turn (chat upstreams take none), and the items above.
    } else {
      throw invalid(`input[${i}].type`, `${typeof type === 'string' ? type : JSON.stringify(type)} is not supported (message, function_call, function_call_output, custom_tool_call, local_shell_call, tool_search_call and their outputs, additional_tools)`);
    }
  }
  if (images.length > 0) out.push({ role: 'user', content: images });
  return out;
}

/** The function an earlier turn's call (or a tool_choice) names, as the model was offered it: a namespaced one's flat name. */
function offeredName(o: Record<string, unknown>): string {
  const name = String(o['name'] ?? '');
  return typeof o['namespace'] === 'string' && o['namespace'] !== '' ? flatToolName(o['namespace'], name) : name;
}

/** A found tool's names as the model is offered them (a namespace's each flat). */
function toolLabels(t: unknown): string[] {
  const o = t as Record<string, unknown> | null;
  if (o?.['type'] === 'namespace' && typeof o['name'] === 'string' && Array.isArray(o['tools'])) return (o['tools'] as unknown[]).map((f) => flatToolName(o['name'] as string, String((f as Record<string, unknown> | null)?.['name'] ?? '')));
  return typeof o?.['name'] === 'string' ? [o['name']] : [];
}

/** Input items with no chat form: a search the server ran, a reference to a stored item, a compaction. */
const DROPPED_ITEMS = new Set(['web_search_call', 'item_reference', 'compaction']);

/** A Responses function tool → a chat tool, under `name` (a namespaced one's flat name). */
function chatTool(o: Record<string, unknown>, name: string): unknown {
  const fn: Record<string, unknown> = { name };
  if (typeof o['description'] === 'string') fn['description'] = o['description'];
  if (o['parameters'] !== undefined) fn['parameters'] = o['parameters'];
  if (typeof o['strict'] === 'boolean') fn['strict'] = o['strict'];
  return { type: 'function', function: fn };
}

/**
 * Responses tools → chat tools: function and custom tools, and those of namespaces
 * (flattened), a client-run tool_search as a function; hosted tools left out. `fields`: each
 * tool's name in errors (tools[i], or the input item it came in).
 */
function toolsOf(tools: unknown, fields?: readonly string[]): unknown[] | undefined {
  if (tools === undefined || tools === null) return undefined;
  if (!Array.isArray(tools)) throw invalid('tools', 'must be an array');
  const out: unknown[] = [];
  tools.forEach((t, n) => {
    const o = t as Record<string, unknown> | null;
    const type = o?.['type'];
    const field = fields?.[n] ?? `tools[${n}]`;
    if (clientToolSearch(o)) {
      out.push(chatTool({ description: 'Searches for tools to load.', parameters: { type: 'object', properties: { query: { type: 'string' } } }, ...o!, name: TOOL_SEARCH }, TOOL_SEARCH));
      return;
    }
    if (typeof type === 'string' && HOSTED_TOOLS.has(type)) return;
    if (type === 'namespace' && typeof o!['name'] === 'string' && Array.isArray(o!['tools'])) {
      (o!['tools'] as unknown[]).forEach((inner, j) => {
        const f = inner as Record<string, unknown> | null;
        if ((f?.['type'] !== 'function' && f?.['type'] !== 'custom') || typeof f['name'] !== 'string') throw invalid(`${field}.tools[${j}]`, 'must be a function or custom tool with a name');
        const flat = flatToolName(o!['name'] as string, f['name']);
        out.push(f['type'] === 'custom' ? customTool(f, flat, `${field}.tools[${j}]`) : chatTool(f, flat));
      });
      return;
    }
    if (type !== 'function' && type !== 'custom') {
      // The built-in tools whose calls the model makes in their own item types (shell_call,
      // apply_patch_call): a chat server has no such calls to make. Refused, naming the type.
      const named = typeof type === 'string' ? `a ${JSON.stringify(type)} tool is not served for a chat upstream` : 'has no type';
      throw invalid(field, `${named}: send function, custom or namespace tools (the built-in shell and apply_patch tools: as function or custom tools of your own)`);
    }
    if (typeof o!['name'] !== 'string') throw invalid(`${field}.name`, 'is required: a string');
    out.push(type === 'custom' ? customTool(o!, o!['name'], field) : chatTool(o!, o!['name']));
  });
  return out;
}

/** Responses tool_choice → chat's: a mode, or one function by name (built-in tools' choices have no chat equivalent). */
function toolChoiceOf(tc: unknown): unknown {
  if (tc === undefined || tc === null) return undefined;
  if (typeof tc === 'string') {
    if (tc === 'auto' || tc === 'none' || tc === 'required') return tc;
    throw invalid('tool_choice', 'must be "auto", "none", "required" or {"type": "function" or "custom", "name": ...}');
  }
  const o = tc as Record<string, unknown>;
  if (typeof tc !== 'object' || Array.isArray(tc) || (o['type'] !== 'function' && o['type'] !== 'custom')) throw invalid('tool_choice', 'must be "auto", "none", "required" or {"type": "function" or "custom", "name": ...} (built-in tools are not served here)');
  if (typeof o['name'] !== 'string' || o['name'] === '') throw invalid('tool_choice.name', `must name a ${o['type']} tool`);
  return { type: 'function', function: { name: offeredName(o) } };
}

/** A Responses body → an OpenAI chat body (model left as the client sent it; the provider translator sets it) for `provider`'s upstream. */
export function chatRequest(body: unknown, provider: Api = 'openai'): OpenAIChatRequest {
  const b = requireObject(body);
  if (b['previous_response_id'] !== undefined && b['previous_response_id'] !== null) throw invalid('previous_response_id', 'is not supported: the broker keeps no responses (RESPONSES_STORE_MB=0); send the whole conversation as input');
  if (b['conversation'] !== undefined && b['conversation'] !== null) throw invalid('conversation', 'is not supported: the broker keeps no conversations');
  if (b['prompt'] !== undefined && b['prompt'] !== null) throw invalid('prompt', 'is not supported: the broker keeps no stored prompts; send them as instructions and input');
  const messages = messagesOf(b['input'], provider === 'ollama');
  if (typeof b['instructions'] === 'string' && b['instructions'] !== '') messages.unshift({ role: 'system', content: b['instructions'] });
  const out: OpenAIChatRequest = { model: String(b['model']), messages, stream: b['stream'] === true };
  if (typeof b['max_output_tokens'] === 'number') out.max_tokens = b['max_output_tokens'];
  // The same fields in chat (an Ollama deployment's translation leaves out those it has not).
  // Not service_tier: it is billed to the deployment's key, the operator's to choose.
  for (const k of ['temperature', 'top_p', 'parallel_tool_calls', 'user', 'prompt_cache_key', 'safety_identifier']) if (b[k] !== undefined && b[k] !== null) out[k] = b[k];
  const verbosity = (b['text'] as Record<string, unknown> | null | undefined)?.['verbosity'];
  if (typeof verbosity === 'string') out['verbosity'] = verbosity;
  const effort = (b['reasoning'] as Record<string, unknown> | null | undefined)?.['effort'];
  if (typeof effort === 'string') out['reasoning_effort'] = effort;
  const given = inputTools(b['input']);
  const all = given.length === 0 ? toolsOf(b['tools']) : [...(toolsOf(b['tools']) ?? []), ...(toolsOf(given.map(([t]) => t), given.map(([, f]) => f)) ?? [])];
  // A tool found again (a second search, an MCP server's tools in two items) is offered once.
  const tools = given.length === 0 ? all : all!.filter((t, i, a) => a.findIndex((u) => (u as { function: { name: string } }).function.name === (t as { function: { name: string } }).function.name) === i);
  if (tools !== undefined && tools.length > 0) out.tools = tools;
  const choice = toolChoiceOf(b['tool_choice']);
  // A function forced that is not offered: OpenAI's 400 (forwarded, Ollama dropped it and answered as it liked).
  const forced = (choice as { function?: { name: string } } | undefined)?.function?.name;
  if (forced !== undefined && !(out.tools ?? []).some((t) => (t as { function: { name: string } }).function.name === forced)) {
    throw invalid('tool_choice.name', `${forced} is not one of the tools in tools`);
  }
  if (choice !== undefined && out.tools !== undefined) out['tool_choice'] = choice;
  const format = textFormatOf(b['text']);
  if (format?.['type'] === 'json_object') out.response_format = { type: 'json_object' };
  else if (format?.['type'] === 'json_schema') {
    const js: Record<string, unknown> = { name: String(format['name'] ?? 'response'), schema: format['schema'], strict: format['strict'] };
    if (typeof format['description'] === 'string') js['description'] = format['description'];
    out.response_format = { type: 'json_schema', json_schema: js };
  }
  return out;
}

/**
 * `text.format`: text, json_object or json_schema (with its schema), as OpenAI checks it; any
 * other type was dropped, the reply free text where the client asked for a format.
 */
function textFormatOf(text: unknown): Record<string, unknown> | undefined {
  if (text === undefined || text === null) return undefined;
  if (typeof text !== 'object' || Array.isArray(text)) throw invalid('text', 'must be an object');
  const f = (text as Record<string, unknown>)['format'];
  if (f === undefined || f === null) return undefined;
  if (typeof f !== 'object' || Array.isArray(f)) throw invalid('text.format', 'must be an object: {"type": "text" | "json_object" | "json_schema"}');
  const o = f as Record<string, unknown>;
  if (o['type'] !== 'text' && o['type'] !== 'json_object' && o['type'] !== 'json_schema') throw invalid('text.format.type', `${JSON.stringify(o['type'])} is not supported: "text", "json_object" or "json_schema"`);
  if (o['type'] === 'json_schema' && (o['schema'] === null || typeof o['schema'] !== 'object' || Array.isArray(o['schema']))) throw invalid('text.format.schema', 'is required with type "json_schema": a JSON Schema object');
  return o;
}

// ---- the Response object ----

function usageObject(u: Usage): Record<string, unknown> {
  return {
    input_tokens: u.promptTokens,
    input_tokens_details: { cached_tokens: u.cachedTokens ?? 0 },
    output_tokens: u.completionTokens,
    output_tokens_details: { reasoning_tokens: u.reasoningTokens ?? 0 },
    total_tokens: u.promptTokens + u.completionTokens,
  };
}

/** Usage of a Response object (a passed-through reply, or the `response` of a terminal event). */
export function responsesUsage(r: Record<string, unknown> | null | undefined): Usage | null {
  const u = r?.['usage'] as Record<string, unknown> | null | undefined;
  if (u === null || u === undefined || typeof u !== 'object') return null;
  const p = u['input_tokens'];
  const c = u['output_tokens'];
  return { promptTokens: typeof p === 'number' ? p : 0, completionTokens: typeof c === 'number' ? c : 0 };
}

type Status = 'in_progress' | 'completed' | 'incomplete' | 'failed';

/** Request fields a Response repeats, as OpenAI's does: what the client sent, else the defaults in responseShell. */
const ECHOED = ['instructions', 'max_output_tokens', 'metadata', 'parallel_tool_calls', 'previous_response_id', 'reasoning', 'temperature', 'text', 'tool_choice', 'tools', 'top_p', 'truncation', 'user'] as const;

/**
 * What a Response says of its stored state, set by the route on the request body under a
 * symbol: copies of the body (admission's capped one) carry it, and neither JSON (what goes
 * upstream) nor the cache key sees it.
 */
export const RESPONSE_STATE = Symbol('responseState');
export interface ResponseState {
  /** The previous_response_id the route resolved into input. */
  readonly previousResponseId: string | null;
  /** The Response is kept (store not false, and the store on). */
  readonly stored: boolean;
}

function echoOf(request: Readonly<Record<string, unknown>> | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (request === undefined) return out;
  for (const k of ECHOED) if (request[k] !== undefined && request[k] !== null) out[k] = request[k];
  const state = (request as { [RESPONSE_STATE]?: ResponseState })[RESPONSE_STATE];
  if (state !== undefined) {
    out['store'] = state.stored;
    if (state.previousResponseId !== null) out['previous_response_id'] = state.previousResponseId;
  }
  // OpenAI's says both reasoning fields, the ones not asked for null.
  if (out['reasoning'] !== null && typeof out['reasoning'] === 'object') out['reasoning'] = { effort: null, summary: null, ...(out['reasoning'] as Record<string, unknown>) };
  // And always text.format (a client that sent only text.verbosity gets the default beside it).
  if (out['text'] !== null && typeof out['text'] === 'object') out['text'] = { format: { type: 'text' }, ...(out['text'] as Record<string, unknown>) };
  return out;
}

/** Why a Response is incomplete, from the chat finish reason; null: it is not. */
function incompleteOf(finish: string): string | null {
  return finish === 'length' ? 'max_output_tokens' : finish === 'content_filter' ? 'content_filter' : null;
}

/** The finished Response's status and incomplete_details, from the chat finish reason. */
function ending(finish: string): { status: Status; incomplete_details: { reason: string } | null } {
  const reason = incompleteOf(finish);
  return { status: reason === null ? 'completed' : 'incomplete', incomplete_details: reason === null ? null : { reason } };
}

/** A Response object; `extra` (the echoed request fields, the ending, an error) overrides the defaults. */
function responseShell(id: string, model: string, createdAt: number, status: Status, output: unknown[], usage: Usage | null, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'resp_' + id,
    object: 'response',
    created_at: createdAt,
    status,
    error: null,
    incomplete_details: null,
    instructions: null,
    max_output_tokens: null,
    model,
    output,
    parallel_tool_calls: true,
    previous_response_id: null,
    reasoning: { effort: null, summary: null },
    store: false,
    temperature: null,
    text: { format: { type: 'text' } },
    tool_choice: 'auto',
    tools: [],
    top_p: null,
    truncation: 'disabled',
    user: null,
    usage: usage === null ? null : usageObject(usage),
    metadata: {},
    ...extra,
  };
}

/** A message item; 'incomplete' is the last one of a Response cut at max_output_tokens (OpenAI's). */
type ItemStatus = 'in_progress' | 'completed' | 'incomplete';

function messageItem(id: string, text: string, status: ItemStatus): Record<string, unknown> {
  return { type: 'message', id: 'msg_' + id, status, role: 'assistant', content: status === 'in_progress' ? [] : [textPart(text)] };
}

function textPart(text: string): Record<string, unknown> {
  return { type: 'output_text', text, annotations: [], logprobs: [] };
}

/**
 * A reasoning item: a chat upstream's reasoning text (Ollama's `thinking`, `reasoning_content`)
 * as its summary, as Ollama's own Responses API gives it and as clients read it (the openai
 * SDK's stream accumulator, coding agents). No `encrypted_content`: there is none to give, and
 * a reasoning item sent back in a later turn is not passed to a chat upstream.
 */
function reasoningItem(id: string, text: string | null): Record<string, unknown> {
  return { type: 'reasoning', id: 'rs_' + id, summary: text === null ? [] : [summaryPart(text)] };
}

function summaryPart(text: string): Record<string, unknown> {
  return { type: 'summary_text', text };
}

/**
 * A function_call item, or a custom tool's custom_tool_call item (its input out of the
 * arguments); a namespaced tool's call says its own name and its namespace.
 */
function callItem(id: string, t: { id: string; name: string; arguments: string }, status: 'in_progress' | 'completed' | 'incomplete', names: ToolNames | undefined): Record<string, unknown> {
  const own = names?.get(t.name);
  const ns = own?.namespace !== undefined ? { namespace: own.namespace } : {};
  if (own?.custom === true) return { type: 'custom_tool_call', id: 'ctc_' + id, call_id: t.id, name: own.name, ...ns, input: customInput(t.arguments), status };
  if (own?.toolSearch === true) return { type: 'tool_search_call', id: 'tsc_' + id, call_id: t.id, execution: 'client', arguments: searchArguments(t.arguments), status };
  return { type: 'function_call', id: 'fc_' + id, call_id: t.id, name: own?.name ?? t.name, ...ns, arguments: t.arguments, status };
}


/** A tool_search call's arguments: the JSON object the model wrote, else its text as the query. */
function searchArguments(args: string): unknown {
  return argumentsObject(args) ?? (args === '' ? {} : { query: args });
}

/** A whole chat reply → the Response object. */
export function response(reply: WholeReply, ctx: ReplyContext): Record<string, unknown> {
  const output: unknown[] = [];
  const end = ending(reply.finish);
  if (reply.thinking !== '') output.push(reasoningItem(ctx.id, reply.thinking));
  // An empty reply is one empty message; one of reasoning only (cut while the model reasoned) is its reasoning item, as OpenAI's.
  if (reply.text !== '' || (reply.tools.length === 0 && reply.thinking === '')) output.push(messageItem(ctx.id, reply.text, end.status === 'incomplete' ? 'incomplete' : 'completed'));
  // Cut at max_output_tokens, the last call's arguments are cut too: that item is incomplete.
  const names = toolNames(ctx.request);
  reply.tools.forEach((t, i) => output.push(callItem(`${ctx.id}_${i}`, t, end.status === 'incomplete' && i === reply.tools.length - 1 ? 'incomplete' : 'completed', names)));
  return responseShell(ctx.id, ctx.model, Math.floor(Date.now() / 1000), end.status, output, reply.usage, { ...echoOf(ctx.request), ...end });
}

// ---- streaming ----

interface ToolSlot {
  outputIndex: number;
  itemId: string;
  id: string;
  name: string;
  arguments: string;
  /**
   * The status its done events gave it, null while open: a call is done when what follows
   * it begins and it is whole (closeWhole), or when the reply ends.
   */
  closed: ItemStatus | null;
  /**
   * Its output_item.added was written. It waits for the first piece of the arguments (or
   * the call's end), since the item names the call and a name may come in pieces.
   */
  announced: boolean;
}

export interface ResponsesWriter {
  readonly id: string;
  readonly model: string;
  /** Request fields the Response repeats (echoOf). */
  readonly echo: Record<string, unknown>;
  readonly createdAt: number;
  seq: number;
  started: boolean;
  /** The message item: its output_index once text arrived, else -1. */
  messageIndex: number;
  text: string;
  /** The message item was closed (a function call began after it, as OpenAI closes each item before the next). */
  messageDone: boolean;
  /** Text after that: a second message item, written whole at the end (an item cannot reopen). */
  lateText: string;
  lateIndex: number;
  tools: ToolSlot[];
  outputs: number;
  finish: string | null;
  usage: Usage | null;
  /** Token events: the output count when the upstream sends no usage. */
  tokens: number;
  /** The prompt's estimated tokens: the input count when the upstream sends no usage. */
  readonly promptEstimate: number;
  /** The request's namespaced and custom tools (their calls are reported by their own names, a custom one's as a custom_tool_call). */
  readonly names: ToolNames | undefined;
  /** The reasoning item: its output_index once reasoning arrived (always the first item), else -1. */
  reasoningIndex: number;
  reasoning: string;
  /** The reasoning item was closed (what followed it began). */
  reasoningDone: boolean;
  /** Reasoning events after the reply's text or calls began (dropped) since the last keep-alive comment (keepAliveDue). */
  quiet: number;
  done: boolean;
}

export function responsesWriter(ctx: ReplyContext): ResponsesWriter {
  return { id: ctx.id, model: ctx.model, echo: echoOf(ctx.request), createdAt: Math.floor(Date.now() / 1000), seq: 0, started: false, messageIndex: -1, text: '', messageDone: false, lateText: '', lateIndex: -1, tools: [], outputs: 0, finish: null, usage: null, tokens: 0, promptEstimate: ctx.promptEstimate ?? 0, names: toolNames(ctx.request), reasoningIndex: -1, reasoning: '', reasoningDone: false, quiet: 0, done: false };
}

function event(w: { seq: number }, type: string, fields: Record<string, unknown>): string {
  return 'event: ' + type + '\ndata: ' + JSON.stringify({ type, sequence_number: w.seq++, ...fields }) + '\n\n';
}

function open(w: ResponsesWriter): string {
  if (w.started) return '';
  w.started = true;
  const shell = responseShell(w.id, w.model, w.createdAt, 'in_progress', [], null, w.echo);
  return event(w, 'response.created', { response: shell }) + event(w, 'response.in_progress', { response: shell });
}

/** The message item's closing events: its text, its part, the item. */
function closeMessage(w: ResponsesWriter, itemId: string, index: number, text: string, status: ItemStatus = 'completed'): string {
  const ids = { item_id: itemId, output_index: index, content_index: 0 };
  let out = event(w, 'response.output_text.done', { ...ids, text, logprobs: [] });
  out += event(w, 'response.content_part.done', { ...ids, part: textPart(text) });
  return out + event(w, 'response.output_item.done', { output_index: index, item: { ...messageItem(w.id, text, status), id: itemId } });
}

/**
 * Reasoning before the reply's text and calls: the reasoning item, opened at its first piece
 * with its summary part, as OpenAI streams one. Reasoning after them (an item cannot reopen,
 * and an item after the reply would put the model's thinking after its answer) is dropped: a
 * keep-alive comment now and then (no event, so no sequence number).
 */
function reason(w: ResponsesWriter, d: Delta): string {
  if (w.reasoningDone || w.messageIndex !== -1 || w.tools.length > 0) return keepAliveDue(w, d) ? ': keep-alive\n\n' : '';
  let out = '';
  if (w.reasoningIndex === -1) {
    w.reasoningIndex = w.outputs++;
    out += event(w, 'response.output_item.added', { output_index: w.reasoningIndex, item: reasoningItem(w.id, null) });
    out += event(w, 'response.reasoning_summary_part.added', { ...summaryIds(w), part: summaryPart('') });
  }
  w.reasoning += d.thinking;
  return out + event(w, 'response.reasoning_summary_text.delta', { ...summaryIds(w), delta: d.thinking });
}

/** Where the reasoning item's summary events point: the item, its output index, its one summary part. */
function summaryIds(w: ResponsesWriter): { item_id: string; output_index: number; summary_index: number } {
  return { item_id: 'rs_' + w.id, output_index: w.reasoningIndex, summary_index: 0 };
}

/** The reasoning item's closing events, once what follows it begins (or the reply ends). */
function closeReasoning(w: ResponsesWriter): string {
  if (w.reasoningIndex === -1 || w.reasoningDone) return '';
  w.reasoningDone = true;
  const ids = summaryIds(w);
  let out = event(w, 'response.reasoning_summary_text.done', { ...ids, text: w.reasoning });
  out += event(w, 'response.reasoning_summary_part.done', { ...ids, part: summaryPart(w.reasoning) });
  return out + event(w, 'response.output_item.done', { output_index: w.reasoningIndex, item: reasoningItem(w.id, w.reasoning) });
}

/** The message item's opening events: the item, its text part. */
function openMessage(w: ResponsesWriter): string {
  const closed = closeReasoning(w);
  w.messageIndex = w.outputs++;
  const out = closed + event(w, 'response.output_item.added', { output_index: w.messageIndex, item: messageItem(w.id, '', 'in_progress') });
  return out + event(w, 'response.content_part.added', { item_id: 'msg_' + w.id, output_index: w.messageIndex, content_index: 0, part: textPart('') });
}

/** One upstream event → its Responses events. */
export function responsesDelta(w: ResponsesWriter, d: Delta): string {
  if (w.done) return '';
  let out = open(w);
  // Reasoning is output the upstream generated, shown or dropped (late): counted either way.
  if (d.thinking !== '') {
    w.tokens++;
    out += reason(w, d);
  }
  if (d.text !== '' && (w.messageDone || w.tools.length > 0)) {
    out += closeWhole(w);
    w.lateText += d.text;
    w.tokens++;
  } else if (d.text !== '') {
    if (w.messageIndex === -1) out += openMessage(w);
    w.text += d.text;
    w.tokens++;
    out += event(w, 'response.output_text.delta', { item_id: 'msg_' + w.id, output_index: w.messageIndex, content_index: 0, delta: d.text, logprobs: [] });
  }
  if (d.tools !== null) {
    for (const t of d.tools) {
      let slot = w.tools[t.index];
      if (slot === undefined) {
        if (w.messageIndex !== -1 && !w.messageDone) {
          out += closeMessage(w, 'msg_' + w.id, w.messageIndex, w.text);
          w.messageDone = true;
        }
        out += closeReasoning(w) + closeWhole(w);
        slot = w.tools[t.index] = { outputIndex: w.outputs++, itemId: 'fc_' + w.id + '_' + t.index, id: t.id ?? `call_${w.id}_${t.index}`, name: t.name ?? '', arguments: '', closed: null, announced: false };
      } else slot.name = appendToolName(slot.name, t.name, slot.arguments);
      if (t.arguments !== undefined && t.arguments !== '') {
        w.tokens++;
        // A fragment of a call already done whole (a broken upstream) cannot reopen its item:
        // dropped, so that the final Response says what its done event said.
        if (slot.closed === null) {
          out += announce(w, slot);
          slot.arguments += t.arguments;
          // A custom tool's input is the string inside these arguments: sent whole at its end.
          const own = w.names?.get(slot.name);
          if (own?.custom !== true && own?.toolSearch !== true) out += event(w, 'response.function_call_arguments.delta', { item_id: slot.itemId, output_index: slot.outputIndex, delta: t.arguments });
        }
      }
      // A call that came whole (Ollama's) is done now: a cut after it does not leave it incomplete.
      if (t.whole === true && slot.closed === null && (slot.arguments === '' || isWholeJsonObject(slot.arguments))) out += closeCall(w, slot, 'completed');
    }
  }
  if (d.finish !== null) w.finish = d.finish;
  if (d.usage !== null) w.usage = d.usage;
  return out;
}

/**
 * What follows a call began (the next call, text): as in OpenAI's own stream, the open calls
 * whose arguments are a whole JSON object are done now (a fragment would break them, so none
 * can follow), so that a call finished before a later failure reaches the client whole. One
 * not whole stays open beside the next (an upstream may interleave fragments) until the end.
 */
function closeWhole(w: ResponsesWriter): string {
  let out = '';
  for (const s of w.tools) if (s !== undefined && s.closed === null && isWholeJsonObject(s.arguments)) out += closeCall(w, s, 'completed');
  return out;
}

/** The call's output_item.added, and before it those of the calls ahead of it still waiting, so that items are added in output order. */
function announce(w: ResponsesWriter, s: ToolSlot): string {
  if (s.announced) return '';
  let out = '';
  const waiting = w.tools.filter((o) => o !== undefined && !o.announced && o.outputIndex <= s.outputIndex).sort((a, b) => a.outputIndex - b.outputIndex);
  for (const o of waiting) {
    o.announced = true;
    // Its name is whole by now (it has arguments, or is done): a custom tool's item is a ctc_.
    const item = callItem('', { ...o, arguments: '' }, 'in_progress', w.names);
    if (item['type'] === 'custom_tool_call') o.itemId = 'ctc_' + o.itemId.slice(3);
    else if (item['type'] === 'tool_search_call') o.itemId = 'tsc_' + o.itemId.slice(3);
    out += event(w, 'response.output_item.added', { output_index: o.outputIndex, item: { ...item, id: o.itemId } });
  }
  return out;
}

/**
 * A call's done events. One without arguments says {} (as a whole reply does), in a delta too
 * so that deltas add up to it. A custom tool's input goes in one delta, then its done event.
 */
function closeCall(w: ResponsesWriter, s: ToolSlot, status: ItemStatus): string {
  let out = announce(w, s);
  if (w.names?.get(s.name)?.toolSearch === true) {
    // No argument events: the item, done whole.
    s.closed = status;
    return out + event(w, 'response.output_item.done', { output_index: s.outputIndex, item: { ...callItem('', s, status, w.names), id: s.itemId } });
  }
  if (w.names?.get(s.name)?.custom === true) {
    s.closed = status;
    const input = customInput(s.arguments);
    const ids = { item_id: s.itemId, output_index: s.outputIndex };
    if (input !== '') out += event(w, 'response.custom_tool_call_input.delta', { ...ids, delta: input });
    out += event(w, 'response.custom_tool_call_input.done', { ...ids, input });
    return out + event(w, 'response.output_item.done', { output_index: s.outputIndex, item: { ...callItem('', s, status, w.names), id: s.itemId } });
  }
  if (s.arguments === '') {
    s.arguments = '{}';
    out += event(w, 'response.function_call_arguments.delta', { item_id: s.itemId, output_index: s.outputIndex, delta: '{}' });
  }
  s.closed = status;
  out += event(w, 'response.function_call_arguments.done', { item_id: s.itemId, output_index: s.outputIndex, name: w.names?.get(s.name)?.name ?? s.name, arguments: s.arguments });
  return out + event(w, 'response.output_item.done', { output_index: s.outputIndex, item: { ...callItem('', s, status, w.names), id: s.itemId } });
}

/**
 * `last`: the status of the message items closed at the end (incomplete when the Response is).
 * `streamed`: only the calls the stream added (a failed Response lists what its client saw).
 */
function outputItems(w: ResponsesWriter, last: ItemStatus, streamed = false): Array<[number, Record<string, unknown>]> {
  const items: Array<[number, Record<string, unknown>]> = [];
  if (w.reasoningIndex !== -1) items.push([w.reasoningIndex, reasoningItem(w.id, w.reasoning)]);
  // The message closed early (a function call followed it) was whole.
  if (w.messageIndex !== -1) items.push([w.messageIndex, messageItem(w.id, w.text, w.messageDone ? 'completed' : last)]);
  if (w.lateIndex !== -1) items.push([w.lateIndex, { ...messageItem(w.id, w.lateText, last), id: 'msg_' + w.id + '_late' }]);
  // A call closed before the end was whole; the one still open shares the Response's fate
  // (cut at max_output_tokens or by a failure: its arguments may be cut too).
  for (const s of w.tools) if (s !== undefined && (!streamed || s.announced)) items.push([s.outputIndex, { ...callItem('', s, s.closed ?? last, w.names), id: s.itemId }]);
  items.sort((a, b) => a[0] - b[0]);
  return items;
}

/** The upstream finished: close the items, then response.completed (or .incomplete) with usage. */
export function responsesDone(w: ResponsesWriter): string {
  if (w.done) return '';
  let out = open(w);
  const finish = w.finish ?? (w.tools.length > 0 ? 'tool_calls' : 'stop');
  const end = ending(finish);
  const last: ItemStatus = end.status === 'incomplete' ? 'incomplete' : 'completed';
  w.done = true;
  out += closeReasoning(w);
  // An empty reply is one message item with an empty text, as a whole Response's output (not one of reasoning only).
  if (w.messageIndex === -1 && w.tools.length === 0 && w.lateText === '' && w.reasoningIndex === -1) out += openMessage(w);
  if (w.messageIndex !== -1 && !w.messageDone) out += closeMessage(w, 'msg_' + w.id, w.messageIndex, w.text, last);
  // The call still open (the last one): done now, with the Response's status.
  for (const s of w.tools) if (s !== undefined && s.closed === null) out += closeCall(w, s, last);
  // Text that came after a function call: its own message item, whole.
  if (w.lateText !== '') {
    w.lateIndex = w.outputs++;
    const itemId = 'msg_' + w.id + '_late';
    out += event(w, 'response.output_item.added', { output_index: w.lateIndex, item: { ...messageItem(w.id, '', 'in_progress'), id: itemId } });
    out += event(w, 'response.content_part.added', { item_id: itemId, output_index: w.lateIndex, content_index: 0, part: textPart('') });
    out += event(w, 'response.output_text.delta', { item_id: itemId, output_index: w.lateIndex, content_index: 0, delta: w.lateText, logprobs: [] });
    out += closeMessage(w, itemId, w.lateIndex, w.lateText, last);
  }
  // An upstream that sent no usage: the prompt's estimate, as the broker charges it.
  const usage = w.usage ?? { promptTokens: w.promptEstimate, completionTokens: w.tokens };
  const shell = responseShell(w.id, w.model, w.createdAt, end.status, outputItems(w, last).map(([, item]) => item), usage, { ...w.echo, ...end });
  return out + event(w, end.status === 'incomplete' ? 'response.incomplete' : 'response.completed', { response: shell });
}

/** A Response that is not ours (a passed-through upstream's, as its response.created gave it): overrides responseShell's fields. */
export interface ResponseIdentity {
  id: string;
  model?: string;
  created_at?: number;
  [field: string]: unknown;
}

/**
 * A stream that failed after it began: response.failed, whose response carries the
 * error (our code, e.g. upstream_error or upstream_timeout, and the message) and the output
 * streamed so far, the open item incomplete (the SDK's finalResponse() then holds the text
 * the client was sent): the broker's own items, or a passed-through upstream's as its
 * events built them (`items`), with the fields of its response.created.
 */
export function responsesFailed(w: { seq: number; response?: ResponseIdentity | null; items?: Record<string, unknown>[] } | ResponsesWriter, id: string, model: string, code: string, message: string): string {
  const ours = 'outputs' in w;
  // As a cut at max_output_tokens: the items closed before stay completed, the open one is incomplete.
  const output = ours ? outputItems(w, 'incomplete', true).map(([, item]) => item) : (w.items ?? []).filter((i) => i !== undefined).map((i) => (i['status'] === 'completed' ? i : { ...i, status: 'incomplete' }));
  // Passed through, the Response is the upstream's: its id and model, not ours.
  const identity = ours ? { ...w.echo } : { ...w.response };
  const created = ours ? w.createdAt : Math.floor(Date.now() / 1000);
  const shell = responseShell(id, model, created, 'failed', output, null, { ...identity, error: { code, message } });
  return event(w, 'response.failed', { response: shell });
}
