// The HTTP front on uWebSockets.js. It turns a uWS request into a BrokerRequest and
// a ReplySink, then hands it to dispatch (guards, body, route) or, for a route this
// thread does not serve, forwards it to the control plane. It is the only module
// that knows about uWS.
//
// uWS rules followed here: headers are read before the first await (the request
// object is stack-allocated); onAborted is registered before anything async;
// every write after an await happens inside cork; write() returning false means
// backpressure, and onWritable resumes.
import type { HttpResponse, us_listen_socket, us_socket } from 'uWebSockets.js';
import { loadUws } from './uws.ts';
import { performance } from 'node:perf_hooks';
import { BrokerError, toBrokerError, type ErrorCode } from '../../errors.ts';
import type { Logger } from '../../obs/logger.ts';
import type { Metrics } from '../../obs/metrics.ts';
import { requestIdFrom } from '../../obs/request-id.ts';
import { anthropicErrorShape, errorReply, unmatchedErrorShape } from '../error-body.ts';
import type { BrokerRequest } from '../reply.ts';
import type { ErrorShape, Router } from './router.ts';
import { LINGER_BYTES, readBody } from './body.ts';
import { redactPath } from '../../guard/api-key.ts';
import { refusedCredential } from '../../guard/rate-limit.ts';
import { dispatch, tooLarge, type BodyReader, type FrontSink, type Guards } from './dispatch.ts';
import { statusLine } from './status.ts';
import { corsHeaders, corsOrigins, preflight } from './cors.ts';
import { clientAddress, parseTrustedProxies } from '../../guard/client-address.ts';
import { TRACING_OFF, type Tracer } from '../../obs/trace/tracer.ts';
import { endRequestSpan, startRequestSpan } from '../../obs/trace/http.ts';
import { RECORDER_OFF, type Recorder } from '../../track/recorder.ts';
import type { RequestFacts } from '../../track/facts.ts';

export interface HttpFrontOptions extends Guards {
  /** CORS_ORIGINS' entries (cors.ts); empty or absent: no CORS headers. */
  readonly cors?: readonly string[];
  /** TRUSTED_PROXIES (guard/client-address.ts): whose X-Forwarded-For names the client; absent: none. */
  readonly trustedProxies?: string;
  readonly host: string;
  readonly port: number;
  readonly router: Router;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** Where the one line per request goes (obs/logger.ts createAccessLogger); default `logger`. */
  readonly accessLog?: Logger;
  /** Requests for routes this thread does not serve go to the control plane. */
  readonly forward?: Forward;
  /** The control plane's routes, matched only to name a forwarded request this thread refuses itself (a body too large). */
  readonly forwardedRoutes?: Router;
  /** OpenTelemetry traces: the request's server span starts and ends here (default: off). */
  readonly tracer?: Tracer;
  /** Request tracking: one row per request on a tracked route (default: off). */
  readonly recorder?: Recorder;
}

/**
 * A request handed to the control plane, and its whole reply. `onAbort` registers what runs
 * when the client goes away before the reply: the other side stops what it does for it.
 */
export type Forward = (req: BrokerRequest, body: Buffer | undefined, onAbort: (cb: () => void) => void) => Promise<ForwardedReply>;

export interface ForwardedReply {
  readonly status: number;
  readonly headers: Record<string, string>;
  readonly body: Uint8Array | string;
  /** The route that served it, for this thread's metrics and log line. */
  readonly route: string;
  readonly errorCode?: ErrorCode;
  /** Request tracking's facts of a tracked route the control plane served (its /v2 inference). */
  readonly facts?: RequestFacts | undefined;
}

export interface HttpFront {
  readonly port: number;
  /** Stop accepting connections; in-flight requests go on, replies close their connection. */
  stopListening(): void;
  /** Requests that have not finished yet. */
  readonly inFlight: number;
  /**
   * Force-closes every connection and the listen socket. A worker thread must do this
   * before it ends: uWS sockets left open abort the whole process (uWS.js#324).
   */
  closeAll(): void;
}

/**
 * uWS closes a connection idle for 10 s, checked on a 4 s tick (uSockets' granularity): so
 * at 8 s at the soonest. An abort after this much silence is taken for that timeout.
 */
