// What every gRPC call shares: its metadata read into the protocol-neutral
// BrokerRequest (src/front/reply.ts), the trace-id sent as initial metadata, the
// guards HTTP runs before a handler (rate limit), a tracked unary call's one ending
// (serveUnary), and the sink a Chat/Complete stream replies through.
import type { PriorityCeiling } from '../../infer/admission.ts';
import { performance } from 'node:perf_hooks';
import { Metadata, type sendUnaryData, type ServerUnaryCall, type ServerWritableStream } from '@grpc/grpc-js';
import { BrokerError, toBrokerError } from '../../errors.ts';
import { RequestAbort, type AbortLike } from '../../abort.ts';
import { requestIdFrom } from '../../obs/request-id.ts';
import type { RateLimiter } from '../../guard/rate-limit.ts';
import { clientKeyOf, refusedCredential } from '../../guard/rate-limit.ts';
import type { Metrics } from '../../obs/metrics.ts';
import type { Logger } from '../../obs/logger.ts';
import type { BrokerRequest, ReplySink } from '../reply.ts';
import type { ActiveCalls } from './active.ts';
import { codeLabel, grpcCodeOf, grpcStatusOf } from './status.ts';
import { forEachDelimited } from './wire.ts';
import type { Recorder } from '../../track/recorder.ts';
import { pastDeadline } from './metrics.ts';

/** The request metadata the broker reads; everything else is ignored. */
// traceparent and tracestate: the gRPC front records no spans, so the caller's trace context goes upstream as it came.
const READ = ['authorization', 'x-api-key', 'x-broker-priority', 'x-broker-label', 'x-broker-qos', 'x-request-id', 'traceparent', 'tracestate'] as const;

const CREDENTIALS = ['authorization', 'x-api-key'] as const;

interface AnyCall {
  readonly metadata: Metadata;
  getPeer(): string;
  getPath(): string;
  sendMetadata(md: Metadata): void;
}

/**
 * The call as a BrokerRequest. `early`: send the trace-id (initial metadata) at once, as a
 * stream does; a unary call sends it with its reply (sendTraceId), in the same write.
 */
export function brokerRequestOf(call: AnyCall, early = true, track?: { readonly recorder?: Recorder | undefined; readonly api: string }): BrokerRequest {
  const headers: Record<string, string> = {};
  for (const k of READ) {
    const vs = call.metadata.get(k);
    // A credential sent twice is refused (checkCall): kept joined, to be seen; else the first.
    const v = vs.length > 1 && (CREDENTIALS as readonly string[]).includes(k) ? vs.join(', ') : vs[0];
    if (typeof v === 'string') headers[k] = v;
  }
  const id = requestIdFrom(headers['x-request-id']);
  if (early) sendTraceId(call, id);
  const startedAt = performance.now();
  let remote: string | undefined;
  return {
    id,
    method: 'POST',
    path: call.getPath(),
    query: '',
    headers,
    // Read only by the rate limit (an anonymous client's bucket): getPeer formats the address each call.
    get remoteAddress() {
      return (remote ??= addressOf(call.getPeer()));
    },
    startedAt,
    facts: track?.recorder?.start(track.api, headers),
  };
}

export function sendTraceId(call: Pick<AnyCall, 'sendMetadata'>, id: string): void {
  const md = new Metadata();
  md.set('trace-id', id);
  call.sendMetadata(md);
}

/** "ipv4:127.0.0.1:5000" / "127.0.0.1:5000" / "[::1]:5000" → the address. */
function addressOf(peer: string): string {
  const p = peer.replace(/^ipv[46]:/, '');
  const m = /^\[([^\]]+)\]:\d+$/.exec(p) ?? /^([^:]+):\d+$/.exec(p);
  return m?.[1] ?? p;
}

/** One access-log line per call, as the HTTP front writes per request (status: the gRPC code name). */
export function logCall(log: Logger, req: BrokerRequest, err: BrokerError | undefined, aborted = false, recorder?: Recorder, late = false): void {
  // Request tracking's row of a tracked call: status is the gRPC code (1 CANCELLED when the
  // client went away, 4 DEADLINE_EXCEEDED when its deadline ended it, as the metrics say).
  const cut = late ? 4 : 1;
  // A call its client cancelled carries the code an HTTP request the client closed does.
  const code = err?.code ?? (aborted && !late ? 'client_closed' : undefined);
  if (req.facts !== undefined) recorder?.end(req.facts, req.id, req.startedAt, 'grpc', req.path, aborted ? cut : err === undefined ? 0 : grpcCodeOf(err.code), code, aborted);
  log.info(
    {
      trace_id: req.id,
      method: 'gRPC',
      route: req.path,
      status: aborted ? codeLabel(cut) : err === undefined ? 'OK' : codeLabel(grpcCodeOf(err.code)),
      duration_ms: Math.round((performance.now() - req.startedAt) * 1e3) / 1e3,
      ...(code !== undefined ? { error: code } : {}),
      ...(aborted ? { aborted: true } : {}),
    },
    'request',
  );
}

