// Spans: what the broker records of one unit of work (a request, an upstream attempt, an
// inference batch step). A Span is mutable until end(), then handed to its tracer's
// exporter. SpanData is the plain, cloneable shape the exporter takes: an inference
// worker makes those itself and sends them back with its batch (obs/trace/worker-spans.ts).
//
// Times are epoch milliseconds as floats (performance.timeOrigin + performance.now():
// monotonic within a thread, sub-microsecond resolution), turned into the nanosecond
// strings of OTLP only when exported.
import { performance } from 'node:perf_hooks';
import { formatTraceparent, type TraceContext } from './context.ts';
import { newSpanId } from './ids.ts';

/** OTLP's Span.SpanKind. */
export const SpanKind = { INTERNAL: 1, SERVER: 2, CLIENT: 3 } as const;
export type SpanKind = (typeof SpanKind)[keyof typeof SpanKind];

/** OTLP's Status.StatusCode: unset, ok, error. */
export const StatusCode = { UNSET: 0, OK: 1, ERROR: 2 } as const;
export type StatusCode = (typeof StatusCode)[keyof typeof StatusCode];

export type AttrValue = string | number | boolean;

export interface SpanData {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string | undefined;
  readonly name: string;
  readonly kind: SpanKind;
  /** Epoch milliseconds. */
  readonly startMs: number;
  readonly endMs: number;
  readonly attributes: Readonly<Record<string, AttrValue>>;
  readonly status: StatusCode;
  readonly statusMessage: string | undefined;
}

/** Where ended spans go (the tracer's exporter). */
export interface SpanSink {
  push(span: SpanData): void;
}

/** Now, in epoch milliseconds, on this thread's clock. */
export function epochMs(): number {
  return performance.timeOrigin + performance.now();
}

/** A performance.now() reading of this thread as epoch milliseconds. */
export function epochOf(perfNow: number): number {
  return performance.timeOrigin + perfNow;
}

export class Span implements SpanData, TraceContext {
  readonly spanId = newSpanId();
  name: string;
  endMs = 0;
  attributes: Record<string, AttrValue>;
  status: StatusCode = StatusCode.UNSET;
  statusMessage: string | undefined = undefined;
  // A private field: not an own property, so a Span that crossed a thread by mistake
  // would not drag its exporter along.
  readonly #sink: SpanSink;

  constructor(
    sink: SpanSink,
    readonly traceId: string,
    readonly parentSpanId: string | undefined,
    name: string,
    readonly kind: SpanKind,
    readonly startMs: number,
    /** The incoming `tracestate`, passed on unchanged to upstreams. */
    readonly tracestate: string | undefined,
    attributes?: Record<string, AttrValue>,
  ) {
    this.#sink = sink;
    this.name = name;
    this.attributes = attributes ?? {};
  }

  /** A span under this one, on the same trace and exporter. */
  child(name: string, kind: SpanKind = SpanKind.INTERNAL, startMs = epochMs(), attributes?: Record<string, AttrValue>): Span {
    return new Span(this.#sink, this.traceId, this.spanId, name, kind, startMs, this.tracestate, attributes);
  }

  set(key: string, value: AttrValue | undefined | null): this {
    if (value !== undefined && value !== null) this.attributes[key] = value;
    return this;
  }

  /** Error status; `type` becomes the `error.type` attribute (an error code of src/errors.ts, say). */
  fail(type: string, message?: string): this {
    this.status = StatusCode.ERROR;
    this.statusMessage = message;
    this.attributes['error.type'] = type;
    return this;
  }

  /** Ends the span (once; later calls do nothing) and hands it to the exporter. */
  end(endMs = epochMs()): void {
    if (this.endMs !== 0) return;
    this.endMs = endMs;
    this.#sink.push(this);
  }

  get ended(): boolean {
    return this.endMs !== 0;
  }

  /** Trace and span id as a plain object: what crosses to another thread. */
  context(): TraceContext {
    return { traceId: this.traceId, spanId: this.spanId };
  }

  /** This span as the parent of the next hop (sampled). */
  get traceparent(): string {
    return formatTraceparent(this);
  }
}