const IDLE_CUT_MS = 7_500;
/** `close` among a Connection header's options. */
const CLOSE_TOKEN = /(?:^|,)\s*close\s*(?:,|$)/i;
const DIGITS = /^[0-9]+$/;
/** A path is logged up to this many characters: a 70 KB URL made a 70 KB log line (PIPE_BUF is 4 KiB). */
const LOG_PATH_CHARS = 2048;

function logPath(p: string): string {
  return p.length <= LOG_PATH_CHARS ? p : `${p.slice(0, LOG_PATH_CHARS)}…(${p.length} characters)`;
}
const BODY_BYTES_PER_TIMEOUT = 16 * 1024 * 10;
const NEVER_FORCED = Object.freeze({ forced: false, closing: false });

const READINESS_PATHS = new Set(['/ready', '/api/ready', '/v2/health/ready']);
const READY_HEADERS = { 'content-type': 'application/json' };
const NOT_READY_BODY = JSON.stringify({ ready: false, shutting_down: true });

export function startHttpFront(opts: HttpFrontOptions): Promise<HttpFront> {
  const { router, metrics, logger, forward } = opts;
  const accessLog = opts.accessLog ?? logger;
  const tracer = opts.tracer ?? TRACING_OFF;
  const recorder = opts.recorder ?? RECORDER_OFF;
  const cors = corsOrigins(opts.cors ?? []);
  const trusted = parseTrustedProxies(opts.trustedProxies ?? '');
  const uWS = loadUws().uws;
  const app = uWS.App();
  let inFlight = 0;
  // Shared with every sink: a connection closed by closeAll() is the shutdown's, not its client's;
  // once the front is closing, every reply closes its connection (one in flight then too).
  const front = { forced: false, closing: false };
  const done = (): void => {
    inFlight--;
  };

  app.any('/*', (res, ureq) => {
    const startedAt = performance.now();
    const headers: Record<string, string> = {};
    // Content-Length twice: uWS frames the request by the first, a proxy in front may by the
    // last, and the difference is a request smuggled in the body (RFC 9112 §6.3: refuse, close).
    let lengths = 0;
    // A Content-Length that is not digits: uWS takes an empty one for 0 and parses the body as
    // the next request (served: a smuggled request); RFC 9112 §6.3: unrecoverable, refuse, close.
    let badLength = false;
    // A credential header twice: which one counts would differ between a proxy in front and
    // the broker (here the last won), so neither is taken. Host twice: RFC 9112 §3.2's 400.
    let twice: string | undefined;
    ureq.forEach((k, v) => {
      if (k === 'content-length') {
        lengths++;
        if (!DIGITS.test(v)) badLength = true;
      } else if ((k === 'authorization' || k === 'x-api-key' || k === 'host') && headers[k] !== undefined) twice = k;
      // Transfer codings on several lines are one list (RFC 9110 §5.3): all are checked, not the last.
      if (k === 'transfer-encoding' && headers[k] !== undefined) v = `${headers[k]}, ${v}`;
      // W3C Trace Context: tracestate on several lines is one list; traceparent twice is invalid (a new trace starts).
      else if (k === 'tracestate' && headers[k] !== undefined) v = `${headers[k]},${v}`;
      else if (k === 'traceparent' && headers[k] !== undefined) v = '';
      // X-Forwarded-For on several lines is one list, oldest hop first (HAProxy adds a line):
      // the last alone named the proxy, and every client shared its rate limit.
      else if (k === 'x-forwarded-for' && headers[k] !== undefined) v = `${headers[k]}, ${v}`;
      headers[k] = v;
    });
    const method = ureq.getCaseSensitiveMethod().toUpperCase();
    const path = ureq.getUrl();
    const id = requestIdFrom(headers['x-request-id']);
    const remoteAddress = clientAddress(Buffer.from(res.getRemoteAddressAsText()).toString(), headers['x-forwarded-for'], trusted);
    const match = router.match(method, path);
    const route = match.kind === 'found' ? match.route : undefined;
    const req: BrokerRequest = {
      id,
      method,
      path,
      query: ureq.getQuery() ?? '',
      headers,
      remoteAddress,
      startedAt,
      // Tracing off: this one check, and no span anywhere down the line.
      span: tracer.enabled ? startRequestSpan(tracer, headers, method, id, remoteAddress, startedAt) : undefined,
      // Tracking off or an untracked route: no facts, and no stage fills any in.
      facts: route?.track === undefined ? undefined : recorder.start(route.track, headers),
    };
    inFlight++;
    metrics.httpActive.inc();
    // A 405 is counted and shaped as its path's route: GET /v1/chat/completions is that route's client mistake.
    const named = route ?? (match.kind === 'method_not_allowed' ? match.route : undefined);
    const sink = new UwsSink(res, req, named?.name ?? named?.path ?? 'unmatched', named?.errorShape ?? unmatchedErrorShape(path, headers), done, metrics, logger, accessLog, recorder);
    sink.front = front;
    if (cors !== undefined) sink.cors = corsHeaders(cors, headers['origin']);
    // The client's `Connection: close` is answered with one (RFC 9112 §9.6): uWS closes after the
    // reply anyway, and a client that is not told (Node's http.Agent, Python's requests) may
    // write its next request on the closing connection, lost unanswered.
    const connection = headers['connection'];
    if (connection !== undefined && CLOSE_TOKEN.test(connection)) sink.clientClose = sink.closeConnection = true;
    if (front.closing) {
      // Shutting down is not ready, whatever the models say: the balancer must stop sending work
      // now (a probe on a kept-alive connection still reaches this thread).
      if (READINESS_PATHS.has(path) && (method === 'GET' || method === 'HEAD')) {
        sink.errorCode = 'shutting_down';
        return sink.send(503, READY_HEADERS, NOT_READY_BODY);
      }
    }
    if (lengths > 1 || badLength) {
      // Answered a turn later, not now: uWS goes on parsing the bytes after this request in the
      // same read, and a reply already sent would let it serve what they hide. With this one
      // pending, uWS closes the connection at the next request instead (no reply then).
      sink.closeConnection = true;
      const why = lengths > 1 ? 'Content-Length appears more than once' : 'Content-Length must be a number of bytes (digits only)';
      setImmediate(() => {
        if (!sink.aborted) sink.fail(new BrokerError('invalid_request', why, { details: { field: 'content-length' } }));
      });
      return;
    }
    if (twice !== undefined) return sink.fail(new BrokerError('invalid_request', `${twice} appears more than once`, { details: { field: twice } }));
    // A preflight, answered here: after the framing checks above, as any reply is. One with a
    // body (a preflight has none) closes the connection after its answer, so that no bytes
    // after it are read as another request.
    const answer = cors === undefined ? undefined : preflight(cors, method, headers);
    if (answer !== undefined) return sink.send(204, answer, '', (headers['content-length'] !== undefined && headers['content-length'] !== '0') || headers['transfer-encoding'] !== undefined);
    const declared = headers['content-length'];
    const reader: BodyReader = (limit, cb) => {
      sink.readingBody = true;
      readBody(
        res,
        limit,
        declared === undefined ? undefined : Number(declared),
        (err, body) => {
          sink.readingBody = false;
          cb(err, body);
        },
        (bytes) => sink.bodyArrived(bytes),
      );
    };
    // Paths are served by one side only: a path this thread knows with another method is a 405 here.
    if (match.kind === 'not_found' && forward !== undefined) return forwardRequest(opts, forward, req, reader, sink);
    dispatch(opts, match, req, reader, sink);
  });

  return new Promise((resolve, reject) => {
    app.listen(opts.host, opts.port, (listenSocket) => {
      if (!listenSocket) return reject(new Error(`HTTP cannot listen on ${opts.host}:${opts.port} (HOST, PORT): in use, or not an address of this machine`));
      let socket: us_listen_socket | null = listenSocket;
      resolve({
        port: uWS.us_socket_local_port(listenSocket as unknown as us_socket),
        stopListening() {
          front.closing = true;
          if (socket) uWS.us_listen_socket_close(socket);
          socket = null;
        },
        get inFlight() {
          return inFlight;
        },
        closeAll() {
          front.closing = true;
          front.forced = true;
          socket = null;
          // In this build (20.30) but not in its typings.
          (app as unknown as { close(): void }).close();
        },
      });
    });
  });
}

