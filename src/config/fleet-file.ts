// Reads and validates the fleet file (BROKER_CONFIG, JSON or YAML). Its shape is the zod
// schema in schema.ts; this file applies defaults and the cross-field rules. An error names
// the path of the bad field (`modelGroups.chat-small.deployments[0].url: must be an http(s)
// URL`). The same parse runs on every runtime change (/api/orchestrator/config), so a change
// that would not load from a file is refused the same way. Control plane only: the YAML and
// zod parsers it loads cost each data-plane thread about 0.2 s of CPU at start.
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { brokerConfigSchema, firstIssue, type RawBrokerConfig } from './schema.ts';
import {
  BrokerConfigError,
  DEFAULT_CACHE,
  DEFAULT_FLEET,
  DEFAULT_HEALTH_CHECK,
  DEFAULT_ROUTER,
  DEFAULT_SCHEDULER,
  DEFAULT_TIMEOUTS,
  maxTokensFieldOf,
  type ApiKeyPolicy,
  type BrokerConfig,
  type DeploymentConfig,
  type FleetSettings,
  type ModelGroupConfig,
  type RouterConfig,
  type ServerConfig,
  type Timeouts,
} from './broker-config.ts';
import { DEFAULT_BREAKER } from '../fleet/breaker.ts';
import { DEFAULT_PERFORMANCE } from '../policy/performance.ts';
import { DEFAULT_QOS, type QosConfig, type QosTier } from '../policy/qos.ts';
import { keyId } from '../guard/api-key.ts';
import { modelKey } from '../fleet/bans.ts';
type Env = Readonly<Record<string, string | undefined>>;

function timeoutsOf(o: Partial<Timeouts>, base: Timeouts): Timeouts {
  // idleTimeoutMs is the older name of idleChunkTimeoutMs: either sets both.
  const idle = o.idleChunkTimeoutMs ?? o.idleTimeoutMs ?? base.idleChunkTimeoutMs;
  return {
    connectTimeoutMs: o.connectTimeoutMs ?? base.connectTimeoutMs,
    // Unset here and above, it follows the attempt's total where this level sets one (0, none, for none).
    headersTimeoutMs: o.headersTimeoutMs ?? (base.headersTimeoutSet === true ? base.headersTimeoutMs : (o.totalTimeoutMs ?? base.headersTimeoutMs)),
    headersTimeoutSet: o.headersTimeoutMs !== undefined || base.headersTimeoutSet === true,
    firstTokenTimeoutMs: o.firstTokenTimeoutMs ?? base.firstTokenTimeoutMs,
    idleChunkTimeoutMs: idle,
    idleTimeoutMs: idle,
    totalTimeoutMs: o.totalTimeoutMs ?? base.totalTimeoutMs,
    keepAliveTimeoutMs: o.keepAliveTimeoutMs ?? base.keepAliveTimeoutMs,
    upstreamStreaming: o.upstreamStreaming ?? base.upstreamStreaming,
    maxTokensField: o.maxTokensField ?? base.maxTokensField,
  };
}

function apiKeyOf(name: string | undefined, path: string, env: Env): string | undefined {
  if (name === undefined) return undefined;
  const v = env[name];
  if (v === undefined || v === '') throw new BrokerConfigError(path, `env var ${name} is not set`);
  // Sent as `Authorization: Bearer <key>`: a control character (a secret file's trailing
  // newline) makes undici refuse every request to the deployment before it is sent.
  if (!/^[\x20-\x7e]+$/.test(v)) throw new BrokerConfigError(path, `env var ${name} holds a character an HTTP header cannot carry (a trailing newline?)`);
  return v;
}

function normalUrl(u: string): string {
  return new URL(u).href.replace(/\/$/, '');
}

function parseQos(raw: RawBrokerConfig): QosConfig {
  const o = raw.qos ?? {};
  if (o.tiers === undefined) {
    if (o.defaultTier !== undefined && !DEFAULT_QOS.tiers.has(o.defaultTier)) throw new BrokerConfigError('qos.defaultTier', `must be one of ${[...DEFAULT_QOS.tiers.keys()].join(', ')}`);
    return { defaultTier: o.defaultTier ?? DEFAULT_QOS.defaultTier, tiers: DEFAULT_QOS.tiers };
  }
  if (Object.keys(o.tiers).length === 0) throw new BrokerConfigError('qos.tiers', 'must be an object with at least one tier');
  const tiers = new Map<string, QosTier>();
  for (const [name, t] of Object.entries(o.tiers)) {
    tiers.set(name, Object.freeze({
      name,
      maxQueueWaitMs: t.maxQueueWaitMs ?? DEFAULT_SCHEDULER.maxWaitMs,
      maxOutputTokens: t.maxOutputTokens ?? null,
      allowedGroups: Object.freeze([...(t.allowedGroups ?? ['*'])]),
      capacityShare: t.capacityShare ?? 1,
      priority: t.priority ?? 5,
    }));
  }
  const defaultTier = o.defaultTier ?? [...tiers.keys()][0]!;
  if (!tiers.has(defaultTier)) throw new BrokerConfigError('qos.defaultTier', `must name one of the tiers (${[...tiers.keys()].join(', ')})`);
  return { defaultTier, tiers };
}

