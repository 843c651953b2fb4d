// The control plane's handle on the data-plane threads: starts FRONT_THREADS of
// them on one port (SO_REUSEPORT: the kernel spreads connections), publishes
// snapshots and waits for every thread to acknowledge, answers what they forward,
// relays what they learn, replaces a thread that dies, and stops them on shutdown.
import { Worker } from 'node:worker_threads';
import { createServer } from 'node:net';
import { workerEntry } from '../workers/entry.ts';
import { AggregatorRegistry, type Registry } from 'prom-client';

type MetricsJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;
import type { Config } from '../config/env.ts';
import { toBrokerError } from '../errors.ts';
import { RequestAbort, type AbortLike } from '../abort.ts';
import type { Logger } from '../obs/logger.ts';
import type { Metrics } from '../obs/metrics.ts';
import type { BrokerRequest } from '../front/reply.ts';
import type { SessionView } from '../guard/client-auth.ts';
import type { Learned } from '../sched/governance.ts';
import { MAX_THREADS } from '../sched/wait-board.ts';
import type { TrackRow } from '../track/facts.ts';
import type { SpendEntry } from '../track/budget.ts';
import type { ForwardedReply, InferCall, InferReply, PlaneStats, RouteLabel, SharedBuffers, Snapshot, ToControl, ToPlane } from './protocol.ts';

export interface PlanesDeps {
  readonly config: Config;
  readonly threads: number;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly buffers: SharedBuffers;
  /** The response cache's BroadcastChannel name, handed to every thread. */
  readonly cacheChannel?: string;
  /** The snapshot to publish now (a new version when anything changed). */
  snapshot(): Snapshot;
  /** Lines logged by a thread, for the process's one log destination. */
  writeLog(text: string): void;
  /** The descriptor the threads write their lines to themselves (stdout), when the process logs there. */
  readonly logFd?: number;
  /** The control plane's routes, as labels for requests a thread refuses before forwarding them. */
  readonly controlRoutes?: readonly RouteLabel[];
  /** `signal`: aborted when the thread says the client went away. */
  forward(req: BrokerRequest, body: Uint8Array | undefined, signal: AbortLike): Promise<ForwardedReply>;
  /** `signal`: aborted when the thread says the client went away. */
  infer(call: InferCall, signal: AbortLike): Promise<InferReply>;
  discover(): Promise<void>;
  /** A session's roles, or null when it is not live. */
  session(id: string): Promise<SessionView | null>;
  learn(events: readonly Learned[]): void;
  /** Request tracking's rows from a thread (absent: tracking is off). */
  track?(rows: readonly TrackRow[]): void;
  /** The budgets' running totals now, for a thread that starts (absent: tracking is off). */
  spend?(): readonly SpendEntry[];
  /** A slot freed on a thread whose next waiter waits on the control plane (its gRPC requests, row CONTROL_PLANE_ROW of the wait board). */
  wakeControl?(group: string): void;
  /** A newcomer on a thread claimed a waiter of `level` queued on the control plane: it is shed. */
  shedControl?(level: number): void;
  /** A thread exited: what it held of the capacity counters comes back (its releases never ran). */
  threadExited?(index: number): void;
}

/** The wait-board row of the control plane's own queue (gRPC requests), when FRONT_THREADS leaves it free. */
export const CONTROL_PLANE_ROW = MAX_THREADS - 1;

interface Plane {
  readonly index: number;
  readonly worker: Worker;
  acked: number;
  onAck: (() => void)[];
  stopped?: (unfinished: number) => void;
  readonly calls: Map<number, (v: unknown) => void>;
  /** The thread's infer and forward calls in flight: aborted by its call_abort. */
  readonly aborts: Map<number, RequestAbort>;
  /** Stopped by a start that failed on another thread (retire): its exit is no death. */
  retired?: boolean;
  /** Its registry as last read: what /metrics shows for it when it is slow to answer, and keeps of it once it dies. */
  lastMetrics?: MetricsJson;
}

const ACK_TIMEOUT_MS = 5000;
/**
 * How long a call to every thread (metrics, stats, flush) waits for each: a thread busy for
 * longer (a long synchronous task, a stuck loop) would hold /metrics past Prometheus's scrape
 * timeout (5 s in ours). Its metrics are then its last ones; its stats and flush are skipped.
 */
const CALL_TIMEOUT_MS = 2000;

