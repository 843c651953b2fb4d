// Identity on the control plane: who calls an admin route (ADMIN_TOKEN as break glass,
// a JWT, a session, or an API key made through the admin API), the API keys themselves
// (stored hashed, shown once), and sessions (a key or JWT exchanged for an opaque id
// with a TTL, revocable one by one or per subject). The state lives in the store: in
// memory, or in Redis shared by the replicas.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { BrokerError } from '../errors.ts';
import type { Metrics } from '../obs/metrics.ts';
import type { Logger } from '../obs/logger.ts';
import type { KeyRecord, SessionRecord, StateStore } from '../state/store.ts';
import { isJwt, type JwtVerifier } from './jwt.ts';
import { isRole, type Principal, type Role } from './rbac.ts';
import { bearerToken } from './api-key.ts';

const hashes = new Map<string, string>();

/** SHA-256 hex of an API key (cached: the same keys come back on every request). */
export function keyHash(key: string): string {
  let h = hashes.get(key);
  if (h === undefined) {
    h = createHash('sha256').update(key).digest('hex');
    if (hashes.size >= 10_000) hashes.clear();
    hashes.set(key, h);
  }
  return h;
}

export type FailMode = 'closed' | 'open';

/** A store call that failed (Redis unreachable): 503 with Retry-After, not a 500. */
function storeDown(err: Error): never {
  // The client's message says what it can act on; the driver's words (ioredis internals) stay in the details, for the log.
  throw new BrokerError('overloaded', 'the state store is unreachable or not answering (Redis); try again shortly', { retryAfter: 1, details: { storeError: err.message } });
}

export interface IdentityOptions {
  readonly adminToken: string | undefined;
  readonly jwt: JwtVerifier | undefined;
  readonly store: StateStore;
  readonly sessionTtlMs: number;
  /** Live sessions a subject (a key, a token's subject) may hold: past it, making one is 429. Default 1000. */
  readonly maxSessionsPerSubject?: number;
  /** AUTH_REDIS_FAIL_MODE: with the store down, closed refuses sessions, open accepts those last seen valid. */
  readonly failMode: FailMode;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly now?: () => number;
  /** The runtime keys changed: tell the threads (and, through the store, the other replicas). */
  readonly onKeys?: (keys: readonly KeyRecord[]) => void;
}

export class Identity {
  private readonly adminHash: Buffer | undefined;
  private readonly now: () => number;
  /** Runtime API keys by SHA-256, as last read from the store. */
  private keys = new Map<string, KeyRecord>();
  /** Sessions seen valid, for AUTH_REDIS_FAIL_MODE=open while the store is down. */
  private readonly lastKnown = new Map<string, SessionRecord>();
  /** Bumped by every revocation: a lookup that a revocation overtook does not refill lastKnown. */
  private revocations = 0;
  /**
   * Sessions revoked (here or, through the store's notice, on another replica), by id until
   * they would have expired, and by subject from when: a store restored from an older dump
   * holds them again, and they must stay refused.
   */
  private readonly revokedIds = new Map<string, number>();
  private readonly revokedSince = new Map<string, number>();

  constructor(private readonly o: IdentityOptions) {
    this.adminHash = o.adminToken === undefined ? undefined : createHash('sha256').update(o.adminToken).digest();
    this.now = o.now ?? Date.now;
    // Revoked on another replica: not to be accepted here if the store goes away next.
    o.store.onRevoked((r) => {
      this.revocations++;
      if ('all' in r) this.lastKnown.clear();
      else if ('ids' in r) for (const id of r.ids) this.lastKnown.delete(id);
      else for (const [id, s] of this.lastKnown) if (s.subject === r.subject) this.lastKnown.delete(id);
      // ('all' says only that a notice may have been missed while unsubscribed: nothing revoked.)
      if ('ids' in r) for (const id of r.ids) this.remember(this.revokedIds, id, this.now() + o.sessionTtlMs);
      else if ('subject' in r) this.remember(this.revokedSince, r.subject, this.now());
    });
  }

  /** Bounded: the oldest entry goes first (a Map keeps insertion order). */
  private remember(m: Map<string, number>, k: string, v: number): void {
    m.delete(k);
    m.set(k, v);
    if (m.size > 100_000) m.delete(m.keys().next().value!);
  }

  /** A session revoked since it was made, whatever the store holds now. */
  private revokedHere(id: string, s: SessionRecord): boolean {
    const until = this.revokedIds.get(id);
    if (until !== undefined && until > this.now()) return true;
    const since = this.revokedSince.get(s.subject);
    return since !== undefined && s.createdAt <= since;
  }

  /**
   * The store was found older than this replica's view (Redis from an older dump): the
   * sessions revoked by id since are deleted again; the store's notice tells the others.
   */
  async revokeAgain(): Promise<number> {
    let n = 0;
    for (const [id, until] of this.revokedIds) if (until > this.now() && (await this.o.store.deleteSession(id))) n++;
    return n;
  }

