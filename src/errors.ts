// One error type for the whole broker. Code matches on `err.code`, never on
// classes; the table below is the single place that maps a code to its HTTP
// status, its gRPC status name, OpenAI's error `type` and its default message.
// How an error looks on the wire, per client API, is src/front/error-body.ts.

/** OpenAI's error `type` values that our codes map to. */
export type OpenAIErrorType =
  | 'invalid_request_error'
  | 'authentication_error'
  | 'permission_error'
  | 'rate_limit_error'
  | 'insufficient_quota'
  | 'server_error';

export const ERROR_TABLE = {
  invalid_json: { http: 400, grpc: 'INVALID_ARGUMENT', openai: 'invalid_request_error', message: 'request body is not valid JSON' },
  invalid_request: { http: 400, grpc: 'INVALID_ARGUMENT', openai: 'invalid_request_error', message: 'request is invalid' },
  // OpenAI's own code for it: agents compact their history on it (a plain invalid_request hides the cause).
  context_length_exceeded: { http: 400, grpc: 'INVALID_ARGUMENT', openai: 'invalid_request_error', message: "the prompt does not fit the model's context window" },
  // OpenAI's code: clients and proxies drop the id and send the whole conversation on it.
  previous_response_not_found: { http: 400, grpc: 'INVALID_ARGUMENT', openai: 'invalid_request_error', message: 'the previous response is not stored here' },
  // Anthropic's message threads (`thread` on /v1/messages): not kept here. Its error_code in
  // `details` has the SDKs (the tool runner) send the whole conversation without `thread`.
  thread_unsupported_request: { http: 400, grpc: 'INVALID_ARGUMENT', openai: 'invalid_request_error', message: 'message threads are not supported here: send the whole conversation without `thread`' },
  invalid_image: { http: 400, grpc: 'INVALID_ARGUMENT', openai: 'invalid_request_error', message: 'image_b64 is missing or not valid base64' },
  invalid_img_size: { http: 400, grpc: 'INVALID_ARGUMENT', openai: 'invalid_request_error', message: 'img_size does not fit the model' },
  unauthorized: { http: 401, grpc: 'UNAUTHENTICATED', openai: 'authentication_error', message: 'missing credentials' },
  forbidden: { http: 403, grpc: 'PERMISSION_DENIED', openai: 'permission_error', message: 'credentials are not valid' },
  admin_disabled: { http: 403, grpc: 'PERMISSION_DENIED', openai: 'permission_error', message: 'admin routes are disabled: set ADMIN_TOKEN' },
  not_found: { http: 404, grpc: 'NOT_FOUND', openai: 'invalid_request_error', message: 'no such route' },
  model_not_found: { http: 404, grpc: 'NOT_FOUND', openai: 'invalid_request_error', message: 'no such model' },
  config_conflict: { http: 409, grpc: 'ABORTED', openai: 'invalid_request_error', message: 'the config changed since it was read: read it again (If-Match)' },
  config_not_writable: { http: 409, grpc: 'FAILED_PRECONDITION', openai: 'invalid_request_error', message: 'the config file cannot be written where it is mounted' },
  request_timeout: { http: 408, grpc: 'DEADLINE_EXCEEDED', openai: 'invalid_request_error', message: 'the request body did not arrive in time' },
  // Never a reply (the connection is gone): how a reply cut for a client that read nothing for 10 s is recorded.
  client_too_slow: { http: 408, grpc: 'DEADLINE_EXCEEDED', openai: 'invalid_request_error', message: 'the client read nothing of the reply for 10 s' },
  // Never a reply either: the client is gone. What a request it abandoned ends with inside the broker.
  client_closed: { http: 499, grpc: 'CANCELLED', openai: 'invalid_request_error', message: 'the client closed the request' },
  method_not_allowed: { http: 405, grpc: 'UNIMPLEMENTED', openai: 'invalid_request_error', message: 'method not allowed on this route' },
  payload_too_large: { http: 413, grpc: 'RESOURCE_EXHAUSTED', openai: 'invalid_request_error', message: 'request body is too large' },
  image_too_large: { http: 413, grpc: 'RESOURCE_EXHAUSTED', openai: 'invalid_request_error', message: 'image has too many pixels' },
  unsupported_image: { http: 415, grpc: 'INVALID_ARGUMENT', openai: 'invalid_request_error', message: 'bytes are not a supported image (png, jpeg, webp)' },
  unsupported_encoding: { http: 415, grpc: 'INVALID_ARGUMENT', openai: 'invalid_request_error', message: 'request bodies are read as sent: send them without a content-encoding (gzip, deflate, br)' },
  rate_limited: { http: 429, grpc: 'RESOURCE_EXHAUSTED', openai: 'rate_limit_error', message: 'rate limit exceeded' },
  capacity_exhausted: { http: 429, grpc: 'RESOURCE_EXHAUSTED', openai: 'rate_limit_error', message: 'every deployment is at capacity' },
  // OpenAI's insufficient_quota is money spent (clients stop, not retry): a budget; a TPM/RPM
  // quota is a per-minute limit that Retry-After ends, a rate_limit_error as OpenAI's own.
  budget_exceeded: { http: 429, grpc: 'RESOURCE_EXHAUSTED', openai: 'insufficient_quota', message: 'the API key spent its budget for this period' },
  quota_exceeded: { http: 429, grpc: 'RESOURCE_EXHAUSTED', openai: 'rate_limit_error', message: 'quota exceeded' },
  internal: { http: 500, grpc: 'INTERNAL', openai: 'server_error', message: 'internal error' },
  upstream_error: { http: 502, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'upstream failed' },
  overloaded: { http: 503, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'server is overloaded' },
  not_ready: { http: 503, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'models are not loaded yet' },
  inference_worker_lost: { http: 503, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'the inference worker running the request died; retry' },
  model_unavailable: { http: 503, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'the model cannot run: it does not fit its manifest' },
  inference_disabled: { http: 503, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'inference is turned off: INFER_ENABLED=false' },
  state_unavailable: { http: 503, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'the shared state (Redis) did not answer' },
  tracking_disabled: { http: 503, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'request tracking is off: set DATABASE_URL' },
  shutting_down: { http: 503, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'the broker is shutting down' },
  upstream_unavailable: { http: 503, grpc: 'UNAVAILABLE', openai: 'server_error', message: 'no upstream is available' },
  queue_timeout: { http: 504, grpc: 'DEADLINE_EXCEEDED', openai: 'server_error', message: 'request waited too long in the queue' },
  upstream_timeout: { http: 504, grpc: 'DEADLINE_EXCEEDED', openai: 'server_error', message: 'upstream timed out' },
} as const satisfies Record<string, { http: number; grpc: string; openai: OpenAIErrorType; message: string }>;

export type ErrorCode = keyof typeof ERROR_TABLE;

/** Longest error message a client gets: messages quote what the client sent (a model name), which may be megabytes. */
export const MAX_ERROR_MESSAGE_CHARS = 1024;

function clipMessage(m: string): string {
  return m.length <= MAX_ERROR_MESSAGE_CHARS ? m : `${m.slice(0, MAX_ERROR_MESSAGE_CHARS - 1)}…`;
}

export class BrokerError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Seconds, sent as Retry-After on 429/503. */
  readonly retryAfter: number | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message?: string, opts: { retryAfter?: number; details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(clipMessage(message ?? ERROR_TABLE[code].message), opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'BrokerError';
    this.code = code;
    this.status = ERROR_TABLE[code].http;
    this.retryAfter = opts.retryAfter;
    this.details = opts.details;
  }
}

/** Anything thrown becomes a BrokerError; unknown errors are `internal` and keep their cause for the log. */
export function toBrokerError(err: unknown): BrokerError {
  if (err instanceof BrokerError) return err;
  return new BrokerError('internal', undefined, { cause: err });
}
