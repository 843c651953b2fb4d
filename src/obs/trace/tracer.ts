// The tracer: where spans start (a request arriving, or work continuing from another
// thread's context) and the sampling decision, made once per trace at its root:
//
// - parent-based (OTEL_TRACES_SAMPLER parentbased_*, the default): an incoming `traceparent`
//   decides. Sampled: this request is recorded, on the caller's trace id, as a child of the
//   caller's span. Not sampled: nothing recorded.
// - no (valid) `traceparent`, or a sampler that is not parent-based: recorded with
//   probability `sampleRatio` (always_on 1, always_off 0), in the caller's trace if any.
//
// Every span below the root is recorded when the root is: spans are made only from a
// recorded parent (Span.child, or startFrom with the context of one).
//
// Off (OTEL_ENABLED=false) the front reads `tracer.enabled` once per request and no Span
// exists: every later stage holds `undefined` and skips its tracing on one check
// (bench/otel.ts measures it).
//
// No OpenTelemetry SDK: its span processor, context manager (async_hooks) and exporter
// would run on the hot path of every request, and what the broker needs is this file,
// span.ts, otlp.ts and exporter.ts (docs/tracing.md).
import { hostname } from 'node:os';
import type { Config } from '../../config/env.ts';
import { parseTraceparent, validTracestate, type TraceContext } from './context.ts';
import { BatchExporter, type SpanOutcome } from './exporter.ts';
import { newTraceId } from './ids.ts';
import { Span, SpanKind, epochMs, type AttrValue, type SpanData, type SpanSink } from './span.ts';

export interface TracerOptions {
  readonly serviceName: string;
  /** The full OTLP/HTTP traces URL. */
  readonly url: string;
  /** Share of new traces recorded, 0..1. */
  readonly sampleRatio: number;
  /** An incoming traceparent's sampled flag decides (default true); false: the ratio decides every trace. */
  readonly parentBased?: boolean;
  /** Sent with every export (the collector's credentials). */
  readonly headers?: Readonly<Record<string, string>>;
  /** More resource attributes (OTEL_RESOURCE_ATTRIBUTES); the broker's own win. */
  readonly resourceAttributes?: Readonly<Record<string, string>>;
  /** Which thread exports: `main` or `plane-<n>` (the resource attribute `broker.thread`). */
  readonly thread: string;
  readonly maxQueue?: number;
  readonly maxBatch?: number;
  readonly intervalMs?: number;
  readonly timeoutMs?: number;
  readonly onOutcome?: (outcome: SpanOutcome, n: number) => void;
  readonly onError?: (err: Error) => void;
}

export const SCOPE = { name: 'edge-broker', version: '0.1.0' } as const;

export class Tracer {
  readonly enabled: boolean;
  private readonly exporter: BatchExporter | undefined;
  private readonly sink: SpanSink;
  private readonly ratio: number;
  private readonly parentBased: boolean;

  constructor(o: TracerOptions | undefined) {
    this.enabled = o !== undefined;
    this.ratio = o?.sampleRatio ?? 0;
    this.parentBased = o?.parentBased ?? true;
    this.exporter =
      o === undefined
        ? undefined
        : new BatchExporter({
            url: o.url,
            resource: {
              ...o.resourceAttributes,
              'service.name': o.serviceName,
              'service.instance.id': `${hostname()}:${process.pid}`,
              'telemetry.sdk.name': 'edge-broker',
              'telemetry.sdk.language': 'nodejs',
              'broker.thread': o.thread,
            },
            scope: SCOPE,
            headers: o.headers ?? {},
            maxQueue: o.maxQueue ?? 2048,
            maxBatch: o.maxBatch ?? 512,
            intervalMs: o.intervalMs ?? 1000,
            timeoutMs: o.timeoutMs ?? 5000,
            ...(o.onOutcome !== undefined ? { onOutcome: o.onOutcome } : {}),
            ...(o.onError !== undefined ? { onError: o.onError } : {}),
          });
    this.sink = this.exporter ?? { push: () => undefined };
  }

  /**
   * The server span of a request that arrived with this `traceparent` (and `tracestate`),
   * or undefined when it is not recorded. `startMs`: epoch ms of its arrival.
   */
  startServer(name: string, traceparent: string | undefined, tracestate: string | undefined, startMs: number, attributes?: Record<string, AttrValue>): Span | undefined {
    if (!this.enabled) return undefined;
    const parent = parseTraceparent(traceparent);
    if (parent !== undefined && this.parentBased) {
      if (!parent.sampled) return undefined;
      return new Span(this.sink, parent.traceId, parent.spanId, name, SpanKind.SERVER, startMs, validTracestate(tracestate), attributes);
    }
    const traceId = parent?.traceId ?? newTraceId();
    if (this.ratio < 1 && !sampledAtRatio(traceId, this.ratio)) return undefined;
    if (parent !== undefined) return new Span(this.sink, traceId, parent.spanId, name, SpanKind.SERVER, startMs, validTracestate(tracestate), attributes);
    return new Span(this.sink, traceId, undefined, name, SpanKind.SERVER, startMs, undefined, attributes);
  }

  /** A span under a context that came from another thread (already sampled there), or undefined without one. */
  startFrom(ctx: TraceContext | undefined, name: string, kind: SpanKind = SpanKind.INTERNAL, startMs = epochMs(), attributes?: Record<string, AttrValue>): Span | undefined {
    if (ctx === undefined || !this.enabled) return undefined;
    return new Span(this.sink, ctx.traceId, ctx.spanId, name, kind, startMs, undefined, attributes);
  }

  /** Spans made elsewhere (an inference worker), already ended. */
  record(spans: readonly SpanData[]): void {
    for (const s of spans) this.sink.push(s);
  }

  /** Sends what is waiting (tests; data-plane threads before they stop). */
  flush(): Promise<void> {
    return this.exporter?.flush() ?? Promise.resolve();
  }

  /** Sends what is left within `timeoutMs`, then takes no more spans. */
  shutdown(timeoutMs = 2000): Promise<void> {
    return this.exporter?.shutdown(timeoutMs) ?? Promise.resolve();
  }

  get counts(): Readonly<Record<SpanOutcome, number>> | undefined {
    return this.exporter?.counts;
  }
}

/**
 * traceidratio's decision, made from the trace id (its last 52 bits, random in W3C ids) and
 * not by a coin: every request of one trace (an agent's loop, a retry) through this broker is
 * recorded or none is (other SDKs read other bits of the id: their decisions may differ).
 */
export function sampledAtRatio(traceId: string, ratio: number): boolean {
  return Number.parseInt(traceId.slice(-13), 16) < ratio * 2 ** 52;
}

/** Tracing off: the front's one check finds `enabled` false, nothing else is touched. */
export const TRACING_OFF = new Tracer(undefined);

/** The tracer of one thread from the process config (TRACING_OFF with OTEL_ENABLED=false). */
export function createTracer(config: Config, thread: string, hooks: Pick<TracerOptions, 'onOutcome' | 'onError'> = {}): Tracer {
  const o = config.otel;
  if (!o.enabled) return TRACING_OFF;
  return new Tracer({ serviceName: o.serviceName, url: o.tracesUrl, sampleRatio: o.sampleRatio, parentBased: o.parentBased, headers: o.headers, resourceAttributes: o.resourceAttributes, thread, ...o.batch, ...hooks });
}
