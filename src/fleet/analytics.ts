// Per server × model request outcomes in one-minute buckets over the last
// `historyWindowMinutes` (the orchestrator's /analytics/*). Pure, injected clock.

interface Bucket {
  minute: number;
  requests: number;
  errors: number;
  failedAttempts: number;
  ttftSum: number;
  ttftCount: number;
  durationSum: number;
  tokens: number;
}

export interface Totals {
  readonly requests: number;
  readonly errors: number;
  readonly failedAttempts: number;
  readonly errorRate: number;
  readonly avgTtftMs: number | null;
  readonly avgDurationMs: number | null;
  readonly tokens: number;
}

export class FleetAnalytics {
  private readonly buckets = new Map<string, Bucket[]>();

  constructor(
    private windowMinutes: number,
    private readonly now: () => number,
  ) {}

  setWindow(minutes: number): void {
    this.windowMinutes = minutes;
  }

  get window(): number {
    return this.windowMinutes;
  }

  private bucket(server: string, model: string): Bucket {
    const key = `${server}\u0000${model}`;
    const minute = Math.floor(this.now() / 60_000);
    let list = this.buckets.get(key);
    if (list === undefined) this.buckets.set(key, (list = []));
    let b = list[list.length - 1];
    if (b === undefined || b.minute !== minute) {
      b = { minute, requests: 0, errors: 0, failedAttempts: 0, ttftSum: 0, ttftCount: 0, durationSum: 0, tokens: 0 };
      list.push(b);
      while (list.length > 0 && list[0]!.minute <= minute - this.windowMinutes) list.shift();
    }
    return b;
  }

  /** A finished request on server × model (ok false: it failed after its attempt began). */
  finished(server: string, model: string, ok: boolean, ttftMs: number | null, durationMs: number, tokens: number): void {
    const b = this.bucket(server, model);
    b.requests++;
    if (!ok) b.errors++;
    if (ttftMs !== null) {
      b.ttftSum += ttftMs;
      b.ttftCount++;
    }
    b.durationSum += durationMs;
    b.tokens += tokens;
  }

  /** An attempt that failed before its first byte (the request may have been retried elsewhere). */
  attemptFailed(server: string, model: string): void {
    this.bucket(server, model).failedAttempts++;
  }

  /** Totals per server × model over the window. */
  byPair(): { server: string; model: string; totals: Totals }[] {
    const since = Math.floor(this.now() / 60_000) - this.windowMinutes;
    const out: { server: string; model: string; totals: Totals }[] = [];
    for (const [key, list] of this.buckets) {
      const [server, model] = key.split('\u0000') as [string, string];
      const t = sum(list.filter((b) => b.minute > since));
      if (t.requests + t.failedAttempts > 0) out.push({ server, model, totals: t });
    }
    return out;
  }

  /** Totals per server over the window. */
  byServer(): Map<string, Totals> {
    const since = Math.floor(this.now() / 60_000) - this.windowMinutes;
    const lists = new Map<string, Bucket[]>();
    for (const [key, list] of this.buckets) {
      const server = key.split('\u0000')[0]!;
      lists.set(server, [...(lists.get(server) ?? []), ...list.filter((b) => b.minute > since)]);
    }
    return new Map([...lists].map(([s, l]) => [s, sum(l)]));
  }

  total(): Totals {
    const since = Math.floor(this.now() / 60_000) - this.windowMinutes;
    return sum([...this.buckets.values()].flat().filter((b) => b.minute > since));
  }
}

function sum(list: readonly Bucket[]): Totals {
  let requests = 0;
  let errors = 0;
  let failedAttempts = 0;
  let ttftSum = 0;
  let ttftCount = 0;
  let durationSum = 0;
  let tokens = 0;
  for (const b of list) {
    requests += b.requests;
    errors += b.errors;
    failedAttempts += b.failedAttempts;
    ttftSum += b.ttftSum;
    ttftCount += b.ttftCount;
    durationSum += b.durationSum;
    tokens += b.tokens;
  }
  const round = (x: number): number => Math.round(x * 10) / 10;
  return {
    requests,
    errors,
    failedAttempts,
    errorRate: requests > 0 ? errors / requests : 0,
    avgTtftMs: ttftCount > 0 ? round(ttftSum / ttftCount) : null,
    avgDurationMs: requests > 0 ? round(durationSum / requests) : null,
    tokens,
  };
}
