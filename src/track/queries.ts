// What the admin API reads from brk_tracking.completion_request: a filtered list paged
// by keyset (created_at, id: no OFFSET, so a page costs the same deep in the table),
// one request by its id, and usage grouped by key, label, model or deployment per hour
// or day, with latency percentiles.
import type pg from 'pg';
import { BrokerError } from '../errors.ts';

export interface ListFilter {
  readonly from: Date;
  readonly to: Date;
  readonly label?: string | undefined;
  readonly key?: string | undefined;
  readonly model?: string | undefined;
  readonly deployment?: string | undefined;
  readonly outcome?: string | undefined;
  readonly limit: number;
  /** From the previous page's next_cursor. */
  readonly cursor?: string | undefined;
}

const ROW_COLUMNS = `id, broker_request_id, created_at, finished_at, replica, protocol, api, route, model, arm, deployment, api_key_id, subject, tier,
  semantic_label, priority, outcome, status, error_code, prompt_tokens, completion_tokens, predicted_tokens, queue_ms, ttft_ms, total_ms, upstream_ms, retries, cost, served_group`;

export interface RequestRow {
  readonly id: string;
  readonly broker_request_id: string;
  readonly created_at: Date;
  readonly [column: string]: unknown;
}

/** A row as the API returns it: the internal id stays internal (it only orders pages). */
function shown(r: RequestRow): Record<string, unknown> {
  const { id: _id, ...rest } = r;
  return { ...rest, created_at: r.created_at.toISOString(), finished_at: (r.finished_at as Date).toISOString() };
}

export function encodeCursor(createdAt: Date, id: string): string {
  return Buffer.from(`${createdAt.toISOString()}|${id}`).toString('base64url');
}

function decodeCursor(c: string): [Date, string] {
  const [t, id] = Buffer.from(c, 'base64url').toString().split('|');
  const at = new Date(t ?? '');
  if (Number.isNaN(at.getTime()) || id === undefined || !/^\d+$/.test(id)) throw new BrokerError('invalid_request', 'cursor is not one this API returned', { details: { field: 'cursor' } });
  return [at, id];
}

export async function listRequests(pool: pg.Pool, f: ListFilter): Promise<{ requests: Record<string, unknown>[]; next_cursor: string | null }> {
  const where = ['created_at >= $1', 'created_at < $2'];
  const args: unknown[] = [f.from, f.to];
  const eq = (column: string, v: string | undefined): void => {
    if (v === undefined) return;
    args.push(v);
    where.push(`${column} = $${args.length}`);
  };
  eq('semantic_label', f.label);
  eq('api_key_id', f.key);
  eq('model', f.model);
  eq('deployment', f.deployment);
  eq('outcome', f.outcome);
  if (f.cursor !== undefined) {
    const [at, id] = decodeCursor(f.cursor);
    args.push(at, id);
    where.push(`(created_at, id) < ($${args.length - 1}, $${args.length})`);
  }
  args.push(f.limit + 1);
  const r = await pool.query<RequestRow>(`SELECT ${ROW_COLUMNS} FROM brk_tracking.completion_request WHERE ${where.join(' AND ')} ORDER BY created_at DESC, id DESC LIMIT $${args.length}`, args);
  const more = r.rows.length > f.limit;
  const rows = more ? r.rows.slice(0, f.limit) : r.rows;
  const last = rows.at(-1);
  return { requests: rows.map(shown), next_cursor: more && last !== undefined ? encodeCursor(last.created_at, String(last.id)) : null };
}

/** The rows of one broker_request_id (a client may reuse its X-Request-ID), newest first. */
export async function getRequest(pool: pg.Pool, id: string): Promise<Record<string, unknown>[]> {
  const r = await pool.query<RequestRow>(`SELECT ${ROW_COLUMNS} FROM brk_tracking.completion_request WHERE broker_request_id = $1 ORDER BY created_at DESC, id DESC LIMIT 100`, [id]);
  return r.rows.map(shown);
}

// `served`: the group a request ended in (a fallback's, else the one asked for), as llm_requests_total counts it.
export const GROUP_BY = { key: 'api_key_id', label: 'semantic_label', model: 'model', served: 'coalesce(served_group, model)', deployment: 'deployment' } as const;
export type GroupBy = keyof typeof GROUP_BY;

export interface UsageQuery {
  readonly from: Date;
  readonly to: Date;
  readonly groupBy: GroupBy;
  readonly bucket: 'hour' | 'day';
}

export interface UsageRow {
  readonly bucket: string;
  readonly group: string | null;
  readonly requests: number;
  readonly errors: number;
  readonly prompt_tokens: number;
  readonly completion_tokens: number;
  /** Of the priced rows; null when the bucket used tokens and none was priced (unpriced is not free), 0 when it used none. */
  readonly cost: number | null;
  /** Rows that used tokens with no price for their deployment or group: what `cost` leaves out. */
  readonly unpriced_requests: number;
  readonly latency_ms: { readonly p50: number | null; readonly p95: number | null; readonly p99: number | null };
}

export async function usage(pool: pg.Pool, q: UsageQuery): Promise<UsageRow[]> {
  const col = GROUP_BY[q.groupBy];
  const r = await pool.query<{ bucket: Date; grp: string | null; requests: string; errors: string; prompt: string; completion: string; cost: number | null; unpriced: string; p: (number | null)[] }>(
    `SELECT date_trunc($3, created_at, 'UTC') AS bucket, ${col} AS grp,
            count(*) AS requests, count(*) FILTER (WHERE outcome NOT IN ('ok', 'cache_hit')) AS errors,
            coalesce(sum(prompt_tokens), 0) AS prompt, coalesce(sum(completion_tokens), 0) AS completion,
            count(*) FILTER (WHERE cost IS NULL AND (coalesce(prompt_tokens, 0) > 0 OR coalesce(completion_tokens, 0) > 0)) AS unpriced,
            -- Null only when tokens were used and none of them priced: nothing spent is 0.
            coalesce(sum(cost), CASE WHEN count(*) FILTER (WHERE coalesce(prompt_tokens, 0) > 0 OR coalesce(completion_tokens, 0) > 0) > 0 THEN NULL ELSE 0 END)::float8 AS cost,
            percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY total_ms) AS p
       FROM brk_tracking.completion_request
      WHERE created_at >= $1 AND created_at < $2
      GROUP BY 1, 2 ORDER BY 1, 2 NULLS LAST`,
    [q.from, q.to, q.bucket],
  );
  const ms = (v: number | null | undefined): number | null => (v === null || v === undefined ? null : Math.round(v * 1000) / 1000);
  return r.rows.map((x) => ({
    bucket: x.bucket.toISOString(),
    group: x.grp,
    requests: Number(x.requests),
    errors: Number(x.errors),
    prompt_tokens: Number(x.prompt),
    completion_tokens: Number(x.completion),
    cost: x.cost,
    unpriced_requests: Number(x.unpriced),
    latency_ms: { p50: ms(x.p[0]), p95: ms(x.p[1]), p99: ms(x.p[2]) },
  }));
}
