// The translator table: any client API to any provider, chat, completion or
// embeddings. Files are named <client>_to_<provider>.ts; each one holds the request,
// reply and stream mappings of its pair. The Responses and Messages APIs map to a
// chat body (responses_to_chat.ts, anthropic_to_chat.ts), which then goes to either
// provider as an OpenAI chat body would; their replies are read through deltas.ts.
// This module picks the right one.

import { BrokerError } from '../../errors.ts';
import { ABORTED_MESSAGE, abortedFinish, finishFromOllama, openaiChunkFinish, usageFromOllama, usageFromOpenAI } from './common.ts';
import { upstreamErrorMessage, upstreamText } from './errors.ts';
import * as ollamaToOllama from './ollama_to_ollama.ts';
import * as ollamaToOpenai from './ollama_to_openai.ts';
import * as openaiToOllama from './openai_to_ollama.ts';
import * as openaiToOpenai from './openai_to_openai.ts';
import * as anthropicToChat from './anthropic_to_chat.ts';
import * as responsesToChat from './responses_to_chat.ts';
import * as embeddings from './embeddings.ts';
import { replyFromOllama, replyFromOpenAI } from './deltas.ts';
import { tokensOfChars } from '../request.ts';
import { assemblable, streamedBody } from './assemble.ts';
import type { DeploymentConfig, UpstreamStreaming } from '../../config/broker-config.ts';
import type {
  Api,
  Kind,
  ClientApi,
  OllamaChatResponse,
  OllamaGenerateResponse,
  OpenAIChatCompletion,
  OpenAIChatRequest,
  OpenAIChunk,
  OpenAICompletion,
  ReplyContext,
  Usage,
} from './types.ts';

export type { Api, ClientApi, Kind, ReplyContext, Usage } from './types.ts';

/** One exchange: the client's API, the provider's wire format, what the upstream is asked for. */
export interface Route {
  client: ClientApi;
  provider: Api;
  kind: Kind;
  /** The upstream is asked on its chat route for this client kind (an Ollama generate on an OpenAI deployment). */
  viaChat?: boolean;
}

/**
 * The route of one attempt: the client's API and request kind on this deployment.
 * A Responses request goes to /v1/responses as it is on a deployment that declares
 * `responses: true`, else to chat.
 */
export function upstreamRoute(client: ClientApi, kind: Kind, d: Pick<DeploymentConfig, 'provider' | 'responses'>, body?: unknown): Route {
  if (client === 'responses') return { client, provider: d.provider, kind: d.provider === 'openai' && d.responses ? 'responses' : 'chat' };
  // An Ollama generate is a templated prompt: chat on an OpenAI deployment, unless raw or fill-in-the-middle.
  if (client === 'ollama' && kind === 'completion' && d.provider === 'openai' && !ollamaToOpenai.generateWantsCompletions(body)) return { client, provider: d.provider, kind, viaChat: true };
  return { client, provider: d.provider, kind };
}

/** The upstream route an attempt posts to. */
export function upstreamKind(route: Route): Kind {
  return route.viaChat === true ? 'chat' : route.kind;
}

/** Content type of a streamed reply in the client's API. */
export function streamContentType(client: ClientApi): string {
  return client === 'ollama' ? 'application/x-ndjson' : 'text/event-stream';
}

/** Whether the client asked for a stream: Ollama streams unless `stream: false`, the others only with `stream: true`; embeddings never. */
export function clientStreams(client: ClientApi, body: unknown, kind?: Kind): boolean {
  if (kind === 'embed') return false;
  const s = body !== null && typeof body === 'object' ? (body as Record<string, unknown>)['stream'] : undefined;
  return client === 'ollama' ? s !== false : s === true;
}

export interface UpstreamRequest {
  /** JSON body to send. */
  body: string;
  /** The reply will be a stream (the chain handles it), else one JSON body (translateResponse). */
  stream: boolean;
  /** Not streamed for the client, but asked of the upstream as a stream, assembled into its whole reply (assemble.ts). */
  assemble: boolean;
  /** The client asked for the OpenAI usage chunk; pass it to the chain as ctx.includeUsage. */
  includeUsage: boolean;
}

/**
 * A client body (already JSON-parsed) → the provider body, with `model`
 * replaced by the deployment's upstream name. Throws BrokerError
 * `invalid_request` for a body that cannot be translated. `upstreamStreaming`: the
 * deployment's (the proxy passes it); left out, the upstream streams as the client asked.
 * `contextTokens`: the group's maxContextTokens, to which an Ollama client's embedding inputs
 * are cut for an OpenAI-compatible upstream (Ollama truncates them itself; those refuse).
 */
