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
// - Open Inference Protocol (KServe v2, /v2/*): {"error":"message","code","request_id"},
//   the v2 spec's `{"error": $string}` with the same two extra fields as Ollama's.
//
// Mid-stream, a failed reply ends with one terminal event in the client's framing:
// for OpenAI the error object as a last SSE `data:` event and no `[DONE]` (what the
// official SDKs check for before parsing a chunk); for Ollama a last NDJSON line
// {"error":"message"}.
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
export const v2ErrorShape: ErrorShape = (code, message, requestId) => ({ error: message, code, request_id: requestId });

/** OpenAI stream terminal event: one SSE `data:` event with the error object. */
export function openaiStreamErrorEvent(code: string, message: string, requestId: string): string {
  return 'data: ' + JSON.stringify(openaiErrorBody(code, message, requestId)) + '\n\n';
}

/** Ollama stream terminal event: one NDJSON line whose `error` is the message. */
export function ollamaStreamErrorEvent(message: string): string {
  return JSON.stringify({ error: message }) + '\n';
}

/** The terminal event of a stream that failed mid-way, in the client's framing. */
export function streamErrorEvent(client: 'openai' | 'ollama', message: string, code: string, requestId: string): string {
  return client === 'openai' ? openaiStreamErrorEvent(code, message, requestId) : ollamaStreamErrorEvent(message);
}

export interface ErrorReply {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: string;
}

/**
 * A whole error reply for `err`: its status, JSON content type, the route's extra
 * headers (e.g. Allow on a 405), Retry-After when the error carries one, and the
 * body in the route's shape.
 */
export function errorReply(
  err: BrokerError,
  requestId: string,
  shape: ErrorShape = brokerErrorShape,
  extraHeaders?: Readonly<Record<string, string>>,
): ErrorReply {
  const headers: Record<string, string> = { 'content-type': 'application/json', ...extraHeaders };
  if (err.retryAfter !== undefined) headers['retry-after'] = String(err.retryAfter);
  const field = err.details?.field;
  return { status: err.status, headers, body: JSON.stringify(shape(err.code, err.message, requestId, err.status, typeof field === 'string' ? field : null)) };
}
