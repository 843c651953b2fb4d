// Stored Responses (OpenAI's conversation state): a Response the broker answered is kept
// under its id, so that a client may continue from it (`previous_response_id`), read it
// back (GET /v1/responses/{id}, .../input_items) or delete it. docs/llm.md#stored-responses.
//
// Storage, in two tiers:
// - memory: an LRU of JSON records bounded in bytes, one per serving thread; a store or a
//   delete is sent to the other threads over a BroadcastChannel, so the next turn finds its
//   predecessor on whichever thread its connection landed.
// - Redis, when RESPONSES_STORE_REDIS_URL is set (its own setting: conversations are data,
//   which a Redis that carries the replicas' control state, full under noeviction, must not
//   take in): shared by every replica, each record with the TTL. Redis says what exists (a
//   delete on another replica holds everywhere, and is announced to their memory); while it
//   does not answer, this process's copies serve, and a turn it has none of is a 503 (the
//   conversation exists, it cannot be read now), not a 404.
//
// A record is this turn's input items, the ids of the turns before it and the Response as
// its client got it; a turn's context is those turns' records, then its own. Each record is
// kept under its owner and its id (cache.ts ownerOf: the caller that made it): another
// caller's reads, continuations and deletes find nothing, and cannot overwrite it.
//
// One owner's share (RESPONSES_STORE_OWNER_MB): so that one caller's many or large
// conversations do not push every other caller's out, in memory past its share an owner's own
// least recently used records go (not another's); in Redis (shared by the replicas, where
// a byte count of what each record holds now would need an index touched on every read) it
// is a budget of bytes written per TTL: past it, the owner's new records are kept in this
// process only (the next turn on another replica is 400 previous_response_not_found, as
// without Redis), until the budget's window ends.
import { hash } from 'node:crypto';
import { BroadcastChannel } from 'node:worker_threads';
import { LRUCache } from 'lru-cache';
import type { Redis } from 'ioredis';
import { newRedis } from '../../state/lazy-redis.ts';
import { BrokerError } from '../../errors.ts';
import type { Logger } from '../../obs/logger.ts';
import { OutageLog } from '../../obs/outage-log.ts';
import { tryParse } from '../chain/probe.ts';

export interface StoredResponse {
  readonly owner: string;
  /** The Response this one continued (its previous_response_id), or null. */
  readonly previous: string | null;
  /** Every turn before this one, oldest first: read in one round trip. */
  readonly chain: readonly string[];
  /** This turn's input, as items (a string input is one user message). */
  readonly input: readonly unknown[];
  /** The Response as its client got it (whole, or a stream's response.completed). */
  readonly response: Readonly<Record<string, unknown>>;
}

export interface ResponseStoreOptions {
  /** Bytes of records each thread keeps in memory; 0 turns the store off. */
  readonly maxBytes: number;
  /** One owner's share: bytes of its records each thread keeps, and it writes to Redis per TTL; 0 (the default): none but maxBytes. */
  readonly ownerMaxBytes?: number | undefined;
  readonly ttlSeconds: number;
  readonly logger: Logger;
  /** The Redis the replicas share conversations through (RESPONSES_STORE_REDIS_URL). */
  readonly redisUrl?: string | undefined;
  /** The BroadcastChannel every thread of this process joins. */
  readonly channel?: string | undefined;
  /** A record its owner's Redis budget kept out of Redis (counted in llm_responses_store_over_owner_budget_total). */
  readonly overOwnerBudget?: () => void;
}

/** Owners warned about, at most: one more forgets the oldest (which may be warned again). */
const WARNED_MAX = 10_000;

const REDIS_PREFIX = 'eb:resp:';
/** An owner's bytes written to Redis in this window (`eb:resp-bytes:<owner tag>`, gone after the TTL). */
const OWNER_BYTES_PREFIX = 'eb:resp-bytes:';
/**
 * A record's write, unless its owner's writes this window would pass its budget (-1: not
 * written, nothing counted). KEYS: the record, its owner's byte count. ARGV: the record, its
 * PX, the budget (0: none), the window's PX, 'NX' for a write-back (0: Redis has one).
 */