function parseApiKeys(raw: RawBrokerConfig, qos: QosConfig, env: Env): Map<string, ApiKeyPolicy> {
  const keys = new Map<string, ApiKeyPolicy>();
  for (const [name, k] of Object.entries(raw.apiKeys ?? {})) {
    // Without keyEnv the name is the key itself: an error names it by its id, never the secret.
    const p = `apiKeys.${k.keyEnv === undefined ? keyId(name) : name}`;
    // The key itself comes from env (keyEnv) so that secrets stay out of the file; without keyEnv the name is the key.
    const key = k.keyEnv === undefined ? name : apiKeyOf(k.keyEnv, `${p}.keyEnv`, env)!;
    if (k.tier !== undefined && !qos.tiers.has(k.tier)) throw new BrokerConfigError(`${p}.tier`, `must be one of ${[...qos.tiers.keys()].join(', ')}`);
    // Two entries with one key (two names, one keyEnv value): the later's limits held for both, unsaid.
    if (keys.has(key)) throw new BrokerConfigError(k.keyEnv === undefined ? p : `${p}.keyEnv`, `holds the same API key (${keyId(key)}) as another entry of apiKeys: one entry per key`);
    keys.set(key, Object.freeze({ tier: k.tier, priority: k.priority, label: k.label, rpm: k.rpm, tpm: k.tpm, budget: k.budget === undefined ? undefined : Object.freeze({ ...k.budget }) }));
  }
  return keys;
}

function parseFleet(raw: RawBrokerConfig, router: RouterConfig): FleetSettings {
  const f = raw.fleet ?? {};
  const h = { ...DEFAULT_HEALTH_CHECK, ...f.healthCheck };
  const b = { ...DEFAULT_BREAKER, failureThreshold: router.failureThreshold, openMs: router.cooldownMs, ...f.breaker };
  if (b.maxOpenMs < b.openMs) throw new BrokerConfigError('fleet.breaker.maxOpenMs', `must be >= openMs (${b.openMs})`);
  return Object.freeze({ healthCheck: Object.freeze(h), breaker: Object.freeze(b), recoveryHistory: f.recoveryHistory ?? DEFAULT_FLEET.recoveryHistory, historyWindowMinutes: raw.metrics?.historyWindowMinutes ?? DEFAULT_FLEET.historyWindowMinutes });
}

/**
 * Validates a fleet document and applies its defaults. `discovered`: the models each
 * declared server's health checks listed, for servers whose `models` the file leaves
 * out; every model of a declared server joins the group of the same name, unless a
 * group already routes to that server × model.
 */
