// The one writer of request tracking, on the control plane. Rows arrive in batches (from
// every data-plane thread over its port, and from the control plane's own requests),
// are costed from the price table, counted into the budgets' running totals, and held
// in a bounded buffer. A flush writes them in batches of TRACKING_BATCH_ROWS, as soon as
// that many wait or every TRACKING_FLUSH_MS, by COPY (or a multi-row INSERT). When the
// database is slow or down the buffer fills and drops its oldest rows, counted; writes
// resume with backoff. Nothing a client waits on ever waits here.
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import pg from 'pg';
import { from as copyFrom } from 'pg-copy-streams';
import type { TrackingConfig } from '../config/env.ts';
import type { PriceTable } from '../config/broker-config.ts';
import type { Logger } from '../obs/logger.ts';
import type { Metrics } from '../obs/metrics.ts';
import { costOf, type TrackRow } from './facts.ts';
import { COPY_SQL, copyLines, INSERT_SQL, insertParams, type StoredRow } from './encode.ts';
import { maintainPartitions, migrate } from './migrate.ts';
import { periodBounds, SpendLedger, type Budget, type SpendEntry } from './budget.ts';
import { RowRing } from './ring.ts';

export interface WriterDeps {
  readonly config: TrackingConfig;
  readonly replica: string;
  readonly logger: Logger;
  readonly metrics: Metrics;
  /** The fleet config's price table, now. */
  readonly prices: () => PriceTable;
  /** Budgeted API keys by key id, now. */
  readonly budgets: () => ReadonlyMap<string, Budget>;
  /** The budgets' totals changed: pass them to every admission gate. */
  readonly onSpend: (entries: SpendEntry[]) => void;
  readonly now?: () => number;
  /** How long a write may go unanswered (default WRITE_TIMEOUT_MS). */
  readonly writeTimeoutMs?: number;
}

/**
 * A write with no answer by then is given up (its connection destroyed) and retried on a
 * new one: a half-open connection (a failover, a NAT timeout) otherwise held the writer, and
 * every row after it, until the kernel gave up on the socket.
 */
const WRITE_TIMEOUT_MS = 15_000;
/**
 * Every statement of the tracking pool ends server-side by then (statement_timeout, lock waits
 * included), before the writer gives up on it: a write given up on while the server still
 * ran it (blocked behind a lock) committed later, and its batch, written again, was stored
 * twice. The same bound keeps a report or a budget read from hanging on a lock.
 */
function statementTimeoutMs(writeTimeoutMs: number): number {
  return Math.max(50, Math.floor(writeTimeoutMs * 0.8));
}
const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5_000;
const MAINTENANCE_MS = 3_600_000;
/** How often the other replicas' spend is read back for the budgets. */
export const SPEND_REFRESH_MS = 5_000;
/** Budgets' totals reach the gates at most this often (their change is batched). */
const SPEND_PUSH_MS = 100;

export class TrackingWriter {
  readonly pool: pg.Pool;
  readonly ledger: SpendLedger;
  private readonly ring: RowRing<StoredRow>;
  private readonly now: () => number;
  private ready = false;
  private closing = false;
  private flushing: Promise<boolean> | undefined;
  /** Rows of the batch being written now (out of the buffer until it is written or put back). */
  private inFlightRows = 0;
  private backoffMs = 0;
  private retryAt = 0;
  private lastErrorLog = 0;
  private timers: NodeJS.Timeout[] = [];
  private spendDirty = false;
  private spendLoading = false;
  private startPromise: Promise<void> | undefined;

