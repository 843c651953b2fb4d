// Per-client rate limit: one token bucket per API key (if sent) or client address.
import { BrokerError } from '../errors.ts';
import { take, type Bucket, type BucketLimits } from './token-bucket.ts';
import { apiKeyOf } from './api-key.ts';

export interface RateLimiter {
  /** Throws rate_limited (with Retry-After) when the client is over its limit. */
  check(clientKey: string): void;
  readonly size: number;
}

const MAX_CLIENTS = 100_000;

export function createRateLimiter(rps: number, burst: number, now: () => number = Date.now): RateLimiter {
  if (rps <= 0) return { check() {}, size: 0 };
  const limits: BucketLimits = { rate: rps, burst: burst > 0 ? burst : Math.max(1, rps) };
  const buckets = new Map<string, Bucket>();
  // A full bucket after this long idle is the same as no bucket: safe to forget.
  const idleMs = (limits.burst / limits.rate) * 1000;

  function sweep(t: number): void {
    for (const [key, b] of buckets) if (t - b.at > idleMs) buckets.delete(key);
  }

  return {
    check(clientKey: string): void {
      const t = now();
      let b = buckets.get(clientKey);
      if (b === undefined) {
        if (buckets.size >= MAX_CLIENTS) sweep(t);
        b = { tokens: limits.burst, at: t };
        buckets.set(clientKey, b);
      }
      const wait = take(b, limits, t);
      if (wait > 0) throw new BrokerError('rate_limited', `rate limit of ${limits.rate} requests/s exceeded`, { retryAfter: Math.max(1, Math.ceil(wait)) });
    },
    get size() {
      return buckets.size;
    },
  };
}

/** API key if the client sent one (Authorization bearer or x-api-key), else its address. */
export function clientKeyOf(headers: Readonly<Record<string, string>>, remoteAddress: string): string {
  const key = apiKeyOf(headers);
  return key !== undefined ? `key:${key}` : `ip:${remoteAddress}`;
}
