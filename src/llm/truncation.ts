// Responses' `truncation: "auto"`: a conversation past the prompt limits (LLM_MAX_MESSAGES,
// LLM_MAX_PROMPT_CHARS) or its group's maxContextTokens loses its oldest turns until it fits,
// as OpenAI "drops items from the beginning of the conversation" (a stored one through
// previous_response_id grows with every turn; the client cannot trim it). An Ollama chat too:
// Ollama never fails a chat for its length, it keeps the system messages and the latest turns
// that fit (server/prompt.go), and chat frontends (Open WebUI) rely on it.
import { BrokerError } from '../errors.ts';
import type { ModelGroupConfig } from '../config/broker-config.ts';
import { contextTokensOf, type LlmRequest } from './request.ts';

/**
 * The group's context window fits the request (as the proxy estimates it: with the output
 * limit its QoS tier caps, `cap`), or it has none.
 */
function fits(r: LlmRequest, group: ModelGroupConfig | undefined, cap: number | undefined): boolean {
  const max = group?.maxContextTokens;
  if (max === undefined) return true;
  const maxTokens = cap !== undefined && (r.maxTokens === undefined || r.maxTokens > cap) ? cap : r.maxTokens;
  return contextTokensOf({ ...r, maxTokens }) <= max;
}

function isTurnStart(item: unknown): boolean {
  const o = item as Record<string, unknown> | null;
  return o !== null && typeof o === 'object' && (o['type'] ?? 'message') === 'message' && o['role'] === 'user';
}

function isSystem(item: unknown): boolean {
  const o = item as Record<string, unknown> | null;
  return o !== null && typeof o === 'object' && (o['type'] ?? 'message') === 'message' && (o['role'] === 'system' || o['role'] === 'developer');
}

/**
 * The oldest turn out of `input`: from the first item after the leading system and developer
 * messages up to the next user message (a call and its output go together). False when what
 * is left is the last turn.
 */
export function dropOldestTurn(input: unknown[]): boolean {
  let start = 0;
  while (start < input.length && isSystem(input[start])) start++;
  let next = start + 1;
  while (next < input.length && !isTurnStart(input[next])) next++;
  if (next >= input.length) return false;
  input.splice(start, next - start);
  return true;
}

/**
 * The request read (`read`), its input's oldest turns dropped while it is over a limit a
 * truncation can cure; as it is when it fits, or when only its last turn is left (then its own
 * error, or the proxy's context_length_exceeded).
 */
export function readTruncated(read: () => LlmRequest, body: Record<string, unknown>, group: ModelGroupConfig | undefined, capOf: (r: LlmRequest) => number | undefined = () => undefined, field: 'input' | 'messages' = 'input'): LlmRequest {
  for (;;) {
    let r: LlmRequest | undefined;
    try {
      r = read();
      if (fits(r, group, capOf(r))) return r;
    } catch (err) {
      if (!(err instanceof BrokerError && err.details?.['limit'] === true)) throw err;
    }
    const input = body[field];
    if (!Array.isArray(input) || !dropOldestTurn(input)) return r ?? read();
  }
}
