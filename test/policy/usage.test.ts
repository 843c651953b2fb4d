import t from 'tap';
import { UsageProfiles, hourOfWeek, weekIndex } from '../../src/policy/usage.ts';

const HOUR = 3_600_000;
const WEEK = 168 * HOUR;
const MON_1030 = Date.parse('2024-01-01T10:30:00Z'); // a Monday
const SUN_2300 = Date.parse('2024-01-07T23:00:00Z');

t.test('hour-of-week is Monday-based, UTC', async (t) => {
  t.equal(hourOfWeek(MON_1030), 10);
  t.equal(hourOfWeek(SUN_2300), 167);
  t.equal(hourOfWeek(Date.parse('2024-01-07T23:59:59.999Z')), 167);
  t.equal(hourOfWeek(Date.parse('2024-01-08T00:00:00Z')), 0);
  t.equal(hourOfWeek(Date.parse('2024-01-03T15:00:00+02:00')), 2 * 24 + 13, 'offsets are converted to UTC');
  t.equal(hourOfWeek(0), 3 * 24, 'the epoch was a Thursday');
  t.equal(hourOfWeek(-HOUR), 3 * 24 - 1, 'before the epoch too');
  t.equal(weekIndex(SUN_2300), weekIndex(MON_1030), 'Sunday ends the Monday week');
  t.equal(weekIndex(SUN_2300 + HOUR), weekIndex(MON_1030) + 1);
});

t.test('records land in their bucket; profile, totals, summary', async (t) => {
  const u = new UsageProfiles();
  u.record('chat', MON_1030, { prompt: 100, completion: 50 });
  u.record('chat', MON_1030 + 10 * 60_000, { prompt: 10, completion: 5 });
  u.record('chat', SUN_2300, { prompt: 1, completion: 2 });
  const p = u.profile('chat')!;
  t.equal(p.buckets.length, 168);
  t.same(p.buckets[10], { hourOfWeek: 10, requests: 2, promptTokens: 110, completionTokens: 55, weeks: 1 });
  t.same(p.buckets[167], { hourOfWeek: 167, requests: 1, promptTokens: 1, completionTokens: 2, weeks: 1 });
  t.equal(p.buckets.filter((b) => b.requests > 0).length, 2, 'nothing anywhere else');
  t.same(p.totals, { requests: 3, promptTokens: 111, completionTokens: 57, tokens: 168 });
  t.equal(p.peakHourOfWeek, 10);
  t.equal(p.firstSeenAt, MON_1030);
  t.equal(p.lastSeenAt, SUN_2300);
  t.same(u.summary(), [{ label: 'chat', requests: 3, tokens: 168, peakHourOfWeek: 10, lastSeenAt: SUN_2300 }]);
  t.equal(u.profile('nope'), undefined);
  t.same(u.tpmProfile('nope'), new Array(168).fill(0));
});

t.test('tpmProfile averages each hour over the distinct weeks it saw traffic', async (t) => {
  const u = new UsageProfiles();
  // Monday 10:00: 6000 tokens in week 1, 12000 in week 2 (two records).
  u.record('a', MON_1030, { prompt: 5000, completion: 1000 });
  u.record('a', MON_1030 + WEEK, { prompt: 4000, completion: 2000 });
  u.record('a', MON_1030 + WEEK + 60_000, { prompt: 6000, completion: 0 });
  // Sunday 23:00, week 1 only.
  u.record('a', SUN_2300, { prompt: 600, completion: 0 });
  const tpm = u.tpmProfile('a');
  t.equal(tpm.length, 168);
  t.equal(tpm[10], (6000 + 12000) / 2 / 60, '150 tokens/min: two weeks, not three records');
  t.equal(tpm[167], 10);
  t.equal(tpm[11], 0);
  t.equal(u.profile('a')!.buckets[10]!.weeks, 2);

  // Out of order: an older week arriving later is still one new week, a repeat is not.
  u.record('a', MON_1030 - WEEK, { prompt: 0, completion: 0 });
  u.record('a', MON_1030 - WEEK, { prompt: 0, completion: 0 });
  u.record('a', MON_1030, { prompt: 0, completion: 0 });
  t.equal(u.profile('a')!.buckets[10]!.weeks, 3);
  t.equal(u.tpmProfile('a')[10], 18000 / 3 / 60);
  // A jump of many weeks forgets the older ones without losing the count.
  u.record('a', MON_1030 + 100 * WEEK, { prompt: 0, completion: 0 });
  t.equal(u.profile('a')!.buckets[10]!.weeks, 4);
});

t.test('tpmProfile without a label covers all traffic, counting weeks across labels', async (t) => {
  const u = new UsageProfiles({ maxLabels: 1 });
  u.record('a', MON_1030, { prompt: 600, completion: 0 });
  u.record('b', MON_1030 + WEEK, { prompt: 1200, completion: 0 }); // evicts a
  u.record('b', MON_1030 + WEEK, { prompt: 0, completion: 0 });
  t.same(u.labels(), ['b']);
  t.equal(u.profile('a'), undefined, 'least recently recorded label is forgotten');
  t.equal(u.tpmProfile()[10], (600 + 1200) / 2 / 60, 'totals survive eviction');
  t.equal(u.tpmProfile('b')[10], 20);
  t.same(u.coverage(), { firstSeenAt: MON_1030, lastSeenAt: MON_1030 + WEEK });
  t.equal(new UsageProfiles().coverage(), undefined);
});

t.test('bad counts add nothing; a bad time is refused', async (t) => {
  const u = new UsageProfiles();
  u.record('x', MON_1030, { prompt: Number.NaN, completion: -5 });
  t.same(u.profile('x')!.totals, { requests: 1, promptTokens: 0, completionTokens: 0, tokens: 0 });
  t.equal(u.summary()[0]!.peakHourOfWeek, 10, 'no tokens: the busiest hour by requests');
  t.throws(() => u.record('x', Number.NaN, { prompt: 1, completion: 1 }), RangeError);
});
