// The fleet file's schema (BROKER_CONFIG), in zod: the one description that validates
// the file at start-up, every runtime change through /api/orchestrator/config, and that
// GET /api/orchestrator/config/schema serves as JSON Schema. Only the shape lives here;
// defaults and cross-field rules (unique ids, known tiers, env vars that must be set)
// are applied by parseBrokerConfig on the validated document.
import { z } from 'zod';
import { keyId } from '../guard/api-key.ts';

const int = (min: number, max = Number.MAX_SAFE_INTEGER) => z.int(`must be an integer >= ${min}`).min(min, `must be an integer >= ${min}`).max(max, `must be an integer <= ${max}`);
const num = (min: number, max: number) => z.number(`must be a number between ${min} and ${max}`).min(min, `must be a number between ${min} and ${max}`).max(max, `must be a number between ${min} and ${max}`);
const name = z.string('must be a non-empty string').min(1, 'must be a non-empty string');
const ID = /^[A-Za-z0-9._:-]{1,64}$/;
const id = z.string('must be 1-64 characters of letters, digits, . _ : -').regex(ID, 'must be 1-64 characters of letters, digits, . _ : -');
const url = z.string('must be an http(s) URL').refine((v) => {
  try {
    const u = new URL(v);
    return u.protocol === 'http:' || u.protocol === 'https:';
  } catch {
    return false;
  }
}, 'must be an http(s) URL');
const provider = z.enum(['openai', 'ollama'], 'must be openai or ollama');
const envName = z.string('must be the name of an env var').min(1, 'must be the name of an env var');
/** A duration in ms that becomes a timer: Node fires a larger one after 1 ms (TimeoutOverflowWarning). */
const MAX_TIMER_MS = 2_147_483_647;
const ms = (min: number) => int(min, MAX_TIMER_MS);

const timeouts = {
  /** TCP connect, ms. */
  connectTimeoutMs: ms(1).optional(),
  /** Until the upstream's response headers, ms. */
  headersTimeoutMs: ms(1).optional(),
  /** Longest wait from the request written to the reply's first body byte (a cold model loads here), ms. */
  firstTokenTimeoutMs: ms(1).optional(),
  /** Longest silence between two body chunks after the first, ms. */
  idleChunkTimeoutMs: ms(1).optional(),
  /** The older name of idleChunkTimeoutMs, still read. */
  idleTimeoutMs: ms(1).optional(),
  /** Longest attempt, from the request written to the reply's last byte; 0 = no limit, ms. */
  totalTimeoutMs: ms(0).optional(),
  /** How long an unused keep-alive connection stays open, ms. */
  keepAliveTimeoutMs: ms(1).optional(),
  /** always: non-streamed requests stream from the upstream and are assembled by the broker (the phase timeouts apply); client: as the client asked; auto: always for Ollama, client otherwise. */
  upstreamStreaming: z.enum(['auto', 'always', 'client'], 'must be auto, always or client').optional(),
  /** The chat field an OpenAI-compatible upstream reads the output limit from; auto: max_completion_tokens for api.openai.com and Azure OpenAI, max_tokens for the rest. */
  maxTokensField: z.enum(['auto', 'max_tokens', 'max_completion_tokens'], 'must be auto, max_tokens or max_completion_tokens').optional(),
};

export const serverSchema = z.strictObject({
  id,
  provider,
  url,
  /** Requests in flight at once on this server, over all its models. */
  maxConcurrency: int(1).optional(),
  apiKeyEnv: envName.optional(),
  /** Models to route here before (or instead of) what its health checks list. */
  models: z.array(name).optional(),
  ...timeouts,
});

export const deploymentSchema = z.strictObject({
  /** Unique over the file; default for a server's deployment: `<server>:<model>`. */
  id: id.optional(),
  /** A server of the `servers` list: provider, url, key and timeouts come from it. */
  server: id.optional(),
  provider: provider.optional(),
  url: url.optional(),
  /** The upstream's own model name. */
  model: name,
  concurrencyLimit: int(1).optional(),
  weight: z.number('must be a number > 0').positive('must be a number > 0').optional(),
  apiKeyEnv: envName.optional(),
  rpm: int(1).optional(),
  tpm: int(1).optional(),
  /** An OpenAI deployment that serves the Responses API itself: /v1/responses is passed through to it, not translated to chat. */
  responses: z.boolean('must be true or false').optional(),
  ...timeouts,
});

