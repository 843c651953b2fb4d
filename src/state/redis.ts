// The state store in Redis (REDIS_URL), shared by every replica:
//   eb:session:<id>          session JSON, with its TTL (PX)
//   eb:subject:<subject>     set of that subject's session ids (revoke all)
//   eb:keys                  hash: key id → key record JSON (the SHA-256, never the key)
//   eb:audit                 stream, capped (MAXLEN ~ 10000): the audit trail
//   eb:doc                   hash: doc kind → JSON (flag overrides, fleet operator state, keys version)
//   eb:changes               pub/sub channel: {kind, replica} after every doc write
//   eb:lease:<subject>:<minute>:r|t  requests | tokens leased in that minute (src/state/leases.ts), 2 min TTL
//   eb:replicas              sorted set: replica → last heartbeat (epoch ms)
//   eb:pins                  pub/sub channel: {replica, pins: [[prefix key, deployment|null]]} (src/state/pin-share.ts)
//   eb:revoked               pub/sub channel: {replica, ids: [session id]} or {replica, subject} after a revocation
// A replica that reconnects re-reads every doc (versions, not replay): onChange fires
// for each kind. Commands fail fast while Redis is down (no offline queue), so callers
// see the failure and apply their documented fail mode. A Redis that stops answering
// without closing the connection (a frozen host, a network blackhole) is found by the
// command timeout: the first command it times out marks the store down and drops the
// connection, so that the next ones fail at once until a reconnect is ready again.
import { redactUrl } from '../config/secret-url.ts';
import { ThreadStall } from './thread-stall.ts';
import { Redis } from 'ioredis';
import type { Logger } from '../obs/logger.ts';
import { filterAudit, type AuditEntry, type AuditFilter, type DocKind, type KeyRecord, type Revoked, type SessionRecord, type StateStore } from './store.ts';
import type { LeaseAmounts, LeaseBackend } from './leases.ts';
import type { Pin, PinChannel } from './pin-share.ts';

/** HSET only if the field still holds ARGV[2] ('' for none): the compare and set of updateDoc. */
const SET_DOC_IF = "local c = redis.call('HGET', KEYS[1], ARGV[1]) if (c or '') ~= ARGV[2] then return 0 end redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1";

/** Audit entries read from the stream at a time. */
const AUDIT_PAGE = 500;

/** PEXPIRE only to lengthen a key's life (Redis 7's GT, for any version; no TTL counts as shorter). */
// A session stored unless its subject already holds ARGV[2] live ones (1 stored, 0 refused):
// the subject's ids whose session expired leave its set first, and the count and the store are
// one step, so that replicas making sessions at once cannot pass the bound together.
// KEYS: the subject's set, the session; ARGV: the session key prefix, the bound, the session, its TTL (ms), its id.
const PUT_WITHIN = `
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. id) == 1 then n = n + 1 else redis.call('SREM', KEYS[1], id) end
end
if n >= tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
redis.call('SADD', KEYS[1], ARGV[5])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1`;
const EXTEND_TTL = "local t = redis.call('PTTL', KEYS[1]) if t < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end return t";

// One round trip per lease, atomic: grant what is left of the limit, up to the ask.
const TAKE_LEASE = `
local function take(key, want, limit, ttl)
  if want <= 0 then return 0 end
  local used = tonumber(redis.call('GET', key) or '0')
  local grant = math.min(want, limit - used)
  if grant <= 0 then return 0 end
  redis.call('INCRBY', key, grant)
  redis.call('PEXPIRE', key, ttl)
  return grant
end
return { take(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[5]), take(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]) }`;

const RETURN_LEASE = `
for i = 1, 2 do
  local n = tonumber(ARGV[i])
  if n > 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('DECRBY', KEYS[i], n) < 0 then redis.call('SET', KEYS[i], 0, 'KEEPTTL') end
  end
end
return 0`;

/** Replicas whose heartbeat is older than this are gone. */
const REPLICA_TTL_MS = 15_000;
const LEASE_TTL_MS = 120_000;

const KINDS: readonly DocKind[] = ['flags', 'fleet', 'keys'];
const CHANNEL = 'eb:changes';
const PINS = 'eb:pins';
const REVOKED = 'eb:revoked';

export interface RedisStoreOptions {
  readonly url: string;
  readonly replica: string;
  readonly logger: Logger;
  /** Called with the store's state: up or down (metrics redis_up). */
  readonly onUp?: (up: boolean) => void;
  /** How long a command may wait for its reply before the store counts Redis as hung (REDIS_COMMAND_TIMEOUT_MS). */
  readonly commandTimeoutMs?: number;
}

