// The LLM proxy: one client request → a deployment of its model group → the
// upstream reply translated into the client's API.
//
// Rules that matter to clients:
// - The response cache answers first when the group and request allow it (cache/).
// - Retry on another deployment only before the first byte reached the client
//   (connect error, timeout, 5xx, 429), then on the group's fallbacks (context errors
//   on its contextFallbacks); never after. The status line leaves with the first chunk,
//   so a stream that fails before sending anything can still go elsewhere.
// - A client that goes away aborts the upstream request at once.
// - A slow client pauses the upstream read (we wait for the sink to drain).
// - A stream cut after tokens were sent ends with an explicit error event.
import { performance } from 'node:perf_hooks';
import { errors as undiciErrors } from 'undici';
import { BrokerError, toBrokerError, type ErrorCode } from '../errors.ts';
import type { Logger } from '../obs/logger.ts';
import type { Metrics } from '../obs/metrics.ts';
import type { ReplySink } from '../front/reply.ts';
import { maxTokensFieldOf, type ModelGroupConfig } from '../config/broker-config.ts';
import type { Lease } from '../sched/scheduler.ts';
import type { DeploymentState } from '../fleet/deployments.ts';
import type { Admitted, Leases } from '../sched/governance.ts';
import type { Attempt, Executor, StreamResult, StreamTarget } from './exec/types.ts';
import { clientStreams, streamContentType, translateRequest, translateResponse, upstreamError, upstreamRoute, upstreamKind, type ClientApi, type Kind } from './translate/index.ts';
import { clientWantsUsage } from './translate/openai_to_openai.ts';
import { abortedFinish } from './translate/common.ts';
import { classifyStreamError, classifyUpstreamError, retriable, type UpstreamErrorClass } from './upstream-class.ts';
import { Timeline, overheadHeader } from './phases.ts';
import { closedUnder } from '../fleet/upstreams.ts';
import { contextTokensOf, maxOutputTokensOf, tokensOfChars, type LlmRequest } from './request.ts';
import { cacheGroupOf, cachePlan, type CachePlan, type ResponseCache } from './cache/cache.ts';
import { captureStream, captureWhole, withModel, type CachedReply } from './cache/entry.ts';
import { replay } from './cache/replay.ts';
import { tierAllows } from '../policy/qos.ts';
import { RequestAbort, type AbortLike } from '../abort.ts';
import type { Span } from '../obs/trace/span.ts';
import { attemptSpan, queueWaitSpan } from '../obs/trace/llm.ts';
import type { RequestFacts } from '../track/facts.ts';

export interface ProxyDeps {
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly executor: Executor;
  readonly leases: Leases;
  /** The response cache; absent: no cache (and no x-broker-cache header). */
  readonly cache?: ResponseCache | undefined;
}

/** How often a deployment's junk events are logged (the metric counts every one). */
const MALFORMED_WARN_EVERY_MS = 60_000;

/**
 * A stream's headers besides its type: not cached, and not buffered by nginx in front (it
 * buffers a backend's reply by default: tokens would come in bursts, or at the end).
 */
const STREAM_HEADERS = Object.freeze({ 'cache-control': 'no-cache', 'x-accel-buffering': 'no' });

// A stream cut after its 200 is midstream_*: the availability SLO counts those, while the
// failures before the first byte (timeout, upstream_error) it counts by their 5xx.
type Outcome = 'ok' | 'client_error' | 'upstream_error' | 'midstream_error' | 'midstream_timeout' | 'shutting_down' | 'aborted' | 'timeout';

