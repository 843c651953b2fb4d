// Wiring: config in, a running broker out. main.ts calls this for the process; tests
// call it to run a real broker on a free port in-process.
//
// The main thread is the control plane: configuration, admin APIs, the flag store,
// the inference pool, metrics aggregation. With FRONT_THREADS > 0, data-plane threads
// (src/plane/worker.ts) serve HTTP on the port and forward to it what is not theirs;
// with FRONT_THREADS=0 the main thread serves everything itself.
import { unenforcedNotes } from './config/unenforced.ts';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import type { Config } from './config/env.ts';
import { createAccessLogger, createLogger, type Logger } from './obs/logger.ts';
import { fdLogStream } from './obs/log-stream.ts';
import { createMetrics, type Metrics } from './obs/metrics.ts';
import { obsRoutes } from './obs/routes.ts';
import { createRateLimiter, rateLimitBuffer, setRateLimitShare } from './guard/rate-limit.ts';
import { createJwtVerifier } from './guard/jwt.ts';
import { Identity } from './guard/identity.ts';
import { createClientAuth, type SessionView } from './guard/client-auth.ts';
import { AuthThrottle } from './guard/auth-throttle.ts';
import type { BrokerError } from './errors.ts';
import { MemoryStore, type SessionRecord, type StateStore } from './state/store.ts';
import type { Caller } from './front/reply.ts';
import { RedisStore } from './state/redis.ts';
import { SharedState } from './state/sync.ts';
import { LeaseKeeper } from './state/leases.ts';
import { PinShare } from './state/pin-share.ts';
import { auditSignal, auditTrail } from './obs/audit.ts';
import { authRoutes } from './admin/auth.ts';
import { Router } from './front/http/router.ts';
import { startHttpFront } from './front/http/server.ts';
import { assertPortFree } from './front/http/port-free.ts';
import { loadCandidate, loadManifest } from './infer/manifest.ts';
import { createInferPool, libuvPoolSizing } from './infer/pool.ts';
import { describeConversion, type ConversionMode } from './infer/native.ts';
import { InferService } from './infer/service.ts';
import { disabledInference, inferRoutes, readyRoute } from './infer/routes.ts';
import { V2Core } from './infer/v2/core.ts';
import { v2Routes } from './infer/v2/rest.ts';
import { addV2GrpcService, v2PackageDefinition, V2_SERVICE } from './infer/v2/grpc.ts';
import { adminRoutes } from './admin/routes.ts';
import { EMPTY_FLEET, type BrokerConfig } from './config/broker-config.ts';
import { loadBrokerConfigFile } from './config/fleet-file.ts';
import { FlagStore, type FlagSet } from './config/flags.ts';
import { CapacityCounters } from './sched/capacity.ts';
import { Governance } from './sched/governance.ts';
import { clearWaitBoardRow, waitBoardBuffer } from './sched/wait-board.ts';
import { ShedBoard, waitersBuffer } from './sched/shed-board.ts';
import { QuotaLedger } from './policy/quota.ts';
import { governanceAdmin, industrialRoutes } from './admin/industrial.ts';
import { LlmProxy } from './llm/proxy.ts';
import { ResponseCache } from './llm/cache/cache.ts';
import { ResponseStore } from './llm/stored/responses.ts';
import { llmRoutes } from './llm/routes.ts';
import { buildFleet, type Fleet, type FleetSource } from './fleet/fleet.ts';
import { ollamaFleet } from './fleet/discovery.ts';
import { FleetManager } from './fleet/manager.ts';
import { orchestratorRoutes } from './admin/orchestrator.ts';
import { threadExecutor } from './llm/exec/thread.ts';
import { CONTROL_PLANE_ROW, DataPlanes } from './plane/planes.ts';
import { startGrpcFront, type GrpcFront, type GrpcService } from './front/grpc/server.ts';
import type { Learned } from './sched/governance.ts';
import { serveForwarded } from './plane/forwarded.ts';
import type { Snapshot } from './plane/protocol.ts';
import { createTracer, type Tracer } from './obs/trace/tracer.ts';
import { TrackingWriter } from './track/writer.ts';
import { RowRecorder } from './track/recorder.ts';
import { BudgetGate, type Budget } from './track/budget.ts';
import { trackingRoutes } from './admin/tracking.ts';
import { keyId } from './guard/api-key.ts';
import { loadUws } from './front/http/uws.ts';

