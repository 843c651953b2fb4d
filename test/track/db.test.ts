// Request tracking's database side against a real PostgreSQL: migrations raced by two
// brokers, partitions ahead and retention, the database stopped under load (no client
// error, drops counted, writing resumes), budgets per key enforced at admission, and
// the admin API (filters, keyset pages, one request, usage) behind the RBAC table.
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { startBroker } from '../../src/app.ts';
import { loadConfig } from '../../src/config/env.ts';
import { freePort } from '../../bench/lib/process.ts';
import pg from 'pg';
import { SignJWT } from 'jose';
import { admin, json, metricValue, postJson, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { startPostgres } from '../helpers/postgres.ts';
import { maintainPartitions, migrate, partitionName } from '../../src/track/migrate.ts';
import { keyId } from '../../src/guard/api-key.ts';

const pgc = await startPostgres(t);
const up = await startMock(t, { tokens: 4 });
const fleet = { modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: up.url, model: 'm' }] } } };
// Threads start slowly on a busy machine; the budget test runs them (their gate gets the
// totals by message), test/track/rows.test.ts runs both modes, the rest runs on the main thread.
const env = { INFER_ENABLED: 'false', FRONT_THREADS: '0' };
const DAY = 86_400_000;

async function query<T extends pg.QueryResultRow = Record<string, any>>(url: string, sql: string, args: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<T>(sql, args)).rows;
  } finally {
    await c.end();
  }
}

const chat = (tb: TestBroker, headers: Record<string, string> = {}) => postJson(`${tb.url}/v1/chat/completions`, { model: 'g', messages: [{ role: 'user', content: 'hi' }] }, headers);