/** Hands a request this thread does not route to the control plane, body and all, and relays the reply. */
function forwardRequest(g: Guards & Pick<HttpFrontOptions, 'forwardedRoutes'>, forward: Forward, req: BrokerRequest, readBody: BodyReader, sink: UwsSink): void {
  const relay = (body: Buffer | undefined): void => {
    const replied = forward(req, body, (cb) => sink.onAbort(cb));
    // A client gone before the reply is recorded when the reply comes: under its route's
    // name, with the row the control plane opened (the abort stops the route's work there).
    sink.awaiting = replied;
    replied.then(
      (reply) => {
        sink.routeName = reply.route;
        sink.errorCode ??= reply.errorCode;
        // The control plane opened the facts (it knows the route); this thread records the row, as for its own routes.
        if (reply.facts !== undefined) sink.facts = reply.facts;
        sink.send(reply.status, reply.headers, reply.body);
      },
      (err: unknown) => sink.fail(toBrokerError(err)),
    );
  };
  // Refused here, before the control plane sees it: counted under the control plane's route
  // name, matched only now (the threads know those routes by name only).
  const refuse = (err: BrokerError): void => {
    const theirs = g.forwardedRoutes?.match(req.method, req.path);
    if (theirs?.kind === 'found') sink.routeName = theirs.route.name ?? theirs.route.path;
    sink.fail(err);
  };
  const declared = req.headers['content-length'];
  const hasBody = (declared !== undefined && declared !== '0') || req.headers['transfer-encoding'] !== undefined;
  if (!hasBody) return relay(undefined);
  if (declared !== undefined && Number(declared) > g.maxBodyBytes) return refuse(tooLarge(g.maxBodyBytes));
  // A caller the control plane will refuse for want of a credential is refused before its body
  // is read: 30 stalled 8 MB bodies with no credential took a broker from 144 to 373 MiB.
  const early = credentialRefused(g, req);
  if (early !== undefined) return refuse(early);
  readBody(g.maxBodyBytes, (err, bytes) => {
    if (sink.aborted) return;
    if (err !== undefined) return refuse(err);
    relay(bytes);
  });
}

