// The server span of an HTTP request, named and labelled after OpenTelemetry's HTTP
// semantic conventions (`{method} {route}`, http.request.method, http.route,
// http.response.status_code, url.path, url.scheme, client.address, server.address, server.port,
// user_agent.original), plus the broker's request id
// (the `Trace-Id` header and the logs' trace_id), so a trace leads to its log lines.
import { redactPath } from '../../guard/api-key.ts';
import type { ErrorCode } from '../../errors.ts';
import { epochOf, StatusCode, type Span } from './span.ts';
import type { Tracer } from './tracer.ts';
import { parseTraceparent } from './context.ts';
import { newSpanId, newTraceId } from './ids.ts';

/**
 * Starts the request's span from its `traceparent`, or undefined when the trace is not recorded.
 * A new trace the sampler passed over still gets a context, marked not sampled, written into
 * the request's headers (what goes upstream): an upstream with a parent-based sampler then
 * records nothing either, instead of starting a trace of its own for each such request.
 */
export function startRequestSpan(tracer: Tracer, headers: Record<string, string>, method: string, requestId: string, remoteAddress: string, startedAt: number): Span | undefined {
  // Attributes only once the request is sampled: at a low ratio most are not.
  const span = tracer.startServer(method, headers['traceparent'], headers['tracestate'], epochOf(startedAt));
  if (span === undefined) {
    if (tracer.enabled && parseTraceparent(headers['traceparent']) === undefined) {
      headers['traceparent'] = `00-${newTraceId()}-${newSpanId()}-00`;
      // A tracestate without a valid traceparent is dropped (W3C Trace Context §3.3).
      if (headers['tracestate'] !== undefined) delete headers['tracestate'];
    }
    return undefined;
  }
  span.set('http.request.method', method).set('url.scheme', 'http').set('client.address', remoteAddress).set('broker.request_id', requestId);
  const agent = headers['user-agent'];
  if (agent !== undefined) span.set('user_agent.original', agent.slice(0, 256));
  const host = hostOf(headers['host']);
  if (host !== undefined) {
    span.set('server.address', host.address);
    if (host.port !== undefined) span.set('server.port', host.port);
  }
  return span;
}

/** The Host header's name and port (the conventions' server.address and server.port), IPv6 in brackets. */
export function hostOf(header: string | undefined): { address: string; port?: number } | undefined {
  if (header === undefined || header === '') return undefined;
  const m = /^(\[[^\]]*\]|[^:]*)(?::(\d{1,5}))?$/.exec(header.slice(0, 256));
  if (m === null || m[1] === '') return undefined;
  const address = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!;
  return m[2] === undefined ? { address } : { address, port: Number(m[2]) };
}

/**
 * Ends it with what the reply was. 5xx is an error, and so is a 200 whose stream then failed
 * (its error event: the conventions' "another error" after the status line); 4xx (and 499,
 * the client left) is the client's: status unset, as the conventions say. A path no route
 * matched has no http.route, and the span is named by its method alone.
 */
export function endRequestSpan(span: Span, path: string, route: string, status: number, errorCode: ErrorCode | undefined, aborted: boolean): void {
  const method = span.attributes['http.request.method'];
  span.name = route === 'unmatched' ? String(method) : `${method} ${route}`;
  if (route !== 'unmatched') span.set('http.route', route);
  span.set('url.path', redactPath(path)).set('http.response.status_code', status);
  if (errorCode !== undefined) span.set('error.type', errorCode);
  if (aborted) span.set('broker.aborted', true);
  if (status >= 500 || (status < 400 && errorCode !== undefined && !aborted)) {
    span.status = StatusCode.ERROR;
    span.statusMessage = errorCode;
  }
  span.end();
}
