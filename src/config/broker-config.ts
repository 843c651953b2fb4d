// The LLM fleet configuration: BROKER_CONFIG names a JSON or YAML file. Validated
// once at start-up; an error names the path of the bad field
// (`modelGroups.chat-small.deployments[0].url: must be an http(s) URL`).
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { DEFAULT_PERFORMANCE, type PerformanceThresholds } from '../policy/performance.ts';
import { DEFAULT_QOS, type QosConfig, type QosTier } from '../policy/qos.ts';

export type Provider = 'openai' | 'ollama';

export interface Timeouts {
  /** TCP connect. */
  readonly connectTimeoutMs: number;
  /** Until the upstream's response headers. */
  readonly headersTimeoutMs: number;
  /** Longest silence between two body chunks: a stalled stream ends with upstream_timeout. */
  readonly idleTimeoutMs: number;
  /** How long an unused keep-alive connection stays open. */
  readonly keepAliveTimeoutMs: number;
}

export interface DeploymentConfig extends Timeouts {
  readonly id: string;
  readonly provider: Provider;
  /** Base URL, without the API path: http://127.0.0.1:11434 or https://api.example.com (an OpenAI base may end in /v1). */
  readonly url: string;
  /** The upstream's own model name. */
  readonly model: string;
  readonly concurrencyLimit: number;
  readonly weight: number;
  /** Name of the env var holding the upstream API key, and its value read at start-up. */
  readonly apiKeyEnv: string | undefined;
  readonly apiKey: string | undefined;
  /** Quotas of this deployment (quota enforcement). */
  readonly rpm: number | undefined;
  readonly tpm: number | undefined;
}

export interface ModelGroupConfig {
  readonly name: string;
  readonly deployments: readonly DeploymentConfig[];
}

export interface RouterConfig {
  /** Consecutive failures after which a deployment is skipped for the cool-down. */
  readonly failureThreshold: number;
  readonly cooldownMs: number;
}

export interface SchedulerConfig {
  /** Requests that may wait for capacity at once, over all groups. */
  readonly maxQueue: number;
  /** Longest wait for capacity when no QoS tier says otherwise. */
  readonly maxWaitMs: number;
  /** Priority aging: a waiting request gains one priority level per this many ms. */
  readonly agingMs: number;
  /** false: a request that finds its group full is rejected at once (429) instead of queued. */
  readonly queueWhenFull: boolean;
  /** Output tokens reserved when neither max_tokens nor a prediction says more. */
  readonly defaultOutputTokens: number;
}

export interface ApiKeyPolicy {
  readonly tier: string | undefined;
  readonly priority: number | undefined;
  readonly label: string | undefined;
  readonly rpm: number | undefined;
  readonly tpm: number | undefined;
}

export interface PtuConfig {
  readonly name: string;
  readonly capacityTpm: number;
  readonly label: string | undefined;
}

export interface BrokerConfig {
  readonly modelGroups: ReadonlyMap<string, ModelGroupConfig>;
  readonly router: RouterConfig;
  readonly scheduler: SchedulerConfig;
  readonly performance: PerformanceThresholds;
  readonly qos: QosConfig;
  /** Policies by API key (the client's Bearer token or x-api-key). */
  readonly apiKeys: ReadonlyMap<string, ApiKeyPolicy>;
  readonly ptu: readonly PtuConfig[];
  /** Where the config came from: a file path, or 'default' (local Ollama discovery). */
  readonly source: string;
}

export class BrokerConfigError extends Error {
  constructor(readonly path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = 'BrokerConfigError';
  }
}

export const DEFAULT_TIMEOUTS: Timeouts = Object.freeze({
  connectTimeoutMs: 5_000,
  headersTimeoutMs: 60_000,
  idleTimeoutMs: 30_000,
  keepAliveTimeoutMs: 30_000,
});

export const DEFAULT_ROUTER: RouterConfig = Object.freeze({ failureThreshold: 3, cooldownMs: 10_000 });

