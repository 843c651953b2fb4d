// /api/tracking/*: the requests tracking recorded (docs/tracking.md). Readers (analyst
// and up, src/guard/rbac.ts). Without DATABASE_URL they answer 503 tracking_disabled.
import type pg from 'pg';
import { BrokerError } from '../errors.ts';
import type { Route, RouteContext } from '../front/http/router.ts';
import { getRequest, GROUP_BY, listRequests, usage, type GroupBy } from '../track/queries.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };
const DAY = 86_400_000;
export const MAX_PAGE = 1000;

function params(ctx: RouteContext): URLSearchParams {
  return new URLSearchParams(ctx.req.query);
}

function invalid(field: string, what: string): BrokerError {
  return new BrokerError('invalid_request', `${field} ${what}`, { details: { field } });
}

/** The parameter's one value: given twice, the query would silently use one of them. */
function one(q: URLSearchParams, name: string): string | null {
  if (q.getAll(name).length > 1) throw invalid(name, 'is given more than once');
  return q.get(name);
}

/** A date part that names no day (2026-02-30): Date would roll it over into the next month. */
function noSuchDay(v: string): boolean {
  const m = /^(\d{4})-(\d{2})-(\d{2})/.exec(v);
  if (m === null) return false;
  const [y, mo, d] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const day = new Date(Date.UTC(y, mo - 1, d));
  return day.getUTCMonth() !== mo - 1 || day.getUTCDate() !== d;
}

/** from/to: ISO 8601 times (default: the last 24 hours, to now). */
function window(q: URLSearchParams, now: number): { from: Date; to: Date } {
  const time = (name: string, def: number): Date => {
    const v = one(q, name);
    if (v === null || v === '') return new Date(def);
    const d = new Date(v);
    if (Number.isNaN(d.getTime()) || noSuchDay(v)) throw invalid(name, 'must be an ISO 8601 time');
    return d;
  };
  const to = time('to', now + 1000);
  const from = time('from', to.getTime() - DAY);
  if (from >= to) throw invalid('from', 'must be before to');
  return { from, to };
}

function text(q: URLSearchParams, name: string): string | undefined {
  const v = one(q, name);
  if (v === null || v === '') return undefined;
  if (v.length > 256) throw invalid(name, 'must be at most 256 characters');
  return v;
}

/** The database unreachable or failing: 503 with Retry-After, not a 500 (as identity does for its store). */
async function read<T>(work: Promise<T>): Promise<T> {
  try {
    return await work;
  } catch (err) {
    if (err instanceof BrokerError) throw err;
    // A data exception (SQLSTATE class 22: a cursor id past bigint, a year before 4713 BC, a NUL
    // in a filter) is the parameters' fault, not the database's: 400, not 503 and a retry.
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string' && code.startsWith('22')) throw new BrokerError('invalid_request', `a parameter is out of the database's range: ${(err as Error).message}`, { cause: err });
    throw new BrokerError('overloaded', `the tracking database did not answer (${(err as Error).message}); try again shortly`, { retryAfter: 1, cause: err });
  }
}

export function trackingRoutes(pool: () => pg.Pool | undefined, now: () => number = Date.now): Route[] {
  const db = (): pg.Pool => {
    const p = pool();
    if (p === undefined) throw new BrokerError('tracking_disabled');
    return p;
  };
  const reply = (ctx: RouteContext, body: unknown): void => ctx.sink.send(200, JSON_HEADERS, JSON.stringify(body));
  return [
    {
      method: 'GET',
      path: '/api/tracking/requests',
      admin: true,
      async handle(ctx) {
        const q = params(ctx);
        const limitRaw = one(q, 'limit');
        const limit = limitRaw === null ? 100 : Number(limitRaw);
        if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE) throw invalid('limit', `must be an integer between 1 and ${MAX_PAGE}`);
        reply(ctx, await read(listRequests(db(), { ...window(q, now()), label: text(q, 'label'), key: text(q, 'key'), model: text(q, 'model'), deployment: text(q, 'deployment'), outcome: text(q, 'outcome'), limit, cursor: text(q, 'cursor') })));
      },
    },
    {
      method: 'GET',
      path: '/api/tracking/requests/:id',
      admin: true,
      async handle(ctx) {
        const rows = await read(getRequest(db(), ctx.params.id!));
        if (rows.length === 0) throw new BrokerError('not_found', `no tracked request ${ctx.params.id}`);
        reply(ctx, { request: rows[0], ...(rows.length > 1 ? { others: rows.slice(1) } : {}) });
      },
    },
    {
      method: 'GET',
      path: '/api/tracking/usage',
      admin: true,
      async handle(ctx) {
        const q = params(ctx);
        const groupBy = (one(q, 'group_by') ?? 'model') as GroupBy;
        if (!Object.hasOwn(GROUP_BY, groupBy)) throw invalid('group_by', `must be one of ${Object.keys(GROUP_BY).join(', ')}`);
        const bucket = one(q, 'bucket') ?? 'hour';
        if (bucket !== 'hour' && bucket !== 'day') throw invalid('bucket', 'must be hour or day');
        const w = window(q, now());
        reply(ctx, { group_by: groupBy, bucket, from: w.from.toISOString(), to: w.to.toISOString(), usage: await read(usage(db(), { ...w, groupBy, bucket })) });
      },
    },
  ];
}
