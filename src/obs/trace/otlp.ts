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
 * OTLP JSON written by hand, a span at a time as it ends: 1.1-1.2 µs per span, where
 * building the objects (attributes as {key, value: {…}} lists) and JSON.stringify took
 * 6.0-6.8 µs (`npm run bench:otel -- --micro`, best of 15 trials on the shared 2-core box;
 * the `micro` figures in bench/results/otel.json). Ids are hex the broker made or validated
 * (context.ts), times digits, attribute keys cached: only names and string values need a
 * look, and most need no escaping (jsonString). encodeTraces(…) equals JSON.stringify(otlpObject(…)) byte
 * for byte (test/obs/trace.test.ts).
 */
export function encodeSpan(s: SpanData): string {
  const parent = s.parentSpanId !== undefined ? `,"parentSpanId":"${s.parentSpanId}"` : '';
  const status = s.statusMessage !== undefined ? `{"code":${s.status},"message":${JSON.stringify(s.statusMessage)}}` : `{"code":${s.status}}`;
  return `{"traceId":"${s.traceId}","spanId":"${s.spanId}"${parent},"name":${jsonString(s.name)},"kind":${s.kind},"startTimeUnixNano":"${unixNanos(s.startMs)}","endTimeUnixNano":"${unixNanos(s.endMs)}","attributes":${encodeAttributes(s.attributes)},"status":${status}}`;
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

/**
 * A string as JSON. Most of ours (ids, routes, deployment names, addresses) need no
 * escaping: one scan says so and they are quoted as they are, which is what JSON.stringify
 * would write, at a fraction of its cost on short strings.
 */
export function jsonString(s: string): string {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    // Control characters, '"', '\\', and anything past ASCII (lone surrogates are escaped by JSON.stringify).
    if (c < 0x20 || c === 0x22 || c === 0x5c || c > 0x7e) return JSON.stringify(s);
  }
  return `"${s}"`;
}

/** `{"key":"<key>","value":` per attribute key: the keys are a few dozen constants. */
const keyPrefixes = new Map<string, string>();
function keyPrefix(key: string): string {
  let p = keyPrefixes.get(key);
  if (p === undefined) {
    p = `{"key":${JSON.stringify(key)},"value":`;
    if (keyPrefixes.size < 1024) keyPrefixes.set(key, p);
  }
  return p;
}

function encodeAttributes(a: Readonly<Record<string, AttrValue>>): string {
  let out = '[';
  for (const key in a) {
    const v = a[key]!;
    if (out.length > 1) out += ',';
    out += keyPrefix(key);
    if (typeof v === 'string') out += `{"stringValue":${jsonString(v)}}}`;
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
