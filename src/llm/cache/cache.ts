// The response cache (docs/llm.md#response-cache): exact match on the normalised
// request, replayed in the client's API and mode.
//
// Storage, in two tiers:
// - memory: an LRU bounded in bytes (lru-cache), one per serving thread. A store is
//   sent to the other threads of the process over a BroadcastChannel, so a repeat
//   hits whichever thread its connection landed on, and a lookup never leaves the
//   thread. The price is one copy per thread (maxBytes each).
// - Redis, when REDIS_URL is set: shared by every replica, with the entry's TTL. Read
//   only on a memory miss, with a short command timeout: a slow or absent Redis is a
//   miss, never an error.
import { hash, randomUUID } from 'node:crypto';
import { BroadcastChannel } from 'node:worker_threads';
import { LRUCache } from 'lru-cache';
import type { Redis } from 'ioredis';
import { newRedis } from '../../state/lazy-redis.ts';
import { ThreadStall } from '../../state/thread-stall.ts';
import { BrokerError } from '../../errors.ts';
import type { CacheMode, CacheScope, CacheSettings, ModelGroupConfig } from '../../config/broker-config.ts';
import { keyId } from '../../guard/api-key.ts';
import type { Logger } from '../../obs/logger.ts';
import { OutageLog } from '../../obs/outage-log.ts';
import type { Metrics } from '../../obs/metrics.ts';
import type { LlmRequest } from '../request.ts';
import { entryBytes, fitChunks, isCachedReply, type CachedReply } from './entry.ts';

/** The client's word on the cache: x-broker-cache. */
export type CacheDirective = 'use' | 'bypass' | 'refresh';

export function cacheDirectiveOf(h: string | undefined): CacheDirective | undefined {
  if (h === undefined || h === '') return undefined;
  const v = h.trim().toLowerCase();
  if (v === 'use' || v === 'bypass' || v === 'refresh') return v;
  throw new BrokerError('invalid_request', 'x-broker-cache must be use, bypass or refresh', { details: { field: 'x-broker-cache' } });
}

/** What the cache does for one request. */
export interface CachePlan {
  readonly key: string;
  /** Look it up first (not on refresh). */
  readonly lookup: boolean;
  /** Store a clean reply. */
  readonly store: boolean;
}

/** Fields that do not change the output: left out of the key. `stream` above all (a stored stream answers a whole request). */
const NOT_IN_KEY = new Set(['model', 'stream', 'stream_options', 'user', 'keep_alive', 'metadata', 'store', 'service_tier']);

/** JSON with sorted object keys: the same request in another key order is the same entry. Loops, not map/join: it runs on every cached request. */
function canonical(v: unknown): string {
  if (v === null || typeof v !== 'object') return typeof v === 'string' ? JSON.stringify(v) : (JSON.stringify(v) ?? 'null');
  if (Array.isArray(v)) {
    let s = '[';
    for (let i = 0; i < v.length; i++) s += (i === 0 ? '' : ',') + canonical(v[i]);
    return s + ']';
  }
  const o = v as Record<string, unknown>;
  const keys = Object.keys(o).sort();
  let s = '{';
  let first = true;
  for (const k of keys) {
    const x = o[k];
    if (x === undefined) continue;
    s += (first ? '' : ',') + JSON.stringify(k) + ':' + canonical(x);
    first = false;
  }
  return s + '}';
}

const groupKeys = new WeakMap<ModelGroupConfig, string>();

/**
 * A group as the cache's key names it: its name and the models it serves (provider and the
 * upstream's model name, sorted, not the servers): a fleet file that gives the group another
 * model starts it on new entries, where an old reply would answer for a model the group no
 * longer serves. More servers of the same model keep the entries. One string per group
 * object: a reload makes new ones.
 */
export function cacheGroupOf(g: ModelGroupConfig): string {
  let k = groupKeys.get(g);
  if (k === undefined) {
    const models = [...new Set(g.deployments.map((d) => `${d.provider}/${d.model}`))].sort();
    k = `${g.name}\0${models.join(',')}`;
    groupKeys.set(g, k);
  }
  return k;
}

