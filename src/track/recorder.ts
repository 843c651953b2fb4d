// The hot path's side of request tracking: one row appended to a bounded in-memory
// batch when a request ends, handed on in batches: a data-plane thread posts its rows to
// the control plane's one writer every `handEveryMs` (one message for many requests:
// a message per turn woke the control plane about once per request at 2,000 req/s);
// the control plane gives its own to the writer at the end of the turn. Nothing here
// waits, and nothing here can fail a request.
import { performance } from 'node:perf_hooks';
import { apiKeyOf, keyId } from '../guard/api-key.ts';
import { isJwt } from '../guard/jwt.ts';
import { rowOf, type RequestFacts, type TrackRow } from './facts.ts';

export interface Recorder {
  /** Facts for a new request on a tracked route (its headers name the caller's key); undefined when tracking is off. */
  start(api: string, headers?: Readonly<Record<string, string>>): RequestFacts | undefined;
  /** The request's one terminal outcome (called once per request, by its front). */
  end(facts: RequestFacts, id: string, startedAt: number, protocol: 'http' | 'grpc', route: string, status: number, errorCode: string | undefined, aborted: boolean): void;
}

/** Tracking off: no facts, so no stage fills any in and no front calls end(). */
export const RECORDER_OFF: Recorder = {
  start: () => undefined,
  end: () => undefined,
};

export interface RowRecorderOptions {
  /** Takes one turn's rows (a thread: one port message; the control plane: the writer). */
  readonly hand: (rows: TrackRow[]) => void;
  /** Rows held between two turns at most; past it the oldest go (a loop that never yields). */
  readonly maxRows: number;
  /** Counts rows dropped here. */
  readonly dropped: (n: number) => void;
  /** Hand rows on at most this often (a thread: the port message's cost is per message); unset, at the end of each turn. */
  readonly handEveryMs?: number;
  readonly now?: () => number;
}

/** A request that ended this turn: its row is built at the end of the turn, once every stage finished filling in its facts. */
interface Ended {
  readonly facts: RequestFacts;
  readonly id: string;
  readonly protocol: 'http' | 'grpc';
  readonly route: string;
  readonly status: number;
  readonly errorCode: string | undefined;
  readonly aborted: boolean;
  readonly totalMs: number;
  readonly at: number;
}

export class RowRecorder implements Recorder {
  private rows: Ended[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly now: () => number;

  constructor(private readonly o: RowRecorderOptions) {
    this.now = o.now ?? Date.now;
  }

  start(api: string, headers?: Readonly<Record<string, string>>): RequestFacts {
    // The caller's key id (never the key) on every tracked route, inference and refusals too; a JWT or a session is no API key.
    const key = headers === undefined ? undefined : apiKeyOf(headers);
    return key === undefined || key.startsWith('sess_') || isJwt(key) ? { api } : { api, keyId: keyId(key) };
  }

  end(facts: RequestFacts, id: string, startedAt: number, protocol: 'http' | 'grpc', route: string, status: number, errorCode: string | undefined, aborted: boolean): void {
    const totalMs = performance.now() - startedAt;
    if (this.rows.length === 0) this.schedule();
    else if (this.rows.length >= this.o.maxRows) {
      this.rows.shift();
      this.o.dropped(1);
    }
    // The reply went out before the proxy's last bookkeeping (tokens, TTFT), which runs in
    // this same turn: the row is made from the facts when the batch is handed on.
    this.rows.push({ facts, id, protocol, route, status, errorCode, aborted, totalMs: Math.round(totalMs * 1000) / 1000, at: this.now() });
  }

  private schedule(): void {
    const every = this.o.handEveryMs;
    if (every === undefined) setImmediate(this.flush);
    else this.timer = setTimeout(this.flush, every).unref();
  }

  /** Hands on what is held now (also called before a thread stops). */
  readonly flush = (): void => {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.rows.length === 0) return;
    const ended = this.rows;
    this.rows = [];
    const rows = new Array<TrackRow>(ended.length);
    for (let i = 0; i < ended.length; i++) {
      const e = ended[i]!;
      rows[i] = rowOf(e.facts, e.id, e.protocol, e.route, e.status, e.errorCode, e.aborted, e.totalMs, e.at);
    }
    this.o.hand(rows);
  };
}
