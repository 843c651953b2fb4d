// An upstream that answers a stream request with one JSON body: some OpenAI-compatible
// servers ignore `stream: true` (older llama.cpp builds, proxies in front of a model, hand-
// written shims). Its reply is written again as the event stream it would have sent, in its
// own wire format, so that the request's chain reads it as any stream: the client gets its
// stream in its API, with usage and tool calls, and the deployment is not failed for it.
//
// An Ollama whole reply needs nothing: it is its stream's last line, with the text joined.

type Json = Record<string, unknown>;

/** Fields of a whole reply's message that a stream's delta carries as they are. */
const DELTA_FIELDS = ['role', 'content', 'refusal', 'reasoning_content', 'reasoning', 'function_call'] as const;

/**
 * The SSE stream of a whole OpenAI chat or text completion, or null when `body` is not one
 * (its chain then reads it as it would: not a stream). Per choice: one chunk with the whole
 * message as its delta (tool calls indexed, as a stream's are), one with the finish; then the
 * usage chunk when the reply has usage, and `[DONE]`.
 */
export function wholeReplyAsSse(body: string): string | null {
  let reply: unknown;
  try {
    reply = JSON.parse(body);
  } catch {
    return null;
  }
  if (reply === null || typeof reply !== 'object' || Array.isArray(reply)) return null;
  const r = reply as Json;
  const choices = r['choices'];
  if (!Array.isArray(choices)) return null;
  const chat = r['object'] === 'chat.completion' || choices.some((c) => c !== null && typeof c === 'object' && 'message' in c);
  const head: Json = {
    id: r['id'] ?? 'whole',
    object: chat ? 'chat.completion.chunk' : 'text_completion',
    created: r['created'] ?? Math.floor(Date.now() / 1000),
    model: r['model'] ?? '',
    ...(r['system_fingerprint'] !== undefined ? { system_fingerprint: r['system_fingerprint'] } : {}),
  };
  const event = (fields: Json): string => `data: ${JSON.stringify({ ...head, ...fields })}\n\n`;
  let out = '';
  for (const [i, raw] of choices.entries()) {
    if (raw === null || typeof raw !== 'object') return null;
    const c = raw as Json;
    const index = typeof c['index'] === 'number' ? c['index'] : i;
    const logprobs = c['logprobs'] ?? null;
    if (chat) {
      const m = (c['message'] ?? {}) as Json;
      const delta: Json = {};
      for (const k of DELTA_FIELDS) if (m[k] !== undefined && m[k] !== null) delta[k] = m[k];
      if (Array.isArray(m['tool_calls']) && m['tool_calls'].length > 0) delta['tool_calls'] = (m['tool_calls'] as Json[]).map((call, n) => ({ index: n, ...call }));
      out += event({ choices: [{ index, delta, logprobs, finish_reason: null }] });
      out += event({ choices: [{ index, delta: {}, logprobs: null, finish_reason: c['finish_reason'] ?? 'stop' }] });
    } else {
      out += event({ choices: [{ index, text: typeof c['text'] === 'string' ? c['text'] : '', logprobs, finish_reason: null }] });
      out += event({ choices: [{ index, text: '', logprobs: null, finish_reason: c['finish_reason'] ?? 'stop' }] });
    }
  }
  if (r['usage'] !== undefined && r['usage'] !== null) out += event({ choices: [], usage: r['usage'] });
  return out + 'data: [DONE]\n\n';
}
