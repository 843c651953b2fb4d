// A data-plane thread: its own uWS app on the shared port, serving the LLM path end
// to end (guard, admission, scheduler, its own undici pools, the compiled chain) and
// /v1/infer up to the image bytes, which go to the control plane's inference pool.
// Anything else (admin, metrics, readiness) is forwarded to the control plane.
//
// It never waits on the control plane to serve: configuration arrives as immutable
// snapshots, acknowledged once applied; exact counters are in shared memory.
import { parentPort, workerData } from 'node:worker_threads';
import { createAccessLogger, createLogger } from '../obs/logger.ts';
import { createMetrics } from '../obs/metrics.ts';
import { FlagStore } from '../config/flags.ts';
import { EMPTY_FLEET } from '../config/broker-config.ts';
import { CapacityCounters } from '../sched/capacity.ts';
import { Governance, type Learned } from '../sched/governance.ts';
import { QuotaLedger } from '../policy/quota.ts';
import { LlmProxy } from '../llm/proxy.ts';
import { ResponseCache } from '../llm/cache/cache.ts';
import { ResponseStore } from '../llm/stored/responses.ts';
import { llmRoutes } from '../llm/routes.ts';
import { buildFleet, type Fleet, type FleetSource } from '../fleet/fleet.ts';
import { threadExecutor } from '../llm/exec/thread.ts';
import { inferRoutes, type InferBackend } from '../infer/routes.ts';
import type { InferReply } from '../infer/service.ts';
import { Router, type Method } from '../front/http/router.ts';
import { startHttpFront, type ForwardedReply } from '../front/http/server.ts';
import { createRateLimiter } from '../guard/rate-limit.ts';
import { BrokerError } from '../errors.ts';
import { createClientAuth, type SessionView } from '../guard/client-auth.ts';
import { createJwtVerifier } from '../guard/jwt.ts';
import { fdLogStream, turnLogStream } from '../obs/log-stream.ts';
import { createTracer } from '../obs/trace/tracer.ts';
import { fromWire } from './forwarded.ts';
import { RowRecorder } from '../track/recorder.ts';
import { BudgetGate } from '../track/budget.ts';
import type { PlaneInit, PlaneStats, Snapshot, ToControl, ToPlane, WireError } from './protocol.ts';

const init = workerData.init as PlaneInit & { readonly port: number };
const port = parentPort!;
const { config } = init;
const post = (m: ToControl, transfer?: ArrayBuffer[]): void => port.postMessage(m, transfer);

const metrics = createMetrics({ defaults: false, thread: `plane-${init.index}` });
// Lines go to stdout from this thread when the control plane writes there too; else (a
// destination given in-process, as tests do) through the control plane, one message a turn.
const toControl = (text: string): void => post({ t: 'log', text });
const logStream = init.logFd !== undefined ? fdLogStream({ fd: init.logFd, spill: toControl }) : turnLogStream(toControl);
const logger = createLogger(config.logLevel, logStream as unknown as NodeJS.WritableStream).child({ plane: init.index });
const accessLog = createAccessLogger(config.logLevel, logStream as unknown as NodeJS.WritableStream).child({ plane: init.index });
// Each thread exports its own spans (docs/tracing.md: why not relay them to the control plane).
const tracer = createTracer(config, `plane-${init.index}`, {
  onOutcome: (outcome, n) => metrics.otelSpans.labels(outcome).inc(n),
  onError: (err) => logger.warn({ err: err.message }, 'OTLP trace export failed (spans dropped; logged at most once a minute)'),
});

// Calls to the control plane, answered by id.
let nextId = 1;
const pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
function call<T>(make: (id: number) => ToControl, transfer?: ArrayBuffer[]): Promise<T> {
  const id = nextId++;
  return new Promise<T>((resolve, reject) => {
    pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
    post(make(id), transfer);
  });
}

/** A call the control plane stops when `onAbort` fires (the client gone): call_abort names it. */
function abortableCall<T>(make: (id: number) => ToControl, transfer: ArrayBuffer[] | undefined, onAbort: (cb: () => void) => void): Promise<T> {
  let id = 0;
  const reply = call<T>((n) => make((id = n)), transfer);
  onAbort(() => post({ t: 'call_abort', id }));
  return reply;
}