export const DEFAULT_SCHEDULER: SchedulerConfig = Object.freeze({ maxQueue: 1_000, maxWaitMs: 30_000, agingMs: 1_000, queueWhenFull: true, defaultOutputTokens: 256 });

/** The governance sections' defaults, for fleets that come without a file (Ollama discovery). */
export const DEFAULT_GOVERNANCE = { scheduler: DEFAULT_SCHEDULER, performance: DEFAULT_PERFORMANCE, qos: DEFAULT_QOS, apiKeys: new Map<string, ApiKeyPolicy>(), ptu: [] as PtuConfig[] };

/** No model groups yet (before discovery finds any). */
export const EMPTY_FLEET: Omit<BrokerConfig, 'source'> = { modelGroups: new Map(), router: DEFAULT_ROUTER, ...DEFAULT_GOVERNANCE };

type Obj = Record<string, unknown>;

function isObj(v: unknown): v is Obj {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function allowOnly(o: Obj, path: string, keys: readonly string[]): void {
  for (const k of Object.keys(o)) if (!keys.includes(k)) throw new BrokerConfigError(`${path}.${k}`, `unknown field; allowed: ${keys.join(', ')}`);
}

function posInt(v: unknown, path: string, def: number, min = 1): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new BrokerConfigError(path, `must be an integer >= ${min}`);
  return v;
}

function optInt(v: unknown, path: string, min = 1): number | undefined {
  return v === undefined ? undefined : posInt(v, path, 0, min);
}

function num(v: unknown, path: string, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw new BrokerConfigError(path, `must be a number between ${min} and ${max}`);
  return v;
}

function section(raw: Obj, key: string, keys: readonly string[]): Obj {
  const v = raw[key] ?? {};
  if (!isObj(v)) throw new BrokerConfigError(key, 'must be an object');
  allowOnly(v, key, keys);
  return v;
}

function parseScheduler(raw: Obj): SchedulerConfig {
  const o = section(raw, 'scheduler', ['maxQueue', 'maxWaitMs', 'agingMs', 'queueWhenFull', 'defaultOutputTokens']);
  if (o.queueWhenFull !== undefined && typeof o.queueWhenFull !== 'boolean') throw new BrokerConfigError('scheduler.queueWhenFull', 'must be true or false');
  return Object.freeze({
    maxQueue: posInt(o.maxQueue, 'scheduler.maxQueue', DEFAULT_SCHEDULER.maxQueue, 0),
    maxWaitMs: posInt(o.maxWaitMs, 'scheduler.maxWaitMs', DEFAULT_SCHEDULER.maxWaitMs),
    agingMs: posInt(o.agingMs, 'scheduler.agingMs', DEFAULT_SCHEDULER.agingMs),
    queueWhenFull: (o.queueWhenFull as boolean | undefined) ?? DEFAULT_SCHEDULER.queueWhenFull,
    defaultOutputTokens: posInt(o.defaultOutputTokens, 'scheduler.defaultOutputTokens', DEFAULT_SCHEDULER.defaultOutputTokens),
  });
}

function parsePerformance(raw: Obj): PerformanceThresholds {
  const o = section(raw, 'performance', ['alpha', 'ttftDegradedMs', 'errorRateDegraded', 'minTokensPerSecond', 'minSamples', 'probeIntervalMs', 'decayMs']);
  const d = DEFAULT_PERFORMANCE;
  return Object.freeze({
    alpha: num(o.alpha, 'performance.alpha', d.alpha, 0.001, 1),
    ttftDegradedMs: num(o.ttftDegradedMs, 'performance.ttftDegradedMs', d.ttftDegradedMs, 1, 3_600_000),
    errorRateDegraded: num(o.errorRateDegraded, 'performance.errorRateDegraded', d.errorRateDegraded, 0, 1),
    minTokensPerSecond: num(o.minTokensPerSecond, 'performance.minTokensPerSecond', d.minTokensPerSecond, 0, 1e9),
    minSamples: posInt(o.minSamples, 'performance.minSamples', d.minSamples),
    probeIntervalMs: posInt(o.probeIntervalMs, 'performance.probeIntervalMs', d.probeIntervalMs),
    decayMs: posInt(o.decayMs, 'performance.decayMs', d.decayMs),
  });
}

