// Request tracking's pure parts: the bounded ring (drop oldest, put back), budgets with a
// fake clock (enforced, reset at the next UTC day or month), the spend ledger, costs,
// outcomes, COPY's text escaping, and the per-turn recorder with its bound.
import t from 'tap';
import { RowRing } from '../../src/track/ring.ts';
import { BudgetGate, periodBounds, SpendLedger, type Budget } from '../../src/track/budget.ts';
import { costOf, outcomeOf, rowOf, type TrackRow } from '../../src/track/facts.ts';
import { COLUMNS, copyLines, insertParams, type StoredRow } from '../../src/track/encode.ts';
import { RowRecorder } from '../../src/track/recorder.ts';
import { BrokerError } from '../../src/errors.ts';

t.test('ring: FIFO, drops the oldest when full, puts a failed batch back in front', async (t) => {
  const r = new RowRing<number>(4);
  for (let i = 1; i <= 4; i++) t.equal(r.push(i), 0);
  t.equal(r.push(5), 1, 'full: one dropped');
  t.same(r.take(2), [2, 3], 'the oldest (1) went');
  t.equal(r.push(6), 0);
  t.same(r.take(10), [4, 5, 6]);
  t.equal(r.size, 0);
  for (const i of [7, 8, 9]) r.push(i);
  const batch = r.take(2);
  r.push(10);
  r.push(11);
  t.equal(r.putBack(batch), 1, 'one slot free for two put back: the oldest of them drops');
  t.same(r.take(10), [8, 9, 10, 11]);
});

const DAY = 86_400_000;

t.test('budget: enforced from the cached total, with the reset time; resets at the next UTC day and month', async (t) => {
  let now = Date.parse('2026-03-31T22:00:00Z');
  const gate = new BudgetGate(() => now, () => 'EUR');
  const daily: Budget = { limit: 1, period: 'day' };
  const monthly: Budget = { limit: 5, period: 'month' };
  const day = periodBounds(now, 'day');
  const month = periodBounds(now, 'month');
  t.same(day, { start: Date.parse('2026-03-31T00:00:00Z'), end: Date.parse('2026-04-01T00:00:00Z') });
  t.same(month, { start: Date.parse('2026-03-01T00:00:00Z'), end: Date.parse('2026-04-01T00:00:00Z') });
  gate.update([
    { keyId: 'k_a', periodStart: day.start, spent: 0.5 },
    { keyId: 'k_b', periodStart: month.start, spent: 5 },
  ]);
  t.doesNotThrow(() => gate.check('k_a', daily), 'under its limit');
  t.doesNotThrow(() => gate.check('k_new', daily), 'no spend known');
  let err: BrokerError | undefined;
  try {
    gate.check('k_b', monthly);
  } catch (e) {
    err = e as BrokerError;
  }
  t.equal(err?.code, 'budget_exceeded');
  t.equal(err?.status, 429);
  t.equal(err?.retryAfter, 7200, 'Retry-After: until the reset');
  t.equal(err?.details?.reset_at, '2026-04-01T00:00:00.000Z');
  t.match(err?.message, /spent 5 EUR of its 5 EUR monthly budget; it resets at 2026-04-01T00:00:00.000Z/);
  gate.update([
    { keyId: 'k_a', periodStart: day.start, spent: 1.2 },
    { keyId: 'k_b', periodStart: month.start, spent: 5 },
  ]);
  t.throws(() => gate.check('k_a', daily), { code: 'budget_exceeded' });
  // The next UTC day is also the next month: both reset, before any new total arrives.
  now += 2 * 3_600_000;
  t.doesNotThrow(() => gate.check('k_a', daily), 'the day budget reset at midnight UTC');
  t.doesNotThrow(() => gate.check('k_b', monthly), 'the month budget reset on the 1st');
  t.equal(gate.spent('k_a', 'day'), 0);
});

