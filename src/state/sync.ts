// What replicas share through the store, besides sessions, keys and the audit trail:
// flag overrides and the fleet's operator state (drain, maintenance, bans, forced
// breakers, queue pause, the running config). A local change is merged into its doc,
// entry by entry (merge.ts: what changed here since the doc last seen, on top of what the
// store holds now), written with a compare and set, and announced; another replica
// re-reads the doc and puts it in force without announcing it again. Two operators
// changing different things on two replicas at once both keep their change. A replica
// that (re)connects re-reads every doc. While the store is down, changes stay local and
// the last known state holds; the reconnect merges them back the same way.
import type { FlagStore } from '../config/flags.ts';
import type { FleetManager, OperatorState } from '../fleet/manager.ts';
import type { Identity } from '../guard/identity.ts';
import type { Logger } from '../obs/logger.ts';
import type { Metrics } from '../obs/metrics.ts';
import type { DocKind, StateStore } from './store.ts';
import { canonical, mergeFlags, mergeOperatorState, type FlagsDoc } from './merge.ts';

export interface SharedStateOptions {
  readonly store: StateStore;
  readonly flags: FlagStore;
  readonly fleet: FleetManager;
  readonly identity: Identity;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly replica: string;
}

/** A doc's version: one more each write; 0 for none (or one written before versions). */
function versionOf(doc: unknown): number {
  const v = (doc as { v?: unknown } | undefined)?.v;
  return typeof v === 'number' ? v : 0;
}

/** The doc without its version: the state it carries. */
function unversioned(doc: unknown): unknown {
  if (doc === undefined) return undefined;
  const { v: _v, ...rest } = doc as { v?: number };
  return rest;
}

/** The three-way merge of a doc kind (merge.ts): `local`'s changes since `base`, on top of `remote`. */
function merge3(kind: DocKind, base: unknown, local: unknown, remote: unknown): unknown {
  return kind === 'flags' ? mergeFlags(base as FlagsDoc | undefined, local as FlagsDoc, remote as FlagsDoc | undefined) : mergeOperatorState(base as OperatorState | undefined, local as OperatorState, remote as OperatorState | undefined);
}

export class SharedState {
  /** True while a doc from another replica is being applied: its changes are not ours to announce. */
  private applying = false;
  private lastSync = Date.now();
  private readonly timer: NodeJS.Timeout;
  /** Per doc, the shared state this replica last read or wrote: what its own changes are measured from. */
  private readonly base = new Map<DocKind, unknown>();
  private readonly queue = new Map<DocKind, Promise<void>>();
  /** Per doc, the highest version (`v`, one more each write) this replica read or wrote: a store holding less lost what it had. */
  private readonly seen = new Map<DocKind, number>();
  private closed = false;
  /** The fleet doc was read once since start: a file edited before this start was judged then. */
  private startRead = false;

  constructor(private readonly o: SharedStateOptions) {
    // The state as it starts (the fleet file's, no overrides): what this replica's changes are
    // measured from until it reads the store, so that changes made before (Redis away at start)
    // are merged in then, not dropped.
    this.base.set('flags', this.snapshot('flags'));
    this.base.set('fleet', this.snapshot('fleet'));
    o.store.onChange((kind) => void this.pull(kind));
    o.flags.onOverridesChange(() => {
      if (!this.applying) void this.push('flags');
    });
    // While Redis is up the state is in sync as of now: the lag counts from the last second it was.
    this.timer = setInterval(() => {
      if (o.store.up) this.lastSync = Date.now();
      o.metrics.stateSyncLag.set(o.store.up ? 0 : (Date.now() - this.lastSync) / 1000);
    }, 1000);
    this.timer.unref();
  }

  /** The fleet manager's hook: an operator changed something here. */
  fleetChanged(): void {
    if (!this.applying) void this.push('fleet');
  }

  /** API keys made or revoked here, or a session revoked here: the others re-read the keys, and the keys doc's version moves on. */
  keysChanged(): void {
    void this.push('keys');
  }

  /** This replica's own state of a doc kind, in the doc's form. */
  private snapshot(kind: DocKind): unknown {
    return kind === 'flags' ? this.localFlags() : this.o.fleet.exportOperatorState();
  }

  private localFlags(): FlagsDoc {
    // A change made here is this replica's; one learnt from another keeps its maker's.
    const by = Object.fromEntries(Object.entries(this.o.flags.originMap()).map(([f, o]) => [f, o!.replica !== undefined ? o! : { ...o!, replica: this.o.replica }]));
    return { overrides: this.o.flags.overrideMap(), by, replica: this.o.replica };
  }