export interface Broker {
  readonly port: number;
  readonly config: Config;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** The inference service; undefined with INFER_ENABLED=false. */
  readonly infer: InferService | undefined;
  /** The LLM governance the admin APIs see (the control plane's). */
  readonly governance: Governance;
  /** The data-plane threads; undefined with FRONT_THREADS=0. */
  readonly planes: DataPlanes | undefined;
  /** Request tracking's writer; undefined without DATABASE_URL. */
  readonly tracking: TrackingWriter | undefined;
  /** The gRPC port (0: GRPC_PORT=0, no gRPC front). */
  readonly grpcPort: number;
  /** Resolves once the inference models are loaded (at once without inference). */
  waitReady(): Promise<void>;
  /**
   * Graceful: stop accepting on every thread, let in-flight requests and streams
   * finish for up to graceMs, end the rest with an explicit error, stop the workers.
   */
  close(graceMs?: number): Promise<void>;
  /** Cuts a close's grace period short (a second signal): open requests and streams end now with their error. */
  hurry(): void;
  /** Reads BROKER_CONFIG's file again and puts it in force (SIGHUP), as POST /api/orchestrator/config/reload; throws a BrokerError saying why not. */
  reloadConfig(): { path: string; version: number };
}

export interface BrokerOptions {
  readonly logDestination?: NodeJS.WritableStream;
  /** More gRPC services on the gRPC front (src/front/grpc/server.ts, GrpcService). */
  readonly grpcServices?: readonly GrpcService[];
  /**
   * Aborted when the process is told to stop while it is still starting: the HTTP front stops
   * accepting as soon as it is up (its threads answer before startBroker returns), rather than
   * serve until the rest has started and close() can run.
   */
  readonly stopSignal?: AbortSignal;
}

