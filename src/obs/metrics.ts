// Every Prometheus metric of the broker, declared in one place so that names and
// labels stay consistent. Stages receive this object; nothing registers globally.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** `defaults`: the process metrics (CPU, memory, GC): once per process, on the control plane. */
export function createMetrics(opts: { defaults?: boolean } = {}) {
  const registry = new Registry();
  // Gauges read at scrape time from whoever owns the number.
  const sources = {
    inferQueue: (): number => 0,
    inferWorkers: (): number => 0,
    capacity: (): { id: string; inFlight: number; concurrencyLimit: number }[] => [],
    queueDepth: (): number => 0,
    degraded: (): number => 0,
  };
  if (opts.defaults ?? true) collectDefaultMetrics({ register: registry });
  const r = [registry];
  return {
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
    httpActive: new Gauge({ name: 'http_requests_active', help: 'HTTP requests in progress', registers: r }),
    rateLimited: new Counter({
      name: 'rate_limit_rejections_total',
      help: 'Requests rejected by the per-client rate limit',
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
    // finer cause: ok, client_error, aborted, upstream_error, midstream_error, timeout,
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
    brokerOverhead: new Histogram({
      name: 'broker_overhead_seconds',
      help: 'Time spent in the broker: total request time minus time waiting on the upstream',
      labelNames: ['route'] as const,
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1],
      registers: r,
    }),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
