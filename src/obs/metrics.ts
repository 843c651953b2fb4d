// Every Prometheus metric of the broker, declared in one place so that names and
// labels stay consistent. Stages receive this object; nothing registers globally.
import { readFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { getHeapStatistics } from 'node:v8';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { withFastLabels } from './fast-labels.ts';

/** What the fleet manager reports at scrape time (control plane only). */
export interface FleetGauges {
  readonly breakers: readonly { readonly server: string; readonly model: string; readonly state: 0 | 1 | 2 }[];
  readonly servers: Readonly<Record<'healthy' | 'unhealthy' | 'draining' | 'maintenance', number>>;
  readonly bans: number;
  /** Deployments drained one by one (POST /api/industrial/capacity/{id}/drain). */
  readonly drainedDeployments: number;
  readonly queueMax: number;
  readonly queuePaused: boolean;
}

let memoryLimit: number | undefined;
/** The cgroup v2 (or v1) memory limit, read once; the machine's memory when unlimited. */
function memoryLimitBytes(): number {
  if (memoryLimit !== undefined) return memoryLimit;
  memoryLimit = totalmem();
  for (const path of ['/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes']) {
    try {
      const v = Number(readFileSync(path, 'utf8').trim());
      if (Number.isFinite(v) && v > 0 && v < memoryLimit) memoryLimit = v;
      break;
    } catch {
      // not this cgroup version
    }
  }
  return memoryLimit;
}

/** How often the event-loop delay starts a new window; a reading covers the last one or two. */
const LOOP_WINDOW_MS = 15_000;

/**
 * A thread's event-loop delay over the last 15 to 30 s, the same for every reader: not reset
 * by a scrape (two Prometheus servers, or the admin API's metrics read, each took the samples
 * away from the other), and a stall is seen whatever the scrape's timing.
 */
class LoopDelay {
  private readonly h: IntervalHistogram = monitorEventLoopDelay({ resolution: 10 });
  private last = { p50: 0, p99: 0, max: 0 };

  constructor() {
    this.h.enable();
    setInterval(() => {
      this.last = this.window();
      this.h.reset();
    }, LOOP_WINDOW_MS).unref();
  }

  read(): { p50: number; p99: number; max: number } {
    const now = this.window();
    return { p50: Math.max(now.p50, this.last.p50), p99: Math.max(now.p99, this.last.p99), max: Math.max(now.max, this.last.max) };
  }

  /** Seconds; no sample yet (right at start): 0 rather than NaN. */
  private window(): { p50: number; p99: number; max: number } {
    const s = (v: number): number => (this.h.count > 0 && Number.isFinite(v) ? v / 1e9 : 0);
    return { p50: s(this.h.percentile(50)), p99: s(this.h.percentile(99)), max: s(this.h.max) };
  }
}

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/**
 * `defaults`: the process metrics (CPU, memory, GC): once per process, on the control plane.
 * `thread`: this registry's thread, as broker_thread_heap_bytes names it (`control`, `plane-0`, …).
 */
export function createMetrics(opts: { defaults?: boolean; thread?: string } = {}) {
  const thread = opts.thread ?? 'control';
  const registry = new Registry();
  // Started by the first scrape: a registry never scraped (tests, tools) keeps no timer.
  let loopDelay: LoopDelay | undefined;
  // Gauges read at scrape time from whoever owns the number.
  const sources = {
    cacheBytes: (): number => 0,
    inferQueue: (): number => 0,
    inferPending: (): ReadonlyMap<string, number> => new Map(),
    inferWorkers: (): number => 0,
    capacity: (): { id: string; inFlight: number; concurrencyLimit: number }[] => [],
    queueDepth: (): number => 0,
    degraded: (): number => 0,
    fleet: (): FleetGauges | undefined => undefined,
    trackingBuffer: (): number => 0,
    trackingPool: (): { active: number; idle: number; waiting: number } | undefined => undefined,
    budgets: (): readonly { key: string; ratio: number }[] => [],
  };
  if (opts.defaults ?? true) {
    collectDefaultMetrics({ register: registry });
    // prom-client's gauges named like counters fail `promtool check metrics` (an operator's CI
    // lint); their per-type twins (nodejs_active_handles{type}, ...) sum to the same totals.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) registry.removeSingleMetric(name);
  }
  const r = [registry];
  return withFastLabels({
    registry,
    httpDuration: new Histogram({
      name: 'http_request_duration_seconds',
      help: 'HTTP request duration by route, method and status',
      labelNames: ['route', 'method', 'status'] as const,
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    httpErrors: new Counter({
      name: 'http_requests_errors_total',
      help: 'HTTP requests that ended with a 4xx or 5xx, by route and error code',
      labelNames: ['route', 'status', 'code'] as const,
      registers: r,
    }),
    // A stream that began with 200 and was cut by an error (its error event is in the stream):
    // what the availability SLO counts beside the 5xx, for HTTP (gRPC has its status code).
    httpStreamsCut: new Counter({
      name: 'http_streams_cut_total',
      help: 'HTTP replies that began with 200 and ended with an error event, by route and error code',
      labelNames: ['route', 'code'] as const,
      registers: r,
    }),
    httpActive: new Gauge({ name: 'http_requests_active', help: 'HTTP requests in progress', registers: r }),
    rateLimited: new Counter({
      name: 'rate_limit_rejections_total',
      help: 'Requests rejected by the per-client rate limit',
      registers: r,
    }),
    rateLimitShared: new Counter({
      name: 'rate_limit_shared_rejections_total',
      help: 'Of those, rejected in the one bucket new clients share while the per-client table is full (a flood of distinct clients)',
      registers: r,
    }),
    // Inference metrics follow Triton's names (nv_inference_*), with the arm as an extra label.
    inferSuccess: new Counter({
      name: 'inference_request_success_total',
      help: 'Successful inference requests by model, version and arm',
      labelNames: ['model', 'version', 'arm'] as const,
      registers: r,
    }),
    inferFailure: new Counter({
      name: 'inference_request_failure_total',
      help: 'Failed inference requests by model, version, arm and reason',
      labelNames: ['model', 'version', 'arm', 'reason'] as const,
      registers: r,
    }),
    inferQueue: new Histogram({
      name: 'inference_queue_duration_seconds',
      help: 'Time an inference task waited for a worker',
      labelNames: ['model', 'arm'] as const,
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    inferDecode: new Histogram({
      name: 'inference_decode_duration_seconds',
      help: 'Image decode and preprocessing time in the worker',
      labelNames: ['model', 'arm'] as const,
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    inferCompute: new Histogram({
      name: 'inference_compute_duration_seconds',
      help: 'Model execution time (session.run)',
      labelNames: ['model', 'arm'] as const,
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    inferBatch: new Histogram({
      name: 'inference_batch_size',
      help: 'Batch size of executed inferences',
      labelNames: ['model'] as const,
      buckets: [1, 2, 4, 8, 16, 32],
      registers: r,
    }),
    inferArm: new Counter({
      name: 'inference_arm_assignments_total',
      help: 'Requests assigned to an arm, by how they were assigned (sticky, weighted, canary)',
      labelNames: ['arm', 'reason'] as const,
      registers: r,
    }),
    shadowRequests: new Counter({
      name: 'inference_shadow_requests_total',
      help: 'Shadow runs of model B by outcome',
      labelNames: ['outcome'] as const,
      registers: r,
    }),
    shadowAgreement: new Counter({
      name: 'inference_shadow_agreement_total',
      help: 'Shadow runs whose top-1 label matched arm A',
      registers: r,
    }),
    shadowDisagreement: new Counter({
      name: 'inference_shadow_disagreement_total',
      help: 'Shadow runs whose top-1 label differed from arm A',
      registers: r,
    }),
    shadowLatency: new Histogram({
      name: 'inference_shadow_duration_seconds',
      help: 'Latency of shadow runs of model B',
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    canaryRollbacks: new Counter({
      name: 'inference_canary_rollbacks_total',
      help: 'Automatic canary rollbacks',
      registers: r,
    }),
    sources,
    inferPoolQueue: new Gauge({
      name: 'inference_pool_queue_size',
      help: 'Tasks waiting for an inference worker',
      registers: r,
      collect() {
        this.set(sources.inferQueue());
      },
    }),
    inferPending: new Gauge({
      // Triton's nv_inference_pending_request_count: the queue of each model, where the pool's size is their sum.
      name: 'inference_pending_requests',
      help: 'Inference requests waiting in a model\'s admission queue, by model',
      labelNames: ['model'] as const,
      registers: r,
      collect() {
        this.reset();
        for (const [model, n] of sources.inferPending()) this.labels(model).set(n);
      },
    }),
    inferWorkers: new Gauge({
      name: 'inference_workers',
      help: 'Inference worker threads alive in the current pool',
      registers: r,
      collect() {
        this.set(sources.inferWorkers());
      },
    }),
    workerRestarts: new Counter({ name: 'inference_worker_failures_total', help: 'Inference workers that crashed or exited', registers: r }),
    // LLM proxy. outcome is the operations model's (seed 001): ok, error (the broker's or an
    // upstream's fault: counts against availability), client_error, aborted. reason is the
    // finer cause: ok, client_error, aborted, upstream_error, midstream_error, midstream_timeout, timeout,
    // no_deployment, capacity_exhausted, queue_timeout, quota_exceeded (a client_error).
    llmRequests: new Counter({
      name: 'llm_requests_total',
      help: 'LLM requests by model group, deployment, outcome (ok, error, client_error, aborted) and reason',
      labelNames: ['group', 'deployment', 'outcome', 'reason'] as const,
      registers: r,
    }),
    llmDuration: new Histogram({
      name: 'llm_request_duration_seconds',
      help: 'LLM request duration, from arrival to the last byte',
      labelNames: ['group', 'deployment', 'stream'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120],
      registers: r,
    }),
    llmTtft: new Histogram({
      name: 'llm_ttft_seconds',
      help: 'Time to first token of streamed LLM replies',
      labelNames: ['group', 'deployment'] as const,
      buckets: LATENCY_BUCKETS,
      registers: r,
    }),
    llmInterToken: new Histogram({
      name: 'llm_inter_token_seconds',
      help: 'Time between consecutive streamed chunks carrying tokens',
      labelNames: ['group'] as const,
      buckets: [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers: r,
    }),
    llmTokens: new Counter({
      name: 'llm_tokens_total',
      help: 'Tokens by direction (prompt, completion) and model group',
      labelNames: ['group', 'direction'] as const,
      registers: r,
    }),
    llmRateLimitHits: new Counter({
      name: 'llm_rate_limit_hits_total',
      help: 'Upstream 429 replies by deployment',
      labelNames: ['deployment'] as const,
      registers: r,
    }),
    llmRetries: new Counter({
      name: 'llm_upstream_retries_total',
      help: 'Requests retried on another deployment before the first byte',
      labelNames: ['group', 'reason'] as const,
      registers: r,
    }),
    llmMidstreamErrors: new Counter({
      name: 'llm_midstream_errors_total',
      help: 'Streams cut after tokens were sent, ended with an explicit error event',
      labelNames: ['group', 'deployment', 'reason'] as const,
      registers: r,
    }),
    llmUpstreamMalformed: new Counter({
      name: 'llm_upstream_malformed_events_total',
      help: 'Streamed upstream events that were not JSON objects: dropped, never forwarded',
      labelNames: ['deployment'] as const,
      registers: r,
    }),
    llmFallbacks: new Counter({
      name: 'llm_fallbacks_total',
      help: 'Requests moved to a fallback model group before the first byte, by reason (failure, context_window, context_length)',
      labelNames: ['from', 'to', 'reason'] as const,
      registers: r,
    }),
    llmUpstreamErrors: new Counter({
      name: 'llm_upstream_errors_total',
      help: 'Upstream error replies by deployment and class (context_length, rate_limited, overloaded, bad_request, server_error)',
      labelNames: ['deployment', 'class'] as const,
      registers: r,
    }),
    llmTimeouts: new Counter({
      name: 'llm_upstream_timeouts_total',
      help: 'Upstream attempts ended by a timeout, by deployment and phase (connect, first_byte, idle, total)',
      labelNames: ['deployment', 'phase'] as const,
      registers: r,
    }),
    llmPhase: new Histogram({
      name: 'llm_phase_seconds',
      help: 'Time of each phase of an LLM request up to the client first byte: admission, queue, dispatch, upstream (the upstream itself), relay; overhead is the sum without upstream',
      labelNames: ['phase', 'stream'] as const,
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: r,
    }),
    llmCacheLookups: new Counter({
      name: 'llm_cache_lookups_total',
      help: 'Response cache lookups by model group and result (hit, miss)',
      labelNames: ['group', 'result'] as const,
      registers: r,
    }),
    llmCacheStores: new Counter({
      name: 'llm_cache_stores_total',
      help: 'Replies stored in the response cache, by model group',
      labelNames: ['group'] as const,
      registers: r,
    }),
    llmCacheReceived: new Counter({
      name: 'llm_cache_received_total',
      help: 'Response cache entries received from another thread of this process',
      registers: r,
    }),
    llmCacheRedisErrors: new Counter({
      name: 'llm_cache_redis_errors_total',
      help: 'Response cache lookups and stores that Redis failed (an error, or no reply within 250 ms); while it is away or hung, lookups miss without asking it',
      registers: r,
    }),
    responsesOverOwnerBudget: new Counter({
      name: 'llm_responses_store_over_owner_budget_total',
      help: 'Stored Responses not written to Redis because their owner spent RESPONSES_STORE_OWNER_MB this window: kept on their replica only (a continuation on another replica is previous_response_not_found)',
      registers: r,
    }),
    llmCacheEvictions: new Counter({
      name: 'llm_cache_evictions_total',
      help: 'Entries the in-memory response cache dropped to stay within its byte bound',
      registers: r,
    }),
    llmCacheBytes: new Gauge({
      name: 'llm_cache_bytes',
      help: 'Bytes held by the in-memory response cache (summed over threads: each thread keeps a copy)',
      registers: r,
      collect() {
        this.set(sources.cacheBytes());
      },
    }),
    // Scheduler and policies.
    capacityInFlight: new Gauge({
      name: 'broker_capacity_in_flight',
      help: 'In-flight requests per deployment (shared-memory counters)',
      labelNames: ['deployment'] as const,
      registers: r,
      collect() {
        this.reset();
        for (const c of sources.capacity()) this.labels(c.id).set(c.inFlight);
      },
    }),
    capacityLimit: new Gauge({
      name: 'broker_capacity_limit',
      help: 'Concurrency limit per deployment',
      labelNames: ['deployment'] as const,
      registers: r,
      collect() {
        this.reset();
        for (const c of sources.capacity()) this.labels(c.id).set(c.concurrencyLimit);
      },
    }),
    capacityRejections: new Counter({
      name: 'broker_capacity_rejections_total',
      help: 'Requests refused for capacity: queue full (capacity_exhausted) or waited too long (queue_timeout)',
      labelNames: ['group', 'code'] as const,
      registers: r,
    }),
    queueShed: new Counter({
      name: 'broker_queue_shed_total',
      help: 'Queued requests refused (capacity_exhausted) to make room for one of higher priority, by group; also in broker_capacity_rejections_total',
      labelNames: ['group'] as const,
      registers: r,
    }),
    queueDepth: new Gauge({
      name: 'broker_queue_depth',
      help: 'Requests waiting for capacity',
      registers: r,
      collect() {
        this.set(sources.queueDepth());
      },
    }),
    degradedDeployments: new Gauge({
      name: 'broker_degraded_deployments',
      help: 'Deployments that performance routing currently avoids',
      registers: r,
      collect() {
        this.set(sources.degraded());
      },
    }),
    stickyLookups: new Counter({
      name: 'broker_sticky_lookups_total',
      help: 'Sticky routing lookups by result (hit, miss)',
      labelNames: ['result'] as const,
      registers: r,
    }),
    quotaRejections: new Counter({
      name: 'broker_quota_rejections_total',
      help: 'Requests refused with quota_exceeded, by the subject whose quota was spent',
      labelNames: ['subject'] as const,
      registers: r,
    }),
    predictionError: new Histogram({
      name: 'broker_output_prediction_error_tokens',
      help: 'Predicted minus actual output tokens (positive: over-reserved)',
      buckets: [-4096, -1024, -256, -64, -16, 0, 16, 64, 256, 1024, 4096],
      registers: r,
    }),
    flagChanges: new Counter({
      name: 'broker_flag_changes_total',
      help: 'Runtime feature flag changes',
      labelNames: ['flag'] as const,
      registers: r,
    }),
    planeRestarts: new Counter({
      name: 'broker_data_plane_restarts_total',
      help: 'Data-plane threads that died and were replaced',
      registers: r,
    }),
    planeThreads: new Gauge({
      name: 'broker_data_plane_threads',
      help: 'Data-plane threads serving now (0: the main thread serves)',
      registers: r,
    }),
    // Fleet management: the Ollama Orchestrator runbook's names.
    breakerState: new Gauge({
      name: 'circuit_breaker_state',
      help: 'Circuit breaker per server and model: 0 closed, 1 half-open, 2 open',
      labelNames: ['server', 'model'] as const,
      registers: r,
      collect() {
        const f = sources.fleet();
        if (f === undefined) return;
        this.reset();
        for (const b of f.breakers) this.labels(b.server, b.model).set(b.state);
      },
    }),
    breakerTransitions: new Counter({
      name: 'circuit_breaker_transitions_total',
      help: 'Circuit breaker state changes, by server, model and the state entered',
      labelNames: ['server', 'model', 'to'] as const,
      registers: r,
    }),
    fleetServers: new Gauge({
      name: 'fleet_servers',
      help: 'Upstream servers by state (healthy, unhealthy, draining, maintenance)',
      labelNames: ['state'] as const,
      registers: r,
      collect() {
        const f = sources.fleet();
        if (f === undefined) return;
        for (const [state, n] of Object.entries(f.servers)) this.labels(state).set(n);
      },
    }),
    healthCheckFailures: new Counter({
      name: 'fleet_health_check_failures_total',
      help: 'Failed active health checks, by server',
      labelNames: ['server'] as const,
      registers: r,
    }),
    fleetBans: new Gauge({
      name: 'fleet_bans',
      help: 'Active bans (server, model, or server x model)',
      registers: r,
      collect() {
        const f = sources.fleet();
        if (f !== undefined) this.set(f.bans);
      },
    }),
    fleetDrainedDeployments: new Gauge({
      name: 'fleet_drained_deployments',
      help: 'Deployments drained one by one through the capacity API (a drained server counts in fleet_servers)',
      registers: r,
      collect() {
        const f = sources.fleet();
        if (f !== undefined) this.set(f.drainedDeployments);
      },
    }),
    queueMaxSize: new Gauge({
      name: 'queue_max_size',
      help: 'Requests that may wait for capacity at once (scheduler.maxQueue)',
      registers: r,
      collect() {
        const f = sources.fleet();
        if (f !== undefined) this.set(f.queueMax);
      },
    }),
    queuePaused: new Gauge({
      name: 'queue_paused',
      help: '1 while the queue is paused (new LLM requests wait)',
      registers: r,
      collect() {
        const f = sources.fleet();
        if (f !== undefined) this.set(f.queuePaused ? 1 : 0);
      },
    }),
    // Identity and shared state.
    authFailures: new Counter({
      name: 'auth_failures_total',
      help: 'Refused credentials, by reason (missing, invalid, expired, signature, claim, session, role, ...)',
      labelNames: ['reason'] as const,
      registers: r,
    }),
    redisUp: new Gauge({
      name: 'redis_up',
      help: '1 while the state store (REDIS_URL) is reachable; absent without REDIS_URL',
      registers: r,
      aggregator: 'max',
    }),
    stateSyncLag: new Gauge({
      name: 'state_sync_lag_seconds',
      help: 'Age of the shared state this replica last read from Redis (time since its last successful sync)',
      registers: r,
      aggregator: 'max',
    }),
    replicasSeen: new Gauge({
      name: 'state_replicas_seen',
      help: 'Replicas seen in the Redis heartbeats of the last 15 s: with Redis away, each spends limit / this of a cluster quota',
      registers: r,
      aggregator: 'max',
    }),
    quotaLeases: new Counter({
      name: 'quota_leases_total',
      help: 'Cluster quota leases this replica took, by source: redis, or local_share while Redis is away',
      labelNames: ['source'] as const,
      registers: r,
    }),
    // nodejs_heap_* (the defaults) are the control plane's heap alone: each thread says its own.
    threadHeap: new Gauge({
      name: 'broker_thread_heap_bytes',
      help: "V8 heap of each of the broker's JavaScript threads (the control plane, each data-plane thread): used (live objects and garbage not yet collected) and total (committed); inference workers are not in it",
      labelNames: ['thread', 'kind'] as const,
      registers: r,
      collect() {
        const h = getHeapStatistics();
        this.labels(thread, 'used').set(h.used_heap_size);
        this.labels(thread, 'total').set(h.total_heap_size);
      },
    }),
    // nodejs_eventloop_lag_* (the defaults) are the control plane's loop alone: the data-plane
    // threads, which serve the requests, say their own.
    threadLoopLag: new Gauge({
      name: 'broker_thread_event_loop_lag_seconds',
      help: "Event-loop delay of each of the broker's JavaScript threads over the last 15 to 30 s (p50, p99, max): a busy data-plane thread delays every request it holds; a thread that does not answer a scrape in 2 s shows at least 2 s",
      labelNames: ['thread', 'stat'] as const,
      registers: r,
      collect() {
        const lag = (loopDelay ??= new LoopDelay()).read();
        this.labels(thread, 'p50').set(lag.p50);
        this.labels(thread, 'p99').set(lag.p99);
        this.labels(thread, 'max').set(lag.max);
      },
    }),
    memoryLimit: new Gauge({
      name: 'broker_memory_limit_bytes',
      help: 'Memory this process may use: the cgroup limit (memory.max) when there is one, else the machine total',
      registers: r,
      // Every thread's registry reports it; the process has one limit, not one per thread.
      aggregator: 'max',
      collect() {
        this.set(memoryLimitBytes());
      },
    }),
    // gRPC front (src/front/grpc/metrics.ts counts them): go-grpc-prometheus's names and labels.
    grpcStarted: new Counter({ name: 'grpc_server_started_total', help: 'Total number of RPCs started on the server.', labelNames: ['grpc_type', 'grpc_service', 'grpc_method'] as const, registers: r }),
    grpcHandled: new Counter({
      name: 'grpc_server_handled_total',
      help: 'Total number of RPCs completed on the server, regardless of success or failure.',
      labelNames: ['grpc_type', 'grpc_service', 'grpc_method', 'grpc_code'] as const,
      registers: r,
    }),
    grpcReceived: new Counter({ name: 'grpc_server_msg_received_total', help: 'Total number of RPC stream messages received on the server.', labelNames: ['grpc_type', 'grpc_service', 'grpc_method'] as const, registers: r }),
    grpcSent: new Counter({ name: 'grpc_server_msg_sent_total', help: 'Total number of gRPC stream messages sent by the server.', labelNames: ['grpc_type', 'grpc_service', 'grpc_method'] as const, registers: r }),
    grpcHandling: new Histogram({
      name: 'grpc_server_handling_seconds',
      help: 'Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.',
      labelNames: ['grpc_type', 'grpc_service', 'grpc_method'] as const,
      // Prometheus' DefBuckets, as go-grpc-prometheus uses.
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: r,
    }),
    otelSpans: new Counter({
      name: 'otel_spans_total',
      help: 'OpenTelemetry spans by outcome: exported, dropped_queue_full (the export queue was full), dropped_export_failed (the OTLP endpoint failed or was too slow)',
      labelNames: ['outcome'] as const,
      registers: r,
    }),
    // Request tracking (src/track/, docs/tracking.md): the control plane's writer; a
    // thread counts only the rows it dropped before handing them over.
    trackingBufferRows: new Gauge({
      name: 'tracking_buffer_rows',
      help: 'Tracking rows waiting in the writer buffer',
      registers: r,
      collect() {
        this.set(sources.trackingBuffer());
      },
    }),
    trackingWritten: new Counter({ name: 'tracking_rows_written_total', help: 'Tracking rows written to PostgreSQL', registers: r }),
    trackingDropped: new Counter({
      name: 'tracking_rows_dropped_total',
      help: 'Tracking rows dropped: overflow (the buffer was full, the oldest went), shutdown (still buffered when the grace period ended), invalid (refused by the database for their data)',
      labelNames: ['reason'] as const,
      registers: r,
    }),
    trackingFlush: new Histogram({
      name: 'tracking_flush_seconds',
      help: 'Time to write one batch of tracking rows',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: r,
    }),
    trackingFlushFailures: new Counter({ name: 'tracking_flush_failures_total', help: 'Batches of tracking rows that failed to write (kept and retried with backoff)', registers: r }),
    trackingPool: new Gauge({
      name: 'tracking_db_pool_connections',
      help: 'Connections of the tracking database pool: active (checked out), idle, waiting (callers waiting for one)',
      labelNames: ['state'] as const,
      registers: r,
      collect() {
        const p = sources.trackingPool();
        if (p === undefined) return;
        this.labels('active').set(p.active);
        this.labels('idle').set(p.idle);
        this.labels('waiting').set(p.waiting);
      },
    }),
    budgetSpendRatio: new Gauge({
      name: 'budget_spend_ratio',
      help: 'Spend of an API key in its budget period over its limit, for keys with a budget',
      labelNames: ['key'] as const,
      registers: r,
      collect() {
        this.reset();
        for (const b of sources.budgets()) this.labels(b.key).set(b.ratio);
      },
    }),
    brokerOverhead: new Histogram({
      name: 'broker_overhead_seconds',
      help: 'The broker own time of an LLM request up to the client first byte, the upstream own time left out (as x-broker-overhead-ms)',
      labelNames: ['route'] as const,
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1],
      registers: r,
    }),
  });
}

export type Metrics = ReturnType<typeof createMetrics>;