export function parseBrokerConfig(doc: unknown, source: string, env: Env = process.env, discovered: ReadonlyMap<string, readonly string[]> = new Map()): BrokerConfig {
  const issue = firstIssue(brokerConfigSchema, doc);
  if (issue !== undefined) throw new BrokerConfigError(issue.path, issue.message);
  const raw = doc as RawBrokerConfig;
  const base = timeoutsOf(raw.upstream ?? {}, DEFAULT_TIMEOUTS);
  const router: RouterConfig = Object.freeze({ ...DEFAULT_ROUTER, ...raw.router });

  const servers = new Map<string, ServerConfig>();
  (raw.servers ?? []).forEach((s, i) => {
    const p = `servers[${i}]`;
    if (servers.has(s.id)) throw new BrokerConfigError(`${p}.id`, `duplicate server id ${s.id}`);
    servers.set(s.id, Object.freeze({ id: s.id, provider: s.provider, url: normalUrl(s.url), maxConcurrency: s.maxConcurrency ?? 64, apiKeyEnv: s.apiKeyEnv, apiKey: apiKeyOf(s.apiKeyEnv, `${p}.apiKeyEnv`, env), declared: true, ...timeoutsOf(s, base) }));
  });
  if (raw.modelGroups === undefined && servers.size === 0) throw new BrokerConfigError('modelGroups', 'must be an object with at least one model group (or list servers)');
  if (raw.modelGroups !== undefined && Object.keys(raw.modelGroups).length === 0) throw new BrokerConfigError('modelGroups', 'must be an object with at least one model group');

  const ids = new Set<string>();
  const routed = new Set<string>(); // server × model pairs a group names
  const groups = new Map<string, DeploymentConfig[]>();
  for (const [name, g] of Object.entries(raw.modelGroups ?? {})) {
    const gp = `modelGroups.${name}`;
    const deployments = g.deployments.map((d, i): DeploymentConfig => {
      const p = `${gp}.deployments[${i}]`;
      let server: ServerConfig;
      if (d.server !== undefined) {
        const s = servers.get(d.server);
        if (s === undefined) throw new BrokerConfigError(`${p}.server`, `no server ${d.server} in servers`);
        if (d.url !== undefined || d.provider !== undefined || d.apiKeyEnv !== undefined) throw new BrokerConfigError(`${p}.server`, 'a deployment on a server takes its url, provider and apiKeyEnv from the server');
        server = s;
      } else {
        if (d.id === undefined) throw new BrokerConfigError(`${p}.id`, 'must be 1-64 characters of letters, digits, . _ : -');
        if (d.provider === undefined) throw new BrokerConfigError(`${p}.provider`, 'must be openai or ollama');
        if (d.url === undefined) throw new BrokerConfigError(`${p}.url`, 'must be an http(s) URL');
        if (servers.has(d.id)) throw new BrokerConfigError(`${p}.id`, `${d.id} is also a server id`);
        server = { id: d.id, provider: d.provider, url: normalUrl(d.url), maxConcurrency: d.concurrencyLimit ?? 64, apiKeyEnv: d.apiKeyEnv, apiKey: apiKeyOf(d.apiKeyEnv, `${p}.apiKeyEnv`, env), declared: false, ...timeoutsOf(d, base) };
        servers.set(server.id, Object.freeze(server));
      }
      const id = d.id ?? `${server.id}:${d.model}`;
      if (ids.has(id)) throw new BrokerConfigError(`${p}.id`, `duplicate deployment id ${id}`);
      ids.add(id);
      // By Ollama's name of it: a group's llama3.2 is the llama3.2:latest the server lists.
      routed.add(`${server.id}\u0000${modelKey(d.model)}`);
      return deploymentOn(server, id, d.model, { ...d, ...timeoutsOf(d, server) });
    });
    groups.set(name, deployments);
  }
  // A declared server's models (listed, or found by its health checks) join the group of
  // the same name: the Ollama way, where clients ask for a model by its own name.
  const declared = raw.servers ?? [];
  for (const s of declared) {
    const server = servers.get(s.id)!;
    for (const model of s.models ?? discovered.get(s.id) ?? []) {
      if (routed.has(`${s.id}\u0000${modelKey(model)}`)) continue;
      const id = `${s.id}:${model}`;
      if (ids.has(id)) continue;
      ids.add(id);
      const list = groups.get(model) ?? [];
      list.push(deploymentOn(server, id, model, {}));
      groups.set(model, list);
    }
  }

  const modelGroups = new Map<string, ModelGroupConfig>();
  for (const [name, deployments] of groups) {
    const g = raw.modelGroups?.[name];
    modelGroups.set(name, Object.freeze({
      name,
      deployments: Object.freeze(deployments),
      ...(g?.fallbacks === undefined ? {} : { fallbacks: Object.freeze([...g.fallbacks]) }),
      ...(g?.contextFallbacks === undefined ? {} : { contextFallbacks: Object.freeze([...g.contextFallbacks]) }),
      ...(g?.maxContextTokens === undefined ? {} : { maxContextTokens: g.maxContextTokens }),
      ...(g?.cache === undefined ? {} : { cache: g.cache }),
    }));
  }
  // Ollama itself answers `llama3.2` for `llama3.2:latest`; so do we, where no group has that name.
  // And the other way: an untagged group is also its `:latest` (an Ollama client may add the tag).
  for (const [name, g] of [...modelGroups]) {
    const short = name.endsWith(':latest') ? name.slice(0, -':latest'.length) : undefined;
    if (short !== undefined && !modelGroups.has(short) && g.deployments.every((d) => d.provider === 'ollama')) modelGroups.set(short, g);
    if (!name.includes(':') && !modelGroups.has(`${name}:latest`)) modelGroups.set(`${name}:latest`, g);
  }

  // Fallbacks name groups of this file (or of its servers' models, or an alias clients use), never the group itself.
  for (const [name, g] of Object.entries(raw.modelGroups ?? {})) {
    for (const field of ['fallbacks', 'contextFallbacks'] as const) {
      (g[field] ?? []).forEach((f, i) => {
        if (f === name || (modelGroups.has(f) && modelGroups.get(f) === modelGroups.get(name))) throw new BrokerConfigError(`modelGroups.${name}.${field}[${i}]`, 'a group cannot fall back to itself');
        if (!modelGroups.has(f)) throw new BrokerConfigError(`modelGroups.${name}.${field}[${i}]`, `no model group ${f}`);
      });
    }
  }
  const qos = parseQos(raw);
  const s = raw.scheduler ?? {};
  const perf = raw.performance ?? {};
  return Object.freeze({
    modelGroups,
    router,
    scheduler: Object.freeze({ ...DEFAULT_SCHEDULER, ...s }),
    performance: Object.freeze({ ...DEFAULT_PERFORMANCE, ...perf }),
    qos,
    apiKeys: parseApiKeys(raw, qos, env),
    ptu: (raw.ptu ?? []).map((d) => Object.freeze({ name: d.name, capacityTpm: d.capacityTpm, label: d.label })),
    prices: Object.freeze({ currency: raw.prices?.currency ?? 'USD', models: new Map(Object.entries(raw.prices?.models ?? {}).map(([k, v]) => [k, Object.freeze({ ...v })])) }),
    servers,
    fleet: parseFleet(raw, router),
    cache: Object.freeze({ ...DEFAULT_CACHE, ...raw.cache }),
    raw,
    source,
  });
}