// What this thread learns is sent to the control plane, which applies it and relays it
// to the other threads. A port message costs about 20 µs of CPU on each side whatever it
// holds, so finished requests' statistics ('done') go in one message every LESSON_HAND_MS:
// sent per turn they cost a message per request at 2,000 req/s, twice with the relay.
// Pins, probes and failures go at the end of the turn, with whatever waits.
const LESSON_HAND_MS = 20;
let lessons: Learned[] = [];
let lessonTimer: NodeJS.Timeout | undefined;
let lessonsNow = false;
const sendLessons = (): void => {
  if (lessonTimer !== undefined) clearTimeout(lessonTimer);
  lessonTimer = undefined;
  lessonsNow = false;
  if (lessons.length === 0) return;
  const events = lessons;
  lessons = [];
  post({ t: 'learn', events });
};
function queueLesson(e: Learned): void {
  lessons.push(e);
  if (e.k !== 'done') {
    if (!lessonsNow) setImmediate(sendLessons);
    lessonsNow = true;
  } else if (lessonTimer === undefined && !lessonsNow) lessonTimer = setTimeout(sendLessons, LESSON_HAND_MS).unref();
}

// Request tracking: the rows of the requests that end within TRACK_HAND_MS go to the
// control plane's writer in one message; budgets are checked against the totals it sends.
const TRACK_HAND_MS = 20;
const recorder =
  config.tracking === undefined
    ? undefined
    : new RowRecorder({ hand: (rows) => post({ t: 'track', rows }), maxRows: 10_000, handEveryMs: TRACK_HAND_MS, dropped: (n) => metrics.trackingDropped.labels('overflow').inc(n) });
const budgets = config.tracking === undefined ? undefined : new BudgetGate(Date.now, () => snapshot.fleet?.prices.currency ?? 'USD');
// The totals as of this thread's start, before it serves: a key over its budget is refused from the first request.
if (init.spend !== undefined) budgets?.update(init.spend);

let snapshot: Snapshot = init.snapshot;
const capacity = new CapacityCounters(undefined, init.buffers.capacity, { buffer: init.buffers.capacityHoldings, row: init.index });
for (const [id, slot] of snapshot.slots) capacity.bind(id, slot);
const flags = new FlagStore(config.featureFlags);
flags.adopt(snapshot.flags);
const gov = new Governance({
  config: snapshot.fleet ?? { ...EMPTY_FLEET, source: 'none' },
  flags,
  metrics,
  stickyTtlMs: config.stickyTtlS * 1000,
  capacity,
  quota: new QuotaLedger(Date.now, { buffer: init.buffers.quota }),
  waiters: new Int32Array(init.buffers.waiters),
  board: { buffer: init.buffers.board, thread: init.index },
  wakeElsewhere: (group, thread) => post({ t: 'wake', group, thread }),
  shedElsewhere: (thread, level) => post({ t: 'shed', level, thread }),
  owner: false,
  ...(budgets !== undefined ? { budgets } : {}),
  onLearn: queueLesson,
});
gov.setRuntimeKeys(snapshot.keys);
const limits = new Map<string, number>();
for (const d of gov.scheduler.all()) limits.set(d.config.id, capacity.limit(d.slot));

let fleet: Fleet | undefined = snapshot.fleet === null ? undefined : buildFleet(snapshot.fleet);
const fleetSource: FleetSource = {
  current() {
    if (fleet !== undefined) return fleet;
    // Discovery belongs to the control plane; the snapshot it publishes arrives before its answer.
    return call((id) => ({ t: 'discover', id })).then(() => fleet);
  },
};

function apply(s: Snapshot): void {
  for (const [id, slot] of s.slots) if (capacity.slotOf(id) !== slot) capacity.bind(id, slot);
  if (s.fleetVersion !== snapshot.fleetVersion && s.fleet !== null) {
    gov.adopt(s.fleet);
    cache?.adopt(s.fleet.cache);
    fleet = buildFleet(s.fleet);
  }
  flags.adopt(s.flags);
  gov.scheduler.setPaused(s.queuePaused);
  if (s.keysVersion !== snapshot.keysVersion) gov.setRuntimeKeys(s.keys);
  if (s.routesVersion !== snapshot.routesVersion) gov.scheduler.wakeAll();
  for (const d of gov.scheduler.all()) {
    const id = d.config.id;
    // Limits live in shared memory already; a changed one wakes this thread's waiters.
    const limit = capacity.limit(d.slot);
    if (limits.get(id) !== limit) {
      limits.set(id, limit);
      gov.scheduler.setLimit(id, limit);
    }
  }
  snapshot = s;
}