async function until(cond: () => Promise<boolean>, what: string, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

t.test('two brokers migrate one empty database at once, without error', async (t) => {
  const db = await pgc.createDatabase('race');
  // The migrations themselves, raced from two pools...
  const pools = [new pg.Pool({ connectionString: db }), new pg.Pool({ connectionString: db })];
  const applied = await Promise.all(pools.map((p) => migrate(p)));
  await Promise.all(pools.map((p) => p.end()));
  t.same(applied.flat().sort(), ['001_completion_request', '002_served_group'], 'one pool applied the migrations, the other found them applied');
  // ...and two whole brokers starting together on another empty database.
  const db2 = await pgc.createDatabase('race2');
  const [a, b] = await Promise.all([startFleetBroker(t, fleet, { ...env, DATABASE_URL: db2, REPLICA_ID: 'ra' }), startFleetBroker(t, fleet, { ...env, DATABASE_URL: db2, REPLICA_ID: 'rb' })]);
  for (const tb of [a, b]) t.notOk(tb.logs.some((l) => String(l.msg).includes('not ready')), 'no start-up retry');
  t.same(await query(db2, 'SELECT version FROM brk_tracking.schema_migrations ORDER BY version'), [{ version: '001_completion_request' }, { version: '002_served_group' }]);
  t.equal((await chat(a)).status, 200);
  t.equal((await chat(b)).status, 200);
  await Promise.all([a.close(), b.close()]);
  t.same((await query(db2, 'SELECT replica FROM brk_tracking.completion_request ORDER BY replica')).map((r) => r.replica), ['ra', 'rb']);
});

t.test('partitions are made ahead; retention drops whole partitions past TRACKING_RETENTION_DAYS', async (t) => {
  const db = await pgc.createDatabase('retention');
  const pool = new pg.Pool({ connectionString: db });
  t.teardown(() => pool.end());
  await migrate(pool);
  const now = Date.parse('2026-06-15T12:00:00Z');
  // 40 and 31 days ago: partitions made as they were then, with a row each.
  for (const daysAgo of [40, 31]) await maintainPartitions(pool, now - daysAgo * DAY, 0, 3650);
  const made = await maintainPartitions(pool, now, 3, 3650);
  t.same(made.created, ['p20260614', 'p20260615', 'p20260616', 'p20260617', 'p20260618'].map((d) => `completion_request_${d}`), 'yesterday, today and 3 days ahead');
  const insert = (at: number, id: string) =>
    pool.query(`INSERT INTO brk_tracking.completion_request (broker_request_id, created_at, finished_at, replica, protocol, api, route, outcome, status, total_ms) VALUES ($1, $2, $2, 'r', 'http', 'infer', '/v1/infer', 'ok', 200, 1)`, [id, new Date(at)]);
  await insert(now - 40 * DAY, 'old-40');
  await insert(now - 31 * DAY, 'old-31');
  await insert(now - 29 * DAY, 'kept-29');
  await insert(now, 'today');
  t.equal((await pool.query(`SELECT count(*)::int AS n FROM brk_tracking.${partitionName(now - 40 * DAY)}`)).rows[0].n, 1, 'an old row sits in its day partition');
  const r = await maintainPartitions(pool, now, 3, 30);
  t.same(r.dropped.sort(), [partitionName(now - 40 * DAY), partitionName(now - 41 * DAY), partitionName(now - 31 * DAY), partitionName(now - 32 * DAY)].sort(), 'the partitions older than 30 days are dropped');
  t.same((await pool.query('SELECT broker_request_id AS id FROM brk_tracking.completion_request ORDER BY created_at')).rows.map((x) => x.id), ['kept-29', 'today']);
  t.same((await maintainPartitions(pool, now, 3, 30)).dropped, [], 'nothing more to drop');
});

t.test("a row of a day ahead in the default partition (a clock days ahead) moves into that day's partition when it is made", async (t) => {
  const db = await pgc.createDatabase('stray');
  const pool = new pg.Pool({ connectionString: db });
  t.teardown(() => pool.end());
  await migrate(pool);
  const now = Date.parse('2026-06-15T12:00:00Z');
  await maintainPartitions(pool, now, 3, 30);
  await pool.query(`INSERT INTO brk_tracking.completion_request (broker_request_id, created_at, finished_at, replica, protocol, api, route, outcome, status, total_ms) VALUES ('ahead', $1, $1, 'r', 'http', 'infer', '/v1/infer', 'ok', 200, 1)`, [new Date(now + 10 * DAY)]);
  t.equal((await pool.query('SELECT count(*)::int AS n FROM brk_tracking.completion_request_default')).rows[0].n, 1, 'no partition for its day: the default one took it');
  // A week later the upkeep makes that day's partition: it failed on the default partition's row, and with it every later upkeep.
  const r = await maintainPartitions(pool, now + 7 * DAY, 3, 30);
  t.ok(r.created.includes(partitionName(now + 10 * DAY)), "that day's partition is made");
  t.same((await pool.query(`SELECT broker_request_id AS id FROM brk_tracking.${partitionName(now + 10 * DAY)}`)).rows, [{ id: 'ahead' }], 'the row moved into it');
  t.equal((await pool.query('SELECT count(*)::int AS n FROM brk_tracking.completion_request_default')).rows[0].n, 0);
  t.same((await maintainPartitions(pool, now + 8 * DAY, 3, 30)).created, [partitionName(now + 11 * DAY)], 'the next upkeep goes on');
});

t.test('retention also removes rows past it from the default partition (days with no partition of their own)', async (t) => {
  const db = await pgc.createDatabase('stray_old');
  const pool = new pg.Pool({ connectionString: db });
  t.teardown(() => pool.end());
  await migrate(pool);
  const now = Date.parse('2026-06-15T12:00:00Z');
  await maintainPartitions(pool, now, 3, 30);
  for (const [id, daysAgo] of [['old-40', 40], ['kept-20', 20]] as const) {
    await pool.query(`INSERT INTO brk_tracking.completion_request (broker_request_id, created_at, finished_at, replica, protocol, api, route, outcome, status, total_ms) VALUES ($1, $2, $2, 'r', 'http', 'infer', '/v1/infer', 'ok', 200, 1)`, [id, new Date(now - daysAgo * DAY)]);
  }
  t.equal((await pool.query('SELECT count(*)::int AS n FROM brk_tracking.completion_request_default')).rows[0].n, 2, 'no partition for their days: the default one took them');
  await maintainPartitions(pool, now, 3, 30);
  t.same((await pool.query('SELECT broker_request_id AS id FROM brk_tracking.completion_request_default')).rows, [{ id: 'kept-20' }], 'the row past 30 days is gone, the other kept');
});

t.test('the database stopped: clients see no error, drops are counted; restarted, writing resumes', async (t) => {
  const db = await pgc.createDatabase('outage');
  const tb = await startFleetBroker(t, fleet, { ...env, DATABASE_URL: db, TRACKING_FLUSH_MS: '20', TRACKING_BUFFER_ROWS: '100', TRACKING_BATCH_ROWS: '50', TRACKING_WRITE_MODE: 'insert' });
  for (let i = 0; i < 5; i++) t.equal((await chat(tb)).status, 200);
  await until(async () => (await metricValue(tb.url, 'tracking_rows_written_total')) === 5, 'the first rows written');
  await pgc.stop();
  try {
    const statuses = new Set<number>();
    for (let i = 0; i < 30; i++) {
      const batch = await Promise.all(Array.from({ length: 5 }, () => chat(tb)));
      for (const r of batch) statuses.add(r.status);
    }
    t.same([...statuses], [200], '150 requests with the database down: every one answered 200');
    await until(async () => (await metricValue(tb.url, 'tracking_rows_dropped_total', { reason: 'overflow' })) === 50, 'the overflow counted');
    t.equal(await metricValue(tb.url, 'tracking_buffer_rows'), 100, 'the buffer holds its bound');
    t.ok((await metricValue(tb.url, 'tracking_flush_failures_total')) > 0, 'failed flushes are counted');
    const read = await fetch(`${tb.url}/api/tracking/requests`, { headers: admin });
    t.equal(read.status, 503, 'the admin API answers 503 while the database is down');
    t.equal((await json(read)).error.code, 'overloaded');
  } finally {
    await pgc.start();
  }
  await until(async () => (await metricValue(tb.url, 'tracking_rows_written_total')) === 105, 'writing resumed', 20_000);
  t.equal(await metricValue(tb.url, 'tracking_buffer_rows'), 0);
  t.equal((await query(db, 'SELECT count(*)::int AS n FROM brk_tracking.completion_request'))[0]!.n, 105, 'written plus dropped is every request');
  t.equal((await chat(tb)).status, 200);
  await until(async () => (await metricValue(tb.url, 'tracking_rows_written_total')) === 106, 'a new row after the restart');
});

t.test('a budget per API key is enforced at admission, with its reset time', async (t) => {
  const db = await pgc.createDatabase('budget');
  const KEY = 'budget-key-0001';
  const OTHER = 'budget-key-0002';
  // 4 completion tokens at 2,500 per 1M: 0.01 a request (plus its prompt at 0); limit 0.025.
  const tb = await startFleetBroker(
    t,
    { ...fleet, apiKeys: { [KEY]: { budget: { limit: 0.025, period: 'day' } }, [OTHER]: { budget: { limit: 100, period: 'month' } } }, prices: { models: { g: { inputPer1M: 0, outputPer1M: 2500 } } } },
    { ...env, FRONT_THREADS: '2', DATABASE_URL: db, TRACKING_FLUSH_MS: '20' },
  );
  const statuses: number[] = [];
  let refused: { status: number; headers: Headers; body: any } | undefined;
  // The running total reaches admission a moment after each reply: ask until refused (bounded).
  for (let i = 0; i < 40 && refused === undefined; i++) {
    const r = await chat(tb, { 'x-api-key': KEY });
    statuses.push(r.status);
    if (r.status !== 200) refused = r;
    else await new Promise((res) => setTimeout(res, 50));
  }
  t.ok(refused, 'the key is refused once over budget');
  t.equal(refused?.status, 429);
  t.equal(refused?.body.error.code, 'budget_exceeded');
  const tomorrow = new Date(Math.floor(Date.now() / DAY) * DAY + DAY).toISOString();
  t.match(refused?.body.error.message, tomorrow, 'the message says when it resets (next UTC midnight)');
  const retry = Number(refused?.headers.get('retry-after'));
  t.ok(retry > 0 && retry <= 86_400, 'Retry-After until the reset');
  t.equal(refused?.headers.get('x-should-retry'), 'false', 'and the SDKs are told not to sleep until then in a retry');
  t.ok(statuses.filter((s) => s === 200).length >= 3, 'at least the budget was served first');
  t.ok((await metricValue(tb.url, 'budget_spend_ratio', { key: keyId(KEY) })) >= 1, 'budget_spend_ratio of the key');
  t.equal(await metricValue(tb.url, 'budget_spend_ratio', { key: keyId(OTHER) }), 0, 'a budgeted key with no spend');
  t.ok((await metricValue(tb.url, 'llm_requests_total', { group: 'g', outcome: 'client_error', reason: 'budget_exceeded' })) >= 1, 'the metrics count budget refusals apart, as tracking does');
  t.equal((await chat(tb, { 'x-api-key': OTHER })).status, 200, 'another key is not affected');
  t.equal((await chat(tb)).status, 200, 'nor a keyless request');
  await tb.close();
  // The refusal is a row too, with its outcome.
  t.ok((await query(db, `SELECT 1 FROM brk_tracking.completion_request WHERE outcome = 'budget_exceeded' AND api_key_id = $1`, [keyId(KEY)])).length >= 1, 'refusals are recorded');
  // A restarted broker counts the spend already in the database: still refused.
  const again = await startFleetBroker(
    t,
    { ...fleet, apiKeys: { [KEY]: { budget: { limit: 0.025, period: 'day' } } }, prices: { models: { g: { inputPer1M: 0, outputPer1M: 2500 } } } },
    { ...env, DATABASE_URL: db },
  );
  t.equal((await chat(again, { 'x-api-key': KEY })).status, 429, 'the spend survives a restart (read back from the database)');
  await again.close();
  // With data-plane threads, asked while the broker is still starting (the first thread serves
  // while the others start): each thread starts with the totals, so its first requests are refused too.
  const dir = mkdtempSync(join(tmpdir(), 'eb-budget-'));
  writeFileSync(join(dir, 'broker.yaml'), stringify({ ...fleet, apiKeys: { [KEY]: { budget: { limit: 0.025, period: 'day' } } }, prices: { models: { g: { inputPer1M: 0, outputPer1M: 2500 } } } }));
  const port = await freePort();
  const starting = startBroker(loadConfig({ ...env, HOST: '127.0.0.1', PORT: String(port), GRPC_PORT: '0', LOG_LEVEL: 'silent', FRONT_THREADS: '4', DATABASE_URL: db, BROKER_CONFIG: join(dir, 'broker.yaml') }));
  const early: number[] = [];
  for (let i = 0; i < 2000 && early.length < 20; i++) {
    const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': KEY }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) }).then((res) => res.status, () => 0);
    if (r !== 0) early.push(r);
    else await new Promise((res) => setTimeout(res, 5));
  }
  const broker = await starting;
  await broker.close(2000);
  t.same(early, Array(20).fill(429), 'refused from the first request the broker answers');
});

t.test('admin API: filters, keyset pages, one request, usage; analyst or higher', async (t) => {
  const db = await pgc.createDatabase('admin');
  const SECRET = 'a-test-secret-of-at-least-thirty-two-chars!';
  const down = await startMock(t, { fail: 500 });
  const groups = { ...fleet.modelGroups, down: { deployments: [{ id: 'x1', provider: 'openai', url: down.url, model: 'm' }], fallbacks: ['g'] } };
  const tb = await startFleetBroker(t, { modelGroups: groups, apiKeys: { 'admin-api-key-1': { label: 'lab-1' } } }, { ...env, DATABASE_URL: db, TRACKING_FLUSH_MS: '20', JWT_SECRET: SECRET, FLEET_HEALTH_CHECKS: 'false' });
  const token = (role: string) => new SignJWT({ roles: [role] }).setProtectedHeader({ alg: 'HS256' }).setSubject(`s-${role}`).setIssuedAt().setExpirationTime('10m').sign(new TextEncoder().encode(SECRET));
  for (let i = 0; i < 5; i++) t.equal((await chat(tb, { 'x-api-key': 'admin-api-key-1', 'x-request-id': `lab-${i}` })).status, 200);
  for (let i = 0; i < 2; i++) t.equal((await chat(tb, { 'x-request-id': `anon-${i}` })).status, 200);
  t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'nope', messages: [{ role: 'user', content: 'hi' }] }, { 'x-request-id': 'miss' })).status, 404);
  // Asked of down, answered by g: the metrics count it under g.
  t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'down', messages: [{ role: 'user', content: 'hi' }] }, { 'x-request-id': 'fell' })).status, 200);
  await until(async () => (await metricValue(tb.url, 'tracking_rows_written_total')) === 9, 'rows written');

  const get = async (path: string, auth: Record<string, string> = admin) => {
    const res = await fetch(`${tb.url}${path}`, { headers: auth });
    return { status: res.status, body: await json(res) };
  };
  const analyst = { authorization: `Bearer ${await token('analyst')}` };
  // Keyset pages of 2 over the label's 5 rows: newest first, no overlap, nothing missed.
  const ids: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const r = await get(`/api/tracking/requests?label=lab-1&limit=2${cursor === null ? '' : `&cursor=${cursor}`}`, analyst);
    t.equal(r.status, 200);
    ids.push(...r.body.requests.map((x: any) => x.broker_request_id));
    cursor = r.body.next_cursor;
    pages++;
  } while (cursor !== null && pages < 10);
  t.equal(pages, 3);
  t.same(ids, ['lab-4', 'lab-3', 'lab-2', 'lab-1', 'lab-0'], 'every row once, newest first');
  t.same((await get(`/api/tracking/requests?key=${keyId('admin-api-key-1')}&limit=100`)).body.requests.length, 5, 'by key id');
  t.same((await get('/api/tracking/requests?outcome=model_not_found')).body.requests.map((x: any) => x.broker_request_id), ['miss'], 'by outcome');
  t.equal((await get('/api/tracking/requests?model=g&deployment=d1')).body.requests.length, 7, 'by model and deployment');
  t.equal((await get(`/api/tracking/requests?from=${new Date(Date.now() + 60_000).toISOString()}`)).status, 400, 'from after to');
  t.equal((await get('/api/tracking/requests?from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z')).body.requests.length, 0, 'by time');
  t.equal((await get('/api/tracking/requests?limit=0')).body.error.code, 'invalid_request');
  t.equal((await get('/api/tracking/requests?cursor=garbage')).body.error.code, 'invalid_request');
  // Values the database cannot take are the parameters' fault: 400, not 503 and a retry.
  // A day that does not exist (Date would roll it into March), a filter given twice (one would be used unsaid).
  for (const [q, field] of [['from=2026-02-30T00:00:00Z', 'from'], ['to=2026-04-31', 'to'], ['label=a&label=b', 'label'], ['limit=5&limit=500', 'limit']]) {
    const r = await get(`/api/tracking/requests?${q}`);
    t.same([r.status, r.body.error?.code, r.body.error?.param], [400, 'invalid_request', field], q);
  }
  t.equal((await get('/api/tracking/requests?from=2024-02-29T00:00:00Z&to=2024-03-01T00:00:00%2B02:00')).status, 200, 'a leap day, and an offset');
  for (const q of ['model=a%00b', 'label=x%00', 'from=-005000-01-01T00:00:00Z']) {
    const r = await get(`/api/tracking/requests?${q}`);
    t.same([r.status, r.body.error?.code], [400, 'invalid_request'], q);
  }

  const one = await get('/api/tracking/requests/lab-3', analyst);
  t.match(one.body.request, { broker_request_id: 'lab-3', semantic_label: 'lab-1', outcome: 'ok', completion_tokens: 4, deployment: 'd1' });
  t.notOk('id' in one.body.request, 'the internal id stays internal');
  t.equal((await get('/api/tracking/requests/none')).status, 404);

  const usage = await get('/api/tracking/usage?group_by=label&bucket=hour', analyst);
  t.equal(usage.status, 200);
  const lab = usage.body.usage.find((u: any) => u.group === 'lab-1');
  t.match(lab, { requests: 5, errors: 0, completion_tokens: 20 });
  t.same([lab.cost, lab.unpriced_requests], [null, 5], 'no price for g: no cost (not 0), and the rows it leaves out');
  t.ok(lab.latency_ms.p50 > 0 && lab.latency_ms.p99 >= lab.latency_ms.p50, 'latency percentiles');
  t.equal(new Date(lab.bucket).getTime() % 3_600_000, 0, 'hour buckets');
  const byModel = (await get('/api/tracking/usage?group_by=model&bucket=day')).body.usage;
  t.same(byModel.map((u: any) => [u.group, u.requests, u.errors, u.unpriced_requests]).sort(), [['down', 1, 0, 1], ['g', 7, 0, 7], ['nope', 1, 1, 0]].sort(), 'a refusal used no tokens: nothing unpriced');
  const byServed = (await get('/api/tracking/usage?group_by=served&bucket=day')).body.usage;
  t.same(byServed.map((u: any) => [u.group, u.requests]).sort(), [['g', 8], ['nope', 1]].sort(), 'by the group that answered, as llm_requests_total counts');
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'g', outcome: 'ok' }), 8, 'which the metrics agree with');
  t.match((await get('/api/tracking/requests/fell')).body.request, { model: 'down', served_group: 'g', deployment: 'd1' });
  t.equal((await get('/api/tracking/requests/lab-3')).body.request.served_group, null, 'no fallback: none');
  t.equal(byModel.find((u: any) => u.group === 'nope').cost, 0, 'a bucket that used no tokens spent nothing: 0, not null');
  t.equal((await get('/api/tracking/usage?group_by=nothing')).status, 400);
  t.equal((await get('/api/tracking/usage?group_by=constructor')).status, 400, "an Object.prototype name is no column either");

  // RBAC: readers (analyst, manager, admin) yes; client roles no.
  t.equal((await get('/api/tracking/usage', { authorization: `Bearer ${await token('agent')}` })).status, 403);
  t.equal((await get('/api/tracking/usage', { authorization: `Bearer ${await token('manager')}` })).status, 200);
  t.equal((await get('/api/tracking/usage', {})).status, 401);
});