/** The longest connect() waits at start-up: a Redis that accepts connections but never answers must not hold the broker back. */
const CONNECT_WAIT_MS = 3_000;

export class RedisStore implements StateStore, LeaseBackend, PinChannel {
  readonly kind = 'redis' as const;
  up = false;
  private readonly cmd: Redis;
  private readonly sub: Redis;
  private readonly listeners: ((kind: DocKind) => void)[] = [];
  private readonly pinListeners: ((pins: readonly Pin[]) => void)[] = [];
  private readonly revokedListeners: ((r: Revoked) => void)[] = [];
  private closed = false;

  constructor(private readonly o: RedisStoreOptions) {
    const common = {
      // Fail fast while Redis is away: no command waits for a reconnect.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      connectTimeout: 2_000,
      // TCP keep-alive: a connection into a network blackhole ends, rather than stay open, silent.
      keepAlive: 10_000,
      retryStrategy: (times: number) => Math.min(100 * 2 ** Math.min(times, 5), 2_000),
      lazyConnect: true,
    };
    // The command timeout bounds the ready check too: a hung Redis never turns ready.
    this.cmd = new Redis(o.url, { ...common, commandTimeout: o.commandTimeoutMs ?? 1_000 });
    // Resubscribed by the 'ready' handler below, not by ioredis: its own resubscription has no
    // rejection handler (ioredis#2187), and a Redis lost again mid-way crashed the process.
    this.sub = new Redis(o.url, { ...common, enableOfflineQueue: true, autoResubscribe: false });
    const send = this.cmd.sendCommand.bind(this.cmd);
    this.cmd.sendCommand = ((command: Parameters<Redis['sendCommand']>[0], stream?: Parameters<Redis['sendCommand']>[1]) => {
      const p = send(command, stream);
      command.promise.catch((err: Error) => {
        if (err.message === 'Command timed out') this.hung(command.name);
      });
      return p;
    }) as Redis['sendCommand'];
    this.cmd.on('ready', () => this.setUp(true));
    this.cmd.on('end', () => this.setUp(false));
    this.cmd.on('close', () => this.setUp(false));
    // The loss itself is logged once by setUp(false), with the last error if any.
    this.cmd.on('error', (err) => {
      this.lastError = err.message;
    });
    this.sub.on('error', () => undefined);
    this.sub.on('message', (channel, message) => {
      if (channel === PINS) return this.pinsFrom(message);
      if (channel === REVOKED) return this.revokedFrom(message);
      try {
        const m = JSON.parse(message) as { kind: DocKind; replica: string };
        if (m.replica !== o.replica && KINDS.includes(m.kind)) this.emit(m.kind);
      } catch {
        // not ours
      }
    });
    // Every (re)subscription: re-read everything, since changes may have been missed.
    this.sub.on('ready', () => {
      void this.sub.subscribe(CHANNEL, PINS, REVOKED).then(() => {
        this.subscribed = true;
        for (const k of KINDS) this.emit(k);
        for (const l of this.revokedListeners) l({ all: true });
      }, () => undefined);
    });
    this.sub.on('close', () => {
      this.subscribed = false;
    });
  }

  /** Connects; resolves even when Redis is down or hung at start (the broker serves on, and retries). */
  async connect(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const waited = new Promise<void>((resolve) => (timer = setTimeout(resolve, CONNECT_WAIT_MS)));
    await Promise.race([Promise.all([this.cmd.connect().catch(() => undefined), this.sub.connect().catch(() => undefined)]), waited]);
    clearTimeout(timer);
  }

  /** A command timing out right after this thread stalled is not a hung Redis (thread-stall.ts). */
  private readonly stall = new ThreadStall();

  /** A command got no reply in time: Redis is hung. Down now, and the connection dropped (once) so that commands fail fast. */
  private hung(command: string): void {
    if (this.closed || this.cmd.status !== 'ready') return;
    // The command itself has failed (ioredis's timer); the connection is kept: its reply is
    // likely in the socket already, unread while this thread was busy.
    if (this.stall.within(this.o.commandTimeoutMs ?? 1_000)) {
      this.o.logger.debug({ command }, 'redis: a command timed out while this thread was stalled; not counted as a hung Redis');
      return;
    }
    this.lastError = `${command} got no reply within ${this.o.commandTimeoutMs ?? 1_000} ms`;
    this.setUp(false);
    this.cmd.disconnect(true);
    // The subscriber too: its reconnect re-reads every doc (what changed meanwhile, and this
    // replica's own changes kept locally are merged back), as after a Redis restart.
    this.sub.disconnect(true);
  }

