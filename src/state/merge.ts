// Three-way merges of the docs replicas share (sync.ts): what this replica changed since the
// doc it last saw (base → local) is applied on top of what the store holds now (remote), entry
// by entry. Two operators changing different things on two replicas at once both keep their
// change; the same entry changed on both: the later write wins. Pure.
import type { OperatorState } from '../fleet/manager.ts';
import { modelKey } from '../fleet/bans.ts';
import type { FlagOrigin } from '../config/flags.ts';

type Keyed<T> = ReadonlyMap<string, T>;

/** JSON with object keys sorted: the same state reads the same whichever replica wrote it. */
export function canonical(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (x !== null && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : x));
}

const same = (a: unknown, b: unknown): boolean => canonical(a) === canonical(b);

/** Per key: local's value where local changed it since base (a removal included), else remote's. */
function mergeMaps<T>(base: Keyed<T>, local: Keyed<T>, remote: Keyed<T>): Map<string, T> {
  const out = new Map<string, T>();
  for (const k of new Set([...base.keys(), ...local.keys(), ...remote.keys()])) {
    const changedHere = !same(base.get(k), local.get(k));
    const v = changedHere ? local.get(k) : remote.get(k);
    if (v !== undefined) out.set(k, v);
  }
  return out;
}

function byKey<T>(list: readonly T[] | undefined, key: (x: T) => string): Map<string, T> {
  return new Map((list ?? []).map((x) => [key(x), x]));
}

function mergeLists<T>(base: readonly T[] | undefined, local: readonly T[] | undefined, remote: readonly T[] | undefined, key: (x: T) => string = canonical): T[] {
  return [...mergeMaps(byKey(base, key), byKey(local, key), byKey(remote, key)).values()];
}

/** A field as a whole: local's if it changed here, else remote's. */
function mergeValue<T>(base: T, local: T, remote: T): T {
  return same(base, local) ? remote : local;
}

/**
 * The fleet's operator state. With no base (nothing seen from the store yet), local's changes
 * are all of it. Bans that lapsed by `now` count as absent on every side: a replica drops a
 * lapsed ban itself without writing the doc, and that drop must not read as a removal of the
 * same target's new ban made elsewhere.
 */
export function mergeOperatorState(base: OperatorState | undefined, local: OperatorState, remote: OperatorState | undefined, now: number = Date.now()): OperatorState {
  if (remote === undefined) return local;
  const b = base ?? remote;
  const live = (bans: OperatorState['bans'] | undefined) => bans?.filter((x) => x.until === null || x.until > now);
  // The running config goes with its revision: one config, not a mix of two.
  // The config is judged by its revision and document; the env names its replica allowed come with whichever wins.
  const config = same({ rev: b.rev, raw: b.raw }, { rev: local.rev, raw: local.raw }) ? remote : local;
  return {
    rev: config.rev,
    raw: config.raw,
    ...(config.keyEnvs !== undefined ? { keyEnvs: config.keyEnvs } : {}),
    ...(config.fileHash !== undefined ? { fileHash: config.fileHash } : {}),
    ...savedHashesOf(config, local, remote),
    draining: mergeLists(b.draining, local.draining, remote.draining),
    maintenance: mergeLists(b.maintenance, local.maintenance, remote.maintenance, (m) => m.server),
    drainedDeployments: mergeLists(b.drainedDeployments, local.drainedDeployments, remote.drainedDeployments),
    // One ban per target, whichever of Ollama's two names it was made under (as bans.ts compares them).
    bans: mergeLists(live(b.bans), live(local.bans), live(remote.bans), (x) => `${x.scope}\u0000${x.server ?? ''}\u0000${x.model === null ? '' : modelKey(x.model)}`),
    forcedOpen: mergeLists(b.forcedOpen, local.forcedOpen, remote.forcedOpen),
    paused: mergeValue(b.paused, local.paused, remote.paused),
    quotas: mergeLists(b.quotas, local.quotas, remote.quotas, ([subject]) => subject),
  };
}

/** The files saved from the winning config: both sides' when they share its lineage (a save changes no revision), else its own. */
function savedHashesOf(config: OperatorState, local: OperatorState, remote: OperatorState): { savedHashes?: readonly string[] } {
  const both = local.fileHash === remote.fileHash ? [...new Set([...(remote.savedHashes ?? []), ...(local.savedHashes ?? [])])] : (config.savedHashes ?? []);
  return both.length > 0 ? { savedHashes: both } : {};
}

export interface FlagsDoc {
  readonly overrides: Readonly<Record<string, boolean>>;
  /** Who made each flag's last change, when, on which replica: what the other replicas' audit trails record (older docs have none). */
  readonly by?: Readonly<Record<string, FlagOrigin>>;
  readonly replica?: string;
}

/** Flag overrides, flag by flag; each flag's maker from the side whose change the merge kept. */
export function mergeFlags(base: FlagsDoc | undefined, local: FlagsDoc, remote: FlagsDoc | undefined): FlagsDoc {
  if (remote === undefined) return local;
  const m = (d: FlagsDoc | undefined) => new Map(Object.entries(d?.overrides ?? {}));
  const b = base ?? remote;
  const overrides = mergeMaps(m(b), m(local), m(remote));
  const by: Record<string, FlagOrigin> = {};
  for (const flag of new Set([...Object.keys(local.by ?? {}), ...Object.keys(remote.by ?? {})])) {
    // As mergeMaps decides the value: local's when it changed here (its value, or who last set it).
    const here = !same(b.overrides[flag], local.overrides[flag]) || !same(b.by?.[flag], local.by?.[flag]);
    const o = here ? local.by?.[flag] : (remote.by?.[flag] ?? local.by?.[flag]);
    if (o !== undefined) by[flag] = o;
  }
  return { overrides: Object.fromEntries(overrides), by, replica: local.replica };
}
