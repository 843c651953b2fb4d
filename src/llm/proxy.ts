// The LLM proxy: one client request → a deployment of its model group → the
// upstream reply translated into the client's API.
//
// Rules that matter to clients:
// - Retry on another deployment only before the first byte reached the client
//   (connect error, 5xx, 429); never after.
// - A client that goes away aborts the upstream request at once.
// - A slow client pauses the upstream read (we wait for the sink to drain).
// - A stream cut after tokens were sent ends with an explicit error event.
import { performance } from 'node:perf_hooks';
import { errors as undiciErrors } from 'undici';
import { BrokerError, type ErrorCode } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';
import type { Metrics } from '../obs/metrics.ts';
import type { ReplySink } from '../front/reply.ts';
import type { ModelGroupConfig } from '../config/broker-config.ts';
import type { Lease } from '../sched/scheduler.ts';
import type { DeploymentState } from '../fleet/deployments.ts';
import type { Admitted, Leases } from '../sched/governance.ts';
import type { Attempt, Executor, StreamResult, StreamTarget } from './exec/types.ts';
import { streamContentType, translateRequest, translateResponse, upstreamError } from './translate/index.ts';
import { RequestAbort, type AbortLike } from '../abort.ts';
import type { Span } from '../obs/trace/span.ts';
import { attemptSpan, queueWaitSpan } from '../obs/trace/llm.ts';
import type { RequestFacts } from '../track/facts.ts';

export interface ProxyDeps {
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly executor: Executor;
  readonly leases: Leases;
}

type Outcome = 'ok' | 'client_error' | 'upstream_error' | 'midstream_error' | 'aborted' | 'timeout';

/** llm_requests_total's coarse outcome (seed 001's error-rate query reads outcome="error"); the fine one is its reason. */
function coarse(reason: string): 'ok' | 'error' | 'client_error' | 'aborted' {
  if (reason === 'ok' || reason === 'client_error' || reason === 'aborted') return reason;
  return reason === 'quota_exceeded' ? 'client_error' : 'error';
}

interface Usage {
  /** null: the client went away, which says nothing about the deployment. */
  ok: boolean | null;
  promptTokens: number;
  completionTokens: number;
  ttftMs: number | null;
}

export class LlmProxy {
  /** The aborts of the requests running now, for a shutdown past its grace period. */
  private readonly running = new Set<RequestAbort>();
  private stopped: BrokerError | undefined;

  constructor(private readonly deps: ProxyDeps) {}

  /** Ends every running request with shutting_down (open streams get their error event) and refuses new ones. */
  abortAll(): void {
    this.stopped = new BrokerError('shutting_down', 'the broker shut down before the reply was complete');
    for (const a of this.running) a.abort(this.stopped);
  }

