// The LLM fleet configuration: BROKER_CONFIG names a JSON or YAML file. Validated
// once at start-up; an error names the path of the bad field
// (`modelGroups.chat-small.deployments[0].url: must be an http(s) URL`).
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';

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

export interface BrokerConfig {
  readonly modelGroups: ReadonlyMap<string, ModelGroupConfig>;
  readonly router: RouterConfig;
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

function timeouts(o: Obj, path: string, base: Timeouts): Timeouts {
  return {
    connectTimeoutMs: posInt(o.connectTimeoutMs, `${path}.connectTimeoutMs`, base.connectTimeoutMs),
    headersTimeoutMs: posInt(o.headersTimeoutMs, `${path}.headersTimeoutMs`, base.headersTimeoutMs),
    idleTimeoutMs: posInt(o.idleTimeoutMs, `${path}.idleTimeoutMs`, base.idleTimeoutMs),
    keepAliveTimeoutMs: posInt(o.keepAliveTimeoutMs, `${path}.keepAliveTimeoutMs`, base.keepAliveTimeoutMs),
  };
}

const TIMEOUT_KEYS = ['connectTimeoutMs', 'headersTimeoutMs', 'idleTimeoutMs', 'keepAliveTimeoutMs'];
const DEPLOYMENT_KEYS = ['id', 'provider', 'url', 'model', 'concurrencyLimit', 'weight', 'apiKeyEnv', ...TIMEOUT_KEYS];

export function parseBrokerConfig(raw: unknown, source: string, env: Readonly<Record<string, string | undefined>> = process.env): BrokerConfig {
  if (!isObj(raw)) throw new BrokerConfigError('(root)', 'must be an object');
  allowOnly(raw, '(root)', ['modelGroups', 'upstream', 'router']);
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
        ...timeouts(d, p, base),
      });
    });
    groups.set(name, Object.freeze({ name, deployments: Object.freeze(deployments) }));
  }
  return Object.freeze({ modelGroups: groups, router: Object.freeze(router), source });
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
