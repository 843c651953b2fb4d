// A cached reply, independent of the mode it was stored in: the text as the client
// received it chunk by chunk (one chunk for a whole reply), the finish reason and the
// usage. Read back from the bytes the client was sent (capture*), written again in
// the client's API and mode of a later request (replay.ts).
import type { Api, Kind } from '../translate/index.ts';

export interface CachedReply {
  readonly v: 1;
  readonly kind: Kind;
  /** The text deltas as the stream carried them; a whole reply's text as one chunk. */
  readonly chunks: readonly string[];
  /** OpenAI words: stop, length, content_filter. */
  readonly finish: string;
  readonly promptTokens: number;
  readonly completionTokens: number;
}

/** Approximate bytes an entry holds (what the LRU's byte bound counts). */
export function entryBytes(e: CachedReply): number {
  let n = 64;
  for (const c of e.chunks) n += 16 + c.length * 2;
  return n;
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
export function captureStream(api: Api, kind: Kind, text: string, tokens: { prompt: number; completion: number }): CachedReply | null {
  const chunks: string[] = [];
  let finish: string | null = null;
  let prompt = tokens.prompt;
  let completion = tokens.completion;
  if (api === 'openai') {
    let done = false;
    for (const line of text.split('\n')) {
      if (!line.startsWith('data:')) continue;
      const data = line.slice(line.charCodeAt(5) === 32 ? 6 : 5).trim();
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
      }
    }
    if (!done) return null;
  }
  if (finish === null || finish === 'tool_calls' || finish === 'function_call') return null;
  return { v: 1, kind, chunks, finish, promptTokens: prompt, completionTokens: completion };
}

/** A whole reply as the client received it → an entry; null when a replay could not reproduce it. */
export function captureWhole(api: Api, kind: Kind, text: string): CachedReply | null {
  const j = parse(text);
  if (j === null || j['error'] !== undefined) return null;
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
  return { v: 1, kind, chunks: [t], finish: ollamaFinish(j['done_reason']), promptTokens: num(j['prompt_eval_count']), completionTokens: num(j['eval_count']) };
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}

/** An entry read back from storage (Redis, another thread): checked, since it crossed a boundary. */
export function isCachedReply(v: unknown): v is CachedReply {
  if (v === null || typeof v !== 'object') return false;
  const e = v as Record<string, unknown>;
  return e['v'] === 1 && (e['kind'] === 'chat' || e['kind'] === 'completion') && Array.isArray(e['chunks']) && e['chunks'].every((c) => typeof c === 'string') && typeof e['finish'] === 'string' && typeof e['promptTokens'] === 'number' && typeof e['completionTokens'] === 'number';
}