/** The key of a request, its canonical form: group (cacheGroupOf), client API and kind, and every field that changes the output. */
export function cacheKey(group: string, r: Pick<LlmRequest, 'api' | 'kind' | 'body'>): string {
  let s = `v1\0${group}\0${r.api}\0${r.kind}\0`;
  const body = r.body;
  const keys = Object.keys(body).filter((k) => !NOT_IN_KEY.has(k) && body[k] !== undefined).sort();
  for (const k of keys) s += JSON.stringify(k) + ':' + canonical(body[k]) + ',';
  return s;
}

const REDIS_PREFIX = 'eb:cache:';
/** Refreshes kept while Redis is away, at most (the oldest go first). */
const REFRESHED_AWAY_MAX = 1_000;

/** Channel of refreshed keys: the other replicas drop their memory copy and read the new entry from Redis. */
const REFRESH_CHANNEL = 'eb:cache-refresh';
/** A lookup must not hold a request: a slower answer is a miss. */
const COMMAND_TIMEOUT_MS = 250;
/** Reconnects after a lost connection: quickly at first, then every 2 s. */
const retryStrategy = (times: number): number => Math.min(100 * 2 ** Math.min(times, 5), 2_000);

/** The Redis key of an entry: the canonical form's digest (memory compares the whole form, so nothing there can collide). */
function redisKey(key: string): string {
  return REDIS_PREFIX + hash('sha256', key, 'base64url');
}

const REPLAYABLE = new Set(['openai/chat', 'openai/completion', 'ollama/chat', 'ollama/completion', 'responses/chat', 'anthropic/chat']);

/** temperature (OpenAI, Responses, Anthropic) or options.temperature (Ollama), when the client set it. */
function temperatureOf(body: Readonly<Record<string, unknown>>): unknown {
  if (body.temperature !== undefined) return body.temperature;
  const o = body.options as Record<string, unknown> | undefined;
  return o !== null && typeof o === 'object' ? o.temperature : undefined;
}

/**
 * Whether and how the cache serves a request. off: never. deterministic: when the
 * client sets temperature 0 or sends x-broker-cache: use. on: every request. bypass
 * skips the cache both ways; refresh skips the lookup and stores the new reply.
 * Several choices (n > 1) are never cached: a replay has one. `sent`: the body that goes
 * upstream, which the key is made of (admission may have capped its output tokens for
 * the client's QoS tier: the reply of one tier must not answer another).
 */
export function cachePlan(mode: CacheMode, r: LlmRequest, group: string, sent: Readonly<Record<string, unknown>> = r.body, scope: CacheScope = 'shared'): CachePlan | null {
  // Replay (replay.ts) speaks the OpenAI and Ollama chat and completion APIs, Responses and Messages; embeddings are not cached.
  if (!REPLAYABLE.has(`${r.api}/${r.kind}`)) return null;
  const d = r.cache;
  if (mode === 'off' || d === 'bypass' || r.choices > 1) return null;
  if (mode === 'deterministic' && d === undefined && temperatureOf(r.body) !== 0) return null;
  const key = cacheKey(group, { api: r.api, kind: r.kind, body: sent });
  return { key: scope === 'key' ? `${ownerOf(r)}\0${key}` : key, lookup: d !== 'refresh', store: true };
}

/**
 * Whose entry a per-caller cache (scope: key) reads and writes: the API key behind the
 * request (its own, or its session's), else a token's subject, else the key it sent (by
 * id), else no one in particular: keyless callers share theirs.
 */
export function ownerOf(r: Pick<LlmRequest, 'apiKey' | 'caller'>): string {
  const c = r.caller;
  if (c?.keyId !== undefined) return `key:${c.keyId}`;
  if (c?.subject !== undefined) return `sub:${c.subject}`;
  return r.apiKey !== undefined && !r.apiKey.startsWith('sess_') ? `key:${keyId(r.apiKey)}` : 'anyone';
}

