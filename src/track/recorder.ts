// The hot path's side of request tracking: one row appended to a bounded in-memory
// batch when a request ends, handed on once per event-loop turn (a data-plane thread
// posts the batch to the control plane's one writer; the control plane gives it to
// the writer directly). Nothing here waits, and nothing here can fail a request.
import { performance } from 'node:perf_hooks';
import { rowOf, type RequestFacts, type TrackRow } from './facts.ts';

export interface Recorder {
  /** Facts for a new request on a tracked route; undefined when tracking is off. */
  start(api: string): RequestFacts | undefined;
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
  private readonly now: () => number;

  constructor(private readonly o: RowRecorderOptions) {
    this.now = o.now ?? Date.now;
  }

  start(api: string): RequestFacts {
    return { api };
  }

  end(facts: RequestFacts, id: string, startedAt: number, protocol: 'http' | 'grpc', route: string, status: number, errorCode: string | undefined, aborted: boolean): void {
    const totalMs = performance.now() - startedAt;
    if (this.rows.length === 0) setImmediate(this.flush);
    else if (this.rows.length >= this.o.maxRows) {
      this.rows.shift();
      this.o.dropped(1);
    }
    // The reply went out before the proxy's last bookkeeping (tokens, TTFT), which runs in
    // this same turn: the row is made from the facts at the end of the turn.
    this.rows.push({ facts, id, protocol, route, status, errorCode, aborted, totalMs: Math.round(totalMs * 1000) / 1000, at: this.now() });
  }

  /** Hands on what is held now (also called before a thread stops). */
  readonly flush = (): void => {
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