t.test('spend ledger: own plus other replicas, per period, rolled over', async (t) => {
  let now = Date.parse('2026-05-10T10:00:00Z');
  const budgets = new Map<string, Budget>([
    ['k_d', { limit: 1, period: 'day' }],
    ['k_m', { limit: 1, period: 'month' }],
  ]);
  const l = new SpendLedger(() => budgets, () => now);
  t.equal(l.add('k_d', 0.25, now), true);
  t.equal(l.add('k_d', 0.25, now), true);
  t.equal(l.add('k_none', 1, now), false, 'a key without budget is not counted');
  t.equal(l.add('k_d', 1, now - DAY), false, "yesterday's row is not today's spend");
  l.add('k_m', 0.1, now);
  l.set('others', 'k_m', periodBounds(now, 'month').start, 0.4);
  t.same(l.entries(), [
    { keyId: 'k_d', periodStart: periodBounds(now, 'day').start, spent: 0.5 },
    { keyId: 'k_m', periodStart: periodBounds(now, 'month').start, spent: 0.5 },
  ]);
  now += DAY;
  t.same(
    l.entries().map((e) => e.spent),
    [0, 0.5],
    'the next day: the daily total starts again, the monthly one goes on',
  );
  l.add('k_d', 0.3, now);
  t.equal(l.entries()[0]!.spent, 0.3);
  // The database down at start-up: rows counted meanwhile are not yet in it, so what it says of this replica's earlier rows adds to them.
  l.set('own', 'k_d', periodBounds(now, 'day').start, 0.2);
  t.equal(l.entries()[0]!.spent, 0.5, "this replica's earlier spend adds to what it counted before reading it");
});

const base = (over: Partial<StoredRow> = {}): StoredRow => ({
  ...rowOf({ api: 'openai.chat', model: 'g', deployment: 'd', promptTokens: 10, completionTokens: 20 }, 'req-1', 'http', '/v1/chat/completions', 200, undefined, false, 12.5, Date.parse('2026-01-02T03:04:05.678Z')),
  cost: 0.5,
  replica: 'r1',
  ...over,
});

t.test('cost: the deployment price wins over the model group, per 1M tokens; none priced: null', async (t) => {
  const prices = new Map([
    ['g', { inputPer1M: 1, outputPer1M: 2 }],
    ['d', { inputPer1M: 100, outputPer1M: 200 }],
  ]);
  t.equal(costOf(prices, base()), (10 * 100 + 20 * 200) / 1e6);
  t.equal(costOf(prices, base({ deployment: 'other' })), (10 * 1 + 20 * 2) / 1e6);
  t.equal(costOf(prices, base({ deployment: null, model: 'x' })), null);
  t.equal(costOf(prices, { ...base({ deployment: 'other', model: 'unpriced' }), servedGroup: 'g' }), (10 * 1 + 20 * 2) / 1e6, 'a fallback group that served it is priced: no free spend through an unpriced group');
});

t.test('outcome: the stage names it, else aborted, ok or the error code', async (t) => {
  t.equal(outcomeOf({ api: 'x', outcome: 'midstream_error' }, 200, undefined, false), 'midstream_error');
  t.equal(outcomeOf({ api: 'x' }, 499, undefined, true), 'aborted');
  t.equal(outcomeOf({ api: 'x' }, 200, undefined, false), 'ok');
  t.equal(outcomeOf({ api: 'x' }, 429, 'rate_limited', false), 'rate_limited');
  // gRPC: the status is the code, 0 OK; 5 NOT_FOUND is an error, not a status under 400.
  t.equal(outcomeOf({ api: 'x' }, 0, undefined, false, 'grpc'), 'ok');
  t.equal(outcomeOf({ api: 'x' }, 5, 'model_not_found', false, 'grpc'), 'model_not_found');
  t.equal(outcomeOf({ api: 'x' }, 1, undefined, true, 'grpc'), 'aborted');
  const r: TrackRow = base();
  t.equal(r.createdAt, Date.parse('2026-01-02T03:04:05.678Z') - 12.5);
});

t.test('COPY text: one line per row, NULL as \\N, backslash, tab and newlines escaped', async (t) => {
  const line = copyLines([base({ id: 'a\\b\tc\nd\re', label: null, errorCode: 'x' })]);
  t.ok(line.endsWith('\n'));
  const fields = line.slice(0, -1).split('\t');
  t.equal(fields.length, COLUMNS.length);
  t.equal(fields[0], 'a\\\\b\\tc\\nd\\re');
  t.equal(fields[COLUMNS.findIndex((c) => c[0] === 'semantic_label')], '\\N');
  t.equal(fields[COLUMNS.findIndex((c) => c[0] === 'created_at')], '2026-01-02T03:04:05.665Z');
  t.equal(fields[COLUMNS.findIndex((c) => c[0] === 'cost')], '0.5');
  const params = insertParams([base(), base({ id: 'req-2' })]);
  t.equal(params.length, COLUMNS.length, 'one array per column');
  t.same(params[0], ['req-1', 'req-2']);
});

