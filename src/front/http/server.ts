// The HTTP front on uWebSockets.js. It turns a uWS request into a BrokerRequest and
// a ReplySink, runs the cheap guards (route, method, admin credential, rate limit,
// body limit, JSON), then hands over to the route. It is the only module that
// knows about uWS.
//
// uWS rules followed here: headers are read before the first await (the request
// object is stack-allocated); onAborted is registered before anything async;
// every write after an await happens inside cork; write() returning false means
// backpressure, and onWritable resumes.
import uWS from 'uWebSockets.js';
import { performance } from 'node:perf_hooks';
import { BrokerError, toBrokerError, type ErrorCode } from '../../errors.ts';
import type { Logger } from '../../obs/logger.ts';
import type { Metrics } from '../../obs/metrics.ts';
import { requestIdFrom } from '../../obs/request-id.ts';
import type { RateLimiter } from '../../guard/rate-limit.ts';
import { clientKeyOf } from '../../guard/rate-limit.ts';
import type { AdminCheck } from '../../guard/admin-auth.ts';
import type { BrokerRequest, ReplySink } from '../reply.ts';
import type { ErrorShape, Route, Router } from './router.ts';
import { readBody } from './body.ts';
import { statusLine } from './status.ts';

export interface HttpFrontOptions {
  readonly host: string;
  readonly port: number;
  readonly maxBodyBytes: number;
  readonly router: Router;
  readonly rateLimiter: RateLimiter;
  readonly adminCheck: AdminCheck;
  readonly metrics: Metrics;
  readonly logger: Logger;
}

export interface HttpFront {
  readonly port: number;
  /** Stop accepting connections; in-flight requests go on. */
  stopListening(): void;
  /** Requests that have not finished yet. */
  readonly inFlight: number;
}

export const defaultErrorShape: ErrorShape = (code, message, requestId) => ({
  // `type` and `param` make this the OpenAI error object too; `code` is ours.
  error: { code, message, type: code, param: null, request_id: requestId },
});

const JSON_TYPE = 'application/json';

export function startHttpFront(opts: HttpFrontOptions): Promise<HttpFront> {
  const { router, metrics, logger, rateLimiter, adminCheck, maxBodyBytes } = opts;
  const app = uWS.App();
  let inFlight = 0;

  app.any('/*', (res, ureq) => {
    const startedAt = performance.now();
    const headers: Record<string, string> = {};
    ureq.forEach((k, v) => {
      headers[k] = v;
    });
    const method = ureq.getCaseSensitiveMethod().toUpperCase();
    const path = ureq.getUrl();
    const req: BrokerRequest = {
      id: requestIdFrom(headers['x-request-id']),
      method,
      path,
      query: ureq.getQuery() ?? '',
      headers,
      remoteAddress: Buffer.from(res.getRemoteAddressAsText()).toString(),
      startedAt,
    };
    inFlight++;
    metrics.httpActive.inc();
    const match = router.match(method, path);
    const route = match.kind === 'found' ? match.route : undefined;
    const sink = new UwsSink(res, req, route?.name ?? route?.path ?? 'unmatched', route?.errorShape ?? defaultErrorShape, () => {
      inFlight--;
    }, metrics, logger);

    try {
      if (match.kind === 'not_found') throw new BrokerError('not_found', `no route for ${path}`);
      if (match.kind === 'method_not_allowed') {
        sink.extraHeaders = { allow: match.allowed.join(', ') };
        throw new BrokerError('method_not_allowed', `${method} is not allowed on ${path}; allowed: ${match.allowed.join(', ')}`);
      }
      const r = match.route;
      if (r.admin) adminCheck(headers['authorization']);
      if (r.rateLimited) {
        try {
          rateLimiter.check(clientKeyOf(headers, req.remoteAddress));
        } catch (err) {
          metrics.rateLimited.inc();
          throw err;
        }
      }
      if (r.body === 'json' || r.body === 'raw') {
        const declared = headers['content-length'];
        if (declared !== undefined && Number(declared) > maxBodyBytes) throw tooLarge(maxBodyBytes);
        readBody(res, maxBodyBytes, declared === undefined ? undefined : Number(declared), (err, bytes) => {
          if (sink.aborted) return;
          if (err !== undefined) return sink.fail(err);
          let body: unknown = bytes;
          if (r.body === 'json') {
            try {
              body = JSON.parse(bytes!.toString('utf8'));
            } catch {
              return sink.fail(new BrokerError('invalid_json', 'request body is not valid JSON'));
            }
            if (body === null || typeof body !== 'object' || Array.isArray(body)) {
              return sink.fail(new BrokerError('invalid_json', 'request body must be a JSON object'));
            }
          }
          run(r, match.params, body, req, sink);
        });
        return;
      }
      run(r, match.params, undefined, req, sink);
    } catch (err) {
      sink.fail(toBrokerError(err));
    }
  });

  return new Promise((resolve, reject) => {
    app.listen(opts.host, opts.port, (listenSocket) => {
      if (!listenSocket) return reject(new Error(`cannot listen on ${opts.host}:${opts.port}`));
      let socket: uWS.us_listen_socket | null = listenSocket;
      resolve({
        port: uWS.us_socket_local_port(listenSocket as unknown as uWS.us_socket),
        stopListening() {
          if (socket) uWS.us_listen_socket_close(socket);
          socket = null;
        },
        get inFlight() {
          return inFlight;
        },
      });
    });
  });
}

