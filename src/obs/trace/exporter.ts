// The batching span exporter. An ended span is encoded to OTLP JSON at once and its bytes
// appended to the batch being filled, so the span object dies young: queued Span objects
// would live until their POST (up to a second), survive the scavenges and go to old space.
// A batch leaves as one OTLP/HTTP JSON POST when it holds `maxBatch` spans or every
// `intervalMs`, one POST at a time. A full queue drops the span and counts it, never blocks
// a request; an export that fails (collector down, non-2xx, timeout) drops its batch and
// counts it: no retries, which would only grow the backlog of a collector that is already
// behind. A 429 or 503 with Retry-After (OTLP/HTTP's throttling) pauses the exports that long
// (at most a minute): spans queue meanwhile, up to `maxQueue`. Spans a collector takes in
// part (200 with partialSuccess.rejectedSpans) count as dropped. shutdown() sends what is
// left, bounded in time.
import { Pool } from 'undici';
import { encodeSpan, tracesPrefix, TRACES_SUFFIX, type Scope } from './otlp.ts';
import type { AttrValue, SpanData, SpanSink } from './span.ts';

export interface ExporterOptions {
  /** The full OTLP/HTTP traces URL (`…/v1/traces`). */
  readonly url: string;
  readonly resource: Readonly<Record<string, AttrValue>>;
  readonly scope: Scope;
  /** Sent with every POST besides content-type (the collector's credentials). */
  readonly headers?: Readonly<Record<string, string>>;
  /** Spans that may wait; past it new ones are dropped. */
  readonly maxQueue: number;
  /** Spans per POST. */
  readonly maxBatch: number;
  readonly intervalMs: number;
  /** Per POST: connect, headers and body. */
  readonly timeoutMs: number;
  /** Counts spans by what became of them. */
  readonly onOutcome?: (outcome: SpanOutcome, n: number) => void;
  /** Told of a failed export (at most once a minute: a down collector must not flood the log). */
  readonly onError?: (err: Error) => void;
}

export type SpanOutcome = 'exported' | 'dropped_queue_full' | 'dropped_export_failed';

interface Batch {
  /** The spans' JSON, comma-separated. */
  readonly bytes: Buffer;
  readonly count: number;
}

const COMMA = 0x2c;

export class BatchExporter implements SpanSink {
  /** The batch being filled. */
  private buf: Buffer;
  private len = 0;
  private count = 0;
  /** Full batches waiting for their POST. */
  private sealed: Batch[] = [];
  /** Spans in `sealed` and in the batch being filled. */
  private waiting = 0;
  private sending: Promise<void> | undefined;
  private readonly timer: NodeJS.Timeout;
  private readonly pool: Pool;
  private readonly path: string;
  private readonly prefix: Buffer;
  private readonly suffix = Buffer.from(TRACES_SUFFIX);
  private readonly lastWarnAt: { failed?: number; rejected?: number } = {};
  /** No POST before this (epoch ms): the collector asked to wait. */
  private pausedUntil = 0;
  private readonly headers: Record<string, string>;
  private closed = false;
  private closing = false;
  /** Totals, for tests and the shutdown log line. */
  readonly counts: Record<SpanOutcome, number> = { exported: 0, dropped_queue_full: 0, dropped_export_failed: 0 };

  constructor(private readonly o: ExporterOptions) {
    const u = new URL(o.url);
    this.path = `${u.pathname}${u.search}`;
    this.headers = { ...o.headers, 'content-type': 'application/json' };
    this.prefix = Buffer.from(tracesPrefix(o.resource, o.scope));
    this.buf = Buffer.allocUnsafe(64 * 1024);
    this.pool = new Pool(u.origin, { connections: 1, connectTimeout: o.timeoutMs, headersTimeout: o.timeoutMs, bodyTimeout: o.timeoutMs, keepAliveTimeout: 30_000 });
    this.timer = setInterval(() => this.kick(), o.intervalMs);
    // Spans waiting for the next tick never keep a process alive; shutdown() sends them.
    this.timer.unref();
  }