  /**
   * One read or write of a doc at a time, in order: a re-read that started before this
   * replica's own write ended would otherwise put the older doc back in force over it.
   */
  private serial(kind: DocKind, work: () => Promise<void>): Promise<void> {
    const next = (this.queue.get(kind) ?? Promise.resolve()).then(work, work);
    this.queue.set(kind, next);
    return next;
  }

  /** Shares this replica's state of `kind`, as it is when the write's turn comes (not when asked: a re-read before it may have changed it). */
  private push(kind: DocKind): Promise<void> {
    return this.serial(kind, () => (kind === 'keys' ? this.writeKeys() : this.write(kind, this.snapshot(kind))));
  }

  /**
   * The keys doc says only that the keys changed, with a version: a store behind this replica
   * (from an older dump) would otherwise bring back keys and sessions revoked since, and lose
   * keys made since, on every replica. This replica's key set and revocations are then written
   * back (restoreIdentity).
   */
  private async writeKeys(): Promise<void> {
    try {
      const seen = this.seen.get('keys') ?? 0;
      // Put right before the version moves on: the others re-read the keys at its notice.
      if (versionOf(await this.o.store.getDoc('keys')) < seen) await this.restoreIdentity();
      const versioned = await this.o.store.updateDoc('keys', (remote) => ({ at: Date.now(), replica: this.o.replica, v: Math.max(versionOf(remote), seen) + 1 }));
      this.seen.set('keys', versionOf(versioned));
      this.lastSync = Date.now();
    } catch (err) {
      this.o.logger.warn({ kind: 'keys', err: (err as Error).message }, 'state: change kept on this replica only (the store is unreachable)');
    }
  }

  /** The store lost key changes every replica had: its keys become this replica's, and the sessions revoked here are revoked again. */
  private async restoreIdentity(): Promise<void> {
    const known = this.o.identity.runtimeKeys;
    const ids = new Set(known.map((k) => k.id));
    for (const k of await this.o.store.listKeys()) if (!ids.has(k.id)) await this.o.store.deleteKey(k.id);
    for (const k of known) await this.o.store.putKey(k);
    const sessions = await this.o.identity.revokeAgain();
    this.o.logger.warn({ keys: known.length, sessions }, 'state: the store held older API keys and sessions than this replica saw (Redis from an older dump); this replica wrote back its keys and revoked again the sessions it had revoked');
  }

  private async write(kind: DocKind, doc: unknown): Promise<void> {
    try {
      const seen = this.seen.get(kind) ?? 0;
      const versioned = await this.o.store.updateDoc(kind, (remote) => {
        const rv = versionOf(remote);
        // A store behind this replica (back empty, or from an older dump) lost changes every
        // replica had: ours is written back whole; the others then merge theirs on top.
        const next = rv < seen ? doc : merge3(kind, this.base.get(kind), doc, remote);
        return { ...(next as object), v: Math.max(rv, seen) + 1 };
      });
      this.seen.set(kind, versionOf(versioned));
      const written = unversioned(versioned);
      if (canonical(written) === canonical(doc)) {
        // The base is what was written, not this replica's state now: a change made here
        // while the write was on its way is still to be shared by its own write.
        this.base.set(kind, doc);
      } else {
        // Another replica's concurrent change came in with the merge: in force here too, the
        // base read right after it. A change made here meanwhile goes back on top; its own
        // write (queued behind this one) shares it.
        const meanwhile = this.snapshot(kind);
        this.apply(kind, written);
        this.base.set(kind, this.snapshot(kind));
        if (canonical(meanwhile) !== canonical(doc)) this.apply(kind, merge3(kind, doc, meanwhile, this.base.get(kind)));
      }
      this.lastSync = Date.now();
    } catch (err) {
      this.o.logger.warn({ kind, err: (err as Error).message }, 'state: change kept on this replica only (the store is unreachable)');
    }
  }

  private apply(kind: DocKind, doc: unknown): void {
    this.applying = true;
    try {
      if (kind === 'flags') {
        const d = doc as FlagsDoc;
        const replica = d.replica ?? '?';
        // A doc an older broker wrote says no maker: the change is its replica's, learnt now.
        const learnt = { actor: `replica:${replica}`, at: new Date().toISOString(), replica };
        const by = Object.fromEntries(Object.keys(d.overrides).concat(Object.keys(this.o.flags.overrideMap())).map((f) => [f, d.by?.[f] ?? learnt]));
        this.o.flags.replaceOverrides(d.overrides, learnt.actor, by);
      } else if (kind === 'fleet') this.o.fleet.importOperatorState(doc as OperatorState);
    } catch (err) {
      this.o.logger.warn({ kind, err: (err as Error).message }, 'state: a shared change could not be applied here');
    } finally {
      this.applying = false;
    }
  }

  /** Re-reads one doc and puts it in force here. */
  pull(kind: DocKind, retries = 5): Promise<void> {
    return this.serial(kind, () => this.read(kind, retries));
  }