  constructor(private readonly d: WriterDeps) {
    this.now = d.now ?? Date.now;
    const c = d.config;
    this.pool = new pg.Pool({ connectionString: c.databaseUrl, max: c.poolMax, connectionTimeoutMillis: 5_000, idleTimeoutMillis: 30_000, application_name: `edge-broker ${d.replica}`, statement_timeout: statementTimeoutMs(d.writeTimeoutMs ?? WRITE_TIMEOUT_MS) });
    // An idle connection the server closed (restart, failover) is an event, not a crash.
    this.pool.on('error', (err) => this.warn(err, 'tracking database connection lost'));
    this.ring = new RowRing(c.bufferRows);
    this.ledger = new SpendLedger(d.budgets, this.now);
    // Both reasons exist from the start at 0: a rate over them, and the alert, see a series.
    for (const reason of ['overflow', 'shutdown', 'invalid']) d.metrics.trackingDropped.labels(reason).inc(0);
    d.metrics.sources.trackingBuffer = () => this.ring.size;
    d.metrics.sources.trackingPool = () => ({ active: this.pool.totalCount - this.pool.idleCount, idle: this.pool.idleCount, waiting: this.pool.waitingCount });
    d.metrics.sources.budgets = () =>
      this.ledger.entries().flatMap((e) => {
        const b = d.budgets().get(e.keyId);
        return b === undefined || b.limit <= 0 ? [] : [{ key: e.keyId, ratio: e.spent / b.limit }];
      });
  }

  get buffered(): number {
    return this.ring.size;
  }

  /**
   * Migrations, partitions, the budgets' totals; then the flush timer. A database that
   * is down at start-up does not stop the broker: rows are buffered (bounded) while
   * start-up is retried with backoff.
   */
  start(): Promise<void> {
    this.timers.push(setInterval(() => this.tick(), this.d.config.flushMs).unref());
    // From the start, not once the database answers: with it down, the budgets still count
    // this replica's own spend (without the totals stored before, which it cannot read).
    this.timers.push(setInterval(() => this.pushSpend(), SPEND_PUSH_MS).unref());
    this.startPromise ??= this.prepare();
    return this.startPromise;
  }

  private async prepare(): Promise<void> {
    for (let wait = BACKOFF_MIN_MS; !this.closing; wait = Math.min(wait * 2, BACKOFF_MAX_MS)) {
      try {
        const applied = await migrate(this.pool);
        if (applied.length > 0) this.d.logger.info({ applied }, 'tracking migrations applied');
        await this.maintain();
        await this.loadSpend(true);
        this.ready = true;
        this.timers.push(setInterval(() => void this.maintain().catch((err: Error) => this.warn(err, 'tracking partition upkeep failed')), MAINTENANCE_MS).unref());
        this.timers.push(setInterval(() => this.refreshSpend(), SPEND_REFRESH_MS).unref());
        this.pushSpend(true);
        this.tick();
        return;
      } catch (err) {
        this.warn(err as Error, 'tracking database not ready; rows are buffered and start-up is retried');
        await new Promise((r) => setTimeout(r, wait).unref());
      }
    }
  }

  /** Partitions ahead of time, and retention: whole day partitions older than TRACKING_RETENTION_DAYS dropped. */
  async maintain(now = this.now()): Promise<{ created: string[]; dropped: string[] }> {
    const r = await maintainPartitions(this.pool, now, this.d.config.partitionsAhead, this.keptDays(now));
    if (r.dropped.length > 0) this.d.logger.info({ dropped: r.dropped }, 'tracking partitions past retention dropped');
    return r;
  }

  /**
   * TRACKING_RETENTION_DAYS, or more while a key has a monthly budget: its spend is read back
   * from this month's rows (after a restart, on the other replicas), and a retention shorter
   * than the month so far forgot it (a key over its budget was served again). Said once.
   */
  private keptDays(now: number): number {
    const days = this.d.config.retentionDays;
    const kept = keptDays(days, [...this.d.budgets().values()].some((b) => b.period === 'month'), now);
    if (kept === days) return days;
    if (!this.retentionSaid) {
      this.retentionSaid = true;
      this.d.logger.warn({ retentionDays: days, kept }, 'tracking: TRACKING_RETENTION_DAYS is shorter than the month so far, and a key has a monthly budget: this month\'s rows are kept until it ends');
    }
    return kept;
  }

  private retentionSaid = false;

  /** One batch of rows from a thread (or the control plane): costed, counted for budgets, buffered. */
  accept(rows: readonly TrackRow[]): void {
    const prices = this.d.prices().models;
    for (const row of rows) {
      const cost = costOf(prices, row);
      if (cost !== null && row.keyId !== null && this.ledger.add(row.keyId, cost, row.createdAt)) this.spendDirty = true;
      const over = this.ring.push({ ...row, cost, replica: this.d.replica });
      if (over > 0) this.d.metrics.trackingDropped.labels('overflow').inc(over);
    }
    if (this.ring.size >= this.d.config.batchRows) this.tick();
  }