  private lastError: string | undefined;
  /** Subscribed to the change channel: the re-read of every doc has been announced. */
  private subscribed = false;

  private setUp(up: boolean): void {
    if (this.closed || this.up === up) return;
    this.up = up;
    this.o.onUp?.(up);
    if (up) this.o.logger.info({ url: redact(this.o.url) }, 'redis: connected');
    // Every outage, a clean shutdown of Redis included (its 'close' comes before any 'error').
    else this.o.logger.warn({ url: redact(this.o.url), ...(this.lastError !== undefined ? { err: this.lastError } : {}) }, 'redis: connection lost; shared state keeps its last known values, and reconnects');
    this.lastError = undefined;
  }

  private emit(kind: DocKind): void {
    for (const l of this.listeners) l(kind);
  }

  onChange(cb: (kind: DocKind) => void): void {
    this.listeners.push(cb);
    // A listener that comes after the first re-read (a replica's shared state is wired once
    // the store has connected) gets its own: else a replica started while Redis holds flags,
    // bans or drains would never adopt them.
    if (this.subscribed) queueMicrotask(() => {
      for (const k of KINDS) cb(k);
    });
  }

  async publishPins(pins: readonly Pin[]): Promise<void> {
    await this.cmd.publish(PINS, JSON.stringify({ replica: this.o.replica, pins }));
  }

  onPins(cb: (pins: readonly Pin[]) => void): void {
    this.pinListeners.push(cb);
  }

  private pinsFrom(message: string): void {
    let m: { replica?: unknown; pins?: unknown };
    try {
      m = JSON.parse(message) as typeof m;
    } catch {
      return;
    }
    if (m.replica === this.o.replica || !Array.isArray(m.pins)) return;
    const pins = m.pins.filter((p): p is Pin => Array.isArray(p) && typeof p[0] === 'string' && (typeof p[1] === 'string' || p[1] === null));
    for (const l of this.pinListeners) l(pins);
  }

  onRevoked(cb: (r: Revoked) => void): void {
    this.revokedListeners.push(cb);
  }

  private revokedFrom(message: string): void {
    let m: { replica?: unknown; ids?: unknown; subject?: unknown };
    try {
      m = JSON.parse(message) as typeof m;
    } catch {
      return;
    }
    if (m.replica === this.o.replica) return;
    const r: Revoked | undefined = Array.isArray(m.ids) ? { ids: m.ids.filter((x): x is string => typeof x === 'string') } : typeof m.subject === 'string' ? { subject: m.subject } : undefined;
    if (r !== undefined) for (const l of this.revokedListeners) l(r);
  }

  /** Tells the other replicas; a replica that misses it (away from Redis) forgets all it kept when it resubscribes. */
  private async announceRevoked(r: { ids: string[] } | { subject: string }): Promise<void> {
    await this.cmd.publish(REVOKED, JSON.stringify({ replica: this.o.replica, ...r })).catch(() => undefined);
  }

  async putSession(id: string, s: SessionRecord, maxPerSubject = Infinity): Promise<boolean> {
    const ttl = Math.max(1, s.expiresAt - Date.now());
    // The subject's set lives as long as its longest session: a shorter one made later must not cut
    // it short (its live sessions would then escape a revocation of the subject).
    if (maxPerSubject === Infinity) {
      await this.cmd.multi().set(`eb:session:${id}`, JSON.stringify(s), 'PX', ttl).sadd(`eb:subject:${s.subject}`, id).eval(EXTEND_TTL, 1, `eb:subject:${s.subject}`, ttl).exec();
      return true;
    }
    return Number(await this.cmd.eval(PUT_WITHIN, 2, `eb:subject:${s.subject}`, `eb:session:${id}`, 'eb:session:', maxPerSubject, JSON.stringify(s), ttl, id)) === 1;
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    const v = await this.cmd.get(`eb:session:${id}`);
    return v === null ? undefined : (JSON.parse(v) as SessionRecord);
  }

  async deleteSession(id: string): Promise<boolean> {
    const v = await this.getSession(id);
    const n = await this.cmd.del(`eb:session:${id}`);
    if (v !== undefined) await this.cmd.srem(`eb:subject:${v.subject}`, id);
    await this.announceRevoked({ ids: [id] });
    return n > 0;
  }

  async deleteSubjectSessions(subject: string): Promise<number> {
    const ids = await this.cmd.smembers(`eb:subject:${subject}`);
    // Announced even when Redis holds none: another replica may keep one it saw for failing open.
    if (ids.length === 0) {
      await this.announceRevoked({ subject });
      return 0;
    }
    const n = await this.cmd.del(...ids.map((id) => `eb:session:${id}`));
    await this.cmd.del(`eb:subject:${subject}`);
    await this.announceRevoked({ subject });
    return n;
  }

