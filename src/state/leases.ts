// Cluster limits spent from leases. The control plane keeps, for every subject with
// an RPM or TPM limit, a block of this minute's cluster budget in the shared-memory
// ledger (src/policy/quota.ts), where every data-plane thread spends it with no
// network on the request path. Blocks come from Redis, one Lua script per lease, so
// the replicas together never take more than the limit per minute, and only for subjects
// asked on this replica in the last `activeMs`; the next minute's
// block is taken a few seconds ahead, by replicas that spent in the last seconds, so that a
// new minute starts with budget. A block lapses with its minute; a replica that shuts
// down gives back what it has not spent. Giving back an idle replica's block earlier
// would save budget, but its next request would then find nothing and be refused.
//
// Redis away: each replica spends a local share, the limit ÷ the replicas seen in the
// last heartbeats, until it is back. What it already leased from Redis in that minute counts
// against its share: else a replica that went away mid-minute spent its leases and then its
// whole share again (an RPM of 50 admitted 96 in that minute over 3 replicas).
import type { QuotaLedger } from '../policy/quota.ts';
import { leaseBlock, wantsTopUp } from '../policy/quota.ts';

/** Where leases come from: Redis (RedisStore), one atomic script per call. */
export interface LeaseBackend {
  readonly up: boolean;
  /** Takes up to `want` of `limit` for `subject`'s `kind` in `window`; answers what it got. */
  takeLease(subject: string, window: number, want: LeaseAmounts, limit: LeaseAmounts): Promise<LeaseAmounts>;
  /** Gives back what was not spent. */
  returnLease(subject: string, window: number, amounts: LeaseAmounts): Promise<void>;
  /** Says this replica is alive; answers how many replicas were seen recently (itself included). */
  heartbeat(): Promise<number>;
  /** Says this replica is gone (a clean stop): the others count one fewer at their next heartbeat. */
  leave?(): Promise<void>;
}

export interface LeaseAmounts {
  readonly requests: number;
  readonly tokens: number;
}

export interface LeaseKeeperOptions {
  readonly ledger: QuotaLedger;
  readonly backend: LeaseBackend;
  readonly now?: () => number;
  /** How often the leases are looked at. */
  readonly tickMs?: number;
  /** A subject asked within this long is active: its next minute is leased ahead. */
  readonly activeMs?: number;
  readonly onError?: (err: Error) => void;
  /** Whether limits are enforced now (the quota_enforcement flag): no leases are taken while they are not. */
  readonly active?: () => boolean;
  /** A lease was taken: from Redis, or from the local share while it is away. */
  readonly onLease?: (source: 'redis' | 'local_share') => void;
  /** The replica count from the heartbeats changed. */
  readonly onReplicas?: (n: number) => void;
}

/** Seconds before a minute ends when its successor's lease is taken. */
const AHEAD_S = 5;
/**
 * A lease Redis could not fill (dry) is asked again this often within its minute: other
 * replicas give their unused estimates back (giveExcess), and a dry mark kept to the minute's
 * end left that budget unspent (a 400-tpm key, requests reserving 259 and using 11: 121 a minute).
 */
const DRY_RETRY_MS = 1_000;
const HEARTBEAT_MS = 5_000;

export class LeaseKeeper {
  private readonly ledger: QuotaLedger;
  private readonly backend: LeaseBackend;
  private readonly now: () => number;
  private readonly activeMs: number;
  private readonly pending = new Set<string>();
  /** Per subject: when a top-up last came back short (dry), to ask again after DRY_RETRY_MS. */
  private readonly dryAt = new Map<string, number>();
  /** Per subject: the window and what the local share has granted in it (Redis away). */
  private readonly local = new Map<string, { window: number; requests: number; tokens: number }>();
  /** Per subject: what Redis leased it this replica, per window (the current and the next, leased ahead). */
  private readonly leased = new Map<string, { window: number; requests: number; tokens: number }[]>();
  private replicas = 1;
  /** Redis was up at the last tick: its return is seen within a tick, not a heartbeat period. */
  private wasUp = true;
  private timer: NodeJS.Timeout | undefined;
  private beat: NodeJS.Timeout | undefined;

  constructor(private readonly o: LeaseKeeperOptions) {
    this.ledger = o.ledger;
    this.backend = o.backend;
    this.now = o.now ?? Date.now;
    this.activeMs = o.activeMs ?? 10_000;
  }