t.test('usage: a response-cache hit is a request, not an error', async (t) => {
  const db = await pgc.createDatabase('cache_hits');
  const tb = await startFleetBroker(t, { ...fleet, cache: { mode: 'on' } }, { ...env, DATABASE_URL: db, TRACKING_FLUSH_MS: '20' });
  for (let i = 0; i < 3; i++) t.equal((await chat(tb, { 'x-request-id': `c-${i}` })).status, 200);
  await until(async () => (await metricValue(tb.url, 'tracking_rows_written_total')) === 3, 'rows written');
  t.same((await query(db, 'SELECT outcome FROM brk_tracking.completion_request ORDER BY broker_request_id')).map((r) => r.outcome), ['ok', 'cache_hit', 'cache_hit']);
  const res = await fetch(`${tb.url}/api/tracking/usage?group_by=model`, { headers: admin });
  t.match((await json(res)).usage, [{ group: 'g', requests: 3, errors: 0 }]);
});

t.test('without DATABASE_URL: one start-up line, and the admin API says tracking is off', async (t) => {
  const tb = await startTestBroker({ INFER_ENABLED: 'false', FRONT_THREADS: '0' });
  t.teardown(() => tb.close());
  t.equal(tb.logs.filter((l) => String(l.msg).startsWith('request tracking is off')).length, 1);
  const res = await fetch(`${tb.url}/api/tracking/requests`, { headers: admin });
  t.equal(res.status, 503);
  t.equal((await json(res)).error.code, 'tracking_disabled');
  t.equal(await metricValue(tb.url, 'tracking_rows_written_total'), 0);
});
