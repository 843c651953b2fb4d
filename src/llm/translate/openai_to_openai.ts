// An OpenAI client served by an OpenAI-compatible provider: pass-through.
// The request changes only `model` (the deployment's upstream name) and, when
// streaming, asks for the usage chunk so tokens can be counted. Replies are
// forwarded as the upstream sent them; see chain/compile.ts for the stream.

import { BrokerError } from '../../errors.ts';
import { requireArray, requireObject } from './common.ts';
import type { OpenAIChatRequest, OpenAIChunk, OpenAICompletionRequest } from './types.ts';

/** A streamed body with the usage chunk asked for (stream_options.include_usage). */
export function withUsage<T extends Record<string, unknown>>(b: T): T {
  if (b['stream'] !== true) return b;
  const so = b['stream_options'];
  const base = so !== null && typeof so === 'object' ? (so as Record<string, unknown>) : {};
  return { ...b, stream_options: { ...base, include_usage: true } };
}

/** /v1/chat/completions body for `upstreamModel`; every other field is kept as sent. */
export function chatRequest(body: unknown, upstreamModel: string): OpenAIChatRequest {
  const b = requireObject(body);
  requireArray(b, 'messages');
  return withUsage({ ...b, model: upstreamModel }) as OpenAIChatRequest;
}

/** /v1/completions body for `upstreamModel`; every other field is kept as sent. */
export function completionRequest(body: unknown, upstreamModel: string): OpenAICompletionRequest {
  const b = requireObject(body);
  const p = b['prompt'];
  if (typeof p !== 'string' && !Array.isArray(p)) throw new BrokerError('invalid_request', 'prompt must be a string or an array', { details: { field: 'prompt' } });
  return withUsage({ ...b, model: upstreamModel }) as OpenAICompletionRequest;
}

/** The client asked for the usage chunk itself (`stream_options.include_usage`). */
export function clientWantsUsage(body: unknown): boolean {
  if (body === null || typeof body !== 'object') return false;
  const so = (body as Record<string, unknown>)['stream_options'];
  return so !== null && typeof so === 'object' && (so as Record<string, unknown>)['include_usage'] === true;
}

/**
 * The chunk that stream_options.include_usage adds: usage set and no choices.
 * It is dropped when we asked for it and the client did not.
 */
export function isUsageOnlyChunk(chunk: OpenAIChunk): boolean {
  const u = chunk.usage;
  if (u === null || u === undefined || typeof u !== 'object') return false;
  const c = chunk.choices;
  return !Array.isArray(c) || c.length === 0;
}
