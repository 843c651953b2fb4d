// What the Responses and Messages writers read: one provider-neutral shape for a
// streamed event and for a whole reply, made from an OpenAI chunk or reply, or an
// Ollama line or reply. Each new client API then needs one writer, not one per
// provider: the chain still parses each upstream event once and writes the
// client's events directly, so a (client, provider) pair is one compiled chain.
//
// Tool calls: OpenAI streams a call as indexed fragments (the first with id and
// name, then argument pieces); Ollama sends each call whole, its arguments an
// object. Both become indexed ToolDeltas; an Ollama call gets the next free index,
// a generated id, and its arguments as one JSON fragment.

import { argumentsJsonFromOllama, choiceZero, finishFromOllama, usageFromOllama, usageFromOpenAI } from './common.ts';
import type { OllamaChatResponse, OllamaGenerateResponse, OpenAIChatCompletion, OpenAIChunk, OpenAICompletion, Usage } from './types.ts';

export interface ToolDelta {
  readonly index: number;
  readonly id?: string;
  readonly name?: string;
  /** A fragment of the arguments' JSON text. */
  readonly arguments?: string;
  /** The whole call (Ollama sends each call whole): its block or item may close at once. */
  readonly whole?: true;
}

export interface Delta {
  /** Generated text in this event ('' for none). */
  text: string;
  /** Reasoning text ('' for none). */
  thinking: string;
  tools: ToolDelta[] | null;
  /** OpenAI words: stop, length, tool_calls, content_filter; null until the upstream says. */
  finish: string | null;
  usage: Usage | null;
  /** vLLM's `stop_reason` when a string: the stop sequence that ended the reply (OpenAI says none). */
  stopSaid?: string | null;
}

export interface ToolCall {
  readonly id: string;
  readonly name: string;
  /** JSON text. */
  readonly arguments: string;
}

export interface WholeReply {
  readonly text: string;
  readonly thinking: string;
  readonly tools: readonly ToolCall[];
  readonly finish: string;
  readonly usage: Usage;
  /** As Delta's. */
  readonly stopSaid?: string | null;
}

/** Reasoning-only upstream events between two keep-alives: about a second of a local model's thinking. */
export const QUIET_EVENTS = 32;

/**
 * Counts an event that carries only reasoning, which the Messages and Responses writers drop;
 * true every QUIET_EVENTS of them: time to tell the client, and any proxy between with a read
 * timeout, that the stream lives (a model can think for a minute).
 */