  async putKey(k: KeyRecord): Promise<void> {
    await this.cmd.hset('eb:keys', k.id, JSON.stringify(k));
  }

  async deleteKey(id: string): Promise<boolean> {
    return (await this.cmd.hdel('eb:keys', id)) > 0;
  }

  async listKeys(): Promise<KeyRecord[]> {
    return Object.values(await this.cmd.hgetall('eb:keys')).map((v) => JSON.parse(v) as KeyRecord);
  }

  async appendAudit(e: AuditEntry): Promise<void> {
    await this.cmd.xadd('eb:audit', 'MAXLEN', '~', '10000', '*', 'e', JSON.stringify(e));
  }

  async readAudit(f: AuditFilter): Promise<AuditEntry[]> {
    // Newest first, a page at a time, filtered here, until the limit is met or the stream (capped
    // at ~10,000) ends: a filter that matches an old entry finds it whatever the limit.
    const out: AuditEntry[] = [];
    let end = '+';
    for (;;) {
      const rows = await this.cmd.xrevrange('eb:audit', end, '-', 'COUNT', AUDIT_PAGE);
      const page = rows.filter(([id]) => id !== end).map(([, fields]) => JSON.parse(fields[1]!) as AuditEntry);
      out.push(...filterAudit(page.reverse(), { ...f, limit: f.limit - out.length }));
      const oldest = page[0];
      if (out.length >= f.limit || rows.length < AUDIT_PAGE || (f.since !== undefined && oldest !== undefined && Date.parse(oldest.at) < f.since)) return out;
      end = rows.at(-1)![0];
    }
  }

  async putDoc(kind: DocKind, doc: unknown): Promise<void> {
    await this.cmd.hset('eb:doc', kind, JSON.stringify(doc));
    await this.cmd.publish(CHANNEL, JSON.stringify({ kind, replica: this.o.replica }));
  }

  async getDoc(kind: DocKind): Promise<unknown> {
    const v = await this.cmd.hget('eb:doc', kind);
    return v === null ? undefined : JSON.parse(v);
  }

  async updateDoc(kind: DocKind, update: (current: unknown) => unknown): Promise<unknown> {
    for (let attempt = 0; ; attempt++) {
      const cur = await this.cmd.hget('eb:doc', kind);
      const next = JSON.stringify(update(cur === null ? undefined : JSON.parse(cur)));
      const ok = (await this.cmd.eval(SET_DOC_IF, 1, 'eb:doc', kind, cur ?? '', next)) === 1;
      if (ok || attempt >= 20) {
        // Twenty races in a row: written anyway, as before merges (the last writer wins).
        if (!ok) await this.cmd.hset('eb:doc', kind, next);
        await this.cmd.publish(CHANNEL, JSON.stringify({ kind, replica: this.o.replica }));
        return JSON.parse(next);
      }
    }
  }

  async takeLease(subject: string, window: number, want: LeaseAmounts, limit: LeaseAmounts): Promise<LeaseAmounts> {
    const k = `eb:lease:${subject}:${window}`;
    const [r, t] = (await this.cmd.eval(TAKE_LEASE, 2, `${k}:r`, `${k}:t`, Math.ceil(want.requests), Math.floor(limit.requests), Math.ceil(want.tokens), Math.floor(limit.tokens), LEASE_TTL_MS)) as [number, number];
    return { requests: r, tokens: t };
  }

  async returnLease(subject: string, window: number, amounts: LeaseAmounts): Promise<void> {
    const k = `eb:lease:${subject}:${window}`;
    await this.cmd.eval(RETURN_LEASE, 2, `${k}:r`, `${k}:t`, Math.floor(amounts.requests), Math.floor(amounts.tokens));
  }

  async heartbeat(): Promise<number> {
    const now = Date.now();
    const res = await this.cmd.multi().zadd('eb:replicas', now, this.o.replica).zremrangebyscore('eb:replicas', '-inf', now - REPLICA_TTL_MS).zcard('eb:replicas').exec();
    return Number(res?.[2]?.[1] ?? 1);
  }

  async leave(): Promise<void> {
    await this.cmd.zrem('eb:replicas', this.o.replica);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stall.close();
    this.cmd.disconnect();
    this.sub.disconnect();
  }
}

/** redis://user:secret@host → redis://user:***@host, for logs (an unparsable one is not shown: it may hold a secret). */
export function redact(url: string): string {
  return URL.canParse(url) ? redactUrl(url) : 'redis://(unparsable url)';
}
