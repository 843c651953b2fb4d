// The tracking writer against a real PostgreSQL, through a TCP proxy the test can freeze:
// a row the database cannot store never holds back the rows behind it, a write that gets
// no answer (a half-open connection) is given up and retried on a new connection, and
// shutdown keeps to its deadline whatever a write is doing.
import t from 'tap';
import { createServer, connect, type Socket } from 'node:net';
import pg from 'pg';
import { TrackingWriter } from '../../src/track/writer.ts';
import { partitionName } from '../../src/track/migrate.ts';
import { rowOf, type TrackRow } from '../../src/track/facts.ts';
import { createMetrics } from '../../src/obs/metrics.ts';
import { createLogger } from '../../src/obs/logger.ts';
import { startPostgres } from '../helpers/postgres.ts';
import type { TrackingConfig } from '../../src/config/env.ts';

const pgc = await startPostgres(t);

/** A TCP proxy to PostgreSQL; frozen, its open connections pass nothing (new ones still do). */
async function proxyTo(port: number) {
  const pairs: { client: Socket; server: Socket; frozen?: boolean }[] = [];
  let frozen = false;
  const srv = createServer((client) => {
    const server = connect(port, '127.0.0.1');
    const pair: { client: Socket; server: Socket; frozen?: boolean } = { client, server };
    pairs.push(pair);
    client.on('data', (d) => (frozen && pair.frozen ? undefined : server.write(d)));
    server.on('data', (d) => (frozen && pair.frozen ? undefined : client.write(d)));
    client.on('error', () => server.destroy());
    server.on('error', () => client.destroy());
    client.on('close', () => server.destroy());
    server.on('close', () => client.destroy());
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => {
    for (const p of pairs) (p.client.destroy(), p.server.destroy());
    srv.close();
  });
  return {
    port: (srv.address() as { port: number }).port,
    /** Freezes the connections open now. */
    freeze() {
      frozen = true;
      for (const p of pairs) p.frozen = true;
    },
  };
}

let n = 0;
const row = (model: string): TrackRow => rowOf({ api: 'openai.chat', model, deployment: 'd' }, `req-${++n}`, 'http', '/v1/chat/completions', 200, undefined, false, 5, Date.now());

function writer(databaseUrl: string, over: Partial<TrackingConfig> = {}, writeTimeoutMs?: number) {
  const metrics = createMetrics({ defaults: false });
  const config: TrackingConfig = { databaseUrl, bufferRows: 1000, batchRows: 2, flushMs: 20, retentionDays: 30, partitionsAhead: 1, poolMax: 2, writeMode: 'copy', ...over };
  const w = new TrackingWriter({ config, replica: 'r', logger: createLogger('silent'), metrics, prices: () => ({ models: new Map(), currency: 'USD' }) as never, budgets: () => new Map(), onSpend: () => undefined, ...(writeTimeoutMs !== undefined ? { writeTimeoutMs } : {}) });
  const value = async (name: string, labels: Record<string, string> = {}): Promise<number> => {
    const m = (await metrics.registry.getMetricsAsJSON()).find((x) => x.name === name);
    return m?.values.find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l))?.value ?? 0;
  };
  return { w, value };
}

async function rows(url: string): Promise<{ id: string; model: string }[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query<{ id: string; model: string }>('SELECT broker_request_id AS id, model FROM brk_tracking.completion_request ORDER BY created_at, broker_request_id')).rows;
  } finally {
    await c.end();
  }
}

async function until(cond: () => Promise<boolean>, what: string, ms = 15_000): Promise<void> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

for (const writeMode of ['copy', 'insert'] as const) {
  t.test(`${writeMode}: a model name with a NUL in it (from a client) is stored, and the rows after it too`, async (t) => {
    const db = await pgc.createDatabase(`nul_${writeMode}`);
    const { w, value } = writer(db, { writeMode });
    await w.start();
    w.accept([row('nul\0here'), row('fine')]);
    w.accept([row('after')]);
    await until(async () => (await rows(db)).length === 3, 'three rows');
    t.same((await rows(db)).map((r) => r.model), ['nul\uFFFDhere', 'fine', 'after']);
    t.equal(await value('tracking_flush_failures_total'), 0);
    await w.close(Date.now() + 2000);
  });
}

t.test('a batch the database refuses for its data is dropped, counted, and the rows after it are written', async (t) => {
  const db = await pgc.createDatabase('invalid');
  const { w, value } = writer(db, { batchRows: 1 });
  await w.start();
  // retries is a smallint column: 70,000 is a data exception (SQLSTATE 22003), written again it fails again.
  w.accept([{ ...row('overflow'), retries: 70_000 }]);
  w.accept([row('next')]);
  await until(async () => (await rows(db)).length === 1, 'the next row');
  t.same((await rows(db)).map((r) => r.model), ['next']);
  t.equal(await value('tracking_rows_dropped_total', { reason: 'invalid' }), 1);
  await w.close(Date.now() + 2000);
});