/**
 * Why a forwarded request with a body is refused at once, or undefined: an admin route with no
 * Authorization, a client route whose credential the thread's own check refuses as it stands
 * (none, an unknown key; a session or JWT still to check goes on, and the control plane judges).
 */
function credentialRefused(g: Guards & Pick<HttpFrontOptions, 'forwardedRoutes'>, req: BrokerRequest): BrokerError | undefined {
  const m = g.forwardedRoutes?.match(req.method, req.path);
  if (m?.kind !== 'found') return undefined;
  const r = m.route;
  if (r.admin === true) {
    return (req.headers['authorization'] ?? '') === '' ? new BrokerError('unauthorized', 'admin routes need Authorization: Bearer <token> (ADMIN_TOKEN, a JWT, a session or an API key)') : undefined;
  }
  if (r.rateLimited !== true || g.client === undefined) return undefined;
  try {
    const who = g.client(req);
    if (who instanceof Promise) who.catch(() => undefined);
    return undefined;
  } catch (err) {
    // Charged to the address's rate limit, as the control plane would (refusedCredential throws the answer).
    try {
      refusedCredential(g, req.remoteAddress, err);
    } catch (answer) {
      return toBrokerError(answer);
    }
  }
}

function lingers(contentLength: string | undefined): boolean {
  if (contentLength === undefined || !/^\d+$/.test(contentLength)) return false;
  return Number(contentLength) <= LINGER_BYTES;
}

/** ReplySink over a uWS response. Records exactly one outcome per request: log line and metrics. */
class UwsSink implements FrontSink {
  aborted = false;
  started = false;
  finished = false;
  extraHeaders: Record<string, string> | undefined;
  /** True from the first byte of a body read until it is whole. */
  readingBody = false;
  /** The front's state: `forced` once it force-closes every connection (closeAll). */
  front: { readonly forced: boolean; readonly closing: boolean } = NEVER_FORCED;
  /** When uWS's idle timer last restarted, as far as the broker can tell: the request, 160 KiB of body, the reply starting to wait for the client to read. */
  activeAt = performance.now();
  private bodyBytesSinceActive = 0;