const executor = threadExecutor({ body: config.upstreamMaxBodyBytes, embed: config.upstreamMaxEmbedBytes }, logger);
const cache = new ResponseCache({ settings: (snapshot.fleet ?? EMPTY_FLEET).cache, metrics, logger, redisUrl: config.redisUrl, channel: init.cacheChannel });
const proxy = new LlmProxy({ metrics, logger, executor, leases: gov, cache });
const responseStore = new ResponseStore({ maxBytes: config.responsesStoreMb * 1024 * 1024, ownerMaxBytes: config.responsesStoreOwnerMb * 1024 * 1024, ttlSeconds: config.responsesStoreTtlS, logger, redisUrl: config.responsesStoreRedisUrl, channel: init.cacheChannel === undefined ? undefined : `${init.cacheChannel}-responses`, overOwnerBudget: () => metrics.responsesOverOwnerBudget.inc() });
// Shared entries are there from the first request (bounded by the connect timeout; down: misses).
await cache.connect();

const inference: InferBackend = {
  infer(input) {
    // Transfer the bytes when they own their buffer; small ones live in Node's shared pool.
    const own = input.image.byteOffset === 0 && input.image.byteLength === input.image.buffer.byteLength;
    const image = own ? input.image : Uint8Array.prototype.slice.call(input.image);
    // The client gone: the control plane takes its image out of the queue.
    return abortableCall<InferReply>(
      (id) => ({ t: 'infer', id, call: { image, imgSize: input.imgSize, topK: input.topK, cookieArm: input.cookieArm, priority: input.priority, trace: input.trace } }),
      [image.buffer as ArrayBuffer],
      (cb) => input.signal?.addEventListener('abort', cb),
    );
  },
};

// The control plane's routes, as names only: a request for one that this thread refuses
// before forwarding it (a body past MAX_BODY_BYTES) is counted under its route, not `unmatched`.
const forwardedRoutes = new Router();
const unreachable = (): never => {
  throw new BrokerError('internal', 'a control-plane route runs on the control plane');
};
for (const [method, path, name, guard] of init.controlRoutes ?? []) forwardedRoutes.add({ method: method as Method, path, name: name ?? path, handle: unreachable, admin: guard === 'admin', rateLimited: guard === 'client' });

const router = new Router();
for (const r of [...inferRoutes(inference, config.stickyCookie, (k, c) => gov.priorityCeiling(k, c)), ...llmRoutes(fleetSource, gov, proxy, { maxMessages: config.llmMaxMessages, maxPromptChars: config.llmMaxPromptChars }, responseStore)]) router.add(r);

// PORT=0: the control plane picks the port once every thread is loaded (DataPlanes.start).
const listenPort =
  init.port !== 0
    ? init.port
    : await new Promise<number>((resolve) => {
        const onListen = (m: ToPlane): void => {
          if (m.t !== 'listen') return;
          port.off('message', onListen);
          resolve(m.port);
        };
        port.on('message', onListen);
        post({ t: 'ready' });
      });

const front = await startHttpFront({
  host: config.host,
  port: listenPort,
  maxBodyBytes: config.maxBodyBytes,
  cors: config.corsOrigins,
  trustedProxies: config.trustedProxies,
  router,
  rateLimiter: createRateLimiter(config.rateLimitRps, config.rateLimitBurst, { buffer: init.buffers.rateLimit, onSharedRefusal: () => metrics.rateLimitShared.inc() }),
  // Admin routes are the control plane's: forwarded there whole, never matched here.
  admin: () => {
    throw new BrokerError('internal', 'admin routes are served by the control plane');
  },
  client: createClientAuth({
    mode: config.authMode,
    knownKey: (key) => gov.keyPolicy(key) !== undefined,
    keyRole: (key) => gov.keyPolicy(key)?.role,
    jwt: createJwtVerifier(config.jwt),
    session: (session) => call<SessionView | null>((id) => ({ t: 'session', id, session })),
    knownKeyId: (id) => gov.keyPolicyById(id) !== undefined,
    metrics,
  }),
  knownKey: (key) => gov.keyPolicy(key) !== undefined,
  metrics,
  logger,
  accessLog,
  tracer,
  recorder,
  forwardedRoutes,
  forward(req, body, onAbort) {
    const own = body !== undefined && body.byteOffset === 0 && body.byteLength === body.buffer.byteLength;
    // A span stays on its thread; the forwarded request is recorded by this thread's span.
    const sent = req.span === undefined ? req : { ...req, span: undefined };
    // The client gone: the control plane's route stops its work (a v2 request's items leave the queue).
    return abortableCall<ForwardedReply>((id) => ({ t: 'forward', id, req: sent, body }), own ? [body.buffer as ArrayBuffer] : undefined, onAbort);
  },
});

