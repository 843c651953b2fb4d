// A cached reply, independent of the mode it was stored in: the text as the client
// received it chunk by chunk (one chunk for a whole reply), the finish reason and the
// usage. Read back from the bytes the client was sent (capture*), written again in
// the client's API and mode of a later request (replay.ts).
//
// Capture takes only what replay writes again: one text output, a finish it has a
// word for, no tool calls, reasoning, refusals, annotations or logprobs. For the
// Responses and Messages APIs any event outside that set (an allowlist) means the
// reply is not stored.
import type { ClientApi, Kind } from '../translate/index.ts';

export interface CachedReply {
  readonly v: 1;
  readonly kind: Kind;
  /** The text deltas as the stream carried them; a whole reply's text as one chunk. */
  readonly chunks: readonly string[];
  /** OpenAI words: stop, length, content_filter. */
  readonly finish: string;
  readonly promptTokens: number;
  readonly completionTokens: number;
  /**
   * The model name the client was answered with (an upstream's own name when passed through,
   * the group's when translated): a hit says the same as the miss it replays. Absent in
   * entries stored before it was kept: the group's name then.
   */
  readonly model?: string;
  /** Ollama /api/generate: the done line's `context` (the conversation's tokens, sent back by clients on their next turn). */
  readonly context?: readonly number[];
}

/** Approximate bytes an entry holds (what the LRU's byte bound counts). */
export function entryBytes(e: CachedReply): number {
  let n = 64 + (e.model?.length ?? 0) * 2 + (e.context?.length ?? 0) * 8;
  for (const c of e.chunks) n += CHUNK_BYTES + c.length * 2;
  return n;
}

/** What each chunk costs beyond its text (a string's header and its slot). */
const CHUNK_BYTES = 16;

/**
 * The entry within `budget` bytes if its chunking is what makes it too large: its chunks
 * merged in runs of k (a replay then streams fewer, larger chunks), so that a reply stored
 * from a stream is kept whenever the same reply stored whole would be. As it is otherwise.
 */
export function fitChunks(e: CachedReply, budget: number): CachedReply {
  const size = entryBytes(e);
  if (size <= budget || e.chunks.length <= 1) return e;
  const fixed = size - CHUNK_BYTES * e.chunks.length;
  const room = Math.floor((budget - fixed) / CHUNK_BYTES);
  if (room < 1) return e;
  const k = Math.ceil(e.chunks.length / room);
  const chunks: string[] = [];
  for (let i = 0; i < e.chunks.length; i += k) chunks.push(e.chunks.slice(i, i + k).join(''));
  return { ...e, chunks };
}

type Json = Record<string, unknown>;

function parse(line: string): Json | null {
  try {
    const v = JSON.parse(line) as unknown;
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Json) : null;
  } catch {
    return null;
  }
}

/** What only the upstream can produce again: tool calls, several choices, logprobs, thinking. Such replies are not stored. */
function openaiChoiceReplayable(c: Json | undefined): boolean {
  if (c === undefined) return true;
  if (typeof c['index'] === 'number' && c['index'] !== 0) return false;
  if (c['logprobs'] !== undefined && c['logprobs'] !== null) return false;
  const d = (c['delta'] ?? c['message']) as Json | undefined;
  if (d !== undefined && d !== null) {
    if (d['tool_calls'] !== undefined && d['tool_calls'] !== null && !(Array.isArray(d['tool_calls']) && d['tool_calls'].length === 0)) return false;
    if (d['function_call'] !== undefined && d['function_call'] !== null) return false;
    if (typeof d['refusal'] === 'string') return false;
    // Reasoning: an Ollama model's thinking translated (reasoning_content), vLLM's and DeepSeek's own.
    for (const k of ['reasoning_content', 'reasoning']) if (typeof d[k] === 'string' && d[k] !== '') return false;
    if (Array.isArray(d['annotations']) && d['annotations'].length > 0) return false;
    // Audio output (gpt-4o-audio: its transcript and data are in delta.audio / message.audio), or
    // content as parts (Mistral's thinking chunks): replay writes only text content.
    if (d['audio'] !== undefined && d['audio'] !== null) return false;
    if (d['content'] !== undefined && d['content'] !== null && typeof d['content'] !== 'string') return false;
  }
  return true;
}