function tooLarge(max: number): BrokerError {
  return new BrokerError('payload_too_large', `request body is larger than MAX_BODY_BYTES (${max} bytes)`);
}

function run(route: Route, params: Record<string, string>, body: unknown, req: BrokerRequest, sink: UwsSink): void {
  let result: void | Promise<void>;
  try {
    result = route.handle({ req, params, body, sink });
  } catch (err) {
    sink.fail(toBrokerError(err));
    return;
  }
  if (result !== undefined) {
    result.then(
      () => {
        // A handler that returns without replying is a bug; never leave the client hanging.
        if (!sink.finished && !sink.started) sink.fail(new BrokerError('internal', 'handler sent no reply'));
      },
      (err: unknown) => sink.fail(toBrokerError(err)),
    );
  }
}

/** ReplySink over a uWS response. Records exactly one outcome per request: log line and metrics. */
class UwsSink implements ReplySink {
  aborted = false;
  started = false;
  finished = false;
  extraHeaders: Record<string, string> | undefined;
  private status = 0;
  private errorCode: ErrorCode | undefined;
  private abortCbs: (() => void)[] | undefined;
  private writableCb: (() => void) | undefined;

  constructor(
    private readonly res: uWS.HttpResponse,
    private readonly req: BrokerRequest,
    private readonly routeName: string,
    private readonly errorShape: ErrorShape,
    private readonly onDone: () => void,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
  ) {
    res.onAborted(() => {
      this.aborted = true;
      const cbs = this.abortCbs;
      this.abortCbs = undefined;
      if (cbs) for (const cb of cbs) cb();
      // 499 as nginx: the client closed the request before the reply ended.
      this.record(this.status || 499, true);
    });
  }

  onAbort(cb: () => void): void {
    if (this.aborted) return cb();
    (this.abortCbs ??= []).push(cb);
  }

  start(status: number, headers: Readonly<Record<string, string>>): void {
    if (this.aborted || this.started) return;
    this.started = true;
    this.status = status;
    this.res.cork(() => {
      this.writeHead(status, headers);
    });
  }

  write(chunk: string | Uint8Array): boolean {
    if (this.aborted || this.finished) return true;
    let ok = true;
    this.res.cork(() => {
      ok = this.res.write(chunk);
    });
    return ok;
  }

  onWritable(cb: () => void): void {
    if (this.aborted) return;
    if (this.writableCb === undefined) {
      this.res.onWritable(() => {
        const f = this.writableCb;
        this.writableCb = undefined;
        f?.();
        return true;
      });
    }
    this.writableCb = cb;
  }

  end(chunk?: string | Uint8Array): void {
    if (this.aborted || this.finished) return;
    this.res.cork(() => {
      this.res.end(chunk);
    });
    this.record(this.status, false);
  }

  send(status: number, headers: Readonly<Record<string, string>>, body: string | Uint8Array, closeConnection = false): void {
    if (this.aborted || this.finished || this.started) return;
    this.started = true;
    this.status = status;
    this.res.cork(() => {
      this.writeHead(status, headers);
      this.res.end(body, closeConnection);
    });
    this.record(status, false);
  }

  /** Reply with the error, or for a stream already started, end it (the route owns in-stream error events). */
  fail(err: BrokerError): void {
    if (err.code === 'internal') this.logger.error({ trace_id: this.req.id, err: err.cause ?? err }, 'internal error');
    this.errorCode = err.code;
    if (this.started) return this.end();
    const headers: Record<string, string> = { 'content-type': JSON_TYPE, ...this.extraHeaders };
    if (err.retryAfter !== undefined) headers['retry-after'] = String(err.retryAfter);
    // A body we refused to read is still on the wire: close the connection instead of draining it.
    const close = err.code === 'payload_too_large';
    this.send(err.status, headers, JSON.stringify(this.errorShape(err.code, err.message, this.req.id, err.status)), close);
  }

  private writeHead(status: number, headers: Readonly<Record<string, string>>): void {
    this.res.writeStatus(statusLine(status));
    this.res.writeHeader('trace-id', this.req.id);
    for (const k in headers) this.res.writeHeader(k, headers[k]!);
  }

  private record(status: number, aborted: boolean): void {
    if (this.finished) return;
    this.finished = true;
    this.onDone();
    const seconds = (performance.now() - this.req.startedAt) / 1000;
    const m = this.metrics;
    m.httpActive.dec();
    m.httpDuration.labels(this.routeName, this.req.method, String(status)).observe(seconds);
    if (status >= 400) m.httpErrors.labels(this.routeName, String(status), this.errorCode ?? (aborted ? 'client_closed' : 'unknown')).inc();
    this.logger.info(
      {
        trace_id: this.req.id,
        method: this.req.method,
        route: this.routeName,
        path: this.req.path,
        status,
        duration_ms: Math.round(seconds * 1e6) / 1e3,
        ...(this.errorCode !== undefined ? { error: this.errorCode } : {}),
        ...(aborted ? { aborted: true } : {}),
      },
      'request',
    );
  }
}