  /** Runs an admitted request: leases, attempts (retried before the first byte), the reply. `span`: the request's, when traced. */
  async run(admitted: Admitted, group: ModelGroupConfig, sink: ReplySink, span?: Span): Promise<void> {
    const gov = this.deps.leases;
    const { flags, body } = admitted;
    const { api, kind, model } = admitted.request;
    const req = admitted.request;
    if (this.stopped !== undefined) throw this.stopped;
    const abort = new RequestAbort();
    sink.onAbort(() => abort.abort());
    this.running.add(abort);
    const m = this.deps.metrics;
    const tried = new Set<string>();
    let lastError: BrokerError | undefined;
    // Time spent waiting on upstreams, subtracted from the total for broker_overhead_seconds.
    let waited = 0;
    let lease: Lease | null = null;
    const usage: Usage = { ok: false, promptTokens: 0, completionTokens: 0, ttftMs: null };
    // Request tracking's record, filled in as the request goes (undefined: not tracked).
    const facts = req.facts;
    try {
      for (;;) {
        const retry = tried.size;
        const waitSpan = span === undefined ? undefined : queueWaitSpan(span, group.name, retry);
        const askedAt = performance.now();
        try {
          lease = await gov.acquire(admitted, group, tried, abort);
          if (facts !== undefined) {
            facts.queueMs = (facts.queueMs ?? 0) + (performance.now() - askedAt);
            facts.deployment = lease.dep.config.id;
            facts.retries = retry;
          }
        } catch (err) {
          const code = (err as BrokerError).code;
          if (facts !== undefined) facts.queueMs = (facts.queueMs ?? 0) + (performance.now() - askedAt);
          waitSpan?.fail(sink.aborted ? 'client_closed' : (code ?? 'internal'), (err as Error).message).end();
          if (sink.aborted) return;
          if (this.stopped !== undefined) throw this.stopped;
          const reason = code === 'upstream_unavailable' ? 'no_deployment' : code;
          m.llmRequests.labels(group.name, 'none', coarse(reason), reason).inc();
          if (facts !== undefined) facts.outcome = reason;
          // Out of deployments: the last upstream failure says more than "none left".
          if (code === 'upstream_unavailable' && lastError !== undefined) throw lastError;
          throw err;
        }
        const dep = lease.dep;
        waitSpan?.set('llm.deployment', dep.config.id).end();
        tried.add(dep.config.id);
        const provider = dep.config.provider;
        const up = translateRequest({ client: api, provider, kind }, body, dep.config.model);
        const upSpan = span === undefined ? undefined : attemptSpan(span, dep.config, group.name, retry, up.stream);
        const sentAt = performance.now();
        let attempt: Attempt;
        try {
          attempt = await this.deps.executor.attempt(
            {
              deployment: dep.config,
              kind,
              body: up.body,
              stream: up.stream,
              chain: { client: api, provider, kind, instrument: flags.stream_instrumentation, countTokens: true, encoder: req.encoder },
              compiled: flags.compiled_chain,
              model,
              id: req.id,
              includeUsage: up.includeUsage,
              // W3C Trace Context for the upstream: this attempt is its parent.
              traceparent: upSpan?.traceparent,
              tracestate: upSpan?.tracestate,
            },
            abort,
          );
        } catch (err) {
          waited += performance.now() - sentAt;
          gov.attemptFailed(lease, !sink.aborted);
          lease = null;
          if (sink.aborted) {
            upSpan?.fail('client_closed').end();
            return this.finish(facts, group, dep, 'aborted', req.startedAt, waited, up.stream);
          }
          if (this.stopped !== undefined) {
            upSpan?.fail('shutting_down').end();
            this.finish(facts, group, dep, 'upstream_error', req.startedAt, waited, up.stream);
            throw this.stopped;
          }
          lastError = connectError(err, dep);
          upSpan?.fail(lastError.code, lastError.message).end();
          m.llmRetries.labels(group.name, lastError.code).inc();
          this.deps.logger.warn({ trace_id: req.id, deployment: dep.config.id, err: lastError.message }, 'upstream failed before the first byte');
          continue;
        }
        const headersAt = performance.now();
        waited += headersAt - sentAt;
        upSpan?.set('http.response.status_code', attempt.status);

        if (attempt.status >= 300) {
          const text = await attempt.errorText().catch(() => '');
          const err = upstreamError(provider, attempt.status, text, dep.config.apiKey === undefined ? [] : [dep.config.apiKey]);
          upSpan?.fail(String(attempt.status), err.message).end();
          if (attempt.status === 429 || attempt.status >= 500) {
            // A 429 says the deployment is busy, not broken: no health penalty.
            gov.attemptFailed(lease, attempt.status >= 500);
            lease = null;
            if (attempt.status === 429) m.llmRateLimitHits.labels(dep.config.id).inc();
            lastError = exhausted(err, attempt.status, attempt.retryAfter);
            m.llmRetries.labels(group.name, attempt.status === 429 ? 'rate_limited' : 'upstream_5xx').inc();
            this.deps.logger.warn({ trace_id: req.id, deployment: dep.config.id, status: attempt.status }, 'upstream refused before the first byte');
            continue;
          }
          // The client's own mistake as the upstream saw it: pass it on, no retry.
          usage.ok = true;
          this.finish(facts, group, dep, 'client_error', req.startedAt, waited, up.stream);
          throw err;
        }

        let outcome: Outcome;
        if (up.stream) {
          sink.start(200, { 'content-type': streamContentType(api), 'cache-control': 'no-cache', 'x-broker-deployment': dep.config.id });
          const r = await attempt.pump(targetOf(sink, abort));
          // Time to first token from when the request left for the upstream.
          usage.ttftMs = r.firstTokenMs === null ? null : headersAt - sentAt + r.firstTokenMs;
          // The attempt's span ends within the request's, which ends with the reply.
          if (upSpan !== undefined) {
            if (r.ended !== 'complete') upSpan.fail(r.errorCode ?? r.ended, r.errorMessage ?? undefined);
            endAttempt(upSpan, usage.ttftMs, r.promptTokens, r.completionTokens);
          }
          // A front with an out-of-band status (gRPC) ends a failed stream with it; over
          // HTTP the chain already wrote the error event into the stream.
          if (sink.endWithError !== undefined && r.ended !== 'complete' && r.ended !== 'aborted') {
            sink.endWithError(new BrokerError((r.errorCode ?? 'upstream_error') as ErrorCode, r.errorMessage ?? 'upstream stream failed'));
          } else {
            sink.end();
          }
          waited += r.waitedMs;
          outcome = this.streamOutcome(r, usage.ttftMs, group, dep, req.id, flags.stream_instrumentation);
          usage.ok = outcome === 'aborted' ? null : outcome === 'ok';
          usage.promptTokens = r.promptTokens;
          usage.completionTokens = r.completionTokens;
        } else {
          const t0 = performance.now();
          let bytes: Uint8Array;
          try {
            bytes = await attempt.bytes();
          } catch (err) {
            if (sink.aborted) {
              usage.ok = null;
              upSpan?.fail('client_closed').end();
              return this.finish(facts, group, dep, 'aborted', req.startedAt, waited, false);
            }
            upSpan?.fail('upstream_error', (err as Error).message).end();
            this.finish(facts, group, dep, 'upstream_error', req.startedAt, waited, false);
            throw new BrokerError('upstream_error', `upstream failed while sending its reply: ${(err as Error).message}`, { cause: err });
          }
          waited += performance.now() - t0;
          const reply = translateResponse({ client: api, provider, kind }, bytes, { model, id: req.id });
          if (reply.usage !== null) {
            this.countTokens(group, reply.usage.promptTokens, reply.usage.completionTokens);
            usage.promptTokens = reply.usage.promptTokens;
            usage.completionTokens = reply.usage.completionTokens;
          }
          // A whole reply's latency is the upstream's, not the time this request queued here.
          usage.ttftMs = headersAt - sentAt;
          if (upSpan !== undefined) endAttempt(upSpan, usage.ttftMs, usage.promptTokens, usage.completionTokens);
          sink.send(200, { 'content-type': 'application/json', 'x-broker-deployment': dep.config.id }, reply.body);
          outcome = 'ok';
          usage.ok = true;
        }
        this.finish(facts, group, dep, outcome, req.startedAt, waited, up.stream);
        return;
      }
    } finally {
      if (facts !== undefined) {
        facts.promptTokens = usage.promptTokens;
        facts.completionTokens = usage.completionTokens;
        facts.ttftMs = usage.ttftMs ?? undefined;
        facts.upstreamMs = waited;
      }
      this.running.delete(abort);
      gov.completed(admitted, lease, { ...usage, durationMs: performance.now() - req.startedAt });
    }
  }

