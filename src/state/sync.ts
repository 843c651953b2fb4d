// What replicas share through the store, besides sessions, keys and the audit trail:
// flag overrides and the fleet's operator state (drain, maintenance, bans, forced
// breakers, queue pause, the running config). A local change is written whole to its
// doc and announced; another replica re-reads the doc and puts it in force without
// announcing it again. A replica that (re)connects re-reads every doc. While the store
// is down, changes stay local and the last known state holds; the next change or the
// reconnect writes or reads it again.
import type { FlagStore } from '../config/flags.ts';
import type { FleetManager, OperatorState } from '../fleet/manager.ts';
import type { Identity } from '../guard/identity.ts';
import type { Logger } from '../obs/logger.ts';
import type { Metrics } from '../obs/metrics.ts';
import type { DocKind, StateStore } from './store.ts';

export interface SharedStateOptions {
  readonly store: StateStore;
  readonly flags: FlagStore;
  readonly fleet: FleetManager;
  readonly identity: Identity;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly replica: string;
}

export class SharedState {
  /** True while a doc from another replica is being applied: its changes are not ours to announce. */
  private applying = false;
  private lastSync = Date.now();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly o: SharedStateOptions) {
    o.store.onChange((kind) => void this.pull(kind));
    o.flags.onChange(() => {
      if (!this.applying) void this.push('flags', { overrides: o.flags.overrideMap(), replica: o.replica });
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
    if (!this.applying) void this.push('fleet', this.o.fleet.exportOperatorState());
  }

  /** API keys made or revoked here: the others re-read them. */
  keysChanged(): void {
    void this.push('keys', { at: Date.now(), replica: this.o.replica });
  }

  private async push(kind: DocKind, doc: unknown): Promise<void> {
    try {
      await this.o.store.putDoc(kind, doc);
      this.lastSync = Date.now();
    } catch (err) {
      this.o.logger.warn({ kind, err: (err as Error).message }, 'state: change kept on this replica only (the store is unreachable)');
    }
  }

  /** Re-reads one doc and puts it in force here. */
  async pull(kind: DocKind): Promise<void> {
    let doc: unknown;
    try {
      doc = await this.o.store.getDoc(kind);
      this.lastSync = Date.now();
    } catch {
      return;
    }
    if (doc === undefined) {
      // Nothing shared yet: this replica's state is the first, so share it.
      if (kind === 'fleet') this.fleetChanged();
      if (kind === 'flags' && Object.keys(this.o.flags.overrideMap()).length > 0) void this.push('flags', { overrides: this.o.flags.overrideMap(), replica: this.o.replica });
      if (kind === 'keys') await this.restoreKeys();
      return;
    }
    this.applying = true;
    try {
      if (kind === 'flags') this.o.flags.replaceOverrides((doc as { overrides: Record<string, boolean> }).overrides, `replica:${(doc as { replica?: string }).replica ?? '?'}`);
      else if (kind === 'fleet') this.o.fleet.importOperatorState(doc as OperatorState);
      else if (kind === 'keys') await this.o.identity.reloadKeys();
    } catch (err) {
      this.o.logger.warn({ kind, err: (err as Error).message }, 'state: a shared change could not be applied here');
    } finally {
      this.applying = false;
    }
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
    await this.push('keys', { at: Date.now(), replica: this.o.replica });
  }

  close(): void {
    clearInterval(this.timer);
  }
}
