// Where an upstream exchange runs. The proxy decides which deployment to try and
// whether to retry; an Executor performs one attempt: send the request, report the
// status, then deliver the reply (whole, or streamed through the compiled chain).
// It runs on the thread that serves the request (thread.ts): a data-plane thread, or
// the main thread with FRONT_THREADS=0. (A Piscina pool of LLM workers, LLM_EXECUTION=pool,
// was removed: bench:llm measured it losing 9 of 9 measures against FRONT_THREADS=2.)
import type { DeploymentConfig } from '../../config/broker-config.ts';
import type { ChainSpec, ChainStats } from '../chain/compile.ts';
import type { RequestKind } from '../providers.ts';
import type { AbortLike } from '../../abort.ts';

export interface AttemptRequest {
  readonly deployment: DeploymentConfig;
  readonly kind: RequestKind;
  /** JSON body for the upstream, already translated. */
  readonly body: string;
  readonly stream: boolean;
  /** Not streamed for the client, but streamed by the upstream: bytes() assembles the whole reply (translate/assemble.ts). */
  readonly assemble?: boolean;
  readonly chain: ChainSpec;
  /** The compiled_chain flag: fused chain, or one Transform per stage. */
  readonly compiled: boolean;
  /** For the chain: the model name the client asked for, the request id, usage wanted. */
  readonly model: string;
  /** The reply's ids (LlmRequest.replyId). */
  readonly id: string;
  /** The request id: error events' `request_id`. */
  readonly requestId: string;
  readonly includeUsage: boolean;
  /** The prompt's estimated tokens: what a gRPC Final reports when the upstream sends no usage. */
  readonly promptEstimate?: number;
  /** The client's body, for reply fields that echo it (a Response's instructions, tools, …); Responses clients only. */
  readonly request?: Readonly<Record<string, unknown>> | undefined;
  /** W3C Trace Context sent upstream when the request is traced (the attempt's span is the parent). */
  readonly traceparent?: string | undefined;
  readonly tracestate?: string | undefined;
}

/** How a streamed reply ended. */
export interface StreamResult {
  readonly ended: 'complete' | 'truncated' | 'upstream_error' | 'failed' | 'aborted';
  /** For 'failed' (connection error, idle timeout after the first byte): the error code. */
  readonly errorCode: string | null;
  readonly errorMessage: string | null;
  readonly promptTokens: number;
  readonly completionTokens: number;
  /** The token counts are the upstream's usage; else promptTokens is 0 and completionTokens the token events counted. */
  readonly usageFromUpstream: boolean;
  /** Milliseconds from the upstream's headers to the first token, when there was one. */
  readonly firstTokenMs: number | null;
  /** Gaps between consecutive token events, milliseconds. */
  readonly interTokenMs: readonly number[];
  /** Milliseconds spent waiting on the upstream while streaming, after its first chunk (the wait before it is the timeline's). */
  readonly waitedMs: number;
  /** Upstream events that were not JSON objects, dropped. */
  readonly malformed: number;
  /** The finish reason the upstream gave (a translated reply may say one of its own); null: none. */
  readonly finishReason: string | null;
  /** 'failed' on an error the upstream said in its 200 (its first event), not a cut or a timeout. */
  readonly upstreamSaid?: boolean;
}

/** Where streamed output goes: write returns false when the client is slow. */
export interface StreamTarget {
  /**
   * `done` comes with the chunk that ends a stream that completed (its terminal event), with
   * the stream's final stats: the reply is whole before its last byte leaves, and before the
   * upstream ends its response (which may come later, or never).
   */
  write(chunk: string | Uint8Array, done?: ChainStats): boolean;
  /** Resolves when the target can take more (or the request was aborted). */
  drained(): Promise<void>;
  /** Whether anything reached the client yet; a stream that fails before does not write its error event (the proxy may retry). */
  committed?(): boolean;
}

/** When the attempt's bytes came (performance.now() ms), filled in by the executor as they arrive. */
export interface AttemptTiming {
  /** The request was written to the socket (undici's bodySent); -1 when unknown. */
  writtenAt: number;
  /** The response headers were parsed; -1 before. */
  headersAt: number;
  /** The first body chunk was parsed off the socket; -1 before. */
  wireFirstByteAt: number;
  /** The upstream's first byte as the proxy counts it: the first body chunk (streamed) or the headers (whole reply); -1 before. */
  firstByteAt: number;
  /**
   * The latest body chunk's arrival: when the client's first byte goes out, the chunk that
   * made it. Not always the first: an upstream's SSE keep-alive comments come before the
   * model's first event and give the client nothing, and their wait is the upstream's.
   */
  lastChunkAt: number;
}

export interface Attempt {
  readonly status: number;
  readonly timing: AttemptTiming;
  /** The phase whose timeout ended the attempt, once one did. */
  readonly expired: () => 'first_byte' | 'idle' | 'total' | null;
  readonly retryAfter: string | undefined;
  /** Non-2xx: the upstream's error body. */
  errorText(): Promise<string>;
  /** 2xx, not streamed: the whole upstream body (assembled from its stream when `assemble`). */
  bytes(): Promise<Uint8Array>;
  /** An assembled reply: the tokens read so far and the events dropped as not JSON (0 for a whole body). */
  readonly assembled?: () => { tokens: number; malformed: number };
  /** 2xx, streamed: pump the chain's output into the target until the stream ends. */
  pump(target: StreamTarget): Promise<StreamResult>;
}

export interface Executor {
  /** Resolves once the upstream's status is known; rejects on connect or header errors. */
  attempt(req: AttemptRequest, signal: AbortLike): Promise<Attempt>;
  close(): Promise<void>;
}