  private streamOutcome(r: StreamResult, ttftMs: number | null, group: ModelGroupConfig, dep: DeploymentState, requestId: string, instrument: boolean): Outcome {
    const m = this.deps.metrics;
    this.countTokens(group, r.promptTokens, r.completionTokens);
    if (instrument) {
      if (ttftMs !== null) m.llmTtft.labels(group.name, dep.config.id).observe(ttftMs / 1000);
      const gaps = m.llmInterToken.labels(group.name);
      for (const g of r.interTokenMs) gaps.observe(g / 1000);
    }
    if (r.ended === 'complete') return 'ok';
    if (r.ended === 'aborted') return 'aborted';
    const reason = r.ended === 'truncated' ? 'truncated' : (r.errorCode ?? 'upstream_error');
    m.llmMidstreamErrors.labels(group.name, dep.config.id, reason).inc();
    this.deps.logger.warn({ trace_id: requestId, deployment: dep.config.id, reason, err: r.errorMessage }, 'upstream stream failed after the first byte');
    return reason === 'upstream_timeout' ? 'timeout' : 'midstream_error';
  }

  private countTokens(group: ModelGroupConfig, prompt: number, completion: number): void {
    if (prompt > 0) this.deps.metrics.llmTokens.labels(group.name, 'prompt').inc(prompt);
    if (completion > 0) this.deps.metrics.llmTokens.labels(group.name, 'completion').inc(completion);
  }

