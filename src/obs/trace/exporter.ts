// The batching span exporter. An ended span is encoded to OTLP JSON at once and its bytes
// appended to the batch being filled, so the span object dies young: queued Span objects
// would live until their POST (up to a second), survive the scavenges and go to old space.
// A batch leaves as one OTLP/HTTP JSON POST when it holds `maxBatch` spans or every
// `intervalMs`, one POST at a time. A full queue drops the span and counts it, never blocks
// a request; an export that fails (collector down, non-2xx, timeout) drops its batch and
// counts it: no retries, which would only grow the backlog of a collector that is already
// behind. shutdown() sends what is left, bounded in time.
import { Pool } from 'undici';
import { encodeSpan, tracesPrefix, TRACES_SUFFIX, type Scope } from './otlp.ts';
import type { AttrValue, SpanData, SpanSink } from './span.ts';

export interface ExporterOptions {
  /** The full OTLP/HTTP traces URL (`…/v1/traces`). */
  readonly url: string;
  readonly resource: Readonly<Record<string, AttrValue>>;
  readonly scope: Scope;
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
  private lastErrorAt = -Infinity;
  private closed = false;
  /** Totals, for tests and the shutdown log line. */
  readonly counts: Record<SpanOutcome, number> = { exported: 0, dropped_queue_full: 0, dropped_export_failed: 0 };

  constructor(private readonly o: ExporterOptions) {
    const u = new URL(o.url);
    this.path = `${u.pathname}${u.search}`;
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
    if (this.sending !== undefined) return;
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
        headers: { 'content-type': 'application/json' },
        body: Buffer.concat([this.prefix, batch.bytes, this.suffix]),
        signal: AbortSignal.timeout(this.o.timeoutMs),
      });
      const text = await res.body.text();
      if (res.statusCode < 200 || res.statusCode >= 300) throw new Error(`OTLP endpoint answered ${res.statusCode}: ${text.slice(0, 200)}`);
      this.waiting -= batch.count;
      this.count_('exported', batch.count);
    } catch (err) {
      this.waiting -= batch.count;
      this.count_('dropped_export_failed', batch.count);
      const now = Date.now();
      if (now - this.lastErrorAt >= 60_000) {
        this.lastErrorAt = now;
        this.o.onError?.(err as Error);
      }
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
