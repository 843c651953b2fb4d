// ioredis, loaded on first use: a data-plane thread of a broker without REDIS_URL never needs
// it, and loading it costs each thread about 0.2 s of CPU at start (a replaced thread too).
import { createRequire } from 'node:module';
import type { Redis, RedisOptions } from 'ioredis';

let RedisClass: typeof Redis | undefined;

/** A new ioredis client (a CommonJS package: required, synchronously, on the first call). */
export function newRedis(url: string, options: RedisOptions): Redis {
  RedisClass ??= (createRequire(import.meta.url)('ioredis') as typeof import('ioredis')).Redis;
  return new RedisClass(url, options);
}
