// Where the time of an LLM request goes, up to the client's first byte, from five
// timestamps: received (the front saw the request line), admitted (guard and
// admission done), upstream request written, upstream first byte (first body chunk
// of a stream, headers of a whole reply), client first byte (status line out).
//   admission  received → admitted
//   queue      waiting for a lease (capacity, priority queue), every attempt
//   upstream   request written → upstream first byte, every attempt: the upstream's time
//   relay      upstream first byte → client first byte (chain, translation, write)
//   dispatch   the rest: translation of the request, retries' bookkeeping, cache lookup
// The broker's overhead is everything but `upstream`: what a client measures as
// TTFT through the broker minus TTFT straight to the upstream (bench/llm.ts checks).
import { performance } from 'node:perf_hooks';
import type { Metrics } from '../obs/metrics.ts';

export class Timeline {
  readonly admittedAt: number;
  queueMs = 0;
  upstreamMs = 0;
  /** The attempt that reached the client: its upstream first byte. */
  firstByteAt = -1;
  clientAt = -1;

  constructor(readonly receivedAt: number, now = performance.now()) {
    this.admittedAt = now;
  }

  /** An attempt's upstream time: from written to its first byte (or to its failure). */
  upstream(sentAt: number, until: number): void {
    if (until > sentAt) this.upstreamMs += until - sentAt;
  }

  /** The client's first byte goes out now; returns the overhead so far, ms. */
  clientFirstByte(now = performance.now()): number {
    if (this.clientAt < 0) this.clientAt = now;
    return this.overheadMs();
  }

  overheadMs(): number {
    return Math.max(0, this.clientAt - this.receivedAt - this.upstreamMs);
  }

  /**
   * Exports the phases once the client's first byte went out. A cache hit has no queue,
   * upstream or relay: only its admission and dispatch (the lookup and the replay) are
   * observed, so that those phases' histograms hold only requests that had them.
   */
  observe(m: Metrics, stream: boolean, hit = false): void {
    if (this.clientAt < 0) return;
    const admission = Math.max(0, this.admittedAt - this.receivedAt);
    const relay = this.firstByteAt < 0 ? 0 : Math.max(0, this.clientAt - this.firstByteAt);
    const total = this.clientAt - this.receivedAt;
    const dispatch = Math.max(0, total - admission - this.queueMs - this.upstreamMs - relay);
    const s = stream ? 'true' : 'false';
    m.llmPhase.labels('admission', s).observe(admission / 1000);
    m.llmPhase.labels('dispatch', s).observe(dispatch / 1000);
    if (!hit) {
      m.llmPhase.labels('queue', s).observe(this.queueMs / 1000);
      m.llmPhase.labels('upstream', s).observe(this.upstreamMs / 1000);
      m.llmPhase.labels('relay', s).observe(relay / 1000);
    }
    m.brokerOverhead.labels(stream ? 'llm_stream' : 'llm').observe(this.overheadMs() / 1000);
  }
}

/** The x-broker-overhead-ms value: ms with µs precision. */
export function overheadHeader(ms: number): string {
  // Integers to text, not a float: V8's shortest float formatting cost ~1 µs a request.
  const us = Math.round(ms * 1000);
  const frac = us % 1000;
  if (frac === 0) return String((us - frac) / 1000);
  const digits = frac < 10 ? '00' + frac : frac < 100 ? '0' + frac : String(frac);
  return (us - frac) / 1000 + '.' + (digits.endsWith('00') ? digits[0] : digits.endsWith('0') ? digits.slice(0, 2) : digits);
}