/** How long a stopped thread has to end by itself (it takes tens of ms) before it is terminated. */
const SELF_EXIT_WAIT_MS = 3000;

export class DataPlanes {
  private readonly planes: (Plane | undefined)[];
  private port = 0;
  private closing = false;
  /** start() is spawning every thread: a death then is the start's failure, not a thread to replace. */
  private starting = false;
  private nextCall = 1;
  /**
   * The counters and histograms of threads that died, as last read: kept in the sum, so a
   * replacement starting from zero does not make the process's counters go down (which
   * Prometheus reads as a reset, and rate() as the whole count again).
   */
  private retiredMetrics: Promise<MetricsJson> = Promise.resolve([]);

  constructor(private readonly deps: PlanesDeps) {
    this.planes = new Array<Plane | undefined>(deps.threads).fill(undefined);
  }

  get listeningPort(): number {
    return this.port;
  }

  get count(): number {
    return this.planes.filter((p) => p !== undefined).length;
  }

  /** Makes thread `index` fail as a bug would (tests, drills); resolves when it has exited. */
  async fail(index: number): Promise<void> {
    const p = this.planes[index];
    if (p === undefined) return;
    const exited = new Promise((r) => p.worker.once('exit', r));
    this.send(p, { t: 'fail' });
    await exited;
  }

  /**
   * Starts every thread on PORT. uWS shares a port between sockets (SO_REUSEPORT)
   * only when the port is named, not when the kernel picks it: for PORT=0 the
   * control plane finds a free port once every thread has loaded and waits for it
   * (a port probed, closed, then left free while threads loaded could be taken by
   * another process sharing it, whose requests would then reach either), and tries
   * another if it was taken meanwhile.
   */
  async start(): Promise<number> {
    for (let tries = 1; ; tries++) {
      const named = this.deps.config.port;
      const gate = named === 0 ? new ListenGate(this.planes.length, () => freePort(this.deps.config.host)) : undefined;
      // Every thread at once: each spends most of its start loading its modules, which the
      // cores can do side by side (one after the other, a start took a thread's time per thread).
      this.starting = true;
      const started = await Promise.allSettled(this.planes.map((_, i) => this.spawn(i, gate ?? named)));
      this.starting = false;
      const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      // A thread that listened and then died while the others started counts as a failed start.
      if (failed === undefined && this.planes.every((p) => p !== undefined)) {
        this.port = (started[0] as PromiseFulfilledResult<number>).value;
        break;
      }
      // One did not listen (a free port taken meanwhile, with PORT=0): those that did stop,
      // and all start again on another port.
      await this.retire();
      if (named !== 0 || tries >= 5) throw failed?.reason ?? new Error('a data-plane thread died while the others started');
    }
    this.deps.metrics.planeThreads.set(this.count);
    return this.port;
  }

  /** Stops the threads that listened in a start that failed: not a death (no replacement, no count). */
  private async retire(): Promise<void> {
    const up = this.planes.filter((p): p is Plane => p !== undefined);
    for (const p of up) p.retired = true;
    await Promise.all(up.map((p) => this.stopPlane(p, 0)));
  }

