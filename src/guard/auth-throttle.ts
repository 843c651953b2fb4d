// Failed admin credentials, counted per client address: past `max` failures in a window,
// that address gets 429 rate_limited (with Retry-After) on admin routes until the window
// ends, whatever it sends. Guessing tokens gets slow; a right token from a throttled
// address waits like the rest. Bounded: at most `maxAddresses` are tracked.

import { BrokerError } from '../errors.ts';

export class AuthThrottle {
  private readonly failures = new Map<string, { count: number; until: number }>();

  constructor(
    private readonly max = 20,
    private readonly windowMs = 60_000,
    private readonly now: () => number = Date.now,
    private readonly maxAddresses = 10_000,
  ) {}

  /** Throws rate_limited when the address used up its failures. */
  check(address: string): void {
    const f = this.failures.get(address);
    if (f === undefined) return;
    const t = this.now();
    if (f.until <= t) {
      this.failures.delete(address);
      return;
    }
    if (f.count >= this.max) throw new BrokerError('rate_limited', `too many failed admin credentials from ${address}; try again later`, { retryAfter: Math.ceil((f.until - t) / 1000) });
  }

  failed(address: string): void {
    const t = this.now();
    let f = this.failures.get(address);
    if (f === undefined || f.until <= t) {
      if (this.failures.size >= this.maxAddresses) this.failures.delete(this.failures.keys().next().value!);
      f = { count: 0, until: t + this.windowMs };
      this.failures.set(address, f);
    }
    f.count++;
  }
}