function deploymentOn(server: ServerConfig, id: string, model: string, d: { concurrencyLimit?: number; weight?: number; rpm?: number; tpm?: number; responses?: boolean } & Partial<Timeouts>): DeploymentConfig {
  const timeouts = timeoutsOf(d, server);
  return Object.freeze({
    id,
    server: server.id,
    provider: server.provider,
    url: server.url,
    model,
    concurrencyLimit: d.concurrencyLimit ?? server.maxConcurrency,
    weight: d.weight ?? 1,
    apiKeyEnv: server.apiKeyEnv,
    apiKey: server.apiKey,
    rpm: d.rpm,
    tpm: d.tpm,
    responses: d.responses === true && server.provider === 'openai',
    ...timeouts,
    // Resolved here, once: not a URL parse per request.
    maxTokensField: maxTokensFieldOf(timeouts.maxTokensField, server.url),
  });
}

export function loadBrokerConfigFile(path: string, env?: Readonly<Record<string, string | undefined>>, discovered?: ReadonlyMap<string, readonly string[]>): BrokerConfig {
  return parseBrokerConfig(readBrokerConfigDocument(path), path, env, discovered);
}

/** The file's document, parsed as YAML or JSON but not yet validated. */
export function readBrokerConfigDocument(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new BrokerConfigError('BROKER_CONFIG', `cannot read ${path}: ${(err as Error).message}`);
  }
  const yaml = /\.ya?ml$/i.test(path);
  let raw: unknown;
  try {
    raw = yaml ? parseYaml(text, { prettyErrors: false }) : JSON.parse(text);
  } catch (err) {
    throw new BrokerConfigError('BROKER_CONFIG', `${path} is not valid ${yaml ? 'YAML' : 'JSON'}: ${syntaxError(err as Error, text)}`);
  }
  return raw;
}

/**
 * What is wrong and where (line, column), never the text around it: the parsers quote the
 * file's lines, and a fleet file holds API keys and URLs with passwords (the error goes to the
 * start-up output and to the reload API's 400).
 */
function syntaxError(err: Error & { pos?: unknown }, text: string): string {
  const at = Array.isArray(err.pos) && typeof err.pos[0] === 'number' ? err.pos[0] : Number(/at position (\d+)/.exec(err.message)?.[1] ?? NaN);
  // V8's JSON messages may quote the text (Unexpected token 's', "sk-…" is not valid JSON): not from the double quote on.
  const what = err.message.split('"')[0]!.replace(/ in JSON at position \d+.*$/, '').replace(/[\s,]+$/, '');
  if (!Number.isInteger(at)) return what;
  const before = text.slice(0, at);
  const line = before.split('\n').length;
  return `${what} at line ${line}, column ${at - before.lastIndexOf('\n')}`;
}