  private fail(reason: string, err: BrokerError): never {
    this.o.metrics.authFailures.labels(reason).inc();
    throw err;
  }

  /** The caller of an admin route, or 401/403. */
  async principal(authorization: string | undefined): Promise<Principal> {
    // Neither ADMIN_TOKEN nor JWT keys: the admin API is off on this replica, for every
    // credential (an admin key or session in a Redis it shares with other replicas included).
    if (this.adminHash === undefined && this.o.jwt === undefined) this.fail('disabled', new BrokerError('admin_disabled', 'admin routes are disabled: set ADMIN_TOKEN, or JWT_SECRET / JWT_PUBLIC_KEY / JWT_JWKS_URL'));
    const token = bearerToken(authorization);
    if (token === undefined) {
      this.fail('missing', new BrokerError('unauthorized', 'admin routes need Authorization: Bearer <token> (ADMIN_TOKEN, a JWT, a session or an API key)'));
    }
    if (this.adminHash !== undefined && timingSafeEqual(createHash('sha256').update(token).digest(), this.adminHash)) return { subject: 'admin-token', roles: ['admin'], via: 'admin_token' };
    if (isJwt(token)) {
      if (this.o.jwt === undefined) this.fail('jwt_disabled', new BrokerError('unauthorized', 'JWTs are not accepted here: no JWT_SECRET, JWT_PUBLIC_KEY or JWT_JWKS_URL'));
      try {
        return await this.o.jwt.verify(token);
      } catch (err) {
        this.fail(String((err as BrokerError).details?.reason ?? 'invalid_token'), err as BrokerError);
      }
    }
    if (token.startsWith('sess_')) {
      const s = await this.liveSession(token).catch((err: BrokerError) => this.fail('store_unavailable', err));
      if (s === undefined) this.fail('session', new BrokerError('unauthorized', 'the session is unknown, expired or revoked'));
      return { subject: s.subject, roles: s.roles.filter(isRole), via: 'session', session: token };
    }
    const k = this.keys.get(keyHash(token));
    // By its id, as its sessions are: names are not unique, and a key named `admin-token` would
    // pass for the break-glass token in the audit trail.
    if (k !== undefined && isRole(k.role)) return { subject: k.id, roles: [k.role], via: 'api_key' };
    return this.fail('invalid', new BrokerError('forbidden', 'credentials are not valid'));
  }

  // ---- sessions ----

  /** A session for a credential: an API key (config or runtime) or a JWT. */
  async createSession(credential: string, keyPolicy: (key: string) => { tier: string | undefined } | undefined): Promise<{ id: string; session: SessionRecord }> {
    let subject: string;
    let roles: readonly Role[];
    let tier: string | undefined;
    let keyId: string | undefined;
    let runtimeKey = false;
    // A session made from a JWT ends when the token does, if that is sooner: it must not extend it.
    let until = Infinity;
    // A known key first: a key may have the shape of a JWT (`team.prod.key1`).
    const known = this.keys.has(keyHash(credential)) || keyPolicy(credential) !== undefined;
    if (!known && isJwt(credential) && this.o.jwt !== undefined) {
      const p = await this.o.jwt.verify(credential).catch((err: BrokerError) => this.fail(String(err.details?.reason ?? 'invalid_token'), err));
      subject = p.subject;
      roles = p.roles;
      tier = p.tier;
      if (p.expiresAt !== undefined) until = p.expiresAt;
      // Taken within the clock skew the verifier allows, but already past: a session of it would be dead on arrival.
      if (until <= this.now()) this.fail('expired', new BrokerError('unauthorized', 'the token has expired: a session cannot outlive it', { details: { reason: 'expired' } }));
    } else {
      const runtime = this.keys.get(keyHash(credential));
      const fromFile = keyPolicy(credential);
      if (runtime === undefined && fromFile === undefined) this.fail('invalid', new BrokerError('unauthorized', 'the API key is unknown or revoked'));
      keyId = 'k_' + keyHash(credential).slice(0, 12);
      // The key's id, unique (key names are not, and a JWT's sub may be any name): what the
      // per-subject bound counts and a revocation by subject reaches.
      subject = keyId;
      roles = runtime !== undefined && isRole(runtime.role) ? [runtime.role] : ['agent'];
      tier = runtime?.tier ?? fromFile?.tier;
      runtimeKey = runtime !== undefined;
    }
    const id = 'sess_' + randomBytes(24).toString('base64url');
    const t = this.now();
    const session: SessionRecord = { subject, roles, tier, keyId, ...(runtimeKey ? { runtimeKey } : {}), createdAt: t, expiresAt: Math.min(t + this.o.sessionTtlMs, until) };
    // Bounded per subject: else one key could fill the store with sessions (each lives an hour).
    const max = this.o.maxSessionsPerSubject ?? 1000;
    const stored = await this.o.store.putSession(id, session, max).catch(storeDown);
    if (!stored) throw new BrokerError('rate_limited', `${subject} holds ${max} live sessions, the most one subject may (AUTH_MAX_SESSIONS_PER_SUBJECT=${max}): reuse one, or revoke some`);
    return { id, session };
  }