  private async read(kind: DocKind, retries: number): Promise<void> {
    let doc: unknown;
    try {
      doc = await this.o.store.getDoc(kind);
      this.lastSync = Date.now();
    } catch {
      // The store's subscriber may be back before its command connection: look again shortly.
      if (retries > 0 && !this.closed) setTimeout(() => void this.pull(kind, retries - 1), 1000).unref();
      return;
    }
    if (kind === 'keys') {
      if (doc === undefined) await this.restoreKeys();
      else if (versionOf(doc) < (this.seen.get(kind) ?? 0)) await this.writeKeys();
      else {
        this.seen.set(kind, versionOf(doc));
        await this.o.identity.reloadKeys().catch((err: Error) => this.o.logger.warn({ kind, err: err.message }, 'state: a shared change could not be applied here'));
      }
      return;
    }
    if (versionOf(doc) < (this.seen.get(kind) ?? 0)) {
      this.o.logger.warn({ kind, store: versionOf(doc), seen: this.seen.get(kind) }, 'state: the store holds an older doc than this replica saw (Redis back empty or from an older dump); writing ours back');
      await this.write(kind, this.snapshot(kind));
      return;
    }
    if (doc !== undefined) this.seen.set(kind, versionOf(doc));
    doc = unversioned(doc);
    // The first read since start, found or not: a replica that found the store empty wrote the
    // first doc, and must not judge a later one (another replica's newer file) as its start's.
    if (kind === 'fleet' && !this.startRead) {
      this.startRead = true;
      if (doc !== undefined && (await this.fileWins(doc as OperatorState))) return;
    }
    // What changed here since the doc last seen (during an outage, say) is merged back in; a
    // replica that changed nothing takes the store's doc as it is.
    const local = this.snapshot(kind);
    // The base is set from the start (the constructor), so it is always there to compare with.
    const changedHere = canonical(this.base.get(kind)) !== canonical(local);
    if (doc !== undefined && !changedHere) {
      this.apply(kind, doc);
      // The base is this replica's own view of the doc, so that only real changes differ from it.
      this.base.set(kind, this.snapshot(kind));
      return;
    }
    // Nothing shared yet (this replica's state is the first), or changes of ours to merge.
    if (kind === 'flags' && doc === undefined && Object.keys(this.o.flags.overrideMap()).length === 0) return;
    await this.write(kind, local);
  }

  /**
   * The shared running config came from another fleet file than the one this replica started
   * with: the file was edited (a ConfigMap, then a restart), and the edit must not be lost under
   * the config the others kept running. This file's config goes in force on every replica;
   * config changes made through the API since are replaced by it (as a reload would), while
   * drains, maintenance, bans, forced breakers and run-time quotas are kept.
   */
  private async fileWins(doc: OperatorState): Promise<boolean> {
    // A doc from a version without fingerprints: where its config came from is unknown, so it
    // is kept (as before); POST /config/reload puts the file in force.
    const mine = this.o.fleet.exportOperatorState().fileHash;
    if (doc.fileHash === undefined || doc.fileHash === mine || (mine !== undefined && doc.savedHashes?.includes(mine) === true)) return false;
    this.o.fleet.renewRev();
    const local = this.o.fleet.exportOperatorState();
    this.o.logger.warn({ file: local.fileHash, shared: doc.fileHash }, 'the fleet file differs from the one the shared running config came from: this file is put in force on every replica');
    // The doc's operator state with this replica's changes since start on top (a drain made
    // here while Redis was away), and this replica's config.
    const merged = mergeOperatorState(this.base.get('fleet') as OperatorState | undefined, local, doc);
    this.apply('fleet', { ...merged, rev: local.rev, raw: local.raw, keyEnvs: local.keyEnvs, fileHash: local.fileHash, savedHashes: [] });
    // Measured from the doc read, this replica's state is its change: the write puts it over.
    this.base.set('fleet', doc);
    await this.write('fleet', this.snapshot('fleet'));
    return true;
  }

  /**
   * A store with no keys doc has never seen a key change: a Redis that came back empty. The
   * keys this replica knows are written back before anyone adds one, or the first key made
   * there would become the whole list on every replica. (An empty key list with the doc
   * present is revocations, and stays empty.)
   */
  private async restoreKeys(): Promise<void> {
    const keys = this.o.identity.runtimeKeys;
    if (keys.length === 0) return;
    try {
      for (const k of keys) await this.o.store.putKey(k);
    } catch {
      return;
    }
    this.o.logger.warn({ keys: keys.length }, 'state: the store had no API keys; this replica wrote back the ones it knows');
    await this.writeKeys();
  }

  close(): void {
    this.closed = true;
    clearInterval(this.timer);
  }
}