t.test('recorder: one hand-over per turn, rows made at the end of the turn, bounded', async (t) => {
  const handed: TrackRow[][] = [];
  let dropped = 0;
  const rec = new RowRecorder({ hand: (rows) => handed.push(rows), maxRows: 3, dropped: (n) => (dropped += n), now: () => 1_000_000 });
  const facts = rec.start('infer');
  for (let i = 0; i < 5; i++) rec.end({ ...facts }, `r${i}`, 0, 'http', '/v1/infer', 200, undefined, false);
  const late = rec.start('openai.chat');
  rec.end(late, 'late', 0, 'http', '/v1/chat/completions', 200, undefined, false);
  late.completionTokens = 7; // filled in after the reply, in the same turn
  t.equal(handed.length, 0, 'nothing handed over within the turn');
  await new Promise((r) => setImmediate(r));
  t.equal(handed.length, 1, 'one hand-over for the turn');
  t.same(
    handed[0]!.map((r) => r.id),
    ['r3', 'r4', 'late'],
    'bounded: the oldest dropped',
  );
  t.equal(dropped, 3);
  t.equal(handed[0]![2]!.completionTokens, 7, 'the row has what was filled in after the reply');
});

t.test('recorder with handEveryMs: the rows of several turns in one hand-over; flush() hands at once and cancels the timer', async (t) => {
  // An interval far longer than the three turns take, even on a loaded machine.
  const every = 1000;
  const handed: TrackRow[][] = [];
  const rec = new RowRecorder({ hand: (rows) => handed.push(rows), maxRows: 100, handEveryMs: every, dropped: () => undefined, now: () => 1_000_000 });
  for (let turn = 0; turn < 3; turn++) {
    rec.end(rec.start('infer'), `t${turn}`, 0, 'http', '/v1/infer', 200, undefined, false);
    await new Promise((r) => setImmediate(r));
  }
  t.equal(handed.length, 0, 'held across turns until the interval ends');
  for (let waited = 0; handed.length === 0 && waited < 10 * every; waited += 20) await new Promise((r) => setTimeout(r, 20));
  t.same(
    handed.map((b) => b.map((r) => r.id)),
    [['t0', 't1', 't2']],
    'one hand-over for the three turns',
  );
  rec.end(rec.start('infer'), 'last', 0, 'http', '/v1/infer', 200, undefined, false);
  rec.flush();
  t.same(handed.at(-1)!.map((r) => r.id), ['last'], 'flush hands what is held now (a stopping thread)');
  await new Promise((r) => setTimeout(r, every + 200));
  t.equal(handed.length, 2, 'and the timer it cancelled hands nothing more');
});

// A 7 MB model name (any client may send one; its 404 is still a row) made each buffered row
// megabytes and a batch too large to encode: the writer retried it for ever, no row after it written.
t.test('a row keeps at most 256 characters of a client-chosen text', async (t) => {
  const huge = 'm'.repeat(7_000_000);
  const r = rowOf({ api: 'openai.chat', model: huge, subject: huge, label: huge }, 'req-2', 'http', '/v1/chat/completions', 404, 'model_not_found', false, 1, Date.now());
  t.equal(r.model!.length, 256);
  t.equal(r.subject!.length, 256);
  t.equal(r.label!.length, 256);
  t.equal(rowOf({ api: 'openai.chat', model: 'llama3' }, 'req-3', 'http', '/v1/chat/completions', 200, undefined, false, 1, Date.now()).model, 'llama3', 'a real name as it is');
});

// A monthly budget's spend is read back from this month's rows: a retention shorter than the
// month so far dropped them, and a key over its budget was served again after a restart.
t.test('retention keeps at least the month so far while a key has a monthly budget', async (t) => {
  const { keptDays } = await import('../../src/track/writer.ts');
  const dec20 = Date.parse('2026-12-20T10:00:00Z');
  t.equal(keptDays(2, false, dec20), 2, 'no monthly budget: as configured');
  t.equal(keptDays(2, true, dec20), 20, 'December 1 to 20');
  t.equal(keptDays(30, true, dec20), 30, 'longer already');
  t.equal(keptDays(2, true, Date.parse('2026-12-01T00:30:00Z')), 2, 'the 1st: nothing older to keep');
});