  /**
   * A live session, or undefined; with the store away and sessions failing closed, a refusal
   * that says so (reason store_unavailable): not the caller's mistake, so not counted against
   * its address (auth throttle), and not "revoked" to the client.
   */
  async liveSession(id: string): Promise<SessionRecord | undefined> {
    const s = await this.session(id);
    if (s === undefined && !this.o.store.up) {
      // Failing open, only the sessions this replica saw live pass: another is not "revoked" either.
      const why = this.o.failMode === 'closed' ? 'AUTH_REDIS_FAIL_MODE=closed' : 'AUTH_REDIS_FAIL_MODE=open accepts only the sessions this replica saw live';
      throw new BrokerError('unauthorized', `sessions cannot be checked while the shared store is unreachable (${why})`, { details: { reason: 'store_unavailable' } });
    }
    return s;
  }

  /** A live session, or undefined. With the store down: AUTH_REDIS_FAIL_MODE decides. */
  async session(id: string): Promise<SessionRecord | undefined> {
    const epoch = this.revocations;
    try {
      const s = await this.o.store.getSession(id);
      // A session made from a key that has since been revoked ends with it.
      if (s === undefined || s.expiresAt <= this.now() || (s.runtimeKey === true && !this.keyAlive(s.keyId)) || this.revokedHere(id, s)) {
        this.lastKnown.delete(id);
        return undefined;
      }
      // A revocation that arrived while Redis answered may be this session's: the answer is
      // served once, but not kept for an outage.
      if (epoch !== this.revocations) return s;
      if (this.lastKnown.size >= 100_000) this.lastKnown.clear();
      this.lastKnown.set(id, s);
      return s;
    } catch {
      if (this.o.failMode === 'closed') return undefined;
      const s = this.lastKnown.get(id);
      return s !== undefined && s.expiresAt > this.now() && !(s.runtimeKey === true && !this.keyAlive(s.keyId)) ? s : undefined;
    }
  }

  private keyById(id: string | undefined): KeyRecord | undefined {
    for (const k of this.keys.values()) if (k.id === id) return k;
    return undefined;
  }

  private keyAlive(id: string | undefined): boolean {
    return this.keyById(id) !== undefined;
  }

  async revokeSession(id: string): Promise<boolean> {
    this.revocations++;
    this.lastKnown.delete(id);
    this.remember(this.revokedIds, id, this.now() + this.o.sessionTtlMs);
    return this.o.store.deleteSession(id).catch(storeDown);
  }

  async revokeSubject(subject: string): Promise<number> {
    this.revocations++;
    this.remember(this.revokedSince, subject, this.now());
    for (const [id, s] of this.lastKnown) if (s.subject === subject) this.lastKnown.delete(id);
    return this.o.store.deleteSubjectSessions(subject).catch(storeDown);
  }

  // ---- API keys ----

  /** Re-reads the runtime keys from the store (at start, and when another replica changed them). */
  async reloadKeys(): Promise<void> {
    const list = await this.o.store.listKeys();
    this.keys = new Map(list.map((k) => [k.hash, k]));
    this.o.onKeys?.(list);
  }

  get runtimeKeys(): readonly KeyRecord[] {
    return [...this.keys.values()];
  }

  /** Makes a key: returned once, stored as its SHA-256. */
  async createKey(o: { name: string; role: Role; tier?: string; label?: string; priority?: number; rpm?: number; tpm?: number }, by: string): Promise<{ key: string; record: KeyRecord }> {
    const key = 'sk-eb-' + randomBytes(24).toString('base64url');
    const hash = keyHash(key);
    const record: KeyRecord = { hash, id: 'k_' + hash.slice(0, 12), name: o.name, role: o.role, tier: o.tier, label: o.label, priority: o.priority, rpm: o.rpm, tpm: o.tpm, createdAt: this.now(), createdBy: by };
    await this.o.store.putKey(record).catch(storeDown);
    this.keys.set(hash, record);
    this.o.onKeys?.(this.runtimeKeys);
    return { key, record };
  }

  async revokeKey(id: string): Promise<KeyRecord | undefined> {
    const k = this.keyById(id);
    const removed = await this.o.store.deleteKey(id).catch(storeDown);
    if (k !== undefined) this.keys.delete(k.hash);
    if (!removed && k === undefined) return undefined;
    this.o.onKeys?.(this.runtimeKeys);
    return k;
  }
}
