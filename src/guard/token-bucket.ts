// Token bucket as pure state transitions: the clock is passed in, so tests drive time.

export interface Bucket {
  tokens: number;
  /** Milliseconds of the last refill. */
  at: number;
}

export interface BucketLimits {
  /** Tokens added per second. */
  readonly rate: number;
  /** Bucket size. */
  readonly burst: number;
}

/** Takes one token if it can. Returns 0 when admitted, else the seconds until a token is available. */
export function take(bucket: Bucket, limits: BucketLimits, nowMs: number): number {
  const elapsed = Math.max(0, nowMs - bucket.at) / 1000;
  bucket.tokens = Math.min(limits.burst, bucket.tokens + elapsed * limits.rate);
  bucket.at = nowMs;
  if (bucket.tokens >= 1) {
    bucket.tokens -= 1;
    return 0;
  }
  return (1 - bucket.tokens) / limits.rate;
}
