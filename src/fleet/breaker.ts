// A circuit breaker for one server × model: closed, open, half-open. Pure state with an
// injected clock; the fleet manager (control plane) feeds it outcomes from every thread
// and mirrors its state into the shared route bits that the schedulers read.
//
// - Trips on `failureThreshold` consecutive failures, or when the failure ratio over
//   `windowMs` reaches `failureRatio` with at least `minRequests` outcomes in the window.
// - Stays open `openMs`, doubled for each trip in a row, at most `maxOpenMs`.
// - Half-open lets `halfOpenTrials` trial requests through: that many successes close
//   it, any failure opens it again (for longer).
// - Operators can force it open (held until reset or close), closed or half-open.
// A 429 or a client going away is not a failure: callers never report those.

export type BreakerState = 'closed' | 'open' | 'half_open';

export interface BreakerSettings {
  readonly failureThreshold: number;
  readonly failureRatio: number;
  readonly windowMs: number;
  readonly minRequests: number;
  readonly openMs: number;
  readonly maxOpenMs: number;
  readonly halfOpenTrials: number;
}

export const DEFAULT_BREAKER: BreakerSettings = Object.freeze({
  failureThreshold: 3,
  failureRatio: 0.5,
  windowMs: 60_000,
  minRequests: 20,
  openMs: 10_000,
  maxOpenMs: 300_000,
  halfOpenTrials: 2,
});

const BUCKETS = 10;

export interface BreakerView {
  readonly state: BreakerState;
  readonly forced: boolean;
  readonly consecutiveFailures: number;
  readonly window: { readonly requests: number; readonly failures: number; readonly failureRatio: number };
  readonly trips: number;
  readonly openedAt: string | null;
  readonly halfOpenAt: string | null;
  readonly trialsNeeded: number;
  readonly lastFailureAt: string | null;
  readonly lastSuccessAt: string | null;
  readonly lastError: string | null;
  readonly transitions: number;
}

export class CircuitBreaker {
  state: BreakerState = 'closed';
  /** Forced open by an operator: no half-open by time, only reset or close ends it. */
  forced = false;
  consecutiveFailures = 0;
  /** Trips in a row without a close between them: the open time doubles with each. */
  private streak = 0;
  trips = 0;
  transitions = 0;
  openedAt = 0;
  /** When an open breaker turns half-open (epoch ms). */
  halfOpenAt = 0;
  /** Successes still needed in half-open. */
  trialsNeeded = 0;
  lastFailureAt = 0;
  lastSuccessAt = 0;
  lastError: string | null = null;
  private readonly ok = new Array<number>(BUCKETS).fill(0);
  private readonly bad = new Array<number>(BUCKETS).fill(0);
  private readonly bucketAt = new Array<number>(BUCKETS).fill(-1);

  constructor(
    private settings: BreakerSettings,
    private readonly now: () => number,
  ) {}

  configure(settings: BreakerSettings): void {
    this.settings = settings;
  }

  /** An outcome of a request to this server × model. Returns true when the state changed. */
  record(success: boolean, error?: string): boolean {
    const t = this.now();
    this.count(t, success);
    if (success) {
      this.lastSuccessAt = t;
      this.consecutiveFailures = 0;
      if (this.state === 'half_open' && --this.trialsNeeded <= 0) return this.to('closed', t);
      return false;
    }
    this.lastFailureAt = t;
    this.lastError = error ?? this.lastError;
    this.consecutiveFailures++;
    if (this.state === 'half_open') return this.trip(t);
    if (this.state === 'closed' && this.shouldTrip(t)) return this.trip(t);
    return false;
  }

  /** Open → half-open once its time is up (the manager calls this from a timer). */
  tick(): boolean {
    const t = this.now();
    if (this.state === 'open' && !this.forced && t >= this.halfOpenAt) return this.to('half_open', t);
    return false;
  }

  force(state: BreakerState): boolean {
    const t = this.now();
    if (state === 'open') {
      const changed = this.state !== 'open';
      if (changed) this.trip(t);
      this.forced = true;
      return changed;
    }
    this.forced = false;
    if (state === 'closed') this.streak = 0;
    return this.to(state, t);
  }

  /** Back to a fresh closed breaker: counts, window and streak cleared. */
  reset(): boolean {
    const changed = this.state !== 'closed';
    this.forced = false;
    this.streak = 0;
    this.consecutiveFailures = 0;
    this.ok.fill(0);
    this.bad.fill(0);
    this.bucketAt.fill(-1);
    if (changed) this.to('closed', this.now());
    return changed;
  }

  view(): BreakerView {
    const w = this.windowCounts(this.now());
    const iso = (t: number): string | null => (t > 0 ? new Date(t).toISOString() : null);
    return {
      state: this.state,
      forced: this.forced,
      consecutiveFailures: this.consecutiveFailures,
      window: { requests: w.requests, failures: w.failures, failureRatio: w.requests > 0 ? w.failures / w.requests : 0 },
      trips: this.trips,
      openedAt: this.state === 'closed' ? null : iso(this.openedAt),
      halfOpenAt: this.state === 'open' && !this.forced ? iso(this.halfOpenAt) : null,
      trialsNeeded: this.state === 'half_open' ? this.trialsNeeded : 0,
      lastFailureAt: iso(this.lastFailureAt),
      lastSuccessAt: iso(this.lastSuccessAt),
      lastError: this.lastError,
      transitions: this.transitions,
    };
  }

  private shouldTrip(t: number): boolean {
    const s = this.settings;
    if (this.consecutiveFailures >= s.failureThreshold) return true;
    const w = this.windowCounts(t);
    return w.requests >= s.minRequests && w.failures / w.requests >= s.failureRatio;
  }

  private trip(t: number): boolean {
    this.trips++;
    this.streak++;
    const s = this.settings;
    this.openedAt = t;
    this.halfOpenAt = t + Math.min(s.maxOpenMs, s.openMs * 2 ** Math.min(this.streak - 1, 20));
    return this.to('open', t, true);
  }

  private to(state: BreakerState, t: number, force = false): boolean {
    if (this.state === state && !force) return false;
    const changed = this.state !== state;
    this.state = state;
    if (state === 'half_open') {
      this.trialsNeeded = this.settings.halfOpenTrials;
      this.openedAt ||= t;
    }
    if (state === 'closed') {
      this.streak = 0;
      this.consecutiveFailures = 0;
      this.openedAt = 0;
    }
    if (changed) this.transitions++;
    return changed;
  }

  private count(t: number, success: boolean): void {
    const width = this.settings.windowMs / BUCKETS;
    const n = Math.floor(t / width);
    const i = n % BUCKETS;
    if (this.bucketAt[i] !== n) {
      this.bucketAt[i] = n;
      this.ok[i] = 0;
      this.bad[i] = 0;
    }
    if (success) this.ok[i]!++;
    else this.bad[i]!++;
  }

  private windowCounts(t: number): { requests: number; failures: number } {
    const width = this.settings.windowMs / BUCKETS;
    const n = Math.floor(t / width);
    let requests = 0;
    let failures = 0;
    for (let i = 0; i < BUCKETS; i++) {
      if (this.bucketAt[i]! <= n - BUCKETS) continue;
      requests += this.ok[i]! + this.bad[i]!;
      failures += this.bad[i]!;
    }
    return { requests, failures };
  }
}
