// Every error body the broker sends, for every client API, built here and only
// here. ERROR_TABLE (src/errors.ts) says what a code means (HTTP status, gRPC
// status, OpenAI `type`, default message); this module says how it looks on the
// wire:
//
// - broker: {"error":{"code","message","type","param":null,"request_id"}}; `type`
//   and `param` make it an OpenAI error object too, `code` is ours.
// - OpenAI: {"error":{"message","type","code","param":null,"request_id"}}; `type`
//   is OpenAI's error type for the code, request_id is our addition.
// - Ollama: {"error":"message","code","request_id"}; Ollama clients read `error`
//   as a string, the code and request id ride along.
// - Anthropic (/v1/messages): {"type":"error","error":{"type","message"},"request_id"},
//   `type` Anthropic's error type for the code's HTTP status; the code rides along. An
//   `overloaded_error` (a 503 code) goes out as 529, Anthropic's status for it.
// - Open Inference Protocol (KServe v2, /v2/*): {"error":"message","code","request_id"},
//   the v2 spec's `{"error": $string}` with the same two extra fields as Ollama's.
//
// Mid-stream, a failed reply ends with one terminal event in the client's framing:
// for OpenAI the error object as a last SSE `data:` event and no `[DONE]` (what the
// official SDKs check for before parsing a chunk); for Ollama a last NDJSON line
// {"error":"message","code","request_id"}; for Anthropic an `error` event with the error body. (The
// Responses API's terminal response.failed needs the stream's sequence number: the
// chain's writer builds it, translate/responses_to_chat.ts.)
import { ERROR_TABLE, type BrokerError, type ErrorCode, type OpenAIErrorType } from '../errors.ts';
import type { ErrorShape } from './http/router.ts';

export interface BrokerErrorBody {
  error: { code: string; message: string; type: string; param: string | null; request_id: string };
}

export interface OpenAIErrorReplyBody {
  error: { message: string; type: OpenAIErrorType; code: string; param: string | null; request_id: string };
}

export interface OllamaErrorReplyBody {
  error: string;
  code: string;
  request_id: string;
}

export interface AnthropicErrorReplyBody {
  type: 'error';
  error: { type: string; message: string; code: string; details?: Record<string, unknown> };
  request_id: string;
}

/** Anthropic's error `type` for one of our codes, by the code's HTTP status. */
export function anthropicErrorType(code: string): string {
  const status = Object.hasOwn(ERROR_TABLE, code) ? ERROR_TABLE[code as ErrorCode].http : 500;
  switch (status) {
    case 400:
    case 405:
    case 409:
    case 415:
      return 'invalid_request_error';
    case 401:
      return 'authentication_error';
    case 403:
      return 'permission_error';
    case 404:
      return 'not_found_error';
    case 408:
    case 504:
      return 'timeout_error';
    case 413:
      return 'request_too_large';
    case 429:
      return 'rate_limit_error';
    case 503:
      return 'overloaded_error';
    default:
      return 'api_error';
  }
}

/** Anthropic's words for a prompt past the window ("prompt is too long: N tokens > M maximum"): Claude Code reads them to tell the user to compact. */
const ANTHROPIC_TOO_LONG = 'prompt is too long';

export function anthropicErrorBody(code: string, message: string, requestId: string): AnthropicErrorReplyBody {
  const text = code === 'context_length_exceeded' && !message.startsWith(ANTHROPIC_TOO_LONG) ? `${ANTHROPIC_TOO_LONG}: ${message}` : message;
  const error: AnthropicErrorReplyBody['error'] = { type: anthropicErrorType(code), message: text, code };
  // What Anthropic's SDKs read to recover (ThreadState.recoversFrom: error.details.error_code).
  if (code === 'thread_unsupported_request') error.details = { error_code: 'thread_unsupported_request', unsupported: [] };
  return { type: 'error', error, request_id: requestId };
}

/** OpenAI's error `type` for one of our codes; a code not in the table is a server error. */
export function openaiErrorType(code: string): OpenAIErrorType {
  return Object.hasOwn(ERROR_TABLE, code) ? ERROR_TABLE[code as ErrorCode].openai : 'server_error';
}

/** `param`: the request field at fault, where one is (OpenAI's error objects name it the same way). */
export function brokerErrorBody(code: string, message: string, requestId: string, param: string | null = null): BrokerErrorBody {
  return { error: { code, message, type: code, param, request_id: requestId } };
}

export function openaiErrorBody(code: string, message: string, requestId: string, param: string | null = null): OpenAIErrorReplyBody {
  return { error: { message, type: openaiErrorType(code), code, param, request_id: requestId } };
}

export function ollamaErrorBody(code: string, message: string, requestId: string): OllamaErrorReplyBody {
  return { error: message, code, request_id: requestId };
}

/** The per-route selectors (Route.errorShape). The broker's is the default. */
export const brokerErrorShape: ErrorShape = (code, message, requestId, _status, param) => brokerErrorBody(code, message, requestId, param);
export const openaiErrorShape: ErrorShape = (code, message, requestId, _status, param) => openaiErrorBody(code, message, requestId, param);
export const ollamaErrorShape: ErrorShape = (code, message, requestId) => ollamaErrorBody(code, message, requestId);
export const anthropicErrorShape: ErrorShape = (code, message, requestId) => anthropicErrorBody(code, message, requestId);
export const v2ErrorShape: ErrorShape = (code, message, requestId) => ({ error: message, code, request_id: requestId });

