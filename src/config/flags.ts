// Feature flags: a value from env at start-up (BROKER_FF_*), a runtime override on
// top (ephemeral: gone on restart), and an audit trail of every change. Listeners
// hear about every change, so that stages built per flag set can be rebuilt once
// instead of checking flags per request.

export const FLAGS = {
  capacity_gating: true,
  stream_instrumentation: true,
  performance_routing: true,
  qos_switching: false,
  priority_routing: false,
  sticky_routing: false,
  // Among eligible deployments, those whose server has the model loaded go first.
  warm_first_routing: true,
  quota_enforcement: false,
  output_prediction: false,
  // The staged pipeline (false) is the test oracle and bench baseline, not a way to serve.
  compiled_chain: true,
} as const satisfies Record<string, boolean>;

export type FlagName = keyof typeof FLAGS;
export type FlagSet = Readonly<Record<FlagName, boolean>>;
export type FlagSource = 'env' | 'override' | 'default';

export const FLAG_NAMES = Object.keys(FLAGS) as FlagName[];

export function envName(flag: FlagName): string {
  return `BROKER_FF_${flag.toUpperCase()}`;
}

export function isFlagName(name: string): name is FlagName {
  return Object.hasOwn(FLAGS, name);
}

export interface AuditEntry {
  readonly at: string;
  readonly actor: string;
  readonly flag: FlagName;
  readonly action: 'set' | 'clear';
  readonly old: boolean;
  readonly new: boolean;
}

/** Who made a flag's last runtime change (a set or a clear), when, and on which replica: what the replicas share with the overrides. */
export interface FlagOrigin {
  readonly actor: string;
  readonly at: string;
  readonly replica?: string;
  /** The flag's effective value before the change, on the replica that made it (a later replica's own may differ: its env). */
  readonly old?: boolean;
  /** And after it there (a clear falls back to that replica's env or default). */
  readonly new?: boolean;
}

export class FlagStore {
  private readonly base: Record<FlagName, { enabled: boolean; source: 'env' | 'default' }>;
  private readonly overrides = new Map<FlagName, boolean>();
  private readonly origins = new Map<FlagName, FlagOrigin>();
  private readonly log: AuditEntry[] = [];
  private readonly listeners: ((flags: FlagSet) => void)[] = [];
  private readonly overrideListeners: (() => void)[] = [];
  private current: FlagSet;

  /** `fromEnv`: the flags set by BROKER_FF_* (validated by loadConfig); the rest take their defaults. */
  constructor(
    fromEnv: Readonly<Partial<Record<FlagName, boolean>>>,
    private readonly now: () => number = Date.now,
    private readonly maxAudit = 1000,
  ) {
    this.base = {} as typeof this.base;
    for (const name of FLAG_NAMES) {
      const v = fromEnv[name];
      this.base[name] = v === undefined ? { enabled: FLAGS[name], source: 'default' } : { enabled: v, source: 'env' };
    }
    this.current = this.compute();
  }

  /** The effective flags, one frozen object per change: compare by identity. */
  get flags(): FlagSet {
    return this.current;
  }

  describe(): Record<FlagName, { enabled: boolean; source: FlagSource }> {
    const out = {} as Record<FlagName, { enabled: boolean; source: FlagSource }>;
    for (const name of FLAG_NAMES) {
      const o = this.overrides.get(name);
      out[name] = o === undefined ? { ...this.base[name] } : { enabled: o, source: 'override' };
    }
    return out;
  }

  set(flag: FlagName, enabled: boolean, actor: string): void {
    this.apply([[flag, enabled]], actor);
  }

  /**
   * Several overrides as one change: listeners hear about it once. `origins`: who made each
   * change and when, on which replica (another replica's, as its doc says): recorded as
   * theirs; else as `actor`'s, now.
   */
  apply(changes: readonly (readonly [FlagName, boolean | null])[], actor: string, origins?: Readonly<Partial<Record<string, FlagOrigin>>>): void {
    const now = new Date(this.now()).toISOString();
    let overridden = false;
    for (const [flag, enabled] of changes) {
      const from = origins?.[flag];
      const at = from?.at ?? now;
      const by = from?.replica !== undefined && from.actor !== `replica:${from.replica}` ? `${from.actor} via replica:${from.replica}` : (from?.actor ?? actor);
      const had = this.overrides.get(flag);
      // The maker's value before, as its replica had it: this one's may differ (its env).
      const old = from?.old ?? this.current[flag];
      const after = enabled ?? from?.new ?? this.base[flag].enabled;
      if (enabled !== null || had !== undefined) this.origins.set(flag, from ?? { actor, at, old, new: after });
      if (enabled === null) {
        if (had === undefined) continue;
        this.overrides.delete(flag);
        this.audit({ at, actor: by, flag, action: 'clear', old, new: after });
      } else {
        this.overrides.set(flag, enabled);
        this.audit({ at, actor: by, flag, action: 'set', old, new: enabled });
      }
      if (had !== (enabled ?? undefined)) overridden = true;
    }
    const next = this.compute();
    if (FLAG_NAMES.some((f) => next[f] !== this.current[f])) {
      this.current = next;
      for (const l of this.listeners) l(next);
    }
    // An override is shared even when it changes no effective value (one equal to the default).
    if (overridden) for (const l of this.overrideListeners) l();
  }

  /** The runtime overrides changed (whether or not an effective value did): what replicas share. */
  onOverridesChange(listener: () => void): void {
    this.overrideListeners.push(listener);
  }

  /** Takes the effective flags as the control plane computed them (a data-plane thread's copy). */
  adopt(flags: FlagSet): void {
    if (FLAG_NAMES.every((f) => flags[f] === this.current[f])) return;
    this.current = Object.freeze({ ...flags });
    for (const l of this.listeners) l(this.current);
  }

  /** The runtime overrides, for the replicas that share them (src/state/sync.ts). */
  overrideMap(): Partial<Record<FlagName, boolean>> {
    return Object.fromEntries(this.overrides);
  }

  /** Who made each flag's last runtime change here, for the replicas that share them. */
  originMap(): Partial<Record<FlagName, FlagOrigin>> {
    return Object.fromEntries(this.origins);
  }

  /** Makes the overrides exactly `map` (another replica's), as one change; each recorded as `origins` says who made it and when, else as `actor`'s, now. */
  replaceOverrides(map: Readonly<Partial<Record<string, boolean>>>, actor: string, origins?: Readonly<Partial<Record<string, FlagOrigin>>>): void {
    const changes: [FlagName, boolean | null][] = [];
    for (const f of FLAG_NAMES) {
      const want = typeof map[f] === 'boolean' ? map[f]! : null;
      const have = this.overrides.get(f) ?? null;
      if (want !== have) changes.push([f, want]);
    }
    if (changes.length > 0) this.apply(changes, actor, origins);
  }

  clear(flag: FlagName, actor: string): void {
    this.apply([[flag, null]], actor);
  }

  clearAll(actor: string): void {
    this.apply(
      [...this.overrides.keys()].map((f) => [f, null] as const),
      actor,
    );
  }

  onChange(listener: (flags: FlagSet) => void): void {
    this.listeners.push(listener);
  }

  get auditLog(): readonly AuditEntry[] {
    return this.log;
  }

  private audit(e: AuditEntry): void {
    this.log.push(e);
    if (this.log.length > this.maxAudit) this.log.splice(0, this.log.length - this.maxAudit);
  }

  private compute(): FlagSet {
    const out = {} as Record<FlagName, boolean>;
    for (const name of FLAG_NAMES) out[name] = this.overrides.get(name) ?? this.base[name].enabled;
    return Object.freeze(out);
  }
}