export async function startBroker(config: Config, opts: BrokerOptions = {}): Promise<Broker> {
  // A bad fleet file stops start-up before anything else is started.
  const fleetConfig = config.brokerConfigPath === undefined ? undefined : loadBrokerConfigFile(config.brokerConfigPath);
  // So does a port another process serves (uWS would share it with that process, silently).
  await assertPortFree(config.host, config.port);
  // stdout, written by each thread itself (src/obs/log-stream.ts); pino's asynchronous
  // destination takes only what a non-blocking stdout refuses.
  let spill: NodeJS.WritableStream | undefined;
  const stdout = opts.logDestination === undefined ? fdLogStream({ fd: 1, spill: (text) => (spill ??= pino.destination({ sync: false }) as unknown as NodeJS.WritableStream).write(text) }) : undefined;
  const destination: NodeJS.WritableStream = opts.logDestination ?? (stdout as unknown as NodeJS.WritableStream);
  const logger = createLogger(config.logLevel, destination);
  const metrics = createMetrics();
  if (config.adminToken === undefined) logger.warn('ADMIN_TOKEN is not set: admin routes are refused');
  else if (config.adminToken.length < 32) logger.warn({ length: config.adminToken.length }, 'ADMIN_TOKEN is shorter than 32 characters: it is accepted (8 at least), but use a long random token');

  // The cluster scope: Redis shared by the replicas, or memory for this process alone.
  let store: StateStore;
  if (config.redisUrl !== undefined) {
    const redis = new RedisStore({ url: config.redisUrl, replica: config.replicaId, logger, commandTimeoutMs: config.redisCommandTimeoutMs, onUp: (up) => metrics.redisUp.set(up ? 1 : 0) });
    metrics.redisUp.set(0);
    await redis.connect();
    if (!redis.up) logger.warn('redis is unreachable at start: serving from local state, retrying in the background');
    store = redis;
  } else store = new MemoryStore();

  // OpenTelemetry: the control plane's spans (its requests with FRONT_THREADS=0, inference); each data-plane thread has its own.
  const tracer = createTracer(config, 'main', {
    onOutcome: (outcome, n) => metrics.otelSpans.labels(outcome).inc(n),
    onError: (err) => logger.warn({ err: err.message }, 'OTLP trace export failed (spans dropped; logged at most once a minute)'),
  });
  for (const note of config.notes) logger.warn(note);
  if (config.otel.enabled) {
    for (const note of config.otel.notes) logger.warn(note);
    // Every outcome from the start at 0, so that increase() sees the first drops.
    for (const outcome of ['exported', 'dropped_queue_full', 'dropped_export_failed'] as const) metrics.otelSpans.labels(outcome).inc(0);
  }
  const infer = config.inferEnabled ? startInference(config, metrics, logger, tracer) : undefined;
  const threaded = config.frontThreads > 0;

  // Fleet and governance. Threaded, this Governance is the control plane's: it owns
  // the capacity slots and limits, learns from every thread, and the admin APIs read it.
  const flags = new FlagStore(config.featureFlags);
  // The staged pipeline is the test oracle and bench baseline; serving with it is a choice to see.
  let compiled = true;
  const checkChain = (f: FlagSet): void => {
    if (!f.compiled_chain && compiled) logger.warn('compiled_chain is off: LLM streams run through the staged baseline pipeline, at 3-4x the CPU per stream');
    compiled = f.compiled_chain;
  };
  checkChain(flags.flags);
  if (fleetConfig !== undefined) for (const note of unenforcedNotes(fleetConfig, flags.flags, config.tracking !== undefined)) logger.warn(note);
  flags.onChange(checkChain);
  const capacity = new CapacityCounters();
  const quota = new QuotaLedger(Date.now);
  const waiters = waitersBuffer();
  const rateLimiter = createRateLimiter(config.rateLimitRps, config.rateLimitBurst, { buffer: config.rateLimitRps > 0 ? rateLimitBuffer() : undefined, onSharedRefusal: () => metrics.rateLimitShared.inc() });
  let fleetNow: BrokerConfig | null = fleetConfig ?? null;
  let fleetVersion = 0;
  let routesVersion = 0;
  let fleetManager: FleetManager | undefined;
  let planes: DataPlanes | undefined;
  // Threaded, the control plane queues only its own gRPC requests; it takes a row of the
  // wait board so that slots freed on either side wake the waiter that should go next,
  // and what its requests teach is relayed to the threads.
  const board = waitBoardBuffer();
  const controlRow = threaded && config.grpcPort !== 0 && config.frontThreads <= CONTROL_PLANE_ROW;
  let lessons: Learned[] = [];
  // Sticky pins made here reach the other replicas (set below, with Redis).
  let pinShare: PinShare | undefined;
  // Budgets per API key: admission here checks this gate; the threads get the same totals by message.
  const budgetGate = config.tracking === undefined ? undefined : new BudgetGate(Date.now, () => governance.current.prices.currency);
  const governance: Governance = new Governance({
    ...(budgetGate !== undefined ? { budgets: budgetGate } : {}),
    config: fleetConfig ?? { ...EMPTY_FLEET, source: 'none' },
    flags,
    metrics,
    stickyTtlMs: config.stickyTtlS * 1000,
    capacity,
    quota,
    waiters: new Int32Array(waiters),
    ...(controlRow
      ? {
          board: { buffer: board, thread: CONTROL_PLANE_ROW },
          wakeElsewhere: (group: string, thread: number) => planes?.wake(thread, group),
          shedElsewhere: (thread: number, level: number) => planes?.shed(thread, level),
        }
      : {}),
    // What the control plane's own requests (gRPC, or everything with FRONT_THREADS=0) teach:
    // the breakers here, and, threaded, the threads' policies too.
    onLearn: (e: Learned) => {
      fleetManager?.observe(e);
      if (e.k === 'pin') pinShare?.add(e.key, e.dep);
      if (!controlRow) return;
      if (lessons.length === 0)
        setImmediate(() => {
          const batch = lessons;
          lessons = [];
          planes?.relay(batch);
        });
      lessons.push(e);
    },
  });
  // The response cache of this thread (FRONT_THREADS=0); threads have theirs, all joined by one
  // BroadcastChannel so that a reply stored on one is a hit on every one. Threaded, this one
  // serves nothing (gRPC does not use the cache) and keeps no entries: it flushes them all.
  const cacheChannel = `eb-llm-cache-${randomUUID()}`;
  const responseCache = new ResponseCache({ settings: (fleetConfig ?? governance.current).cache, metrics, logger, redisUrl: config.redisUrl, channel: threaded ? cacheChannel : undefined, holdsEntries: !threaded });
  await responseCache.connect();
  // Stored Responses: served where the client APIs are, the threads when threaded (theirs,
  // joined by a channel of their own); a copy here nothing read grew past 1 GiB with theirs.
  const responseStore = threaded ? undefined : new ResponseStore({ maxBytes: config.responsesStoreMb * 1024 * 1024, ownerMaxBytes: config.responsesStoreOwnerMb * 1024 * 1024, ttlSeconds: config.responsesStoreTtlS, logger, redisUrl: config.responsesStoreRedisUrl, overOwnerBudget: () => metrics.responsesOverOwnerBudget.inc() });
  // Changes the control plane makes on its own (health checks, breakers, discovery) reach the threads too.
  const publish = (): void => void planes?.publish().catch(() => undefined);
  // A flag changed by another replica (through the store) is in force on this one's threads too.
  flags.onChange(() => publish());
  // The fleet model: servers, health, breakers, bans, drain and maintenance, the running config.
  fleetManager = new FleetManager(
    {
      governance,
      metrics,
      logger,
      configPath: config.brokerConfigPath,
      healthChecks: config.fleetHealthChecks,
      upstreamKeyEnvs: config.upstreamKeyEnvs,
      onConfig(next) {
        fleetNow = next;
        responseCache.adopt(next.cache);
        fleetVersion++;
        publish();
      },
      onRoutable() {
        routesVersion++;
        publish();
      },
      onOperatorChange: () => shared?.fleetChanged(),
    },
    governance.current,
  );
  const manager = fleetManager;
  // Identity: admin callers (ADMIN_TOKEN, JWTs, sessions, API keys) and the client routes' AUTH_MODE.
  const jwt = createJwtVerifier(config.jwt);
  let keysVersion = 0;
  let shared: SharedState | undefined;
  const identity = new Identity({
    adminToken: config.adminToken,
    jwt,
    store,
    sessionTtlMs: config.sessionTtlS * 1000,
    maxSessionsPerSubject: config.maxSessionsPerSubject,
    failMode: config.authRedisFailMode,
    metrics,
    logger,
    onKeys(keys) {
      governance.setRuntimeKeys(keys);
      runtimeKeys = keys.map((k) => ({ hash: k.hash, id: k.id, role: k.role, tier: k.tier, priority: k.priority, label: k.label, rpm: k.rpm, tpm: k.tpm }));
      keysVersion++;
      publish();
    },
  });
  let runtimeKeys: Snapshot['keys'] = [];
  await identity.reloadKeys().catch((err: Error) => logger.warn({ err: err.message }, 'API keys could not be read from the store; retrying when it is back'));
  shared = new SharedState({ store, flags, fleet: manager, identity, logger, metrics, replica: config.replicaId });
  const sharedState = shared;
  const discovery = fleetConfig === undefined ? ollamaFleet(config.ollamaUrl, logger, (found) => manager.replace(found)) : undefined;
  let served: { config: BrokerConfig; fleet: Fleet } | undefined;
  const fleet: FleetSource = {
    async current() {
      if (discovery !== undefined && manager.current.modelGroups.size === 0) await discovery.current();
      const c = manager.current;
      if (c.modelGroups.size === 0) return undefined;
      if (served?.config !== c) served = { config: c, fleet: buildFleet(c) };
      return served.fleet;
    },
  };

  let version = 0;
  let last: Snapshot | undefined;
  const snapshot = (): Snapshot => {
    const next = { flags: flags.flags, fleet: fleetNow, fleetVersion, slots: capacity.entries(), routesVersion, queuePaused: manager.queuePaused, keys: runtimeKeys, keysVersion };
    if (last !== undefined && sameSnapshot(last, next)) return last;
    const made: Snapshot = Object.freeze({ version: ++version, ...next });
    last = made;
    return made;
  };

  // Request tracking (docs/tracking.md): the one writer, here on the control plane.
  const tracking =
    config.tracking === undefined
      ? undefined
      : new TrackingWriter({
          config: config.tracking,
          replica: config.replicaId,
          logger,
          metrics,
          prices: () => governance.current.prices,
          budgets: () => budgetsOf(governance.current),
          onSpend(entries) {
            budgetGate?.update(entries);
            planes?.spend(entries);
          },
        });
  // The control plane's own requests (gRPC; everything with FRONT_THREADS=0) hand their rows to it directly.
  const recorder = tracking === undefined ? undefined : new RowRecorder({ hand: (rows) => tracking.accept(rows), maxRows: 10_000, dropped: (n) => metrics.trackingDropped.labels('overflow').inc(n) });
  if (tracking === undefined) logger.info('request tracking is off: set DATABASE_URL=postgres://… to record every request in PostgreSQL (docs/tracking.md)');
  else {
    // Migrations and partitions before serving, as far as the database lets: one that is down does not hold start-up (rows are buffered meanwhile).
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([tracking.start(), new Promise((r) => (timer = setTimeout(r, 5000)))]);
    clearTimeout(timer);
  }

  const v2Core = new V2Core(infer);
  // The gRPC front starts after the HTTP one: not ready until it listens too.
  let grpcListening = false;
  const frontsListening = (): boolean => config.grpcPort === 0 || grpcListening;
  // An inference request's priority may only be lower than its API key's (as an LLM request's).
  const ceiling = (apiKey: string | undefined, caller?: Caller): number => governance.priorityCeiling(apiKey, caller);
  // A client route's session: its roles, null when it is not live; a rejection when the store
  // cannot say (sessions fail closed), which the client gets as such, not as a dead session.
  const clientSession = async (id: string): Promise<SessionView | null> => sessionView(await identity.liveSession(id));
  const authThrottle = new AuthThrottle(config.adminAuthMaxFailures > 0 ? config.adminAuthMaxFailures : Infinity);
  const admin = governanceAdmin(governance, manager, threaded ? { stats: () => planes!.stats() } : undefined);
  const controlRoutes = [
    ...obsRoutes(metrics, threaded ? async () => planes!.metricsText(await metrics.registry.getMetricsAsJSON()) : undefined),
    readyRoute(infer, frontsListening),
    // Open Inference Protocol (KServe v2): served here, where the models live; data-plane threads forward /v2 (docs/oip.md).
    ...v2Routes(v2Core, config.stickyCookie, ceiling),
    ...(infer !== undefined ? adminRoutes(infer) : []),
    ...industrialRoutes(admin, logger),
    ...trackingRoutes(() => tracking?.pool),
    ...authRoutes({ identity, store, qos: () => governance.qos, keyPolicy: (k) => governance.keyPolicy(k), keysChanged: () => sharedState.keysChanged(), ready: () => frontsListening() && (infer?.ready ?? true), replica: config.replicaId, throttle: authThrottle }),
    ...orchestratorRoutes({
      fleet: manager,
      logger,
      queueStats: async () => (await admin.processStats()).queue,
      inFlight: () => capacity.ids().map((id) => capacity.stats(id)!),
      metricsText: async () => ({ contentType: metrics.registry.contentType, text: threaded ? await planes!.metricsText(await metrics.registry.getMetricsAsJSON()) : await metrics.registry.metrics() }),
      flushCache: () => responseCache.flush(),
    }),
  ];
  const guards = {
    maxBodyBytes: config.maxBodyBytes,
    rateLimiter,
    // A failed credential counts against its address: past ADMIN_AUTH_MAX_FAILURES a minute, 429.
    async admin(req: { headers: Readonly<Record<string, string>>; remoteAddress: string }) {
      authThrottle.check(req.remoteAddress);
      try {
        return await identity.principal(req.headers['authorization']);
      } catch (err) {
        const code = (err as BrokerError).code;
        // A session the store could not check (Redis away) is no wrong credential: else a
        // dashboard polling through an outage would lock the address, ADMIN_TOKEN included.
        // No credential at all guesses nothing (a crawler, a probe): not counted either, or it
        // would lock the address's ADMIN_TOKEN out for a minute.
        const guessed = req.headers['authorization'] !== undefined && req.headers['authorization'] !== '';
        if (guessed && (code === 'unauthorized' || code === 'forbidden') && (err as BrokerError).details?.['reason'] !== 'store_unavailable') authThrottle.failed(req.remoteAddress);
        throw err;
      }
    },
    // Threaded, the client routes are the threads'; this one serves them with FRONT_THREADS=0.
    client: createClientAuth({ mode: config.authMode, knownKey: (k) => governance.keyPolicy(k) !== undefined, keyRole: (k) => governance.keyPolicy(k)?.role, knownKeyId: (id) => governance.keyPolicyById(id) !== undefined, jwt, session: clientSession, metrics }),
    audit: auditTrail(store, logger, config.replicaId),
    metrics,
    knownKey: (key: string) => governance.keyPolicy(key) !== undefined,
  };

  let port: number;
  let proxy: LlmProxy | undefined;
  // Upstream pools live where requests are served: here only with FRONT_THREADS=0.
  const executor = threaded ? undefined : threadExecutor({ body: config.upstreamMaxBodyBytes, embed: config.upstreamMaxEmbedBytes }, logger);
  let stopListening: () => void;
  let closeAll: () => void;
  let inFlight: () => number;
  try {
    if (threaded) {
      const controlRouter = new Router();
      for (const r of controlRoutes) controlRouter.add(r);
      const control = { ...guards, router: controlRouter, logger, recorder };
      planes = new DataPlanes({
        config,
        threads: config.frontThreads,
        logger,
        metrics,
        buffers: { capacity: capacity.buffer, capacityHoldings: capacity.holdingsBuffer, waiters, board, quota: quota.buffer, rateLimit: rateLimiter.buffer },
        cacheChannel,
        snapshot,
        ...(tracking !== undefined ? { spend: () => tracking.ledger.entries() } : {}),
        writeLog: (text) => destination.write(text),
        ...(stdout !== undefined ? { logFd: 1 } : {}),
        controlRoutes: controlRoutes.map((r) => [r.method, r.path, r.name, r.admin === true ? 'admin' : r.rateLimited === true ? 'client' : undefined] as const),
        async forward(req, body, signal) {
          // What the threads learned from requests already answered is in what the admin reads.
          if (req.path.startsWith('/api/industrial/') || req.path.startsWith('/api/orchestrator/')) await planes!.flush();
          const reply = await serveForwarded(control, req, body, signal);
          // A change made through the admin API is in force on every thread before it returns.
          // v2 inference changes nothing: a snapshot round trip per request would double its main-thread CPU.
          if (req.method !== 'GET' && req.method !== 'HEAD' && !req.path.startsWith('/v2/')) await planes!.publish();
          return reply;
        },
        infer(call, signal) {
          if (infer === undefined) return disabledInference.infer(call as never);
          return infer.infer({ image: Buffer.from(call.image.buffer, call.image.byteOffset, call.image.byteLength), imgSize: call.imgSize, topK: call.topK, cookieArm: call.cookieArm, priority: call.priority, trace: call.trace, signal });
        },
        async discover() {
          const before = fleetVersion;
          await fleet.current();
          if (fleetVersion !== before) await planes!.publish();
        },
        session: clientSession,
        ...(tracking !== undefined ? { track: (rows: Parameters<TrackingWriter['accept']>[0]) => tracking.accept(rows) } : {}),
        learn(events) {
          for (const e of events) {
            governance.learn(e);
            manager.observe(e);
            if (e.k === 'pin') pinShare?.add(e.key, e.dep);
          }
        },
        wakeControl: (group) => governance.wake(group),
        shedControl: (level) => governance.shed(level),
        threadExited: (index) => {
          // Its queued requests died with it: out of the queue's count, and off the wait board.
          const gone = ShedBoard.reclaim(new Int32Array(waiters), index);
          clearWaitBoardRow(board, index);
          if (gone > 0) logger.warn({ plane: index, waiters: gone }, 'a data-plane thread died with requests queued: taken out of the queue');
          const slots = governance.reclaimThread(index);
          if (slots > 0) logger.warn({ plane: index, slots }, 'a data-plane thread died holding capacity slots: given back');
        },
      });
      port = await planes.start();
      if (tracking !== undefined) planes.spend(tracking.ledger.entries());
      stopListening = () => undefined;
      closeAll = () => undefined;
      inFlight = () => 0;
    } else {
      proxy = new LlmProxy({ metrics, logger, executor: executor!, leases: governance, cache: responseCache });
      const router = new Router();
      for (const r of [...controlRoutes, ...inferRoutes(infer ?? disabledInference, config.stickyCookie, ceiling), ...llmRoutes(fleet, governance, proxy, { maxMessages: config.llmMaxMessages, maxPromptChars: config.llmMaxPromptChars }, responseStore)]) router.add(r);
      const front = await startHttpFront({ ...guards, cors: config.corsOrigins, trustedProxies: config.trustedProxies, host: config.host, port: config.port, router, logger, accessLog: createAccessLogger(config.logLevel, destination), tracer, recorder });
      port = front.port;
      stopListening = () => front.stopListening();
      closeAll = () => front.closeAll();
      inFlight = () => front.inFlight;
    }
  } catch (err) {
    manager.stop();
    sharedState.close();
    responseCache.close();
    responseStore?.close();
    await Promise.all([infer?.close(), executor?.close(), planes?.close(0), store.close(), tracer.shutdown(0), tracking?.close(0)]);
    throw err;
  }
  // Told to stop while starting: stop accepting now; close() (called once this returns) drains.
  const stopEarly = (): void => {
    if (planes !== undefined) void planes.close(config.shutdownGraceS * 1000);
    else stopListening();
  };
  if (opts.stopSignal?.aborted === true) stopEarly();
  else opts.stopSignal?.addEventListener('abort', stopEarly, { once: true });
  manager.start();
  // Replicas sharing Redis spend cluster quotas from leases (src/state/leases.ts), and share sticky pins.
  let leases: LeaseKeeper | undefined;
  if (store instanceof RedisStore) {
    pinShare = new PinShare(store, (pins) => {
      const events: Learned[] = pins.map(([key, dep]) => ({ k: 'pin', key, dep }));
      for (const e of events) governance.learn(e);
      planes?.relay(events);
    });
    let lastError = 0;
    leases = new LeaseKeeper({
      ledger: quota,
      backend: store,
      active: () => flags.flags.quota_enforcement,
      onLease: (source) => metrics.quotaLeases.labels(source).inc(),
      onReplicas: (n) => {
        metrics.replicasSeen.set(n);
        if (rateLimiter.buffer !== undefined) setRateLimitShare(rateLimiter.buffer, n);
      },
      onError: (err) => {
        if (Date.now() - lastError < 60_000) return;
        lastError = Date.now();
        logger.warn({ err: err.message }, 'quota lease from redis failed: spending a local share of the limits (logged at most once a minute)');
      },
    });
    leases.start();
    await leases.tick();
  }

  // The gRPC front, on this thread (the control plane). Threaded, this thread has no LLM
  // proxy for HTTP: gRPC gets its own, with its own upstream pools, leasing from the
  // control plane's Governance (the same shared capacity, quotas and wait queue).
  let grpc: GrpcFront | undefined;
  const grpcExecutor = config.grpcPort !== 0 && proxy === undefined ? threadExecutor({ body: config.upstreamMaxBodyBytes, embed: config.upstreamMaxEmbedBytes }, logger) : undefined;
  const grpcProxy = proxy ?? (grpcExecutor !== undefined ? new LlmProxy({ metrics, logger, executor: grpcExecutor, leases: governance, cache: responseCache }) : undefined);
  if (config.grpcPort !== 0) {
    try {
      grpc = await startGrpcFront({
        host: config.host,
        port: config.grpcPort,
        tls: config.grpcTls,
        maxMessageBytes: config.maxBodyBytes,
        keepaliveTimeMs: config.grpcKeepaliveTimeMs,
        keepaliveTimeoutMs: config.grpcKeepaliveTimeoutMs,
        handshakeTimeoutMs: config.grpcHandshakeTimeoutMs,
        requestTimeoutMs: config.grpcRequestTimeoutMs,
        maxConcurrentStreams: config.grpcMaxConcurrentStreams,
        maxHealthWatchers: config.grpcMaxHealthWatchers,
        metrics,
        logger,
        accessLog: createAccessLogger(config.logLevel, destination),
        rateLimiter,
        knownKey: guards.knownKey,
        client: guards.client,
        // A fleet found by discovery here reaches the threads too.
        source: threaded
          ? {
              async current() {
                const before = fleetVersion;
                const f = await fleet.current();
                if (fleetVersion !== before) await planes!.publish();
                return f;
              },
            }
          : fleet,
        admission: governance,
        proxy: grpcProxy!,
        limits: { maxMessages: config.llmMaxMessages, maxPromptChars: config.llmMaxPromptChars },
        inferService: infer,
        infer: infer ?? disabledInference,
        // KServe v2 (GRPCInferenceService) on the same server as ours, on the same V2Core as REST.
        recorder,
        priorityCeiling: ceiling,
        services: [{ definition: v2PackageDefinition(), names: [V2_SERVICE], inference: true, register: (server, ctx) => addV2GrpcService(server, { core: v2Core, ...ctx }) }, ...(opts.grpcServices ?? [])],
      });
      grpcListening = true;
    } catch (err) {
      await Promise.all([infer?.close(), executor?.close(), grpcExecutor?.close(), planes?.close(0)]);
      closeAll();
      throw err;
    }
  }
  if (infer !== undefined) {
    metrics.sources.inferQueue = () => infer.currentPool.queueSize;
    metrics.sources.inferPending = () => infer.currentPool.queueSizes;
    metrics.sources.inferWorkers = () => infer.currentPool.threads.length;
  }
  metrics.planeThreads.set(planes?.count ?? 0);
  const uws = loadUws();
  if (!uws.underscoreHeaders) logger.warn({ why: uws.note }, "uWS unpatched: a request with '_' in a header name (Codex CLI's session_id) gets no answer (docs/operations.md)");
  logger.info(
    { port, host: config.host, front_threads: config.frontThreads, llm: fleetConfig?.source ?? `ollama discovery at ${config.ollamaUrl}`, inference: infer !== undefined, ...(infer !== undefined ? { models: modelsServed(infer) } : {}), infer_threads: config.inferThreads, intra_op_threads: config.inferIntraOpThreads, underscore_headers: uws.underscoreHeaders, ...(infer !== undefined ? pixelConversion(config.inferNative) : {}) },
    'edge broker listening',
  );

  let closed: Promise<void> | undefined;
  // A second signal: the grace period ends now (close() goes on to cut what is open).
  let hurried = false;
  return {
    port,
    config,
    metrics,
    logger,
    infer,
    governance,
    planes,
    tracking,
    grpcPort: grpc?.port ?? 0,
    waitReady: () => infer?.waitReady() ?? Promise.resolve(),
    reloadConfig: () => {
      const r = manager.reload(undefined, undefined);
      auditSignal(store, logger, config.replicaId, 'SIGHUP', '/api/orchestrator/config/reload', r);
      return r;
    },
    hurry() {
      hurried = true;
      infer?.abortQueued();
      grpc?.hurry();
      planes?.hurry();
    },
    close(graceMs = config.shutdownGraceS * 1000) {
      closed ??= (async () => {
        const closeStarted = Date.now();
        // At the end of the grace period, images still queued answer 503 shutting_down while
        // their connections are open (the fronts close a second later), not after them.
        const inferDeadline = setTimeout(() => infer?.abortQueued(), graceMs);
        inferDeadline.unref();
        manager.stop();
        sharedState.close();
        // LLM requests still waiting for a deployment (gRPC's, and HTTP's with FRONT_THREADS=0;
        // each data-plane thread answers its own) are answered now, to be retried elsewhere.
        governance.queue.close();
        // gRPC: health NOT_SERVING, no new calls, graceMs for open ones, then UNAVAILABLE.
        const grpcClosed = grpc?.close(graceMs) ?? Promise.resolve(0);
        let unfinished: number;
        if (planes !== undefined) {
          unfinished = await planes.close(graceMs);
        } else {
          stopListening();
          const deadline = Date.now() + graceMs;
          // gRPC shares this thread's proxy: its calls get the grace period too, not only HTTP's.
          let grpcDone = false;
          void grpcClosed.then(() => (grpcDone = true));
          while ((inFlight() > 0 || !grpcDone) && Date.now() < deadline && !hurried) await new Promise((r) => setTimeout(r, 20));
          unfinished = inFlight();
          // Streams still open end with an explicit shutting_down event.
          proxy?.abortAll();
          const hard = Date.now() + 1000;
          while (inFlight() > 0 && Date.now() < hard) await new Promise((r) => setTimeout(r, 10));
          closeAll();
        }
        unfinished += await grpcClosed;
        // Every request has ended: the last rows (the threads sent theirs before stopping) are
        // written within what is left of the grace period, at least a second.
        recorder?.flush();
        await tracking?.close(Math.max(closeStarted + graceMs, Date.now() + 1000));
        responseCache.close();
        responseStore?.close();
        // Unspent leases go back to the cluster before the store closes.
        pinShare?.close();
        await leases?.close().catch(() => undefined);
        clearTimeout(inferDeadline);
        // Nobody is left to answer: what is still queued is not worth running.
        infer?.abortQueued();
        await Promise.all([infer?.close(), executor?.close(), grpcExecutor?.close(), store.close()]);
        // The last spans (inference ones included) leave after the work that made them ended.
        await tracer.shutdown(2000);
        logger.info({ unfinished, ...(tracer.counts !== undefined ? { spans: tracer.counts } : {}) }, 'edge broker stopped');
      })();
      return closed;
    },
  };
}