  push(span: SpanData): void {
    if (this.closed || this.waiting >= this.o.maxQueue) return this.count_('dropped_queue_full', 1);
    const json = encodeSpan(span);
    // UTF-8 takes at most 3 bytes per UTF-16 unit.
    const need = json.length * 3 + 1;
    if (this.len + need > this.buf.length) {
      const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.len + need));
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    if (this.count > 0) this.buf[this.len++] = COMMA;
    this.len += this.buf.write(json, this.len);
    this.count++;
    this.waiting++;
    if (this.count >= this.o.maxBatch) {
      this.seal();
      if (this.sending === undefined) setImmediate(() => this.kick());
    }
  }

  /** Spans waiting to leave. */
  get queued(): number {
    return this.waiting;
  }

  /** The batch being filled joins the full ones; the next one starts the size this one reached. */
  private seal(): void {
    if (this.count === 0) return;
    this.sealed.push({ bytes: this.buf.subarray(0, this.len), count: this.count });
    this.buf = Buffer.allocUnsafe(Math.max(64 * 1024, this.len + (this.len >> 2)));
    this.len = 0;
    this.count = 0;
  }

  /** Starts a POST of the next batch unless one is in flight. */
  private kick(): void {
    if (this.sending !== undefined || (this.pausedUntil > 0 && Date.now() < this.pausedUntil && !this.closing)) return;
    if (this.sealed.length === 0) this.seal();
    const batch = this.sealed.shift();
    if (batch === undefined) return;
    this.sending = this.send(batch).finally(() => {
      this.sending = undefined;
      // More full batches waiting: go on at once instead of at the next tick.
      if (this.sealed.length > 0 && !this.closed) setImmediate(() => this.kick());
    });
  }

  private async send(batch: Batch): Promise<void> {
    try {
      const res = await this.pool.request({
        method: 'POST',
        path: this.path,
        headers: this.headers,
        body: Buffer.concat([this.prefix, batch.bytes, this.suffix]),
        signal: AbortSignal.timeout(this.o.timeoutMs),
      });
      const text = await res.body.text();
      if (res.statusCode === 429 || res.statusCode === 503) this.pausedUntil = Date.now() + retryAfterMs(res.headers['retry-after']);
      if (res.statusCode < 200 || res.statusCode >= 300) throw new Error(`OTLP endpoint answered ${res.statusCode}: ${text.slice(0, 200)}`);
      this.waiting -= batch.count;
      const rejected = Math.min(batch.count, rejectedSpans(text));
      this.count_('exported', batch.count - rejected);
      if (rejected > 0) {
        this.count_('dropped_export_failed', rejected);
        this.warn(new Error(`OTLP endpoint rejected ${rejected} of ${batch.count} spans: ${text.slice(0, 200)}`), 'rejected');
      }
    } catch (err) {
      this.waiting -= batch.count;
      this.count_('dropped_export_failed', batch.count);
      this.warn(err as Error);
    }
  }

  /**
   * At most once a minute for each kind: a down collector must not flood the log, and a
   * collector rejecting spans right after an outage is said too (the outage's line held it back).
   */
  private warn(err: Error, kind: 'failed' | 'rejected' = 'failed'): void {
    const now = Date.now();
    if (now - (this.lastWarnAt[kind] ?? -Infinity) >= 60_000) {
      this.lastWarnAt[kind] = now;
      this.o.onError?.(err);
    }
  }

  private count_(outcome: SpanOutcome, n: number): void {
    this.counts[outcome] += n;
    this.o.onOutcome?.(outcome, n);
  }

  /** Sends what is queued now (and waits for a POST in flight). */
  async flush(): Promise<void> {
    while (this.sending !== undefined || this.waiting > 0) {
      if (this.sending === undefined) this.kick();
      if (this.sending === undefined) break;
      await this.sending;
    }
  }

  /** Stops taking spans, sends what is left within `timeoutMs`, closes the connection. */
  async shutdown(timeoutMs: number): Promise<void> {
    clearInterval(this.timer);
    // The last spans are offered once more, whatever wait a collector asked for (bounded by timeoutMs).
    this.closing = true;
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
    });
    await Promise.race([this.flush(), late]);
    clearTimeout(timer);
    this.closed = true;
    // What a slow collector did not take in time is dropped, and counted.
    this.seal();
    const left = this.sealed.reduce((a, b) => a + b.count, 0);
    this.sealed = [];
    if (left > 0) {
      this.waiting -= left;
      this.count_('dropped_export_failed', left);
    }
    await this.pool.destroy().catch(() => undefined);
  }
}

/** Retry-After (seconds or an HTTP date) in ms, 1 s without one, at most a minute. */
function retryAfterMs(h: string | string[] | undefined): number {
  const v = Array.isArray(h) ? h[0] : h;
  if (v === undefined || v.trim() === '') return 1000;
  const s = Number(v);
  const ms = Number.isFinite(s) ? s * 1000 : Date.parse(v) - Date.now();
  return Number.isFinite(ms) ? Math.min(60_000, Math.max(0, ms)) : 1000;
}

/** partialSuccess.rejectedSpans of an OTLP reply (int64 as a string or a number in JSON), 0 when absent. */
function rejectedSpans(text: string): number {
  if (!text.includes('rejectedSpans')) return 0;
  try {
    const n = Number((JSON.parse(text) as { partialSuccess?: { rejectedSpans?: unknown } }).partialSuccess?.rejectedSpans ?? 0);
    return Number.isFinite(n) && n > 0 ? n : 0;
  } catch {
    return 0;
  }
}
