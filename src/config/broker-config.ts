// The LLM fleet configuration as the broker runs it: its types and defaults. Reading and
// validating the file (BROKER_CONFIG, JSON or YAML) is fleet-file.ts's, on the control
// plane only: the data-plane threads take the parsed config and do not load the parsers.
import type { RawBrokerConfig } from './schema.ts';
import { DEFAULT_BREAKER, type BreakerSettings } from '../fleet/breaker.ts';
import { DEFAULT_PERFORMANCE, type PerformanceThresholds } from '../policy/performance.ts';
import { DEFAULT_QOS, type QosConfig } from '../policy/qos.ts';

export type Provider = 'openai' | 'ollama';

export type UpstreamStreaming = 'auto' | 'always' | 'client';
/** The chat field an OpenAI-compatible upstream reads the output limit from (auto: by its host). */
export type MaxTokensField = 'auto' | 'max_tokens' | 'max_completion_tokens';

export interface Timeouts {
  /** TCP connect. */
  readonly connectTimeoutMs: number;
  /** Until a non-streamed reply's headers, which come when its generation ends: unset, the level's totalTimeoutMs (0: none); undici's own bound too. */
  readonly headersTimeoutMs: number;
  /** headersTimeoutMs was set at this level or one above (else it follows the level's total). */
  readonly headersTimeoutSet?: boolean;
  /** From the request written to the reply's first body byte: long, for cold model loads. */
  readonly firstTokenTimeoutMs: number;
  /** Longest silence between two body chunks after the first: a stalled stream ends with upstream_timeout. */
  readonly idleChunkTimeoutMs: number;
  /** The older name of idleChunkTimeoutMs (the same value). */
  readonly idleTimeoutMs: number;
  /** The whole attempt, from the request written to the last byte; 0 = no limit. */
  readonly totalTimeoutMs: number;
  /** How long an unused keep-alive connection stays open. */
  readonly keepAliveTimeoutMs: number;
  /**
   * always: a non-streamed chat or completion request is asked of the upstream as a stream and
   * assembled here, so that firstTokenTimeoutMs and idleChunkTimeoutMs apply to it (a whole
   * reply's headers come when its generation ends); client: the upstream streams when the client
   * does; auto: always for Ollama (whose whole reply is its stream's last line), client otherwise.
   */
  readonly upstreamStreaming: UpstreamStreaming;
  /**
   * Where a chat request's output limit goes to an OpenAI-compatible upstream, whichever of the
   * two the client (or a translated API) gave. OpenAI's reasoning models refuse max_tokens;
   * llama.cpp before 2026, llamafile and llama-cpp-python ignore max_completion_tokens (the
   * reply then runs unbounded). auto: max_completion_tokens for api.openai.com and Azure
   * OpenAI hosts, max_tokens for the rest (vLLM, SGLang, llama.cpp, Ollama's /v1 read it).
   */
  readonly maxTokensField: MaxTokensField;
}

export interface DeploymentConfig extends Timeouts {
  readonly id: string;
  /** The server it runs on (a deployment without one is its own server, of the same id). */
  readonly server: string;
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
  /** The upstream serves the OpenAI Responses API: /v1/responses is passed through (OpenAI provider only). */
  readonly responses?: boolean;
}

/** An upstream server: one process (an Ollama, a vLLM) that serves one or more models. */
export interface ServerConfig extends Timeouts {
  readonly id: string;
  readonly provider: Provider;
  readonly url: string;
  readonly maxConcurrency: number;
  readonly apiKeyEnv: string | undefined;
  readonly apiKey: string | undefined;
  /** Declared in `servers` (true), or implied by a deployment with its own url (false). */
  readonly declared: boolean;
}

export interface HealthCheckConfig {
  readonly enabled: boolean;
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly unhealthyThreshold: number;
  readonly healthyThreshold: number;
}

export interface FleetSettings {
  readonly healthCheck: HealthCheckConfig;
  readonly breaker: BreakerSettings;
  readonly recoveryHistory: number;
  readonly historyWindowMinutes: number;
}

export type CacheMode = 'off' | 'deterministic' | 'on';

export interface ModelGroupConfig {
  readonly name: string;
  readonly deployments: readonly DeploymentConfig[];
  /** Groups tried in order when every deployment failed before the first byte (5xx, 429, connect error, timeout, none available). */
  readonly fallbacks?: readonly string[];
  /** Groups tried when the prompt does not fit the context window. */
  readonly contextFallbacks?: readonly string[];
  /** Context window: a request whose estimated prompt + max_tokens exceeds it skips the group. */
  readonly maxContextTokens?: number;
  /** Response cache mode (the file's cache.mode when the group does not say). */
  readonly cache?: CacheMode;
}

/** Who shares a cached reply: every caller, or only the caller (API key, or token subject) that stored it. */
export type CacheScope = 'shared' | 'key';