export function keepAliveDue(w: { quiet: number }, d: Delta): boolean {
  if (d.text !== '' || d.tools !== null || d.thinking === '' || ++w.quiet < QUIET_EVENTS) return false;
  w.quiet = 0;
  return true;
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

/**
 * A stream's OpenAI tool calls seen so far, for calls sent without `index` (Gemini's endpoint
 * sends each call whole in its own chunk, index-less): each new id is the next call, a
 * fragment without id or index continues the last one (as the whole-reply assembler reads them).
 */
export interface OpenAIToolState {
  readonly ids: Map<string, number>;
  last: number;
  next: number;
}

export function openaiToolState(): OpenAIToolState {
  return { ids: new Map(), last: -1, next: 0 };
}

/** The index of the `i`th tool call delta of a chunk. */
export function toolIndex(st: OpenAIToolState, tc: { index?: unknown; id?: unknown }, i: number): number {
  const id = typeof tc.id === 'string' && tc.id !== '' ? tc.id : undefined;
  let index: number;
  if (typeof tc.index === 'number') index = tc.index;
  else if (id !== undefined) index = st.ids.get(id) ?? st.next;
  else index = i === 0 && st.last >= 0 ? st.last : st.next;
  if (id !== undefined && !st.ids.has(id)) st.ids.set(id, index);
  st.last = index;
  if (index >= st.next) st.next = index + 1;
  return index;
}

/** One chat.completion.chunk or text_completion chunk; the first choice is the reply. `st`: the stream's tool calls so far. */
export function deltaFromOpenAI(chunk: OpenAIChunk, st: OpenAIToolState = openaiToolState()): Delta {
  const c = choiceZero(chunk.choices);
  const d = c?.delta;
  let tools: ToolDelta[] | null = null;
  if (d !== undefined && d !== null && Array.isArray(d.tool_calls) && d.tool_calls.length > 0) {
    tools = [];
    for (let i = 0; i < d.tool_calls.length; i++) {
      const tc = d.tool_calls[i]!;
      const td: { -readonly [K in keyof ToolDelta]: ToolDelta[K] } = { index: toolIndex(st, tc, i) };
      if (typeof tc.id === 'string') td.id = tc.id;
      if (typeof tc.function?.name === 'string') td.name = tc.function.name;
      if (typeof tc.function?.arguments === 'string') td.arguments = tc.function.arguments;
      tools.push(td);
    }
  }
  return {
    // A refusal (OpenAI's structured outputs) is the model's answer too: as text, not lost, in APIs that have no field for it.
    text: d !== undefined && d !== null ? str(d.content) + str((d as { refusal?: unknown }).refusal) : str(c?.text),
    thinking: d !== undefined && d !== null ? str(d.reasoning_content ?? d.reasoning) : '',
    tools,
    finish: typeof c?.finish_reason === 'string' ? c.finish_reason : null,
    usage: usageFromOpenAI(chunk.usage),
    stopSaid: stopSaid(c),
  };
}

/** vLLM's choices[].stop_reason: the matched stop string (a token id for stop_token_ids, null at EOS: neither is one). */
function stopSaid(c: unknown): string | null {
  const r = (c as { stop_reason?: unknown } | undefined)?.stop_reason;
  return typeof r === 'string' ? r : null;
}

/** Ollama tool calls seen so far in a stream: their indexes continue across lines. */
export interface OllamaToolState {
  toolCalls: number;
  readonly id: string;
}

/** One /api/chat or /api/generate line; the done line carries finish and usage. */
export function deltaFromOllama(line: OllamaChatResponse | OllamaGenerateResponse, st: OllamaToolState): Delta {
  const m = (line as OllamaChatResponse).message;
  let tools: ToolDelta[] | null = null;
  if (m !== undefined && m !== null && Array.isArray(m.tool_calls) && m.tool_calls.length > 0) {
    tools = m.tool_calls.map((tc) => {
      const index = st.toolCalls++;
      return { index, id: typeof tc.id === 'string' && tc.id !== '' ? tc.id : `call_${st.id}_${index}`, name: str(tc.function?.name), arguments: argumentsJsonFromOllama(tc.function?.arguments), whole: true };
    });
  }
  const done = line.done === true;
  return {
    text: m !== undefined && m !== null ? str(m.content) : str((line as OllamaGenerateResponse).response),
    thinking: m !== undefined && m !== null ? str(m.thinking) : str((line as OllamaGenerateResponse).thinking),
    tools,
    finish: done ? finishFromOllama(line.done_reason, st.toolCalls > 0) : null,
    usage: done ? usageFromOllama(line) : null,
  };
}

const NO_USAGE: Usage = { promptTokens: 0, completionTokens: 0 };

/** A whole chat.completion (or text_completion) reply. */
export function replyFromOpenAI(r: OpenAIChatCompletion | OpenAICompletion): WholeReply {
  const c = choiceZero(r.choices as readonly { index?: unknown }[]) as Record<string, unknown> | undefined;
  const m = c?.['message'] as OpenAIChatCompletion['choices'][number]['message'] | undefined;
  let text = '';
  if (m !== undefined) {
    if (typeof m.content === 'string') text = m.content;
    else if (Array.isArray(m.content)) text = m.content.map((p) => (p.type === 'text' ? str((p as { text?: unknown }).text) : '')).join('');
    text += str((m as { refusal?: unknown }).refusal);
  } else text = str(c?.['text']);
  const tools = (m?.tool_calls ?? []).map((tc, i) => ({ id: str(tc.id) || `call_${i}`, name: str(tc.function?.name), arguments: str(tc.function?.arguments) || '{}' }));
  const finish = typeof c?.['finish_reason'] === 'string' ? (c['finish_reason'] as string) : 'stop';
  return { text, thinking: str(m?.reasoning_content ?? m?.reasoning), tools, finish, usage: usageFromOpenAI(r.usage) ?? NO_USAGE, stopSaid: stopSaid(c) };
}

/** A whole /api/chat (or /api/generate) reply. */
export function replyFromOllama(r: OllamaChatResponse | OllamaGenerateResponse, id: string): WholeReply {
  const st: OllamaToolState = { toolCalls: 0, id };
  const d = deltaFromOllama({ ...r, done: true }, st);
  const tools = (d.tools ?? []).map((t) => ({ id: t.id!, name: t.name ?? '', arguments: t.arguments ?? '{}' }));
  return { text: d.text, thinking: d.thinking, tools, finish: d.finish ?? 'stop', usage: d.usage ?? NO_USAGE };
}