  /** Replicas seen in the last heartbeats (1 until the first answer). */
  get replicasSeen(): number {
    return this.replicas;
  }

  start(): void {
    this.ledger.setCluster(true);
    void this.heartbeat();
    this.timer = setInterval(() => void this.tick(), this.o.tickMs ?? 50);
    this.beat = setInterval(() => void this.heartbeat(), HEARTBEAT_MS);
    this.timer.unref();
    this.beat.unref();
  }

  async heartbeat(): Promise<void> {
    if (!this.backend.up) return;
    try {
      this.replicas = Math.max(1, await this.backend.heartbeat());
      this.o.onReplicas?.(this.replicas);
    } catch (err) {
      this.o.onError?.(err as Error);
    }
  }

  /** One look at every limited subject: top up, or take the next minute ahead. Returns when the leases it asked for are in. */
  async tick(): Promise<void> {
    // Back from an outage (a Redis restart loses the heartbeats): say so now. Else, for up to
    // HEARTBEAT_MS, every other replica counted one fewer and took a larger share of each limit.
    if (this.backend.up && !this.wasUp) void this.heartbeat();
    this.wasUp = this.backend.up;
    if (this.o.active !== undefined && !this.o.active()) return;
    const now = this.now();
    const minute = Math.floor(now / 60_000);
    const late = now - minute * 60_000 >= (60 - AHEAD_S) * 1000;
    const work: Promise<void>[] = [];
    for (const subject of this.ledger.limitedSubjects()) {
      if (this.pending.has(subject)) continue;
      const s = this.ledger.leaseState(subject);
      if (s === undefined || (s.limits.rpm === undefined && s.limits.tpm === undefined)) continue;
      const want = { requests: s.limits.rpm === undefined ? 0 : leaseBlock(s.limits.rpm), tokens: s.limits.tpm === undefined ? 0 : leaseBlock(s.limits.tpm) };
      // Only for a subject asked here lately: an idle replica that took a block of every limited
      // subject each minute held budget it never spent (a 3-rpm key got 1 a minute on the replica
      // its client used, with 4 others idle). Its first request lends itself one (quota.ts), and
      // the lease taken then covers that debt.
      const active = s.askedAt > now - this.activeMs;
      // Dry this minute: asked again, a second after, once a request has been refused since
      // (however much the lease still holds: the refused request may need more).
      const dry = s.dryWindow === minute;
      const dryAt = this.dryAt.get(subject);
      const retryDry = dry && s.low && dryAt !== undefined && now - dryAt >= DRY_RETRY_MS;
      if (active && ((!dry && wantsTopUp(s)) || retryDry)) {
        // A debt (a request lent ahead of its lease, usage above the estimate) is taken on top of the block.
        work.push(this.take(subject, minute, { requests: want.requests + Math.max(0, -s.requestsLeft), tokens: want.tokens + Math.max(0, -s.tokensLeft) }, s.limits));
      } else if (late && s.nextWindow !== minute + 1 && active) {
        work.push(this.take(subject, minute + 1, want, s.limits));
      } else if (want.tokens > 0 && s.window === minute && s.tokensLeft > 2 * want.tokens && this.backend.up) {
        // Estimates reserved and not used came back here: past a block, they go back to the
        // cluster, where any replica may lease them (a 1,000-tpm key spread over 3 replicas
        // admitted 270 tokens a minute, its unused estimates stranded on each).
        work.push(this.giveExcess(subject, want.tokens));
      }
    }
    await Promise.all(work);
  }

  private async take(subject: string, window: number, want: LeaseAmounts, limits: { rpm?: number; tpm?: number }): Promise<void> {
    this.pending.add(subject);
    try {
      const limit = { requests: limits.rpm ?? 0, tokens: limits.tpm ?? 0 };
      // tick() asks nothing of a kind without a limit.
      const ask = want;
      let got: LeaseAmounts | undefined;
      let fromRedis = false;
      if (this.backend.up) {
        try {
          got = await this.backend.takeLease(subject, window, ask, limit);
          fromRedis = true;
          this.o.onLease?.('redis');
          this.noteLeased(subject, window, got);
        } catch (err) {
          this.o.onError?.(err as Error);
        }
      }
      if (got === undefined) {
        got = this.fromLocalShare(subject, window, ask, limit);
        this.o.onLease?.('local_share');
      }
      const dry = (ask.requests > 0 && got.requests < ask.requests) || (ask.tokens > 0 && got.tokens < ask.tokens);
      // Only Redis gets asked again: a local share that ran out (Redis away) is spent for the minute.
      if (dry && fromRedis) this.dryAt.set(subject, this.now());
      else this.dryAt.delete(subject);
      this.ledger.grantLease(subject, window, got.requests, got.tokens, dry);
    } finally {
      this.pending.delete(subject);
    }
  }

