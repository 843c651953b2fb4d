// Process configuration from the environment: parsed and validated once at
// start-up, then frozen. A bad value throws ConfigError naming the variable, and
// main.ts exits with that message.
import { parseCorsOrigins } from '../front/http/cors.ts';
import { parseTrustedProxies } from '../guard/client-address.ts';
import { accessSync, constants, statSync } from 'node:fs';
import { createPublicKey } from 'node:crypto';
import { availableParallelism, hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { FLAG_NAMES, envName, type FlagName } from './flags.ts';
import { redactUrl } from './secret-url.ts';
import { manifestPathFor } from '../infer/manifest.ts';

export class ConfigError extends Error {
  constructor(readonly variable: string, message: string) {
    super(`${variable}: ${message}`);
    this.name = 'ConfigError';
  }
}

/** A model shipped in the package's models/ (this file is src/config/ or dist/config/): found from any working directory. */
const BUNDLED_MODEL = (file: string): string => fileURLToPath(new URL(`../../models/${file}`, import.meta.url));

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export interface Config {
  readonly port: number;
  readonly host: string;
  readonly maxBodyBytes: number;
  /** 0 disables the rate limit. */
  readonly rateLimitRps: number;
  readonly rateLimitBurst: number;
  readonly abWeightA: number;
  readonly abWeightB: number;
  readonly shadowEnabled: boolean;
  readonly canaryEnabled: boolean;
  readonly canaryPercent: number;
  /** Window of the canary judge, and how much worse B may be than A before it is rolled back. */
  readonly canaryWindowS: number;
  readonly canaryMinRequests: number;
  readonly canaryErrorMargin: number;
  readonly canaryLatencyMargin: number;
  readonly stickyCookie: string;
  /** CORS_ORIGINS: [] off, ['*'] any origin, else these origins (src/front/http/cors.ts). */
  readonly corsOrigins: readonly string[];
  /** TRUSTED_PROXIES: addresses and CIDR blocks whose X-Forwarded-For names the client (src/guard/client-address.ts); '' none. */
  readonly trustedProxies: string;
  /** UPSTREAM_KEY_ENVS: env vars a fleet change through the API may name for a key, besides the fleet file's own. */
  readonly upstreamKeyEnvs: readonly string[];
  readonly adminToken: string | undefined;
  readonly modelVaPath: string;
  readonly modelVbPath: string;
  readonly inferThreads: number;
  readonly inferIntraOpThreads: number;
  readonly inferMaxQueue: number;
  /** Batches each inference worker holds at once (one computing while the next decodes). */
  readonly inferTasksPerWorker: number;
  /** Decoded pixels above which an image is refused (decompression bombs). */
  readonly inferMaxPixels: number;
  /** INFER_NATIVE: 'auto' converts pixels with native/'s addon when it is built, 'off' never. */
  readonly inferNative: 'auto' | 'off';
  readonly logLevel: LogLevel;
  /** JSON or YAML file with the LLM model groups; unset: discover a local Ollama. */
  readonly brokerConfigPath: string | undefined;
  readonly ollamaUrl: string;
  /** Feature flags set by BROKER_FF_* (unset ones are absent and take their defaults). */
  readonly featureFlags: Readonly<Partial<Record<FlagName, boolean>>>;
  /** What in the environment is ignored, said at start without stopping it (a BROKER_FF_* that names no flag). */
  readonly notes: readonly string[];
  /** How long a sticky-routing pin lasts. */
  readonly stickyTtlS: number;
  /** Largest LLM prompt accepted: messages, and characters of prompt text (400 past them). */
  readonly llmMaxMessages: number;
  readonly llmMaxPromptChars: number;
  /** Stored Responses (previous_response_id): MiB each serving thread keeps in memory, 0 off. */
  readonly responsesStoreMb: number;
  /** One owner's (API key's) share: MiB of its records each thread keeps, and it writes to Redis per TTL; 0: no share of its own. */
  readonly responsesStoreOwnerMb: number;
  readonly responsesStoreTtlS: number;
  /** The Redis the replicas share stored Responses through; unset: each process keeps its own. */
  readonly responsesStoreRedisUrl: string | undefined;
  /** Largest non-streamed upstream reply the broker reads; past it the client gets 502. */
  readonly upstreamMaxBodyBytes: number;
  /** The same for an embeddings reply: a batch of vectors is far larger than any text reply. */
  readonly upstreamMaxEmbedBytes: number;
  /** Data-plane threads serving HTTP on the port; 0 serves on the main thread. */
  readonly frontThreads: number;
  /** V8 young-generation semi-space of every worker thread from its start, MiB; 0: V8's own sizing (1 MiB, grown under load). */
  readonly threadSemiSpaceMb: number;
  /** UWS_HEADER_PATCH: the header-name patch of uWebSockets.js; validated here, applied by src/front/http/uws.ts (every thread loads uWS itself, from the environment). */
  readonly uwsHeaderPatch: boolean;
  /** Whether the inference pool starts (false: an LLM-only broker, /v1/infer answers 503). */
  readonly inferEnabled: boolean;
  /** How long in-flight requests and streams get to finish after SIGTERM/SIGINT. */
  readonly shutdownGraceS: number;
  /** FLEET_HEALTH_CHECKS: overrides the fleet file's healthCheck.enabled (undefined: the file decides). */
  readonly fleetHealthChecks: boolean | undefined;
  /** Client routes (LLM, inference): open to all, or a known API key / session, or a JWT / session. */
  readonly authMode: 'open' | 'keys' | 'jwt';
  readonly jwt: {
    readonly secret: string | undefined;
    readonly publicKey: string | undefined;
    readonly jwksUrl: string | undefined;
    readonly issuer: string | undefined;
    readonly audience: string | undefined;
    readonly clockSkewS: number;
  };
  readonly sessionTtlS: number;
  /** Live sessions one subject may hold (AUTH_MAX_SESSIONS_PER_SUBJECT). */
  readonly maxSessionsPerSubject: number;
  /** The state store shared by replicas; undefined: in memory, this process alone. */
  readonly redisUrl: string | undefined;
  /** A state-store command with no reply after this long marks Redis hung (down) and fails. */
  readonly redisCommandTimeoutMs: number;
  /** With Redis unreachable: sessions refused (closed) or those last seen valid accepted (open). */
  readonly authRedisFailMode: 'closed' | 'open';
  /** This replica's name in the audit trail and pub/sub. */
  readonly replicaId: string;
  /** Failed admin credentials per client address per minute before 429 (0: no limit). */
  readonly adminAuthMaxFailures: number;
  /** gRPC front (src/front/grpc): its port (0: off), TLS files (both or neither), keep-alive pings. */
  readonly grpcPort: number;
  readonly grpcTls: { readonly certPath: string; readonly keyPath: string } | undefined;
  readonly grpcKeepaliveTimeMs: number;
  readonly grpcKeepaliveTimeoutMs: number;
  /** A gRPC connection that has not sent its HTTP/2 preface (SETTINGS) by then is closed. */
  readonly grpcHandshakeTimeoutMs: number;
  /** A unary or server-streaming call whose request (its message and its end) has not arrived by then ends DEADLINE_EXCEEDED request_timeout. */
  readonly grpcRequestTimeoutMs: number;
  /** HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS the gRPC port advertises: open calls per connection. */
  readonly grpcMaxConcurrentStreams: number;
  /** Health/Watch streams open at once on this process; more are RESOURCE_EXHAUSTED. */
  readonly grpcMaxHealthWatchers: number;
  /** OpenTelemetry traces (src/obs/trace/, docs/tracing.md). */
  readonly otel: OtelConfig;
  /** Request tracking in PostgreSQL (docs/tracking.md); undefined when DATABASE_URL is unset. */
  readonly tracking: TrackingConfig | undefined;
}

export interface OtelConfig {
  readonly enabled: boolean;
  /** Where spans are POSTed: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces. */
  readonly tracesUrl: string;
  readonly serviceName: string;
  /** Share of new traces recorded (parent-based: a sampled incoming traceparent always is). */
  readonly sampleRatio: number;
  /** OTEL_TRACES_SAMPLER's parentbased_* (the default): an incoming traceparent's sampled flag decides. */
  readonly parentBased: boolean;
  /** Sent with every export: OTEL_EXPORTER_OTLP_(TRACES_)HEADERS, and Basic auth from the endpoint URL's user:password. */
  readonly headers: Readonly<Record<string, string>>;
  /** OTEL_RESOURCE_ATTRIBUTES. */
  readonly resourceAttributes: Readonly<Record<string, string>>;
  /** What start-up says at warn: a standard OTEL_* setting the broker does not follow. */
  readonly notes: readonly string[];
  /** The batch span processor's settings (OTEL_BSP_*) and the export timeout (OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT). */
  readonly batch: { readonly maxQueue: number; readonly maxBatch: number; readonly intervalMs: number; readonly timeoutMs: number };
}

type Env = Readonly<Record<string, string | undefined>>;

function int(env: Env, name: string, def: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  if (!/^-?\d+$/.test(raw.trim())) throw new ConfigError(name, `must be an integer, got "${raw}"`);
  const n = Number(raw);
  if (n < min || n > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

function num(env: Env, name: string, def: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  // Decimal only: Number() reads blanks as 0 (a blank SHUTDOWN_GRACE_S cut every stream at once) and 0x1e as 30.
  if (!/^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i.test(raw.trim())) throw new ConfigError(name, `must be a number, got "${raw}"`);
  const n = Number(raw);
  if (!Number.isFinite(n)) throw new ConfigError(name, `must be a number, got "${raw}"`);
  if (n < min || n > max) throw new ConfigError(name, `must be between ${min} and ${max}, got ${n}`);
  return n;
}

/** A true/false variable (1/0, true/false, yes/no, on/off, any case); throws ConfigError naming it on any other value. */
export function bool(env: Env, name: string, def: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === '') return def;
  const v = raw.trim().toLowerCase();
  if (['1', 'true', 'yes', 'on'].includes(v)) return true;
  if (['0', 'false', 'no', 'off'].includes(v)) return false;
  throw new ConfigError(name, `must be true or false, got "${raw}"`);
}

function readable(path: string): boolean {
  try {
    accessSync(path, constants.R_OK);
    return statSync(path).isFile();
  } catch {
    return false;
  }
}

function str(env: Env, name: string, def: string): string {
  const raw = env[name];
  return raw === undefined || raw === '' ? def : raw;
}

function url(env: Env, name: string, def: string): string {
  const raw = str(env, name, def);
  try {
    const u = new URL(raw);
    if (u.protocol === 'http:' || u.protocol === 'https:') return raw;
  } catch {
    // fall through
  }
  // A URL may hold a password: the message quotes it redacted (by hand where it does not parse).
  throw new ConfigError(name, `must be an http(s) URL, got "${redactUrl(raw).replace(/\/\/[^/?#@\s]*@/, '//***@')}"`);
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
// RFC 6265 cookie-name token characters.
const COOKIE_NAME = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

function opt(env: Env, name: string): string | undefined {
  const raw = env[name];
  return raw === undefined || raw === '' ? undefined : raw;
}

function oneOf<T extends string>(env: Env, name: string, def: T, values: readonly T[]): T {
  const v = str(env, name, def) as T;
  if (!values.includes(v)) throw new ConfigError(name, `must be one of ${values.join(', ')}, got "${v}"`);
  return v;
}

export function loadConfig(env: Env = process.env): Config {
  const cores = availableParallelism();
  const inferThreads = int(env, 'INFER_THREADS', cores, 1, 64);
  const abWeightA = num(env, 'AB_WEIGHT_A', 1, 0, 1e6);
  const abWeightB = num(env, 'AB_WEIGHT_B', 0, 0, 1e6);
  if (abWeightA + abWeightB <= 0) throw new ConfigError('AB_WEIGHT_A', 'AB_WEIGHT_A + AB_WEIGHT_B must be greater than 0');
  const stickyCookie = str(env, 'STICKY_COOKIE', 'eb_arm');
  if (!COOKIE_NAME.test(stickyCookie)) throw new ConfigError('STICKY_COOKIE', `is not a valid cookie name: "${stickyCookie}"`);
  const logLevel = str(env, 'LOG_LEVEL', 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new ConfigError('LOG_LEVEL', `must be one of ${LOG_LEVELS.join(', ')}`);
  const responsesStoreMb = int(env, 'RESPONSES_STORE_MB', 64, 0, 65_536);
  const grpcCert = str(env, 'GRPC_TLS_CERT', '');
  const grpcKey = str(env, 'GRPC_TLS_KEY', '');
  if ((grpcCert === '') !== (grpcKey === '')) throw new ConfigError(grpcCert === '' ? 'GRPC_TLS_CERT' : 'GRPC_TLS_KEY', 'GRPC_TLS_CERT and GRPC_TLS_KEY go together: set both or neither');
  // Read at the gRPC front's start: a missing file is said here, by its variable, not as a bare ENOENT.
  for (const [name, path] of [['GRPC_TLS_CERT', grpcCert], ['GRPC_TLS_KEY', grpcKey]] as const) {
    if (path !== '' && !readable(path)) throw new ConfigError(name, `${path} is not a readable file`);
  }
  let cors: readonly string[];
  try {
    cors = parseCorsOrigins(str(env, 'CORS_ORIGINS', ''));
  } catch (err) {
    throw new ConfigError('CORS_ORIGINS', (err as Error).message);
  }
  const trustedProxies = str(env, 'TRUSTED_PROXIES', '');
  try {
    parseTrustedProxies(trustedProxies);
  } catch (err) {
    throw new ConfigError('TRUSTED_PROXIES', (err as Error).message);
  }
  const upstreamKeyEnvs = str(env, 'UPSTREAM_KEY_ENVS', '').split(',').map((n) => n.trim()).filter((n) => n !== '');
  for (const n of upstreamKeyEnvs) if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(n)) throw new ConfigError('UPSTREAM_KEY_ENVS', `"${n}" is not an env var name`);
  const adminToken = env.ADMIN_TOKEN === undefined || env.ADMIN_TOKEN === '' ? undefined : env.ADMIN_TOKEN;
  if (adminToken !== undefined && adminToken.length < 8) throw new ConfigError('ADMIN_TOKEN', 'must be at least 8 characters');
  // Model A serves every image: a file that is not there is said by its variable (B's is the model check's, not fatal).
  const modelA = str(env, 'MODEL_VA_PATH', BUNDLED_MODEL('vA.onnx'));
  if (bool(env, 'INFER_ENABLED', true) && !readable(modelA)) throw new ConfigError('MODEL_VA_PATH', `${modelA} is not a readable file`);
  // Its manifest (input, labels, normalisation) is read at start too: without it A cannot serve.
  if (bool(env, 'INFER_ENABLED', true) && !readable(manifestPathFor(modelA))) throw new ConfigError('MODEL_VA_PATH', `${modelA} has no readable manifest beside it (${manifestPathFor(modelA)}; see models/README.md)`);

  return Object.freeze({
    port: int(env, 'PORT', 8080, 0, 65535),
    host: str(env, 'HOST', '0.0.0.0'),
    maxBodyBytes: int(env, 'MAX_BODY_BYTES', 8 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
    rateLimitRps: num(env, 'RATE_LIMIT_RPS', 0, 0, 1e9),
    rateLimitBurst: burst(env),
    abWeightA,
    abWeightB,
    shadowEnabled: bool(env, 'SHADOW_ENABLED', false),
    canaryEnabled: bool(env, 'CANARY_ENABLED', false),
    canaryPercent: num(env, 'CANARY_PERCENT', 5, 0, 100),
    canaryWindowS: num(env, 'CANARY_WINDOW_S', 60, 1, 86400),
    canaryMinRequests: int(env, 'CANARY_MIN_REQUESTS', 20, 1, 1e6),
    canaryErrorMargin: num(env, 'CANARY_ERROR_MARGIN', 0.05, 0, 1),
    canaryLatencyMargin: num(env, 'CANARY_LATENCY_MARGIN', 0.5, 0, 100),
    stickyCookie,
    corsOrigins: cors,
    trustedProxies,
    upstreamKeyEnvs,
    adminToken,
    modelVaPath: modelA,
    modelVbPath: str(env, 'MODEL_VB_PATH', BUNDLED_MODEL('vB.onnx')),
    inferThreads,
    // Workers x intra-op threads must not exceed the cores, or the workers fight each other.
    inferIntraOpThreads: int(env, 'INFER_INTRA_OP_THREADS', Math.max(1, Math.floor(cores / inferThreads)), 1, 64),
    inferMaxQueue: int(env, 'INFER_MAX_QUEUE', 256, 1, 1e6),
    inferTasksPerWorker: int(env, 'INFER_TASKS_PER_WORKER', 2, 1, 16),
    inferMaxPixels: int(env, 'INFER_MAX_PIXELS', 4096 * 4096, 1, 2 ** 31 - 1),
    inferNative: oneOf(env, 'INFER_NATIVE', 'auto', ['auto', 'off'] as const),
    logLevel,
    brokerConfigPath: env.BROKER_CONFIG === undefined || env.BROKER_CONFIG === '' ? undefined : env.BROKER_CONFIG,
    ollamaUrl: url(env, 'OLLAMA_URL', 'http://127.0.0.1:11434'),
    featureFlags: Object.freeze(Object.fromEntries(FLAG_NAMES.filter((f) => (env[envName(f)] ?? '') !== '').map((f) => [f, bool(env, envName(f), false)]))),
    notes: Object.freeze(unknownFlagNotes(env)),
    stickyTtlS: num(env, 'STICKY_TTL_S', 300, 1, 86_400),
    llmMaxMessages: int(env, 'LLM_MAX_MESSAGES', 4096, 1, 1_000_000),
    llmMaxPromptChars: int(env, 'LLM_MAX_PROMPT_CHARS', 4_000_000, 1, 1_000_000_000),
    responsesStoreMb,
    // Off by default: a single-tenant broker (one key, or none) is one owner, whom a share would only shrink the store for.
    responsesStoreOwnerMb: num(env, 'RESPONSES_STORE_OWNER_MB', 0, 0, 65_536),
    responsesStoreTtlS: int(env, 'RESPONSES_STORE_TTL_S', 86_400, 1, 30 * 86_400),
    responsesStoreRedisUrl: redisUrlOf(env, 'RESPONSES_STORE_REDIS_URL'),
    upstreamMaxBodyBytes: int(env, 'UPSTREAM_MAX_BODY_BYTES', 16 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
    upstreamMaxEmbedBytes: int(env, 'UPSTREAM_MAX_EMBED_BYTES', 64 * 1024 * 1024, 1024, 1024 * 1024 * 1024),
    frontThreads: int(env, 'FRONT_THREADS', Math.min(cores, 64), 0, 64),
    threadSemiSpaceMb: int(env, 'THREAD_SEMI_SPACE_MB', 16, 0, 256),
    uwsHeaderPatch: bool(env, 'UWS_HEADER_PATCH', true),
    inferEnabled: bool(env, 'INFER_ENABLED', true),
    fleetHealthChecks: env.FLEET_HEALTH_CHECKS === undefined || env.FLEET_HEALTH_CHECKS === '' ? undefined : bool(env, 'FLEET_HEALTH_CHECKS', true),
    shutdownGraceS: num(env, 'SHUTDOWN_GRACE_S', 30, 0, 3600),
    ...identity(env),
    grpcPort: int(env, 'GRPC_PORT', 50051, 0, 65535),
    grpcTls: grpcCert === '' ? undefined : Object.freeze({ certPath: grpcCert, keyPath: grpcKey }),
    grpcKeepaliveTimeMs: int(env, 'GRPC_KEEPALIVE_TIME_MS', 60_000, 1000, 86_400_000),
    // At least 5 s: grpc-js's ping to an idle connection can leave a second or two late, and a
    // shorter timeout then closed every idle client's connection though each acked in time.
    grpcKeepaliveTimeoutMs: int(env, 'GRPC_KEEPALIVE_TIMEOUT_MS', 20_000, 5000, 3_600_000),
    grpcHandshakeTimeoutMs: int(env, 'GRPC_HANDSHAKE_TIMEOUT_MS', 10_000, 100, 600_000),
    grpcRequestTimeoutMs: int(env, 'GRPC_REQUEST_TIMEOUT_MS', 30_000, 100, 3_600_000),
    grpcMaxConcurrentStreams: int(env, 'GRPC_MAX_CONCURRENT_STREAMS', 1000, 1, 1_000_000),
    grpcMaxHealthWatchers: int(env, 'GRPC_MAX_HEALTH_WATCHERS', 1000, 1, 1_000_000),
    otel: otelConfig(env),
    tracking: trackingConfig(env),
  });
}

export interface TrackingConfig {
  readonly databaseUrl: string;
  /** Rows the control plane's buffer holds; beyond, the oldest are dropped (and counted). */
  readonly bufferRows: number;
  /** A flush starts when this many rows wait, or every flushMs. */
  readonly batchRows: number;
  readonly flushMs: number;
  /** Whole days of rows kept; older day partitions are dropped. */
  readonly retentionDays: number;
  /** Day partitions created ahead of today. */
  readonly partitionsAhead: number;
  readonly poolMax: number;
  readonly writeMode: 'copy' | 'insert';
}

function trackingConfig(env: Env): TrackingConfig | undefined {
  // Validated with tracking off too: a bad value is said at this start, not at the one that sets DATABASE_URL.
  const settings = {
    bufferRows: int(env, 'TRACKING_BUFFER_ROWS', 100_000, 100, 10_000_000),
    batchRows: int(env, 'TRACKING_BATCH_ROWS', 1000, 1, 100_000),
    flushMs: int(env, 'TRACKING_FLUSH_MS', 250, 10, 60_000),
    retentionDays: int(env, 'TRACKING_RETENTION_DAYS', 30, 1, 3650),
    partitionsAhead: int(env, 'TRACKING_PARTITIONS_AHEAD', 3, 1, 60),
    poolMax: int(env, 'TRACKING_POOL_MAX', 4, 2, 100),
    writeMode: oneOf(env, 'TRACKING_WRITE_MODE', 'copy', ['copy', 'insert'] as const),
  };
  const databaseUrl = opt(env, 'DATABASE_URL');
  if (databaseUrl === undefined) return undefined;
  if (!/^postgres(ql)?:\/\//.test(databaseUrl)) throw new ConfigError('DATABASE_URL', 'must be a postgres:// or postgresql:// URL');
  return Object.freeze({ databaseUrl, ...settings });
}

const SAMPLERS = ['parentbased_traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'traceidratio', 'always_on', 'always_off'] as const;

/**
 * The OTel spec's key=value list (OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES): comma
 * separated, values percent-decoded. A bad entry is named by its position, never quoted: it
 * may hold a credential.
 */
function keyValues(env: Env, name: string): Record<string, string> {
  const out: Record<string, string> = {};
  const raw = opt(env, name);
  if (raw === undefined) return out;
  const entries = raw.split(',');
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!.trim();
    if (e === '') continue;
    const eq = e.indexOf('=');
    const key = eq > 0 ? e.slice(0, eq).trim() : '';
    let value: string;
    try {
      value = decodeURIComponent(e.slice(eq + 1).trim());
    } catch {
      throw new ConfigError(name, `entry ${i + 1} has a value that is not percent-encoded UTF-8`);
    }
    if (eq <= 0 || !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(key)) throw new ConfigError(name, `entry ${i + 1} must be key=value with a token for a key`);
    out[name.endsWith('HEADERS') ? key.toLowerCase() : key] = value;
  }
  return out;
}

/**
 * A BROKER_FF_* that names no flag (a typo, or a flag of another version): the flag meant
 * keeps its default, which only a line at start tells. Not refused: a variable of a newer or
 * older version must not stop a rolling upgrade.
 */
function unknownFlagNotes(env: Env): string[] {
  const known = new Set(FLAG_NAMES.map(envName));
  return Object.keys(env)
    .filter((k) => k.startsWith('BROKER_FF_') && !known.has(k))
    .map((k) => `${k} names no feature flag and is ignored (flags: ${FLAG_NAMES.map(envName).join(', ')})`);
}

function otelConfig(env: Env): OtelConfig {
  // The OTel spec's defaults: OTLP/HTTP on localhost:4318, traces at the signal path /v1/traces.
  // The signal path goes on the base's path, before any query string it has.
  const enabled = bool(env, 'OTEL_ENABLED', false) && !bool(env, 'OTEL_SDK_DISABLED', false);
  // The standard OTEL_* variables are often set for a whole pod or host: with traces off, one
  // the broker cannot read is ignored, not a reason to refuse to start.
  const read = <T>(f: () => T, off: T): T => {
    if (enabled) return f();
    try {
      return f();
    } catch {
      return off;
    }
  };
  const full = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  const traces = read(() => {
    const base = new URL(url(env, 'OTEL_EXPORTER_OTLP_ENDPOINT', 'http://localhost:4318'));
    base.pathname = `${base.pathname.replace(/\/+$/, '')}/v1/traces`;
    return new URL(full === undefined || full === '' ? base.toString() : url(env, 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', ''));
  }, new URL('http://localhost:4318/v1/traces'));
  const headers = read(() => ({ ...keyValues(env, 'OTEL_EXPORTER_OTLP_HEADERS'), ...keyValues(env, 'OTEL_EXPORTER_OTLP_TRACES_HEADERS') }), {} as Record<string, string>);
  // user:password in the endpoint: Basic auth (the POST's origin drops them), unless a header says otherwise.
  if ((traces.username !== '' || traces.password !== '') && headers['authorization'] === undefined) {
    const basic = read(() => {
      try {
        return `Basic ${Buffer.from(`${decodeURIComponent(traces.username)}:${decodeURIComponent(traces.password)}`).toString('base64')}`;
      } catch {
        throw new ConfigError(full === undefined || full === '' ? 'OTEL_EXPORTER_OTLP_ENDPOINT' : 'OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'has a user or password that is not percent-encoded UTF-8');
      }
    }, undefined);
    if (basic !== undefined) headers['authorization'] = basic;
  }
  traces.username = '';
  traces.password = '';
  const sampler = read(() => oneOf(env, 'OTEL_TRACES_SAMPLER', 'parentbased_traceidratio', SAMPLERS), 'parentbased_traceidratio');
  const ratio = read(() => num(env, 'OTEL_TRACES_SAMPLER_ARG', 1, 0, 1), 1);
  const notes: string[] = [];
  for (const name of ['OTEL_EXPORTER_OTLP_PROTOCOL', 'OTEL_EXPORTER_OTLP_TRACES_PROTOCOL']) {
    const p = opt(env, name);
    if (p !== undefined && p !== 'http/json') notes.push(`${name}=${p} is not spoken: spans go as OTLP/HTTP JSON (http/json), which every OpenTelemetry Collector's otlp receiver takes`);
  }
  for (const name of ['OTEL_EXPORTER_OTLP_COMPRESSION', 'OTEL_EXPORTER_OTLP_TRACES_COMPRESSION']) {
    const c = opt(env, name);
    if (c !== undefined && c !== 'none') notes.push(`${name}=${c} is not applied: spans go uncompressed`);
  }
  const exporter = opt(env, 'OTEL_TRACES_EXPORTER');
  if (exporter !== undefined && exporter !== 'otlp' && exporter !== 'none') notes.push(`OTEL_TRACES_EXPORTER=${exporter} is not spoken: spans go to the OTLP endpoint`);
  const resourceAttributes = read(() => keyValues(env, 'OTEL_RESOURCE_ATTRIBUTES'), {} as Record<string, string>);
  // The spec's batch span processor settings; its schedule delay defaults to 1 s here (5 s in the spec: spans reach the collector sooner).
  const timeoutName = opt(env, 'OTEL_EXPORTER_OTLP_TRACES_TIMEOUT') !== undefined ? 'OTEL_EXPORTER_OTLP_TRACES_TIMEOUT' : 'OTEL_EXPORTER_OTLP_TIMEOUT';
  const batch = read(
    () => {
      const maxQueue = int(env, 'OTEL_BSP_MAX_QUEUE_SIZE', 2048, 1, 1_000_000);
      return { maxQueue, maxBatch: Math.min(maxQueue, int(env, 'OTEL_BSP_MAX_EXPORT_BATCH_SIZE', 512, 1, 1_000_000)), intervalMs: int(env, 'OTEL_BSP_SCHEDULE_DELAY', 1000, 1, 3_600_000), timeoutMs: int(env, timeoutName, 5000, 1, 600_000) };
    },
    { maxQueue: 2048, maxBatch: 512, intervalMs: 1000, timeoutMs: 5000 },
  );
  return Object.freeze({
    // OTEL_TRACES_EXPORTER=none: the spec's way to export nothing.
    enabled: enabled && exporter !== 'none',
    tracesUrl: traces.toString(),
    // The spec's order: OTEL_SERVICE_NAME, else a service.name in OTEL_RESOURCE_ATTRIBUTES.
    serviceName: str(env, 'OTEL_SERVICE_NAME', resourceAttributes['service.name'] || 'edge-broker'),
    sampleRatio: sampler.endsWith('always_on') ? 1 : sampler.endsWith('always_off') ? 0 : ratio,
    parentBased: sampler.startsWith('parentbased_'),
    headers: Object.freeze(headers),
    resourceAttributes: Object.freeze(resourceAttributes),
    batch: Object.freeze(batch),
    notes: Object.freeze(notes),
  });
}

function redisUrlOf(env: Env, name: string): string | undefined {
  const url = opt(env, name);
  if (url !== undefined && !/^rediss?:\/\//.test(url)) throw new ConfigError(name, 'must be a redis:// or rediss:// URL');
  return url;
}

function identity(env: Env): Pick<Config, 'authMode' | 'jwt' | 'sessionTtlS' | 'maxSessionsPerSubject' | 'redisUrl' | 'redisCommandTimeoutMs' | 'authRedisFailMode' | 'replicaId' | 'adminAuthMaxFailures'> {
  const jwt = {
    secret: opt(env, 'JWT_SECRET'),
    publicKey: opt(env, 'JWT_PUBLIC_KEY'),
    jwksUrl: opt(env, 'JWT_JWKS_URL'),
    issuer: opt(env, 'JWT_ISSUER'),
    audience: opt(env, 'JWT_AUDIENCE'),
    clockSkewS: int(env, 'JWT_CLOCK_SKEW_S', 30, 0, 3600),
  };
  if (jwt.secret !== undefined && jwt.secret.length < 32) throw new ConfigError('JWT_SECRET', 'must be at least 32 characters (HS256 needs 256 bits)');
  if ([jwt.secret, jwt.publicKey, jwt.jwksUrl].filter((x) => x !== undefined).length > 1) throw new ConfigError('JWT_SECRET', 'set one of JWT_SECRET, JWT_PUBLIC_KEY and JWT_JWKS_URL');
  if (jwt.publicKey !== undefined) checkPublicKey(jwt.publicKey);
  if (jwt.jwksUrl !== undefined) url(env, 'JWT_JWKS_URL', jwt.jwksUrl);
  const authMode = oneOf(env, 'AUTH_MODE', 'open', ['open', 'keys', 'jwt'] as const);
  if (authMode === 'jwt' && jwt.secret === undefined && jwt.publicKey === undefined && jwt.jwksUrl === undefined) throw new ConfigError('AUTH_MODE', 'jwt needs JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL');
  const redisUrl = redisUrlOf(env, 'REDIS_URL');
  return {
    authMode,
    jwt: Object.freeze(jwt),
    sessionTtlS: int(env, 'SESSION_TTL_S', 3600, 1, 30 * 86_400),
    maxSessionsPerSubject: int(env, 'AUTH_MAX_SESSIONS_PER_SUBJECT', 1000, 1, 1_000_000),
    redisUrl,
    redisCommandTimeoutMs: int(env, 'REDIS_COMMAND_TIMEOUT_MS', 1000, 10, 60_000),
    authRedisFailMode: oneOf(env, 'AUTH_REDIS_FAIL_MODE', 'closed', ['closed', 'open'] as const),
    replicaId: str(env, 'REPLICA_ID', `${hostname()}:${process.pid}`),
    adminAuthMaxFailures: int(env, 'ADMIN_AUTH_MAX_FAILURES', 20, 0, 1_000_000),
  };
}

/** A bucket below one token never holds a request: every request would be 429 (0 means the rate itself). */
function burst(env: Env): number {
  const b = num(env, 'RATE_LIMIT_BURST', 0, 0, 1e9);
  if (b > 0 && b < 1) throw new ConfigError('RATE_LIMIT_BURST', `must be 0 (the rate) or at least 1 (a bucket of ${b} token never holds a request), got ${b}`);
  return b;
}

/** A key that does not parse refused every token (401) with nothing in the log: said at start instead. */
function checkPublicKey(pem: string): void {
  let type: string | undefined;
  try {
    const text = pem.replace(/\\n/g, '\n');
    // SPKI only (what jose imports): a certificate or private key would parse here and fail there.
    if (!text.includes('-----BEGIN PUBLIC KEY-----')) throw new Error('not SPKI');
    type = createPublicKey(text).asymmetricKeyType;
  } catch {
    throw new ConfigError('JWT_PUBLIC_KEY', 'is not a PEM public key (-----BEGIN PUBLIC KEY-----, SPKI; \\n for line breaks is accepted)');
  }
  if (type !== 'rsa' && type !== 'ec') throw new ConfigError('JWT_PUBLIC_KEY', `must be an RSA (RS256) or EC (ES256) public key, got ${type}`);
}
