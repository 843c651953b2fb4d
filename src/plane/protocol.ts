// Messages between the control plane (main thread) and the data-plane threads.
// Everything here crosses a MessagePort, so it is structured-cloneable: no
// functions, no class instances (Maps and typed arrays are fine).
import type { Config } from '../config/env.ts';
import type { BrokerConfig } from '../config/broker-config.ts';
import type { FlagSet } from '../config/flags.ts';
import type { ErrorCode } from '../errors.ts';
import type { Learned } from '../sched/governance.ts';
import type { BrokerRequest } from '../front/reply.ts';
import type { ForwardedReply } from '../front/http/server.ts';
import type { InferReply } from '../infer/service.ts';
import type { TraceContext } from '../obs/trace/context.ts';
import type { TrackRow } from '../track/facts.ts';
import type { SpendEntry } from '../track/budget.ts';

/**
 * What a data-plane thread serves from. Immutable: the control plane publishes a new
 * one for every change, and every thread acknowledges it before an admin call returns.
 */
export interface Snapshot {
  readonly version: number;
  readonly flags: FlagSet;
  /** The LLM fleet; replaced whole when discovery finds another (fleetVersion changes). */
  readonly fleet: BrokerConfig | null;
  readonly fleetVersion: number;
  /** Capacity slots in the shared buffer, by deployment id (and `server:<id>` for servers' own). */
  readonly slots: readonly (readonly [id: string, slot: number])[];
  /**
   * Bumped when a deployment became routable again (route bits live in the capacity
   * buffer, read directly): each thread's waiters try again.
   */
  readonly routesVersion: number;
  /** The orchestrator's queue pause: new LLM requests wait. */
  readonly queuePaused: boolean;
  /** API keys made through /api/auth/keys (their SHA-256 and policy, never the key); keysVersion bumps on change. */
  readonly keys: readonly { readonly hash: string; readonly id: string; readonly role?: string | undefined; readonly tier: string | undefined; readonly priority: number | undefined; readonly label: string | undefined; readonly rpm: number | undefined; readonly tpm: number | undefined }[];
  readonly keysVersion: number;
}

/** Buffers every thread shares, created once by the control plane. */
export interface SharedBuffers {
  readonly capacity: SharedArrayBuffer;
  /** What each thread holds of the capacity counters (sched/capacity.ts): a dead thread's slots come back. */
  readonly capacityHoldings: SharedArrayBuffer;
  /** One Int32: requests waiting in every thread's queue. */
  readonly waiters: SharedArrayBuffer;
  /** Each thread's best waiter per group (sched/wait-board.ts). */
  readonly board: SharedArrayBuffer;
  readonly quota: SharedArrayBuffer;
  /** Absent when the rate limit is off. */
  readonly rateLimit: SharedArrayBuffer | undefined;
}

export interface PlaneInit {
  readonly config: Config;
  readonly buffers: SharedBuffers;
  readonly snapshot: Snapshot;
  readonly index: number;
  /** The BroadcastChannel of the response cache: a reply stored on one thread reaches the others. */
  readonly cacheChannel?: string;
  /** The budgets' running totals as of the thread's start: in force before it serves its first request. */
  readonly spend?: readonly SpendEntry[];
  /** The descriptor the thread writes its log lines to itself (stdout); unset, they go through the control plane. */
  readonly logFd?: number;
  /** The control plane's routes (method, path pattern, name): a forwarded request refused here (its body too large) is counted under its route. */
  readonly controlRoutes?: readonly RouteLabel[];
}

/** A route as a label only: enough to name a request in metrics and logs. */
/** A control-plane route as the threads know it: its name, and the credential it needs (refused on the thread before its body when absent). */
export type RouteLabel = readonly [method: string, path: string, name: string | undefined, guard?: 'admin' | 'client'];

/** Inference input crossing to the control plane: the image's buffer is transferred. */
export interface InferCall {
  readonly image: Uint8Array;
  readonly imgSize: number | undefined;
  readonly topK: number | undefined;
  readonly cookieArm: string | undefined;
  readonly priority?: number | undefined;
  /** The request's span context when it is traced: the inference spans (made on the control plane) go under it. */
  readonly trace?: TraceContext | undefined;
}

/** A BrokerError, flattened for the trip back. */
export interface WireError {
  readonly code: ErrorCode;
  readonly message: string;
  readonly retryAfter?: number;
  /** The request field at fault (details.field): the reply's `param`. */
  readonly field?: string;
}

/** The queue and sticky numbers each thread keeps for itself, summed by the control plane. */
export interface PlaneStats {
  readonly queue: { size: number; byGroup: Record<string, number>; timedOut: number; rejectedFull: number; shed: number; oldestWaitMs: number };
  readonly sticky: { pins: number; hits: number; misses: number };
  readonly inFlight: number;
}

export type ToPlane =
  | { readonly t: 'snapshot'; readonly snapshot: Snapshot }
  /** PORT=0: the port every thread listens on, sent once all of them are `ready`. */
  | { readonly t: 'listen'; readonly port: number }
  | { readonly t: 'learn'; readonly events: readonly Learned[] }
  | { readonly t: 'reply'; readonly id: number; readonly value?: unknown; readonly error?: WireError }
  | { readonly t: 'call'; readonly id: number; readonly name: 'metrics' | 'stats' | 'flush' }
  | { readonly t: 'wake'; readonly group: string }
  /** Another thread's newcomer claimed one of this thread's queued requests of `level`: shed it. */
  | { readonly t: 'shed'; readonly level: number }
  /** The budgets' running totals (request tracking): what admission checks keys against. */
  | { readonly t: 'spend'; readonly entries: readonly SpendEntry[] }
  | { readonly t: 'stop'; readonly graceMs: number }
  /** The shutdown's grace period cut short (a second signal): open streams end now. */
  | { readonly t: 'hurry' }
  /** Fault injection: the thread throws, as a bug would make it (tests and drills). */
  | { readonly t: 'fail' };

export type ToControl =
  /** PORT=0: loaded and about to listen, waiting for `listen`. */
  | { readonly t: 'ready' }
  | { readonly t: 'listening'; readonly port: number }
  | { readonly t: 'ack'; readonly version: number }
  | { readonly t: 'forward'; readonly id: number; readonly req: BrokerRequest; readonly body: Uint8Array | undefined }
  | { readonly t: 'infer'; readonly id: number; readonly call: InferCall }
  /** The client of infer or forward call `id` went away: its image leaves the queue, its route's work stops. */
  | { readonly t: 'call_abort'; readonly id: number }
  | { readonly t: 'discover'; readonly id: number }
  /** Is this session live, and with which roles (AUTH_MODE on the client routes)? */
  | { readonly t: 'session'; readonly id: number; readonly session: string }
  | { readonly t: 'result'; readonly id: number; readonly value: unknown }
  | { readonly t: 'log'; readonly text: string }
  | { readonly t: 'learn'; readonly events: readonly Learned[] }
  /** Request tracking: the rows of the requests that ended in one turn of the thread's loop, for the one writer. */
  | { readonly t: 'track'; readonly rows: readonly TrackRow[] }
  | { readonly t: 'wake'; readonly group: string; readonly thread: number }
  | { readonly t: 'shed'; readonly level: number; readonly thread: number }
  | { readonly t: 'stopped'; readonly unfinished: number };

export type { ForwardedReply, InferReply };
