// One error type for the whole broker. Code matches on `err.code`, never on
// classes; the table below is the single place that maps a code to an HTTP
// status, a gRPC status and a log level.

export const ERROR_TABLE = {
  invalid_json: { http: 400, grpc: 'INVALID_ARGUMENT', message: 'request body is not valid JSON' },
  invalid_request: { http: 400, grpc: 'INVALID_ARGUMENT', message: 'request is invalid' },
  invalid_image: { http: 400, grpc: 'INVALID_ARGUMENT', message: 'image_b64 is missing or not valid base64' },
  invalid_img_size: { http: 400, grpc: 'INVALID_ARGUMENT', message: 'img_size does not fit the model' },
  unauthorized: { http: 401, grpc: 'UNAUTHENTICATED', message: 'missing credentials' },
  forbidden: { http: 403, grpc: 'PERMISSION_DENIED', message: 'credentials are not valid' },
  admin_disabled: { http: 403, grpc: 'PERMISSION_DENIED', message: 'admin routes are disabled: set ADMIN_TOKEN' },
  not_found: { http: 404, grpc: 'NOT_FOUND', message: 'no such route' },
  model_not_found: { http: 404, grpc: 'NOT_FOUND', message: 'no such model' },
  method_not_allowed: { http: 405, grpc: 'UNIMPLEMENTED', message: 'method not allowed on this route' },
  payload_too_large: { http: 413, grpc: 'RESOURCE_EXHAUSTED', message: 'request body is too large' },
  image_too_large: { http: 413, grpc: 'RESOURCE_EXHAUSTED', message: 'image has too many pixels' },
  unsupported_image: { http: 415, grpc: 'INVALID_ARGUMENT', message: 'bytes are not a supported image (png, jpeg, webp)' },
  rate_limited: { http: 429, grpc: 'RESOURCE_EXHAUSTED', message: 'rate limit exceeded' },
  capacity_exhausted: { http: 429, grpc: 'RESOURCE_EXHAUSTED', message: 'every deployment is at capacity' },
  quota_exceeded: { http: 429, grpc: 'RESOURCE_EXHAUSTED', message: 'quota exceeded' },
  internal: { http: 500, grpc: 'INTERNAL', message: 'internal error' },
  upstream_error: { http: 502, grpc: 'UNAVAILABLE', message: 'upstream failed' },
  overloaded: { http: 503, grpc: 'UNAVAILABLE', message: 'server is overloaded' },
  not_ready: { http: 503, grpc: 'UNAVAILABLE', message: 'models are not loaded yet' },
  inference_disabled: { http: 503, grpc: 'UNAVAILABLE', message: 'inference is turned off: INFER_ENABLED=false' },
  shutting_down: { http: 503, grpc: 'UNAVAILABLE', message: 'the broker is shutting down' },
  upstream_unavailable: { http: 503, grpc: 'UNAVAILABLE', message: 'no upstream is available' },
  queue_timeout: { http: 504, grpc: 'DEADLINE_EXCEEDED', message: 'request waited too long in the queue' },
  upstream_timeout: { http: 504, grpc: 'DEADLINE_EXCEEDED', message: 'upstream timed out' },
} as const satisfies Record<string, { http: number; grpc: string; message: string }>;

export type ErrorCode = keyof typeof ERROR_TABLE;

export class BrokerError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  /** Seconds, sent as Retry-After on 429/503. */
  readonly retryAfter: number | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message?: string, opts: { retryAfter?: number; details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message ?? ERROR_TABLE[code].message, opts.cause === undefined ? undefined : { cause: opts.cause });
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

export function errorBody(err: BrokerError, requestId: string): { error: { code: ErrorCode; message: string; request_id: string } } {
  return { error: { code: err.code, message: err.message, request_id: requestId } };
}