  /**
   * uWS restarts a request's timer not on every chunk but on each 160 KiB of body
   * (HTTP_RECEIVE_THROUGHPUT_BYTES x HTTP_IDLE_TIMEOUT_S): an upload slower than 16 KB/s is
   * cut 10 s on even while it trickles, and that cut is its request_timeout.
   */
  bodyArrived(bytes: number): void {
    this.bodyBytesSinceActive += bytes;
    if (this.bodyBytesSinceActive < BODY_BYTES_PER_TIMEOUT) return;
    this.bodyBytesSinceActive = 0;
    this.activeAt = performance.now();
  }
  /** This reply closes its connection (the client's Connection: close, a framing error). */
  closeConnection = false;
  /**
   * The client sent Connection: close. uWS then closes after the reply without saying so, so the
   * header is ours; otherwise uWS writes it itself in end(…, true), which must then not be a
   * stream's: after the headers went out, uWS writes it into the chunked body (its framing broken).
   */
  clientClose = false;
  /** CORS headers for the request's origin (cors.ts), on every reply. */
  cors: Record<string, string> | undefined;
  errorCode: ErrorCode | undefined;
  /** Request tracking's facts: the request's own, or those of a forwarded reply. */
  facts: RequestFacts | undefined;
  /** A forwarded request's reply to come: a client gone meanwhile is recorded once it is here. */
  awaiting: Promise<unknown> | undefined;
  private status = 0;
  private abortCbs: (() => void)[] | undefined;
  private writableCb: (() => void) | undefined;

  constructor(
    private readonly res: HttpResponse,
    private readonly req: BrokerRequest,
    public routeName: string,
    private readonly errorShape: ErrorShape,
    private readonly onDone: () => void,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
    private readonly accessLog: Logger,
    private readonly recorder: Recorder,
  ) {
    this.facts = req.facts;
    res.onAborted(() => {
      this.aborted = true;
      const cbs = this.abortCbs;
      this.abortCbs = undefined;
      if (cbs) for (const cb of cbs) cb();
      // uWS drops a connection idle for 10 s: a body that stopped arriving (408
      // request_timeout), or a reply the client read nothing of (client_too_slow, the
      // broker's cut, in http_streams_cut_total). An abort sooner after the last sign of
      // life is the client's own close: 499 (nginx's), client_closed.
      const idle = performance.now() - this.activeAt >= IDLE_CUT_MS;
      const bodyTimedOut = this.readingBody && idle;
      if (bodyTimedOut) this.errorCode = 'request_timeout';
      else if (this.started && this.writableCb !== undefined && idle) this.errorCode = 'client_too_slow';
      // Connections the shutdown force-closes (past its grace period) are the broker's cut.
      else this.errorCode ??= this.front.forced ? 'shutting_down' : 'client_closed';
      const status = this.status || (bodyTimedOut ? 408 : 499);
      const awaiting = this.awaiting;
      if (awaiting === undefined) return this.record(status, true);
      const late = (): void => this.record(status, true);
      void awaiting.then(late, late);
    });
  }