const PUT_WITHIN_BUDGET = `
local size = string.len(ARGV[1])
local budget = tonumber(ARGV[3])
if budget > 0 and tonumber(redis.call('GET', KEYS[2]) or '0') + size > budget then return -1 end
local ok
if ARGV[5] == 'NX' then ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') else ok = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if not ok then return 0 end
if budget > 0 then
  redis.call('INCRBY', KEYS[2], size)
  if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[4]) end
end
return 1`;
/** Deletes announced to the other replicas' memory. */
const DELETED_CHANNEL = 'eb:resp-deleted';
/** A command's wait for Redis: a continuation waits this long at most on a hung one, then skips it this long. */
const COMMAND_TIMEOUT_MS = 500;
const HUNG_SKIP_MS = 2_000;
/** After a Redis restart, how long the replicas have to write back what they hold (its reconnect backoff is at most 2 s). */
const REFILL_MS = 5_000;

function isRecord(v: unknown): v is StoredResponse {
  const o = v as Record<string, unknown> | null;
  return typeof o === 'object' && o !== null && typeof o['owner'] === 'string' && (o['previous'] === null || typeof o['previous'] === 'string') && Array.isArray(o['chain']) && Array.isArray(o['input']) && typeof o['response'] === 'object' && o['response'] !== null;
}

function notFound(id: string, field?: string): BrokerError {
  const message = `Response with id '${id}' not found.`;
  // A continuation from an unknown response is the request's fault (OpenAI's 400, and its code); a read of one is a 404.
  return field === undefined ? new BrokerError('not_found', message) : new BrokerError('previous_response_not_found', `Previous response with id '${id}' not found.`, { details: { field } });
}

/** Where `owner`'s response `id` is kept: its owner's tag (a digest: keys and subjects stay out of Redis's key space) and its id. */
function keyOf(owner: string, id: string): string {
  return `${hash('sha256', owner, 'base64url').slice(0, 16)}:${id}`;
}

/** The owner tag a key starts with. */
function tagOf(key: string): string {
  return key.slice(0, key.indexOf(':'));
}

type BusMessage = { key: string; text: string } | { key: string; shared: true } | { key: string };

export class ResponseStore {
  private readonly lru: LRUCache<string, string> | null;
  private readonly bus: BroadcastChannel | undefined;
  private redis: Redis | undefined;
  private sub: Redis | undefined;
  private readonly outage: OutageLog;
  /** The Redis server's run_id: another one after a reconnect is a restarted (maybe empty) Redis. */
  private redisRunId: string | undefined;
  /** Redis timed out (hung, a blackhole): skipped until then, as if away. */
  private skipRedisUntil = 0;
  /** Redis came back restarted (empty): until then, one it does not have may be one not yet written back (a 503, not a 404). */
  private refillingUntil = 0;
  /**
   * Responses in memory that Redis may not have: their write has not been acknowledged yet
   * (the client's next turn can come first) or failed (Redis was away). Redis not having
   * one is no sign it was deleted elsewhere: it is read from memory (and written again).
   */
  private readonly unshared = new Set<string>();
  /** Responses this process made (not read from Redis): what it writes back to a Redis restarted empty. */
  private readonly ours = new Set<string>();
  /** One owner's share (0: none). */
  private readonly ownerMax: number;
  /**
   * Each owner's records in this thread's memory and their sizes, least recently used first
   * (a Map keeps insertion order: one used is put last again), and their sum: past the
   * owner's share its first ones go.
   */
  private readonly owners = new Map<string, { bytes: number; keys: Map<string, number> }>();
  /** Owners whose budget kept a record out of Redis, and when that was logged. */
  private readonly warned = new Map<string, number>();

  constructor(private readonly o: ResponseStoreOptions) {
    this.outage = new OutageLog(o.logger, 'stored responses: redis failed; responses are kept in this process only until it is back (logged once per outage)', 'stored responses: redis answers again');
    this.ownerMax = Math.max(0, Math.floor(o.ownerMaxBytes ?? 0));
    this.lru =
      o.maxBytes > 0
        ? new LRUCache<string, string>({
            maxSize: o.maxBytes,
            // One larger than its owner's share is not kept (it would push out all the owner's others, then itself).
            maxEntrySize: this.ownerMax > 0 ? Math.min(this.ownerMax, o.maxBytes) : o.maxBytes,
            sizeCalculation: (v, k) => v.length + k.length,
            ttl: o.ttlSeconds * 1000,
            // A turn read (continued, retrieved) lives on: a conversation in use does not expire.
            updateAgeOnGet: true,
            // lru-cache's default caches the clock behind a timer armed by a lookup.
            ttlResolution: 0,
            dispose: (_v, k) => this.forget(k),
          })
        : null;
    if (this.lru !== null && o.channel !== undefined) {
      const bus = new BroadcastChannel(o.channel);
      bus.onmessage = (ev) => {
        const m = (ev as MessageEvent).data as BusMessage;
        if (typeof m?.key !== 'string') return;
        if ('text' in m) this.remember(m.key, m.text, this.o.redisUrl !== undefined);
        else if ('shared' in m) this.unshared.delete(m.key);
        else this.lru?.delete(m.key);
      };
      bus.unref();
      this.bus = bus;
    }
    if (this.lru !== null && o.redisUrl !== undefined) this.client();
  }

