// Budgets per API key: a spend limit per UTC day or month, in the price table's
// currency. Admission checks a cached running total (BudgetGate): no database read per
// request. The control plane keeps the totals (SpendLedger): this replica's own spend,
// counted from the rows it hands to the writer, plus the other replicas' spend, read
// from the database every few seconds; it pushes them to every thread's gate.
// Pure: the clock is injected.
import { BrokerError } from '../errors.ts';

export type BudgetPeriod = 'day' | 'month';

export interface Budget {
  readonly limit: number;
  readonly period: BudgetPeriod;
}

/** The UTC period holding `now`: [start, end) in epoch ms. */
export function periodBounds(now: number, period: BudgetPeriod): { start: number; end: number } {
  const d = new Date(now);
  if (period === 'day') {
    const start = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate());
    return { start, end: start + 86_400_000 };
  }
  return { start: Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1), end: Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1) };
}

/** A key's spend in its current period, as the control plane last counted it. */
export interface SpendEntry {
  readonly keyId: string;
  readonly periodStart: number;
  readonly spent: number;
}

/** The admission side: refuses a key whose cached spend reached its limit. */
export class BudgetGate {
  private spend = new Map<string, SpendEntry>();

  constructor(
    private readonly now: () => number = Date.now,
    private readonly currency: () => string = () => 'USD',
  ) {}

  /** The control plane's latest totals (replaces what was held). */
  update(entries: readonly SpendEntry[]): void {
    this.spend = new Map(entries.map((e) => [e.keyId, e]));
  }

  spent(keyId: string, period: BudgetPeriod): number {
    const e = this.spend.get(keyId);
    // A total from an earlier period says nothing about this one: the budget reset.
    return e !== undefined && e.periodStart === periodBounds(this.now(), period).start ? e.spent : 0;
  }

  /** Throws budget_exceeded (429, Retry-After until the reset) when the key spent its limit. */
  check(keyId: string, budget: Budget): void {
    const now = this.now();
    const { start, end } = periodBounds(now, budget.period);
    const e = this.spend.get(keyId);
    const spent = e !== undefined && e.periodStart === start ? e.spent : 0;
    if (spent < budget.limit) return;
    const resetAt = new Date(end).toISOString();
    throw new BrokerError('budget_exceeded', `API key ${keyId} spent ${round(spent)} ${this.currency()} of its ${budget.limit} ${this.currency()} ${budget.period === 'day' ? 'daily' : 'monthly'} budget; it resets at ${resetAt}`, {
      retryAfter: Math.max(1, Math.ceil((end - now) / 1000)),
      // Hours or days off: the OpenAI and Anthropic SDKs would sleep that long in a retry
      // (x-should-retry: false stops them); the client reads Retry-After and decides.
      details: { reset_at: resetAt, retryable: false },
    });
  }
}

function round(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

interface Tally {
  periodStart: number;
  spent: number;
}

/** The control plane's totals per budgeted key: own spend counted here, the other replicas' read from the database. */
export class SpendLedger {
  private readonly own = new Map<string, Tally>();
  /** This replica's rows already in the database at start-up: apart from `own`, which counts rows accepted while that read waited (the database down or slow). */
  private readonly earlier = new Map<string, Tally>();
  private readonly others = new Map<string, Tally>();

  constructor(
    /** The budgeted keys now, by key id. */
    private readonly budgets: () => ReadonlyMap<string, Budget>,
    private readonly now: () => number = Date.now,
  ) {}

  /** A row this replica recorded; counted when its key has a budget and it falls in the current period. */
  add(keyId: string, cost: number, createdAt: number): boolean {
    const b = this.budgets().get(keyId);
    if (b === undefined || cost <= 0) return false;
    const start = periodBounds(this.now(), b.period).start;
    if (createdAt < start) return false;
    const t = this.own.get(keyId);
    if (t === undefined || t.periodStart !== start) this.own.set(keyId, { periodStart: start, spent: cost });
    else t.spent += cost;
    return true;
  }

  /** What the database says for a key's current period (own: at start-up; others: every refresh). */
  set(which: 'own' | 'others', keyId: string, periodStart: number, spent: number): void {
    (which === 'own' ? this.earlier : this.others).set(keyId, { periodStart, spent });
  }

  /** Totals for every budgeted key, in its current period. */
  entries(): SpendEntry[] {
    const now = this.now();
    const out: SpendEntry[] = [];
    for (const [keyId, b] of this.budgets()) {
      const start = periodBounds(now, b.period).start;
      let spent = 0;
      for (const m of [this.own, this.earlier, this.others]) {
        const t = m.get(keyId);
        if (t?.periodStart === start) spent += t.spent;
      }
      out.push({ keyId, periodStart: start, spent });
    }
    return out;
  }
}
