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
import { compileChain } from './chain/compile.ts';
import { streamContentType, translateRequest, translateResponse, upstreamError, type Api, type Kind } from './translate/index.ts';

export interface ProxyDeps {
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly now?: () => number;
  /** Stream instrumentation (TTFT, inter-token) in the compiled chain. */
  readonly instrument: boolean;
}

type Outcome = 'ok' | 'client_error' | 'upstream_error' | 'midstream_error' | 'aborted' | 'timeout' | 'no_deployment';

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
      const route = { client: api, provider: dep.config.provider, kind };
      const up = translateRequest(route, body, dep.config.model);
      dep.inFlight++;
      const sentAt = performance.now();
      let res;
      try {
        res = await fleet.upstreams.post(dep.config, kind, up.body, abort.signal);
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

      if (res.statusCode >= 300) {
        const text = await res.body.text().catch(() => '');
        dep.inFlight--;
        const err = upstreamError(dep.config.provider, res.statusCode, text);
        if (res.statusCode === 429 || res.statusCode >= 500) {
          if (res.statusCode === 429) m.llmRateLimitHits.labels(dep.config.id).inc();
          else fleet.state.failed(dep, this.now());
          lastError = retryable(err, res.statusCode, res.headers['retry-after']);
          m.llmRetries.labels(group.name, res.statusCode === 429 ? 'rate_limited' : 'upstream_5xx').inc();
          this.deps.logger.warn({ trace_id: requestId, deployment: dep.config.id, status: res.statusCode }, 'upstream refused before the first byte');
          continue;
        }
        // The client's own mistake as the upstream saw it: pass it on, no retry.
        this.finish(group, dep, 'client_error', startedAt, waited, up.stream);
        throw err;
      }

      fleet.state.succeeded(dep);
      try {
        const outcome = up.stream
          ? await this.stream(api, route.provider, kind, group, dep, requestId, model, up.includeUsage, res.body, sink, abort.signal)
          : await this.whole(route, model, requestId, dep, res.body, sink, group);
        waited += outcome.waited;
        this.finish(group, dep, outcome.outcome, startedAt, waited, up.stream);
      } finally {
        dep.inFlight--;
      }
      return;
    }

    m.llmRequests.labels(group.name, 'none', 'no_deployment').inc();
    throw lastError ?? new BrokerError('upstream_unavailable', `no deployment of ${group.name} is available`);
  }

  /** Non-streamed reply: read it whole, translate, send. */
  private async whole(
    route: { client: Api; provider: Api; kind: Kind },
    model: string,
    requestId: string,
    dep: DeploymentState,
    body: AsyncIterable<Uint8Array> & { bytes(): Promise<Uint8Array> },
    sink: ReplySink,
    group: ModelGroupConfig,
  ): Promise<{ outcome: Outcome; waited: number }> {
    const t0 = performance.now();
    let bytes: Uint8Array;
    try {
      bytes = await body.bytes();
    } catch (err) {
      if (sink.aborted) return { outcome: 'aborted', waited: performance.now() - t0 };
      throw bodyError(err);
    }
    const waited = performance.now() - t0;
    const reply = translateResponse(route, bytes, { model, id: requestId });
    if (reply.usage !== null) this.countTokens(group, reply.usage.promptTokens, reply.usage.completionTokens);
    sink.send(200, { 'content-type': 'application/json', 'x-broker-deployment': dep.config.id }, reply.body);
    return { outcome: 'ok', waited };
  }

  /** Streamed reply through the compiled chain, with backpressure and an explicit terminal error. */
  private async stream(
    api: Api,
    provider: Api,
    kind: Kind,
    group: ModelGroupConfig,
    dep: DeploymentState,
    requestId: string,
    model: string,
    includeUsage: boolean,
    body: AsyncIterable<Uint8Array>,
    sink: ReplySink,
    signal: AbortSignal,
  ): Promise<{ outcome: Outcome; waited: number }> {
    const m = this.deps.metrics;
    const chain = compileChain({ client: api, provider, kind, instrument: this.deps.instrument, countTokens: true });
    const startedAt = performance.now();
    let lastTokenAt = 0;
    const ttft = m.llmTtft.labels(group.name, dep.config.id);
    const interToken = m.llmInterToken.labels(group.name);
    const s = chain.open({
      model,
      id: requestId,
      includeUsage,
      now: () => performance.now(),
      onFirstToken: (at: number) => ttft.observe((at - startedAt) / 1000),
      onToken: (at: number) => {
        if (lastTokenAt !== 0) interToken.observe((at - lastTokenAt) / 1000);
        lastTokenAt = at;
      },
    });
    sink.start(200, { 'content-type': streamContentType(api), 'cache-control': 'no-cache', 'x-broker-deployment': dep.config.id });
    let waited = 0;
    let outcome: Outcome = 'ok';
    let t = performance.now();
    try {
      for await (const chunk of body) {
        const got = performance.now();
        waited += got - t;
        const out = s.push(chunk);
        if (out !== null && !sink.write(out)) await drained(sink, signal);
        t = performance.now();
      }
      waited += performance.now() - t;
      // end() writes what is still owed: [DONE] or the done line, or the error event of a cut stream.
      const tail = s.end();
      if (s.truncated || s.stats.error !== null) {
        outcome = 'midstream_error';
        const reason = s.truncated ? 'truncated' : s.stats.error!.code;
        m.llmMidstreamErrors.labels(group.name, dep.config.id, reason).inc();
        this.deps.logger.warn({ trace_id: requestId, deployment: dep.config.id, reason }, 'upstream stream ended without completing');
      }
      sink.end(tail ?? undefined);
    } catch (err) {
      if (sink.aborted) outcome = 'aborted';
      else {
        const e = bodyError(err);
        outcome = e.code === 'upstream_timeout' ? 'timeout' : 'midstream_error';
        m.llmMidstreamErrors.labels(group.name, dep.config.id, e.code).inc();
        this.deps.logger.warn({ trace_id: requestId, deployment: dep.config.id, err: e.message }, 'upstream failed mid-stream');
        sink.end(s.fail(e.message, e.code));
      }
    }
    this.countTokens(group, s.stats.promptTokens, s.stats.completionTokens);
    return { outcome, waited };
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

function drained(sink: ReplySink, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      signal.removeEventListener('abort', done);
      resolve();
    };
    signal.addEventListener('abort', done);
    sink.onWritable(done);
  });
}