export interface CallGuards {
  readonly rateLimiter: RateLimiter;
  readonly metrics: Metrics;
  readonly knownKey: (key: string) => boolean;
  /** AUTH_MODE, as on the HTTP client routes (metadata authorization or x-api-key); undefined when open. */
  readonly client?: (req: BrokerRequest) => void | Promise<void>;
  /** Request tracking (undefined: off). */
  readonly recorder?: Recorder | undefined;
  /** What a caller's API key allows its inference requests (x-broker-priority may only lower it). */
  readonly priorityCeiling?: PriorityCeiling | undefined;
}

/** AUTH_MODE, then the per-client rate limit, as on HTTP routes: throws unauthorized or rate_limited. */
export async function checkCall(g: CallGuards, req: BrokerRequest): Promise<void> {
  // A credential sent twice (grpc-js joins the values with ", ", which no key or token holds) is
  // the client's mistake, as on HTTP (400), not an unknown key.
  for (const k of CREDENTIALS) {
    if (req.headers[k]?.includes(', ')) throw new BrokerError('invalid_request', `${k} appears more than once`, { details: { field: k } });
  }
  if (g.client !== undefined) {
    try {
      await g.client(req);
    } catch (err) {
      // As on HTTP: a refused key spends its address's rate, so keys cannot be guessed at any speed.
      refusedCredential(g, req.remoteAddress, err);
    }
  }
  checkRate(g, req);
}

/** The per-client rate limit, as on HTTP routes (RATE_LIMIT_RPS): throws rate_limited with its retry time. */
export function checkRate(g: CallGuards, req: BrokerRequest): void {
  try {
    g.rateLimiter.check(clientKeyOf(req.headers, req.remoteAddress, g.knownKey, req.caller));
  } catch (err) {
    g.metrics.rateLimited.inc();
    throw err;
  }
}

export interface UnaryDeps {
  readonly accessLog: Logger;
  readonly calls: ActiveCalls;
  /** Request tracking (undefined: off). */
  readonly recorder?: Recorder | undefined;
}

/**
 * A unary call with one ending, whatever comes first: the reply, the error (its table
 * status, trace id in the trailers), the client gone (logged and tracked as cancelled,
 * status 1), or shutdown cutting it (UNAVAILABLE). `api` names its tracking row.
 */
export function serveUnary<Req, Res>(d: UnaryDeps, call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>, api: string, work: (req: BrokerRequest, signal: AbortLike) => Promise<Res>): void {
  const req = brokerRequestOf(call, false, { recorder: d.recorder, api });
  // The client gone (cancelled, past its deadline): the work behind the call stops (an image leaves the queue).
  const signal = new RequestAbort();
  call.on('cancelled', () => signal.abort());
  let done = false;
  const finish = (err: BrokerError | undefined, reply?: Res): void => {
    if (done) return;
    done = true;
    untrack();
    if (call.cancelled) return logCall(d.accessLog, req, undefined, true, d.recorder, pastDeadline(call.getDeadline()));
    logCall(d.accessLog, req, err, false, d.recorder);
    sendTraceId(call, req.id);
    if (err !== undefined) callback(grpcStatusOf(err, req.id));
    else callback(null, reply);
  };
  const untrack = d.calls.track(() => {
    // Answered UNAVAILABLE: the work behind it stops too (an image still queued leaves the queue).
    signal.abort();
    finish(new BrokerError('shutting_down', 'the broker shut down before the reply was ready'));
  });
  let p: Promise<Res>;
  try {
    p = work(req, signal);
  } catch (err) {
    return finish(toBrokerError(err));
  }
  p.then(
    (reply) => finish(undefined, reply),
    (err: unknown) => finish(toBrokerError(err)),
  );
}

