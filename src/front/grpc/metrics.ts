// gRPC server metrics with go-grpc-prometheus's names and labels (declared in
// src/obs/metrics.ts with the others), so that dashboards and alerts written for Go
// gRPC servers work unchanged:
//   grpc_server_started_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
//   grpc_server_msg_received_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_msg_sent_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method} (histogram)
// grpc_code is Go's code name (OK, Canceled, ResourceExhausted, ...). Counted by a
// server interceptor, so every service on the server is: ours, health, reflection,
// and any added later.
import { constants, type ServerHttp2Stream } from 'node:http2';
import type { Counter, Histogram } from 'prom-client';
import { ServerInterceptingCall, status as Status, type ServerInterceptor } from '@grpc/grpc-js';
import type { Metrics } from '../../obs/metrics.ts';
import type { Logger } from '../../obs/logger.ts';
import { requestIdFrom } from '../../obs/request-id.ts';
import { BrokerError } from '../../errors.ts';
import { codeLabel, grpcStatusOf } from './status.ts';

const DEADLINE_SLACK_MS = 20;

/**
 * Whether a cancelled call ended by its deadline rather than by its client. grpc-js ends a call
 * past its deadline itself, without a status through the interceptor; and the client's own
 * deadline timer may cancel first. Either way, a cancel within a few ms of the deadline is the
 * deadline (timers fire up to a ms early). The metrics, the access log and tracking all ask here.
 */
export function pastDeadline(deadline: Date | number): boolean {
  const at = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(at) && at <= Date.now() + DEADLINE_SLACK_MS;
}

interface MethodMetrics {
  readonly started: Counter.Internal;
  readonly received: Counter.Internal;
  readonly sent: Counter.Internal;
  readonly seconds: Histogram.Internal<string>;
  readonly handled: Map<number, Counter.Internal>;
  readonly labels: readonly [string, string, string];
}

/**
 * The code a call is counted under. A unary or server-streaming call whose client
 * cancelled before its request message had arrived: grpc-js sees the stream end without
 * one and answers UNIMPLEMENTED ("Received no request message …") itself, before any
 * cancel reaches onCancel. Dashboards should see the cancel.
 */
function codeOf(status: { code: number; details?: string }): number {
  return status.code === Status.UNIMPLEMENTED && status.details?.startsWith('Received no request message') === true ? Status.CANCELLED : status.code;
}

/** The services whose handlers write their own access line (ours); health and reflection do not. */
const logsItself = (path: string): boolean => !path.startsWith('/grpc.');

/**
 * The interceptor that counts every call of the server. With `accessLog`, a unary or
 * server-streaming call that grpc-js ended before its handler had its request (a message that
 * does not decode or is over the size limit, a second message, a deadline already past, no
 * message at all) gets the access-log line its handler would have written: malformed traffic
 * shows in the logs too; so does every call of the health and reflection services.
 *
 * Such a call whose request has not arrived whole (its message and its end) within
 * `requestTimeoutMs` ends DEADLINE_EXCEEDED `request_timeout`, as an HTTP body that stops
 * arriving does: grpc-js runs no handler before that, and would hold the call open for good
 * (a client that answers keepalive pings never lets it go).
 */
