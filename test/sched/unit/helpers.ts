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

/** mulberry32: a small seeded PRNG, so runs are repeatable. Values in [0, 1). */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let x = a;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

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
