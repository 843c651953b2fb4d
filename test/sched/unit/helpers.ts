// Shared by the scheduler and policy unit tests: a fake clock, a seeded random
// source, and a way to ask whether a promise has settled without waiting on time.

export interface FakeClock {
  now: number;
  readonly read: () => number;
  advance(ms: number): void;
}

export function fakeClock(start = 1_700_000_000_000): FakeClock {
  const c: FakeClock = {
    now: start,
    read: () => c.now,
    advance: (ms) => {
      c.now += ms;
    },
  };
  return c;
}

/** Seeded PRNG (the project's mulberry32), so runs are repeatable. Values in [0, 1). */
export { mulberry32 as seeded } from '../../../scripts/train/prng.ts';

/** Lets every queued microtask and one macrotask turn run. */
export function ticks(): Promise<void> {
  return new Promise((r) => setImmediate(r));
}

/** Whether `p` has settled after pending microtasks ran; never waits on wall-clock time. */
export async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => {
      done = true;
    },
    () => {
      done = true;
    },
  );
  await ticks();
  return done;
}