function parseQos(raw: Obj): QosConfig {
  const o = section(raw, 'qos', ['defaultTier', 'tiers']);
  if (o.tiers === undefined) {
    if (o.defaultTier !== undefined && !DEFAULT_QOS.tiers.has(String(o.defaultTier))) throw new BrokerConfigError('qos.defaultTier', `must be one of ${[...DEFAULT_QOS.tiers.keys()].join(', ')}`);
    return { defaultTier: (o.defaultTier as string | undefined) ?? DEFAULT_QOS.defaultTier, tiers: DEFAULT_QOS.tiers };
  }
  if (!isObj(o.tiers) || Object.keys(o.tiers).length === 0) throw new BrokerConfigError('qos.tiers', 'must be an object with at least one tier');
  const tiers = new Map<string, QosTier>();
  for (const [name, t] of Object.entries(o.tiers)) {
    const p = `qos.tiers.${name}`;
    if (!isObj(t)) throw new BrokerConfigError(p, 'must be an object');
    allowOnly(t, p, ['maxQueueWaitMs', 'maxOutputTokens', 'allowedGroups', 'capacityShare', 'priority']);
    const groups = t.allowedGroups ?? ['*'];
    if (!Array.isArray(groups) || groups.length === 0 || !groups.every((g) => typeof g === 'string')) throw new BrokerConfigError(`${p}.allowedGroups`, 'must be a non-empty list of model group names (or "*")');
    tiers.set(name, Object.freeze({
      name,
      maxQueueWaitMs: posInt(t.maxQueueWaitMs, `${p}.maxQueueWaitMs`, DEFAULT_SCHEDULER.maxWaitMs),
      maxOutputTokens: optInt(t.maxOutputTokens, `${p}.maxOutputTokens`) ?? null,
      allowedGroups: Object.freeze([...groups]),
      capacityShare: num(t.capacityShare, `${p}.capacityShare`, 1, 0.01, 1),
      priority: num(t.priority, `${p}.priority`, 5, 0, 9),
    }));
  }
  const defaultTier = (o.defaultTier as string | undefined) ?? [...tiers.keys()][0]!;
  if (!tiers.has(defaultTier)) throw new BrokerConfigError('qos.defaultTier', `must name one of the tiers (${[...tiers.keys()].join(', ')})`);
  return { defaultTier, tiers };
}

function parseApiKeys(raw: Obj, qos: QosConfig, env: Readonly<Record<string, string | undefined>>): Map<string, ApiKeyPolicy> {
  // Any key name is allowed here (the names are the keys), so no allowOnly().
  const o = raw.apiKeys ?? {};
  if (!isObj(o)) throw new BrokerConfigError('apiKeys', 'must be an object');
  const keys = new Map<string, ApiKeyPolicy>();
  for (const [name, k] of Object.entries(o)) {
    const p = `apiKeys.${name}`;
    if (!isObj(k)) throw new BrokerConfigError(p, 'must be an object');
    allowOnly(k, p, ['keyEnv', 'tier', 'priority', 'label', 'rpm', 'tpm']);
    // The key itself comes from env (keyEnv) so that secrets stay out of the file; without keyEnv the name is the key.
    let key = name;
    if (k.keyEnv !== undefined) {
      const v = typeof k.keyEnv === 'string' ? env[k.keyEnv] : undefined;
      if (v === undefined || v === '') throw new BrokerConfigError(`${p}.keyEnv`, `env var ${String(k.keyEnv)} is not set`);
      key = v;
    }
    if (k.tier !== undefined && !qos.tiers.has(String(k.tier))) throw new BrokerConfigError(`${p}.tier`, `must be one of ${[...qos.tiers.keys()].join(', ')}`);
    if (k.label !== undefined && (typeof k.label !== 'string' || k.label === '')) throw new BrokerConfigError(`${p}.label`, 'must be a non-empty string');
    keys.set(key, Object.freeze({
      tier: k.tier as string | undefined,
      priority: k.priority === undefined ? undefined : num(k.priority, `${p}.priority`, 5, 0, 9),
      label: k.label as string | undefined,
      rpm: optInt(k.rpm, `${p}.rpm`),
      tpm: optInt(k.tpm, `${p}.tpm`),
    }));
  }
  return keys;
}