export function metricsInterceptor(metrics: Metrics, accessLog?: Logger, requestTimeoutMs = 30_000): ServerInterceptor {
  const { grpcStarted: started, grpcHandled: handled, grpcReceived: received, grpcSent: sent, grpcHandling: seconds } = metrics;
  // Label children bound once per method: a call costs no label lookups.
  const byPath = new Map<string, MethodMetrics>();
  const forMethod = (path: string, requestStream: boolean, responseStream: boolean): MethodMetrics => {
    let m = byPath.get(path);
    if (m === undefined) {
      const slash = path.lastIndexOf('/');
      const type = requestStream ? (responseStream ? 'bidi_stream' : 'client_stream') : responseStream ? 'server_stream' : 'unary';
      const labels = [type, path.slice(1, slash), path.slice(slash + 1)] as const;
      m = { started: started.labels(...labels), received: received.labels(...labels), sent: sent.labels(...labels), seconds: seconds.labels(...labels), handled: new Map(), labels };
      byPath.set(path, m);
    }
    return m;
  };
  const countHandled = (m: MethodMetrics, code: number): void => {
    let c = m.handled.get(code);
    if (c === undefined) {
      c = handled.labels(...m.labels, codeLabel(code));
      m.handled.set(code, c);
    }
    c.inc();
  };

  const interceptor: ServerInterceptor = (method, call) => {
    const m = forMethod(method.path, method.requestStream, method.responseStream);
    m.started.inc();
    const t0 = performance.now();
    let done = false;
    // The handler of a unary or server-streaming call runs once its one message and the end
    // of the client's stream have arrived; a streaming request's at once.
    const own = logsItself(method.path);
    let handled = own && method.requestStream;
    let messages = 0;
    let clientId: string | undefined;
    let waiting: NodeJS.Timeout | undefined;
    if (!method.requestStream) {
      waiting = setTimeout(() => {
        const err = new BrokerError('request_timeout', `the request message did not arrive whole within ${requestTimeoutMs} ms (GRPC_REQUEST_TIMEOUT_MS)`);
        const st = grpcStatusOf(err, requestIdFrom(clientId));
        finish(st.code!, err.code);
        sendStatus({ code: st.code!, details: st.details!, metadata: st.metadata! });
        // The status ends the server's side only: the stream (and its place among the
        // connection's concurrent streams) stays until the client ends its own, which this one
        // does not. RST_STREAM(NO_ERROR) asks it to stop sending (RFC 9113 §8.1), after the status.
        const stream = (call as { stream?: ServerHttp2Stream }).stream;
        if (stream !== undefined) setImmediate(() => stream.destroyed || stream.close(constants.NGHTTP2_NO_ERROR));
      }, requestTimeoutMs);
      waiting.unref();
    }
    // A call that ends before its handler ran (grpc-js ends it: a request that does not decode,
    // a message over the size limit, the deadline, a cancel before the message) has no access
    // line of its own: written here, once, with its count.
    const finish = (code: number, error?: string, aborted = false): void => {
      if (done) return;
      done = true;
      clearTimeout(waiting);
      countHandled(m, code);
      m.seconds.observe((performance.now() - t0) / 1000);
      if (handled || accessLog === undefined) return;
      accessLog.info(
        { trace_id: requestIdFrom(clientId), method: 'gRPC', route: method.path, status: codeLabel(code), duration_ms: Math.round((performance.now() - t0) * 1e3) / 1e3, error: error?.slice(0, 200), ...(aborted ? { aborted: true } : {}) },
        'request',
      );
    };
    // grpc-js ends some calls itself, on the call under this interceptor: count those by
    // their code, not as the cancel that follows them.
    const sendStatus = call.sendStatus.bind(call);
    call.sendStatus = (status) => {
      finish(codeOf(status), status.details);
      sendStatus(status);
    };
    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMetadata(metadata, nextMetadata) {
            const id = metadata.get('x-request-id')[0];
            if (typeof id === 'string') clientId = id;
            nextMetadata(metadata);
          },
          onReceiveMessage(message, nextMessage) {
            m.received.inc();
            messages++;
            nextMessage(message);
          },
          onReceiveHalfClose(next) {
            clearTimeout(waiting);
            // One message, then the end: grpc-js runs the handler, which logs the call itself.
            if (own && messages === 1) handled = true;
            next();
          },
          onCancel() {
            const late = pastDeadline(call.getDeadline());
            finish(late ? Status.DEADLINE_EXCEEDED : Status.CANCELLED, undefined, !late);
          },
        });
      },
      sendMessage(message, next) {
        m.sent.inc();
        next(message);
      },
      sendStatus(status, next) {
        finish(codeOf(status), status.details);
        next(status);
      },
    });
  };
  return interceptor;
}