function ollamaReplayable(j: Json): boolean {
  const m = j['message'] as Json | undefined;
  if (m !== undefined && m !== null) {
    if (Array.isArray(m['tool_calls']) && m['tool_calls'].length > 0) return false;
    if (typeof m['thinking'] === 'string' && m['thinking'] !== '') return false;
    if (Array.isArray(m['images']) && m['images'].length > 0) return false;
  }
  if (typeof j['thinking'] === 'string' && j['thinking'] !== '') return false;
  // Ollama's log-probabilities (logprobs: true): replay does not write them.
  if (Array.isArray(j['logprobs']) && j['logprobs'].length > 0) return false;
  return true;
}

function ollamaFinish(reason: unknown): string {
  return reason === 'length' ? 'length' : 'stop';
}

/**
 * A completed stream as the client received it → an entry; null when it holds what a
 * replay could not reproduce. `tokens`: the chain's counts, used when the client's
 * stream carried no usage.
 */
export function captureStream(api: ClientApi, kind: Kind, text: string, tokens: { prompt: number; completion: number }): CachedReply | null {
  if (api === 'responses') return responsesStream(kind, text, tokens);
  if (api === 'anthropic') return anthropicStream(kind, text, tokens);
  const chunks: string[] = [];
  let finish: string | null = null;
  let prompt = tokens.prompt;
  let completion = tokens.completion;
  let context: number[] | undefined;
  if (api === 'openai') {
    let done = false;
    for (const data of sseData(text)) {
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const j = parse(data);
      if (j === null || j['error'] !== undefined) return null;
      const choices = j['choices'] as Json[] | undefined;
      if (Array.isArray(choices)) {
        if (choices.length > 1) return null;
        const c = choices[0];
        if (!openaiChoiceReplayable(c)) return null;
        if (c !== undefined) {
          const t = kind === 'chat' ? (c['delta'] as Json | undefined)?.['content'] : c['text'];
          if (typeof t === 'string' && t !== '') chunks.push(t);
          if (typeof c['finish_reason'] === 'string') finish = c['finish_reason'];
        }
      }
      const u = j['usage'] as Json | undefined | null;
      if (u !== undefined && u !== null && typeof u['prompt_tokens'] === 'number') {
        prompt = u['prompt_tokens'];
        completion = typeof u['completion_tokens'] === 'number' ? u['completion_tokens'] : completion;
      }
    }
    if (!done) return null;
  } else {
    let done = false;
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      const j = parse(line);
      if (j === null || j['error'] !== undefined || !ollamaReplayable(j)) return null;
      const t = kind === 'chat' ? (j['message'] as Json | undefined)?.['content'] : j['response'];
      if (typeof t === 'string' && t !== '') chunks.push(t);
      if (j['done'] === true) {
        done = true;
        finish = ollamaFinish(j['done_reason']);
        if (typeof j['prompt_eval_count'] === 'number') prompt = j['prompt_eval_count'];
        if (typeof j['eval_count'] === 'number') completion = j['eval_count'];
        if (isContext(j['context'])) context = j['context'];
      }
    }
    if (!done) return null;
  }
  if (finish === null || finish === 'tool_calls' || finish === 'function_call') return null;
  return { v: 1, kind, chunks, finish, promptTokens: prompt, completionTokens: completion, ...(context !== undefined ? { context } : {}) };
}

function isContext(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'number');
}

/** A whole reply as the client received it → an entry; null when a replay could not reproduce it. */
export function captureWhole(api: ClientApi, kind: Kind, text: string): CachedReply | null {
  const j = parse(text);
  if (j === null) return null;
  if (api === 'responses') return j['object'] === 'response' ? fromResponse(kind, j, null, { prompt: 0, completion: 0 }) : null;
  if (api === 'anthropic') return anthropicWhole(kind, j);
  if (j['error'] !== undefined) return null;
  if (api === 'openai') {
    const choices = j['choices'] as Json[] | undefined;
    if (!Array.isArray(choices) || choices.length !== 1 || !openaiChoiceReplayable(choices[0])) return null;
    const c = choices[0]!;
    const t = kind === 'chat' ? (c['message'] as Json | undefined)?.['content'] : c['text'];
    const finish = c['finish_reason'];
    if (typeof t !== 'string' || typeof finish !== 'string' || finish === 'tool_calls') return null;
    const u = (j['usage'] ?? {}) as Json;
    return { v: 1, kind, chunks: [t], finish, promptTokens: num(u['prompt_tokens']), completionTokens: num(u['completion_tokens']) };
  }
  if (!ollamaReplayable(j) || j['done'] !== true) return null;
  const t = kind === 'chat' ? (j['message'] as Json | undefined)?.['content'] : j['response'];
  if (typeof t !== 'string') return null;
  return { v: 1, kind, chunks: [t], finish: ollamaFinish(j['done_reason']), promptTokens: num(j['prompt_eval_count']), completionTokens: num(j['eval_count']), ...(isContext(j['context']) ? { context: j['context'] } : {}) };
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

/** The payload of every `data:` line of an SSE stream, as the client received it. */
function sseData(text: string): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('data:')) out.push(line.slice(line.charCodeAt(5) === 32 ? 6 : 5).trim());
  }
  return out;
}

