// The circuit breaker and bans alone, on a fake clock.
import t from 'tap';
import { CircuitBreaker, DEFAULT_BREAKER, type BreakerSettings } from '../../src/fleet/breaker.ts';
import { Bans } from '../../src/fleet/bans.ts';
import { fakeClock } from '../sched/unit/helpers.ts';

const settings = (o: Partial<BreakerSettings> = {}): BreakerSettings => ({ ...DEFAULT_BREAKER, failureThreshold: 3, openMs: 1_000, maxOpenMs: 5_000, halfOpenTrials: 2, ...o });

t.test('trips on N consecutive failures; a success in between resets the count', async (t) => {
  const clock = fakeClock();
  const b = new CircuitBreaker(settings(), clock.read);
  t.notOk(b.record(false));
  t.notOk(b.record(false));
  t.notOk(b.record(true), 'a success');
  t.notOk(b.record(false));
  t.notOk(b.record(false));
  t.equal(b.state, 'closed', 'two in a row after the success: still closed');
  t.ok(b.record(false, 'HTTP 500'), 'the third in a row trips it');
  t.equal(b.state, 'open');
  t.equal(b.view().lastError, 'HTTP 500');
  t.equal(b.view().trips, 1);
});

t.test('trips on the failure ratio over the window, with a minimum of requests', async (t) => {
  const clock = fakeClock();
  const b = new CircuitBreaker(settings({ failureThreshold: 100, failureRatio: 0.5, minRequests: 10, windowMs: 10_000 }), clock.read);
  // Alternating: never 2 failures in a row, ratio 0.5.
  for (let i = 0; i < 4; i++) {
    b.record(true);
    b.record(false);
  }
  t.equal(b.state, 'closed', '8 requests: under the minimum');
  b.record(true);
  t.equal(b.state, 'closed', '9 requests, ratio 4/9');
  b.record(false);
  t.equal(b.state, 'open', '10 requests, ratio 0.5: open');

  // Outcomes older than the window no longer count.
  const c = new CircuitBreaker(settings({ failureThreshold: 100, failureRatio: 0.5, minRequests: 4, windowMs: 10_000 }), clock.read);
  c.record(false);
  c.record(false);
  c.record(true);
  clock.advance(11_000);
  c.record(true);
  c.record(false);
  t.equal(c.view().window.requests, 2, 'the old outcomes fell out of the window');
  t.equal(c.state, 'closed');
});

t.test('open → half-open after openMs, doubled per trip in a row, capped; K successes close it', async (t) => {
  const clock = fakeClock();
  const b = new CircuitBreaker(settings(), clock.read);
  for (let i = 0; i < 3; i++) b.record(false);
  clock.advance(999);
  t.notOk(b.tick(), 'not yet');
  clock.advance(1);
  t.ok(b.tick());
  t.equal(b.state, 'half_open');
  t.equal(b.trialsNeeded, 2);
  t.ok(b.record(false), 'a failed trial re-opens it');
  t.equal(b.state, 'open');
  clock.advance(1_999);
  t.notOk(b.tick(), 'second trip in a row: open for 2 s');
  clock.advance(1);
  t.ok(b.tick());
  b.record(false);
  clock.advance(4_000);
  t.ok(b.tick(), 'third: 4 s');
  b.record(false);
  clock.advance(5_000);
  t.ok(b.tick(), 'fourth: 8 s capped at maxOpenMs 5 s');
  t.notOk(b.record(true), 'one success of two');
  t.equal(b.state, 'half_open');
  t.ok(b.record(true), 'the second closes it');
  t.equal(b.state, 'closed');
  // Closed again: the streak starts over, openMs once more.
  for (let i = 0; i < 3; i++) b.record(false);
  clock.advance(1_000);
  t.ok(b.tick(), 'back to 1 s after a close');
});

t.test('forced states: a forced open holds until reset or close; half-open and reset by hand', async (t) => {
  const clock = fakeClock();
  const b = new CircuitBreaker(settings(), clock.read);
  t.ok(b.force('open'));
  t.ok(b.view().forced);
  clock.advance(60_000);
  t.notOk(b.tick(), 'a forced open does not turn half-open by time');
  t.equal(b.state, 'open');
  t.ok(b.force('half_open'));
  t.equal(b.state, 'half_open');
  t.notOk(b.view().forced);
  t.ok(b.force('closed'));
  t.equal(b.state, 'closed');
  b.force('open');
  t.ok(b.reset());
  t.equal(b.state, 'closed');
  t.equal(b.view().window.requests, 0, 'reset clears the window');
  t.equal(b.view().transitions, 5);
});

t.test('bans: by server, by model, by pair; TTLs lapse by themselves', async (t) => {
  const clock = fakeClock();
  const bans = new Bans(clock.read);
  bans.add('server', 's1', null, 'flaky', null);
  bans.add('model', null, 'm2', 'bad weights', 5_000);
  bans.add('pair', 's2', 'm1', 'oom', 1_000);
  t.equal(bans.find('s1', 'anything')?.reason, 'flaky');
  t.equal(bans.find('s3', 'm2')?.reason, 'bad weights');
  t.equal(bans.find('s2', 'm1')?.reason, 'oom');
  t.equal(bans.find('s2', 'm3'), undefined);
  t.equal(bans.nextExpiry(), clock.now + 1_000);
  clock.advance(1_000);
  t.equal(bans.find('s2', 'm1'), undefined, 'the pair ban lapsed');
  t.ok(bans.expire());
  t.equal(bans.list().length, 2);
  clock.advance(4_000);
  t.equal(bans.list().length, 1, 'the model ban lapsed too');
  t.equal(bans.remove((b) => b.server === 's1'), 1);
  t.equal(bans.list().length, 0);
});
