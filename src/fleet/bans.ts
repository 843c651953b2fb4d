// Bans keep a server, a model (on every server), or one server × model out of routing,
// with a reason and an optional TTL after which they lapse by themselves. Pure, with an
// injected clock; the fleet manager turns them into route bits.

export type BanScope = 'server' | 'model' | 'pair';

export interface Ban {
  readonly scope: BanScope;
  readonly server: string | null;
  readonly model: string | null;
  readonly reason: string;
  readonly since: number;
  /** Epoch ms; null: until lifted. */
  readonly until: number | null;
}

/**
 * One model under either of Ollama's names: `llama3` is `llama3:latest`. A ban on one holds
 * for the other (a client asking for `llama3` reached a banned `llama3:latest`).
 */
export function modelKey(model: string): string {
  return model.includes(':') ? model : `${model}:latest`;
}

function keyOf(scope: BanScope, server: string | null, model: string | null): string {
  return `${scope}\u0000${server ?? ''}\u0000${model === null ? '' : modelKey(model)}`;
}

export class Bans {
  private readonly bans = new Map<string, Ban>();

  constructor(private readonly now: () => number) {}

  add(scope: BanScope, server: string | null, model: string | null, reason: string, ttlMs: number | null): Ban {
    const t = this.now();
    const ban: Ban = { scope, server, model, reason, since: t, until: ttlMs === null ? null : t + ttlMs };
    this.bans.set(keyOf(scope, server, model), ban);
    return ban;
  }

  /** Active bans. (Expired ones are dropped by expire(), whose caller recomputes routing.) */
  list(): Ban[] {
    const t = this.now();
    return [...this.bans.values()].filter((b) => b.until === null || b.until > t);
  }

  /** Whether server × model is banned now, and by which ban. */
  find(server: string, model: string): Ban | undefined {
    const t = this.now();
    for (const key of [keyOf('pair', server, model), keyOf('server', server, null), keyOf('model', null, model)]) {
      const b = this.bans.get(key);
      if (b !== undefined && (b.until === null || b.until > t)) return b;
    }
    return undefined;
  }

  /** The ban on a whole server, if one is in force. */
  onServer(server: string): Ban | undefined {
    const b = this.bans.get(keyOf('server', server, null));
    return b !== undefined && (b.until === null || b.until > this.now()) ? b : undefined;
  }

  /** Removes the bans that match; returns how many. */
  remove(match: (b: Ban) => boolean): number {
    let n = 0;
    for (const [k, b] of this.bans) if (match(b)) (this.bans.delete(k), n++);
    return n;
  }

  /** Exactly these bans (another replica's list); expired ones are left out. */
  replace(list: readonly Ban[]): void {
    this.bans.clear();
    const t = this.now();
    for (const b of list) if (b.until === null || b.until > t) this.bans.set(keyOf(b.scope, b.server, b.model), b);
  }

  /** Drops expired bans; true when any lapsed (routing must be recomputed). */
  expire(): boolean {
    const t = this.now();
    return this.remove((b) => b.until !== null && b.until <= t) > 0;
  }

  /** The soonest expiry, for the manager's timer. */
  nextExpiry(): number | null {
    let next: number | null = null;
    for (const b of this.bans.values()) if (b.until !== null && (next === null || b.until < next)) next = b.until;
    return next;
  }
}
