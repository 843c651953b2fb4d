// What happens to a request once its route is known, whatever carried it: the
// cheap guards (admin credential, rate limit, body limit), the body (JSON or raw),
// then the handler. The uWS front calls it for the routes a thread serves itself;
// the control plane calls it for the requests a data-plane thread forwards to it.
import { BrokerError, toBrokerError } from '../../errors.ts';
import type { AdminCheck } from '../../guard/admin-auth.ts';
import type { RateLimiter } from '../../guard/rate-limit.ts';
import { clientKeyOf } from '../../guard/rate-limit.ts';
import type { Metrics } from '../../obs/metrics.ts';
import type { BrokerRequest, ReplySink } from '../reply.ts';
import type { Match, Route } from './router.ts';

export interface Guards {
  readonly maxBodyBytes: number;
  readonly rateLimiter: RateLimiter;
  readonly adminCheck: AdminCheck;
  readonly metrics: Metrics;
  /** Whether an API key is one the broker knows (its own rate-limit bucket); others count by address. */
  readonly knownKey?: (key: string) => boolean;
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

/** Answers 404/405 for a miss; for a match runs the guards, reads the body and calls the route. */
export function dispatch(g: Guards, match: Match, req: BrokerRequest, readBody: BodyReader, sink: FrontSink): void {
  try {
    if (match.kind === 'not_found') throw new BrokerError('not_found', `no route for ${req.path}`);
    if (match.kind === 'method_not_allowed') {
      sink.extraHeaders = { allow: match.allowed.join(', ') };
      throw new BrokerError('method_not_allowed', `${req.method} is not allowed on ${req.path}; allowed: ${match.allowed.join(', ')}`);
    }
    const r = match.route;
    if (r.admin) g.adminCheck(req.headers['authorization']);
    if (r.rateLimited) {
      try {
        g.rateLimiter.check(clientKeyOf(req.headers, req.remoteAddress, g.knownKey));
      } catch (err) {
        g.metrics.rateLimited.inc();
        throw err;
      }
    }
    if (r.body !== 'json' && r.body !== 'json?' && r.body !== 'raw') return run(r, match.params, undefined, req, sink);
    const declared = req.headers['content-length'];
    if (declared !== undefined && Number(declared) > g.maxBodyBytes) throw tooLarge(g.maxBodyBytes);
    readBody(g.maxBodyBytes, (err, bytes) => {
      if (sink.aborted) return;
      if (err !== undefined) return sink.fail(err);
      let body: unknown = bytes;
      if (r.body === 'json?' && bytes!.length === 0) body = {};
      else if (r.body !== 'raw') {
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
  } catch (err) {
    sink.fail(toBrokerError(err));
  }
}

function run(route: Route, params: Record<string, string>, body: unknown, req: BrokerRequest, sink: FrontSink): void {
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
