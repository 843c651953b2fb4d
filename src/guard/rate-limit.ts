// Per-client rate limit: one token bucket per API key (if sent) or client address.
//
// The buckets live in a SharedArrayBuffer (a SharedTable, src/sched/shared-table.ts),
// so every data-plane thread that holds the same buffer spends the same buckets:
// two threads admit `burst` requests of one client in total, not `burst` each. The
// main thread allocates the buffer with `rateLimitBuffer(maxClients)` and hands it
// to the threads (`createRateLimiter(rps, burst, { buffer })`).
//
// Memory layout of the buffer (bytes):
//   0 .. T      SharedTable of maxClients slots (layout in shared-table.ts), no key
//               text, payload 16 bytes per slot:
//                 +0 Float64 tokens   +8 Float64 at (ms of the last refill)
//               both read and written only with the slot's lock held.
//   T .. T+32   overflow bucket, shared by clients that found no slot:
//                 +0 Int32 lock  +4 reserved  +8 Float64 tokens  +16 Float64 at
//               then +24 Int32 share: the replicas the limit is divided among (0 or 1:
//               this replica alone), set by the control plane from the Redis heartbeats
//
// The table is fixed-size and never swept: a new client's insert looks at most 16
// slots and takes over one whose bucket has been idle longer than burst/rate
// seconds (it would be full again, so forgetting it changes nothing). If none of
// the 16 is idle, the client is counted in the overflow bucket, which all such
// clients share: under a flood of distinct keys they are limited together
// (fail closed) rather than not at all.
import { BrokerError, toBrokerError } from '../errors.ts';
import { take, type Bucket, type BucketLimits } from './token-bucket.ts';
import { apiKeyOf, keyId } from './api-key.ts';
import type { Caller } from '../front/reply.ts';
import { SharedTable, lockCell, unlockCell, type SlotHooks } from '../sched/shared-table.ts';

export interface RateLimiter {
  /** Throws rate_limited (with Retry-After) when the client is over its limit. */
  check(clientKey: string): void;
  /**
   * Clients holding a bucket slot, across every thread sharing the buffer. Idle
   * buckets are only reclaimed when a new client needs their slot, so this counts
   * recently seen clients (an upper bound on active ones), not exactly the active ones.
   */
  readonly size: number;
  /** The shared buckets: hand it to other threads' `createRateLimiter(…, { buffer })`. Absent when rps is 0. */
  readonly buffer?: SharedArrayBuffer;
}

export interface RateLimiterOptions {
  /** Clock in epoch ms. Default Date.now. Threads sharing a buffer must share a clock source. */
  now?: () => number;
  /** Buckets shared with other threads (from `rateLimitBuffer`); a new one when absent. */
  buffer?: SharedArrayBuffer;
  /** Bucket slots when no buffer is given. Default 100 000. */
  maxClients?: number;
  /**
   * A request refused in the overflow bucket (the table full of busy clients): counted apart,
   * since every new client then shares that one bucket, a flood of distinct addresses (one
   * IPv6 /64) locking out every new user until its slots go idle.
   */
  onSharedRefusal?: () => void;
}

const MAX_CLIENTS = 100_000;
const TABLE_OPTS = { payloadBytes: 16, keyBytes: 0 } as const;
const OVERFLOW_BYTES = 32;
const SHARE_OFFSET = 24;

/** A buffer for `maxClients` buckets (~56 bytes each), to share between threads. */
export function rateLimitBuffer(maxClients = MAX_CLIENTS): SharedArrayBuffer {
  const end = SharedTable.byteLength(maxClients, TABLE_OPTS);
  const buffer = new SharedArrayBuffer(end + OVERFLOW_BYTES);
  new SharedTable(maxClients, buffer, TABLE_OPTS); // writes the header, so threads can attach knowing only the buffer
  // The overflow bucket's last refill is "never", so its first take fills it to burst.
  new Float64Array(buffer, end + 16, 1)[0] = -Infinity;
  return buffer;
}

/**
 * Divides every client's rate and burst among `replicas` (every thread sharing the
 * buffer sees it at once). Replicas behind one balancer each admit their share, so the
 * limit holds across them without a network call per client; a balancer that sends one
 * client to one replica only gives that client its share.
 */
export function setRateLimitShare(buffer: SharedArrayBuffer, replicas: number): void {
  const end = buffer.byteLength - OVERFLOW_BYTES;
  Atomics.store(new Int32Array(buffer, end + SHARE_OFFSET, 1), 0, Math.max(1, Math.floor(replicas)));
}