  /** Whether responses are kept at all (RESPONSES_STORE_MB > 0). */
  get enabled(): boolean {
    return this.lru !== null;
  }

  /** In this thread's memory, as this process's own; `unshared` until Redis has it. */
  private remember(key: string, text: string, unshared: boolean): void {
    // One past the LRU's bound is not kept: nothing to track.
    if (!this.keep(key, text)) return;
    this.ours.add(key);
    if (unshared) this.unshared.add(key);
  }

  /** In this thread's memory (false: too large to be); its owner's most recent. */
  private keep(key: string, text: string): boolean {
    this.lru!.set(key, text);
    if (!this.lru!.has(key)) return false;
    this.used(key, text.length + key.length);
    return true;
  }

  /** From this thread's memory; its owner's most recent. */
  private local(key: string): string | undefined {
    const text = this.lru!.get(key);
    if (text !== undefined) this.used(key);
    return text;
  }

  /** `key` (of `size`, when it was just kept) is its owner's most recent: past the owner's share, the owner's least recently used go. */
  private used(key: string, size?: number): void {
    if (this.ownerMax === 0) return;
    const tag = tagOf(key);
    let o = this.owners.get(tag);
    const had = o?.keys.get(key);
    const now = size ?? had;
    if (now === undefined) return;
    if (o === undefined) this.owners.set(tag, (o = { bytes: 0, keys: new Map() }));
    o.keys.delete(key);
    o.keys.set(key, now);
    o.bytes += now - (had ?? 0);
    for (const k of o.keys.keys()) {
      if (o.bytes <= this.ownerMax) break;
      // Its dispose (forget) takes it off the owner's.
      if (!this.lru!.delete(k)) this.unowned(k);
    }
  }

  private unowned(key: string): void {
    const tag = tagOf(key);
    const o = this.owners.get(tag);
    const size = o?.keys.get(key);
    if (o === undefined || size === undefined) return;
    o.keys.delete(key);
    o.bytes -= size;
    if (o.keys.size === 0) this.owners.delete(tag);
  }

  private forget(key: string): void {
    this.unshared.delete(key);
    this.ours.delete(key);
    this.unowned(key);
  }

  /** Keeps a Response here, on the other threads and in Redis. */
  put(id: string, record: StoredResponse): void {
    if (this.lru === null) return;
    const key = keyOf(record.owner, id);
    const text = JSON.stringify(record);
    this.remember(key, text, this.o.redisUrl !== undefined);
    this.bus?.postMessage({ key, text } satisfies BusMessage);
    if (this.o.redisUrl !== undefined) this.share(key, text);
  }

  /** `again`: written back after Redis restarted, for what is left of its time, unless Redis has one (NX). */
  private share(key: string, text: string, again = false): void {
    const r = this.client();
    const ttl = this.o.ttlSeconds * 1000;
    const left = again ? this.lru?.getRemainingTTL(key) : undefined;
    // Expired here meanwhile: nothing to write back.
    const written = left !== undefined && left <= 0 ? Promise.resolve(1) : r.eval(PUT_WITHIN_BUDGET, 2, REDIS_PREFIX + key, OWNER_BYTES_PREFIX + tagOf(key), text, Math.ceil(left ?? ttl), this.ownerMax, ttl, left !== undefined ? 'NX' : '');
    written.then(
      (done) => {
        this.redisAnswered();
        // Past its owner's budget: kept here only (and tried again when read, or when Redis comes back).
        if (Number(done) < 0) {
          this.overBudget(tagOf(key));
          return;
        }
        this.unshared.delete(key);
        this.bus?.postMessage({ key, shared: true } satisfies BusMessage);
      },
      (err: Error) => this.redisFailed(err),
    );
  }