function startInference(config: Config, metrics: Metrics, logger: Logger, tracer: Tracer): InferService {
  const uv = libuvPoolSizing(config.inferThreads, config.inferTasksPerWorker, process.env.UV_THREADPOOL_SIZE);
  if (!uv.ok) logger.warn({ uv_threadpool_size: uv.size, wanted: uv.wanted }, `libuv's thread pool (UV_THREADPOOL_SIZE=${uv.size}) decodes fewer images at once than the inference workers hold batches: set UV_THREADPOOL_SIZE=${uv.wanted} in the environment (docs/benchmarks.md, thread sizing rule)`);
  const a = loadManifest(config.modelVaPath);
  // A manifest of B's that does not load is said by the model check (its requests answer 503), not fatal.
  const models = { A: a, B: config.modelVbPath === config.modelVaPath ? a : loadCandidate(config.modelVbPath, a) };
  for (const [arm, m] of Object.entries(models)) {
    if (m.ignored !== undefined && (arm === 'A' || m !== a)) logger.warn({ arm, model: m.manifest.name, path: m.path, fields: m.ignored }, `model manifest of ${m.manifest.name}: ${m.ignored.join(', ')} ${m.ignored.length === 1 ? 'is not a field' : 'are not fields'} the broker reads (a typo leaves its setting at the default; models/README.md lists the fields)`);
  }
  // The Open Inference Protocol reaches an arm by its manifest version (docs/oip.md).
  if (models.A.path !== models.B.path && models.B.unusable === undefined && models.A.manifest.version === models.B.manifest.version) {
    logger.warn({ a: models.A.manifest.name, b: models.B.manifest.name, version: models.A.manifest.version }, `models A and B are different files with the same manifest version ${models.A.manifest.version}: a v2 request cannot name B by its version (/v2/models/{m}/versions/{v} reaches both, the A/B policy picks); give each its own version`);
  }
  return new InferService({
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
    models,
    makePool: (models) =>
      createInferPool({
        models,
        threads: config.inferThreads,
        intraOpThreads: config.inferIntraOpThreads,
        maxQueue: config.inferMaxQueue,
        maxPixels: config.inferMaxPixels,
        native: config.inferNative,
        tasksPerWorker: config.inferTasksPerWorker,
        tracer,
        onWorkerFailure: () => {
          metrics.workerRestarts.inc();
          logger.warn('inference worker exited; a replacement is starting');
        },
        onRestart: (live, wanted) => logger.warn({ live, wanted }, 'inference workers were not all replaced (one died while starting); starting the pool anew'),
      }),
    metrics,
    logger,
  });
}