export interface ResponseCacheOptions {
  readonly settings: CacheSettings;
  readonly metrics: Metrics;
  readonly logger: Logger;
  /** Shared by every replica when set. */
  readonly redisUrl?: string | undefined;
  /** The BroadcastChannel every thread of this process joins: a store reaches all their LRUs. */
  readonly channel?: string | undefined;
  /**
   * False: this cache serves no request (the control plane while data-plane threads serve the
   * client APIs, gRPC not using the cache): it keeps no entries and hears none from the
   * channel, and only flushes (the admin route) through it. Its copy of every entry was
   * memory nothing read.
   */
  readonly holdsEntries?: boolean;
}

/**
 * What an entry costs beyond its bytes (its key and reply counted by entryBytes): lru-cache's
 * node, the entry object and its arrays. Left out, the bound undercounted real memory 1.6×
 * (600-byte entries) to 2.8× (tiny ones).
 */
const ENTRY_OVERHEAD_BYTES = 400;

/** What the memory LRU counts for an entry: its reply, its key, its bookkeeping. */
function lruBytes(e: CachedReply, key: string): number {
  return entryBytes(e) + key.length + ENTRY_OVERHEAD_BYTES;
}


export class ResponseCache {
  private settings: CacheSettings;
  private lru: LRUCache<string, CachedReply> | null;
  private readonly bus: BroadcastChannel | undefined;
  private redis: Redis | undefined;
  /** Subscribed to REFRESH_CHANNEL. */
  private sub: Redis | undefined;
  /** This broker: its threads share the channel name, and a refreshed entry over it already. */
  private readonly origin: string;
  private connecting: Promise<void> = Promise.resolve();
  private readonly outage: OutageLog;
  /**
   * A command got no reply in time: Redis is hung with its connection open (a frozen host, a
   * blackhole), and ioredis still says 'ready'. Lookups and stores skip it until it is ready
   * again on a new connection.
   */
  private redisHung = false;
  /** A PING is asking whether Redis is hung. */
  private pinging = false;
  /** A command timing out right after this thread stalled is not an outage (thread-stall.ts). */
  private readonly stall: ThreadStall | undefined;
  /** Refreshes made while Redis was away: stored and told to the other replicas once it is back. */
  private readonly refreshedAway = new Map<string, CachedReply>();
  /** When the last flush this thread heard of began (epoch ms): replies of requests begun before it are not stored. */
  private flushedAt = 0;
  /** Flushes heard of: an entry read from Redis while one ran is not kept in memory. */
  private flushes = 0;

  constructor(private readonly o: ResponseCacheOptions) {
    this.outage = new OutageLog(o.logger, 'response cache: redis failed; lookups miss until it is back (logged once per outage)', 'response cache: redis answers again');
    this.settings = o.settings;
    this.origin = o.channel ?? randomUUID();
    // Seen from a 200 ms gap in the heartbeat: below the 250 ms command timeout.
    if (o.redisUrl !== undefined) this.stall = new ThreadStall(COMMAND_TIMEOUT_MS - 150);
    this.lru = this.makeLru(o.settings);
    if (o.channel !== undefined) {
      const bus = new BroadcastChannel(o.channel);
      if (o.holdsEntries !== false) bus.onmessage = (ev) => {
        const m = (ev as MessageEvent).data as { key?: unknown; entry?: unknown; flush?: unknown; since?: unknown };
        if (typeof m?.flush === 'number') this.dropAll(m.flush);
        // A reply whose request began before a flush this thread has heard of: not kept.
        else if (typeof m?.key === 'string' && isCachedReply(m.entry) && !(typeof m.since === 'number' && m.since < this.flushedAt)) {
          this.remember(m.key, m.entry);
          o.metrics.llmCacheReceived.inc();
        }
      };
      bus.unref();
      this.bus = bus;
    }
    // Expired entries leave lru-cache only when looked up; a scrape drops them first, so the
    // gauge is what is live (no timer per entry: ttlAutopurge would arm one on every store).
    o.metrics.sources.cacheBytes = () => {
      this.lru?.purgeStale();
      return this.lru?.calculatedSize ?? 0;
    };
    if (o.redisUrl !== undefined) this.client();
  }