/** Set by 'hurry': the grace period ends now. */
let hurried = false;

async function stop(graceMs: number): Promise<void> {
  front.stopListening();
  // Requests still waiting for a deployment are answered now, to be retried elsewhere.
  gov.queue.close();
  const deadline = Date.now() + graceMs;
  while (front.inFlight > 0 && Date.now() < deadline && !hurried) await new Promise((r) => setTimeout(r, 20));
  const unfinished = front.inFlight;
  // Past the grace period: streams still open end with an explicit shutting_down event.
  proxy.abortAll();
  const hard = Date.now() + 1000;
  while (front.inFlight > 0 && Date.now() < hard) await new Promise((r) => setTimeout(r, 10));
  await executor.close().catch(() => undefined);
  cache.close();
  responseStore.close();
  front.closeAll();
  // This thread's last spans leave before it stops (bounded: the control plane waits graceMs + 3 s).
  await tracer.shutdown(1000);
  if (lessons.length > 0) sendLessons();
  // The last rows go before 'stopped': the control plane's writer flushes them at shutdown.
  recorder?.flush();
  logStream.flush();
  post({ t: 'stopped', unfinished });
  // Nothing more to say: the thread ends when its loop is empty, so only after uWS has freed
  // every socket it closed (the control plane terminating it before, at the end of a loop turn
  // a loaded box had not reached yet, aborted the whole process: uv_loop_close, exit 134).
  port.close();
}

function stats(): PlaneStats {
  return { queue: gov.queue.stats(), sticky: { pins: gov.sticky.size, hits: gov.sticky.hits, misses: gov.sticky.misses }, inFlight: front.inFlight };
}

port.on('message', (m: ToPlane) => {
  switch (m.t) {
    case 'snapshot':
      apply(m.snapshot);
      post({ t: 'ack', version: m.snapshot.version });
      return;
    case 'learn':
      for (const e of m.events) gov.learn(e);
      return;
    case 'wake':
      gov.wake(m.group);
      return;
    case 'shed':
      gov.shed(m.level);
      return;
    case 'spend':
      budgets?.update(m.entries);
      return;
    case 'reply': {
      const p = pending.get(m.id);
      if (p === undefined) return;
      pending.delete(m.id);
      if (m.error !== undefined) p.reject(fromWire(m.error as WireError));
      else p.resolve(m.value);
      return;
    }
    case 'call':
      if (m.name === 'metrics') void metrics.registry.getMetricsAsJSON().then((value) => post({ t: 'result', id: m.id, value }));
      else if (m.name === 'stats') post({ t: 'result', id: m.id, value: stats() });
      else {
        // The lessons go first on this port, so the control plane has them when the answer arrives.
        if (lessons.length > 0) sendLessons();
        post({ t: 'result', id: m.id, value: true });
      }
      return;
    case 'stop':
      void stop(m.graceMs);
      return;
    case 'hurry':
      hurried = true;
      return;
    case 'fail':
      // Fault injection (tests, drills): this thread dies as it would on a bug.
      setImmediate(() => {
        throw new Error('data-plane thread failure injected by the control plane');
      });
      return;
  }
});

// A thread that throws dies: its connections are closed first (open uWS sockets would
// abort the process), and the control plane starts a replacement.
process.on('uncaughtException', (err) => {
  logger.fatal({ err }, 'data-plane thread failed');
  logStream.flush();
  front.closeAll();
  process.exit(1);
});

post({ t: 'listening', port: front.port });