  private tick(): void {
    if (!this.ready || this.flushing !== undefined || this.ring.size === 0 || this.now() < this.retryAt) return;
    this.flushing = this.flush().finally(() => (this.flushing = undefined));
  }

  /** Writes batches while a whole one waits (a partial rest waits for the timer); false on a failure. */
  private async flush(): Promise<boolean> {
    const { batchRows } = this.d.config;
    do {
      const batch = this.ring.take(batchRows);
      const t0 = performance.now();
      this.inFlightRows = batch.length;
      try {
        await this.write(batch);
      } catch (err) {
        this.d.metrics.trackingFlushFailures.inc();
        if (refusedForData(err)) {
          // The database refused the rows themselves (a data exception, a constraint): written
          // again they fail again, and would hold back every row behind them. Dropped, counted.
          this.d.metrics.trackingDropped.labels('invalid').inc(batch.length);
          this.d.logger.error({ err: (err as Error).message, rows: batch.length }, 'tracking rows refused by the database as invalid: dropped');
          continue;
        }
        // Kept, in front of newer rows; the buffer's bound drops the oldest if it must.
        const over = this.ring.putBack(batch);
        if (over > 0) this.d.metrics.trackingDropped.labels('overflow').inc(over);
        this.backoffMs = this.backoffMs === 0 ? BACKOFF_MIN_MS : Math.min(this.backoffMs * 2, BACKOFF_MAX_MS);
        this.retryAt = this.now() + this.backoffMs;
        this.warn(err as Error, 'writing tracking rows failed; retrying with backoff');
        return false;
      }
      this.d.metrics.trackingFlush.observe((performance.now() - t0) / 1000);
      this.d.metrics.trackingWritten.inc(batch.length);
      this.backoffMs = 0;
    } while (this.ring.size >= batchRows || (this.closing && this.ring.size > 0));
    return true;
  }