/** What a data-plane thread needs of a session: its roles, and whom admission holds it to. */
function sessionView(s: SessionRecord | undefined): SessionView | null {
  return s === undefined ? null : { roles: s.roles, subject: s.subject, keyId: s.keyId, tier: s.tier };
}

function sameSnapshot(a: Omit<Snapshot, 'version'>, b: Omit<Snapshot, 'version'>): boolean {
  return (
    a.flags === b.flags &&
    a.fleetVersion === b.fleetVersion &&
    a.slots.length === b.slots.length &&
    a.slots.every(([id, slot], i) => b.slots[i]![0] === id && b.slots[i]![1] === slot) &&
    a.routesVersion === b.routesVersion &&
    a.keysVersion === b.keysVersion &&
    a.queuePaused === b.queuePaused
  );
}

const budgetCache = new WeakMap<BrokerConfig, ReadonlyMap<string, Budget>>();

/** The fleet file's keys that have a budget, by key id (computed once per config). */
function budgetsOf(config: BrokerConfig): ReadonlyMap<string, Budget> {
  let m = budgetCache.get(config);
  if (m === undefined) {
    const out = new Map<string, Budget>();
    for (const [key, p] of config.apiKeys) if (p.budget !== undefined) out.set(keyId(key), p.budget);
    m = out;
    budgetCache.set(config, m);
  }
  return m;
}

/** The start-up log's word on the model of each arm (whether it fits is said by its own line, after the workers' check). */
function modelsServed(infer: InferService): Record<'A' | 'B', { model: string; version: string; path: string }> {
  const arm = (m: { manifest: { name: string; version: string }; path: string }) => ({ model: m.manifest.name, version: m.manifest.version, path: m.path });
  return { A: arm(infer.models.A), B: arm(infer.models.B) };
}

/** The start-up log's word on the inference workers' pixel conversion: native/'s addon or JavaScript, and why. */
function pixelConversion(mode: ConversionMode): { pixel_conversion: 'native' | 'js'; pixel_conversion_reason: string } {
  const d = describeConversion(mode);
  return { pixel_conversion: d.path, pixel_conversion_reason: d.reason };
}
