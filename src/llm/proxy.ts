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
import { BrokerError } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';
import type { Metrics } from '../obs/metrics.ts';
import type { ReplySink } from '../front/reply.ts';
import type { ModelGroupConfig } from '../config/broker-config.ts';
import type { Fleet } from './fleet.ts';
import type { DeploymentState } from './router.ts';
import type { Attempt, Executor, StreamResult, StreamTarget } from './exec/types.ts';
import { streamContentType, translateRequest, translateResponse, upstreamError, type Api, type Kind } from './translate/index.ts';

export interface ProxyDeps {
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly executor: Executor;
  /** Stream instrumentation (TTFT, inter-token) in the compiled chain. */
  readonly instrument: boolean;
  readonly now?: () => number;
}

type Outcome = 'ok' | 'client_error' | 'midstream_error' | 'aborted' | 'timeout';

export class LlmProxy {
  private readonly now: () => number;

  constructor(private readonly deps: ProxyDeps) {
    this.now = deps.now ?? Date.now;
  }

  async handle(fleet: Fleet, api: Api, kind: Kind, requestId: string, startedAt: number, body: Record<string, unknown>, sink: ReplySink): Promise<void> {
    const model = body.model;
    if (typeof model !== 'string' || model === '') throw new BrokerError('invalid_request', 'model is required and must be a string');
    const group = fleet.groups.get(model);
    if (group === undefined) {
      throw new BrokerError('model_not_found', `model ${model} is not served here; available: ${[...fleet.groups.keys()].join(', ') || 'none'}`);
    }
    const abort = new AbortController();
    sink.onAbort(() => abort.abort());
    const m = this.deps.metrics;
    const tried = new Set<string>();
    let lastError: BrokerError | undefined;
    // Time spent waiting on upstreams, subtracted from the total for broker_overhead_seconds.
    let waited = 0;

    for (;;) {
      const dep = fleet.state.choose(group, tried, this.now());
      if (dep === undefined) break;
      tried.add(dep.config.id);
      const provider = dep.config.provider;
      const up = translateRequest({ client: api, provider, kind }, body, dep.config.model);
      dep.inFlight++;
      const sentAt = performance.now();
      let attempt: Attempt;
      try {
        attempt = await this.deps.executor.attempt(
          {
            deployment: dep.config,
            kind,
            body: up.body,
            stream: up.stream,
            chain: { client: api, provider, kind, instrument: this.deps.instrument, countTokens: true },
            model,
            id: requestId,
            includeUsage: up.includeUsage,
          },
          abort.signal,
        );
      } catch (err) {
        dep.inFlight--;
        waited += performance.now() - sentAt;
        if (sink.aborted) return this.finish(group, dep, 'aborted', startedAt, waited, up.stream);
        lastError = connectError(err, dep);
        fleet.state.failed(dep, this.now());
        m.llmRetries.labels(group.name, lastError.code).inc();
        this.deps.logger.warn({ trace_id: requestId, deployment: dep.config.id, err: lastError.message }, 'upstream failed before the first byte');
        continue;
      }
      waited += performance.now() - sentAt;

      if (attempt.status >= 300) {
        const text = await attempt.errorText().catch(() => '');
        dep.inFlight--;
        const err = upstreamError(provider, attempt.status, text);
        if (attempt.status === 429 || attempt.status >= 500) {
          if (attempt.status === 429) m.llmRateLimitHits.labels(dep.config.id).inc();
          else fleet.state.failed(dep, this.now());
          lastError = exhausted(err, attempt.status, attempt.retryAfter);
          m.llmRetries.labels(group.name, attempt.status === 429 ? 'rate_limited' : 'upstream_5xx').inc();
          this.deps.logger.warn({ trace_id: requestId, deployment: dep.config.id, status: attempt.status }, 'upstream refused before the first byte');
          continue;
        }
        // The client's own mistake as the upstream saw it: pass it on, no retry.
        this.finish(group, dep, 'client_error', startedAt, waited, up.stream);
        throw err;
      }

      fleet.state.succeeded(dep);
      try {
        let outcome: Outcome;
        if (up.stream) {
          sink.start(200, { 'content-type': streamContentType(api), 'cache-control': 'no-cache', 'x-broker-deployment': dep.config.id });
          const r = await attempt.pump(targetOf(sink, abort.signal));
          sink.end();
          waited += r.waitedMs;
          outcome = this.streamOutcome(r, group, dep, requestId);
        } else {
          const t0 = performance.now();
          let bytes: Uint8Array;
          try {
            bytes = await attempt.bytes();
          } catch (err) {
            if (sink.aborted) return this.finish(group, dep, 'aborted', startedAt, waited, false);
            throw new BrokerError('upstream_error', `upstream failed while sending its reply: ${(err as Error).message}`, { cause: err });
          }
          waited += performance.now() - t0;
          const reply = translateResponse({ client: api, provider, kind }, bytes, { model, id: requestId });
          if (reply.usage !== null) this.countTokens(group, reply.usage.promptTokens, reply.usage.completionTokens);
          sink.send(200, { 'content-type': 'application/json', 'x-broker-deployment': dep.config.id }, reply.body);
          outcome = 'ok';
        }
        this.finish(group, dep, outcome, startedAt, waited, up.stream);
      } finally {
        dep.inFlight--;
      }
      return;
    }

    m.llmRequests.labels(group.name, 'none', 'no_deployment').inc();
    throw lastError ?? new BrokerError('upstream_unavailable', `no deployment of ${group.name} is available`);
  }

  private streamOutcome(r: StreamResult, group: ModelGroupConfig, dep: DeploymentState, requestId: string): Outcome {
    const m = this.deps.metrics;
    this.countTokens(group, r.promptTokens, r.completionTokens);
    if (this.deps.instrument) {
      if (r.firstTokenMs !== null) m.llmTtft.labels(group.name, dep.config.id).observe(r.firstTokenMs / 1000);
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

  private finish(group: ModelGroupConfig, dep: DeploymentState, outcome: Outcome, startedAt: number, waited: number, stream: boolean): void {
    const m = this.deps.metrics;
    const total = performance.now() - startedAt;
    m.llmRequests.labels(group.name, dep.config.id, outcome).inc();
    m.llmDuration.labels(group.name, dep.config.id, stream ? 'true' : 'false').observe(total / 1000);
    m.brokerOverhead.labels(stream ? 'llm_stream' : 'llm').observe(Math.max(0, total - waited) / 1000);
  }
}

/** The sink as a stream target: a slow client makes the pump wait for its socket to drain. */
function targetOf(sink: ReplySink, signal: AbortSignal): StreamTarget {
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
