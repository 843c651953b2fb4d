import t from 'tap';
import { PtuAdvisor } from '../../src/policy/ptu.ts';
import { UsageProfiles } from '../../src/policy/usage.ts';

const HOUR = 3_600_000;
const MON_10 = Date.parse('2024-01-01T10:00:00Z');
const TUE_10 = MON_10 + 24 * HOUR;

/** `tpm` tokens/min for one hour, as one record. */
function hourAt(u: UsageProfiles, label: string, at: number, tpm: number): void {
  u.record(label, at, { prompt: tpm * 60 * 0.75, completion: tpm * 60 * 0.25 });
}

function fixture() {
  const u = new UsageProfiles();
  hourAt(u, 'chat', MON_10, 7000); // peak
  hourAt(u, 'chat', TUE_10, 1400); // 24 h later: enough coverage
  hourAt(u, 'tiny', MON_10, 700);
  hourAt(u, 'tiny', TUE_10, 100);
  hourAt(u, 'odd', MON_10, 7001);
  hourAt(u, 'odd', TUE_10, 1);
  hourAt(u, 'short', MON_10, 5000);
  hourAt(u, 'short', MON_10 + HOUR, 5000); // only 1 h observed
  return u;
}

t.test('actions and recommended capacity from the weekly profile', async (t) => {
  const a = new PtuAdvisor(fixture());
  a.register({ name: 'up', capacityTpm: 8000, label: 'chat' }); // 87.5 %
  a.register({ name: 'keep', capacityTpm: 12_000, label: 'chat' }); // 58 %
  a.register({ name: 'down', capacityTpm: 30_000, label: 'chat' }); // 23 %
  a.register({ name: 'tiny', capacityTpm: 5000, label: 'tiny' });
  a.register({ name: 'odd', capacityTpm: 10_000, label: 'odd' });
  a.register({ name: 'ghost', capacityTpm: 5000, label: 'ghost' });
  a.register({ name: 'short', capacityTpm: 5000, label: 'short' });
  const r = Object.fromEntries(a.recommendations().map((x) => [x.name, x]));

  t.match(r['up'], { capacityTpm: 8000, peakTpm: 7000, peakUtilisation: 0.875, action: 'scale_up', recommendedCapacityTpm: 10_000 });
  t.equal(r['up']!.averageTpm, (7000 + 1400) / 168, 'average over the whole week');
  t.match(r['up']!.reason, /88%/);
  t.match(r['keep'], { action: 'keep', recommendedCapacityTpm: 10_000 });
  t.match(r['down'], { action: 'scale_down', recommendedCapacityTpm: 10_000 });
  t.match(r['tiny'], { peakTpm: 700, action: 'scale_down', recommendedCapacityTpm: 1000 }, '700 / 0.7 is 1000, not a hair above');
  t.match(r['odd'], { action: 'keep', recommendedCapacityTpm: 11_000 }, '7001 / 0.7 = 10001.4 rounds up to the next 1000');
  t.match(r['ghost'], { peakTpm: 0, action: 'insufficient_data', recommendedCapacityTpm: 5000 });
  t.match(r['short'], { peakTpm: 5000, action: 'insufficient_data', recommendedCapacityTpm: 5000 });
  t.match(r['short']!.reason, /1\.0 h/);
});

t.test('a deployment without a label serves all traffic; options move the thresholds', async (t) => {
  const u = new UsageProfiles();
  hourAt(u, 'a', MON_10, 3000);
  hourAt(u, 'b', MON_10, 3000);
  hourAt(u, 'b', TUE_10, 10);
  const a = new PtuAdvisor(u, { targetUtilisation: 0.5, scaleUpAt: 0.6, scaleDownBelow: 0.1, capacityStepTpm: 500, minObservedHours: 0 });
  a.register({ name: 'all', capacityTpm: 10_000 });
  a.register({ name: 'a', capacityTpm: 3000, label: 'a' });
  const [all, onlyA] = a.recommendations();
  t.match(all, { peakTpm: 6000, peakUtilisation: 0.6, action: 'scale_up', recommendedCapacityTpm: 12_000 }, 'scaleUpAt is inclusive');
  t.match(onlyA, { peakTpm: 3000, action: 'scale_up', recommendedCapacityTpm: 6000 }, 'one hour is enough with minObservedHours 0');

  t.throws(() => new PtuAdvisor(u, { targetUtilisation: 0.9 }), RangeError, 'target above scaleUpAt');
  t.throws(() => new PtuAdvisor(u, { targetUtilisation: 0 }), RangeError);
  t.throws(() => a.register({ name: 'x', capacityTpm: 0 }), RangeError);
});

t.test('register replaces by name; list returns copies', async (t) => {
  const a = new PtuAdvisor(new UsageProfiles());
  a.register({ name: 'd', capacityTpm: 1000 });
  a.register({ name: 'd', capacityTpm: 2000, label: 'x' });
  const l = a.list();
  t.same(l, [{ name: 'd', capacityTpm: 2000, label: 'x' }]);
  l[0]!.capacityTpm = 1;
  t.equal(a.list()[0]!.capacityTpm, 2000);
  t.equal(a.unregister('d'), true);
  t.same(a.list(), []);
});

t.test('headroom status thresholds', async (t) => {
  const a = new PtuAdvisor(new UsageProfiles());
  a.register({ name: 'd', capacityTpm: 10_000 });
  t.same(a.headroom('d', 8499), { name: 'd', capacityTpm: 10_000, currentTpm: 8499, headroomTpm: 1501, utilisation: 0.8499, status: 'ok' });
  t.equal(a.headroom('d', 8500)!.status, 'warning', 'at scaleUpAt');
  t.equal(a.headroom('d', 9499)!.status, 'warning');
  t.equal(a.headroom('d', 9500)!.status, 'critical', 'at criticalAt');
  t.match(a.headroom('d', 12_000), { headroomTpm: -2000, utilisation: 1.2, status: 'critical' });
  t.equal(a.headroom('d', 0)!.status, 'ok');
  t.equal(a.headroom('nope', 1), undefined);
  const strict = new PtuAdvisor(new UsageProfiles(), { scaleUpAt: 0.8, criticalAt: 0.9 });
  strict.register({ name: 'd', capacityTpm: 10_000 });
  t.equal(strict.headroom('d', 8000)!.status, 'warning');
  t.equal(strict.headroom('d', 9000)!.status, 'critical');
});
