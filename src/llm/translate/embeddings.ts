// Embeddings, both ways: OpenAI POST /v1/embeddings ⇄ Ollama POST /api/embed.
//   request:  {model, input: string | string[], dimensions} ⇄ {model, input, dimensions, truncate, options}
//   response: {object:list, data:[{object:embedding, index, embedding}], usage} ⇄ {model, embeddings:[[…]], prompt_eval_count}
// Batches keep their order. An OpenAI client that asks encoding_format "base64" (the
// official SDK's default; it decodes the floats itself) gets each vector as the
// base64 of its little-endian float32s, whatever the upstream sent.

import { BrokerError } from '../../errors.ts';
import { requireObject } from './common.ts';
import { CHARS_PER_TOKEN } from '../request.ts';
import type { ReplyContext, Usage } from './types.ts';

function invalid(field: string, what: string): BrokerError {
  return new BrokerError('invalid_request', `${field} ${what}`, { details: { field } });
}

/** The texts of `input`: a string or an array of strings (token arrays only reach an OpenAI upstream). */
function texts(input: unknown): string | string[] {
  if (typeof input === 'string') return input;
  if (Array.isArray(input) && input.every((s) => typeof s === 'string')) return input as string[];
  throw invalid('input', "must be a string or an array of strings for this model: its upstream (Ollama) takes no token ids (LangChain's OpenAIEmbeddings sends them unless check_embedding_ctx_length is off)");
}

/** /v1/embeddings body → /api/embed body. */
export function ollamaRequest(body: unknown, upstreamModel: string): Record<string, unknown> {
  const b = requireObject(body);
  const out: Record<string, unknown> = { model: upstreamModel, input: texts(b['input']) };
  if (typeof b['dimensions'] === 'number') out['dimensions'] = b['dimensions'];
  return out;
}

/**
 * /api/embed body → /v1/embeddings body; floats, since the broker reads them. Ollama truncates
 * an input longer than the model's context unless told `truncate: false`; an OpenAI-compatible
 * server refuses it: with the group's `contextTokens` known, each input is cut to that many
 * tokens by the broker's estimate (4 characters a token) first.
 */
export function openaiRequest(body: unknown, upstreamModel: string, contextTokens?: number): Record<string, unknown> {
  const b = requireObject(body);
  let input = texts(b['input']);
  // Ollama embeds an empty string; an OpenAI-compatible server answers it 400.
  if (input === '' || (Array.isArray(input) && input.includes(''))) {
    const field = Array.isArray(input) ? `input[${input.indexOf('')}]` : 'input';
    throw invalid(field, 'must not be empty for this model (an OpenAI-compatible upstream)');
  }
  if (contextTokens !== undefined && b['truncate'] !== false) {
    const chars = contextTokens * CHARS_PER_TOKEN;
    input = typeof input === 'string' ? cut(input, chars) : input.map((s) => cut(s, chars));
  }
  const out: Record<string, unknown> = { model: upstreamModel, input, encoding_format: 'float' };
  if (typeof b['dimensions'] === 'number') out['dimensions'] = b['dimensions'];
  return out;
}

/** The first `chars` UTF-16 units of s, never half a surrogate pair. */
function cut(s: string, chars: number): string {
  if (s.length <= chars) return s;
  const end = /[\uD800-\uDBFF]/.test(s[chars - 1] ?? '') ? chars - 1 : chars;
  return s.slice(0, end);
}

/** Same API: the body with the deployment's model name; an OpenAI client's encoding_format is kept (the reply passes through). */
export function passRequest(body: unknown, upstreamModel: string): Record<string, unknown> {
  return { ...requireObject(body), model: upstreamModel };
}

function vectors(v: unknown): number[][] {
  if (!Array.isArray(v) || !v.every((e) => Array.isArray(e))) throw new BrokerError('upstream_error', 'ollama upstream sent embeddings that are not an array of vectors');
  return v as number[][];
}

export function base64OfFloats(vec: readonly number[]): string {
  const f = new Float32Array(vec);
  return Buffer.from(f.buffer, f.byteOffset, f.byteLength).toString('base64');
}

function floatsOfBase64(s: string): number[] {
  const b = Buffer.from(s, 'base64');
  return Array.from(new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength - (b.byteLength % 4))));
}

/** /api/embed reply → /v1/embeddings reply, in the encoding the client asked for. */
export function openaiReply(r: Record<string, unknown>, ctx: ReplyContext): Record<string, unknown> {
  const base64 = ctx.request?.['encoding_format'] === 'base64';
  const prompt = typeof r['prompt_eval_count'] === 'number' ? r['prompt_eval_count'] : 0;
  return {
    object: 'list',
    data: vectors(r['embeddings']).map((embedding, index) => ({ object: 'embedding', index, embedding: base64 ? base64OfFloats(embedding) : embedding })),
    model: ctx.model,
    usage: { prompt_tokens: prompt, total_tokens: prompt },
  };
}

/** /v1/embeddings reply → /api/embed reply (data in index order). */
export function ollamaReply(r: Record<string, unknown>, ctx: ReplyContext): Record<string, unknown> {
  const data = r['data'];
  if (!Array.isArray(data)) throw new BrokerError('upstream_error', 'openai upstream sent an embeddings reply without data');
  const sorted = [...(data as Array<Record<string, unknown>>)].sort((a, b) => Number(a['index'] ?? 0) - Number(b['index'] ?? 0));
  const embeddings = sorted.map((d) => (typeof d['embedding'] === 'string' ? floatsOfBase64(d['embedding']) : (d['embedding'] as number[])));
  const u = embedUsage(r);
  // The time the broker waited for it (Ollama's clients divide by total_duration); load_duration is not known.
  return { model: ctx.model, embeddings, total_duration: Math.max(1, Math.round((ctx.elapsedMs ?? 0) * 1e6)), load_duration: 0, prompt_eval_count: u?.promptTokens ?? 0 };
}

/**
 * An OpenAI upstream's reply to an OpenAI client, in the encoding the client asked for, or
 * undefined when it already is. Some OpenAI-compatible servers ignore encoding_format and
 * always send floats: passed on as they came, the official SDK (which asks for base64 and
 * decodes it) read every vector as empty.
 */
export function openaiReencoded(r: Record<string, unknown>, ctx: ReplyContext): Record<string, unknown> | undefined {
  const data = r['data'];
  if (!Array.isArray(data)) return undefined;
  const base64 = ctx.request?.['encoding_format'] === 'base64';
  const wrong = (d: unknown): boolean => {
    const e = (d as Record<string, unknown> | null)?.['embedding'];
    return base64 ? Array.isArray(e) : typeof e === 'string';
  };
  if (!data.some(wrong)) return undefined;
  return {
    ...r,
    data: (data as Array<Record<string, unknown>>).map((d) => {
      if (!wrong(d)) return d;
      const e = d['embedding'];
      return { ...d, embedding: base64 ? base64OfFloats(e as number[]) : floatsOfBase64(e as string) };
    }),
  };
}

/** Tokens an embeddings reply reports, in either shape. */
export function embedUsage(r: Record<string, unknown>): Usage | null {
  const u = r['usage'] as Record<string, unknown> | undefined;
  if (u !== undefined && u !== null && typeof u['prompt_tokens'] === 'number') return { promptTokens: u['prompt_tokens'], completionTokens: 0 };
  if (typeof r['prompt_eval_count'] === 'number') return { promptTokens: r['prompt_eval_count'], completionTokens: 0 };
  return null;
}