/** llm_requests_total's coarse outcome (seed 001's error-rate query reads outcome="error"); the fine one is its reason. */
function coarse(reason: string): 'ok' | 'error' | 'client_error' | 'aborted' {
  if (reason === 'ok' || reason === 'client_error' || reason === 'aborted') return reason;
  return reason === 'quota_exceeded' || reason === 'budget_exceeded' ? 'client_error' : 'error';
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

  /** A request answered here with no upstream call (Ollama's load or unload, an embed of no input): one outcome in its group's requests. */
  answeredHere(group: string): void {
    this.deps.metrics.llmRequests.labels(group, 'none', 'ok', 'answered_here').inc();
  }

  /** A request its group refused before any upstream call (the key's quota or budget, its QoS tier): counted in llm_requests_total, deployment none. */
  refused(group: string, err: BrokerError): void {
    // A key's spend is counted apart: FinOps reads budget refusals from the metrics as from tracking.
    const reason = err.code === 'quota_exceeded' || err.code === 'budget_exceeded' ? err.code : err.status < 500 ? 'client_error' : err.code;
    this.deps.metrics.llmRequests.labels(group, 'none', coarse(reason), reason).inc();
  }

  /** Ends every running request with shutting_down (open streams get their error event) and refuses new ones. */
  abortAll(): void {
    this.stopped = new BrokerError('shutting_down', 'the broker shut down before the reply was complete');
    for (const a of this.running) a.abort(this.stopped);
  }

  /**
   * Runs an admitted request: the cache, then leases and attempts (retried on another
   * deployment, then on the fallback groups, before the first byte), then the reply.
   * `span`: the request's, when traced. `groups`: the fleet's, to find fallbacks by name.
   */
  async run(admitted: Admitted, group: ModelGroupConfig, sink: ReplySink, span?: Span, groups?: ReadonlyMap<string, ModelGroupConfig>): Promise<void> {
    if (this.stopped !== undefined) throw this.stopped;
    const req = admitted.request;
    const timeline = new Timeline(req.startedAt);
    // Reply headers this request adds (x-broker-cache, x-broker-fallback, x-ratelimit-*), error replies included.
    const headers: Record<string, string> = {};
    sink.extraHeaders = sink.extraHeaders === undefined ? headers : Object.assign(headers, sink.extraHeaders);
    const cache = req.encoder === 'grpc' ? undefined : this.deps.cache;
    // Keyed on the body that goes upstream: a QoS tier may have capped its max tokens.
    const plan = cache === undefined ? null : cachePlan(cache.modeOf(group), req, cacheGroupOf(group), admitted.body, cache.scope);
    if (cache !== undefined) headers['x-broker-cache'] = 'miss';
    span?.set('broker.cache', plan === null ? 'off' : 'miss');
    if (plan !== null && plan.lookup) {
      // A hit is answered here, before any of an upstream request's bookkeeping is set up.
      const found = cache!.get(plan, group.name);
      const hit = found instanceof Promise ? await found : found;
      if (hit !== undefined || sink.aborted) {
        if (hit !== undefined) span?.set('broker.cache', 'hit');
        try {
          if (!sink.aborted) this.replayHit(hit!, req, group, sink, headers, timeline, clientStreams(req.api, admitted.body), admitted.body);
          else {
            // Gone while Redis was asked: counted, as a request gone anywhere else.
            this.deps.metrics.llmRequests.labels(group.name, 'none', 'aborted', 'aborted').inc();
            if (req.facts !== undefined) req.facts.outcome = 'aborted';
          }
        } finally {
          const facts = req.facts;
          if (facts !== undefined) {
            facts.promptTokens = 0;
            facts.completionTokens = 0;
            facts.ttftMs = undefined;
            facts.upstreamMs = 0;
          }
          // Nothing learned about any deployment, and quotas are not charged.
          this.deps.leases.completed(admitted, null, { ok: null, promptTokens: 0, completionTokens: 0, ttftMs: null, durationMs: performance.now() - req.startedAt, cached: hit !== undefined });
        }
        return;
      }
    }
    // Missed (or not cacheable): now the key's quota, which a hit does not take.
    let reserved = admitted;
    if (admitted.quotaDue !== undefined) {
      try {
        const r = this.deps.leases.reserveQuota(admitted);
        reserved = r instanceof Promise ? await r : r;
      } catch (err) {
        this.refused(group.name, err as BrokerError);
        // Checked after the cache lookup, so after llm.admission ended: the refusal has its own span.
        if (span !== undefined) {
          const e = toBrokerError(err);
          span.child('llm.quota').fail(e.code, e.message).end();
        }
        throw err;
      }
    }
    if (reserved.rateLimitHeaders !== undefined) Object.assign(headers, reserved.rateLimitHeaders);
    return this.proxy(reserved, group, sink, timeline, headers, plan, span, groups);
  }

  /** A request the cache did not answer: leases, attempts, fallbacks, the reply, and its capture for the cache. */
  private async proxy(admitted: Admitted, group: ModelGroupConfig, sink: ReplySink, timeline: Timeline, headers: Record<string, string>, plan: CachePlan | null, span?: Span, groups?: ReadonlyMap<string, ModelGroupConfig>): Promise<void> {
    const gov = this.deps.leases;
    const { flags, body } = admitted;
    const { api, kind, model } = admitted.request;
    const req = admitted.request;
    const cache = this.deps.cache;
    const abort = new RequestAbort();
    sink.onAbort((reason) => abort.abort(reason));
    // The broker's shutdown, past its grace period: every request's (abortAll), or this one's (a gRPC call it ended).
    const shutDown = (): BrokerError | undefined => this.stopped ?? (abort.reason instanceof BrokerError && abort.reason.code === 'shutting_down' ? abort.reason : undefined);
    this.running.add(abort);
    const m = this.deps.metrics;
    // Time a stream spent waiting on its upstream after the first byte (the timeline has the time before), for tracking.
    let streamWaitMs = 0;
    const tried = new Set<string>();
    let lastError: BrokerError | undefined;
    /** The failed attempt whose retry is counted (llm_upstream_retries_total) once another attempt goes. */
    let pendingRetry: { group: string; reason: string } | undefined;
    // The deployment that failed last, and its group: a request whose attempts all failed is
    // counted under it (as a served one is under its deployment), when it ends in that group.
    let lastTried: { group: string; id: string } | undefined;
    // The deployment whose failure (one held against it) was the request's last: its
    // analytics count the request when no other deployment answers it.
    let lastFailed: string | undefined;
    const failed = (l: Lease, counts: boolean, clientSees = counts): void => {
      gov.attemptFailed(l, counts);
      lastFailed = clientSees ? l.dep.config.id : undefined;
    };
    // The request as no deployment tried so far can carry it (translateRequest's refusal): the
    // client's error when no other deployment is left.
    let untranslatable: BrokerError | undefined;
    const failedOn = (group: string): string => (lastTried?.group === group ? lastTried.id : 'none');
    let lease: Lease | null = null;
    const usage: Usage = { ok: false, promptTokens: 0, completionTokens: 0, ttftMs: null };
    // Request tracking's record, filled in as the request goes (undefined: not tracked).
    const facts = req.facts;
    try {
      // The prompt's tokens as admission estimated them (characters / 4): what a request with no usage from its upstream is charged.
      const promptEstimate = tokensOfChars(req.promptChars);
      // The output limit that goes upstream: a QoS tier may have capped the client's.
      const outputLimit = admitted.body === req.body ? req.maxTokens : maxOutputTokensOf(admitted.body, api);
      const estimate = contextTokensOf({ ...req, maxTokens: outputLimit });
      const fits = (g: ModelGroupConfig): boolean => g.maxContextTokens === undefined || estimate <= g.maxContextTokens;
      // A fallback group is one more group the request uses: its QoS tier must allow it too.
      const usable = (g: ModelGroupConfig): boolean => fits(g) && tierAllows(admitted.tier, g.name);
      // A group passed over as too small still leads on: its contextFallbacks (larger groups),
      // then, unless the request is moving for its length, its plain fallbacks. One the tier
      // may not use leads nowhere (the tier bounds every group the request uses).
      const beyond = (s: ModelGroupConfig, f: Fallback): Fallback[] => (fits(s) || !tierAllows(admitted.tier, s.name) ? [] : [...fallbacksOf(s.contextFallbacks, true), ...(f.context ? [] : fallbacksOf(s.fallbacks, false))]);
      // The fallback groups still to try, by name, each marked by the list it came from
      // (a context error may only go to contextFallbacks), and why the request is moving.
      let queue: Fallback[] = [];
      let why: 'failure' | 'context_length' | 'context_window' = 'failure';
      let g = group;
      const visited = new Set<string>([group.name]);
      let moveOn = false;
      if (!fits(group)) {
        // The output limit in force named: the client's, or the one its QoS tier put on it.
        const what = req.contextChars !== undefined ? `an input (about ${estimate} tokens)` : outputLimit !== undefined ? `the prompt (about ${promptEstimate} tokens) and its output limit of ${outputLimit} tokens${outputLimit !== req.maxTokens ? ` (its QoS tier's)` : ''}` : `the prompt (about ${estimate} tokens)`;
        lastError = new BrokerError('context_length_exceeded', `${what} does not fit model group ${group.name} (maxContextTokens ${group.maxContextTokens})`, { details: { field: promptField(api, kind) } });
        queue = fallbacksOf(group.contextFallbacks, true);
        why = 'context_window';
        moveOn = true;
      }
      for (;;) {
        if (moveOn) {
          const next = nextGroup(queue, visited, usable, groups, beyond);
          if (next === undefined) {
            // Out of groups (a cycle of fallbacks ends here too): counted as the last failure.
            const reason = clientFault(lastError!) ? 'client_error' : exhaustedReason(lastError, tried.size > 0);
            m.llmRequests.labels(g.name, reason === 'client_error' ? 'none' : failedOn(g.name), coarse(reason), reason).inc();
            if (facts !== undefined) facts.outcome = reason;
            throw lastError!;
          }
          m.llmFallbacks.labels(g.name, next.name, why).inc();
          this.deps.logger.warn({ trace_id: req.id, from: g.name, to: next.name, reason: why }, 'falling back to another model group');
          g = next;
          visited.add(g.name);
          headers['x-broker-fallback'] = g.name;
          span?.set('broker.fallback', g.name);
          if (facts !== undefined) facts.servedGroup = g.name;
          moveOn = false;
        }
        const retry = tried.size;
        const waitSpan = span === undefined ? undefined : queueWaitSpan(span, g.name, retry);
        const waitFrom = performance.now();
        // A full group with a fallback still to try sends the request there rather than queue it
        // (docs/llm.md: "none available ... at capacity"); the last group of the chain queues.
        const fallbackLeft = ((g.fallbacks?.length ?? 0) > 0 || queue.length > 0) && nextGroup([...fallbacksOf(g.fallbacks, false), ...queue], new Set(visited), usable, groups, beyond) !== undefined;
        try {
          lease = await gov.acquire(admitted, g, tried, abort, !fallbackLeft);
          timeline.queueMs += performance.now() - waitFrom;
          if (facts !== undefined) {
            facts.queueMs = (facts.queueMs ?? 0) + (performance.now() - waitFrom);
            facts.deployment = lease.dep.config.id;
            facts.retries = retry;
          }
        } catch (err) {
          timeline.queueMs += performance.now() - waitFrom;
          const code = (err as BrokerError).code;
          if (facts !== undefined) facts.queueMs = (facts.queueMs ?? 0) + (performance.now() - waitFrom);
          // A client that left is no failure: broker.aborted, status unset (as on llm.upstream).
          if (sink.aborted) waitSpan?.set('broker.aborted', true).end();
          // No deployment left after this group's attempts failed: no wait went wrong (the failures
          // are on their llm.upstream spans), so not an error here, which alerts on waits would count.
          else if (code === 'upstream_unavailable' && lastTried?.group === g.name) waitSpan?.set('llm.deployments_left', 0).end();
          else waitSpan?.fail(code ?? 'internal', (err as Error).message).end();
          const stop = shutDown();
          if (sink.aborted && stop === undefined) {
            // Gone while queued for a lease (or waiting to fall back): one outcome, as any other.
            m.llmRequests.labels(g.name, 'none', 'aborted', 'aborted').inc();
            if (facts !== undefined) facts.outcome = 'aborted';
            return;
          }
          if (stop !== undefined) {
            m.llmRequests.labels(g.name, 'none', coarse('shutting_down'), 'shutting_down').inc();
            if (facts !== undefined) facts.outcome = 'shutting_down';
            throw stop;
          }
          if (code === 'upstream_unavailable' && untranslatable !== undefined && lastError === untranslatable) {
            if (g.deployments.every((d) => tried.has(d.id))) {
              // No deployment of the group can carry it, and none failed: the client's error, no
              // fallback (which is for failures). Counted as a refusal (deployment none): no call was made.
              usage.ok = null;
              m.llmRequests.labels(g.name, 'none', 'client_error', 'client_error').inc();
              if (facts !== undefined) facts.outcome = 'client_error';
              throw untranslatable;
            }
            // One that might carry it is unavailable (breaker open, drained): that is the answer
            // (503, or the fallbacks'), not the refusal of the one that cannot.
            lastError = untranslatable = undefined;
          }
          // Every deployment of the group failed or none can take it: the fallback groups.
          // A deployment quota spent on every deployment of the group is "none available" too.
          if ((code === 'upstream_unavailable' || code === 'capacity_exhausted' || code === 'quota_exceeded') && (queue.length > 0 || (g.fallbacks?.length ?? 0) > 0)) {
            if (lastError === undefined || clientFault(lastError)) lastError = err as BrokerError;
            queue = [...fallbacksOf(g.fallbacks, false), ...queue];
            why = 'failure';
            moveOn = true;
            continue;
          }
          // A retry that finds no lease (none left, the group full, or the request's queue wait
          // spent by the attempt that failed): the last upstream failure says what happened, not
          // "none left" or "waited 5013 ms for a free deployment".
          const afterFailure = tried.size > 0 && lastError !== undefined && !clientFault(lastError) && (code === 'queue_timeout' || code === 'capacity_exhausted' || code === 'quota_exceeded');
          const exhausted = code === 'upstream_unavailable' || afterFailure;
          const reason = exhausted ? exhaustedReason(lastError, tried.size > 0) : code;
          m.llmRequests.labels(g.name, exhausted ? failedOn(g.name) : 'none', coarse(reason), reason).inc();
          if (facts !== undefined) facts.outcome = reason;
          if ((code === 'upstream_unavailable' || afterFailure) && lastError !== undefined) throw lastError;
          throw err;
        }
        const dep = lease.dep;
        waitSpan?.set('llm.deployment', dep.config.id).end();
        tried.add(dep.config.id);
        const provider = dep.config.provider;
        // The (client API, provider, upstream kind) of this attempt: one compiled chain each.
        const route = upstreamRoute(api, kind, dep.config, body);
        let up: ReturnType<typeof translateRequest>;
        try {
          up = translateRequest(route, body, dep.config.model, dep.config.upstreamStreaming, maxTokensFieldOf(dep.config.maxTokensField, dep.config.url), g.maxContextTokens);
        } catch (err) {
          // The request cannot be written for this upstream (e.g. token ids for Ollama, a
          // content block it has no word for): not the deployment's fault (its breaker would
          // open for everyone). Another deployment of the group may speak a wire format that
          // carries it: tried next, and the request is refused only when none can.
          gov.attemptSkipped(admitted, lease);
          lease = null;
          if (lastError === undefined || clientFault(lastError)) lastError = untranslatable = err as BrokerError;
          continue;
        }
        // The deployment a failure is counted under: one that was called.
        lastTried = { group: g.name, id: dep.config.id };
        // Counted when the next attempt goes, not when one fails: a last failure is no retry.
        if (pendingRetry !== undefined) {
          m.llmRetries.labels(pendingRetry.group, pendingRetry.reason).inc();
          pendingRetry = undefined;
        }
        const upSpan = span === undefined ? undefined : attemptSpan(span, dep.config, g.name, retry, up.stream, kind);
        const sentAt = performance.now();
        let attempt: Attempt;
        try {
          attempt = await this.deps.executor.attempt(
            {
              deployment: dep.config,
              kind: upstreamKind(route),
              body: up.body,
              stream: up.stream,
              assemble: up.assemble,
              chain: { ...route, instrument: flags.stream_instrumentation, countTokens: true, encoder: req.encoder },
              compiled: flags.compiled_chain,
              model,
              id: req.replyId,
              requestId: req.id,
              includeUsage: up.includeUsage,
              promptEstimate,
              request: body,
              // W3C Trace Context for the upstream: this attempt is its parent; not recorded, the client's as it came.
              traceparent: upSpan !== undefined ? upSpan.traceparent : req.traceparent,
              tracestate: upSpan !== undefined ? upSpan.tracestate : req.tracestate,
            },
            abort,
          );
        } catch (err) {
          timeline.upstream(sentAt, performance.now());
          // Neither a client gone nor the broker's shutdown says anything of the deployment's health.
          const stop = shutDown();
          failed(lease, !sink.aborted && stop === undefined);
          lease = null;
          if (stop !== undefined) {
            upSpan?.fail('shutting_down').end();
            this.cutByShutdown(req, usage, promptEstimate, 0, g, dep, up.stream);
            throw stop;
          }
          if (sink.aborted) {
            // The request went upstream: its prompt is charged, as a stream's is when cut, and counted.
            usage.promptTokens = promptEstimate;
            this.countTokens(g, promptEstimate, 0);
            upSpan?.set('broker.aborted', true).end();
            return this.finish(facts, g, dep, 'aborted', req.startedAt, up.stream);
          }
          lastError = connectError(err, dep);
          this.countTimeout(dep, lastError);
          upSpan?.fail(lastError.code, lastError.message).end();
          pendingRetry = { group: g.name, reason: lastError.code };
          this.deps.logger.warn({ trace_id: req.id, deployment: dep.config.id, err: lastError.message }, 'upstream failed before the first byte');
          continue;
        }
        const headersAt = performance.now();
        upSpan?.set('http.response.status_code', attempt.status);

        if (attempt.status >= 300) {
          const text = await attempt.errorText().catch(() => '');
          timeline.upstream(sentAt, performance.now());
          const err = upstreamError(provider, attempt.status, text, dep.config.apiKey === undefined ? [] : [dep.config.apiKey]);
          const cls = classifyUpstreamError(provider, attempt.status, text);
          m.llmUpstreamErrors.labels(dep.config.id, cls).inc();
          upSpan?.fail(String(attempt.status), err.message).end();
          if (cls === 'context_length') {
            // The prompt is too long for this group's models: a larger group may take it.
            failed(lease, false);
            lease = null;
            // Named in the client's API: its prompt field, not the field the upstream's API blamed.
            const passOn = new BrokerError('context_length_exceeded', (err.details?.['upstreamMessage'] as string | undefined) || err.message, { details: { ...err.details, class: cls, field: promptField(api, kind) } });
            // Plain fallbacks still queued (from a failure before) do not take it.
            const larger = [...fallbacksOf(g.contextFallbacks, true), ...queue.filter((f) => f.context)];
            if (larger.length > 0) {
              lastError = passOn;
              queue = larger;
              why = 'context_length';
              moveOn = true;
              continue;
            }
            usage.ok = true;
            this.finish(facts, g, dep, 'client_error', req.startedAt, up.stream);
            throw passOn;
          }
          if (retriable(cls)) {
            // A 429 says the deployment is busy, not broken: no health penalty. A 401/403/404
            // says it cannot serve this (its key, its models): as a 5xx, the next one may.
            // A 429 is no fault of the deployment's, but a client that gets it last sees an error.
            failed(lease, attempt.status !== 429, true);
            lease = null;
            if (attempt.status === 429) m.llmRateLimitHits.labels(dep.config.id).inc();
            lastError = exhausted(err, attempt.status, attempt.retryAfter, cls, lastError);
            pendingRetry = { group: g.name, reason: attempt.status === 429 ? 'rate_limited' : attempt.status >= 500 ? 'upstream_5xx' : 'upstream_refused' };
            this.deps.logger.warn({ trace_id: req.id, deployment: dep.config.id, status: attempt.status, class: cls, upstream_message: err.details?.['upstreamMessage'] }, 'upstream refused before the first byte');
            continue;
          }
          // The client's own mistake as the upstream saw it: pass it on, no retry.
          usage.ok = true;
          this.finish(facts, g, dep, 'client_error', req.startedAt, up.stream);
          throw err;
        }

        let outcome: Outcome;
        if (up.stream) {
          // The status line goes out with the first chunk: until then a failed attempt
          // (a first-byte timeout, a reset) can still be retried elsewhere.
          const capture = plan !== null && headers['x-broker-fallback'] === undefined ? new Capture(cache!.maxEntryBytes) : undefined;
          let started = false;
          const start = (): void => {
            if (started) return;
            started = true;
            // Up to the chunk that gave the client its first byte: keep-alive comments before it are the upstream's wait.
            const upstreamFirst = attempt.timing.lastChunkAt < 0 ? performance.now() : attempt.timing.lastChunkAt;
            timeline.upstream(writtenAt(attempt, sentAt), upstreamFirst);
            timeline.firstByteAt = upstreamFirst;
            const overhead = timeline.clientFirstByte();
            sink.start(200, { 'content-type': streamContentType(api), ...STREAM_HEADERS, 'x-broker-deployment': dep.config.id, ...headers, 'x-broker-overhead-ms': overheadHeader(overhead) });
          };
          // Only a stream that completed cleanly is stored; a cut one never is. Stored as its
          // terminal chunk goes out, before its last byte and before the upstream ends its
          // response: a client that repeats the request once it has read the terminal event,
          // on another connection (another thread, which has the entry by message), hits.
          // And only one whose upstream said how it finished: a reply that just stopped (a role
          // chunk then [DONE], say) is served as it came, but is not a reply to repeat.
          let stored = false;
          const store = (s: Completed): void => {
            if (stored || capture === undefined || s.finishReason === null || abortedFinish(s.finishReason)) return;
            stored = true;
            const e = capture.entry(api, kind, s.usageFromUpstream ? s.promptTokens : promptEstimate, s.completionTokens);
            if (e !== null) cache!.put(plan!, group.name, e, performance.timeOrigin + req.startedAt);
          };
          const r = await attempt.pump(targetOf(sink, abort, start, capture, store));
          streamWaitMs = r.waitedMs;
          if (!started && r.ended === 'failed' && !sink.aborted) {
            // Nothing reached the client: as a failure before the first byte (the broker's own
            // shutdown is no fault of the upstream's: no health penalty).
            timeline.upstream(sentAt, performance.now());
            failed(lease, this.stopped === undefined);
            lease = null;
            lastError = new BrokerError((r.errorCode ?? 'upstream_error') as ErrorCode, r.errorMessage ?? 'upstream stream failed');
            this.countTimeout(dep, lastError, attempt.expired());
            // An error the upstream said in its 200 (not a cut, not a timeout): counted by class, as a refusal.
            if (r.upstreamSaid === true) m.llmUpstreamErrors.labels(dep.config.id, classifyStreamError(r.errorMessage ?? '')).inc();
            upSpan?.fail(lastError.code, lastError.message).end();
            if (this.stopped !== undefined) {
              this.finish(facts, g, dep, 'upstream_error', req.startedAt, true);
              throw this.stopped;
            }
            pendingRetry = { group: g.name, reason: lastError.code };
            this.deps.logger.warn({ trace_id: req.id, deployment: dep.config.id, err: lastError.message }, 'upstream stream failed before the first byte');
            continue;
          }
          if (!started && !sink.aborted) start();
          // Time to first token from when the request left for the upstream.
          usage.ttftMs = r.firstTokenMs === null ? null : headersAt - sentAt + r.firstTokenMs;
          // The attempt's span ends within the request's, which ends with the reply.
          if (upSpan !== undefined) {
            // The client leaving is no failure of the upstream's: said, not an error status.
            if (r.ended === 'aborted') upSpan.set('broker.aborted', true);
            else if (r.ended !== 'complete') upSpan.fail(r.errorCode ?? r.ended, r.errorMessage ?? undefined);
            endAttempt(upSpan, usage.ttftMs, r.usageFromUpstream ? r.promptTokens : undefined, r.completionTokens);
          }
          // A terminal event that wrote nothing for the client (or the staged baseline, which does not say): stored now.
          if (r.ended === 'complete') store(r);
          // A failed stream ends with its error: gRPC's status, or over HTTP (where the chain
          // wrote the error event into the stream already) only in the front's records.
          if (sink.endWithError !== undefined && r.ended !== 'complete' && r.ended !== 'aborted') {
            sink.endWithError(new BrokerError((r.errorCode ?? 'upstream_error') as ErrorCode, r.errorMessage ?? 'upstream stream failed'));
          } else {
            sink.end();
          }
          if (r.ended === 'failed') this.countTimeout(dep, new BrokerError((r.errorCode ?? 'upstream_error') as ErrorCode, r.errorMessage ?? ''), attempt.expired());
          // Cut, aborted, or from an upstream that sends no usage: the upstream still read the
          // whole prompt, so quotas, budgets, the tracking row and llm_tokens_total count
          // admission's estimate of it (4 characters a token), not 0.
          usage.promptTokens = r.usageFromUpstream ? r.promptTokens : promptEstimate;
          usage.completionTokens = r.completionTokens;
          outcome = this.streamOutcome(r, usage.promptTokens, usage.ttftMs, g, dep, req.id, flags.stream_instrumentation);
          // No verdict on the upstream for a stream the client left, or that the broker's own
          // shutdown cut: neither may count against its breaker or its performance.
          usage.ok = outcome === 'aborted' || outcome === 'shutting_down' ? null : outcome === 'ok';
        } else {
          let bytes: Uint8Array;
          try {
            bytes = await attempt.bytes();
          } catch (err) {
            timeline.upstream(sentAt, performance.now());
            const stop = shutDown();
            if (stop !== undefined) {
              this.cutByShutdown(req, usage, promptEstimate, attempt.assembled?.().tokens ?? 0, g, dep, false);
              throw stop;
            }
            if (sink.aborted) {
              usage.ok = null;
              usage.promptTokens = promptEstimate;
              // Assembled from a stream: the tokens generated before the client left, as a stream's are charged.
              usage.completionTokens = attempt.assembled?.().tokens ?? 0;
              this.countTokens(g, usage.promptTokens, usage.completionTokens);
              upSpan?.set('broker.aborted', true).end();
              return this.finish(facts, g, dep, 'aborted', req.startedAt, false);
            }
            // Nothing was sent to the client yet: a timeout or a cut body may go elsewhere.
            const e = err instanceof BrokerError ? err : new BrokerError('upstream_error', `upstream failed while sending its reply: ${cutMessage(err)}`, { cause: err });
            upSpan?.fail(e.code, e.message).end();
            if (e.details?.['reason'] === 'too_large') {
              // A server that answers is not failing: a reply too large for this broker says
              // nothing of its health, and counted against its breaker, any client asking for
              // a big reply (a large embeddings batch) would take it from everyone.
              usage.ok = null;
              // The upstream still read the prompt and generated (what an assembled stream counted):
              // charged as a cut stream is, not free to repeat.
              usage.promptTokens = promptEstimate;
              usage.completionTokens = attempt.assembled?.().tokens ?? 0;
              this.finish(facts, g, dep, 'upstream_error', req.startedAt, false);
              throw e;
            }
            failed(lease, true);
            lease = null;
            lastError = e;
            this.countTimeout(dep, e, attempt.expired());
            pendingRetry = { group: g.name, reason: e.code };
            continue;
          }
          const doneAt = performance.now();
          const dropped = attempt.assembled?.().malformed ?? 0;
          if (dropped > 0) {
            this.countMalformed(dep.config.id, req.id, dropped);
          }
          timeline.upstream(writtenAt(attempt, sentAt), attempt.timing.firstByteAt < 0 ? doneAt : attempt.timing.firstByteAt);
          // The whole body arriving is the upstream's time too.
          if (attempt.timing.firstByteAt >= 0) timeline.upstream(attempt.timing.firstByteAt, doneAt);
          timeline.firstByteAt = doneAt;
          let reply: ReturnType<typeof translateResponse>;
          try {
            reply = translateResponse(route, bytes, { model, id: req.replyId, request: body, promptEstimate, elapsedMs: doneAt - req.startedAt, ...(dep.config.apiKey !== undefined ? { secrets: [dep.config.apiKey] } : {}) });
          } catch (err) {
            // A 200 whose body is no reply (empty, not JSON, a failed response): nothing was
            // sent to the client, so as any failure before the first byte, it may go elsewhere.
            const e = toBrokerError(err);
            if (e.code !== 'upstream_error') throw err;
            // An error the upstream said in its 200 (an assembled stream's error event too): counted by class, as a stream's.
            const said = e.details?.['upstreamMessage'];
            if (typeof said === 'string') m.llmUpstreamErrors.labels(dep.config.id, classifyStreamError(said)).inc();
            upSpan?.fail(e.code, e.message).end();
            failed(lease, true);
            lease = null;
            lastError = e;
            pendingRetry = { group: g.name, reason: e.code };
            this.deps.logger.warn({ trace_id: req.id, deployment: dep.config.id, err: e.message }, 'upstream reply unusable');
            continue;
          }
          if (reply.usage !== null) {
            this.countTokens(g, reply.usage.promptTokens, reply.usage.completionTokens);
            usage.promptTokens = reply.usage.promptTokens;
            usage.completionTokens = reply.usage.completionTokens;
          } else {
            // An upstream that reports no usage: the prompt's estimate and the reply's, as for a stream.
            usage.promptTokens = promptEstimate;
            usage.completionTokens = reply.estimatedCompletionTokens ?? 0;
            this.countTokens(g, usage.promptTokens, usage.completionTokens);
          }
          // A whole reply's latency is the upstream's, not the time this request queued here.
          // Assembled from a stream: to its first chunk (the headers come at once).
          usage.ttftMs = (up.assemble && attempt.timing.firstByteAt >= 0 ? attempt.timing.firstByteAt : headersAt) - sentAt;
          if (upSpan !== undefined) endAttempt(upSpan, usage.ttftMs, reply.usage !== null ? usage.promptTokens : undefined, usage.completionTokens);
          // Stored before the reply leaves, as a stream is: a repeat on another thread's connection hits.
          if (plan !== null && headers['x-broker-fallback'] === undefined && !abortedFinish(reply.finishReason)) {
            const text = typeof reply.body === 'string' ? reply.body : Buffer.from(reply.body.buffer, reply.body.byteOffset, reply.body.byteLength).toString('utf8');
            const e = withModel(captureWhole(api, kind, text), text);
            if (e !== null) cache!.put(plan, group.name, e, performance.timeOrigin + req.startedAt);
          }
          const overhead = timeline.clientFirstByte();
          sink.send(200, { 'content-type': 'application/json', 'x-broker-deployment': dep.config.id, ...headers, 'x-broker-overhead-ms': overheadHeader(overhead) }, reply.body);
          outcome = 'ok';
          usage.ok = true;
        }
        timeline.observe(m, up.stream);
        this.finish(facts, g, dep, outcome, req.startedAt, up.stream);
        return;
      }
    } finally {
      if (facts !== undefined) {
        facts.promptTokens = usage.promptTokens;
        facts.completionTokens = usage.completionTokens;
        facts.ttftMs = usage.ttftMs ?? undefined;
        facts.upstreamMs = timeline.upstreamMs + streamWaitMs;
      }
      this.running.delete(abort);
      const failedOn = lease === null && usage.ok === false ? lastFailed : undefined;
      gov.completed(admitted, lease, { ...usage, durationMs: performance.now() - req.startedAt, ...(failedOn !== undefined ? { failedOn } : {}) });
    }
  }

  /** A cache hit, replayed in the client's API and mode; no upstream, no lease. */
  private replayHit(hit: CachedReply, req: LlmRequest, group: ModelGroupConfig, sink: ReplySink, headers: Record<string, string>, timeline: Timeline, stream: boolean, sent: Readonly<Record<string, unknown>>): void {
    headers['x-broker-cache'] = 'hit';
    // The model name the stored reply gave its client: a hit answers as the miss did.
    const r = replay(req.api, req.kind, stream, hit, { model: hit.model ?? req.model, id: req.replyId, includeUsage: req.api === 'openai' && clientWantsUsage(req.body), now: Date.now(), elapsedMs: performance.now() - req.startedAt, request: sent });
    const overhead = overheadHeader(timeline.clientFirstByte());
    // A replayed stream is complete at once: one write, with its length, like a whole reply.
    sink.send(200, { 'content-type': r.contentType, ...(stream ? STREAM_HEADERS : {}), ...headers, 'x-broker-overhead-ms': overhead }, r.body);
    timeline.observe(this.deps.metrics, stream, true);
    const m = this.deps.metrics;
    m.llmRequests.labels(group.name, 'cache', 'ok', 'cache_hit').inc();
    m.llmDuration.labels(group.name, 'cache', stream ? 'true' : 'false').observe((performance.now() - req.startedAt) / 1000);
    // Tracked as a hit with no tokens: like quotas, cost and budgets are not charged for it.
    if (req.facts !== undefined) {
      req.facts.outcome = 'cache_hit';
      req.facts.deployment = 'cache';
      req.facts.promptTokens = 0;
      req.facts.completionTokens = 0;
    }
  }

  private countTimeout(dep: DeploymentState, err: BrokerError, phase?: 'first_byte' | 'idle' | 'total' | null): void {
    if (err.code !== 'upstream_timeout') return;
    const p = phase ?? (err.details?.['phase'] as string | undefined) ?? 'connect';
    this.deps.metrics.llmTimeouts.labels(dep.config.id, p).inc();
  }

  /** `promptTokens`: the upstream's usage, else admission's estimate (what the request is charged). */
  private streamOutcome(r: StreamResult, promptTokens: number, ttftMs: number | null, group: ModelGroupConfig, dep: DeploymentState, requestId: string, instrument: boolean): Outcome {
    const m = this.deps.metrics;
    this.countTokens(group, promptTokens, r.completionTokens);
    if (r.malformed > 0) {
      this.countMalformed(dep.config.id, requestId, r.malformed);
    }
    if (instrument) {
      if (ttftMs !== null) m.llmTtft.labels(group.name, dep.config.id).observe(ttftMs / 1000);
      const gaps = m.llmInterToken.labels(group.name);
      for (const g of r.interTokenMs) gaps.observe(g / 1000);
    }
    if (r.ended === 'complete') return 'ok';
    if (r.ended === 'aborted') return 'aborted';
    const reason = r.ended === 'truncated' ? 'truncated' : (r.errorCode ?? 'upstream_error');
    m.llmMidstreamErrors.labels(group.name, dep.config.id, reason).inc();
    // The broker's own shutdown: its fault (outcome error), under its own reason, not the upstream's.
    if (reason === 'shutting_down') {
      this.deps.logger.info({ trace_id: requestId, deployment: dep.config.id }, 'stream cut by the shutdown after its grace period');
      return 'shutting_down';
    }
    this.deps.logger.warn({ trace_id: requestId, deployment: dep.config.id, reason, err: r.errorMessage }, 'upstream stream failed after the first byte');
    return reason === 'upstream_timeout' ? 'midstream_timeout' : 'midstream_error';
  }

  /**
   * A request the shutdown cut before its reply left: the broker's fault (reason shutting_down, as a
   * cut stream's), charged what went upstream as a cut stream is, and not held against the deployment.
   */
  private cutByShutdown(req: LlmRequest, usage: Usage, prompt: number, completion: number, group: ModelGroupConfig, dep: DeploymentState, stream: boolean): void {
    usage.ok = null;
    usage.promptTokens = prompt;
    usage.completionTokens = completion;
    this.countTokens(group, prompt, completion);
    this.deps.logger.info({ trace_id: req.id, deployment: dep.config.id }, 'request cut by the shutdown after its grace period');
    this.finish(req.facts, group, dep, 'shutting_down', req.startedAt, stream);
  }

  /** When each deployment's malformed events were last logged (this proxy's: one per thread). */
  private readonly malformedWarnedAt = new Map<string, number>();

  /**
   * Junk events dropped from a reply: all counted; logged once a minute per deployment (one that
   * sends them sends them on every request: 4,943 lines in 20 minutes from one).
   */
  private countMalformed(deployment: string, requestId: string, events: number): void {
    this.deps.metrics.llmUpstreamMalformed.labels(deployment).inc(events);
    const now = performance.now();
    const last = this.malformedWarnedAt.get(deployment);
    if (last !== undefined && now - last < MALFORMED_WARN_EVERY_MS) return;
    this.malformedWarnedAt.set(deployment, now);
    this.deps.logger.warn({ trace_id: requestId, deployment, events }, 'upstream sent events that are not JSON objects: dropped (logged at most once a minute per deployment; llm_upstream_malformed_events_total counts them)');
  }

  private countTokens(group: ModelGroupConfig, prompt: number, completion: number): void {
    if (prompt > 0) this.deps.metrics.llmTokens.labels(group.name, 'prompt').inc(prompt);
    if (completion > 0) this.deps.metrics.llmTokens.labels(group.name, 'completion').inc(completion);
  }

  private finish(facts: RequestFacts | undefined, group: ModelGroupConfig, dep: DeploymentState, outcome: Outcome, startedAt: number, stream: boolean): void {
    const m = this.deps.metrics;
    if (facts !== undefined) facts.outcome = outcome;
    const total = performance.now() - startedAt;
    m.llmRequests.labels(group.name, dep.config.id, coarse(outcome), outcome).inc();
    m.llmDuration.labels(group.name, dep.config.id, stream ? 'true' : 'false').observe(total / 1000);
  }
}

/** An attempt that got its reply: TTFT (from the request leaving) and the tokens it used; input left out when the upstream did not say it (not 0). */
function endAttempt(span: Span, ttftMs: number | null, promptTokens: number | undefined, completionTokens: number): void {
  if (ttftMs !== null) span.set('llm.ttft_ms', Math.round(ttftMs * 1000) / 1000);
  if (promptTokens !== undefined) span.set('gen_ai.usage.input_tokens', promptTokens);
  span.set('gen_ai.usage.output_tokens', completionTokens).end();
}

/** When the attempt's request reached the socket; before undici said so, when we called it. */
function writtenAt(attempt: Attempt, sentAt: number): number {
  return attempt.timing.writtenAt >= 0 ? attempt.timing.writtenAt : sentAt;
}

/** The request field that holds the prompt, in the client's API: what a context error names. */
function promptField(api: ClientApi, kind: Kind): string {
  return api === 'responses' ? 'input' : kind === 'completion' ? 'prompt' : kind === 'embed' ? 'input' : 'messages';
}

/** The client's own fault (a prompt too long for the groups left): never a reason to say the upstreams failed. */
function clientFault(e: BrokerError): boolean {
  return e.code === 'invalid_request' || e.code === 'context_length_exceeded';
}

/**
 * Why a request ran out of deployments: how the last one failed (none tried, or only a group
 * too small: no_deployment). A group whose deployments' quotas were spent, or full, then
 * fallbacks that could not serve either: the client gets that 429, and it is counted so.
 */
function exhaustedReason(last: BrokerError | undefined, attempted: boolean): string {
  if (last?.code === 'quota_exceeded' || last?.code === 'capacity_exhausted') return last.code;
  if (!attempted || last === undefined || clientFault(last)) return 'no_deployment';
  return last.code === 'upstream_timeout' ? 'timeout' : 'upstream_error';
}

/** A fallback group still to try; `context`: it came from a contextFallbacks list. */
interface Fallback {
  readonly name: string;
  readonly context: boolean;
}

function fallbacksOf(names: readonly string[] | undefined, context: boolean): Fallback[] {
  return names === undefined ? [] : names.map((name) => ({ name, context }));
}

/**
 * The next fallback group: the first of `queue` not tried yet, known, and usable (large
 * enough for the prompt, allowed to the client's tier). A group passed over hands on what
 * `beyond` says of it (its own chain), ahead of the rest of the queue.
 */
function nextGroup(
  queue: Fallback[],
  visited: Set<string>,
  usable: (g: ModelGroupConfig) => boolean,
  groups: ReadonlyMap<string, ModelGroupConfig> | undefined,
  beyond: (g: ModelGroupConfig, f: Fallback) => Fallback[],
): ModelGroupConfig | undefined {
  while (queue.length > 0) {
    const f = queue.shift()!;
    const g = groups?.get(f.name);
    // By the group's own name: a chain may name one group twice, by its name and its alias.
    if (g === undefined || visited.has(g.name)) continue;
    visited.add(g.name);
    if (usable(g)) return g;
    queue.unshift(...beyond(g, f));
  }
  return undefined;
}

/**
 * The client's stream as it went out, for the cache: bounded, dropped past WIRE_PER_ENTRY_BYTE
 * times the entry bound. The entry itself (its text, far smaller than the events that carried
 * it: ~25 bytes a token against ~200 in OpenAI's SSE and more in Responses') is held to the
 * entry bound when stored (ResponseCache.put), so a reply is stored or not whatever the API and
 * mode of the request that brought it.
 */
class Capture {
  private parts: (string | Uint8Array)[] | null = [];
  private size = 0;
  private readonly max: number;

  constructor(maxEntryBytes: number) {
    this.max = maxEntryBytes * WIRE_PER_ENTRY_BYTE;
  }

  push(chunk: string | Uint8Array): void {
    if (this.parts === null) return;
    this.size += typeof chunk === 'string' ? chunk.length : chunk.byteLength;
    if (this.size > this.max) {
      this.parts = null;
      return;
    }
    // Pass-through chunks may be views of undici's buffers: copy.
    this.parts.push(typeof chunk === 'string' ? chunk : Buffer.from(chunk));
  }

  entry(api: ClientApi, kind: Kind, prompt: number, completion: number): CachedReply | null {
    if (this.parts === null) return null;
    const text = this.parts.map((p) => (typeof p === 'string' ? p : Buffer.from(p.buffer, p.byteOffset, p.byteLength).toString('utf8'))).join('');
    return withModel(captureStream(api, kind, text, { prompt, completion }), text);
  }
}

const WIRE_PER_ENTRY_BYTE = 20;

/** What a completed stream's entry needs: its finish and its usage. */
type Completed = Pick<StreamResult, 'finishReason' | 'usageFromUpstream' | 'promptTokens' | 'completionTokens'>;

/**
 * The sink as a stream target: a slow client makes the pump wait for its socket to drain. `start`
 * runs before the first write; `store` with the chunk that completes the stream, before it is written.
 */
function targetOf(sink: ReplySink, signal: AbortLike, start: () => void, capture: Capture | undefined, store: (s: Completed) => void): StreamTarget {
  let started = false;
  return {
    write: (chunk, done) => {
      capture?.push(chunk);
      if (done !== undefined) store(done);
      if (!started) {
        started = true;
        // The status line and the first chunk in one packet: the client's first byte comes with its headers.
        if (sink.cork === undefined) {
          start();
          return sink.write(chunk);
        }
        let ok = true;
        sink.cork(() => {
          start();
          ok = sink.write(chunk);
        });
        return ok;
      }
      return sink.write(chunk);
    },
    committed: () => started,
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
  if (e instanceof undiciErrors.ConnectTimeoutError || e.code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new BrokerError('upstream_timeout', `deployment ${dep.config.id} did not accept a connection within connectTimeoutMs (${dep.config.connectTimeoutMs} ms)`, { cause: err, details: { phase: 'connect' } });
  }
  if (e instanceof undiciErrors.HeadersTimeoutError || e.code === 'UND_ERR_HEADERS_TIMEOUT') {
    return new BrokerError('upstream_timeout', `deployment ${dep.config.id} timed out (${e.code})`, { cause: err });
  }
  // Connected, then cut before the reply's headers: the upstream failed (502), it was not unreachable (503).
  if (closedUnder(e)) {
    return new BrokerError('upstream_error', `deployment ${dep.config.id} closed the connection before replying: ${e.code}`, { cause: err });
  }
  // Retry-After 1, as for an upstream's 429 without one (docs/llm.md): the SDKs wait before retrying.
  return new BrokerError('upstream_unavailable', `deployment ${dep.config.id} is unreachable: ${e.code ?? e.message}`, { cause: err, retryAfter: 1 });
}

function exhausted(err: BrokerError, status: number, retryAfter: string | undefined, cls: UpstreamErrorClass, previous: BrokerError | undefined): BrokerError {
  // After the last deployment this is what the client sees: 503 upstream_unavailable with the
  // upstream's Retry-After for a 429 or an overload (503, 529), which say "later", not
  // "broken" (529 overloaded_error on /v1/messages; before, a 503 overloaded reached clients
  // as 502 with no Retry-After, and the SDKs retried at once); 502 for any other 5xx.
  // Several such answers: the soonest, when the first deployment is free again (it was the
  // last one asked's, which may be the latest).
  const own = retryAfterSeconds(retryAfter);
  // Only another "later" counts (an unreachable one's 1 s says nothing of when this one is free).
  const seconds = previous?.details?.['later'] === true && previous.retryAfter !== undefined ? Math.min(own, previous.retryAfter) : own;
  // A 429 that says it is overloaded (TGI's "Model is overloaded") is told as such.
  if (cls === 'overloaded') return new BrokerError('upstream_unavailable', `every deployment is overloaded (last: ${err.message})`, { retryAfter: seconds, details: { later: true } });
  if (status === 429) return new BrokerError('upstream_unavailable', `every deployment is rate limited (last: ${err.message})`, { retryAfter: seconds, details: { later: true } });
  return new BrokerError('upstream_error', err.message);
}

/** An upstream's Retry-After in whole seconds, at least 1: delay-seconds or an HTTP-date (RFC 9110 §10.2.3); 1 when absent or unreadable. */
export function retryAfterSeconds(v: string | undefined, now = Date.now()): number {
  if (v === undefined) return 1;
  if (/^\d+$/.test(v)) return Math.max(1, Number(v));
  const at = Date.parse(v);
  return Number.isNaN(at) ? 1 : Math.max(1, Math.ceil((at - now) / 1000));
}

/** undici's words for a connection closed under a reply ('other side closed') in ours. */
function cutMessage(err: unknown): string {
  return closedUnder(err) ? 'it closed the connection before the reply was complete' : (err as Error).message;
}
