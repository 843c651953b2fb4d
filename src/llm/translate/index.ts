// The translator table: any client API to any provider, chat or completion.
// Files are named <client>_to_<provider>.ts; each one holds the request,
// reply and stream mappings of its pair. This module picks the right one.

import { BrokerError } from '../../errors.ts';
import { finishFromOllama, openaiChunkFinish, usageFromOllama, usageFromOpenAI } from './common.ts';
import { upstreamErrorMessage } from './errors.ts';
import * as ollamaToOllama from './ollama_to_ollama.ts';
import * as ollamaToOpenai from './ollama_to_openai.ts';
import * as openaiToOllama from './openai_to_ollama.ts';
import * as openaiToOpenai from './openai_to_openai.ts';
import type {
  Api,
  Kind,
  OllamaChatResponse,
  OllamaGenerateResponse,
  OpenAIChatCompletion,
  OpenAIChunk,
  OpenAICompletion,
  ReplyContext,
  Usage,
} from './types.ts';

export type { Api, Kind, ReplyContext, Usage } from './types.ts';

export interface Route {
  client: Api;
  provider: Api;
  kind: Kind;
}

/** Content type of a streamed reply in the client's API. */
export function streamContentType(client: Api): string {
  return client === 'openai' ? 'text/event-stream' : 'application/x-ndjson';
}

/** Whether the client asked for a stream: OpenAI streams only with `stream: true`, Ollama unless `stream: false`. */
export function clientStreams(client: Api, body: unknown): boolean {
  const s = body !== null && typeof body === 'object' ? (body as Record<string, unknown>)['stream'] : undefined;
  return client === 'openai' ? s === true : s !== false;
}

export interface UpstreamRequest {
  /** JSON body to send. */
  body: string;
  /** The reply will be a stream (the chain handles it), else one JSON body (translateResponse). */
  stream: boolean;
  /** The client asked for the OpenAI usage chunk; pass it to the chain as ctx.includeUsage. */
  includeUsage: boolean;
}

/**
 * A client body (already JSON-parsed) → the provider body, with `model`
 * replaced by the deployment's upstream name. Throws BrokerError
 * `invalid_request` for a body that cannot be translated.
 */
export function translateRequest(route: Route, body: unknown, upstreamModel: string): UpstreamRequest {
  const { client, provider, kind } = route;
  let out: unknown;
  if (client === 'openai') {
    const t = provider === 'openai' ? openaiToOpenai : openaiToOllama;
    out = kind === 'chat' ? t.chatRequest(body, upstreamModel) : t.completionRequest(body, upstreamModel);
  } else {
    const t = provider === 'openai' ? ollamaToOpenai : ollamaToOllama;
    out = kind === 'chat' ? t.chatRequest(body, upstreamModel) : t.completionRequest(body, upstreamModel);
  }
  return {
    body: JSON.stringify(out),
    stream: clientStreams(client, body),
    includeUsage: client === 'openai' && openaiToOpenai.clientWantsUsage(body),
  };
}

export interface ClientReply {
  /** The reply body in the client's API; the upstream bytes themselves for same-API routes. */
  body: string | Uint8Array;
  usage: Usage | null;
  /** OpenAI vocabulary: stop, length, tool_calls, content_filter. */
  finishReason: string | null;
}

function parseUpstream(provider: Api, body: string | Uint8Array): Record<string, unknown> {
  const text = typeof body === 'string' ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new BrokerError('upstream_error', `${provider} upstream sent a reply that is not JSON`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new BrokerError('upstream_error', `${provider} upstream sent an unexpected reply`);
  const r = v as Record<string, unknown>;
  const message = upstreamErrorMessage(r);
  if (message !== null && r['choices'] === undefined && r['done'] === undefined) {
    throw new BrokerError('upstream_error', `${provider} upstream failed: ${message}`, { details: { upstreamMessage: message } });
  }
  return r;
}

/**
 * A non-streamed upstream reply (2xx) → the client's reply. Same-API replies
 * are returned as the same bytes, only read for usage.
 */
export function translateResponse(route: Route, upstreamBody: string | Uint8Array, ctx: ReplyContext): ClientReply {
  const { client, provider, kind } = route;
  const r = parseUpstream(provider, upstreamBody);
  if (provider === 'openai') {
    const usage = usageFromOpenAI(r['usage'] as OpenAIChatCompletion['usage']);
    const finishReason = openaiChunkFinish(r as unknown as OpenAIChunk);
    if (client === 'openai') return { body: upstreamBody, usage, finishReason };
    const out = kind === 'chat' ? ollamaToOpenai.chatResponse(r as OpenAIChatCompletion, ctx) : ollamaToOpenai.completionResponse(r as OpenAICompletion, ctx);
    return { body: JSON.stringify(out), usage, finishReason };
  }
  const usage = usageFromOllama(r);
  const tools = (r as OllamaChatResponse).message?.tool_calls;
  const finishReason = finishFromOllama(r['done_reason'] as string | undefined, Array.isArray(tools) && tools.length > 0);
  if (client === 'ollama') return { body: upstreamBody, usage, finishReason };
  const out =
    kind === 'chat' ? openaiToOllama.chatResponse(r as OllamaChatResponse, ctx) : openaiToOllama.completionResponse(r as unknown as OllamaGenerateResponse, ctx);
  return { body: JSON.stringify(out), usage, finishReason };
}

export { upstreamError } from './errors.ts';