  private async write(rows: readonly StoredRow[]): Promise<void> {
    const client = await this.pool.connect();
    // Checked out, the pool's listener no longer hears it: a connection that dies while (or
    // after) a write is given up on must not end the process with an unheard 'error'.
    const quiet = (): void => undefined;
    client.on('error', quiet);
    let broken: Error | undefined;
    let timer: NodeJS.Timeout | undefined;
    try {
      const work = this.d.config.writeMode === 'copy' ? pipeline(Readable.from([copyLines(rows)]), client.query(copyFrom(COPY_SQL))) : client.query(INSERT_SQL, insertParams(rows));
      // Given up on, it may still fail later: nobody is waiting for it then.
      work.catch(() => undefined);
      const ms = this.d.writeTimeoutMs ?? WRITE_TIMEOUT_MS;
      const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no answer from the tracking database within ${ms} ms`)), ms)));
      await Promise.race([work, late]);
    } catch (err) {
      broken = err as Error;
      throw err;
    } finally {
      clearTimeout(timer);
      // A connection a write failed on (or hung on) is in no state to reuse: the pool drops it,
      // and its socket goes now, not when the kernel gives up on a silent peer.
      client.release(broken);
      if (broken !== undefined) (client as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
      else client.off('error', quiet);
    }
  }

  /** The other replicas' spend, unless the last read is still waiting (a slow database: reads would pile up on the pool). */
  private refreshSpend(): void {
    if (this.spendLoading) return;
    this.spendLoading = true;
    void this.loadSpend(false)
      .catch((err: Error) => this.warn(err, 'reading the budgets’ spend failed'))
      .finally(() => (this.spendLoading = false));
  }

  /** The budgeted keys' spend in their current period: own at start-up, the other replicas' on every refresh. */
  private async loadSpend(includeOwn: boolean): Promise<void> {
    const budgets = this.d.budgets();
    if (budgets.size === 0) return;
    const now = this.now();
    for (const period of ['day', 'month'] as const) {
      const keys = [...budgets].filter(([, b]) => b.period === period).map(([k]) => k);
      if (keys.length === 0) continue;
      const start = periodBounds(now, period).start;
      const r = await this.pool.query<{ key: string; own: boolean; spent: number }>(
        `SELECT api_key_id AS key, replica = $1 AS own, coalesce(sum(cost), 0)::float8 AS spent
           FROM brk_tracking.completion_request
          WHERE api_key_id = ANY($2) AND created_at >= $3
          GROUP BY 1, 2`,
        [this.d.replica, keys, new Date(start)],
      );
      const others = new Map(keys.map((k) => [k, 0]));
      for (const row of r.rows) {
        if (!row.own) others.set(row.key, row.spent);
        else if (includeOwn) this.ledger.set('own', row.key, start, row.spent);
      }
      for (const [k, spent] of others) this.ledger.set('others', k, start, spent);
    }
    this.spendDirty = true;
  }

  private pushSpend(force = false): void {
    if (!force && !this.spendDirty) return;
    this.spendDirty = false;
    this.d.onSpend(this.ledger.entries());
  }

  /**
   * Shutdown: everything buffered is written before `deadline` (epoch ms), retried while
   * time is left; what is left then is counted as dropped. Then the pool closes.
   */
  async close(deadline: number): Promise<void> {
    this.closing = true;
    for (const t of this.timers) clearInterval(t);
    // A start-up still retrying (the database down all along) is not waited on past the deadline.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.startPromise?.catch(() => undefined), new Promise((r) => (timer = setTimeout(r, Math.max(0, deadline - this.now()))))]);
    clearTimeout(timer);
    // A write in flight is waited on until the deadline, not past it (a hung one held shutdown).
    const untilDeadline = (p: Promise<unknown> | undefined): Promise<unknown> => {
      if (p === undefined) return Promise.resolve();
      let t: NodeJS.Timeout | undefined;
      return Promise.race([p, new Promise((r) => (t = setTimeout(r, Math.max(0, deadline - this.now()))))]).finally(() => clearTimeout(t));
    };
    while (this.ready && this.ring.size > 0 && this.now() < deadline) {
      await untilDeadline(this.flushing);
      if (this.now() >= deadline) break;
      if (this.ring.size === 0) break;
      const wait = this.retryAt - this.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, Math.min(wait, Math.max(0, deadline - this.now()))));
      if (this.now() >= deadline) break;
      this.flushing = this.flush().finally(() => (this.flushing = undefined));
      await untilDeadline(this.flushing);
    }
    await untilDeadline(this.flushing);
    // A batch still being written at the deadline is not in the buffer: counted with what is.
    const left = this.ring.size + (this.flushing !== undefined ? this.inFlightRows : 0);
    if (left > 0) {
      this.d.metrics.trackingDropped.labels('shutdown').inc(left);
      this.d.logger.warn({ rows: left }, 'tracking rows still buffered at the end of the grace period were dropped');
    }
    // A connection still held by a hung write would hold end() too: the process is stopping.
    await untilDeadline(this.pool.end().catch(() => undefined));
  }

  /** At most one line per 10 s: a database that is down would otherwise log at every retry. */
  private warn(err: Error, msg: string): void {
    const now = this.now();
    if (now - this.lastErrorLog < 10_000) return;
    this.lastErrorLog = now;
    this.d.logger.warn({ err: err.message, buffered: this.ring.size }, msg);
  }
}

/** PostgreSQL refused the rows themselves (SQLSTATE class 22, data exception, or 23, integrity): no retry helps. */
function refusedForData(err: unknown): boolean {
  // The batch could not even be encoded here (a string past V8's limit): its rows again would fail again.
  if (err instanceof RangeError) return true;
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^2[23]/.test(code);
}

/** Days of rows retention keeps: `retentionDays`, or with a monthly budget at least the month so far (UTC, today included). */
export function keptDays(retentionDays: number, monthlyBudget: boolean, now: number): number {
  if (!monthlyBudget) return retentionDays;
  const d = new Date(now);
  const month = Math.floor((now - Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1)) / 86_400_000) + 1;
  return Math.max(retentionDays, month);
}