  private makeLru(s: CacheSettings): LRUCache<string, CachedReply> | null {
    if (s.maxBytes <= 0 || this.o.holdsEntries === false) return null;
    return new LRUCache<string, CachedReply>({
      maxSize: s.maxBytes,
      maxEntrySize: Math.min(s.maxEntryBytes, s.maxBytes),
      // The key is the request's canonical form: it counts too.
      sizeCalculation: lruBytes,
      ttl: s.ttlSeconds * 1000,
      // lru-cache's default (1 ms) caches the clock behind a setTimeout set on a lookup: a timer per hit.
      ttlResolution: 0,
      dispose: (_v, _k, reason) => {
        if (reason === 'evict') this.o.metrics.llmCacheEvictions.inc();
      },
    });
  }

  /** Largest reply stored, bytes (a capture past it is dropped). */
  get maxEntryBytes(): number {
    return this.settings.maxEntryBytes;
  }

  /** Who shares an entry (the file's cache.scope). */
  get scope(): CacheScope {
    return this.settings.scope;
  }

  /** The mode of a group: its own, or the file's default. */
  modeOf(group: ModelGroupConfig): CacheMode {
    return group.cache ?? this.settings.mode;
  }

  /** A new fleet file: new bounds start an empty LRU; the same ones keep it. */
  adopt(s: CacheSettings): void {
    const old = this.settings;
    this.settings = s;
    if (old.maxBytes !== s.maxBytes || old.ttlSeconds !== s.ttlSeconds || old.maxEntryBytes !== s.maxEntryBytes) this.lru = this.makeLru(s);
  }

  /** The stored reply, from memory or Redis; counts the hit or miss. A memory hit (or a miss without Redis) comes back at once, not as a promise: a hit's whole path stays in one turn. */
  get(plan: CachePlan, group: string): CachedReply | undefined | Promise<CachedReply | undefined> {
    const e = this.lru?.get(plan.key);
    if (e !== undefined || this.o.redisUrl === undefined) return this.counted(group, e);
    const flushes = this.flushes;
    return this.fromRedis(plan.key).then((r) => {
      if (r === undefined) return this.counted(group, undefined);
      // Kept in memory for what is left of its time in Redis, not a whole TTL more; not at all
      // when a flush began meanwhile (it may have been read before the flush deleted it).
      if (r.ttlMs > 0 && flushes === this.flushes) this.lru?.set(plan.key, r.entry, { ttl: r.ttlMs });
      return this.counted(group, r.entry);
    });
  }

  private counted(group: string, e: CachedReply | undefined): CachedReply | undefined {
    this.o.metrics.llmCacheLookups.labels(group, e === undefined ? 'miss' : 'hit').inc();
    return e;
  }

  /**
   * Stores a cleanly completed reply here, on the other threads, and in Redis. A refresh
   * (plan.lookup false) also tells the other replicas, which drop the copy they may hold
   * in memory: else each would serve its old one until its TTL ran out.
   */
  put(plan: CachePlan, group: string, entry: CachedReply, startedAt: number): void {
    // Its request began before a flush: the reply may come from what the flush meant to drop
    // (the old weights of a model changed under the same name).
    if (startedAt < this.flushedAt) return;
    // What the memory LRU counts (the key too): past its bounds it would drop the entry unsaid,
    // and a store counted here would then never hit.
    const e = fitChunks(entry, this.settings.maxEntryBytes - plan.key.length - ENTRY_OVERHEAD_BYTES);
    const size = lruBytes(e, plan.key);
    if (size > this.settings.maxEntryBytes) return;
    if (this.o.redisUrl === undefined && size > this.settings.maxBytes) return;
    this.remember(plan.key, e);
    this.bus?.postMessage({ key: plan.key, entry: e, since: startedAt });
    this.o.metrics.llmCacheStores.labels(group).inc();
    // Redis away, or hung and dropped: the entry stays in this process's memory only; a
    // refresh is kept to be shared when Redis is back (else the others served the old reply
    // until its TTL ran out).
    if (this.o.redisUrl !== undefined && this.redisReady()) this.share(plan.key, e, !plan.lookup);
    else if (this.o.redisUrl !== undefined && !plan.lookup) {
      this.refreshedAway.delete(plan.key);
      this.refreshedAway.set(plan.key, e);
      if (this.refreshedAway.size > REFRESHED_AWAY_MAX) this.refreshedAway.delete(this.refreshedAway.keys().next().value!);
    }
  }