  /**
   * Says that an owner's records stay on this replica: counted each time, logged once per owner
   * and window (else the operator sees only the clients' previous_response_not_found).
   */
  private overBudget(tag: string): void {
    this.o.overOwnerBudget?.();
    const now = Date.now();
    const at = this.warned.get(tag);
    if (at !== undefined && now - at < this.o.ttlSeconds * 1000) return;
    this.warned.delete(tag);
    this.warned.set(tag, now);
    if (this.warned.size > WARNED_MAX) this.warned.delete(this.warned.keys().next().value!);
    this.o.logger.warn({ owner: tag, owner_max_mb: (this.ownerMax / (1024 * 1024)).toFixed(1), window_s: this.o.ttlSeconds }, 'stored responses: an owner spent its RESPONSES_STORE_OWNER_MB in Redis this window; its new responses stay on this replica (continued on another, previous_response_not_found)');
  }

  /**
   * The records under `keys` as JSON (undefined: none). With Redis, Redis says what exists (a
   * delete or expiry on another replica holds here: the copy here goes too), in one round
   * trip, and each one read lives on (GETEX: its TTL starts again); while it does not answer,
   * this process's own copies serve (those it made, and those it read), and a record without
   * one is a 503.
   */
  private async texts(keys: readonly string[]): Promise<Array<string | undefined>> {
    const lru = this.lru!;
    if (this.o.redisUrl === undefined) return keys.map((k) => this.local(k));
    let shared: Array<string | null>;
    try {
      if (Date.now() < this.skipRedisUntil) throw new Error('Redis timed out a moment ago: skipped');
      const p = this.client().pipeline();
      for (const k of keys) p.getex(REDIS_PREFIX + k, 'EX', this.o.ttlSeconds);
      const replies = (await p.exec()) ?? [];
      shared = keys.map((_, i) => {
        const [err, v] = replies[i] ?? [new Error('no reply'), null];
        if (err !== null) throw err;
        return v as string | null;
      });
      this.redisAnswered();
    } catch (err) {
      // A hung Redis (its connection open, nothing answering) would hold every continuation for the timeout.
      if ((err as Error).message === 'Command timed out') this.skipRedisUntil = Date.now() + HUNG_SKIP_MS;
      this.redisFailed(err as Error);
      const local = keys.map((k) => this.local(k));
      if (local.every((v) => v !== undefined)) return local;
      throw new BrokerError('upstream_unavailable', 'stored responses cannot be read now: Redis does not answer; retry', { cause: err });
    }
    return keys.map((k, i) => {
      const text = shared[i];
      if (text !== null && text !== undefined) {
        // Kept here too (served while Redis is away), its age started again as Redis's was.
        this.keep(k, text);
        return text;
      }
      if (!this.unshared.has(k) && Date.now() < this.refillingUntil && lru.peek(k) === undefined) {
        throw new BrokerError('upstream_unavailable', 'stored responses are being written back to a restarted Redis; retry', { retryAfter: 1 });
      }
      if (!this.unshared.has(k)) {
        // Deleted or expired in Redis: not here either, nor on the other threads.
        if (lru.delete(k)) this.bus?.postMessage({ key: k } satisfies BusMessage);
        return undefined;
      }
      const local = this.local(k);
      if (local !== undefined) this.share(k, local);
      return local;
    });
  }

  private parse(text: string | undefined, owner: string): StoredResponse | undefined {
    const v = text === undefined ? null : tryParse(text);
    return isRecord(v) && v.owner === owner ? v : undefined;
  }

  /** The record of `id` if `owner` made it; undefined when there is none (or it is another's). */
  async get(id: string, owner: string): Promise<StoredResponse | undefined> {
    return (await this.records([id], owner))[0];
  }

  /** The records of `ids` that `owner` made (undefined for the others), in one round trip. */
  async records(ids: readonly string[], owner: string): Promise<Array<StoredResponse | undefined>> {
    if (this.lru === null || ids.length === 0) return ids.map(() => undefined);
    return (await this.texts(ids.map((id) => keyOf(owner, id)))).map((text) => this.parse(text, owner));
  }

  /** The record, or the 404 (400 naming `field` for a continuation) a client gets. */
  async require(id: string, owner: string, field?: string): Promise<StoredResponse> {
    const r = await this.get(id, owner);
    if (r === undefined) throw notFound(id, field);
    return r;
  }

  /** Deletes `owner`'s response `id` everywhere; false when there was none of theirs. */
  async delete(id: string, owner: string): Promise<boolean> {
    if ((await this.get(id, owner)) === undefined) return false;
    const key = keyOf(owner, id);
    this.lru?.delete(key);
    this.bus?.postMessage({ key } satisfies BusMessage);
    if (this.o.redisUrl !== undefined) {
      try {
        const r = this.client();
        await r.del(REDIS_PREFIX + key);
        // The other replicas' memory: else one would serve it while Redis is away.
        void r.publish(DELETED_CHANNEL, key).catch(() => undefined);
      } catch (err) {
        this.redisFailed(err as Error);
        throw new BrokerError('upstream_unavailable', 'the stored response cannot be deleted now: Redis does not answer; retry', { cause: err });
      }
    }
    return true;
  }