function parsePtu(raw: Obj): PtuConfig[] {
  const list = raw.ptu ?? [];
  if (!Array.isArray(list)) throw new BrokerConfigError('ptu', 'must be a list');
  return list.map((d: unknown, i: number) => {
    const p = `ptu[${i}]`;
    if (!isObj(d)) throw new BrokerConfigError(p, 'must be an object');
    allowOnly(d, p, ['name', 'capacityTpm', 'label']);
    if (typeof d.name !== 'string' || d.name === '') throw new BrokerConfigError(`${p}.name`, 'must be a non-empty string');
    return Object.freeze({ name: d.name, capacityTpm: posInt(d.capacityTpm, `${p}.capacityTpm`, 0), label: d.label as string | undefined });
  });
}

function timeouts(o: Obj, path: string, base: Timeouts): Timeouts {
  return {
    connectTimeoutMs: posInt(o.connectTimeoutMs, `${path}.connectTimeoutMs`, base.connectTimeoutMs),
    headersTimeoutMs: posInt(o.headersTimeoutMs, `${path}.headersTimeoutMs`, base.headersTimeoutMs),
    idleTimeoutMs: posInt(o.idleTimeoutMs, `${path}.idleTimeoutMs`, base.idleTimeoutMs),
    keepAliveTimeoutMs: posInt(o.keepAliveTimeoutMs, `${path}.keepAliveTimeoutMs`, base.keepAliveTimeoutMs),
  };
}

const TIMEOUT_KEYS = ['connectTimeoutMs', 'headersTimeoutMs', 'idleTimeoutMs', 'keepAliveTimeoutMs'];
const DEPLOYMENT_KEYS = ['id', 'provider', 'url', 'model', 'concurrencyLimit', 'weight', 'apiKeyEnv', 'rpm', 'tpm', ...TIMEOUT_KEYS];

