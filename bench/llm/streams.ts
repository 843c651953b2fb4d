// The SSE client of bench:llm, on undici: opens N chat-completion streams at once,
// waits for all of them, and repeats for a bounded time and number of rounds. Per
// stream: time to the response headers, TTFT (request start to the first `data:` chunk
// with content; the role chunk with "content":"" does not count), total time, and
// whether `data: [DONE]` arrived.
// Chunks are scanned as latin1 text, not parsed: with 1,000 streams the client shares
// two cores with the servers, and must stay cheap.
import { performance } from 'node:perf_hooks';
import { Pool, type Dispatcher } from 'undici';
import { round, summarize, type Latency } from '../lib/stats.ts';

/** A content delta with at least one character: `"content":"tok0 "`. */
const CONTENT = /"content":"[^"]/;
const DONE = 'data: [DONE]';

export interface StreamRunOptions {
  readonly concurrency: number;
  /** Stop starting rounds after this long (a round in progress finishes). */
  readonly durationS: number;
  readonly maxRounds: number;
  /** A round whose streams are not all over after this long is cut; the rest count as failed. */
  readonly roundTimeoutMs: number;
}

export interface StreamRunResult {
  readonly concurrency: number;
  readonly rounds: number;
  readonly streams: number;
  /** Streams that ended with `data: [DONE]` and a 200. */
  readonly completed: number;
  readonly completion_rate: number;
  readonly failures: Readonly<Record<string, number>>;
  /** Request start to the response headers. */
  readonly headers: Latency;
  readonly ttft: Latency;
  readonly total: Latency;
  readonly elapsed_s: number;
}

interface One {
  headers: number;
  ttft: number;
  total: number;
  ok: boolean;
  failure?: string;
}

export class StreamClient {
  private readonly pool: Pool;
  private readonly path: string;
  private readonly body: string;

  constructor(url: string, body: string, maxConnections: number, timeoutMs: number) {
    const u = new URL(url);
    this.path = u.pathname;
    this.body = body;
    // Idle connections are dropped after 4 s (undici's default), before the broker's uWS
    // closes them after 10 s of silence: a POST sent on a connection the server is closing
    // at that moment fails with ECONNRESET and is not retried (seen with 30 s here).
    this.pool = new Pool(u.origin, { connections: maxConnections, pipelining: 1, headersTimeout: timeoutMs, bodyTimeout: timeoutMs, keepAliveTimeout: 4000, keepAliveMaxTimeout: 4000 });
  }

  private one(): Promise<One> {
    return new Promise((resolve) => {
      const start = performance.now();
      let ttft = -1;
      let headers = -1;
      let status = 0;
      let carry = '';
      let tail = '';
      const handler: Dispatcher.DispatchHandler = {
        // undici tells the handler APIs apart by this method: without it, it expects the legacy one.
        onRequestStart() {},
        onResponseStart(_c, statusCode) {
          headers = performance.now() - start;
          status = statusCode;
        },
        onResponseData(_c, chunk) {
          const text = chunk.toString('latin1');
          if (ttft < 0) {
            const t = carry + text;
            if (CONTENT.test(t)) ttft = performance.now() - start;
            else carry = t.slice(-32);
          }
          tail = (tail + text).slice(-48);
        },
        onResponseEnd() {
          const total = performance.now() - start;
          const done = tail.includes(DONE);
          const ok = status === 200 && done && ttft >= 0;
          resolve({ headers, ttft, total, ok, ...(ok ? {} : { failure: status !== 200 ? `status_${status}` : 'no_done' }) });
        },
        onResponseError(_c, err) {
          resolve({ headers, ttft, total: performance.now() - start, ok: false, failure: (err as Error & { code?: string }).code ?? err.name });
        },
      };
      this.pool.dispatch({ method: 'POST', path: this.path, headers: { 'content-type': 'application/json' }, body: this.body }, handler);
    });
  }