/**
 * A server stream as a ReplySink. The compiled chain's gRPC encoder writes delimited
 * GenerateResponse messages; each goes out as one gRPC message, pre-serialized (the
 * method's serializer passes bytes through). call.write returning false (the client
 * reads slowly: HTTP/2 flow control, then grpc-js's buffer) pauses the upstream read
 * until 'drain'. Ends with status OK and the x-broker-deployment trailer, or with the
 * error's status after whatever was sent.
 */
export class GrpcStreamSink implements ReplySink {
  aborted = false;
  started = false;
  private ended = false;
  private deployment: string | undefined;
  private fallback: string | undefined;
  /** The key's quota after this call (x-ratelimit-*), sent in the trailers as HTTP sends them in headers. */
  private rateLimits: [string, string][] = [];
  /** Headers the proxy adds to the reply, an error's included (x-ratelimit-* among them). */
  extraHeaders: Record<string, string> | undefined;
  private abortCbs: ((reason?: BrokerError) => void)[] | undefined;
  private abortReason: BrokerError | undefined;

  constructor(
    private readonly call: ServerWritableStream<unknown, Uint8Array>,
    private readonly req: BrokerRequest,
    private readonly log: Logger,
    private readonly recorder?: Recorder,
  ) {
    call.on('cancelled', () => this.cancelled());
  }

  /** The client cancelled, its deadline passed, or shutdown ended the call (`reason`): stop the work behind it. */
  cancelled(reason?: BrokerError): void {
    if (this.aborted) return;
    this.aborted = true;
    this.abortReason = reason;
    if (!this.ended) logCall(this.log, this.req, undefined, true, this.recorder, pastDeadline(this.call.getDeadline()));
    const cbs = this.abortCbs;
    this.abortCbs = undefined;
    if (cbs !== undefined) for (const cb of cbs) cb(reason);
  }

  get finished(): boolean {
    return this.ended;
  }

  onAbort(cb: (reason?: BrokerError) => void): void {
    if (this.aborted) cb(this.abortReason);
    else (this.abortCbs ??= []).push(cb);
  }

  start(_status: number, headers: Readonly<Record<string, string>>): void {
    this.started = true;
    this.deployment = headers['x-broker-deployment'];
    this.fallback = headers['x-broker-fallback'];
    this.rateLimits = rateLimitsOf(headers);
  }

  write(chunk: string | Uint8Array): boolean {
    if (this.aborted || this.ended) return true;
    if (typeof chunk === 'string') throw new BrokerError('internal', 'a gRPC stream takes encoded messages, not text');
    let ok = true;
    forEachDelimited(chunk, (m) => {
      ok = this.call.write(m);
    });
    return ok;
  }

  onWritable(cb: () => void): void {
    this.call.once('drain', cb);
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    if (this.aborted) return;
    logCall(this.log, this.req, undefined, false, this.recorder);
    this.call.end(this.trailers());
  }

  endWithError(err: BrokerError): void {
    if (this.ended) return;
    this.ended = true;
    if (this.aborted) return;
    logCall(this.log, this.req, err, false, this.recorder);
    // A call that took the key's quota and then failed has its figures in the proxy's headers; a
    // refusal by the key's quota, before the proxy ran, carries them itself.
    const carried = err.details?.['replyHeaders'];
    if (typeof carried === 'object' && carried !== null) this.rateLimits = rateLimitsOf(carried as Record<string, string>);
    else if (this.extraHeaders !== undefined) this.rateLimits = rateLimitsOf(this.extraHeaders);
    this.call.emit('error', grpcStatusOf(err, this.req.id, this.trailers()));
  }

  /** Fails a call that has not replied yet (or one cut by shutdown). */
  fail(err: unknown): void {
    this.endWithError(toBrokerError(err));
  }

  send(): void {
    throw new BrokerError('internal', 'a gRPC stream replies with messages, not a whole body');
  }

  private trailers(): Metadata {
    const md = new Metadata();
    if (this.deployment !== undefined) md.set('x-broker-deployment', this.deployment);
    // The group that answered when it is not the one asked for, as HTTP's x-broker-fallback.
    if (this.fallback !== undefined) md.set('x-broker-fallback', this.fallback);
    for (const [k, v] of this.rateLimits) md.set(k, v);
    return md;
  }
}

function rateLimitsOf(headers: Readonly<Record<string, string>>): [string, string][] {
  return Object.entries(headers).filter(([k]) => k.startsWith('x-ratelimit-'));
}