/** The JSON of every `data:` line; null for one that is not a JSON object. */
const sseJson = (text: string): (Json | null)[] => sseData(text).map(parse);

const empty = (v: unknown): boolean => v === undefined || v === null || (Array.isArray(v) && v.length === 0);

// ---- Responses ----

/** An output_text part replay writes again: no annotations, no logprobs. */
function plainTextPart(p: unknown): p is Json {
  const o = p as Json | null;
  return o !== null && typeof o === 'object' && o['type'] === 'output_text' && typeof o['text'] === 'string' && empty(o['annotations']) && empty(o['logprobs']);
}

/**
 * The terminal Response (response.completed / .incomplete, or a whole reply) → an
 * entry: at most one output, an assistant message with one plain text part.
 * `chunks`: the stream's deltas (checked against the final text), null for a whole reply.
 */
function fromResponse(kind: Kind, r: Json | undefined, chunks: string[] | null, tokens: { prompt: number; completion: number }): CachedReply | null {
  if (r === undefined || r === null || typeof r !== 'object') return null;
  const status = r['status'];
  const reason = (r['incomplete_details'] as Json | null | undefined)?.['reason'];
  const finish = status === 'completed' ? 'stop' : status === 'incomplete' && reason === 'max_output_tokens' ? 'length' : null;
  if (finish === null || !empty(r['error'])) return null;
  const output = r['output'];
  if (!Array.isArray(output) || output.length > 1) return null;
  let text = '';
  if (output.length === 1) {
    const m = output[0] as Json;
    const content = m?.['content'];
    if (m?.['type'] !== 'message' || m['role'] !== 'assistant' || !Array.isArray(content) || content.length !== 1 || !plainTextPart(content[0])) return null;
    text = content[0]['text'] as string;
  }
  if (chunks !== null && chunks.join('') !== text) return null;
  const u = r['usage'] as Json | null | undefined;
  const prompt = typeof u?.['input_tokens'] === 'number' ? u['input_tokens'] : tokens.prompt;
  const completion = typeof u?.['output_tokens'] === 'number' ? u['output_tokens'] : tokens.completion;
  return { v: 1, kind, chunks: chunks ?? [text], finish, promptTokens: prompt, completionTokens: completion };
}

/** Events of a plain text Responses stream; any other (a function call's, reasoning, a refusal, an annotation) is not replayable. */
const RESPONSES_EVENTS = new Set(['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added', 'response.output_text.delta', 'response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed', 'response.incomplete']);

function responsesStream(kind: Kind, text: string, tokens: { prompt: number; completion: number }): CachedReply | null {
  const chunks: string[] = [];
  let end: Json | undefined;
  for (const j of sseJson(text)) {
    const type = j?.['type'];
    if (j === null || typeof type !== 'string' || !RESPONSES_EVENTS.has(type) || end !== undefined) return null;
    if (type === 'response.output_item.added' && (j['output_index'] !== 0 || (j['item'] as Json | undefined)?.['type'] !== 'message')) return null;
    if (type === 'response.content_part.added' && (j['content_index'] !== 0 || !plainTextPart(j['part']))) return null;
    if (type === 'response.output_text.delta') {
      if (typeof j['delta'] !== 'string' || !empty(j['logprobs'])) return null;
      if (j['delta'] !== '') chunks.push(j['delta']);
    }
    if (type === 'response.completed' || type === 'response.incomplete') end = j['response'] as Json;
  }
  // No terminal event: the stream was cut (a response.failed or error event is outside the set).
  return end === undefined ? null : fromResponse(kind, end, chunks, tokens);
}

// ---- Anthropic Messages ----

/** Anthropic stop reasons → OpenAI words; null for those replay cannot say (tool_use, stop_sequence, pause_turn). */
function anthropicFinish(r: unknown): string | null {
  return r === 'end_turn' ? 'stop' : r === 'max_tokens' ? 'length' : r === 'refusal' ? 'content_filter' : null;
}

