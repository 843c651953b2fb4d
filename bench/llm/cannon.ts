// autocannon (closed loop, or its overallRate) against one POST route, in the result
// shape bench:llm reports; the run itself is bench/lib/load.ts's fire().
import { fire, type LoadOptions } from '../lib/load.ts';
import { round, summarize, type Latency } from '../lib/stats.ts';

export type CannonOptions = Omit<LoadOptions, 'timeoutS'>;

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
  const r = await fire({ ...opts, timeoutS: 10 });
  return {
    connections: opts.connections,
    duration_s: r.durationS,
    overall_rate: opts.overallRate ?? null,
    ok: r.ok,
    non_2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    rps: round(r.ok / r.durationS, 1),
    latency: summarize(r.latencies),
  };
}
