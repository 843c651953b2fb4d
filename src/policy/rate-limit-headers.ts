// A key's quota as reply headers: OpenAI's x-ratelimit-* (which LiteLLM and most gateways
// send as well), and on the Messages API Anthropic's anthropic-ratelimit-*, so that a client
// can pace itself before it meets a 429. Pure: the window's figures in, headers out.
import type { Headroom, HeadroomField } from './quota.ts';

/** The headers for `h`, seen at `nowMs`; `anthropic`: Anthropic's names as well. */
export function rateLimitHeaders(h: Headroom, nowMs: number, anthropic: boolean): Record<string, string> {
  const out: Record<string, string> = {};
  const add = (kind: 'requests' | 'tokens', f: HeadroomField | undefined): void => {
    if (f === undefined) return;
    out[`x-ratelimit-limit-${kind}`] = String(f.limit);
    out[`x-ratelimit-remaining-${kind}`] = String(f.remaining);
    out[`x-ratelimit-reset-${kind}`] = openaiDuration(f.resetMs);
    if (!anthropic) return;
    out[`anthropic-ratelimit-${kind}-limit`] = String(f.limit);
    out[`anthropic-ratelimit-${kind}-remaining`] = String(f.remaining);
    // Anthropic's reset is an instant (RFC 3339), to the second.
    out[`anthropic-ratelimit-${kind}-reset`] = new Date(Math.ceil((nowMs + f.resetMs) / 1000) * 1000).toISOString().replace('.000Z', 'Z');
  };
  add('requests', h.requests);
  add('tokens', h.tokens);
  return out;
}

/** A duration as OpenAI writes its resets: "0s", "120ms", "2.5s", "1m0s". */
export function openaiDuration(ms: number): string {
  const whole = Math.max(0, Math.ceil(ms));
  if (whole === 0) return '0s';
  if (whole < 1000) return `${whole}ms`;
  if (whole < 60_000) return `${Number((whole / 1000).toFixed(3))}s`;
  const m = Math.floor(whole / 60_000);
  return `${m}m${Number(((whole - m * 60_000) / 1000).toFixed(3))}s`;
}