  cork(fn: () => void): void {
    if (this.aborted) return fn();
    this.res.cork(fn);
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
      // A stream begun while the front closes: the client is told now (its end cannot say it);
      // the connection is closed with the others once the streams are done.
      if (!this.clientClose && (this.closeConnection || this.front.closing)) this.res.writeHeader('connection', 'close');
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
      this.activeAt = performance.now();
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
      // Not a stream's own close (see clientClose): uWS closes after it when the client asked.
      this.res.end(chunk, this.started ? this.clientClose : this.closeConnection || this.front.closing);
    });
    this.record(this.status, false);
  }

  /** A started stream cut by an error: its error event is written already; recorded as cut (access log, http_streams_cut_total). */
  endWithError(err: BrokerError): void {
    if (this.aborted || this.finished) return;
    this.errorCode = err.code;
    this.end();
  }

  send(status: number, headers: Readonly<Record<string, string>>, body: string | Uint8Array, closeConnection = false): void {
    if (this.aborted || this.finished || this.started) return;
    this.started = true;
    this.status = status;
    this.res.cork(() => {
      this.writeHead(status, headers);
      // A reply sent while the front closes closes its connection, one to a request that came before
      // too: told nothing, its client wrote its next request on a connection closed under it (reset).
      const close = closeConnection || this.closeConnection || this.front.closing;
      if (this.req.method !== 'HEAD') this.res.end(body, close);
      // HEAD: the GET reply's headers and length, without its body. uWS 20.30's endWithoutBody(length)
      // leaves the reply open (the connection's next request got no answer): the length goes as
      // a header of ours and the reply ends without one; a closing reply is the last, and says it
      // itself (undici's fetch asks every HEAD with Connection: close).
      else {
        const length = typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength;
        if (close) this.res.endWithoutBody(length, true);
        else {
          this.res.writeHeader('content-length', String(length));
          this.res.endWithoutBody();
        }
      }
    });
    this.record(status, false);
  }

  /** Reply with the error, or for a stream already started, end it (the route owns in-stream error events). */
  fail(err: BrokerError): void {
    if (err.code === 'internal') this.logger.error({ trace_id: this.req.id, err: err.cause ?? err }, 'internal error');
    // Gone: the outcome is the client's (a forwarded request's is recorded after this).
    if (this.aborted) return;
    this.errorCode = err.code;
    if (this.started) return this.end();
    const r = errorReply(err, this.req.id, this.errorShape, this.extraHeaders);
    // A body we refused is still on the wire. Up to LINGER_BYTES of declared length the
    // connection stays open and uWS reads and drops the rest (nginx's lingering close), so
    // a client still writing reads the 413 instead of EPIPE; beyond that, close. A chunked
    // body was read to its end first (readBody), so closing does not cut the client off.
    this.send(r.status, r.headers, r.body, err.code === 'payload_too_large' && !lingers(this.req.headers['content-length']));
  }

  private writeHead(status: number, headers: Readonly<Record<string, string>>): void {
    this.res.writeStatus(statusLine(status));
    // The request id under the names clients read: the OpenAI SDKs' `_request_id` is
    // x-request-id, the Anthropic SDKs' `request-id`.
    this.res.writeHeader('trace-id', this.req.id);
    this.res.writeHeader('x-request-id', this.req.id);
    if (this.routeName === '/v1/messages' || this.errorShape === anthropicErrorShape || this.req.headers['anthropic-version'] !== undefined) this.res.writeHeader('request-id', this.req.id);
    if (this.clientClose) this.res.writeHeader('connection', 'close');
    if (this.cors !== undefined) for (const k in this.cors) this.res.writeHeader(k, this.cors[k]!);
    for (const k in headers) this.res.writeHeader(k, headers[k]!);
  }

  private record(status: number, aborted: boolean): void {
    if (this.finished) return;
    this.finished = true;
    this.onDone();
    // A readiness probe's 503 is an answer, not a raised error, so it has no code: it is not_ready, not 'unknown'.
    if (status === 503 && this.errorCode === undefined && !aborted && READINESS_PATHS.has(this.req.path)) this.errorCode = 'not_ready';
    const seconds = (performance.now() - this.req.startedAt) / 1000;
    const span = this.req.span;
    if (span !== undefined) endRequestSpan(span, this.req.path, this.routeName, status, this.errorCode, aborted);
    const facts = this.facts;
    if (facts !== undefined) this.recorder.end(facts, this.req.id, this.req.startedAt, 'http', this.routeName, status, this.errorCode, aborted);
    const m = this.metrics;
    m.httpActive.dec();
    m.httpDuration.labels(this.routeName, this.req.method, String(status)).observe(seconds);
    if (status >= 400) m.httpErrors.labels(this.routeName, String(status), this.errorCode ?? (aborted ? 'client_closed' : 'unknown')).inc();
    else if (this.errorCode !== undefined && (!aborted || this.errorCode === 'client_too_slow')) m.httpStreamsCut.labels(this.routeName, this.errorCode).inc();
    // Below info (LOG_LEVEL=warn) there is no access line: do not build one.
    if (!this.accessLog.isLevelEnabled('info')) return;
    const line: Record<string, unknown> = {
      trace_id: this.req.id,
      method: this.req.method,
      route: this.routeName,
      path: logPath(redactPath(this.req.path)),
      status,
      duration_ms: Math.round(seconds * 1e6) / 1e3,
      // The client as the rate limit sees it: behind TRUSTED_PROXIES, the forwarded address.
      client: this.req.remoteAddress,
      ...(this.errorCode !== undefined ? { error: this.errorCode } : {}),
      ...(aborted ? { aborted: true } : {}),
    };
    // The OpenTelemetry ids, so that a log line leads to its trace and back (trace_id stays the request id).
    if (span !== undefined) {
      line.otel_trace_id = span.traceId;
      line.otel_span_id = span.spanId;
    }
    this.accessLog.info(line, 'request');
  }
}
