// The fleet manager: the control plane's one model of the upstream servers. It owns
// their health (active checks), the circuit breakers per server × model, bans, drain
// and maintenance, recovery tests, the analytics window, the queue pause, and the
// running config with its version. Whatever it decides about routing it writes as
// route bits into the shared capacity buffer (route-bits.ts), where every thread's
// scheduler reads it on the next pick; config changes go out as a new fleet in the
// data-plane snapshot (onConfig). Both admin faces (/api/orchestrator/* and the drain
// and limits of /api/industrial/capacity/*) act on this one model.
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, realpathSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, resolve, sep } from 'node:path';
import { stringify as toYaml } from 'yaml';
import { BrokerError } from '../errors.ts';
import { isKeyId, keyId } from '../guard/api-key.ts';
import { BrokerConfigError, type BrokerConfig, type DeploymentConfig, type ServerConfig } from '../config/broker-config.ts';
import { parseBrokerConfig, readBrokerConfigDocument } from '../config/fleet-file.ts';
import type { RawBrokerConfig, RawServer } from '../config/schema.ts';
import { hideUrls, redactUrl, restoreUrls } from '../config/secret-url.ts';
import type { Governance, Learned } from '../sched/governance.ts';
import type { QuotaLimits } from '../policy/quota.ts';
import type { Logger } from '../obs/logger.ts';
import type { FleetGauges, Metrics } from '../obs/metrics.ts';
import { CircuitBreaker, type BreakerState, type BreakerView } from './breaker.ts';
import { Bans, modelKey, type Ban, type BanScope } from './bans.ts';
import { checkServer, type CheckResult } from './health.ts';
import { RecoveryRecord, recoveryTest, type RecoveryResult } from './recovery.ts';
import { FleetAnalytics } from './analytics.ts';
import { canonical } from '../state/merge.ts';
import { BANNED, BLOCKED, BREAKER_OPEN, COLD, DRAINING, HALF_OPEN, MAINTENANCE, UNHEALTHY } from './route-bits.ts';

/** Server × model pairs per config object. */
const pairsOf = new WeakMap<BrokerConfig, readonly (readonly [string, string])[]>();

export type ServerHealth = 'healthy' | 'unhealthy';

interface ServerState {
  config: ServerConfig;
  health: ServerHealth;
  okStreak: number;
  failStreak: number;
  lastCheckAt: number;
  lastError: string | null;
  /** What its last good check listed; null before one. */
  models: readonly string[] | null;
  /** Loaded now (Ollama /api/ps); null when the server does not say. */
  loaded: readonly string[] | null;
  draining: boolean;
  maintenance: { reason: string; since: number } | null;
  checking: Promise<void> | undefined;
}

export interface FleetManagerDeps {
  readonly governance: Governance;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** BROKER_CONFIG: what /config/reload may read and /config/save writes; undefined with discovery. */
  readonly configPath: string | undefined;
  readonly env?: Readonly<Record<string, string | undefined>>;
  readonly now?: () => number;
  /** A new fleet config is in force on the control plane: publish it to the threads. */
  readonly onConfig: (config: BrokerConfig) => void;
  /** Something became routable again: every thread's waiters should try again. */
  readonly onRoutable: () => void;
  /** Checks off (tests of routing alone); default from the config. */
  readonly healthChecks?: boolean;
  /**
   * UPSTREAM_KEY_ENVS: env vars a change made at run time may name for an upstream key, besides
   * those the fleet file named at start (checkEnvNames).
   */
  readonly upstreamKeyEnvs?: readonly string[];
  /** An operator changed something replicas share (drain, maintenance, bans, forced breakers, pause, config). */
  readonly onOperatorChange?: () => void;
}

/** What replicas share of the fleet (src/state/sync.ts): operator decisions, not what each one measured. */
export interface OperatorState {
  /** Changes with every config change, so that replicas apply a config once. */
  readonly rev: string;
  readonly raw: RawBrokerConfig;
  readonly draining: readonly string[];
  readonly maintenance: readonly { readonly server: string; readonly reason: string; readonly since: number }[];
  readonly drainedDeployments: readonly string[];
  readonly bans: readonly Ban[];
  /** Breakers an operator forced open: [server, model]. */
  readonly forcedOpen: readonly (readonly [string, string])[];
  readonly paused: boolean;
  /** Quota limits an operator set at run time: [subject, limits] (absent from older replicas). */
  readonly quotas?: readonly (readonly [string, QuotaLimits])[];
  /**
   * The env vars the config's replica may name for keys (its fleet file's, as loaded at start or
   * reloaded, and its UPSTREAM_KEY_ENVS): the config goes with them, so that one reloaded from a
   * file on one replica is taken by the others (absent from older replicas).
   */
  readonly keyEnvs?: readonly string[];
  /**
   * The fleet file the running config descends from (fileHashOf its document as read): a
   * replica that starts with another file (the ConfigMap was edited) puts its own in force
   * (sync.ts); absent from older replicas.
   */
  readonly fileHash?: string;
  /**
   * Files POST /config/save wrote from this running config since it came from `fileHash`'s file
   * (their fileHashOf, oldest first, at most SAVED_HASHES): a replica that starts with one of
   * them (the saved file) is started from the running config, not an edited file.
   */
  readonly savedHashes?: readonly string[];
}

/** How many saved files a running config remembers (OperatorState.savedHashes). */
const SAVED_HASHES = 16;

/** A fleet file's fingerprint: its document as parsed (comments and layout do not count). */
export function fileHashOf(raw: RawBrokerConfig): string {
  return createHash('sha256').update(canonical(raw)).digest('hex').slice(0, 16);
}

// A breaker per server × model, whichever of Ollama's names the model goes by (bans.ts modelKey).
const pairKey = (server: string, model: string): string => `${server}\u0000${modelKey(model)}`;
const STATE_NUM: Record<BreakerState, 0 | 1 | 2> = { closed: 0, half_open: 1, open: 2 };
/** Ollama answers `llama3.2` for `llama3.2:latest` (bans.ts modelKey, as bans and breakers compare). */
const sameModel = (a: string, b: string): boolean => modelKey(a) === modelKey(b);

