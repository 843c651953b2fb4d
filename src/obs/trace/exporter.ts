// The batching span exporter: ended spans wait in a bounded queue and leave as OTLP/HTTP
// JSON POSTs, every `intervalMs` or as soon as a full batch is waiting, one POST at a time.
// A full queue drops the span and counts it, never blocks a request; an export that fails
// (collector down, non-2xx, timeout) drops its batch and counts it: no retries, which
// would only grow the backlog of a collector that is already behind. shutdown() sends
// what is left, bounded in time.
import { Pool } from 'undici';
import { encodeTraces, type Scope } from './otlp.ts';
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

export class BatchExporter implements SpanSink {
  private queue: SpanData[] = [];
  private sending: Promise<void> | undefined;
  private readonly timer: NodeJS.Timeout;
  private readonly pool: Pool;
  private readonly path: string;
  private lastErrorAt = -Infinity;
  private closed = false;
  /** Totals, for tests and the shutdown log line. */
  readonly counts: Record<SpanOutcome, number> = { exported: 0, dropped_queue_full: 0, dropped_export_failed: 0 };

  constructor(private readonly o: ExporterOptions) {
    const u = new URL(o.url);
    this.path = `${u.pathname}${u.search}`;
    this.pool = new Pool(u.origin, { connections: 1, connectTimeout: o.timeoutMs, headersTimeout: o.timeoutMs, bodyTimeout: o.timeoutMs, keepAliveTimeout: 30_000 });
    this.timer = setInterval(() => this.kick(), o.intervalMs);
    // Spans waiting for the next tick never keep a process alive; shutdown() sends them.
    this.timer.unref();
  }

  push(span: SpanData): void {
    if (this.closed || this.queue.length >= this.o.maxQueue) return this.count('dropped_queue_full', 1);
    this.queue.push(span);
    if (this.queue.length === this.o.maxBatch && this.sending === undefined) setImmediate(() => this.kick());
  }

  /** Spans waiting to leave. */
  get queued(): number {
    return this.queue.length;
  }

  /** Starts a POST of the next batch unless one is in flight. */
  private kick(): void {
    if (this.sending !== undefined || this.queue.length === 0) return;
    this.sending = this.sendBatch().finally(() => {
      this.sending = undefined;
      // More than a batch was waiting: go on at once instead of at the next tick.
      if (this.queue.length >= this.o.maxBatch && !this.closed) setImmediate(() => this.kick());
    });
  }

  private async sendBatch(): Promise<void> {
    const batch = this.queue.length <= this.o.maxBatch ? this.queue : this.queue.slice(0, this.o.maxBatch);
    this.queue = batch === this.queue ? [] : this.queue.slice(this.o.maxBatch);
    try {
      const res = await this.pool.request({
        method: 'POST',
        path: this.path,
        headers: { 'content-type': 'application/json' },
        body: encodeTraces(this.o.resource, this.o.scope, batch),
        signal: AbortSignal.timeout(this.o.timeoutMs),
      });
      const text = await res.body.text();
      if (res.statusCode < 200 || res.statusCode >= 300) throw new Error(`OTLP endpoint answered ${res.statusCode}: ${text.slice(0, 200)}`);
      this.count('exported', batch.length);
    } catch (err) {
      this.count('dropped_export_failed', batch.length);
      const now = Date.now();
      if (now - this.lastErrorAt >= 60_000) {
        this.lastErrorAt = now;
        this.o.onError?.(err as Error);
      }
    }
  }

  private count(outcome: SpanOutcome, n: number): void {
    this.counts[outcome] += n;
    this.o.onOutcome?.(outcome, n);
  }

  /** Sends what is queued now (and waits for a POST in flight). */
  async flush(): Promise<void> {
    while (this.sending !== undefined || this.queue.length > 0) {
      if (this.sending === undefined) this.kick();
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
    if (this.queue.length > 0) {
      this.count('dropped_export_failed', this.queue.length);
      this.queue = [];
    }
    await this.pool.destroy().catch(() => undefined);
  }
}