const tierSchema = z.strictObject({
  maxQueueWaitMs: ms(1).optional(),
  maxOutputTokens: int(1).optional(),
  allowedGroups: z.array(z.string(), 'must be a non-empty list of model group names (or "*")').min(1, 'must be a non-empty list of model group names (or "*")').optional(),
  capacityShare: num(0.01, 1).optional(),
  priority: num(0, 9).optional(),
});

export const queueSchema = z.strictObject({
  /** Requests that may wait at once, over all groups; beyond: 429. */
  maxQueue: int(0).optional(),
  maxWaitMs: ms(1).optional(),
  agingMs: ms(1).optional(),
  queueWhenFull: z.boolean('must be true or false').optional(),
  defaultOutputTokens: int(1).optional(),
});

export const fleetSchema = z.strictObject({
  healthCheck: z
    .strictObject({
      enabled: z.boolean('must be true or false').optional(),
      intervalMs: ms(100).optional(),
      timeoutMs: ms(10).optional(),
      /** Consecutive failed checks before a server is unhealthy. */
      unhealthyThreshold: int(1).optional(),
      /** Consecutive good checks before it is healthy again. */
      healthyThreshold: int(1).optional(),
    })
    .optional(),
  breaker: z
    .strictObject({
      failureThreshold: int(1).optional(),
      failureRatio: num(0.01, 1).optional(),
      windowMs: ms(100).optional(),
      minRequests: int(1).optional(),
      openMs: ms(0).optional(),
      maxOpenMs: ms(0).optional(),
      halfOpenTrials: int(1).optional(),
    })
    .optional(),
  /** Failed recovery tests kept per server. */
  recoveryHistory: int(1, 10_000).optional(),
});

const cacheMode = z.enum(['off', 'deterministic', 'on'], 'must be off, deterministic or on');

/** The response cache (docs/llm.md#response-cache): the default mode of every group, and its storage. */
export const cacheSchema = z.strictObject({
  mode: cacheMode.optional(),
  /** Bytes of replies the in-memory LRU keeps (per thread). */
  maxBytes: int(0).optional(),
  /** How long an entry lives, seconds (in memory and in Redis). */
  ttlSeconds: int(1).optional(),
  /** Largest reply stored, bytes. */
  maxEntryBytes: int(1).optional(),
  /** Who shares an entry: every caller (shared), or only the caller that stored it (key: its API key, session's key or token subject). */
  scope: z.enum(['shared', 'key'], 'must be shared or key').optional(),
});

const modelGroupSchema = z.strictObject({
  deployments: z.array(deploymentSchema, 'must be a non-empty list').min(1, 'must be a non-empty list'),
  /** Groups tried in order when every deployment of this one failed before the first byte. */
  fallbacks: z.array(name, 'must be a list of model group names').optional(),
  /** Groups tried when the upstream said the prompt is too long for its context window. */
  contextFallbacks: z.array(name, 'must be a list of model group names').optional(),
  /** Context window of the group's models: a request whose estimated prompt + max_tokens is larger skips it. */
  maxContextTokens: int(1).optional(),
  /** This group's response cache mode (default: cache.mode). */
  cache: cacheMode.optional(),
});

export const metricsSchema = z.strictObject({
  /** How far back /api/orchestrator/analytics/* look, minutes. */
  historyWindowMinutes: int(1, 1440).optional(),
});

