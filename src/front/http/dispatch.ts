// What happens to a request once its route is known, whatever carried it: the
// cheap guards (admin credential, rate limit, body limit), the body (JSON or raw),
// then the handler. The uWS front calls it for the routes a thread serves itself;
// the control plane calls it for the requests a data-plane thread forwards to it.
import { BrokerError, toBrokerError } from '../../errors.ts';
import { parseJsonBody } from '../json-depth.ts';
import { authorize, type Principal } from '../../guard/rbac.ts';
import type { RateLimiter } from '../../guard/rate-limit.ts';
import { clientKeyOf, refusedCredential } from '../../guard/rate-limit.ts';
import { apiKeyOf } from '../../guard/api-key.ts';
import type { Metrics } from '../../obs/metrics.ts';
import type { BrokerRequest, ReplySink } from '../reply.ts';
import type { AuditNote, Match, Route } from './router.ts';

export interface Guards {
  readonly maxBodyBytes: number;
  readonly rateLimiter: RateLimiter;
  /** Who calls an admin route (401/403 otherwise); the RBAC table is checked after it. */
  readonly admin: (req: BrokerRequest) => Principal | Promise<Principal>;
  /** AUTH_MODE on the client routes (the rate-limited ones); undefined when open. */
  readonly client?: (req: BrokerRequest) => void | Promise<void>;
  /** A change through an admin route succeeded: its audit entry. */
  readonly audit?: (change: AdminChange) => void;
  readonly metrics: Metrics;
  /** Whether an API key is one the broker knows (its own rate-limit bucket); others count by address. */
  readonly knownKey?: (key: string) => boolean;
}

export interface AdminChange {
  readonly principal: Principal;
  readonly req: BrokerRequest;
  readonly params: Readonly<Record<string, string>>;
  readonly note: AuditNote;
}

/** A sink the front can fail with a BrokerError: the error is shaped for the route's client API. */
export interface FrontSink extends ReplySink {
  readonly finished: boolean;
  extraHeaders: Record<string, string> | undefined;
  fail(err: BrokerError): void;
}

/** Reads the body up to `limit` bytes, then calls `done` once. */
export type BodyReader = (limit: number, done: (err: BrokerError | undefined, body?: Buffer) => void) => void;

export function tooLarge(max: number): BrokerError {
  return new BrokerError('payload_too_large', `request body is larger than MAX_BODY_BYTES (${max} bytes)`);
}

const readsBody = (r: Route): boolean => r.body === 'json' || r.body === 'json?' || r.body === 'raw';

function mediaType(req: BrokerRequest): string | undefined {
  const type = req.headers['content-type'];
  if (type === undefined) return undefined;
  const end = type.indexOf(';');
  return (end < 0 ? type : type.slice(0, end)).trim().toLowerCase();
}

/** The request's media type is one the route takes raw (`rawTypes`): no JSON parse. */
function sendsRaw(r: Route, req: BrokerRequest): boolean {
  const type = mediaType(req);
  return r.rawTypes !== undefined && type !== undefined && r.rawTypes.has(type);
}

/**
 * An image type a route that takes images raw does not (image/gif, say): 415 naming the
 * types it takes, rather than reading the image as JSON and calling it bad JSON.
 */
function checkImageType(r: Route, req: BrokerRequest): void {
  if (r.rawTypes === undefined) return;
  const type = mediaType(req);
  if (type === undefined || !type.startsWith('image/') || r.rawTypes.has(type)) return;
  const taken = [...r.rawTypes].filter((t) => t.startsWith('image/')).join(', ');
  throw new BrokerError('unsupported_image', `content-type ${type.slice(0, 64)} is not an image type this route takes (${taken}, application/octet-stream, or JSON with the image base64)`, { details: { field: 'content-type' } });
}

/**
 * A body in a content coding (gzip, deflate, br...) is refused before it is read: the
 * broker parses bodies as sent, and a compressed one would otherwise fail as bad JSON or a
 * bad image, which says nothing of the cause. 415 with Accept-Encoding, as RFC 9110
 * §15.5.16 asks. `identity` (no coding) is fine.
 */
function checkEncoding(req: BrokerRequest, sink: FrontSink): void {
  // A transfer coding besides chunked (gzip, chunked): the body would be read as if it had none.
  const transfer = req.headers['transfer-encoding'];
  if (transfer !== undefined && transfer.trim().toLowerCase() !== 'chunked') {
    throw new BrokerError('unsupported_encoding', `transfer-encoding "${transfer.slice(0, 64)}" is not supported: only chunked`, { details: { field: 'transfer-encoding' } });
  }
  const coding = req.headers['content-encoding'];
  if (coding === undefined) return;
  const c = coding.trim().toLowerCase();
  if (c === '' || c === 'identity') return;
  sink.extraHeaders = { ...sink.extraHeaders, 'accept-encoding': 'identity' };
  throw new BrokerError('unsupported_encoding', `content-encoding "${coding.slice(0, 64)}" is not supported: send the body uncompressed`, { details: { field: 'content-encoding' } });
}

/** A declared Content-Length past the limit is refused before a byte is read. */
function checkDeclaredLength(req: BrokerRequest, max: number): void {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > max) throw tooLarge(max);
}