  /**
   * The conversation a continuation of `id` starts from: every turn's input and output
   * items, oldest first, and the turns' ids (the continuation's chain). Every turn must still
   * be stored (only its maker could have continued from one, so all are the caller's); a
   * turn gone (deleted, evicted, expired) leaves a hole, refused rather than continued without it.
   */
  async context(id: string, owner: string, field: string): Promise<{ items: unknown[]; chain: string[] }> {
    const last = await this.get(id, owner);
    if (last === undefined) throw notFound(id, field);
    const turns = await this.records(last.chain, owner);
    const items: unknown[] = [];
    for (let i = 0; i < last.chain.length; i++) {
      const turn = turns[i];
      if (turn === undefined) throw new BrokerError('previous_response_not_found', `Previous response with id '${id}' cannot be continued: an earlier turn of it (${last.chain[i]!}) is no longer stored.`, { details: { field } });
      items.push(...turn.input, ...outputOf(turn.response));
    }
    items.push(...last.input, ...outputOf(last.response));
    return { items, chain: [...last.chain, id] };
  }

  private client(): Redis {
    if (this.redis === undefined) {
      const retryStrategy = (n: number): number => Math.min(100 * 2 ** Math.min(n, 5), 2_000);
      this.redis = newRedis(this.o.redisUrl!, { enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: COMMAND_TIMEOUT_MS, connectTimeout: 2_000, retryStrategy, lazyConnect: true });
      this.redis.on('error', (err: Error) => this.redisFailed(err));
      this.redis.on('ready', () => {
        this.skipRedisUntil = 0;
        void this.redisReady();
      });
      void this.redis.connect().catch(() => undefined);
      this.sub = newRedis(this.o.redisUrl!, { connectTimeout: 2_000, retryStrategy, lazyConnect: true, autoResubscribe: false });
      this.sub.on('error', () => undefined);
      this.sub.on('message', (_channel: string, key: string) => this.lru?.delete(key));
      this.sub.on('ready', () => void this.sub?.subscribe(DELETED_CHANNEL).catch(() => undefined));
      void this.sub.connect().catch(() => undefined);
    }
    return this.redis;
  }

  /**
   * Connected. What was kept while Redis was away (or whose write failed) is written now; and
   * a Redis restarted since the last connection (persistence off: empty) has lost the
   * conversations: what this process made and holds is written back too (not over what Redis
   * has: NX), and for a while (the other replicas writing theirs back) a response Redis does
   * not have is a 503, not a 404. Until each write lands, Redis not having it is no sign it
   * was deleted.
   */
  private async redisReady(): Promise<void> {
    let runId: string | undefined;
    try {
      runId = /run_id:([0-9a-f]+)/.exec(await this.client().info('server'))?.[1];
    } catch {
      return;
    }
    const restarted = this.redisRunId !== undefined && runId !== this.redisRunId;
    this.redisRunId = runId;
    if (this.lru === null) return;
    if (restarted) {
      this.refillingUntil = Date.now() + REFILL_MS;
      for (const key of this.ours) this.unshared.add(key);
    }
    this.shareUnshared();
  }

  /** Redis answers: at the end of an outage (a hung Redis answers again on the same connection, with no 'ready'), what it missed is written. */
  private redisAnswered(): void {
    if (this.outage.answered()) this.shareUnshared();
  }

  private shareUnshared(): void {
    for (const key of [...this.unshared]) {
      const text = this.lru?.peek(key);
      if (text !== undefined) this.share(key, text, true);
    }
  }

  private redisFailed(err: Error): void {
    this.outage.failed(err);
  }

  close(): void {
    this.bus?.close();
    this.redis?.disconnect();
    this.sub?.disconnect();
  }
}

/** A Response's output items as the next turn's input (what OpenAI's continuation carries over). */
function outputOf(response: Readonly<Record<string, unknown>>): unknown[] {
  const out = response['output'];
  return Array.isArray(out) ? out : [];
}

/** A request's `input` as items: a string is one user message. */
export function inputItems(input: unknown): unknown[] {
  if (typeof input === 'string') return [{ type: 'message', role: 'user', content: input }];
  return Array.isArray(input) ? input : [];
}
