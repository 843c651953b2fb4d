// W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` header,
// parsed and formatted by hand (a regex per request costs more than these checks).
//
//   traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>
//
// Version 00 is parsed strictly. A higher version is read by its first four fields, as the
// spec asks (a future version may append fields after a dash); version ff is invalid. An
// all-zero trace id or parent id is invalid. Upper-case hex is invalid.

/** Where a span sits: its trace and its own id (the parent of the next span). */
export interface TraceContext {
  readonly traceId: string;
  readonly spanId: string;
}

/** An incoming `traceparent`, valid. */
export interface RemoteParent extends TraceContext {
  /** The sampled flag (bit 0 of trace-flags). */
  readonly sampled: boolean;
}

const ZERO_TRACE = '00000000000000000000000000000000';
const ZERO_SPAN = '0000000000000000';

function isLowerHex(s: string, from: number, to: number): boolean {
  for (let i = from; i < to; i++) {
    const c = s.charCodeAt(i);
    // 0-9, a-f
    if (!((c >= 48 && c <= 57) || (c >= 97 && c <= 102))) return false;
  }
  return true;
}

/** What every hop must keep of a tracestate (W3C Trace Context §3.3.1.5); what the broker passes on at most. */
const TRACESTATE_MAX = 512;

/**
 * An incoming `tracestate` as it may go on to an upstream, or undefined. W3C Trace Context
 * §3.3 allows printable ASCII (tabs as whitespace around the commas): anything else (a DEL, a
 * byte above 0x7e) drops it, since undici refuses the header (UND_ERR_INVALID_ARG) and a
 * request could not leave. Past 512 characters it is truncated as the spec says, members of
 * more than 128 characters first, then from the end (a 60 KB list made the upstream answer 431).
 */
export function validTracestate(header: string | undefined): string | undefined {
  if (header === undefined || !/^[\t\x20-\x7e]*$/.test(header)) return undefined;
  if (header.length <= TRACESTATE_MAX) return header;
  const members = header.split(',').map((m) => m.trim()).filter((m) => m !== '' && m.length <= 128);
  let out = '';
  for (const m of members) {
    if (out.length + (out === '' ? 0 : 1) + m.length > TRACESTATE_MAX) break;
    out = out === '' ? m : `${out},${m}`;
  }
  return out === '' ? undefined : out;
}

/** The parent a `traceparent` header names, or undefined when it is absent or invalid (then a new trace starts). */
export function parseTraceparent(header: string | undefined): RemoteParent | undefined {
  if (header === undefined) return undefined;
  const h = header.trim();
  // 2 + 1 + 32 + 1 + 16 + 1 + 2
  if (h.length < 55) return undefined;
  if (h.charCodeAt(2) !== 45 || h.charCodeAt(35) !== 45 || h.charCodeAt(52) !== 45) return undefined;
  if (!isLowerHex(h, 0, 2) || !isLowerHex(h, 3, 35) || !isLowerHex(h, 36, 52) || !isLowerHex(h, 53, 55)) return undefined;
  const version = h.slice(0, 2);
  if (version === 'ff') return undefined;
  if (version === '00' ? h.length !== 55 : h.length > 55 && h.charCodeAt(55) !== 45) return undefined;
  const traceId = h.slice(3, 35);
  const spanId = h.slice(36, 52);
  if (traceId === ZERO_TRACE || spanId === ZERO_SPAN) return undefined;
  const flags = parseInt(h.slice(53, 55), 16);
  return { traceId, spanId, sampled: (flags & 1) === 1 };
}

/** The `traceparent` that names `ctx` as the parent of the next hop, sampled. */
export function formatTraceparent(ctx: TraceContext): string {
  return `00-${ctx.traceId}-${ctx.spanId}-01`;
}