export const brokerConfigSchema = z.strictObject({
  upstream: z.strictObject(timeouts).optional(),
  /** Kept for older files: failureThreshold and cooldownMs seed fleet.breaker's failureThreshold and openMs. */
  router: z.strictObject({ failureThreshold: int(1).optional(), cooldownMs: ms(0).optional() }).optional(),
  servers: z.array(serverSchema, 'must be a list').optional(),
  fleet: fleetSchema.optional(),
  metrics: metricsSchema.optional(),
  /** Client model names → server × model pairs. Optional when `servers` list their models. */
  modelGroups: z.record(z.string(), modelGroupSchema, 'must be an object with at least one model group').optional(),
  cache: cacheSchema.optional(),
  scheduler: queueSchema.optional(),
  performance: z
    .strictObject({
      alpha: num(0.001, 1).optional(),
      ttftDegradedMs: num(1, 3_600_000).optional(),
      errorRateDegraded: num(0, 1).optional(),
      minTokensPerSecond: num(0, 1e9).optional(),
      minSamples: int(1).optional(),
      probeIntervalMs: ms(1).optional(),
      decayMs: ms(1).optional(),
    })
    .optional(),
  qos: z.strictObject({ defaultTier: z.string().optional(), tiers: z.record(z.string(), tierSchema).optional() }).optional(),
  /** By API key (or by a name with keyEnv naming the env var that holds the key). */
  apiKeys: z
    .record(
      z.string(),
      z.strictObject({
        keyEnv: envName.optional(),
        tier: z.string().optional(),
        priority: num(0, 9).optional(),
        label: name.optional(),
        rpm: int(1).optional(),
        tpm: int(1).optional(),
        /** A spend limit per UTC day or month, in the price table's currency (needs request tracking). */
        budget: z.strictObject({ limit: num(0, 1e12), period: z.enum(['day', 'month'], 'must be day or month') }).optional(),
      }),
    )
    .optional(),
  /**
   * The price table: by deployment id or model group name (a deployment's own price wins),
   * input and output price per 1M tokens; request tracking costs each request with it.
   */
  prices: z
    .strictObject({
      currency: z.string().regex(/^[A-Z]{3}$/, 'must be a 3-letter currency code').optional(),
      models: z.record(z.string(), z.strictObject({ inputPer1M: num(0, 1e9), outputPer1M: num(0, 1e9) })).optional(),
    })
    .optional(),
  ptu: z.array(z.strictObject({ name, capacityTpm: int(0), label: z.string().optional() }), 'must be a list').optional(),
});

/** The file as written (validated, no defaults applied): what GET /config returns and /config/save writes. */
export type RawBrokerConfig = z.infer<typeof brokerConfigSchema>;
export type RawServer = z.infer<typeof serverSchema>;

/** `modelGroups.g.deployments[0].url`: the path of a zod issue, as the file's reader sees it. */
export function issuePath(path: readonly PropertyKey[], extra?: string): string {
  let out = '';
  for (const p of [...path, ...(extra === undefined ? [] : [extra])]) out += typeof p === 'number' ? `[${p}]` : out === '' ? String(p) : `.${String(p)}`;
  return out === '' ? '(root)' : out;
}

/** The first problem of a document, as [path, message]; undefined when it is valid. */
export function firstIssue(schema: z.ZodType, doc: unknown): { path: string; message: string } | undefined {
  const r = schema.safeParse(doc);
  if (r.success) return undefined;
  const issue = r.error.issues[0]!;
  const path = secretFree(issue.path, doc);
  if (issue.code === 'unrecognized_keys') return { path: issuePath(path, issue.keys[0]), message: 'unknown field' };
  return { path: issuePath(path), message: issue.message };
}

/** An API key written in the file (no keyEnv) is its own map key: a path through it names its id instead. */
function secretFree(path: readonly PropertyKey[], doc: unknown): readonly PropertyKey[] {
  if (path[0] !== 'apiKeys' || typeof path[1] !== 'string') return path;
  const entry = (doc as { apiKeys?: Record<string, { keyEnv?: unknown } | undefined> } | null)?.apiKeys?.[path[1]];
  if (typeof entry === 'object' && entry !== null && entry.keyEnv !== undefined) return path;
  return [path[0], keyId(path[1]), ...path.slice(2)];
}

/** JSON Schema of the file, for GET /api/orchestrator/config/schema. */
export function brokerConfigJsonSchema(): unknown {
  return z.toJSONSchema(brokerConfigSchema, { io: 'input', unrepresentable: 'any' });
}