/** Answers 404/405 for a miss; for a match runs the guards, reads the body and calls the route. */
export function dispatch(g: Guards, match: Match, req: BrokerRequest, readBody: BodyReader, sink: FrontSink): void {
  try {
    if (match.kind === 'not_found') throw new BrokerError('not_found', `no route for ${req.path}`);
    if (match.kind === 'method_not_allowed') {
      sink.extraHeaders = { allow: match.allowed.join(', ') };
      throw new BrokerError('method_not_allowed', `${req.method} is not allowed on ${req.path}; allowed: ${match.allowed.join(', ')}`);
    }
    const r = match.route;
    const params = match.params;
    // Credentials first: an admin route's caller and role, a client route's key or token.
    let who: ReturnType<Guards['admin']> | ReturnType<NonNullable<Guards['client']>> | undefined;
    if (r.admin) who = g.admin(req);
    else if (g.client !== undefined && (r.rateLimited === true || (r.lists === true && apiKeyOf(req.headers) !== undefined))) {
      try {
        who = g.client(req);
      } catch (err) {
        refusedCredential(g, req.remoteAddress, err);
      }
      if (who instanceof Promise) who = who.catch((err: unknown) => refusedCredential(g, req.remoteAddress, err));
    }
    if (who instanceof Promise) {
      // The body is read while the credential is checked: a front like uWS hands it over
      // only to a reader attached now, not after an await.
      let read = readBody;
      if (readsBody(r)) {
        try {
          checkDeclaredLength(req, g.maxBodyBytes);
        } catch (err) {
          // Answered 413 now: the credential's refusal, still to come, must not go unhandled
          // (an unhandled rejection ends the thread, or with FRONT_THREADS=0 the process).
          who.catch(() => undefined);
          throw err;
        }
        const body = new Promise<[BrokerError | undefined, Buffer | undefined]>((resolve) => readBody(g.maxBodyBytes, (err, bytes) => resolve([err, bytes])));
        read = (_limit, done) => void body.then(([err, bytes]) => done(err, bytes));
      }
      who.then(
        (p) => {
          if (!sink.aborted) guarded(g, r, params, req, read, sink, p ?? undefined);
        },
        (err: unknown) => sink.fail(toBrokerError(err)),
      );
      return;
    }
    guarded(g, r, params, req, readBody, sink, who ?? undefined);
  } catch (err) {
    sink.fail(toBrokerError(err));
  }
}

/** After the credentials: the role, the rate limit, the body, the handler. */
function guarded(g: Guards, r: Route, params: Record<string, string>, req: BrokerRequest, readBody: BodyReader, sink: FrontSink, principal: Principal | undefined): void {
  try {
    if (r.admin) {
      try {
        authorize(principal!, req.method === 'HEAD' ? 'GET' : req.method, req.path);
      } catch (err) {
        g.metrics.authFailures.labels('role').inc();
        throw err;
      }
    }
    if (r.rateLimited) {
      try {
        g.rateLimiter.check(clientKeyOf(req.headers, req.remoteAddress, g.knownKey, req.caller));
      } catch (err) {
        g.metrics.rateLimited.inc();
        throw err;
      }
    }
    if (!readsBody(r)) return run(g, r, params, undefined, req, sink, principal);
    checkEncoding(req, sink);
    checkImageType(r, req);
    checkDeclaredLength(req, g.maxBodyBytes);
    readBody(g.maxBodyBytes, (err, bytes) => {
      if (sink.aborted) return;
      if (err !== undefined) return sink.fail(err);
      let body: unknown = bytes;
      if (r.body === 'json?' && bytes!.length === 0) body = {};
      else if (r.body !== 'raw' && !sendsRaw(r, req) && r.rawSniff?.raw(bytes!) !== true) {
        try {
          body = parseJsonBody(bytes!);
        } catch (err) {
          if (r.rawSniff !== undefined && mediaType(req) === 'multipart/form-data') return sink.fail(new BrokerError('unsupported_image', r.rawSniff.multipart, { details: { field: 'content-type' } }));
          return sink.fail(err instanceof BrokerError ? err : new BrokerError('invalid_json', 'request body is not valid JSON'));
        }
        if (body === null || typeof body !== 'object' || Array.isArray(body)) {
          return sink.fail(new BrokerError('invalid_json', 'request body must be a JSON object'));
        }
      }
      run(g, r, params, body, req, sink, principal);
    });
  } catch (err) {
    sink.fail(toBrokerError(err));
  }
}

function run(g: Guards, route: Route, params: Record<string, string>, body: unknown, req: BrokerRequest, sink: FrontSink, principal: Principal | undefined): void {
  const note: AuditNote = {};
  // Every change through an admin route that succeeds goes to the audit trail.
  const audited = route.admin && !route.readOnly && principal !== undefined && req.method !== 'GET' && req.method !== 'HEAD' && g.audit !== undefined;
  const done = (): void => {
    if (audited) g.audit!({ principal: principal!, req, params, note });
  };
  let result: void | Promise<void>;
  try {
    result = route.handle({ req, params, body, sink, principal, note });
  } catch (err) {
    sink.fail(toBrokerError(err));
    return;
  }
  if (result === undefined) return done();
  result.then(
    () => {
      // A handler that returns without replying is a bug; never leave the client hanging.
      if (!sink.finished && !sink.started) return sink.fail(new BrokerError('internal', 'handler sent no reply'));
      done();
    },
    (err: unknown) => sink.fail(toBrokerError(err)),
  );
}