  /** The entry in Redis; a refresh also tells the other replicas to drop their memory copy. */
  private share(key: string, e: CachedReply, refresh: boolean): void {
    const r = this.client();
    const stored = r.set(redisKey(key), JSON.stringify(e), 'EX', this.settings.ttlSeconds);
    const told = refresh ? stored.then(() => r.publish(REFRESH_CHANNEL, JSON.stringify({ origin: this.origin, key }))) : stored;
    told.catch((err: Error) => this.commandFailed(err, r));
  }

  /**
   * Drops every entry (POST /api/orchestrator/cache/flush): this thread's, the other threads'
   * (over the bus), and with Redis the shared ones, whose replicas are told on the refresh
   * channel to drop their memory copies. Resolves to the Redis keys deleted; rejects when
   * Redis does not answer (the memory copies are gone then, the shared entries not).
   * Replies of requests begun before the flush are not stored after it, on any thread that
   * has heard of it; every thread of every replica drops its memory again once Redis is empty.
   */
  async flush(): Promise<{ redisKeys: number }> {
    const at = Date.now();
    this.dropAll(at);
    this.bus?.postMessage({ flush: at });
    if (this.o.redisUrl === undefined) return { redisKeys: 0 };
    if (!this.redisReady()) throw new BrokerError('state_unavailable', 'the response cache\'s Redis is not connected: memory entries were dropped, the shared ones were not');
    const r = this.client();
    let deleted = 0;
    try {
      let cursor = '0';
      do {
        const [next, keys] = await r.scan(cursor, 'MATCH', `${REDIS_PREFIX}*`, 'COUNT', 1000);
        cursor = next;
        if (keys.length > 0) deleted += await r.unlink(...keys);
      } while (cursor !== '0');
      // Heard by every thread of every replica, this one's included (an entry read back from
      // Redis during the SCAN may be in their memory).
      await r.publish(REFRESH_CHANNEL, JSON.stringify({ origin: this.origin, flush: at }));
    } catch (err) {
      this.commandFailed(err as Error, r);
      throw new BrokerError('state_unavailable', `the response cache's Redis failed during the flush (${deleted} shared entries deleted): ${(err as Error).message}`, { cause: err });
    }
    return { redisKeys: deleted };
  }

  private dropAll(at: number): void {
    this.lru?.clear();
    this.refreshedAway.clear();
    this.flushedAt = Math.max(this.flushedAt, at);
    this.flushes++;
  }

  private remember(key: string, e: CachedReply): void {
    this.lru?.set(key, e);
  }

  private client(): Redis {
    if (this.redis === undefined) {
      this.redis = newRedis(this.o.redisUrl!, {
        // A lookup must not hold a request: fail fast, and a slow answer is a miss.
        enableOfflineQueue: false,
        maxRetriesPerRequest: 0,
        commandTimeout: COMMAND_TIMEOUT_MS,
        connectTimeout: 2_000,
        retryStrategy,
        lazyConnect: true,
      });
      this.redis.on('error', (err: Error) => this.redisFailed(err));
      this.redis.on('ready', () => {
        this.redisHung = false;
        this.redisAnswered();
        const away = [...this.refreshedAway];
        this.refreshedAway.clear();
        for (const [key, e] of away) this.share(key, e, true);
      });
      this.connecting = this.redis.connect().catch(() => undefined);
      // Resubscribed on 'ready' below: ioredis's own resubscription has no rejection handler (ioredis#2187).
      this.sub = newRedis(this.o.redisUrl!, { connectTimeout: 2_000, retryStrategy, lazyConnect: true, autoResubscribe: false });
      this.sub.on('error', () => undefined);
      this.sub.on('message', (_channel: string, message: string) => {
        try {
          const m = JSON.parse(message) as { origin?: unknown; key?: unknown; flush?: unknown };
          if (typeof m.flush === 'number') this.dropAll(m.flush);
          else if (m.origin !== this.origin && typeof m.key === 'string') this.lru?.delete(m.key);
        } catch {
          // not ours
        }
      });
      // (Re)subscribed: a refresh told while this was not listening is unknown here, so the
      // memory copies go (they are read again from Redis, which holds the refreshed entries).
      this.sub.on('ready', () => {
        this.lru?.clear();
        void this.sub?.subscribe(REFRESH_CHANNEL).catch(() => undefined);
      });
      void this.sub.connect().catch(() => undefined);
    }
    return this.redis;
  }