/** The whole prompt: Anthropic counts cache reads and writes apart from input_tokens. */
function anthropicPrompt(u: Json | null | undefined): number | undefined {
  if (u === null || u === undefined || typeof u['input_tokens'] !== 'number') return undefined;
  return u['input_tokens'] + num(u['cache_read_input_tokens']) + num(u['cache_creation_input_tokens']);
}

function anthropicWhole(kind: Kind, j: Json): CachedReply | null {
  if (j['type'] !== 'message' || j['role'] !== 'assistant') return null;
  const content = j['content'];
  const finish = anthropicFinish(j['stop_reason']);
  if (!Array.isArray(content) || content.length > 1 || finish === null) return null;
  const b = content[0] as Json | undefined;
  if (b !== undefined && (b['type'] !== 'text' || typeof b['text'] !== 'string' || !empty(b['citations']))) return null;
  const u = j['usage'] as Json | undefined;
  return { v: 1, kind, chunks: [(b?.['text'] as string | undefined) ?? ''], finish, promptTokens: anthropicPrompt(u) ?? 0, completionTokens: num(u?.['output_tokens']) };
}

function anthropicStream(kind: Kind, text: string, tokens: { prompt: number; completion: number }): CachedReply | null {
  const chunks: string[] = [];
  let blocks = 0;
  let finish: string | null = null;
  let prompt: number | undefined;
  let completion: number | undefined;
  let stopped = false;
  for (const j of sseJson(text)) {
    if (j === null || stopped) return null;
    switch (j['type']) {
      case 'message_start':
        prompt = anthropicPrompt((j['message'] as Json | undefined)?.['usage'] as Json | undefined);
        break;
      case 'ping':
      case 'content_block_stop':
        break;
      case 'content_block_start': {
        const b = j['content_block'] as Json | undefined;
        if (++blocks > 1 || b?.['type'] !== 'text' || !empty(b['citations'])) return null;
        break;
      }
      case 'content_block_delta': {
        const d = j['delta'] as Json | undefined;
        if (d?.['type'] !== 'text_delta' || typeof d['text'] !== 'string') return null;
        if (d['text'] !== '') chunks.push(d['text']);
        break;
      }
      case 'message_delta': {
        finish = anthropicFinish((j['delta'] as Json | undefined)?.['stop_reason']);
        if (finish === null) return null;
        const u = j['usage'] as Json | undefined;
        prompt = anthropicPrompt(u) ?? prompt;
        if (typeof u?.['output_tokens'] === 'number') completion = u['output_tokens'];
        break;
      }
      case 'message_stop':
        stopped = true;
        break;
      default:
        // error (a cut stream), or an event replay does not write.
        return null;
    }
  }
  if (!stopped || finish === null) return null;
  return { v: 1, kind, chunks, finish, promptTokens: prompt ?? tokens.prompt, completionTokens: completion ?? tokens.completion };
}

// The first "model" key of a reply as the client received it: every API writes the top-level
// model before any content (and text inside content is escaped, so it cannot match).
// White space may stand around the colon: some servers (and OpenAI's own API) indent their JSON.
const MODEL_FIELD = /"model"\s*:\s*"((?:[^"\\]|\\.)*)"/;

/** `e` with the model name the client saw in `text`, when there is one. */
export function withModel(e: CachedReply | null, text: string): CachedReply | null {
  if (e === null) return null;
  const m = MODEL_FIELD.exec(text.length > 4096 ? text.slice(0, 4096) : text);
  if (m === null) return e;
  try {
    return { ...e, model: JSON.parse('"' + m[1] + '"') as string };
  } catch {
    return e;
  }
}

/** An entry read back from storage (Redis, another thread): checked, since it crossed a boundary. */
export function isCachedReply(v: unknown): v is CachedReply {
  if (v === null || typeof v !== 'object') return false;
  const e = v as Record<string, unknown>;
  return e['v'] === 1 && (e['kind'] === 'chat' || e['kind'] === 'completion') && Array.isArray(e['chunks']) && e['chunks'].every((c) => typeof c === 'string') && typeof e['finish'] === 'string' && typeof e['promptTokens'] === 'number' && typeof e['completionTokens'] === 'number' && (e['model'] === undefined || typeof e['model'] === 'string') && (e['context'] === undefined || isContext(e['context']));
}
