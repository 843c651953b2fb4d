// Upstream errors back into BrokerError. Errors in the client's API shape (reply
// bodies and mid-stream terminal events) are built in src/front/error-body.ts.

import { BrokerError, type ErrorCode } from '../../errors.ts';
import type { Api } from './types.ts';
import { detailMessage } from '../upstream-class.ts';

/** The message of an upstream error object of either shape, or null if `body` is not one. */
export function upstreamErrorMessage(body: unknown): string | null {
  if (body === null || typeof body !== 'object') return null;
  const e = (body as Record<string, unknown>)['error'];
  if (typeof e === 'string') return e;
  if (e !== null && typeof e === 'object') {
    const m = (e as Record<string, unknown>)['message'];
    return typeof m === 'string' ? m : JSON.stringify(e);
  }
  // vLLM's (and FastChat's) shape: {"object":"error","message":...} at the top level.
  const o = body as Record<string, unknown>;
  if (o['object'] === 'error' && typeof o['message'] === 'string') return o['message'];
  // FastAPI's (LM Studio, many wrappers): {"detail": "..."} or {"detail": [{"msg": ...}]}.
  return detailMessage(o['detail']);
}

function codeForUpstreamStatus(status: number): ErrorCode {
  if (status === 400 || status === 422) return 'invalid_request';
  if (status === 404) return 'model_not_found';
  if (status === 408 || status === 504) return 'upstream_timeout';
  if (status === 413) return 'payload_too_large';
  if (status === 429) return 'capacity_exhausted';
  if (status === 503) return 'upstream_unavailable';
  // 401/403 mean our credentials for the upstream are wrong: not the client's fault.
  return 'upstream_error';
}

/** Longest upstream message passed on to a client. */
export const UPSTREAM_MESSAGE_CHARS = 500;

/** Shortest tail of a cut message that is taken for the start of a secret. */
const SECRET_TAIL_CHARS = 4;

/**
 * An upstream's message as a client or the log may see it: `secrets` (what the broker sent
 * upstream: the deployment's API key, which an upstream may echo with the request's headers)
 * masked, then cut to UPSTREAM_MESSAGE_CHARS. Masked before the cut, so that no cut leaves a
 * secret's start unmasked, and a tail that could begin one is masked too.
 */
export function upstreamText(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) if (s !== '' && out.includes(s)) out = out.split(s).join('[redacted]');
  if (out.length <= UPSTREAM_MESSAGE_CHARS) return out;
  out = out.slice(0, UPSTREAM_MESSAGE_CHARS);
  for (const s of secrets) {
    for (let n = Math.min(s.length - 1, out.length); n >= SECRET_TAIL_CHARS; n--) {
      if (out.endsWith(s.slice(0, n))) return out.slice(0, out.length - n) + '[redacted]';
    }
  }
  return out;
}

/**
 * An upstream error body → BrokerError. The upstream's message reaches the client only
 * for the client's own mistakes (400, 413, 422), cut to UPSTREAM_MESSAGE_CHARS and with
 * `secrets` (what the broker sent upstream: the deployment's API key) masked, since an
 * upstream may echo the request's headers.
 */
export function upstreamError(provider: Api, status: number, body: string | Uint8Array, secrets: readonly string[] = []): BrokerError {
  const text = typeof body === 'string' ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    // not JSON: keep the text for the log only
  }
  const upstreamMessage = upstreamText(upstreamErrorMessage(parsed) ?? text, secrets);
  const code = codeForUpstreamStatus(status);
  // A 404 is the deployment's (a model it has not pulled, a route it does not serve: a
  // server_error, upstream-class.ts), and its body may be a proxy's HTML page: not passed on.
  const passOn = code === 'invalid_request' || code === 'payload_too_large';
  const message = passOn && upstreamMessage !== '' ? upstreamMessage : `${provider} upstream replied ${status}`;
  // The field the upstream blamed goes on as the reply's `param` (an OpenAI SDK user reads it) with the message.
  const e = (parsed as { error?: { param?: unknown } } | null)?.error;
  const field = passOn && e !== null && typeof e === 'object' && typeof e.param === 'string' && e.param !== '' ? upstreamText(e.param, secrets).slice(0, 100) : undefined;
  return new BrokerError(code, message, { details: { provider, upstreamStatus: status, upstreamMessage, ...(field !== undefined ? { field } : {}) } });
}