export function translateRequest(route: Route, body: unknown, upstreamModel: string, upstreamStreaming: UpstreamStreaming = 'client', maxTokensField: 'max_tokens' | 'max_completion_tokens' = 'max_tokens', contextTokens?: number): UpstreamRequest {
  const { client, provider, kind } = route;
  let out: unknown;
  if (kind === 'embed') {
    out = client === provider ? embeddings.passRequest(body, upstreamModel) : provider === 'ollama' ? embeddings.ollamaRequest(body, upstreamModel) : embeddings.openaiRequest(body, upstreamModel, contextTokens);
    return { body: JSON.stringify(out), stream: false, assemble: false, includeUsage: false };
  }
  const r = chatOrCompletion(route, body, upstreamModel);
  // Keyed on the upstream's route: an Ollama generate asked on chat reads the limit there too.
  if (provider === 'openai' && upstreamKind(route) === 'chat') r.out = outputLimitIn(r.out as Record<string, unknown>, maxTokensField);
  // auto: Ollama's whole reply is its stream's last line, so assembling it costs little and changes
  // nothing; an OpenAI-compatible server's whole reply is passed on as it comes (its own fields, one parse).
  const assemble = upstreamStreaming === 'always' || (upstreamStreaming === 'auto' && provider === 'ollama');
  if (r.stream || !assemble || !assemblable(r.out as Record<string, unknown>)) return { body: JSON.stringify(r.out), stream: r.stream, assemble: false, includeUsage: r.includeUsage };
  return { body: JSON.stringify(streamedBody(r.out as Record<string, unknown>, provider, upstreamKind(route))), stream: false, assemble: true, includeUsage: false };
}

/**
 * The chat body with its output limit in the one field the upstream reads (maxTokensField).
 * Both given, max_completion_tokens wins, as OpenAI and vLLM read them. Never both: OpenAI's
 * reasoning models refuse max_tokens beside max_completion_tokens too.
 */
function outputLimitIn(out: Record<string, unknown>, field: 'max_tokens' | 'max_completion_tokens'): Record<string, unknown> {
  const { max_tokens: legacy, max_completion_tokens: modern, ...rest } = out;
  const value = modern ?? legacy;
  return value === undefined ? out : { ...rest, [field]: value };
}

function chatOrCompletion(route: Route, body: unknown, upstreamModel: string): { out: unknown; stream: boolean; includeUsage: boolean } {
  const { client, provider, kind } = route;
  let out: unknown;
  if (client === 'responses' || client === 'anthropic') {
    const stream = clientStreams(client, body);
    if (kind === 'responses') out = { ...(body as Record<string, unknown>), model: upstreamModel };
    else {
      // The client's API as an OpenAI chat body, then on to the provider as one.
      const chat = client === 'responses' ? responsesToChat.chatRequest(body, provider) : anthropicToChat.chatRequest(body, provider);
      // An Anthropic client's top_k and thinking switch are Ollama's; OpenAI refuses the fields.
      const { top_k: _topK, think: _think, ...forOpenai } = chat as OpenAIChatRequest & { top_k?: number; think?: boolean };
      out = provider === 'openai' ? openaiToOpenai.chatRequest(forOpenai, upstreamModel) : openaiToOllama.chatRequest(chat, upstreamModel);
    }
    return { out, stream, includeUsage: false };
  }
  if (client === 'openai') {
    const t = provider === 'openai' ? openaiToOpenai : openaiToOllama;
    out = kind === 'chat' ? t.chatRequest(body, upstreamModel) : t.completionRequest(body, upstreamModel);
  } else {
    const t = provider === 'openai' ? ollamaToOpenai : ollamaToOllama;
    out = kind === 'chat' ? t.chatRequest(body, upstreamModel) : route.viaChat === true ? ollamaToOpenai.generateChatRequest(body, upstreamModel) : t.completionRequest(body, upstreamModel);
  }
  return { out, stream: clientStreams(client, body, kind), includeUsage: client === 'openai' && openaiToOpenai.clientWantsUsage(body) };
}

export interface ClientReply {
  /** The reply body in the client's API; the upstream bytes themselves for same-API routes. */
  body: string | Uint8Array;
  usage: Usage | null;
  /** OpenAI vocabulary: stop, length, tool_calls, content_filter. */
  finishReason: string | null;
  /** With `usage` null (an upstream that reports none): the reply's output tokens, estimated from its text, as a stream's are counted. */
  estimatedCompletionTokens?: number;
}

/** Output tokens of a whole reply estimated from its text, as prompts are estimated. */
function estimatedOutput(reply: { text: string; thinking: string; tools: readonly { name: string; arguments: string }[] }): number {
  let chars = reply.text.length + reply.thinking.length;
  for (const t of reply.tools) chars += t.name.length + t.arguments.length;
  return tokensOfChars(chars);
}