export class FleetManager {
  private config: BrokerConfig;
  /** Bumped by every change to the config; clients send it back in If-Match. */
  version = 1;
  private readonly servers = new Map<string, ServerState>();
  private readonly breakers = new Map<string, CircuitBreaker>();
  /** A breaker's server and model as first named (its key folds Ollama's `:latest`): one label set per breaker in the metrics and logs. */
  private readonly breakerNames = new Map<string, readonly [string, string]>();
  readonly bans: Bans;
  private readonly recovery = new Map<string, RecoveryRecord>();
  readonly analytics: FleetAnalytics;
  private readonly drained = new Set<string>();
  private readonly words = new Map<number, number>();
  private paused = false;
  /** The config revision replicas agree on (a fresh one per change). */
  private rev = 'initial';
  /** The file the running config descends from (OperatorState.fileHash); undefined: unknown. */
  private fileHash: string | undefined;
  /** OperatorState.savedHashes. */
  private savedHashes: readonly string[] = [];
  private readonly now: () => number;
  private readonly startedAt: number;
  private healthTimer: NodeJS.Timeout | undefined;
  /** The env vars a change through the API may name (checkEnvNames); the file's own, once reloaded, join them. */
  private readonly keyEnvs: Set<string>;
  private tickTimer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly deps: FleetManagerDeps,
    initial: BrokerConfig,
  ) {
    this.now = deps.now ?? Date.now;
    this.startedAt = this.now();
    this.config = initial;
    this.fileHash = fileHashOf(initial.raw);
    this.keyEnvs = new Set([...envNamesOf(initial.raw), ...(deps.upstreamKeyEnvs ?? [])]);
    this.bans = new Bans(this.now);
    this.analytics = new FleetAnalytics(initial.fleet.historyWindowMinutes, this.now);
    this.syncServers();
    this.applyRoutes();
    deps.metrics.sources.fleet = () => this.gauges();
  }

  get current(): BrokerConfig {
    return this.config;
  }

  get etag(): string {
    return `"${this.version}"`;
  }

  /** Starts the health checks (a first round at once) and the breaker and ban clock. */
  start(): void {
    this.tickTimer = setInterval(() => this.tick(), 250);
    this.tickTimer.unref();
    this.scheduleChecks();
  }

  stop(): void {
    this.stopped = true;
    clearInterval(this.tickTimer);
    clearTimeout(this.healthTimer);
  }

  private scheduleChecks(): void {
    const h = this.config.fleet.healthCheck;
    if (this.stopped || !(this.deps.healthChecks ?? h.enabled)) return;
    void this.checkAll().finally(() => {
      if (this.stopped) return;
      this.healthTimer = setTimeout(() => this.scheduleChecks(), this.config.fleet.healthCheck.intervalMs);
      this.healthTimer.unref();
    });
  }

  /** One round of health checks over every server, concurrently. */
  async checkAll(): Promise<void> {
    await Promise.all([...this.servers.values()].map((s) => this.check(s)));
  }

  private check(s: ServerState): Promise<void> {
    s.checking ??= checkServer(s.config, this.config.fleet.healthCheck.timeoutMs)
      .then((r) => this.checked(s, r))
      .finally(() => (s.checking = undefined));
    return s.checking;
  }

  private checked(s: ServerState, r: CheckResult): void {
    if (this.servers.get(s.config.id) !== s) return; // removed meanwhile
    const h = this.config.fleet.healthCheck;
    s.lastCheckAt = this.now();
    let routesChanged = false;
    if (r.ok) {
      s.failStreak = 0;
      s.okStreak++;
      // Kept while the server is still unhealthy (its checks passing, not yet enough of them): the reason it is out.
      if (s.health === 'healthy') s.lastError = null;
      if (s.health === 'unhealthy' && s.okStreak >= h.healthyThreshold) {
        s.health = 'healthy';
        s.lastError = null;
        routesChanged = true;
        this.deps.logger.info({ server: s.config.id }, 'server healthy again');
      }
      const modelsChanged = s.models === null || s.models.join('\n') !== r.models.join('\n');
      const loadedChanged = (s.loaded ?? []).join('\n') !== (r.loaded ?? []).join('\n') || (s.loaded === null) !== (r.loaded === null);
      s.models = r.models;
      s.loaded = r.loaded;
      routesChanged ||= loadedChanged;
      // A declared server without a models list serves what it lists: a change re-forms the groups.
      if (modelsChanged && s.config.declared && this.rawServer(s.config.id)?.models === undefined) this.refreshDiscovered();
    } else {
      s.okStreak = 0;
      s.failStreak++;
      s.lastError = r.error;
      this.deps.metrics.healthCheckFailures.labels(s.config.id).inc();
      if (s.health === 'healthy' && s.failStreak >= h.unhealthyThreshold) {
        s.health = 'unhealthy';
        routesChanged = true;
        this.deps.logger.warn({ server: s.config.id, err: r.error, failures: s.failStreak }, 'server unhealthy: no new requests until it passes its checks');
      }
    }
    if (routesChanged) this.applyRoutes();
  }

  // ---- outcomes from every thread ----

  /** A lesson from a finished request or a failed attempt (this thread's or relayed). */
  observe(e: Learned): void {
    if (e.k !== 'fail' && e.k !== 'done' && e.k !== 'exhausted') return;
    if (e.dep === null) return;
    const d = this.deployment(e.dep);
    if (d === undefined) return;
    // A request every tried deployment failed before its first byte: an error the client got,
    // in the analytics of the last one (its breaker heard each attempt already).
    if (e.k === 'exhausted') return this.analytics.finished(d.server, d.model, false, null, e.durationMs, 0);
    const b = this.breakerOf(d.server, d.model);
    if (e.k === 'fail') {
      this.analytics.attemptFailed(d.server, d.model);
      if (b.record(false, 'failed before the first byte')) this.transitioned(d.server, d.model, b);
      return;
    }
    if (e.ok === null) {
      // A client that left says nothing about the server; a trial it held is given back.
      if (b.state === 'half_open') this.returnTrial(d);
      return;
    }
    this.analytics.finished(d.server, d.model, e.ok, e.ttftMs, e.durationMs, e.prompt + e.completion);
    if (b.record(e.ok, e.ok ? undefined : 'failed after the first byte')) this.transitioned(d.server, d.model, b);
  }

  private returnTrial(d: DeploymentConfig): void {
    const slot = this.deps.governance.deployment(d.id)?.slot;
    if (slot === undefined) return;
    this.deps.governance.capacity.returnTrial(slot);
    this.trialsBack();
  }

  /** A half-open breaker has a trial permit again: the requests held for it try (on every thread). */
  private trialsBack(): void {
    this.deps.governance.scheduler.wakeAll();
    this.deps.onRoutable();
  }

  private deployment(id: string): DeploymentConfig | undefined {
    return this.deps.governance.deployment(id)?.config;
  }

  private breakerOf(server: string, model: string): CircuitBreaker {
    const key = pairKey(server, model);
    let b = this.breakers.get(key);
    if (b === undefined) {
      this.breakers.set(key, (b = new CircuitBreaker(this.config.fleet.breaker, this.now)));
      // Labelled with the name the config routes (circuit_breaker_state's and the API's),
      // whichever of Ollama's names it was asked by: another replica's forcedOpen says m:latest.
      this.breakerNames.set(key, this.pairs().find(([s, m]) => s === server && sameModel(m, model)) ?? [server, model]);
    }
    return b;
  }

  private transitioned(server: string, model: string, b: CircuitBreaker): void {
    [server, model] = this.breakerNames.get(pairKey(server, model)) ?? [server, model];
    this.deps.metrics.breakerTransitions.labels(server, model, b.state).inc();
    const log = b.state === 'open' ? 'warn' : 'info';
    // A closed breaker's last error is history: on its line it read as the reason it closed.
    this.deps.logger[log]({ server, model, state: b.state, trips: b.trips, ...(b.state === 'closed' ? {} : { err: b.lastError }) }, `circuit breaker ${b.state.replace('_', '-')}`);
    this.applyRoutes();
  }

  /** The clock: open breakers whose time is up turn half-open, bans lapse, lost trial permits come back. */
  tick(): void {
    let changed = this.bans.expire();
    for (const [key, b] of this.breakers) {
      if (b.tick()) {
        const [server, model] = this.breakerNames.get(key) ?? (key.split('\u0000') as [string, string]);
        this.deps.metrics.breakerTransitions.labels(server, model, b.state).inc();
        this.deps.logger.info({ server, model }, 'circuit breaker half-open: trial requests go through');
        changed = true;
      }
    }
    if (changed) this.applyRoutes();
    // Trial permits taken by requests that ended without an outcome (a 429): given back once nothing is in flight.
    const cap = this.deps.governance.capacity;
    for (const d of this.deps.governance.scheduler.all()) {
      const b = this.breakers.get(pairKey(d.config.server, d.config.model));
      if (b?.state === 'half_open' && cap.trials(d.slot) === 0 && cap.inFlight(d.slot) === 0) {
        cap.setTrials(d.slot, b.trialsNeeded);
        this.trialsBack();
      }
    }
  }

  // ---- route bits ----

  /** Recomputes every deployment's route bits and writes the changed ones. */
  applyRoutes(): void {
    const gov = this.deps.governance;
    let freed = false;
    for (const d of gov.scheduler.all()) {
      const c = d.config;
      const s = this.servers.get(c.server);
      let bits = 0;
      if (s === undefined) bits |= DRAINING; // removed: in-flight requests finish
      else {
        if (s.health === 'unhealthy') bits |= UNHEALTHY;
        if (s.draining) bits |= DRAINING;
        if (s.maintenance !== null) bits |= MAINTENANCE;
        // Cold only when the server lists the model but has not loaded it.
        if (s.loaded !== null && s.models?.some((m) => sameModel(m, c.model)) && !s.loaded.some((m) => sameModel(m, c.model))) bits |= COLD;
      }
      if (this.drained.has(c.id)) bits |= DRAINING;
      if (this.bans.find(c.server, c.model) !== undefined) bits |= BANNED;
      const b = this.breakers.get(pairKey(c.server, c.model));
      if (b?.state === 'open') bits |= BREAKER_OPEN;
      if (b?.state === 'half_open') bits |= HALF_OPEN;
      const before = this.words.get(d.slot) ?? 0;
      if (bits === before) continue;
      if ((bits & HALF_OPEN) !== 0 && (before & HALF_OPEN) === 0) gov.capacity.setTrials(d.slot, b!.trialsNeeded);
      gov.capacity.setRouteWord(d.slot, bits);
      this.words.set(d.slot, bits);
      // Waiters try again whenever routability changed: a block lifted, a breaker half-open
      // or closed again (its waiters were held for the trials' outcome), or a new block (they
      // fail over, or fail now, rather than wait out their queue time).
      if (((before ^ bits) & (BLOCKED | HALF_OPEN)) !== 0) freed = true;
    }
    if (freed) {
      gov.scheduler.wakeAll();
      this.deps.onRoutable();
    }
  }

  // ---- servers ----

  /** Server states follow the config: new ones start healthy, removed ones go. */
  private syncServers(): void {
    const seen = new Set<string>();
    for (const c of this.config.servers.values()) {
      seen.add(c.id);
      const s = this.servers.get(c.id);
      if (s !== undefined) s.config = c;
      else this.servers.set(c.id, { config: c, health: 'healthy', okStreak: 0, failStreak: 0, lastCheckAt: 0, lastError: null, models: null, loaded: null, draining: false, maintenance: null, checking: undefined });
    }
    for (const id of [...this.servers.keys()]) if (!seen.has(id)) this.servers.delete(id);
    for (const b of this.breakers.values()) b.configure(this.config.fleet.breaker);
    this.analytics.setWindow(this.config.fleet.historyWindowMinutes);
  }

  serverState(id: string): ServerState {
    const s = this.servers.get(id);
    if (s === undefined) throw new BrokerError('not_found', `no server ${id}; servers: ${[...this.servers.keys()].join(', ') || 'none'}`);
    return s;
  }

  private modelsOf(s: ServerState): string[] {
    const configured = [...this.config.modelGroups.values()].flatMap((g) => g.deployments.filter((d) => d.server === s.config.id).map((d) => d.model));
    return [...new Set([...configured, ...(s.models ?? [])])];
  }

  serverView(s: ServerState): Record<string, unknown> {
    const cap = this.deps.governance.capacity;
    const deployments = this.deps.governance.scheduler.all().filter((d) => d.config.server === s.config.id && this.inConfig(d.config.id));
    const inFlight = deployments.reduce((n, d) => n + cap.inFlight(d.slot), 0);
    const state = s.maintenance !== null ? 'maintenance' : s.draining ? 'draining' : s.health;
    return {
      id: s.config.id,
      url: redactUrl(s.config.url),
      provider: s.config.provider,
      maxConcurrency: s.config.maxConcurrency,
      state,
      healthy: s.health === 'healthy',
      draining: s.draining,
      maintenance: s.maintenance === null ? { enabled: false } : { enabled: true, reason: s.maintenance.reason, since: new Date(s.maintenance.since).toISOString() },
      inFlight,
      models: this.modelsOf(s),
      loadedModels: s.loaded,
      lastCheck: s.lastCheckAt > 0 ? new Date(s.lastCheckAt).toISOString() : null,
      lastError: s.lastError,
      consecutiveFailures: s.failStreak,
      deployments: deployments.map((d) => d.config.id),
      // Drained one by one (/api/industrial/capacity/{id}/drain): not routed even when the server is.
      drainedDeployments: deployments.filter((d) => this.drained.has(d.config.id)).map((d) => d.config.id),
    };
  }

  listServers(): Record<string, unknown>[] {
    return [...this.servers.values()].map((s) => this.serverView(s));
  }

  private inConfig(deploymentId: string): boolean {
    for (const g of this.config.modelGroups.values()) if (g.deployments.some((d) => d.id === deploymentId)) return true;
    return false;
  }

  setDraining(id: string, draining: boolean): Record<string, unknown> {
    const s = this.serverState(id);
    s.draining = draining;
    // Undraining a server puts all of it back in service, deployments drained one by one too.
    if (!draining) for (const d of this.deps.governance.scheduler.all()) if (d.config.server === id) this.drained.delete(d.config.id);
    this.applyRoutes();
    this.changed();
    return this.serverView(s);
  }

  setMaintenance(id: string, enabled: boolean, reason: string | undefined): Record<string, unknown> {
    const s = this.serverState(id);
    s.maintenance = enabled ? { reason: reason ?? 'maintenance', since: s.maintenance?.since ?? this.now() } : null;
    this.applyRoutes();
    this.changed();
    return this.serverView(s);
  }

  /** The drain of /api/industrial/capacity/{id}/drain: one deployment. */
  drainDeployment(id: string, draining: boolean): boolean {
    if (this.deps.governance.deployment(id) === undefined) return false;
    if (draining) this.drained.add(id);
    else this.drained.delete(id);
    this.applyRoutes();
    this.changed();
    return true;
  }

  isDrained(id: string): boolean {
    const slot = this.deps.governance.deployment(id)?.slot;
    return slot !== undefined && ((this.words.get(slot) ?? 0) & DRAINING) !== 0;
  }

  /** Adds a server (its models listed, or found by a first health check before this returns). */
  async addServer(body: RawServer): Promise<Record<string, unknown>> {
    if (this.config.servers.has(body.id)) throw new BrokerError('invalid_request', `server ${body.id} exists already`, { details: { field: 'id' } });
    const raw = structuredClone(this.config.raw);
    raw.servers = [...(raw.servers ?? []), body];
    this.commit(raw, undefined);
    const s = this.serverState(body.id);
    await this.firstCheck(s);
    return this.serverView(s);
  }

  /**
   * A new server's first health check. One that fails it gets no traffic until it passes its
   * checks: it was reported healthy, beside the connection error, and sent requests.
   */
  private async firstCheck(s: ServerState): Promise<void> {
    await this.check(s);
    if (s.failStreak > 0 && s.health === 'healthy') {
      s.health = 'unhealthy';
      this.applyRoutes();
      this.deps.logger.warn({ server: s.config.id, err: s.lastError }, 'added server failed its first health check: no requests until it passes its checks');
    }
  }

  /** Removes a server: no new requests; its in-flight streams finish on their own. */
  removeServer(id: string): { removed: string; inFlight: number } {
    const s = this.serverState(id);
    const inFlight = this.serverView(s).inFlight as number;
    const raw = structuredClone(this.config.raw);
    raw.servers = (raw.servers ?? []).filter((x) => x.id !== id);
    if (raw.servers.length === 0) delete raw.servers;
    // Deployments on it (or that are it) leave their groups. A group of the file it would leave
    // empty is refused: the group, its fallbacks and settings went with it, and its clients got
    // 404 model_not_found (a replacement server joins a group of its model's name, not this one).
    const groups = raw.modelGroups ?? {};
    const emptied: string[] = [];
    for (const [name, g] of Object.entries(groups)) {
      g.deployments = g.deployments.filter((d) => d.server !== id && d.id !== id);
      if (g.deployments.length === 0) emptied.push(name);
    }
    if (emptied.length > 0) {
      throw new BrokerError(
        'invalid_request',
        `server ${id} serves the last deployment of model group ${emptied.join(', ')}: add a deployment on another server to it first (POST /api/orchestrator/config), or stop its traffic with drain or maintenance (its requests then fall back)`,
        { details: { field: 'id' } },
      );
    }
    if (raw.servers === undefined && raw.modelGroups === undefined) throw new BrokerError('invalid_request', `server ${id} is the last one: add another before removing it`);
    this.commit(raw, undefined);
    for (const key of [...this.breakers.keys()]) {
      if (!key.startsWith(`${id}\u0000`)) continue;
      this.breakers.delete(key);
      this.breakerNames.delete(key);
    }
    return { removed: id, inFlight };
  }

  // ---- breakers ----

  breakerViews(): ({ server: string; model: string } & BreakerView)[] {
    const out: ({ server: string; model: string } & BreakerView)[] = [];
    for (const [server, model] of this.pairs()) out.push({ server, model, ...this.breakerOf(server, model).view() });
    return out;
  }

  /** Every server × model the config routes to: built once per config (a reload makes a new one). */
  private pairs(): readonly (readonly [string, string])[] {
    let p = pairsOf.get(this.config);
    if (p === undefined) {
      const seen = new Map<string, [string, string]>();
      for (const g of this.config.modelGroups.values()) for (const d of g.deployments) seen.set(pairKey(d.server, d.model), [d.server, d.model]);
      p = [...seen.values()];
      pairsOf.set(this.config, p);
    }
    return p;
  }

  private knownPair(server: string, model: string): void {
    this.serverState(server);
    if (!this.pairs().some(([s, m]) => s === server && modelKey(m) === modelKey(model))) throw new BrokerError('model_not_found', `server ${server} serves no model ${model}; it serves: ${this.pairs().filter(([s]) => s === server).map(([, m]) => m).join(', ') || 'none'}`);
  }

  breakerView(server: string, model: string): { server: string; model: string } & BreakerView {
    this.knownPair(server, model);
    return { server, model, ...this.breakerOf(server, model).view() };
  }

  forceBreaker(server: string, model: string, state: BreakerState | 'reset'): { server: string; model: string } & BreakerView {
    this.knownPair(server, model);
    const b = this.breakerOf(server, model);
    const changed = state === 'reset' ? b.reset() : b.force(state);
    if (changed) this.transitioned(server, model, b);
    else this.applyRoutes();
    this.changed();
    this.deps.logger.info({ audit: 'breaker', server, model, action: state }, 'circuit breaker set by an operator');
    return { server, model, ...b.view() };
  }

  resetServerBreakers(server: string): { server: string; reset: number } {
    this.serverState(server);
    let n = 0;
    for (const [s, m] of this.pairs()) {
      if (s !== server) continue;
      const b = this.breakerOf(s, m);
      if (b.reset()) this.deps.metrics.breakerTransitions.labels(s, m, 'closed').inc();
      n++;
    }
    this.applyRoutes();
    this.changed();
    return { server, reset: n };
  }

  // ---- bans ----

  ban(scope: BanScope, server: string | null, model: string | null, reason: string, ttlMs: number | null): Ban {
    if (server !== null) this.serverState(server);
    if (model !== null && !this.pairs().some(([s, m]) => modelKey(m) === modelKey(model) && (server === null || s === server))) throw new BrokerError('model_not_found', `no server serves model ${model}${server === null ? '' : ` on ${server}`}`);
    const b = this.bans.add(scope, server, model, reason, ttlMs);
    this.applyRoutes();
    this.changed();
    return b;
  }

  unban(match: (b: Ban) => boolean): number {
    const n = this.bans.remove(match);
    this.applyRoutes();
    this.changed();
    return n;
  }

  // ---- recovery ----

  async runRecoveryTest(server: string, model: string): Promise<RecoveryResult & { breaker: BreakerView }> {
    this.knownPair(server, model);
    const s = this.serverState(server);
    const r = await recoveryTest(s.config, model, Math.max(this.config.fleet.healthCheck.timeoutMs, s.config.headersTimeoutMs > 30_000 ? 30_000 : s.config.headersTimeoutMs));
    this.recordOf(server).add(model, r, this.now());
    const b = this.breakerOf(server, model);
    // A good test of an open breaker lets trial traffic through at once; a failed one counts as a failure.
    if (r.ok && b.state === 'open' && !b.forced) {
      b.force('half_open');
      this.transitioned(server, model, b);
    } else if (!r.ok && r.kind !== 'http_429' && r.kind !== 'http_4xx') {
      if (b.record(false, r.error)) this.transitioned(server, model, b);
    }
    return { ...r, breaker: b.view() };
  }

  recordOf(server: string): RecoveryRecord {
    let r = this.recovery.get(server);
    if (r === undefined) this.recovery.set(server, (r = new RecoveryRecord(this.config.fleet.recoveryHistory)));
    return r;
  }

  recoverySummary(): Record<string, unknown>[] {
    return [...this.recovery].map(([server, r]) => ({ server, tests: r.tests, failures: r.failures, lastFailureAt: r.lastFailureAt > 0 ? new Date(r.lastFailureAt).toISOString() : null, lastSuccessAt: r.lastSuccessAt > 0 ? new Date(r.lastSuccessAt).toISOString() : null }));
  }

  recoveryStats(server: string): Record<string, unknown> {
    this.serverState(server);
    const r = this.recordOf(server);
    return { server, tests: r.tests, failures: r.failures, failureRate: r.tests > 0 ? r.failures / r.tests : 0, ...r.analysis(this.now()) };
  }

  recoveryAnalysis(server: string): Record<string, unknown> {
    this.serverState(server);
    const r = this.recordOf(server);
    const a = r.analysis(this.now());
    const s = this.serverState(server);
    const advice =
      r.failures === 0 ? 'no failed recovery tests'
      : a.mostCommon === 'connect' ? 'the server does not accept connections: is it running, and is the URL right?'
      : a.mostCommon === 'timeout' ? 'the server accepts but does not answer in time: it may be loading the model or overloaded'
      : a.mostCommon === 'http_5xx' ? 'the server answers with errors: check its logs'
      : a.mostCommon === 'http_4xx' ? 'the server refuses the request: is the model name right, and the API key?'
      : 'see the history';
    return { server, health: s.health, ...a, failures: r.failures, tests: r.tests, advice };
  }

  breakerImpact(server: string): Record<string, unknown> {
    this.serverState(server);
    const breakers = this.breakerViews().filter((b) => b.server === server);
    return {
      server,
      breakers: breakers.map((b) => ({ model: b.model, state: b.state, trips: b.trips, forced: b.forced, openedAt: b.openedAt, halfOpenAt: b.halfOpenAt, blockedRouting: b.state !== 'closed' })),
      open: breakers.filter((b) => b.state === 'open').length,
      halfOpen: breakers.filter((b) => b.state === 'half_open').length,
      recoveryFailures: this.recordOf(server).failures,
    };
  }

  resetRecovery(server: string): { server: string; reset: true } {
    this.serverState(server);
    this.recovery.delete(server);
    return { server, reset: true };
  }

  // ---- queue ----

  get queuePaused(): boolean {
    return this.paused;
  }

  setPaused(paused: boolean): void {
    this.paused = paused;
    this.deps.governance.scheduler.setPaused(paused);
    this.changed();
    this.deps.logger.info({ audit: 'queue', paused }, paused ? 'queue paused: new LLM requests wait' : 'queue resumed');
  }

  // ---- config ----

  /** Checks an If-Match against the current version: a stale writer gets 409. */
  private expect(ifMatch: string | undefined): void {
    if (ifMatch === undefined || ifMatch === '*') return;
    const tags = ifMatch.split(',').map((t) => t.trim().replace(/^W\//, ''));
    if (!tags.includes(this.etag) && !tags.includes(String(this.version))) throw new BrokerError('config_conflict', `the config is at version ${this.version}, not ${ifMatch}: GET it again and reapply your change`, { details: { version: this.version } });
  }

  /**
   * Validates a whole document and puts it in force; nothing changes when it is invalid. One
   * that came through the API (not `fromFile`) may name only the env vars checkEnvNames allows.
   */
  private commit(raw: RawBrokerConfig, ifMatch: string | undefined, source = this.config.source, fromFile = false): BrokerConfig {
    this.expect(ifMatch);
    if (!fromFile) this.checkEnvNames(raw);
    let next: BrokerConfig;
    try {
      next = parseBrokerConfig(raw, source, this.deps.env ?? process.env, this.discovered());
    } catch (err) {
      if (err instanceof BrokerConfigError) throw new BrokerError('invalid_request', err.message, { details: { field: err.path } });
      throw err;
    }
    this.renewRev();
    if (fromFile) for (const name of envNamesOf(raw)) this.keyEnvs.add(name);
    if (fromFile) {
      this.fileHash = fileHashOf(raw);
      this.savedHashes = [];
    }
    this.adopt(next);
    this.changed();
    return next;
  }

  /** A fresh config revision: the other replicas put in force a config whose revision they have not. */
  renewRev(): void {
    this.rev = `${this.deps.env?.REPLICA_ID ?? process.pid}-${this.version}-${Math.random().toString(36).slice(2, 8)}`;
  }

  /**
   * An upstream key comes from an env var the config names; the broker then sends it to that
   * upstream's URL. A change through the API naming any env var would let an admin send the
   * broker's own secrets (ADMIN_TOKEN, JWT_SECRET, DATABASE_URL, a cloud credential) to a URL
   * of their choosing. So it may name only the env vars the fleet file named (at start, or
   * reloaded from disk) and those UPSTREAM_KEY_ENVS lists.
   */
  private checkEnvNames(raw: RawBrokerConfig, alsoAllowed: readonly string[] = []): void {
    for (const [field, name] of envFieldsOf(raw)) {
      if (this.keyEnvs.has(name) || alsoAllowed.includes(name)) continue;
      throw new BrokerError('forbidden', `${field}: env var ${name} is not one a change through the API may name: only those the fleet file names, or UPSTREAM_KEY_ENVS lists (${[...this.keyEnvs].join(', ') || 'none'})`, { details: { field } });
    }
  }

  private changed(): void {
    this.deps.onOperatorChange?.();
  }

  /** What the other replicas need to do as this one does. */
  exportOperatorState(): OperatorState {
    const servers = [...this.servers.values()];
    return {
      rev: this.rev,
      raw: this.config.raw,
      draining: servers.filter((s) => s.draining).map((s) => s.config.id),
      maintenance: servers.filter((s) => s.maintenance !== null).map((s) => ({ server: s.config.id, reason: s.maintenance!.reason, since: s.maintenance!.since })),
      drainedDeployments: [...this.drained],
      bans: this.bans.list(),
      forcedOpen: [...this.breakers].filter(([, b]) => b.forced && b.state === 'open').map(([k]) => k.split('\u0000') as [string, string]),
      paused: this.paused,
      quotas: this.deps.governance.operatorQuotas(),
      keyEnvs: [...this.keyEnvs].sort(),
      ...(this.fileHash !== undefined ? { fileHash: this.fileHash } : {}),
      ...(this.savedHashes.length > 0 ? { savedHashes: this.savedHashes } : {}),
    };
  }

  /** Whether a fleet file (its fileHashOf) is the one the running config came from, or one saved from it since. */
  descendsFrom(fileHash: string): boolean {
    return fileHash === this.fileHash || this.savedHashes.includes(fileHash);
  }

  /** An operator set quota limits here: the other replicas apply them too. */
  quotaChanged(): void {
    this.changed();
  }

  /**
   * Says that another replica's config is now in force here: a replica started with another
   * file (or a PATCH, a reload there) changes this one's model groups and servers, and its
   * own log was the only place that said so. A warning when groups or servers came or went.
   */
  private saidAdopted(groupsBefore: ReadonlySet<string>, serversBefore: ReadonlySet<string>, oldHash: string | undefined): void {
    const groups = new Set(this.config.modelGroups.keys());
    const servers = new Set(this.servers.keys());
    const diff = (a: ReadonlySet<string>, b: ReadonlySet<string>) => [...a].filter((x) => !b.has(x));
    const change = {
      groups_added: diff(groups, groupsBefore),
      groups_removed: diff(groupsBefore, groups),
      servers_added: diff(servers, serversBefore),
      servers_removed: diff(serversBefore, servers),
      file_hash_before: oldHash ?? null,
      file_hash: this.fileHash ?? null,
    };
    const moved = change.groups_added.length + change.groups_removed.length + change.servers_added.length + change.servers_removed.length > 0;
    const line = 'a config from another replica (shared through Redis) is in force here';
    // A warning for another fleet file that changed what this replica serves; an operator's
    // change through the API there (a server added) is routine.
    if (moved && change.file_hash !== change.file_hash_before) this.deps.logger.warn(change, `${line}: its fleet file differs, and so do its model groups or servers`);
    else this.deps.logger.info(change, line);
  }

  /** Another replica's operator state: in force here, without telling the others again. */
  importOperatorState(o: OperatorState): void {
    if (o.rev !== this.rev && o.rev !== 'initial') {
      try {
        // Another replica's change may have come through its API: the same rule as ours, with
        // the names its own file allowed it (a reload there), which its config brings along.
        this.checkEnvNames(o.raw, o.keyEnvs);
        const next = parseBrokerConfig(o.raw, this.config.source, this.deps.env ?? process.env, this.discovered());
        const oldHash = this.fileHash;
        this.rev = o.rev;
        // The adopted config's file (unknown for a doc of an older version).
        this.fileHash = o.fileHash;
        this.savedHashes = o.savedHashes ?? [];
        for (const name of o.keyEnvs ?? []) this.keyEnvs.add(name);
        const known = new Set(this.servers.keys());
        const before = new Set(this.config.modelGroups.keys());
        this.adopt(next);
        this.saidAdopted(before, known, oldHash);
        // A server another replica added: checked here at once, as the adding replica did
        // (health checks on or off), so that the models it lists are served on every replica,
        // not after this one's next scheduled check (10 s of 404 model_not_found on the others;
        // with health checks off, for good).
        if (!this.stopped) {
          for (const [id, st] of this.servers) if (!known.has(id)) void this.firstCheck(st).catch(() => undefined);
        }
      } catch (err) {
        this.deps.logger.warn({ err: (err as Error).message }, 'a config from another replica does not load here; kept ours');
      }
    }
    // A save there changes no revision: its file joins this config's saved files here too.
    if (o.fileHash === this.fileHash) this.savedHashes = o.savedHashes ?? [];
    const draining = new Set(o.draining);
    const maintenance = new Map(o.maintenance.map((m) => [m.server, m]));
    for (const s of this.servers.values()) {
      s.draining = draining.has(s.config.id);
      const m = maintenance.get(s.config.id);
      s.maintenance = m === undefined ? null : { reason: m.reason, since: m.since };
    }
    this.drained.clear();
    for (const id of o.drainedDeployments) this.drained.add(id);
    this.bans.replace(o.bans);
    if (o.quotas !== undefined) this.deps.governance.replaceOperatorQuotas(o.quotas);
    const forced = new Set(o.forcedOpen.map(([s, m]) => pairKey(s, m)));
    for (const [key, b] of this.breakers) if (b.forced && !forced.has(key)) b.reset();
    for (const key of forced) {
      const [server, model] = key.split('\u0000') as [string, string];
      const b = this.breakerOf(server, model);
      if (!(b.forced && b.state === 'open')) b.force('open');
    }
    if (o.paused !== this.paused) {
      this.paused = o.paused;
      this.deps.governance.scheduler.setPaused(o.paused);
    }
    this.applyRoutes();
    this.deps.onRoutable();
  }

  private adopt(next: BrokerConfig): void {
    const intervalBefore = this.config.fleet.healthCheck.intervalMs;
    this.config = next;
    this.version++;
    this.deps.governance.adopt(next);
    this.syncServers();
    // The threads get the new fleet before the route changes that wake their waiters: woken
    // first, a request queued for a deployment the change replaced found only that one, draining,
    // and failed 503 while its replacement stood idle.
    this.deps.onConfig(next);
    this.applyRoutes();
    if (next.fleet.healthCheck.intervalMs !== intervalBefore && this.healthTimer !== undefined) {
      clearTimeout(this.healthTimer);
      this.scheduleChecks();
    }
  }

  /** Models found by health checks of declared servers that do not list theirs. */
  private discovered(): Map<string, readonly string[]> {
    const out = new Map<string, readonly string[]>();
    for (const s of this.servers.values()) if (s.models !== null) out.set(s.config.id, s.models);
    return out;
  }

  private rawServer(id: string): RawServer | undefined {
    return this.config.raw.servers?.find((s) => s.id === id);
  }

  private refreshDiscovered(): void {
    try {
      const next = parseBrokerConfig(this.config.raw, this.config.source, this.deps.env ?? process.env, this.discovered());
      this.adopt(next);
    } catch (err) {
      this.deps.logger.warn({ err: (err as Error).message }, 'models found by health checks do not fit the config; kept the previous fleet');
    }
  }

  /** Discovery found a fleet: it replaces the (empty) one, as is. */
  replace(next: BrokerConfig): void {
    this.adopt(next);
  }

  /** The running config as GET /config shows it: an API key written in the file shows as its id, a URL's secrets as ***. */
  configView(): RawBrokerConfig {
    return hideUrls(withKeyIds(this.config.raw));
  }

  /** POST /config: a backup of configView() names its keys by id and hides its URLs' secrets; both stand for the running ones. */
  restore(doc: unknown, ifMatch: string | undefined): BrokerConfig {
    return this.commit(restoreUrls(withRunningKeys(doc as RawBrokerConfig, this.config.raw), this.config.raw), ifMatch);
  }

  /** PATCH one section: `scheduler`-backed queue settings, or the analytics window. */
  patch(section: 'queue' | 'metrics', body: Record<string, unknown>, ifMatch: string | undefined): BrokerConfig {
    const raw = structuredClone(this.config.raw);
    const allowed = section === 'queue' ? ['maxSize', 'timeout', 'maxWaitMs'] : ['historyWindowMinutes'];
    for (const k of Object.keys(body)) if (!allowed.includes(k)) throw new BrokerError('invalid_request', `unknown field ${k}; allowed: ${allowed.join(', ')}`, { details: { field: k } });
    if (Object.keys(body).length === 0) throw new BrokerError('invalid_request', `nothing to change; fields: ${allowed.join(', ')}`);
    if (section === 'queue') {
      const s: Record<string, unknown> = { ...raw.scheduler };
      if (body.maxSize !== undefined) s.maxQueue = body.maxSize;
      const wait = body.maxWaitMs ?? body.timeout;
      if (wait !== undefined) s.maxWaitMs = wait;
      raw.scheduler = s as RawBrokerConfig['scheduler'];
    } else {
      raw.metrics = { ...raw.metrics, ...(body as RawBrokerConfig['metrics']) };
    }
    try {
      return this.commit(raw, ifMatch);
    } catch (err) {
      // Name the field as the caller sent it.
      const e = err as BrokerError;
      if (e.code === 'invalid_request' && section === 'queue') {
        const field = String((e.details as { field?: string } | undefined)?.field ?? '');
        const sent = field.endsWith('maxQueue') ? 'maxSize' : field.endsWith('maxWaitMs') ? (body.maxWaitMs !== undefined ? 'maxWaitMs' : 'timeout') : field;
        throw new BrokerError('invalid_request', `${sent}: ${e.message.replace(/^[^:]*: /, '')}`, { details: { field: sent } });
      }
      throw err;
    }
  }

  /** Reloads the configured file, or another inside its directory; nothing else may be read. */
  reload(path: string | undefined, ifMatch: string | undefined): { path: string; version: number } {
    const configured = this.deps.configPath;
    if (configured === undefined) throw new BrokerError('invalid_request', 'no config file: the broker runs on discovery (set BROKER_CONFIG to reload from a file)');
    const target = resolve(dirname(configured), path ?? configured);
    const dir = realpathSync(dirname(resolve(configured)));
    const outsideOf = (d: string, p: string): boolean => dirname(p) !== d && !p.startsWith(d + sep);
    const outside = (p: string): boolean => outsideOf(dir, p);
    // The path as written is checked before the file is looked for ("no such file" for a path
    // outside would tell an admin which files exist anywhere on the machine); the real path
    // after, so that a link cannot lead out.
    if (outsideOf(dirname(resolve(configured)), target) && outside(target)) throw new BrokerError('invalid_request', `configPath must be the configured file or inside ${dir}`, { details: { field: 'configPath' } });
    let real: string;
    try {
      real = realpathSync(target);
    } catch {
      throw new BrokerError('invalid_request', `cannot read ${path}: no such file`, { details: { field: 'configPath' } });
    }
    if (outside(real)) throw new BrokerError('invalid_request', `configPath must be the configured file or inside ${dir}`, { details: { field: 'configPath' } });
    let doc: unknown;
    try {
      doc = readBrokerConfigDocument(real);
    } catch (err) {
      throw new BrokerError('invalid_request', (err as Error).message, { details: { field: 'configPath' } });
    }
    this.commit(doc as RawBrokerConfig, ifMatch, real, true);
    return { path: real, version: this.version };
  }

  /** Writes the running config to the configured file: a temp file renamed over it, the old one kept as .bak. */
  save(): { path: string; backup: string | null; version: number } {
    const path = this.deps.configPath;
    if (path === undefined) throw new BrokerError('invalid_request', 'no config file to save to: the broker runs on discovery (set BROKER_CONFIG)');
    const text = /\.ya?ml$/i.test(path) ? toYaml(this.config.raw) : `${JSON.stringify(this.config.raw, null, 2)}\n`;
    const tmp = `${path}.tmp-${process.pid}`;
    let backup: string | null = null;
    try {
      writeFileSync(tmp, text, { mode: 0o640 });
      if (existsSync(path)) {
        backup = `${path}.bak`;
        copyFileSync(path, backup);
      }
      renameSync(tmp, path);
    } catch (err) {
      rmSync(tmp, { force: true });
      throw notWritable(path, err as NodeJS.ErrnoException);
    }
    // The file now holds the running config: a replica that restarts with it takes the running
    // config as it is then (changes made after the save included), not the file as an edit.
    const saved = fileHashOf(readBrokerConfigDocument(path) as RawBrokerConfig);
    if (!this.descendsFrom(saved)) {
      this.savedHashes = [...this.savedHashes, saved].slice(-SAVED_HASHES);
      this.changed();
    }
    this.deps.logger.info({ audit: 'config_save', path, version: this.version }, 'config saved');
    return { path, backup, version: this.version };
  }

  // ---- status ----

  health(queue: { size: number }): Record<string, unknown> {
    const servers = [...this.servers.values()];
    const healthy = servers.filter((s) => s.health === 'healthy' && s.maintenance === null).length;
    // What can take a request now: a healthy server neither drained, in maintenance nor banned,
    // and a deployment no block keeps from routing (its route word, as requests see it). An
    // operator's drains, bans and maintenance count: "healthy" while nothing can serve misled.
    const available = servers.filter((s) => s.health === 'healthy' && s.maintenance === null && !s.draining && this.bans.onServer(s.config.id) === undefined).length;
    // The running config's: a removed deployment (kept while its requests finish) serves nothing.
    const current = new Set([...this.config.modelGroups.values()].flatMap((g) => g.deployments.map((d) => d.id)));
    const deployments = this.deps.governance.scheduler.all().filter((d) => current.has(d.config.id));
    const routableDeps = deployments.filter((d) => ((this.words.get(d.slot) ?? 0) & BLOCKED) === 0);
    const routable = routableDeps.length;
    const serves = deployments.length > 0 ? routable > 0 : available > 0;
    // A group none of whose deployments can route: its clients get 503 while the fleet as a whole looks healthy.
    const canRoute = new Set(routableDeps.map((d) => d.group));
    // Once each: the map holds a group under its aliases too (`llama3:latest`).
    const groups = [...new Set(this.config.modelGroups.values())].filter((g) => g.deployments.length > 0);
    const unserved = groups.filter((g) => !canRoute.has(g.name)).map((g) => g.name);
    return {
      status: servers.length === 0 && deployments.length === 0 ? 'healthy' : serves ? 'healthy' : 'unhealthy',
      uptime: Math.round((this.now() - this.startedAt) / 1000),
      version: process.env.npm_package_version ?? '0.1.0',
      servers: { healthy, available, total: servers.length },
      deployments: { routable, total: deployments.length },
      groups: { serving: groups.length - unserved.length, total: groups.length, unserved },
      queue: { size: queue.size, maxSize: this.config.scheduler.maxQueue, paused: this.paused },
    };
  }

  modelsStatus(): Record<string, unknown>[] {
    const byModel = new Map<string, { servers: Set<string>; loadedOn: Set<string>; groups: Set<string> }>();
    // One entry per model, `llama3` and `llama3:latest` alike.
    const entry = (name: string) => {
      const m = name.endsWith(':latest') ? name.slice(0, -':latest'.length) : name;
      let e = byModel.get(m);
      if (e === undefined) byModel.set(m, (e = { servers: new Set(), loadedOn: new Set(), groups: new Set() }));
      return e;
    };
    for (const g of this.config.modelGroups.values()) {
      for (const d of g.deployments) {
        entry(d.model).groups.add(g.name);
        entry(d.model).servers.add(d.server);
      }
    }
    for (const s of this.servers.values()) {
      for (const m of s.models ?? []) entry(m).servers.add(s.config.id);
      for (const m of s.loaded ?? []) entry(m).loadedOn.add(s.config.id);
    }
    return [...byModel].map(([model, e]) => ({
      model,
      groups: [...e.groups],
      servers: [...e.servers],
      loadedOn: [...e.loadedOn],
      healthyServers: [...e.servers].filter((id) => this.servers.get(id)?.health === 'healthy').length,
    }));
  }

  private gauges(): FleetGauges {
    const servers = { healthy: 0, unhealthy: 0, draining: 0, maintenance: 0 };
    for (const s of this.servers.values()) servers[s.maintenance !== null ? 'maintenance' : s.draining ? 'draining' : s.health]++;
    return {
      breakers: this.pairs().map(([server, model]) => ({ server, model, state: STATE_NUM[this.breakers.get(pairKey(server, model))?.state ?? 'closed'] })),
      servers,
      bans: this.bans.list().length,
      // Those the config still has: a drained one the file since removed is not there to come back.
      drainedDeployments: [...this.drained].filter((id) => this.deps.governance.deployment(id) !== undefined).length,
      queueMax: this.config.scheduler.maxQueue,
      queuePaused: this.paused,
    };
  }
}

// API keys written in the fleet file are the names of `apiKeys` (without keyEnv). The config's
// admin view, and so its backups, name them by id (`k_…`, guard/api-key.ts) instead; a restore
// maps an id back to the running key it stands for. A key given in clear is taken as it is; an id
// that names no running key is refused (taken as a key, anyone who read the id could use it).
function withKeyIds(raw: RawBrokerConfig): RawBrokerConfig {
  if (raw.apiKeys === undefined) return raw;
  const apiKeys = Object.fromEntries(Object.entries(raw.apiKeys).map(([name, k]) => [k.keyEnv === undefined ? keyId(name) : name, k]));
  return { ...raw, apiKeys };
}

function withRunningKeys(doc: RawBrokerConfig, running: RawBrokerConfig): RawBrokerConfig {
  if (typeof doc !== 'object' || doc === null || typeof doc.apiKeys !== 'object' || doc.apiKeys === null) return doc;
  const byId = new Map(Object.entries(running.apiKeys ?? {}).filter(([, k]) => k.keyEnv === undefined).map(([name]) => [keyId(name), name]));
  const apiKeys = Object.fromEntries(
    Object.entries(doc.apiKeys).map(([name, k]) => {
      if (!isKeyId(name) || (k as { keyEnv?: string }).keyEnv !== undefined) return [name, k];
      const key = byId.get(name);
      if (key === undefined) throw new BrokerError('invalid_request', `apiKeys.${name} is a key id that names no running key: give the key itself, or keyEnv`, { details: { field: `apiKeys.${name}` } });
      return [key, k];
    }),
  );
  return { ...doc, apiKeys };
}

/** The env vars a config document names for keys, with the field that names each. */
function envFieldsOf(raw: RawBrokerConfig): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  (raw.servers ?? []).forEach((s, i) => {
    if (s.apiKeyEnv !== undefined) out.push([`servers[${i}].apiKeyEnv`, s.apiKeyEnv]);
  });
  for (const [name, g] of Object.entries(raw.modelGroups ?? {})) {
    g.deployments.forEach((d, i) => {
      if (d.apiKeyEnv !== undefined) out.push([`modelGroups.${name}.deployments[${i}].apiKeyEnv`, d.apiKeyEnv]);
    });
  }
  for (const [name, k] of Object.entries(raw.apiKeys ?? {})) {
    if (k.keyEnv !== undefined) out.push([`apiKeys.${name}.keyEnv`, k.keyEnv]);
  }
  return out;
}

function envNamesOf(raw: RawBrokerConfig): string[] {
  return envFieldsOf(raw).map(([, name]) => name);
}

/**
 * Why the config file cannot be saved where it is: a read-only mount (a Kubernetes ConfigMap,
 * a compose `:ro` volume), a directory the process may not write, or a single file mounted
 * alone (renamed over, it is busy). What the operator does instead is part of the answer.
 */
function notWritable(path: string, err: NodeJS.ErrnoException): BrokerError {
  const why =
    err.code === 'EROFS' ? 'it is on a read-only file system (a ConfigMap or a :ro mount)'
    : err.code === 'EACCES' || err.code === 'EPERM' ? 'the broker may not write it or its directory'
    : err.code === 'EBUSY' || err.code === 'EXDEV' ? 'it is a file mounted on its own, which cannot be replaced'
    : `writing it failed (${err.code ?? err.message})`;
  return new BrokerError('config_not_writable', `cannot save ${path}: ${why}. Change the file where it comes from (the ConfigMap, the mounted file) and POST /api/orchestrator/config/reload, or GET /api/orchestrator/config to keep what is running`, {
    details: { path, errno: err.code ?? null },
    cause: err,
  });
}