  /**
   * Stops a thread: it closes its sockets, waits up to graceMs for its requests, and says
   * how many it left unfinished (-1: no answer), then ends by itself once its loop is empty.
   * Never terminate() a thread that may still hold uWS sockets: their open handles abort the
   * whole process (uv_loop_close, exit 134): terminated right after 'stopped', a loaded box
   * had not freed them yet. terminate() only when it does not end by itself.
   */
  private async stopPlane(p: Plane, graceMs: number): Promise<number> {
    const exited = new Promise<void>((resolve) => p.worker.once('exit', () => resolve()));
    const unfinished = await new Promise<number>((resolve) => {
      const timer = setTimeout(() => resolve(-1), graceMs + 3000);
      p.stopped = (n) => {
        clearTimeout(timer);
        resolve(n);
      };
      this.send(p, { t: 'stop', graceMs });
    });
    let timer: NodeJS.Timeout | undefined;
    const ended = await Promise.race([exited.then(() => true), new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), SELF_EXIT_WAIT_MS)))]);
    clearTimeout(timer);
    if (!ended) await p.worker.terminate();
    return unfinished;
  }

  /** A thread on `port`, or on the port `gate` picks once every thread of a start is ready. */
  private spawn(index: number, port: number | ListenGate): Promise<number> {
    const gate = typeof port === 'number' ? undefined : port;
    const init = { config: this.deps.config, buffers: this.deps.buffers, snapshot: this.deps.snapshot(), index, port: gate === undefined ? port : 0, cacheChannel: this.deps.cacheChannel, spend: this.deps.spend?.(), logFd: this.deps.logFd, controlRoutes: this.deps.controlRoutes };
    const { filename, workerData } = workerEntry('./worker.ts', import.meta.url, { init });
    const worker = new Worker(filename, { workerData, name: `data-plane-${index}` });
    const plane: Plane = { index, worker, acked: init.snapshot.version, onAck: [], calls: new Map(), aborts: new Map() };
    const started = new Promise<number>((resolve, reject) => {
      let listening = false;
      worker.on('message', (m: ToControl) => {
        if (m.t === 'ready' && gate !== undefined) {
          // No port (another thread failed first): this one stops, which fails its spawn too.
          gate.ready().then((p) => this.send(plane, { t: 'listen', port: p }), () => void worker.terminate());
          return;
        }
        if (m.t === 'listening') {
          listening = true;
          this.planes[index] = plane;
          // A snapshot published while this thread started may be newer than its init.
          if (this.deps.snapshot().version !== plane.acked) this.send(plane, { t: 'snapshot', snapshot: this.deps.snapshot() });
          return resolve(m.port);
        }
        this.onMessage(plane, m);
      });
      worker.on('error', (err) => {
        this.deps.logger.error({ err, plane: index }, 'data-plane thread failed');
        if (!listening) reject(err);
      });
      worker.on('exit', (code) => {
        if (this.planes[index] === plane) this.planes[index] = undefined;
        for (const cb of plane.onAck) cb();
        for (const cb of plane.calls.values()) cb(undefined);
        plane.stopped?.(0);
        // Not when a newer thread already holds the index (its row and slots are its own).
        if (this.planes[index] === undefined) this.deps.threadExited?.(index);
        if (!listening) return reject(new Error(`data-plane thread ${index} exited with code ${code} before it listened`));
        // In a start, a death fails the start (start() retires the rest), rather than racing it with a replacement.
        if (this.closing || this.starting || plane.retired === true) return;
        this.keepMetrics(plane);
        // Its requests are lost with it; the other threads carry on, and a new one takes its place.
        this.deps.metrics.planeRestarts.inc();
        this.deps.metrics.planeThreads.set(this.count);
        this.deps.logger.error({ plane: index, code }, 'data-plane thread died; starting a replacement');
        this.spawn(index, this.port).then(
          () => this.deps.metrics.planeThreads.set(this.count),
          (err) => this.deps.logger.error({ err, plane: index }, 'replacement data-plane thread did not start'),
        );
      });
    });
    // A thread that fails before it listens fails the whole start: the others stop waiting.
    if (gate !== undefined) started.catch((err: unknown) => gate.fail(err));
    return started;
  }

  private send(plane: Plane, m: ToPlane): void {
    plane.worker.postMessage(m);
  }

  private reply(plane: Plane, id: number, work: Promise<unknown>): void {
    work.then(
      (value) => this.send(plane, { t: 'reply', id, value }),
      (err: unknown) => {
        const e = toBrokerError(err);
        if (e.code === 'internal') this.deps.logger.error({ err: e.cause ?? e }, 'internal error serving a data-plane thread');
        this.send(plane, { t: 'reply', id, error: { code: e.code, message: e.message, ...(e.retryAfter !== undefined ? { retryAfter: e.retryAfter } : {}), ...(typeof e.details?.['field'] === 'string' ? { field: e.details['field'] } : {}) } });
      },
    );
  }

  /** A call the thread may abort (its client gone) until it is answered. */
  private abortable<T>(plane: Plane, id: number, run: (abort: RequestAbort) => Promise<T>): Promise<T> {
    const abort = new RequestAbort();
    plane.aborts.set(id, abort);
    const done = run(abort);
    const forget = (): void => void plane.aborts.delete(id);
    void done.then(forget, forget);
    return done;
  }

  private onMessage(plane: Plane, m: ToControl): void {
    switch (m.t) {
      case 'ack':
        plane.acked = Math.max(plane.acked, m.version);
        for (const cb of plane.onAck.splice(0)) cb();
        return;
      case 'forward':
        return this.reply(plane, m.id, this.abortable(plane, m.id, (abort) => this.deps.forward(m.req, m.body, abort)));
      case 'infer':
        return this.reply(plane, m.id, this.abortable(plane, m.id, (abort) => this.deps.infer(m.call, abort)));
      case 'call_abort':
        return plane.aborts.get(m.id)?.abort();
      case 'discover':
        return this.reply(plane, m.id, this.deps.discover());
      case 'session':
        return this.reply(plane, m.id, this.deps.session(m.session));
      case 'result': {
        const cb = plane.calls.get(m.id);
        plane.calls.delete(m.id);
        return cb?.(m.value);
      }
      case 'log':
        return this.deps.writeLog(m.text);
      case 'track':
        return this.deps.track?.(m.rows);
      case 'learn':
        this.deps.learn(m.events);
        for (const p of this.planes) if (p !== undefined && p !== plane) this.send(p, { t: 'learn', events: m.events });
        return;
      case 'wake': {
        // A slot freed on `plane` whose next waiter waits on another thread, or on the control plane.
        if (m.thread === CONTROL_PLANE_ROW && this.deps.threads <= CONTROL_PLANE_ROW) return this.deps.wakeControl?.(m.group);
        const to = this.planes[m.thread];
        if (to !== undefined) this.send(to, { t: 'wake', group: m.group });
        return;
      }
      case 'shed': {
        // A newcomer on `plane` found the queue full and claimed a lower-priority waiter of another thread.
        if (m.thread === CONTROL_PLANE_ROW && this.deps.threads <= CONTROL_PLANE_ROW) return this.deps.shedControl?.(m.level);
        const to = this.planes[m.thread];
        if (to !== undefined) this.send(to, { t: 'shed', level: m.level });
        return;
      }
      case 'stopped':
        return plane.stopped?.(m.unfinished);
      case 'listening':
        return;
    }
  }

  /** What the control plane learned from its own requests (gRPC), for every thread. */
  relay(events: readonly Learned[]): void {
    for (const p of this.planes) if (p !== undefined) this.send(p, { t: 'learn', events });
  }

  /** The budgets' running totals, for every thread's admission. */
  spend(entries: readonly SpendEntry[]): void {
    for (const p of this.planes) if (p !== undefined) this.send(p, { t: 'spend', entries });
  }

  /** A slot freed on the control plane whose next waiter waits on `thread`. */
  wake(thread: number, group: string): void {
    const to = this.planes[thread];
    if (to !== undefined) this.send(to, { t: 'wake', group });
  }

  /** A newcomer on the control plane claimed a lower-priority waiter queued on `thread`. */
  shed(thread: number, level: number): void {
    const to = this.planes[thread];
    if (to !== undefined) this.send(to, { t: 'shed', level });
  }

  /** Sends the current snapshot to every thread; resolves once each applied it. */
  async publish(): Promise<void> {
    const snapshot = this.deps.snapshot();
    const waits: Promise<void>[] = [];
    for (const p of this.planes) {
      if (p === undefined) continue;
      this.send(p, { t: 'snapshot', snapshot });
      waits.push(
        new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, ACK_TIMEOUT_MS);
          const check = (): void => {
            if (p.acked >= snapshot.version || this.planes[p.index] !== p) {
              clearTimeout(timer);
              resolve();
            } else p.onAck.push(check);
          };
          check();
        }),
      );
    }
    await Promise.all(waits);
  }

  /**
   * Resolves once every thread's pending lessons have reached the control plane, so that
   * an admin read (usage, predictions, performance) includes every request already answered.
   */
  async flush(): Promise<void> {
    await this.callAll('flush');
  }

  private callAll(name: 'metrics' | 'stats' | 'flush'): Promise<unknown[]> {
    return Promise.all(
      this.planes.flatMap((p) => {
        if (p === undefined) return [];
        const id = this.nextCall++;
        return [
          new Promise<unknown>((resolve) => {
            const timer = setTimeout(() => {
              p.calls.delete(id);
              resolve(name === 'metrics' ? stalled(p.lastMetrics, CALL_TIMEOUT_MS / 1000) : undefined);
            }, CALL_TIMEOUT_MS);
            p.calls.set(id, (value) => {
              clearTimeout(timer);
              if (name === 'metrics' && value !== undefined) p.lastMetrics = value as MetricsJson;
              // Gone before it answered (its exit answers every call): its last answer, as its
              // counters are then kept in retiredMetrics, which this scrape read before.
              resolve(value ?? (name === 'metrics' ? p.lastMetrics : undefined));
            });
            this.send(p, { t: 'call', id, name });
          }),
        ];
      }),
    ).then((values) => values.filter((v) => v !== undefined));
  }

  /** One exposition for the process: the control plane's registry, every thread's and the dead threads' counters, summed, histograms merged. */
  async metricsText(own: MetricsJson): Promise<string> {
    // The dead threads as of the call: a thread that dies during it is in the answers (its
    // last one), and joins the retired for the next scrape, never in both.
    const retired = this.retiredMetrics;
    const parts = (await this.callAll('metrics')) as MetricsJson[];
    return AggregatorRegistry.aggregate([ownFirst(own), ...parts, await retired] as Parameters<typeof AggregatorRegistry.aggregate>[0]).metrics();
  }

  /** A dead thread's counters and histograms join the retired ones; its gauges (its heap, its in-flight) went with it. */
  private keepMetrics(p: Plane): void {
    const last = p.lastMetrics?.filter((m) => ['counter', 'histogram'].includes(String(m.type)));
    if (last === undefined || last.length === 0) return;
    this.retiredMetrics = this.retiredMetrics.then(async (kept) => {
      try {
        return await AggregatorRegistry.aggregate([kept, last] as Parameters<typeof AggregatorRegistry.aggregate>[0]).getMetricsAsJSON();
      } catch (err) {
        // Never a /metrics that fails from now on: those counts are lost instead.
        this.deps.logger.error({ err, plane: p.index }, "a dead data-plane thread's metrics could not be kept");
        return kept;
      }
    });
  }

  async stats(): Promise<PlaneStats[]> {
    return (await this.callAll('stats')) as PlaneStats[];
  }

  /** Cuts close()'s grace period short: each thread ends its open requests now. */
  hurry(): void {
    for (const p of this.planes) if (p !== undefined) this.send(p, { t: 'hurry' });
  }

  /** Stops accepting on every thread, gives in-flight requests graceMs, then stops the threads. Once: a second call gets the first's result. */
  close(graceMs: number): Promise<number> {
    this.closed ??= this.closeOnce(graceMs);
    return this.closed;
  }

  private closed: Promise<number> | undefined;

  private async closeOnce(graceMs: number): Promise<number> {
    this.closing = true;
    const counts = await Promise.all(this.planes.map((p) => (p === undefined ? 0 : this.stopPlane(p, graceMs))));
    this.deps.metrics.planeThreads.set(0);
    return counts.reduce((a, n) => a + Math.max(0, n), 0);
  }
}