/** The broker's own routes under /api/ (admin, auth, health); the rest of /api/ is Ollama's. */
const BROKER_API = /^\/api\/(industrial|orchestrator|tracking|auth|audit|health|ready)(\/|$)/;

/**
 * The shape of an error on a path no route serves (or not with that method): Ollama's
 * under its /api/ (its clients print `error` as a string: the broker's object showed as
 * "[object Object]"), OpenAI's under the rest of /v1/ but /v1/infer, Anthropic's under /v1/messages (batches: the SDK reads
 * its shape; /v1/messages itself with another method than POST) and for a request that says `anthropic-version`, KServe v2's under /v2
 * (its clients read `error` as a string; with data-plane threads a /v2 request is
 * forwarded, so its 405 or 413 is the thread's), the broker's elsewhere.
 */
export function unmatchedErrorShape(path: string, headers?: Readonly<Record<string, string | undefined>>): ErrorShape {
  if (path === '/v1/messages' || path.startsWith('/v1/messages/')) return anthropicErrorShape;
  // An Anthropic SDK's call of an API not served here (files, skills...): the shape it reads.
  if (path.startsWith('/v1/') && headers?.['anthropic-version'] !== undefined) return anthropicErrorShape;
  if (path === '/v2' || path.startsWith('/v2/')) return v2ErrorShape;
  // OpenAI's paths (models.retrieve, files, batches...): its SDKs read `type` as OpenAI types it.
  if (path.startsWith('/v1/') && !path.startsWith('/v1/infer')) return openaiErrorShape;
  return path.startsWith('/api/') && !BROKER_API.test(path) ? ollamaErrorShape : brokerErrorShape;
}

/** OpenAI stream terminal event: one SSE `data:` event with the error object. */
export function openaiStreamErrorEvent(code: string, message: string, requestId: string): string {
  return 'data: ' + JSON.stringify(openaiErrorBody(code, message, requestId)) + '\n\n';
}

/** Ollama stream terminal event: one NDJSON line whose `error` is the message, with our code (and request id) as in a reply body. */
export function ollamaStreamErrorEvent(message: string, code?: string, requestId?: string): string {
  return JSON.stringify({ error: message, code, request_id: requestId }) + '\n';
}

/** Anthropic stream terminal event: an `error` event with the error body (the SDKs throw it as an APIError). */
export function anthropicStreamErrorEvent(code: string, message: string, requestId: string): string {
  return 'event: error\ndata: ' + JSON.stringify(anthropicErrorBody(code, message, requestId)) + '\n\n';
}

/** The terminal event of a stream that failed mid-way, in the client's framing (Responses: see above). */
export function streamErrorEvent(client: 'openai' | 'ollama' | 'anthropic', message: string, code: string, requestId: string): string {
  if (client === 'anthropic') return anthropicStreamErrorEvent(code, message, requestId);
  return client === 'openai' ? openaiStreamErrorEvent(code, message, requestId) : ollamaStreamErrorEvent(message, code, requestId);
}

export interface ErrorReply {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: string;
}

/**
 * A whole error reply for `err`: its status, JSON content type, the route's extra
 * headers (e.g. Allow on a 405), Retry-After and the error's own headers when it carries them, WWW-Authenticate
 * on a 401, and the body in the route's shape.
 */
export function errorReply(
  err: BrokerError,
  requestId: string,
  shape: ErrorShape = brokerErrorShape,
  extraHeaders?: Readonly<Record<string, string>>,
): ErrorReply {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...extraHeaders };
  if (err.retryAfter !== undefined) headers['retry-after'] = String(err.retryAfter);
  // Headers the error brings (a key's x-ratelimit-* on its quota's 429).
  const carried = err.details?.['replyHeaders'];
  if (typeof carried === 'object' && carried !== null) Object.assign(headers, carried);
  // What no retry can fix (a request over its quota's whole limit): the OpenAI and Anthropic
  // SDKs read this header and do not retry (they retry every 429 otherwise).
  if (err.details?.['retryable'] === false) headers['x-should-retry'] = 'false';
  // RFC 9110 §15.5.2: a 401 names the scheme that would be taken.
  if (err.status === 401) headers['www-authenticate'] = 'Bearer';
  const field = err.details?.field;
  return { status: wireStatus(err, shape), headers, body: JSON.stringify(shape(err.code, err.message, requestId, err.status, typeof field === 'string' ? field : null)) };
}

/** Anthropic's status for `overloaded_error`, which its SDKs (OverloadedError) and Claude Code read as such. */
const ANTHROPIC_OVERLOADED = 529;

/**
 * The status on the wire: the code's, but on the Messages API an `overloaded_error` (our 503s)
 * is 529, as Anthropic answers it. The SDKs retry both alike (any 5xx, honouring Retry-After),
 * and Claude Code reads 529 as Anthropic's overload.
 */
function wireStatus(err: BrokerError, shape: ErrorShape): number {
  return shape === anthropicErrorShape && err.status === 503 ? ANTHROPIC_OVERLOADED : err.status;
}