  private finish(facts: RequestFacts | undefined, group: ModelGroupConfig, dep: DeploymentState, outcome: Outcome, startedAt: number, waited: number, stream: boolean): void {
    const m = this.deps.metrics;
    if (facts !== undefined) facts.outcome = outcome;
    const total = performance.now() - startedAt;
    m.llmRequests.labels(group.name, dep.config.id, coarse(outcome), outcome).inc();
    m.llmDuration.labels(group.name, dep.config.id, stream ? 'true' : 'false').observe(total / 1000);
    m.brokerOverhead.labels(stream ? 'llm_stream' : 'llm').observe(Math.max(0, total - waited) / 1000);
  }
}

/** An attempt that got its reply: TTFT (from the request leaving) and the tokens it used. */
function endAttempt(span: Span, ttftMs: number | null, promptTokens: number, completionTokens: number): void {
  if (ttftMs !== null) span.set('llm.ttft_ms', Math.round(ttftMs * 1000) / 1000);
  span.set('gen_ai.usage.input_tokens', promptTokens).set('gen_ai.usage.output_tokens', completionTokens).end();
}

/** The sink as a stream target: a slow client makes the pump wait for its socket to drain. */
function targetOf(sink: ReplySink, signal: AbortLike): StreamTarget {
  return {
    write: (chunk) => sink.write(chunk),
    drained: () =>
      new Promise((resolve) => {
        if (signal.aborted) return resolve();
        const done = (): void => {
          signal.removeEventListener('abort', done);
          resolve();
        };
        signal.addEventListener('abort', done);
        sink.onWritable(done);
      }),
  };
}

function connectError(err: unknown, dep: DeploymentState): BrokerError {
  if (err instanceof BrokerError) return err;
  const e = err as Error & { code?: string };
  if (e instanceof undiciErrors.HeadersTimeoutError || e instanceof undiciErrors.ConnectTimeoutError || e.code === 'UND_ERR_HEADERS_TIMEOUT' || e.code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new BrokerError('upstream_timeout', `deployment ${dep.config.id} timed out (${e.code})`, { cause: err });
  }
  return new BrokerError('upstream_unavailable', `deployment ${dep.config.id} is unreachable: ${e.code ?? e.message}`, { cause: err });
}

function exhausted(err: BrokerError, status: number, retryAfter: string | undefined): BrokerError {
  // After the last deployment this is what the client sees: 503 for an upstream 429
  // (with its Retry-After), 502 for an upstream 5xx.
  const seconds = retryAfter !== undefined && /^\d+$/.test(retryAfter) ? Number(retryAfter) : 1;
  return status === 429
    ? new BrokerError('upstream_unavailable', `every deployment is rate limited (last: ${err.message})`, { retryAfter: seconds })
    : new BrokerError('upstream_error', err.message);
}
