// Stored Responses (OpenAI's conversation state): a Response the broker answered is kept
// under its id, so that a client may continue from it (`previous_response_id`), read it
// back (GET /v1/responses/{id}, .../input_items) or delete it. docs/llm.md#stored-responses.
//
// Storage, as the response cache's (cache.ts), in two tiers:
// - memory: an LRU of JSON records bounded in bytes, one per serving thread; a store or a
//   delete is sent to the other threads over a BroadcastChannel, so the next turn finds its
//   predecessor on whichever thread its connection landed.
// - Redis, when REDIS_URL is set: shared by every replica, each record with the TTL. Redis
//   says what exists (a delete on another replica holds everywhere); while it does not
//   answer, this process's copies serve, and a turn it has none of is a 503 (the
//   conversation exists, it cannot be read now), not a 404.
//
// A record is this turn's input items, the ids of the turns before it and the Response as
// its client got it; a turn's context is those turns' records, then its own.
// Each record belongs to the caller that made it (cache.ts ownerOf): another one's reads,
// continuations and deletes are answered as if it did not exist.
import { BroadcastChannel } from 'node:worker_threads';
import { LRUCache } from 'lru-cache';
import { Redis } from 'ioredis';
import { BrokerError } from '../../errors.ts';
import type { Logger } from '../../obs/logger.ts';
import { OutageLog } from '../../obs/outage-log.ts';

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
  readonly ttlSeconds: number;
  readonly logger: Logger;
  readonly redisUrl?: string | undefined;
  /** The BroadcastChannel every thread of this process joins. */
  readonly channel?: string | undefined;
}

const REDIS_PREFIX = 'eb:resp:';

function isRecord(v: unknown): v is StoredResponse {
  const o = v as Record<string, unknown> | null;
  return typeof o === 'object' && o !== null && typeof o['owner'] === 'string' && (o['previous'] === null || typeof o['previous'] === 'string') && Array.isArray(o['chain']) && Array.isArray(o['input']) && typeof o['response'] === 'object' && o['response'] !== null;
}

function notFound(id: string, field?: string): BrokerError {
  const message = `Response with id '${id}' not found.`;
  // A continuation from an unknown response is the request's fault (OpenAI's 400, and its code); a read of one is a 404.
  return field === undefined ? new BrokerError('not_found', message) : new BrokerError('previous_response_not_found', `Previous response with id '${id}' not found.`, { details: { field } });
}

export class ResponseStore {
  private readonly lru: LRUCache<string, string> | null;
  private readonly bus: BroadcastChannel | undefined;
  private redis: Redis | undefined;
  private readonly outage: OutageLog;
  /** The Redis server's run_id: another one after a reconnect is a restarted (maybe empty) Redis. */
  private redisRunId: string | undefined;
  /**
   * Responses in memory that Redis may not have: their write has not been acknowledged yet
   * (the client's next turn can come first) or failed (Redis was away). Redis not having
   * one is no sign it was deleted elsewhere: it is read from memory (and written again).
   */
  private readonly unshared = new Set<string>();