t.test('a write with no answer (a frozen connection) is given up and retried on a new connection; shutdown keeps its deadline', async (t) => {
  const db = await pgc.createDatabase('frozen');
  const proxy = await proxyTo(pgc.port);
  const url = new URL(db);
  url.port = String(proxy.port);
  const { w, value } = writer(url.toString(), { batchRows: 1 }, 300);
  await w.start();
  w.accept([row('before')]);
  await until(async () => (await rows(db)).length === 1, 'the first row');
  proxy.freeze();
  w.accept([row('during')]);
  await until(async () => (await value('tracking_flush_failures_total')) >= 1, 'the hung write given up');
  await until(async () => (await rows(db)).map((r) => r.model).includes('during'), 'the row written on a new connection');
  t.pass('written after the timeout, on a fresh connection');

  // Shutdown with a write hung again: close() returns by its deadline, the row counted as dropped.
  proxy.freeze();
  w.accept([row('at-shutdown')]);
  await new Promise((r) => setTimeout(r, 50));
  const began = Date.now();
  await w.close(began + 150);
  t.ok(Date.now() - began < 2_000, `close returned at its deadline (${Date.now() - began} ms), not when the write gave up`);
  t.equal(await value('tracking_rows_dropped_total', { reason: 'shutdown' }), 1, 'the row in flight counted as dropped');
});

for (const writeMode of ['copy', 'insert'] as const) {
  t.test(`${writeMode}: a write blocked behind a lock past the write timeout is ended by the server, so its retry stores each row once`, async (t) => {
    const db = await pgc.createDatabase(`locked_${writeMode}`);
    const { w, value } = writer(db, { batchRows: 3, writeMode }, 600);
    await w.start();
    w.accept([row('warm')]);
    await until(async () => (await rows(db)).length === 1, 'the first row');
    // Another session holds the table (a partition upkeep queued behind a long report, say)
    // for longer than the writer waits: the write given up on must not commit afterwards.
    const locker = new pg.Client({ connectionString: db });
    await locker.connect();
    await locker.query('BEGIN');
    // Today's partition: the statement starts, its rows all sent, and waits there to route them.
    await locker.query(`LOCK TABLE brk_tracking.${partitionName(Date.now())} IN ACCESS EXCLUSIVE MODE`);
    w.accept([row('a'), row('b'), row('c')]);
    await until(async () => (await value('tracking_flush_failures_total')) >= 2, 'the blocked write given up, then tried again');
    await locker.query('COMMIT');
    await locker.end();
    await until(async () => (await rows(db)).length >= 4, 'the rows written once the lock is gone');
    await new Promise((r) => setTimeout(r, 1000));
    const stored = (await rows(db)).map((r) => r.id);
    t.equal(stored.length, new Set(stored).size, `no row stored twice: ${stored.length} rows`);
    t.equal(stored.length, 4);
    await w.close(Date.now() + 2000);
  });
}

t.test('with the database down from the start, the budgets still count this replica\'s spend', async (t) => {
  const metrics = createMetrics({ defaults: false });
  const config: TrackingConfig = { databaseUrl: 'postgres://nobody@127.0.0.1:1/none', bufferRows: 1000, batchRows: 100, flushMs: 20, retentionDays: 30, partitionsAhead: 1, poolMax: 2, writeMode: 'copy' };
  const pushed: { keyId: string; spent: number }[][] = [];
  const w = new TrackingWriter({
    config,
    replica: 'r',
    logger: createLogger('silent'),
    metrics,
    prices: () => ({ models: new Map([['m', { inputPer1M: 1_000_000, outputPer1M: 1_000_000 }]]), currency: 'USD' }) as never,
    budgets: () => new Map([['k_1', { limit: 1, period: 'day' as const }]]),
    onSpend: (entries) => pushed.push(entries.map((e) => ({ keyId: e.keyId, spent: e.spent }))),
  });
  void w.start();
  w.accept([{ ...row('m'), keyId: 'k_1', promptTokens: 2, completionTokens: 3 }]);
  await until(async () => pushed.some((entries) => entries.some((e) => e.keyId === 'k_1' && e.spent >= 5)), 'the spend pushed to the gates', 3_000);
  t.pass('pushed although the database never answered: the gates refuse a key past its budget');
  await w.close(Date.now() + 200);
});
