// The SSE client of bench:llm, on undici: opens N chat-completion streams at once,
// waits for all of them, and repeats for a bounded time and number of rounds. Per
// stream: time to the response headers, TTFT (request start to the first `data:` chunk
// with content; the role chunk with "content":"" does not count), total time, and
// whether `data: [DONE]` arrived; on request, the inter-token gaps (below) and the
// number of SSE events.
//
// Inter-token gap: after the first content chunk, each later SSE event's arrival minus
// the previous event's arrival, as the client sees it. Events that arrive in the same
// read as the one before them have a gap of 0 (they were coalesced on the way); the
// gap before a read is stored once, the coalesced events only counted.
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

/** Inter-token gaps of the recorded streams, ms. */
export interface GapStats extends Latency {
  /** Events that arrived in the same read as the previous one (gap 0), included in the percentiles. */
  readonly coalesced: number;
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
  /** SSE events received over the whole run (ramp and drain included): divides the servers' CPU. */
  readonly events_all: number;
  /** Streams completed over the whole run (ramp and drain included). */
  readonly completed_all: number;
  /** steady(): streams completed within the measured window (after the ramp, before the drain), per second. */
  readonly streams_per_s?: number;
  /** steady(): SSE events received within the measured window, per second. */
  readonly events_per_s?: number;
  /** With gaps recorded: the inter-token gaps of the recorded streams. */
  readonly gap?: GapStats;
}

interface One {
  headers: number;
  ttft: number;
  total: number;
  ok: boolean;
  failure?: string;
  events: number;
}

/** Where one() puts inter-token gaps: the gap before each read, and a count of coalesced events. */
class Gaps {
  values: number[] = [];
  coalesced = 0;
  summary(): GapStats {
    const sorted = Float64Array.from(this.values).sort();
    const z = this.coalesced;
    const n = sorted.length + z;
    const at = (p: number): number => {
      if (n === 0) return NaN;
      const rank = Math.min(n, Math.max(1, Math.ceil((p / 100) * n)));
      return rank <= z ? 0 : sorted[rank - z - 1]!;
    };
    let sum = 0;
    for (const v of sorted) sum += v;
    return { count: n, coalesced: z, mean_ms: round(sum / Math.max(1, n)), p50_ms: round(at(50)), p99_ms: round(at(99)), max_ms: round(sorted.length ? sorted[sorted.length - 1]! : n > 0 ? 0 : NaN) };
  }
}

/** SSE events end with a blank line: counts "\n\n" in `text`, with the previous chunk's last character in front. */
function countEvents(prev: string, text: string): number {
  let n = 0;
  const t = prev + text;
  for (let i = t.indexOf('\n\n'); i >= 0; i = t.indexOf('\n\n', i + 2)) n++;
  return n;
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

  /** SSE events received by every stream of this client so far. */
  private eventsSeen = 0;

  private one(gaps?: Gaps): Promise<One> {
    const client = this;
    return new Promise((resolve) => {
      const start = performance.now();
      let ttft = -1;
      let headers = -1;
      let status = 0;
      let carry = '';
      let tail = '';
      let events = 0;
      let lastAt = 0;
      const handler: Dispatcher.DispatchHandler = {
        // undici tells the handler APIs apart by this method: without it, it expects the legacy one.
        onRequestStart() {},
        onResponseStart(_c, statusCode) {
          headers = performance.now() - start;
          status = statusCode;
        },
        onResponseData(_c, chunk) {
          const now = performance.now();
          const text = chunk.toString('latin1');
          const n = countEvents(tail.slice(-1), text);
          events += n;
          client.eventsSeen += n;
          if (ttft < 0) {
            const t = carry + text;
            if (CONTENT.test(t)) {
              ttft = now - start;
              lastAt = now;
            } else carry = t.slice(-32);
          } else if (gaps !== undefined && n > 0) {
            gaps.values.push(now - lastAt);
            gaps.coalesced += n - 1;
            lastAt = now;
          }
          tail = (tail + text).slice(-48);
        },
        onResponseEnd() {
          const total = performance.now() - start;
          const done = tail.includes(DONE);
          const ok = status === 200 && done && ttft >= 0;
          resolve({ headers, ttft, total, ok, events, ...(ok ? {} : { failure: status !== 200 ? `status_${status}` : 'no_done' }) });
        },
        onResponseError(_c, err) {
          resolve({ headers, ttft, total: performance.now() - start, ok: false, events, failure: (err as Error & { code?: string }).code ?? err.name });
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
    let events = 0;
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
        events += o.events;
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
      events_all: events,
      completed_all: completed,
    };
  }

  /**
   * Keeps `concurrency` streams open for `durationS`: they start spread over `rampMs`, and
   * each one that ends is replaced at once. Unlike run(), no burst of simultaneous
   * arrivals: this is the per-stream cost at that concurrency in a steady state. Streams
   * started during the ramp are not recorded.
   */
  async steady(opts: { concurrency: number; durationS: number; rampMs: number; drainTimeoutMs: number; gaps?: boolean }): Promise<StreamRunResult> {
    const headers: number[] = [];
    const ttft: number[] = [];
    const total: number[] = [];
    const failures: Record<string, number> = {};
    const gaps = opts.gaps === true ? new Gaps() : undefined;
    let streams = 0;
    let completed = 0;
    let open = 0;
    let eventsAll = 0;
    let completedAll = 0;
    let windowCompleted = 0;
    let eventsAtWindowStart = 0;
    let eventsAtWindowEnd = -1;
    const t0 = performance.now();
    const endAt = t0 + opts.rampMs + opts.durationS * 1000;
    const inWindow = (t: number): boolean => t >= t0 + opts.rampMs && t <= endAt;
    let drained: () => void = () => {};
    const allDone = new Promise<void>((r) => (drained = r));
    const launch = (): void => {
      const startedAt = performance.now();
      open++;
      const recorded = startedAt >= t0 + opts.rampMs;
      void this.one(recorded ? gaps : undefined).then((o) => {
        open--;
        const endedAt = performance.now();
        eventsAll += o.events;
        if (o.ok) completedAll++;
        if (inWindow(endedAt) && o.ok) windowCompleted++;
        if (recorded) {
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
    // Events are counted as they arrive, between the end of the ramp and the end of the window.
    timers.push(setTimeout(() => (eventsAtWindowStart = this.eventsSeen), opts.rampMs));
    timers.push(setTimeout(() => (eventsAtWindowEnd = this.eventsSeen), opts.rampMs + opts.durationS * 1000));
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
      events_all: eventsAll,
      completed_all: completedAll,
      streams_per_s: round(windowCompleted / opts.durationS, 1),
      events_per_s: round(((eventsAtWindowEnd >= 0 ? eventsAtWindowEnd : this.eventsSeen) - eventsAtWindowStart) / opts.durationS, 0),
      ...(gaps !== undefined ? { gap: gaps.summary() } : {}),
    };
  }

  close(): Promise<void> {
    return this.pool.destroy();
  }
}
