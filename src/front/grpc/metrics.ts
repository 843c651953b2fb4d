// gRPC server metrics with go-grpc-prometheus's names and labels, so that dashboards
// and alerts written for Go gRPC servers work unchanged:
//   grpc_server_started_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}
//   grpc_server_msg_received_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_msg_sent_total{grpc_type,grpc_service,grpc_method}
//   grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method} (histogram)
// grpc_code is Go's code name (OK, Canceled, ResourceExhausted, ...). Measured by a
// server interceptor, so every service on the server is counted: ours, health,
// reflection, and any added later. On the main registry (the process's /metrics).
import { Counter, Histogram, type Registry } from 'prom-client';
import { ServerInterceptingCall, status as Status, type ServerInterceptor } from '@grpc/grpc-js';
import { codeLabel } from './status.ts';

// Prometheus' DefBuckets, which go-grpc-prometheus uses when histograms are turned on.
const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

const DEADLINE_SLACK_MS = 20;

export interface GrpcMetrics {
  readonly interceptor: ServerInterceptor;
}

interface MethodMetrics {
  readonly started: Counter.Internal;
  readonly received: Counter.Internal;
  readonly sent: Counter.Internal;
  readonly seconds: Histogram.Internal<string>;
  readonly handled: Map<number, Counter.Internal>;
  readonly labels: readonly [string, string, string];
}

export function grpcMetrics(registry: Registry): GrpcMetrics {
  const labelNames = ['grpc_type', 'grpc_service', 'grpc_method'] as const;
  const registers = [registry];
  const started = new Counter({ name: 'grpc_server_started_total', help: 'Total number of RPCs started on the server.', labelNames, registers });
  const handled = new Counter({ name: 'grpc_server_handled_total', help: 'Total number of RPCs completed on the server, regardless of success or failure.', labelNames: [...labelNames, 'grpc_code'] as const, registers });
  const received = new Counter({ name: 'grpc_server_msg_received_total', help: 'Total number of RPC stream messages received on the server.', labelNames, registers });
  const sent = new Counter({ name: 'grpc_server_msg_sent_total', help: 'Total number of gRPC stream messages sent by the server.', labelNames, registers });
  const seconds = new Histogram({ name: 'grpc_server_handling_seconds', help: 'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.', labelNames, buckets: BUCKETS, registers });

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
    const finish = (code: number): void => {
      if (done) return;
      done = true;
      countHandled(m, code);
      m.seconds.observe((performance.now() - t0) / 1000);
    };
    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onReceiveMessage(message, nextMessage) {
            m.received.inc();
            nextMessage(message);
          },
          onCancel() {
            // grpc-js ends a call past its deadline itself, without a status through here;
            // and the client's own deadline timer may cancel first. Either way, a cancel
            // within a few ms of the deadline is the deadline (timers fire up to a ms early).
            const deadline = call.getDeadline();
            const at = deadline instanceof Date ? deadline.getTime() : deadline;
            const late = Number.isFinite(at) && at <= Date.now() + DEADLINE_SLACK_MS;
            finish(late ? Status.DEADLINE_EXCEEDED : Status.CANCELLED);
          },
        });
      },
      sendMessage(message, next) {
        m.sent.inc();
        next(message);
      },
      sendStatus(status, next) {
        finish(status.code);
        next(status);
      },
    });
  };
  return { interceptor };
}