  private noteLeased(subject: string, window: number, got: LeaseAmounts): void {
    const list = (this.leased.get(subject) ?? []).filter((w) => w.window >= window - 1);
    let w = list.find((x) => x.window === window);
    if (w === undefined) list.push((w = { window, requests: 0, tokens: 0 }));
    w.requests += got.requests;
    w.tokens += got.tokens;
    this.leased.set(subject, list);
  }

  private leasedIn(subject: string, window: number): LeaseAmounts {
    return this.leased.get(subject)?.find((w) => w.window === window) ?? { requests: 0, tokens: 0 };
  }

  /** Redis away: this replica's share of the limit for the window, limit ÷ replicas seen, less what Redis leased it for that window (read on every call: Redis may have come and gone within the minute). */
  private fromLocalShare(subject: string, window: number, ask: LeaseAmounts, limit: LeaseAmounts): LeaseAmounts {
    let granted = this.local.get(subject);
    if (granted === undefined || granted.window !== window) {
      granted = { window, requests: 0, tokens: 0 };
      this.local.set(subject, granted);
    }
    const fromRedis = this.leasedIn(subject, window);
    const shareR = Math.floor(limit.requests / this.replicas);
    const shareT = Math.floor(limit.tokens / this.replicas);
    const requests = Math.max(0, Math.min(ask.requests, shareR - granted.requests - fromRedis.requests));
    const tokens = Math.max(0, Math.min(ask.tokens, shareT - granted.tokens - fromRedis.tokens));
    granted.requests += requests;
    granted.tokens += tokens;
    return { requests, tokens };
  }

  /** Gives back to Redis what the lease holds past `keep`, up to what Redis leased this replica that minute (a local share's grant was never Redis's). */
  private async giveExcess(subject: string, keep: number): Promise<void> {
    const window = Math.floor(this.now() / 60_000);
    const fromRedis = this.leasedIn(subject, window).tokens;
    if (fromRedis <= 0) return;
    const u = this.ledger.takeExcessTokens(subject, keep, fromRedis);
    if (u === undefined || u.tokens === 0) return;
    this.pending.add(subject);
    try {
      await this.backend.returnLease(subject, u.window, { requests: 0, tokens: u.tokens });
      this.noteLeased(subject, u.window, { requests: 0, tokens: -u.tokens });
    } catch (err) {
      // Not given back: still this replica's to spend.
      this.ledger.grantLease(subject, u.window, 0, u.tokens, false);
      this.o.onError?.(err as Error);
    } finally {
      this.pending.delete(subject);
    }
  }

  private async giveBack(subject: string): Promise<void> {
    const u = this.ledger.takeUnused(subject);
    if (u === undefined || (u.requests === 0 && u.tokens === 0)) return;
    if (!this.backend.up) return; // a local share needs no giving back
    this.pending.add(subject);
    try {
      await this.backend.returnLease(subject, u.window, { requests: u.requests, tokens: u.tokens });
    } catch (err) {
      this.o.onError?.(err as Error);
    } finally {
      this.pending.delete(subject);
    }
  }

  /** Stops, and gives back every unspent lease (shutdown). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    clearInterval(this.beat);
    if (!this.backend.up) return;
    await Promise.all(this.ledger.limitedSubjects().map((s) => this.giveBack(s)));
    // Left in the heartbeats, a stopped replica would shrink every other's share of a rate
    // limit (and of a quota while Redis is away) for REPLICA_TTL_MS: through a rolling restart,
    // each replaced pod's entry cut clients to about 2/3 of their rate.
    await this.backend.leave?.().catch((err: Error) => this.o.onError?.(err));
  }
}
