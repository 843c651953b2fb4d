// The load generator: autocannon against one POST route, with exact per-request
// latencies (autocannon's own histogram rounds to whole milliseconds, too coarse
// for a 28x28 model).
import autocannon from 'autocannon';
import { round, summarize, type Latency } from './stats.ts';

export interface LoadOptions {
  readonly url: string;
  readonly body: string | Buffer;
  readonly connections: number;
  readonly durationS: number;
  readonly headers?: Readonly<Record<string, string>>;
  /** autocannon's overallRate: requests per second over all connections; unset = as fast as possible. */
  readonly overallRate?: number;
  readonly timeoutS?: number;
}

/** One autocannon run, raw. */
export interface LoadRun {
  readonly durationS: number;
  readonly ok: number;
  readonly non2xx: number;
  readonly errors: number;
  readonly timeouts: number;
  readonly statusCodes: Record<string, number>;
  /** Client-side latency (ms) of each 2xx reply. */
  readonly latencies: Float64Array;
}

/** One or more runs at the same settings, added up. */
export interface LoadResult {
  readonly connections: number;
  readonly duration_s: number;
  readonly ok: number;
  readonly non_2xx: number;
  readonly errors: number;
  readonly timeouts: number;
  /** 2xx replies per second. */
  readonly throughput_rps: number;
  readonly latency: Latency;
  readonly status_codes: Record<string, number>;
}

export async function fire(opts: LoadOptions): Promise<LoadRun> {
  const latencies: number[] = [];
  const instance = autocannon({
    url: opts.url,
    method: 'POST',
    headers: { 'content-type': 'application/json', ...opts.headers },
    body: opts.body,
    connections: opts.connections,
    duration: opts.durationS,
    timeout: opts.timeoutS ?? 30,
    ...(opts.overallRate !== undefined ? { overallRate: opts.overallRate } : {}),
  });
  instance.on('response', (_client, status, _bytes, ms) => {
    if (status >= 200 && status < 300) latencies.push(ms);
  });
  const r = await instance;
  return {
    durationS: r.duration,
    ok: r['2xx'],
    non2xx: r.non2xx,
    errors: r.errors,
    timeouts: r.timeouts,
    statusCodes: Object.fromEntries(Object.entries(r.statusCodeStats).map(([k, v]) => [k, v.count])),
    latencies: Float64Array.from(latencies),
  };
}

export function combine(connections: number, runs: readonly LoadRun[]): LoadResult {
  const sum = (f: (r: LoadRun) => number) => runs.reduce((a, r) => a + f(r), 0);
  const statusCodes: Record<string, number> = {};
  for (const r of runs) for (const [k, v] of Object.entries(r.statusCodes)) statusCodes[k] = (statusCodes[k] ?? 0) + v;
  const duration = sum((r) => r.durationS);
  const ok = sum((r) => r.ok);
  return {
    connections,
    duration_s: round(duration, 2),
    ok,
    non_2xx: sum((r) => r.non2xx),
    errors: sum((r) => r.errors),
    timeouts: sum((r) => r.timeouts),
    throughput_rps: round(ok / duration, 1),
    latency: summarize(runs.flatMap((r) => Array.from(r.latencies))),
    status_codes: statusCodes,
  };
}