/**
 * prom-client marks process_start_time_seconds `omit` (cluster workers are processes
 * with start times of their own), so the aggregate would drop it. Here the process
 * metrics come from the control plane alone (threads have no defaults): its value is
 * the process's, and `first` keeps it (the control plane's list comes first).
 */
function ownFirst(own: MetricsJson): MetricsJson {
  return own.map((m) => (m.aggregator === 'omit' ? { ...m, aggregator: 'first' as const } : m));
}

/** A thread's last metrics, read when it does not answer: its event loop is stuck for at least `seconds`. */
function stalled(last: MetricsJson | undefined, seconds: number): MetricsJson | undefined {
  return last?.map((m) => (m.name !== 'broker_thread_event_loop_lag_seconds' ? m : { ...m, values: m.values.map((v) => ({ ...v, value: Math.max(v.value, seconds) })) }));
}

/**
 * The port of a start with PORT=0, picked when the last of its threads is ready, so
 * that it stays free for a message's time rather than for the threads' loading.
 */
class ListenGate {
  private left: number;
  private open!: () => void;
  private close!: (err: unknown) => void;
  private readonly port: Promise<number>;

  constructor(threads: number, pick: () => Promise<number>) {
    this.left = threads;
    const all = new Promise<void>((resolve, reject) => {
      this.open = resolve;
      this.close = reject;
    });
    this.port = all.then(pick);
    this.port.catch(() => undefined);
  }

  /** One more thread ready: the port, once all are. */
  ready(): Promise<number> {
    if (--this.left === 0) this.open();
    return this.port;
  }

  fail(err: unknown): void {
    this.close(err);
  }
}

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, host, () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