function parseUpstream(provider: Api, body: string | Uint8Array, secrets: readonly string[]): Record<string, unknown> {
  const text = typeof body === 'string' ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new BrokerError('upstream_error', `${provider} upstream sent a reply that is not JSON`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new BrokerError('upstream_error', `${provider} upstream sent an unexpected reply`);
  const r = v as Record<string, unknown>;
  const said = upstreamErrorMessage(r);
  const message = said === null ? null : upstreamText(said, secrets);
  if (message !== null && r['choices'] === undefined && r['done'] === undefined && r['object'] !== 'response') {
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
  const secrets = ctx.secrets ?? [];
  const r = parseUpstream(provider, upstreamBody, secrets);
  if (kind === 'embed') {
    const usage = embeddings.embedUsage(r);
    // A same-API reply passes through, an OpenAI one only when its encoding is what the client asked for.
    if (client === provider) {
      const fixed = client === 'openai' ? embeddings.openaiReencoded(r, ctx) : undefined;
      return { body: fixed === undefined ? upstreamBody : JSON.stringify(fixed), usage, finishReason: null };
    }
    const out = client === 'openai' ? embeddings.openaiReply(r, ctx) : embeddings.ollamaReply(r, ctx);
    return { body: JSON.stringify(out), usage, finishReason: null };
  }
  if (kind === 'responses') {
    // A Responses deployment answered a Responses client: the bytes as sent.
    const failed = r['status'] === 'failed';
    if (failed) {
      const message = upstreamText(upstreamErrorMessage(r) ?? 'response failed', secrets);
      throw new BrokerError('upstream_error', `openai upstream failed: ${message}`, { details: { upstreamMessage: message } });
    }
    return { body: upstreamBody, usage: responsesToChat.responsesUsage(r), finishReason: r['status'] === 'incomplete' ? 'length' : 'stop' };
  }
  // A generation the server cut: a failure before the first byte for a client whose API has no word for it.
  if (provider === 'openai' && client !== 'openai' && abortedFinish(openaiChunkFinish(r as unknown as OpenAIChunk))) {
    throw new BrokerError('upstream_error', `openai upstream failed: ${ABORTED_MESSAGE}`, { details: { upstreamMessage: ABORTED_MESSAGE } });
  }
  if (client === 'responses' || client === 'anthropic') {
    let reply = provider === 'openai' ? replyFromOpenAI(r as unknown as OpenAIChatCompletion) : replyFromOllama(r as unknown as OllamaChatResponse, ctx.id);
    // No usage from the upstream: the client gets the estimates a stream's client gets, not zeros
    // it would take for "free"; the broker knows them for estimates (usage null).
    const said = provider === 'openai' ? usageFromOpenAI(r['usage'] as OpenAIChatCompletion['usage']) : usageFromOllama(r);
    const estimated = said === null ? estimatedOutput(reply) : undefined;
    if (estimated !== undefined) reply = { ...reply, usage: { promptTokens: ctx.promptEstimate ?? 0, completionTokens: estimated } };
    const out = client === 'responses' ? responsesToChat.response(reply, ctx) : anthropicToChat.message(reply, ctx);
    return { body: JSON.stringify(out), usage: estimated === undefined ? reply.usage : null, finishReason: reply.finish, ...(estimated === undefined ? {} : { estimatedCompletionTokens: estimated }) };
  }
  if (provider === 'openai') {
    const usage = usageFromOpenAI(r['usage'] as OpenAIChatCompletion['usage']);
    const finishReason = openaiChunkFinish(r as unknown as OpenAIChunk);
    const estimate = usage === null ? { estimatedCompletionTokens: estimatedOutput(replyFromOpenAI(r as unknown as OpenAIChatCompletion)) } : {};
    if (client === 'openai') return { body: upstreamBody, usage, finishReason, ...estimate };
    const out =
      kind === 'chat' ? ollamaToOpenai.chatResponse(r as OpenAIChatCompletion, ctx) : route.viaChat === true ? ollamaToOpenai.generateFromChat(r as OpenAIChatCompletion, ctx) : ollamaToOpenai.completionResponse(r as OpenAICompletion, ctx);
    return { body: JSON.stringify(out), usage, finishReason, ...estimate };
  }
  const usage = usageFromOllama(r);
  const tools = (r as OllamaChatResponse).message?.tool_calls;
  const finishReason = finishFromOllama(r['done_reason'] as string | undefined, Array.isArray(tools) && tools.length > 0);
  const estimate = usage === null ? { estimatedCompletionTokens: estimatedOutput(replyFromOllama(r as unknown as OllamaChatResponse, ctx.id)) } : {};
  if (client === 'ollama') return { body: upstreamBody, usage, finishReason, ...estimate };
  const out =
    kind === 'chat' ? openaiToOllama.chatResponse(r as OllamaChatResponse, ctx) : openaiToOllama.completionResponse(r as unknown as OllamaGenerateResponse, ctx);
  return { body: JSON.stringify(out), usage, finishReason, ...estimate };
}

export { upstreamError } from './errors.ts';