export function createRateLimiter(rps: number, burst: number, nowOrOpts?: (() => number) | RateLimiterOptions): RateLimiter {
  const opts: RateLimiterOptions = typeof nowOrOpts === 'function' ? { now: nowOrOpts } : (nowOrOpts ?? {});
  if (rps <= 0) return { check() {}, size: 0 };
  const now = opts.now ?? Date.now;
  const full: BucketLimits = { rate: rps, burst: burst > 0 ? burst : Math.max(1, rps) };
  // A full bucket after this long idle is the same as no bucket: safe to forget (also when shared).
  const idleMs = (full.burst / full.rate) * 1000;

  const capacity = opts.buffer !== undefined ? SharedTable.capacityOf(opts.buffer) : (opts.maxClients ?? MAX_CLIENTS);
  const buffer = opts.buffer ?? rateLimitBuffer(capacity);
  const table = new SharedTable(capacity, buffer, TABLE_OPTS);
  const f64 = new Float64Array(buffer);
  const overflow = table.byteOffset + table.byteLength;
  if (buffer.byteLength < overflow + OVERFLOW_BYTES) throw new RangeError('rate-limit buffer is too small: make it with rateLimitBuffer()');
  const overflowLock = new Int32Array(buffer, overflow, 1);
  const overflowTokens = (overflow + 8) >> 3;
  const shareCell = new Int32Array(buffer, overflow + SHARE_OFFSET, 1);
  // This replica's part of the limit: recomputed only when the replica count changes.
  let share = 1;
  let limits = full;
  const current = (): BucketLimits => {
    const n = Math.max(1, Atomics.load(shareCell, 0));
    if (n !== share) {
      share = n;
      limits = n === 1 ? full : { rate: full.rate / n, burst: Math.max(1, full.burst / n) };
    }
    return limits;
  };

  // One scratch bucket per limiter: take() works on it between a load and a store, under the lock.
  const scratch: Bucket = { tokens: 0, at: 0 };
  let t = 0; // the current check's clock reading, for the hooks

  const hooks: SlotHooks = {
    init(slot) {
      const i = table.payloadOffset(slot) >> 3;
      f64[i] = limits.burst;
      f64[i + 1] = t;
    },
    stale(slot) {
      return t - f64[(table.payloadOffset(slot) >> 3) + 1]! > idleMs;
    },
  };

  function spend(i: number): number {
    scratch.tokens = f64[i]!;
    scratch.at = f64[i + 1]!;
    const wait = take(scratch, limits, t);
    f64[i] = scratch.tokens;
    f64[i + 1] = scratch.at;
    return wait;
  }

  return {
    check(clientKey: string): void {
      t = now();
      current();
      let wait: number;
      let shared = false;
      const slot = table.lockKey(clientKey, hooks);
      if (slot >= 0) {
        try {
          wait = spend(table.payloadOffset(slot) >> 3);
        } finally {
          table.unlock(slot);
        }
      } else {
        lockCell(overflowLock, 0);
        try {
          wait = spend(overflowTokens);
        } finally {
          unlockCell(overflowLock, 0);
        }
        shared = true;
      }
      if (wait > 0) {
        const where = share === 1 ? '' : ` (${limits.rate} on this replica, one of ${share})`;
        if (shared) opts.onSharedRefusal?.();
        const whose = shared ? ', in the bucket clients share while the per-client table is full' : '';
        throw new BrokerError('rate_limited', `rate limit of ${full.rate} requests/s exceeded${where}${whose}`, { retryAfter: Math.max(1, Math.ceil(wait)) });
      }
    },
    get size() {
      return table.size;
    },
    buffer,
  };
}

/**
 * The bucket of a client: its API key's (by the key's id) if it sent one the broker knows, or
 * the key its session was made from (`caller`, set by client auth: a key and its sessions
 * share one bucket), else its address.
 */
export function clientKeyOf(headers: Readonly<Record<string, string>>, remoteAddress: string, isKnown: (key: string) => boolean = () => false, caller?: Caller): string {
  // Only a key the broker knows gets a bucket of its own: a made-up key per request
  // would otherwise be a fresh bucket per request, and no limit at all.
  const key = apiKeyOf(headers);
  if (key !== undefined && isKnown(key)) return `key:${keyId(key)}`;
  return caller?.keyId !== undefined ? `key:${caller.keyId}` : `ip:${remoteAddress}`;
}

/**
 * A client route's refused credential takes a token of its address's rate limit, as a request
 * without a key does: else guessing keys would go at any speed (a wrong key has no bucket). Past
 * the limit the answer is 429 (gRPC RESOURCE_EXHAUSTED), not 401, which says nothing of the key
 * tried. Rethrows the refusal, or the rate limit's error in its place.
 */
export function refusedCredential(g: { readonly rateLimiter: RateLimiter; readonly metrics: { readonly rateLimited: { inc(): void } } }, remoteAddress: string, err: unknown): never {
  const e = toBrokerError(err);
  if (e.code === 'unauthorized' || e.code === 'forbidden') {
    try {
      g.rateLimiter.check(`ip:${remoteAddress}`);
    } catch (limited) {
      g.metrics.rateLimited.inc();
      throw limited;
    }
  }
  throw e;
}