  async run(opts: StreamRunOptions): Promise<StreamRunResult> {
    const headers: number[] = [];
    const ttft: number[] = [];
    const total: number[] = [];
    const failures: Record<string, number> = {};
    let streams = 0;
    let completed = 0;
    let rounds = 0;
    const t0 = performance.now();
    while (rounds < opts.maxRounds && performance.now() - t0 < opts.durationS * 1000) {
      rounds++;
      const batch = Array.from({ length: opts.concurrency }, () => this.one());
      let timer: NodeJS.Timeout | undefined;
      const cut = new Promise<'cut'>((r) => (timer = setTimeout(() => r('cut'), opts.roundTimeoutMs)));
      const settled: (One | undefined)[] = new Array(batch.length);
      batch.forEach((p, i) => void p.then((o) => (settled[i] = o)));
      await Promise.race([Promise.all(batch), cut]);
      clearTimeout(timer);
      for (const o of settled) {
        streams++;
        if (o === undefined) {
          failures.round_timeout = (failures.round_timeout ?? 0) + 1;
          continue;
        }
        if (o.headers >= 0) headers.push(o.headers);
        if (o.ttft >= 0) ttft.push(o.ttft);
        if (o.ok) {
          completed++;
          total.push(o.total);
        } else failures[o.failure!] = (failures[o.failure!] ?? 0) + 1;
      }
      if (settled.includes(undefined)) break; // streams still open: later rounds would not be comparable
    }
    return {
      concurrency: opts.concurrency,
      rounds,
      streams,
      completed,
      completion_rate: round(completed / Math.max(1, streams), 4),
      failures,
      headers: summarize(headers),
      ttft: summarize(ttft),
      total: summarize(total),
      elapsed_s: round((performance.now() - t0) / 1000, 2),
    };
  }

  /**
   * Keeps `concurrency` streams open for `durationS`: they start spread over `rampMs`, and
   * each one that ends is replaced at once. Unlike run(), no burst of simultaneous
   * arrivals: this is the per-stream cost at that concurrency in a steady state. Streams
   * started during the ramp are not recorded.
   */
  async steady(opts: { concurrency: number; durationS: number; rampMs: number; drainTimeoutMs: number }): Promise<StreamRunResult> {
    const headers: number[] = [];
    const ttft: number[] = [];
    const total: number[] = [];
    const failures: Record<string, number> = {};
    let streams = 0;
    let completed = 0;
    let open = 0;
    const t0 = performance.now();
    const endAt = t0 + opts.rampMs + opts.durationS * 1000;
    let drained: () => void = () => {};
    const allDone = new Promise<void>((r) => (drained = r));
    const launch = (): void => {
      const startedAt = performance.now();
      open++;
      void this.one().then((o) => {
        open--;
        if (startedAt >= t0 + opts.rampMs) {
          streams++;
          if (o.headers >= 0) headers.push(o.headers);
          if (o.ttft >= 0) ttft.push(o.ttft);
          if (o.ok) {
            completed++;
            total.push(o.total);
          } else failures[o.failure!] = (failures[o.failure!] ?? 0) + 1;
        }
        if (performance.now() < endAt) launch();
        else if (open === 0) drained();
      });
    };
    const timers: NodeJS.Timeout[] = [];
    for (let i = 0; i < opts.concurrency; i++) timers.push(setTimeout(launch, (i * opts.rampMs) / opts.concurrency));
    const cut = new Promise<void>((r) => timers.push(setTimeout(r, opts.rampMs + opts.durationS * 1000 + opts.drainTimeoutMs)));
    await Promise.race([allDone, cut]);
    for (const t of timers) clearTimeout(t);
    if (open > 0) failures.drain_timeout = open;
    return {
      concurrency: opts.concurrency,
      rounds: 0,
      streams: streams + open,
      completed,
      completion_rate: round(completed / Math.max(1, streams + open), 4),
      failures,
      headers: summarize(headers),
      ttft: summarize(ttft),
      total: summarize(total),
      elapsed_s: round((performance.now() - t0) / 1000, 2),
    };
  }

  close(): Promise<void> {
    return this.pool.destroy();
  }
}
