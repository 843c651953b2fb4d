// The control plane's side of a forwarded request: a data-plane thread read it (and
// its body) and the control plane serves it with its own routes (admin, metrics,
// readiness), through the same dispatch as the HTTP front. The reply is buffered
// whole: none of these routes streams.
import type { AbortLike } from '../abort.ts';
import { BrokerError, type ErrorCode } from '../errors.ts';
import { errorReply, unmatchedErrorShape } from '../front/error-body.ts';
import type { BrokerRequest } from '../front/reply.ts';
import type { Logger } from '../obs/logger.ts';
import { dispatch, type FrontSink, type Guards } from '../front/http/dispatch.ts';
import type { ErrorShape, Router } from '../front/http/router.ts';
import type { ForwardedReply } from '../front/http/server.ts';
import type { Recorder } from '../track/recorder.ts';
import type { WireError } from './protocol.ts';

export interface ControlFront extends Guards {
  readonly router: Router;
  readonly logger: Logger;
  /** Request tracking: facts for a tracked route served here, handed back with the reply. */
  readonly recorder?: Recorder | undefined;
}

/** `signal`: the client went away (the thread says so); the route sees it as its sink's abort. */
export function serveForwarded(f: ControlFront, req: BrokerRequest, body: Uint8Array | undefined, signal?: AbortLike): Promise<ForwardedReply> {
  const match = f.router.match(req.method, req.path);
  const route = match.kind === 'found' ? match.route : undefined;
  // A 405 is counted and shaped as its path's route, as on the thread (server.ts).
  const named = route ?? (match.kind === 'method_not_allowed' ? match.route : undefined);
  const sink = new BufferSink(req.id, named?.name ?? named?.path ?? 'unmatched', named?.errorShape ?? unmatchedErrorShape(req.path, req.headers), f.logger);
  signal?.addEventListener('abort', () => sink.abort());
  const bytes = body === undefined ? Buffer.alloc(0) : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const facts = route?.track === undefined ? undefined : f.recorder?.start(route.track, req.headers);
  dispatch(f, match, facts === undefined ? req : { ...req, facts }, (_limit, done) => done(undefined, bytes), sink);
  return facts === undefined ? sink.reply : sink.reply.then((r) => ({ ...r, facts }));
}

class BufferSink implements FrontSink {
  aborted = false;
  started = false;
  finished = false;
  extraHeaders: Record<string, string> | undefined;
  readonly reply: Promise<ForwardedReply>;
  private resolve!: (r: ForwardedReply) => void;
  private status = 0;
  private headers: Record<string, string> = {};
  private readonly chunks: (string | Uint8Array)[] = [];
  private errorCode: ErrorCode | undefined;
  private abortCbs: (() => void)[] | undefined;

  constructor(
    private readonly requestId: string,
    private readonly route: string,
    private readonly errorShape: ErrorShape,
    private readonly logger: Logger,
  ) {
    this.reply = new Promise((r) => (this.resolve = r));
  }

  onAbort(cb: () => void): void {
    if (this.aborted) return cb();
    (this.abortCbs ??= []).push(cb);
  }

  /** The client went away: the route's abort callbacks run (the reply still resolves, for the thread's record). */
  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    const cbs = this.abortCbs;
    this.abortCbs = undefined;
    if (cbs !== undefined) for (const cb of cbs) cb();
    // Answered now, whatever the route still does: the thread records the request when this
    // comes, and a route that stops at the abort (dispatch does, mid-credential) never would.
    if (this.finished) return;
    this.started = this.finished = true;
    this.resolve({ status: 499, headers: {}, body: '', route: this.route, errorCode: 'client_closed' });
  }

  onWritable(cb: () => void): void {
    cb();
  }

  start(status: number, headers: Readonly<Record<string, string>>): void {
    if (this.started) return;
    this.started = true;
    this.status = status;
    this.headers = { ...headers };
  }

  write(chunk: string | Uint8Array): boolean {
    if (!this.finished) this.chunks.push(chunk);
    return true;
  }

  end(chunk?: string | Uint8Array): void {
    if (this.finished) return;
    if (chunk !== undefined) this.chunks.push(chunk);
    this.finished = true;
    const body = this.chunks.every((c) => typeof c === 'string') ? this.chunks.join('') : Buffer.concat(this.chunks.map((c) => (typeof c === 'string' ? Buffer.from(c) : c)));
    this.resolve({ status: this.status, headers: this.headers, body, route: this.route, ...(this.errorCode !== undefined ? { errorCode: this.errorCode } : {}) });
  }

  send(status: number, headers: Readonly<Record<string, string>>, body: string | Uint8Array): void {
    if (this.started) return;
    this.start(status, headers);
    this.end(body);
  }

  fail(err: BrokerError): void {
    if (err.code === 'internal') this.logger.error({ trace_id: this.requestId, err: err.cause ?? err }, 'internal error');
    this.errorCode = err.code;
    if (this.started) return this.end();
    const r = errorReply(err, this.requestId, this.errorShape, this.extraHeaders);
    this.send(r.status, r.headers, r.body);
  }
}

/** A BrokerError from the other side of a port. */
export function fromWire(e: WireError): BrokerError {
  // The field at fault crosses too: the reply's `param` names it.
  return new BrokerError(e.code, e.message, { ...(e.retryAfter === undefined ? {} : { retryAfter: e.retryAfter }), ...(e.field === undefined ? {} : { details: { field: e.field } }) });
}
