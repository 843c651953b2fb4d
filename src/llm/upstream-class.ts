// What an upstream's error reply means for routing, per provider. The status alone
// misleads: vLLM and OpenAI answer a prompt too long for the context window with a
// 400 (a client error, not worth retrying on the same group, but worth a larger
// model), Ollama answers a full queue with a 503 and OpenAI an overloaded engine with
// a 503 or 529. The bodies tell them apart:
//   OpenAI   {"error":{"message":"This model's maximum context length is 8192 tokens...","code":"context_length_exceeded"}}
//            {"error":{"message":"Rate limit reached for ...","code":"rate_limit_exceeded"}} (429)
//   vLLM     {"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested ...","type":"BadRequestError","code":400}
//            (vLLM 0.10+ nests the same fields under "error")
//   Ollama   {"error":"the input length exceeds the context length"} (400)
//            {"error":"server busy, please try again.  maximum pending requests exceeded"} (503)
//   llama.cpp {"error":{"code":400,"message":"the request exceeds the available context size ...","type":"exceed_context_size_error"}}
//   TGI      {"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: ...","error_type":"validation"} (422)
//            {"error":"Input validation error: `inputs` must have less than 4095 tokens. Given: 5000","error_type":"validation"} (422; TEI too)
//            {"error":"Request failed during generation: Server error: CUDA out of memory...","error_type":"generation"} (424)
//   FastAPI servers (LM Studio, many wrappers) {"detail":"..."} or {"detail":[{"msg":"..."}]} (422)
import type { Api } from './translate/index.ts';

export type UpstreamErrorClass =
  /** The prompt (plus max_tokens) does not fit the model's context window: contextFallbacks. */
  | 'context_length'
  /** 429: the deployment is busy; another one (or a fallback group) may not be. */
  | 'rate_limited'
  /** The server cannot take more now (503, 529, Ollama's full queue). */
  | 'overloaded'
  /** The request itself is wrong (400, 413, 422 and the like): passed on to the client, never retried. */
  | 'bad_request'
  /**
   * Any other 5xx, our credentials refused (401/403), a model or route the deployment does
   * not serve (404), or another 4xx that is not about the request (TGI's 424 when a generation
   * failed, 402, 410, ...): the deployment failed, not the client's request.
   */
  | 'server_error';

// vLLM words it two ways: "maximum context length is N tokens" and, for a prompt alone too
// long, "The decoder prompt (length N) is longer than the maximum model length of M".
const CONTEXT = /context[ _-]?(length|window)|maximum context|maximum model length|too many tokens|prompt is too long|exceeds? (the )?(max(imum)? )?(context|token)|input length exceeds/i;
const RATE = /rate[ _-]?limit|too many requests|quota/i;
// llama.cpp's server words it so; read in a 4xx only: a runner's 500 may name its context size.
const CONTEXT_4XX = /context[ _-]?size|available context|tokens \+ `?max_new_tokens`? must be <=|`?inputs`? must have less than \d+ tokens/i;
/** The 4xx statuses that say the request is wrong; any other (but 429) says the deployment failed. */
const REQUEST_4XX = new Set([400, 405, 409, 411, 413, 414, 415, 416, 417, 422]);
const BUSY = /overloaded|server busy|maximum pending requests|try again later|capacity/i;
/**
 * OpenAI's 404 for a model asked on the wrong endpoint ("This is not a chat model and thus not
 * supported in the v1/chat/completions endpoint"): the request's fault, not the deployment's.
 * Counted as a server error, three such calls opened the breaker for everyone's embeddings.
 */
const WRONG_ENDPOINT = /not a chat model|is a chat model and not supported|not supported in the v1\/[a-z/]+ endpoint/i;

/** The upstream's error code and message, from any of the shapes above. */
export function upstreamErrorFields(body: unknown): { message: string | null; code: string | null } {
  if (body === null || typeof body !== 'object') return { message: null, code: null };
  const b = body as Record<string, unknown>;
  const e = b['error'];
  if (typeof e === 'string') return { message: e, code: null };
  const detail = detailMessage(b['detail']);
  if (e === undefined && detail !== null) return { message: detail, code: null };
  const o = e !== null && typeof e === 'object' ? (e as Record<string, unknown>) : b['object'] === 'error' ? b : null;
  if (o === null) return { message: null, code: null };
  const m = o['message'];
  const c = o['code'] ?? o['type'];
  return { message: typeof m === 'string' ? m : null, code: typeof c === 'string' ? c : null };
}

/** Classifies an upstream non-2xx reply. `provider` picks nothing yet but the reading: both OpenAI-compatible shapes and Ollama's are tried. */
export function classifyUpstreamError(_provider: Api, status: number, text: string): UpstreamErrorClass {
  let parsed: unknown = null;
  try {
    parsed = JSON.parse(text);
  } catch {
    // a plain-text body (a proxy's HTML page): the status decides
  }
  const { message, code } = upstreamErrorFields(parsed);
  const said = `${code ?? ''} ${message ?? (parsed === null ? text.slice(0, 500) : '')}`;
  if (code === 'context_length_exceeded' || ((status === 400 || status === 413 || status === 422 || status === 500) && CONTEXT.test(said))) return 'context_length';
  if ((status === 400 || status === 413 || status === 422) && CONTEXT_4XX.test(said)) return 'context_length';
  if (status === 429) return BUSY.test(said) && !RATE.test(said) ? 'overloaded' : 'rate_limited';
  if (status === 503 || status === 529) return 'overloaded';
  if (status === 404 && WRONG_ENDPOINT.test(said)) return 'bad_request';
  // A redirect too: a deployment whose url answers 301/307 (a wrong base path, http in front of
  // https) is misconfigured, not the client; the next deployment may serve it.
  if (status >= 300 && !REQUEST_4XX.has(status)) return 'server_error';
  return 'bad_request';
}

/**
 * Classifies an error an upstream sent inside its 200 (the first event of a stream, an NDJSON
 * error line): counted by class as the replies above are. Such a failure is retried on the
 * next deployment like a 5xx, whatever its words (a context error there does not go to
 * contextFallbacks: vLLM and Ollama refuse a prompt too long before they stream).
 */
export function classifyStreamError(message: string): UpstreamErrorClass {
  if (CONTEXT.test(message)) return 'context_length';
  if (RATE.test(message)) return 'rate_limited';
  if (BUSY.test(message)) return 'overloaded';
  return 'server_error';
}

/** Whether a class lets the request move on (another deployment, then the fallback groups). */
export function retriable(c: UpstreamErrorClass): boolean {
  return c === 'rate_limited' || c === 'overloaded' || c === 'server_error';
}

/** FastAPI's error: `detail` as a string, or a list of `{msg}` (its validation errors). */
export function detailMessage(d: unknown): string | null {
  if (typeof d === 'string') return d;
  if (Array.isArray(d)) {
    const msgs = d.map((x) => (x !== null && typeof x === 'object' && typeof (x as Record<string, unknown>)['msg'] === 'string' ? ((x as Record<string, unknown>)['msg'] as string) : null)).filter((m): m is string => m !== null);
    return msgs.length > 0 ? msgs.join('; ') : null;
  }
  return null;
}
