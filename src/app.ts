// Wiring: config in, a running broker out. main.ts calls this for the process; tests
// call it to run a real broker on a free port in-process.
import type { Config } from './config/env.ts';
import { createLogger, type Logger } from './obs/logger.ts';
import { createMetrics, type Metrics } from './obs/metrics.ts';
import { obsRoutes } from './obs/routes.ts';
import { createRateLimiter } from './guard/rate-limit.ts';
import { createAdminCheck } from './guard/admin-auth.ts';
import { Router } from './front/http/router.ts';
import { startHttpFront, type HttpFront } from './front/http/server.ts';
import { loadManifest } from './infer/manifest.ts';
import { createInferPool } from './infer/pool.ts';
import { InferService } from './infer/service.ts';
import { inferRoutes } from './infer/routes.ts';
import { adminRoutes } from './admin/routes.ts';
import { loadBrokerConfigFile, EMPTY_FLEET } from './config/broker-config.ts';
import { FlagStore } from './config/flags.ts';
import { Governance } from './sched/governance.ts';
import { industrialRoutes } from './admin/industrial.ts';
import { LlmProxy } from './llm/proxy.ts';
import { llmRoutes, ollamaFleet, staticFleet } from './llm/routes.ts';
import { poolExecutor } from './llm/exec/pool.ts';
import { threadExecutor } from './llm/exec/thread.ts';

export interface Broker {
  readonly port: number;
  readonly config: Config;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly infer: InferService;
  /** Graceful: stop accepting, let in-flight requests finish (up to graceMs), stop workers. */
  close(graceMs?: number): Promise<void>;
}

export interface BrokerOptions {
  readonly logDestination?: NodeJS.WritableStream;
}

export async function startBroker(config: Config, opts: BrokerOptions = {}): Promise<Broker> {
  // A bad fleet file stops start-up before anything else is started.
  const fleetConfig = config.brokerConfigPath === undefined ? undefined : loadBrokerConfigFile(config.brokerConfigPath);
  const logger = createLogger(config.logLevel, opts.logDestination);
  const metrics = createMetrics();
  if (config.adminToken === undefined) logger.warn('ADMIN_TOKEN is not set: admin routes are refused');

  const infer = new InferService({
    initial: {
      abWeightA: config.abWeightA,
      abWeightB: config.abWeightB,
      shadowEnabled: config.shadowEnabled,
      canaryEnabled: config.canaryEnabled,
      canaryPercent: config.canaryPercent,
      canaryRollback: null,
    },
    canary: {
      windowMs: config.canaryWindowS * 1000,
      minRequests: config.canaryMinRequests,
      errorMargin: config.canaryErrorMargin,
      latencyMargin: config.canaryLatencyMargin,
    },
    models: { A: loadManifest(config.modelVaPath), B: loadManifest(config.modelVbPath) },
    makePool: (models) =>
      createInferPool({
        models,
        threads: config.inferThreads,
        intraOpThreads: config.inferIntraOpThreads,
        maxQueue: config.inferMaxQueue,
        maxPixels: config.inferMaxPixels,
        onWorkerFailure: () => {
          metrics.workerRestarts.inc();
          logger.warn('inference worker exited; a replacement is starting');
        },
      }),
    metrics,
    logger,
  });

  const flags = new FlagStore(config.featureFlags);
  const governance = new Governance({
    config: fleetConfig ?? { ...EMPTY_FLEET, source: 'none' },
    flags,
    metrics,
    stickyTtlMs: config.stickyTtlS * 1000,
  });
  const fleet = fleetConfig !== undefined ? staticFleet(fleetConfig) : ollamaFleet(config.ollamaUrl, logger, (found) => governance.adopt(found));
  const executor = config.llmExecution === 'pool' ? poolExecutor(config.llmPoolThreads) : threadExecutor();
  const proxy = new LlmProxy({ metrics, logger, executor, governance });

  const router = new Router();
  for (const r of [...obsRoutes(metrics), ...inferRoutes(infer, config.stickyCookie), ...adminRoutes(infer), ...llmRoutes(fleet, proxy), ...industrialRoutes(governance, logger)]) router.add(r);

  let front: HttpFront;
  try {
    front = await startHttpFront({
      host: config.host,
      port: config.port,
      maxBodyBytes: config.maxBodyBytes,
      router,
      rateLimiter: createRateLimiter(config.rateLimitRps, config.rateLimitBurst),
      adminCheck: createAdminCheck(config.adminToken),
      metrics,
      logger,
    });
  } catch (err) {
    await Promise.all([infer.close(), executor.close()]);
    throw err;
  }
  metrics.sources.inferQueue = () => infer.currentPool.queueSize;
  logger.info({ port: front.port, host: config.host, llm: fleetConfig?.source ?? `ollama discovery at ${config.ollamaUrl}`, llm_execution: config.llmExecution, infer_threads: config.inferThreads, intra_op_threads: config.inferIntraOpThreads }, 'edge broker listening');

  return {
    port: front.port,
    config,
    metrics,
    logger,
    infer,
    async close(graceMs = 10_000) {
      front.stopListening();
      const deadline = Date.now() + graceMs;
      while (front.inFlight > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      await Promise.all([infer.close(), executor.close()]);
      logger.info({ unfinished: front.inFlight }, 'edge broker stopped');
    },
  };
}