function connectError(err: unknown, dep: DeploymentState): BrokerError {
  const e = err as Error & { code?: string };
  if (e instanceof undiciErrors.HeadersTimeoutError || e instanceof undiciErrors.ConnectTimeoutError) {
    return new BrokerError('upstream_timeout', `deployment ${dep.config.id} timed out (${e.code})`, { cause: err });
  }
  return new BrokerError('upstream_unavailable', `deployment ${dep.config.id} is unreachable: ${e.code ?? e.message}`, { cause: err });
}

function bodyError(err: unknown): BrokerError {
  if (err instanceof BrokerError) return err;
  if (err instanceof undiciErrors.BodyTimeoutError) return new BrokerError('upstream_timeout', 'upstream stopped sending (idle timeout)', { cause: err });
  const e = err as Error & { code?: string };
  return new BrokerError('upstream_error', `upstream connection failed: ${e.code ?? e.message}`, { cause: err });
}

function retryable(err: BrokerError, status: number, retryAfter: string | string[] | undefined): BrokerError {
  // After the last deployment this is what the client sees: 503 for an upstream 429
  // (with its Retry-After), 502 for an upstream 5xx.
  const seconds = typeof retryAfter === 'string' && /^\d+$/.test(retryAfter) ? Number(retryAfter) : 1;
  return status === 429
    ? new BrokerError('upstream_unavailable', `every deployment is rate limited (last: ${err.message})`, { retryAfter: seconds })
    : new BrokerError('upstream_error', err.message);
}
