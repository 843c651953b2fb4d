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
  const starts = turnStarts(input);
  if (starts.length < 2) return false;
  input.splice(starts[0]!, starts[1]! - starts[0]!);
  return true;
}

/**
 * Where each turn of `input` starts, after its leading system and developer messages: dropping
 * the first k turns keeps the leading messages and input[starts[k]..] (dropOldestTurn's cut,
 * k times).
 */
function turnStarts(input: readonly unknown[]): number[] {
  let i = 0;
  while (i < input.length && isSystem(input[i])) i++;
  const starts = [i];
  for (let j = i + 1; j < input.length; j++) if (isTurnStart(input[j])) starts.push(j);
  return starts;
}

/**
 * The request read (`read`), its input's oldest turns dropped while it is over a limit a
 * truncation can cure (`limits`: LLM_MAX_MESSAGES and LLM_MAX_PROMPT_CHARS too, else the
 * group's window only); as it is when it fits, or when only its last turn is left (then its own
 * error, or the proxy's context_length_exceeded). The fewest turns to drop are found by a
 * binary search over the turns, a read each (fitting is monotonic in the turns dropped): a
 * read per turn dropped was quadratic, seconds of a thread for a long conversation.
 */
export function readTruncated(read: () => LlmRequest, body: Record<string, unknown>, group: ModelGroupConfig | undefined, capOf: (r: LlmRequest) => number | undefined = () => undefined, field: 'input' | 'messages' = 'input', limits = true): LlmRequest {
  const attempt = (): { r: LlmRequest | undefined; ok: boolean } => {
    try {
      const r = read();
      return { r, ok: fits(r, group, capOf(r)) };
    } catch (err) {
      if (!(limits && err instanceof BrokerError && err.details?.['limit'] === true)) throw err;
      return { r: undefined, ok: false };
    }
  };
  const first = attempt();
  const input = body[field];
  if (first.ok || !Array.isArray(input)) return first.r ?? read();
  const starts = turnStarts(input);
  // Cut in place (the array is the body's, as others hold it: a stored conversation's items).
  const all = input.slice();
  const keep = (k: number): void => {
    input.length = 0;
    for (let i = 0; i < starts[0]!; i++) input.push(all[i]);
    for (let i = starts[k]!; i < all.length; i++) input.push(all[i]);
  };
  // The fewest turns dropped that fit, in [1, turns - 1] (the last turn stays).
  let lo = 1;
  let hi = starts.length - 1;
  let best: LlmRequest | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    keep(mid);
    const a = attempt();
    if (a.ok) {
      best = a.r;
      hi = mid - 1;
    } else lo = mid + 1;
  }
  if (best !== undefined && lo <= starts.length - 1) {
    keep(lo);
    return best;
  }
  // Nothing fits: the last turn alone, refused as it is (its own error, or the proxy's).
  keep(starts.length - 1);
  const last = attempt();
  return last.r ?? read();
}
