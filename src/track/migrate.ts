// Schema of request tracking: SQL files in migrations/tracking, applied in name order at
// start-up, each once (brk_tracking.schema_migrations), each in its own transaction.
// A session advisory lock serializes replicas that start together: the second waits,
// then finds the files applied. Partitions by UTC day are created ahead and dropped
// past the retention, under a transaction advisory lock for the same reason.
import { readdirSync, readFileSync } from 'node:fs';
import type pg from 'pg';

/** Where the SQL files are, from src/track (tsx) or dist/track (npm start) alike. */
export const MIGRATIONS_DIR = new URL('../../migrations/tracking/', import.meta.url);

// Advisory lock keys ('brk_trk1', 'brk_trk2' as bigints): one for migrations, one for partition upkeep.
const MIGRATE_LOCK = 0x62726b5f74726b31n.toString();
const PARTITION_LOCK = 0x62726b5f74726b32n.toString();

export interface Migration {
  readonly version: string;
  readonly sql: string;
}

export function readMigrations(dir: URL = MIGRATIONS_DIR): Migration[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.sql'))
    .sort()
    .map((f) => ({ version: f.replace(/\.sql$/, ''), sql: readFileSync(new URL(f, dir), 'utf8') }));
}

/** Applies the migrations not applied yet; returns their versions. */
export async function migrate(pool: pg.Pool, migrations: readonly Migration[] = readMigrations()): Promise<string[]> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATE_LOCK]);
    try {
      // Under the lock: two replicas creating the schema at once would race on its name.
      await client.query('CREATE SCHEMA IF NOT EXISTS brk_tracking');
      await client.query('CREATE TABLE IF NOT EXISTS brk_tracking.schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())');
      const done = new Set((await client.query<{ version: string }>('SELECT version FROM brk_tracking.schema_migrations')).rows.map((r) => r.version));
      const applied: string[] = [];
      for (const m of migrations) {
        if (done.has(m.version)) continue;
        await client.query('BEGIN');
        try {
          await client.query(m.sql);
          await client.query('INSERT INTO brk_tracking.schema_migrations (version) VALUES ($1)', [m.version]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK').catch(() => undefined);
          throw new Error(`migration ${m.version} failed: ${(err as Error).message}`, { cause: err });
        }
        applied.push(m.version);
      }
      return applied;
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [MIGRATE_LOCK]).catch((err: Error) => (broken = err));
    }
  } catch (err) {
    broken ??= err as Error;
    throw err;
  } finally {
    // A connection whose unlock failed may still hold the lock: close it rather than reuse it.
    client.release(broken);
  }
}

const DAY = 86_400_000;

/** The partition of the UTC day holding `t`: completion_request_pYYYYMMDD. */
export function partitionName(t: number): string {
  return `completion_request_p${new Date(t).toISOString().slice(0, 10).replace(/-/g, '')}`;
}

function dayStart(t: number): number {
  return Math.floor(t / DAY) * DAY;
}

function pgTime(t: number): string {
  return new Date(t).toISOString().replace('T', ' ').replace('Z', '+00');
}

/**
 * Creates the partitions of today and `ahead` days after it (and yesterday's, for rows of a
 * request that started before midnight), and drops those whose whole day is older than
 * `retentionDays`. Returns what it created and dropped.
 */
export async function maintainPartitions(pool: pg.Pool, now: number, ahead: number, retentionDays: number): Promise<{ created: string[]; dropped: string[] }> {
  const client = await pool.connect();
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    await client.query('SELECT pg_advisory_xact_lock($1)', [PARTITION_LOCK]);
    const existing = new Set(
      (
        await client.query<{ name: string }>(
          `SELECT c.relname AS name FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             JOIN pg_class p ON p.oid = i.inhparent
             JOIN pg_namespace n ON n.oid = p.relnamespace
            WHERE n.nspname = 'brk_tracking' AND p.relname = 'completion_request'`,
        )
      ).rows.map((r) => r.name),
    );
    const created: string[] = [];
    const today = dayStart(now);
    for (let d = today - DAY; d <= today + ahead * DAY; d += DAY) {
      const name = partitionName(d);
      if (existing.has(name)) continue;
      // Rows of this day in the default partition (a replica's clock days ahead) would fail the
      // new partition's constraint, and with it every upkeep and start-up from then on: they move in.
      const day = `created_at >= '${pgTime(d)}' AND created_at < '${pgTime(d + DAY)}'`;
      const stray = (await client.query(`SELECT 1 FROM brk_tracking.completion_request_default WHERE ${day} LIMIT 1`)).rowCount! > 0;
      if (stray) {
        await client.query('CREATE TEMP TABLE completion_request_stray (LIKE brk_tracking.completion_request)');
        await client.query(`WITH moved AS (DELETE FROM brk_tracking.completion_request_default WHERE ${day} RETURNING *) INSERT INTO completion_request_stray SELECT * FROM moved`);
      }
      await client.query(`CREATE TABLE brk_tracking.${name} PARTITION OF brk_tracking.completion_request FOR VALUES FROM ('${pgTime(d)}') TO ('${pgTime(d + DAY)}')`);
      if (stray) {
        await client.query('INSERT INTO brk_tracking.completion_request SELECT * FROM completion_request_stray');
        await client.query('DROP TABLE completion_request_stray');
      }
      created.push(name);
    }
    const dropped: string[] = [];
    const oldestKept = today - retentionDays * DAY;
    for (const name of existing) {
      const m = /^completion_request_p(\d{4})(\d{2})(\d{2})$/.exec(name);
      if (m === null) continue;
      const day = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
      if (day >= oldestKept) continue;
      await client.query(`DROP TABLE brk_tracking.${name}`);
      dropped.push(name);
    }
    // Rows of days with no partition of their own (a clock days off) wait in the default
    // partition: past retention they go too, row by row.
    await client.query(`DELETE FROM brk_tracking.completion_request_default WHERE created_at < '${pgTime(oldestKept)}'`);
    await client.query('COMMIT');
    return { created, dropped };
  } catch (err) {
    broken = err as Error;
    await client.query('ROLLBACK').catch(() => undefined);
    throw err;
  } finally {
    client.release(broken);
  }
}