  constructor(private readonly o: ResponseStoreOptions) {
    this.outage = new OutageLog(o.logger, 'stored responses: redis failed; responses are kept in this process only until it is back (logged once per outage)', 'stored responses: redis answers again');
    this.lru =
      o.maxBytes > 0
        ? new LRUCache<string, string>({
            maxSize: o.maxBytes,
            sizeCalculation: (v, k) => v.length + k.length,
            ttl: o.ttlSeconds * 1000,
            // A turn read (continued, retrieved) lives on: a conversation in use does not expire.
            updateAgeOnGet: true,
            // lru-cache's default caches the clock behind a timer armed by a lookup.
            ttlResolution: 0,
            dispose: (_v, k) => this.unshared.delete(k),
          })
        : null;
    if (this.lru !== null && o.channel !== undefined) {
      const bus = new BroadcastChannel(o.channel);
      bus.onmessage = (ev) => {
        const m = (ev as MessageEvent).data as { id?: unknown; text?: unknown; shared?: unknown };
        if (typeof m?.id !== 'string') return;
        if (typeof m.text === 'string') {
          this.lru?.set(m.id, m.text);
          this.unshared.add(m.id);
        } else {
          this.unshared.delete(m.id);
          // Neither stored nor shared: deleted.
          if (m.shared !== true) this.lru?.delete(m.id);
        }
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

  /** Keeps a Response here, on the other threads and in Redis. */
  put(id: string, record: StoredResponse): void {
    if (this.lru === null) return;
    const text = JSON.stringify(record);
    this.lru.set(id, text);
    this.bus?.postMessage({ id, text });
    if (this.o.redisUrl === undefined) return;
    this.unshared.add(id);
    this.share(id, text);
  }

  /** `again`: written back after Redis restarted, for what is left of its time, unless Redis has one (NX). */
  private share(id: string, text: string, again = false): void {
    const r = this.client();
    const left = again ? this.lru?.getRemainingTTL(id) : undefined;
    const written = left !== undefined ? (left > 0 ? r.set(REDIS_PREFIX + id, text, 'PX', Math.ceil(left), 'NX') : Promise.resolve(null)) : r.set(REDIS_PREFIX + id, text, 'EX', this.o.ttlSeconds);
    written.then(
        () => {
          this.redisAnswered();
          this.unshared.delete(id);
          this.bus?.postMessage({ id, shared: true });
        },
        (err: Error) => this.redisFailed(err),
      );
  }

  /**
   * The records of `ids` as JSON (undefined: none). With Redis, Redis says what exists (a
   * delete or expiry on another replica holds here), in one round trip, and each one read
   * lives on (GETEX: its TTL starts again); while it does not answer, this process's own
   * copies serve (those it made, and those it read), and a record without one is a 503.
   */
  private async texts(ids: readonly string[]): Promise<Array<string | undefined>> {
    const lru = this.lru!;
    if (this.o.redisUrl === undefined) return ids.map((id) => lru.get(id));
    let shared: Array<string | null>;
    try {
      const p = this.client().pipeline();
      for (const id of ids) p.getex(REDIS_PREFIX + id, 'EX', this.o.ttlSeconds);
      const replies = (await p.exec()) ?? [];
      shared = ids.map((_, i) => {
        const [err, v] = replies[i] ?? [new Error('no reply'), null];
        if (err !== null) throw err;
        return v as string | null;
      });
      this.redisAnswered();
    } catch (err) {
      this.redisFailed(err as Error);
      const local = ids.map((id) => lru.get(id));
      if (local.every((v) => v !== undefined)) return local;
      throw new BrokerError('upstream_unavailable', 'stored responses cannot be read now: Redis does not answer; retry', { cause: err });
    }
    return ids.map((id, i) => {
      const text = shared[i];
      if (text !== null && text !== undefined) {
        // Kept here too: served while Redis is away.
        if (lru.peek(id) !== text) lru.set(id, text);
        return text;
      }
      if (!this.unshared.has(id)) return undefined;
      const local = lru.get(id);
      if (local !== undefined) this.share(id, local);
      return local;
    });
  }

  private parse(text: string | undefined, owner: string): StoredResponse | undefined {
    if (text === undefined) return undefined;
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      return undefined;
    }
    return isRecord(v) && v.owner === owner ? v : undefined;
  }

  /** The record of `id` if `owner` made it; undefined when there is none (or it is another's). */
  async get(id: string, owner: string): Promise<StoredResponse | undefined> {
    if (this.lru === null) return undefined;
    return this.parse((await this.texts([id]))[0], owner);
  }

  /** The records of `ids` that `owner` made (undefined for the others), in one round trip. */
  async records(ids: readonly string[], owner: string): Promise<Array<StoredResponse | undefined>> {
    if (this.lru === null || ids.length === 0) return ids.map(() => undefined);
    return (await this.texts(ids)).map((text) => this.parse(text, owner));
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
    this.lru?.delete(id);
    this.unshared.delete(id);
    this.bus?.postMessage({ id });
    if (this.o.redisUrl !== undefined) {
      try {
        await this.client().del(REDIS_PREFIX + id);
      } catch (err) {
        this.redisFailed(err as Error);
        throw new BrokerError('upstream_unavailable', 'the stored response cannot be deleted now: Redis does not answer; retry', { cause: err });
      }
    }
    return true;
  }

  /**
   * The conversation a continuation of `id` starts from: every turn's input and output
   * items, oldest first, and the turns' ids (the continuation's chain). Every turn must still be stored and be the caller's (only its
   * maker could have continued from one); a turn gone (deleted, evicted, expired) leaves a
   * hole, refused rather than continued without it.
   */
  async context(id: string, owner: string, field: string): Promise<{ items: unknown[]; chain: string[] }> {
    const last = await this.get(id, owner);
    if (last === undefined) throw notFound(id, field);
    const texts = last.chain.length === 0 ? [] : await this.texts(last.chain);
    const items: unknown[] = [];
    for (let i = 0; i < last.chain.length; i++) {
      const turn = this.parse(texts[i], owner);
      if (turn === undefined) throw new BrokerError('previous_response_not_found', `Previous response with id '${id}' cannot be continued: an earlier turn of it (${last.chain[i]!}) is no longer stored.`, { details: { field } });
      items.push(...turn.input, ...outputOf(turn.response));
    }
    items.push(...last.input, ...outputOf(last.response));
    return { items, chain: [...last.chain, id] };
  }

  private client(): Redis {
    if (this.redis === undefined) {
      this.redis = new Redis(this.o.redisUrl!, { enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: 1_000, connectTimeout: 2_000, retryStrategy: (n: number) => Math.min(100 * 2 ** Math.min(n, 5), 2_000), lazyConnect: true });
      this.redis.on('error', (err: Error) => this.redisFailed(err));
      this.redis.on('ready', () => void this.redisReady());
      void this.redis.connect().catch(() => undefined);
    }
    return this.redis;
  }

  /**
   * Connected: a Redis restarted since the last connection (persistence off: empty) has lost
   * the conversations. What this thread holds is written back (without overwriting one Redis
   * has), and until each write lands Redis not having it is no sign it was deleted.
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
    if (!restarted || this.lru === null) return;
    for (const [id, text] of this.lru.entries()) {
      this.unshared.add(id);
      this.share(id, text, true);
    }
  }

  private redisAnswered(): void {
    this.outage.answered();
  }

  private redisFailed(err: Error): void {
    this.outage.failed(err);
  }

  close(): void {
    this.bus?.close();
    this.redis?.disconnect();
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
