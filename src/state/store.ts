// The cluster scope of state: what replicas share. In memory without REDIS_URL (one
// replica), in Redis with it (src/state/redis.ts). Only the control plane talks to it,
// never per request on a data-plane thread: sessions are cached on the threads for at
// most a second, keys and shared admin state reach them in snapshots.

/** A session: a key or JWT exchanged for an opaque id with a TTL (POST /api/auth/sessions). */
export interface SessionRecord {
  readonly subject: string;
  readonly roles: readonly string[];
  readonly tier: string | undefined;
  /** The API key's id (k_…) when the session came from a key. */
  readonly keyId: string | undefined;
  /** The key was one made through /api/auth/keys: revoking it ends the session too. */
  readonly runtimeKey?: boolean;
  readonly createdAt: number;
  readonly expiresAt: number;
}

/** An API key made through the admin API: stored by the SHA-256 of the key, never the key. */
export interface KeyRecord {
  /** SHA-256 hex of the key. */
  readonly hash: string;
  /** k_ + 12 hex: how the broker names the key everywhere. */
  readonly id: string;
  readonly name: string;
  readonly role: string;
  readonly tier: string | undefined;
  readonly label: string | undefined;
  readonly priority: number | undefined;
  readonly rpm: number | undefined;
  readonly tpm: number | undefined;
  readonly createdAt: number;
  readonly createdBy: string;
}

export interface AuditEntry {
  readonly at: string;
  readonly replica: string;
  readonly subject: string;
  readonly role: string;
  readonly action: string;
  readonly route: string;
  readonly target: string | null;
  readonly before: unknown;
  readonly after: unknown;
}

export interface AuditFilter {
  readonly subject?: string;
  readonly action?: string;
  readonly since?: number;
  readonly limit: number;
}

/** Shared admin state documents: each replaced whole, read back whole on a change or a reconnect. */
export type DocKind = 'flags' | 'fleet' | 'keys';

/** Sessions revoked elsewhere: by id, all of a subject's, or any (revocations missed while away). */
export type Revoked = { readonly ids: readonly string[] } | { readonly subject: string } | { readonly all: true };

export interface StateStore {
  readonly kind: 'memory' | 'redis';
  /** False while Redis is unreachable (always true in memory). */
  readonly up: boolean;
  /**
   * Stores a session unless its subject already holds `maxPerSubject` live ones (then false,
   * nothing stored): counted and stored in one step, so replicas making sessions at once
   * cannot pass the bound together.
   */
  putSession(id: string, s: SessionRecord, maxPerSubject?: number): Promise<boolean>;
  getSession(id: string): Promise<SessionRecord | undefined>;
  deleteSession(id: string): Promise<boolean>;
  deleteSubjectSessions(subject: string): Promise<number>;
  putKey(k: KeyRecord): Promise<void>;
  deleteKey(id: string): Promise<boolean>;
  listKeys(): Promise<KeyRecord[]>;
  appendAudit(e: AuditEntry): Promise<void>;
  readAudit(f: AuditFilter): Promise<AuditEntry[]>;
  putDoc(kind: DocKind, doc: unknown): Promise<void>;
  getDoc(kind: DocKind): Promise<unknown>;
  /**
   * Writes `update(current)` only if the doc is still `current` when written (compare and set,
   * retried on a race): a replica's change merged with what the store holds, never written over
   * another replica's concurrent one. Returns what was written.
   */
  updateDoc(kind: DocKind, update: (current: unknown) => unknown): Promise<unknown>;
  /** Another replica changed a doc (or this one reconnected: every kind). */
  onChange(cb: (kind: DocKind) => void): void;
  /**
   * Another replica revoked sessions (by id, or all of a subject's), or this one reconnected
   * (`all`: revocations may have been missed). What a replica keeps for failing open must
   * forget them: a revoked session accepted during the next outage would be a hole.
   */
  onRevoked(cb: (r: Revoked) => void): void;
  close(): Promise<void>;
}

const AUDIT_CAP = 10_000;

export class MemoryStore implements StateStore {
  readonly kind = 'memory' as const;
  readonly up = true;
  private readonly sessions = new Map<string, SessionRecord>();
  private readonly keys = new Map<string, KeyRecord>();
  private readonly audit: AuditEntry[] = [];
  private readonly docs = new Map<DocKind, unknown>();

  constructor(private readonly now: () => number = Date.now) {}

  async putSession(id: string, s: SessionRecord, maxPerSubject = Infinity): Promise<boolean> {
    if (maxPerSubject !== Infinity && this.liveSessions(s.subject) >= maxPerSubject) return false;
    this.sessions.set(id, s);
    // Expired ones go as new ones come, so the map stays bounded by the live sessions.
    if (this.sessions.size % 256 === 0) for (const [k, v] of this.sessions) if (v.expiresAt <= this.now()) this.sessions.delete(k);
    return true;
  }

  async getSession(id: string): Promise<SessionRecord | undefined> {
    const s = this.sessions.get(id);
    if (s !== undefined && s.expiresAt <= this.now()) {
      this.sessions.delete(id);
      return undefined;
    }
    return s;
  }

  async deleteSession(id: string): Promise<boolean> {
    return this.sessions.delete(id);
  }

  /** One replica: its revocations are its own (Identity forgets them itself). */
  onRevoked(): void {}

  async deleteSubjectSessions(subject: string): Promise<number> {
    let n = 0;
    for (const [id, s] of this.sessions) if (s.subject === subject) (this.sessions.delete(id), n++);
    return n;
  }

  private liveSessions(subject: string): number {
    let n = 0;
    const now = this.now();
    for (const s of this.sessions.values()) if (s.subject === subject && s.expiresAt > now) n++;
    return n;
  }

  async putKey(k: KeyRecord): Promise<void> {
    this.keys.set(k.id, k);
  }

  async deleteKey(id: string): Promise<boolean> {
    return this.keys.delete(id);
  }

  async listKeys(): Promise<KeyRecord[]> {
    return [...this.keys.values()];
  }

  async appendAudit(e: AuditEntry): Promise<void> {
    this.audit.push(e);
    if (this.audit.length > AUDIT_CAP) this.audit.splice(0, this.audit.length - AUDIT_CAP);
  }

  async readAudit(f: AuditFilter): Promise<AuditEntry[]> {
    return filterAudit(this.audit, f);
  }

  async putDoc(kind: DocKind, doc: unknown): Promise<void> {
    this.docs.set(kind, doc);
  }

  async getDoc(kind: DocKind): Promise<unknown> {
    return this.docs.get(kind);
  }

  async updateDoc(kind: DocKind, update: (current: unknown) => unknown): Promise<unknown> {
    const next = update(this.docs.get(kind));
    this.docs.set(kind, next);
    return next;
  }

  onChange(): void {
    // One replica: nobody else changes anything.
  }

  async close(): Promise<void> {}
}

/** Newest first, filtered, at most f.limit. */
export function filterAudit(list: readonly AuditEntry[], f: AuditFilter): AuditEntry[] {
  const out: AuditEntry[] = [];
  for (let i = list.length - 1; i >= 0 && out.length < f.limit; i--) {
    const e = list[i]!;
    if (f.subject !== undefined && e.subject !== f.subject) continue;
    if (f.action !== undefined && e.action !== f.action) continue;
    if (f.since !== undefined && Date.parse(e.at) < f.since) continue;
    out.push(e);
  }
  return out;
}