export function parseBrokerConfig(raw: unknown, source: string, env: Readonly<Record<string, string | undefined>> = process.env): BrokerConfig {
  if (!isObj(raw)) throw new BrokerConfigError('(root)', 'must be an object');
  allowOnly(raw, '(root)', ['modelGroups', 'upstream', 'router', 'scheduler', 'performance', 'qos', 'apiKeys', 'ptu']);
  const upstream = raw.upstream ?? {};
  if (!isObj(upstream)) throw new BrokerConfigError('upstream', 'must be an object');
  allowOnly(upstream, 'upstream', TIMEOUT_KEYS);
  const base = timeouts(upstream, 'upstream', DEFAULT_TIMEOUTS);
  const routerRaw = raw.router ?? {};
  if (!isObj(routerRaw)) throw new BrokerConfigError('router', 'must be an object');
  allowOnly(routerRaw, 'router', ['failureThreshold', 'cooldownMs']);
  const router: RouterConfig = {
    failureThreshold: posInt(routerRaw.failureThreshold, 'router.failureThreshold', DEFAULT_ROUTER.failureThreshold),
    cooldownMs: posInt(routerRaw.cooldownMs, 'router.cooldownMs', DEFAULT_ROUTER.cooldownMs, 0),
  };

  if (!isObj(raw.modelGroups) || Object.keys(raw.modelGroups).length === 0) throw new BrokerConfigError('modelGroups', 'must be an object with at least one model group');
  const groups = new Map<string, ModelGroupConfig>();
  const ids = new Set<string>();
  for (const [name, g] of Object.entries(raw.modelGroups)) {
    const gp = `modelGroups.${name}`;
    if (!isObj(g)) throw new BrokerConfigError(gp, 'must be an object');
    allowOnly(g, gp, ['deployments']);
    if (!Array.isArray(g.deployments) || g.deployments.length === 0) throw new BrokerConfigError(`${gp}.deployments`, 'must be a non-empty list');
    const deployments = g.deployments.map((d: unknown, i: number): DeploymentConfig => {
      const p = `${gp}.deployments[${i}]`;
      if (!isObj(d)) throw new BrokerConfigError(p, 'must be an object');
      allowOnly(d, p, DEPLOYMENT_KEYS);
      if (typeof d.id !== 'string' || !/^[A-Za-z0-9._:-]{1,64}$/.test(d.id)) throw new BrokerConfigError(`${p}.id`, 'must be 1-64 characters of letters, digits, . _ : -');
      if (ids.has(d.id)) throw new BrokerConfigError(`${p}.id`, `duplicate deployment id ${d.id}`);
      ids.add(d.id);
      if (d.provider !== 'openai' && d.provider !== 'ollama') throw new BrokerConfigError(`${p}.provider`, 'must be openai or ollama');
      let url: URL;
      try {
        url = new URL(String(d.url));
      } catch {
        throw new BrokerConfigError(`${p}.url`, 'must be an http(s) URL');
      }
      if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new BrokerConfigError(`${p}.url`, 'must be an http(s) URL');
      if (typeof d.model !== 'string' || d.model === '') throw new BrokerConfigError(`${p}.model`, 'must be a non-empty string');
      const weight = d.weight ?? 1;
      if (typeof weight !== 'number' || !(weight > 0)) throw new BrokerConfigError(`${p}.weight`, 'must be a number > 0');
      let apiKey: string | undefined;
      if (d.apiKeyEnv !== undefined) {
        if (typeof d.apiKeyEnv !== 'string' || d.apiKeyEnv === '') throw new BrokerConfigError(`${p}.apiKeyEnv`, 'must be the name of an env var');
        apiKey = env[d.apiKeyEnv];
        if (apiKey === undefined || apiKey === '') throw new BrokerConfigError(`${p}.apiKeyEnv`, `env var ${d.apiKeyEnv} is not set`);
      }
      return Object.freeze({
        id: d.id,
        provider: d.provider,
        url: url.href.replace(/\/$/, ''),
        model: d.model,
        concurrencyLimit: posInt(d.concurrencyLimit, `${p}.concurrencyLimit`, 64),
        weight,
        apiKeyEnv: d.apiKeyEnv as string | undefined,
        apiKey,
        rpm: optInt(d.rpm, `${p}.rpm`),
        tpm: optInt(d.tpm, `${p}.tpm`),
        ...timeouts(d, p, base),
      });
    });
    groups.set(name, Object.freeze({ name, deployments: Object.freeze(deployments) }));
  }
  const qos = parseQos(raw);
  return Object.freeze({
    modelGroups: groups,
    router: Object.freeze(router),
    scheduler: parseScheduler(raw),
    performance: parsePerformance(raw),
    qos,
    apiKeys: parseApiKeys(raw, qos, env),
    ptu: parsePtu(raw),
    source,
  });
}

export function loadBrokerConfigFile(path: string, env?: Readonly<Record<string, string | undefined>>): BrokerConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new BrokerConfigError('BROKER_CONFIG', `cannot read ${path}: ${(err as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = /\.ya?ml$/i.test(path) ? parseYaml(text) : JSON.parse(text);
  } catch (err) {
    throw new BrokerConfigError('BROKER_CONFIG', `${path} is not valid ${/\.ya?ml$/i.test(path) ? 'YAML' : 'JSON'}: ${(err as Error).message}`);
  }
  return parseBrokerConfig(raw, path, env);
}
