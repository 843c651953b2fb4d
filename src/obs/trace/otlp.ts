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
  if (Number.isSafeInteger(v)) return { intValue: String(v) };
  return Number.isFinite(v) ? { doubleValue: v } : { stringValue: String(v) };
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

/**
 * OTLP JSON written by hand: building the objects (attributes as {key, value: {…}} lists)
 * and JSON.stringify took 2-2.7x as long per span (3.1-3.6 µs against 1.3-1.6 µs on the
 * loaded 2-core box; `npm run bench:otel`, its `micro` figures in bench/results/otel.json).
 * Ids are hex the broker made or validated (context.ts), times digits: only names and
 * string values need escaping. encodeTraces(…) equals JSON.stringify(otlpObject(…)) byte
 * for byte (test/obs/trace.test.ts).
 */
export function encodeSpan(s: SpanData): string {
  const parent = s.parentSpanId !== undefined ? `,"parentSpanId":"${s.parentSpanId}"` : '';
  const status = s.statusMessage !== undefined ? `{"code":${s.status},"message":${JSON.stringify(s.statusMessage)}}` : `{"code":${s.status}}`;
  return `{"traceId":"${s.traceId}","spanId":"${s.spanId}"${parent},"name":${JSON.stringify(s.name)},"kind":${s.kind},"startTimeUnixNano":"${unixNanos(s.startMs)}","endTimeUnixNano":"${unixNanos(s.endMs)}","attributes":${encodeAttributes(s.attributes)},"status":${status}}`;
}

/** What comes before the spans of a request: resource and scope; `TRACES_SUFFIX` closes it. */
export function tracesPrefix(resource: Readonly<Record<string, AttrValue>>, scope: Scope): string {
  return `{"resourceSpans":[{"resource":{"attributes":${encodeAttributes(resource)}},"scopeSpans":[{"scope":{"name":${JSON.stringify(scope.name)},"version":${JSON.stringify(scope.version)}},"spans":[`;
}

export const TRACES_SUFFIX = ']}]}]}';

/** The ExportTraceServiceRequest for one batch, as JSON text. */
export function encodeTraces(resource: Readonly<Record<string, AttrValue>>, scope: Scope, spans: readonly SpanData[]): string {
  return `${tracesPrefix(resource, scope)}${spans.map(encodeSpan).join(',')}${TRACES_SUFFIX}`;
}

function encodeAttributes(a: Readonly<Record<string, AttrValue>>): string {
  let out = '[';
  for (const key in a) {
    const v = a[key]!;
    if (out.length > 1) out += ',';
    out += `{"key":${JSON.stringify(key)},"value":`;
    if (typeof v === 'string') out += `{"stringValue":${JSON.stringify(v)}}}`;
    else if (typeof v === 'boolean') out += `{"boolValue":${v}}}`;
    else if (Number.isSafeInteger(v)) out += `{"intValue":"${v}"}}`;
    else if (Number.isFinite(v)) out += `{"doubleValue":${v}}}`;
    // NaN and infinities have no JSON number.
    else out += `{"stringValue":"${v}"}}`;
  }
  return `${out}]`;
}

/** The same request as plain objects (the reference the hand-written encoder is tested against). */
export function otlpObject(resource: Readonly<Record<string, AttrValue>>, scope: Scope, spans: readonly SpanData[]): unknown {
  return {
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
  };
}
