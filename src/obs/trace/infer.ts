// Spans of the inference path, under the request's server span:
//
//   infer.queue     admission queue + batch fill + hand-off, on the thread that owns the
//                   pool (the main thread), from when the image was queued to when a worker
//                   started its batch
//   infer.decode    the batch's decode and preprocess (sharp), in the inference worker
//   infer.compute   the batch's session.run (onnxruntime), in the inference worker
//
// The request's context reaches the worker in the task message (BatchItem.trace); the
// worker makes its two spans per traced image as plain SpanData with its own span ids
// and sends them back with the batch's outcome, and the pool hands them to its tracer's
// exporter. A batch holds images of several requests, maybe several traces: each traced
// image gets its own pair, with the batch's times and size.
import type { TraceContext } from './context.ts';
import { newSpanId } from './ids.ts';
import { SpanKind, StatusCode, type AttrValue, type SpanData } from './span.ts';

function span(ctx: TraceContext, name: string, startMs: number, endMs: number, attributes: Record<string, AttrValue>, error: string | undefined): SpanData {
  return {
    traceId: ctx.traceId,
    spanId: newSpanId(),
    parentSpanId: ctx.spanId,
    name,
    kind: SpanKind.INTERNAL,
    startMs,
    endMs,
    attributes: error === undefined ? attributes : { ...attributes, 'error.type': error },
    status: error === undefined ? StatusCode.UNSET : StatusCode.ERROR,
    statusMessage: undefined,
  };
}

export interface BatchTimes {
  /** Epoch ms: the worker started the batch, finished decoding it, finished computing it. */
  readonly startedAt: number;
  readonly decodedAt: number;
  readonly endedAt: number;
}

/** In the worker: decode and compute spans of one traced image. `failed`: its error code, and where it failed. */
export function workerSpans(ctx: TraceContext, t: BatchTimes, attributes: Record<string, AttrValue>, failed: { code: string; in: 'decode' | 'compute' } | undefined): SpanData[] {
  const decode = span(ctx, 'infer.decode', t.startedAt, t.decodedAt, attributes, failed?.in === 'decode' ? failed.code : undefined);
  // An image that failed to decode never reached the model: no compute span for it.
  if (failed?.in === 'decode') return [decode];
  return [decode, span(ctx, 'infer.compute', t.decodedAt, t.endedAt, attributes, failed?.in === 'compute' ? failed.code : undefined)];
}

/** On the pool's thread: the wait of one traced image, from its queueing to its worker starting the batch. */
export function queueSpan(ctx: TraceContext, startMs: number, endMs: number, attributes: Record<string, AttrValue>): SpanData {
  return span(ctx, 'infer.queue', startMs, endMs, attributes, undefined);
}