export interface CacheSettings {
  readonly mode: CacheMode;
  readonly scope: CacheScope;
  readonly maxBytes: number;
  readonly ttlSeconds: number;
  readonly maxEntryBytes: number;
}

export const DEFAULT_CACHE: CacheSettings = Object.freeze({ mode: 'off', scope: 'shared', maxBytes: 64 * 1024 * 1024, ttlSeconds: 3600, maxEntryBytes: 1024 * 1024 });

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
  /** Spend limit per UTC day or month (request tracking checks it at admission). */
  readonly budget?: { readonly limit: number; readonly period: 'day' | 'month' } | undefined;
  /** A key made through /api/auth/keys: its role (the fleet file's keys have none: client keys). */
  readonly role?: string | undefined;
}

/** Price per 1M tokens, by deployment id or model group name. */
export interface PriceTable {
  readonly currency: string;
  readonly models: ReadonlyMap<string, { readonly inputPer1M: number; readonly outputPer1M: number }>;
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
  readonly prices: PriceTable;
  readonly servers: ReadonlyMap<string, ServerConfig>;
  readonly fleet: FleetSettings;
  /** The response cache: default mode and storage bounds. */
  readonly cache: CacheSettings;
  /** The document as written, validated (GET /api/orchestrator/config, /config/save). */
  readonly raw: RawBrokerConfig;
  /** Where the config came from: a file path, or 'default' (local Ollama discovery). */
  readonly source: string;
}

/** What the LLM routes answer when no fleet is configured and no local Ollama answered. */
export const HOW_TO_CONFIGURE =
  'no LLM upstream is available: no local Ollama answered at OLLAMA_URL, and BROKER_CONFIG is not set. ' +
  'Start Ollama, or set BROKER_CONFIG to a JSON or YAML file listing modelGroups and their deployments (see config/broker.example.yaml).';

export class BrokerConfigError extends Error {
  constructor(readonly path: string, message: string) {
    super(`${path}: ${message}`);
    this.name = 'BrokerConfigError';
  }
}

export const DEFAULT_TIMEOUTS: Timeouts = Object.freeze({
  connectTimeoutMs: 5_000,
  // A whole reply's headers come when its generation ends: a long answer is not a hung upstream.
  headersTimeoutMs: 600_000,
  firstTokenTimeoutMs: 60_000,
  idleChunkTimeoutMs: 30_000,
  idleTimeoutMs: 30_000,
  totalTimeoutMs: 600_000,
  keepAliveTimeoutMs: 30_000,
  upstreamStreaming: 'auto',
  maxTokensField: 'auto',
});

export const DEFAULT_ROUTER: RouterConfig = Object.freeze({ failureThreshold: 3, cooldownMs: 10_000 });

export const DEFAULT_SCHEDULER: SchedulerConfig = Object.freeze({ maxQueue: 1_000, maxWaitMs: 30_000, agingMs: 1_000, queueWhenFull: true, defaultOutputTokens: 256 });

export const DEFAULT_HEALTH_CHECK: HealthCheckConfig = Object.freeze({ enabled: true, intervalMs: 10_000, timeoutMs: 2_000, unhealthyThreshold: 2, healthyThreshold: 2 });

export const DEFAULT_FLEET: FleetSettings = Object.freeze({ healthCheck: DEFAULT_HEALTH_CHECK, breaker: DEFAULT_BREAKER, recoveryHistory: 100, historyWindowMinutes: 60 });

/** The governance sections' defaults, for fleets that come without a file (Ollama discovery). */
export const NO_PRICES: PriceTable = Object.freeze({ currency: 'USD', models: new Map() });

export const DEFAULT_GOVERNANCE = { scheduler: DEFAULT_SCHEDULER, performance: DEFAULT_PERFORMANCE, qos: DEFAULT_QOS, apiKeys: new Map<string, ApiKeyPolicy>(), ptu: [] as PtuConfig[], prices: NO_PRICES, fleet: DEFAULT_FLEET, cache: DEFAULT_CACHE };

/** No model groups yet (before discovery finds any). */
export const EMPTY_FLEET: Omit<BrokerConfig, 'source'> = { modelGroups: new Map(), router: DEFAULT_ROUTER, servers: new Map(), raw: {}, ...DEFAULT_GOVERNANCE };


/** Azure OpenAI's hosts: the classic resource, Cognitive Services and AI Foundry ones. */
const AZURE_OPENAI_HOSTS = ['.openai.azure.com', '.cognitiveservices.azure.com', '.services.ai.azure.com'];

/** The output-limit field an OpenAI-compatible upstream at `url` reads, `auto` resolved by its host. */
export function maxTokensFieldOf(field: MaxTokensField, url: string): 'max_tokens' | 'max_completion_tokens' {
  if (field !== 'auto') return field;
  const host = URL.canParse(url) ? new URL(url).hostname : '';
  return host === 'api.openai.com' || AZURE_OPENAI_HOSTS.some((suffix) => host.endsWith(suffix)) ? 'max_completion_tokens' : 'max_tokens';
}
