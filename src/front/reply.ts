// The protocol-neutral request and reply that every stage after `front` sees.
// The HTTP front (uWS) and later the gRPC front implement ReplySink; nothing
// past `front` knows which protocol it is talking.
import type { BrokerError } from '../errors.ts';
import type { Span } from '../obs/trace/span.ts';
import type { RequestFacts } from '../track/facts.ts';

export interface BrokerRequest {
  readonly id: string;
  readonly method: string;
  /** Path without the query string. */
  readonly path: string;
  readonly query: string;
  /** Lower-case header names. Read before the first await (uWS invalidates them). */
  readonly headers: Readonly<Record<string, string>>;
  readonly remoteAddress: string;
  /** Milliseconds from performance.now() when the request arrived. */
  readonly startedAt: number;
  /** The request's server span when it is traced (OTEL_ENABLED and sampled); undefined otherwise. Never crosses a thread. */
  readonly span?: Span | undefined;
  /** What request tracking records of it, filled in by the stages; undefined when tracking is off or the route is not tracked. */
  readonly facts?: RequestFacts | undefined;
  /** Who a session or a JWT speaks for, set by the client routes' credential check (guard/client-auth.ts). */
  caller?: Caller | undefined;
}

/**
 * What a credential other than an API key stands for, in admission: a session is held to the
 * key it was made from (its quotas, tier, priority, budget), a JWT to its `tier` claim.
 */
export interface Caller {
  /** The id (k_…) of the known API key behind a session. */
  readonly keyId?: string | undefined;
  /** The tier a token or session carries (a key's own policy wins). */
  readonly tier?: string | undefined;
  /** A token's subject (or the subject of a session made from one): whom a per-caller cache keys by. */
  readonly subject?: string | undefined;
}

export interface ReplySink {
  /** True once the client went away; writes after that are dropped. */
  readonly aborted: boolean;
  /** True once a status line was sent (streaming started or reply finished). */
  readonly started: boolean;
  /** Headers an error reply carries too (HTTP fronts; x-broker-cache, x-broker-fallback). */
  extraHeaders?: Record<string, string> | undefined;
  /** Called once when the client disconnects before the reply ended; `reason`, when the broker ended it (shutdown). */
  onAbort(cb: (reason?: BrokerError) => void): void;
  /** Start a streamed reply. */
  start(status: number, headers: Readonly<Record<string, string>>): void;
  /** Write a chunk of a started reply; false means the client is slow: wait for onWritable before writing more. */
  write(chunk: string | Uint8Array): boolean;
  /** Runs fn with the socket corked: what it writes leaves in one packet (the status line with the first chunk). */
  cork?(fn: () => void): void;
  /** Called once when a backpressured sink can take more. */
  onWritable(cb: () => void): void;
  /** End a started reply, optionally with a last chunk. */
  end(chunk?: string | Uint8Array): void;
  /**
   * End a started stream that failed after it began. A front whose protocol has an
   * out-of-band status sends it (gRPC: a non-OK status after the messages sent); over HTTP
   * the error event is in the stream already, and the front only records the failure.
   */
  endWithError?(err: BrokerError): void;
  /** Send a whole reply at once. */
  send(status: number, headers: Readonly<Record<string, string>>, body: string | Uint8Array): void;
}
