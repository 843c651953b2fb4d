// autocannon (closed loop, or its overallRate) against one POST route, with exact
// per-request latencies from its 'response' event (its own histogram rounds to whole ms).
// Loaded through require with the few types used here, so this file needs no ambient
// declaration of the module.
import { createRequire } from 'node:module';
import type { EventEmitter } from 'node:events';
import { round, summarize, type Latency } from './stats.ts';

interface AutocannonResult {
  duration: number;
  errors: number;
  timeouts: number;
  non2xx: number;
  '2xx': number;
}
interface AutocannonInstance extends EventEmitter, PromiseLike<AutocannonResult> {
  on(event: 'response', listener: (client: unknown, statusCode: number, resBytes: number, responseTimeMs: number) => void): this;
}
type Autocannon = (opts: Record<string, unknown>) => AutocannonInstance;

const autocannon = createRequire(import.meta.url)('autocannon') as Autocannon;

export interface CannonOptions {
  readonly url: string;
  readonly body: string;
  readonly headers?: Readonly<Record<string, string>>;
  readonly connections: number;
  readonly durationS: number;
  /** autocannon's overallRate: requests per second over all connections; unset = as fast as possible. */
  readonly overallRate?: number;
}

export interface CannonResult {
  readonly connections: number;
  readonly duration_s: number;
  readonly overall_rate: number | null;
  readonly ok: number;
  readonly non_2xx: number;
  readonly errors: number;
  readonly timeouts: number;
  /** 2xx replies per second. */
  readonly rps: number;
  /** Client-side latency of the 2xx replies, as measured (no coordinated-omission correction). */
  readonly latency: Latency;
}

export async function cannon(opts: CannonOptions): Promise<CannonResult> {
  const lat: number[] = [];
  const instance = autocannon({
    url: opts.url,
    method: 'POST',
    headers: { 'content-type': 'application/json', ...opts.headers },
    body: opts.body,
    connections: opts.connections,
    duration: opts.durationS,
    timeout: 10,
    ...(opts.overallRate !== undefined ? { overallRate: opts.overallRate } : {}),
  });
  instance.on('response', (_client, status, _bytes, ms) => {
    if (status >= 200 && status < 300) lat.push(ms);
  });
  const r = await instance;
  return {
    connections: opts.connections,
    duration_s: r.duration,
    overall_rate: opts.overallRate ?? null,
    ok: r['2xx'],
    non_2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    rps: round(r['2xx'] / r.duration, 1),
    latency: summarize(lat),
  };
}
