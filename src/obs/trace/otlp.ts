// OTLP/HTTP JSON encoding of spans: an ExportTraceServiceRequest
// (opentelemetry-proto, opentelemetry/proto/collector/trace/v1/trace_service.proto) in the
// protobuf JSON mapping OTLP/HTTP specifies: trace and span ids as hex (not base64),
// 64-bit integers (times, intValue) as decimal strings, enums as numbers.
import type { AttrValue, SpanData } from './span.ts';

export interface OtlpAttribute {
  readonly key: string;
  readonly value: { stringValue: string } | { intValue: string } | { doubleValue: number } | { boolValue: boolean };
}

function attrValue(v: AttrValue): OtlpAttribute['value'] {
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  return Number.isSafeInteger(v) ? { intValue: String(v) } : { doubleValue: v };
}

export function attributes(a: Readonly<Record<string, AttrValue>>): OtlpAttribute[] {
  const out: OtlpAttribute[] = [];
  for (const key in a) out.push({ key, value: attrValue(a[key]!) });
  return out;
}

/**
 * Epoch milliseconds (a float) as OTLP's fixed64 nanoseconds, a decimal string. The
 * product does not fit a double exactly (1.8e18 > 2^53), so the whole milliseconds and the
 * nanoseconds within them are written side by side.
 */
export function unixNanos(ms: number): string {
  let whole = Math.floor(ms);
  let frac = Math.round((ms - whole) * 1e6);
  if (frac >= 1e6) {
    whole += 1;
    frac -= 1e6;
  }
  return `${whole}${String(frac).padStart(6, '0')}`;
}

export interface Scope {
  readonly name: string;
  readonly version: string;
}

/** The ExportTraceServiceRequest for one batch, as JSON text. */
export function encodeTraces(resource: Readonly<Record<string, AttrValue>>, scope: Scope, spans: readonly SpanData[]): string {
  return JSON.stringify({
    resourceSpans: [
      {
        resource: { attributes: attributes(resource) },
        scopeSpans: [
          {
            scope: { name: scope.name, version: scope.version },
            spans: spans.map((s) => ({
              traceId: s.traceId,
              spanId: s.spanId,
              ...(s.parentSpanId !== undefined ? { parentSpanId: s.parentSpanId } : {}),
              name: s.name,
              kind: s.kind,
              startTimeUnixNano: unixNanos(s.startMs),
              endTimeUnixNano: unixNanos(s.endMs),
              attributes: attributes(s.attributes),
              status: s.statusMessage !== undefined ? { code: s.status, message: s.statusMessage } : { code: s.status },
            })),
          },
        ],
      },
    ],
  });
}