  /** Resolves once Redis answered or failed to (then lookups miss until it is back): awaited at start-up. */
  connect(): Promise<void> {
    return this.connecting;
  }

  /** The entry and the ms it has left in Redis (one round trip: the two commands go together). */
  private async fromRedis(key: string): Promise<{ entry: CachedReply; ttlMs: number } | undefined> {
    try {
      if (!this.redisReady()) return undefined;
      const r = this.client();
      const k = redisKey(key);
      const [text, ttlMs] = await Promise.all([r.get(k), r.pttl(k)]);
      this.redisAnswered();
      if (text === null) return undefined;
      // A value that is not an entry (not ours, or damaged) is a miss, not a failure of Redis.
      let v: unknown;
      try {
        v = JSON.parse(text);
      } catch {
        return undefined;
      }
      // -1: no expiry (a key not set by us): the configured TTL.
      return isCachedReply(v) ? { entry: v, ttlMs: ttlMs === -1 ? this.settings.ttlSeconds * 1000 : ttlMs } : undefined;
    } catch (err) {
      this.commandFailed(err as Error, this.redis);
      return undefined;
    }
  }

  private redisReady(): boolean {
    return !this.redisHung && this.client().status === 'ready';
  }

  /** A lookup or store that Redis failed: counted, said once per outage, and a timeout asks whether Redis is hung. */
  private commandFailed(err: Error, r: Redis | undefined): void {
    this.o.metrics.llmCacheRedisErrors.inc();
    if (err.message === 'Command timed out') {
      // Timed out right after this thread stalled: the reply is likely unread in the socket.
      if (this.stall?.within(COMMAND_TIMEOUT_MS) === true) {
        this.o.logger.debug('response cache: a redis command timed out while this thread was stalled; not counted as an outage');
        return;
      }
      if (r !== undefined) this.checkHung(r);
    }
    this.redisFailed(err);
  }

  /**
   * One slow reply (a large entry, this thread stalled past the timeout) is not a hung Redis;
   * a PING after it, answered in order behind it, that gets no reply in time either is. Then
   * both connections are destroyed (ending them politely would wait for a peer that does not
   * answer), the subscriber's too, which has no command timeout and would stay on a dead
   * socket (and hear no refresh) after a blackhole heals; lookups miss at once until a new
   * connection is ready (its ready check is bounded by the same timeout).
   */
  private checkHung(r: Redis): void {
    if (this.redisHung || this.pinging) return;
    this.pinging = true;
    r.ping().then(
      () => {
        this.pinging = false;
        this.redisAnswered();
      },
      (e: Error) => {
        this.pinging = false;
        if (e.message !== 'Command timed out' || this.redisHung) return;
        this.redisHung = true;
        r.stream?.destroy();
        this.sub?.stream?.destroy();
      },
    );
  }

  /** Redis answered: an outage said in the log is over (the next one is said again). */
  private redisAnswered(): void {
    void this.outage.answered();
  }

  private redisFailed(err: Error): void {
    this.outage.failed(err);
  }

  close(): void {
    this.stall?.close();
    this.bus?.close();
    this.redis?.disconnect();
    this.sub?.disconnect();
  }
}
