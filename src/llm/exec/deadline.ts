// The timeouts of one upstream attempt, per phase (docs/llm.md#timeouts):
//   connect     TCP connect (undici's connectTimeout, set on the deployment's pool);
//   first byte  from the request written to the reply's first body byte when streamed
//               (firstTokenTimeoutMs: long, a cold Ollama loads its model here; for a reply
//               assembled from a stream also its headers within headersTimeoutMs when that is
//               shorter); to the headers when not streamed (headersTimeoutMs: a whole reply
//               comes at its end);
//   idle        between two body chunks after the first (idleChunkTimeoutMs), not counting
//               the time the broker itself stops reading while a slow client drains
//               (pause/resume): that silence is the client's, not the upstream's;
//   total       the whole attempt (totalTimeoutMs, 0 = none).
// One timer per attempt, re-armed lazily: a chunk only notes its time, so the per-chunk
// cost is one performance.now(). An expired phase aborts the attempt's own signal with
// upstream_timeout: before the first byte to the client the proxy may try elsewhere,
// after it the chain ends the stream with an error event.
import { performance } from 'node:perf_hooks';
import { BrokerError } from '../../errors.ts';
import type { Timeouts } from '../../config/broker-config.ts';
import { RequestAbort, type AbortLike } from '../../abort.ts';

export type Phase = 'first_byte' | 'idle' | 'total';

export class AttemptDeadline {
  /** The attempt's signal: aborted with the request's reason, or with upstream_timeout. */
  readonly signal = new RequestAbort();
  /** The phase that ran over, once one did. */
  expired: Phase | null = null;
  private timer: NodeJS.Timeout | undefined;
  private readonly startedAt = performance.now();
  private lastAt = -1;
  /** The broker stopped reading (backpressure): the idle phase does not run. */
  private paused = false;
  private readonly firstMs: number;
  /** An assembled reply: the headers' own limit, before them (Infinity when none, not shorter, or not assembled). */
  private headersMs: number;
  private readonly onParent: () => void;

  /**
   * `assembled`: a non-streamed request streamed from its upstream (translate/assemble.ts),
   * timed as a stream; its headers keep their own limit too, as they would unstreamed.
   */
  constructor(private readonly t: Timeouts & { readonly id: string }, private readonly stream: boolean, private readonly parent: AbortLike, private readonly now: () => number = () => performance.now(), assembled = false) {
    // headersTimeoutMs 0: none (it follows a totalTimeoutMs of 0).
    const headersMs = t.headersTimeoutMs > 0 ? t.headersTimeoutMs : Infinity;
    this.firstMs = stream ? t.firstTokenTimeoutMs : headersMs;
    this.headersMs = stream && assembled && headersMs < t.firstTokenTimeoutMs ? headersMs : Infinity;
    this.onParent = () => this.stop(parent.reason);
    if (parent.aborted) this.signal.abort(parent.reason);
    else parent.addEventListener('abort', this.onParent);
    this.arm();
  }

  /** The headers arrived: for a whole reply its first phase is over. */
  headers(): void {
    this.headersMs = Infinity;
    if (!this.stream && this.lastAt < 0) this.chunk();
  }

  /** A body chunk arrived; returns when (on the deadline's clock). */
  chunk(): number {
    const first = this.lastAt < 0;
    this.lastAt = this.now();
    // The first phase's timer may be far later than the idle deadline (or none was armed, with
    // no first-phase or total limit): arm for the idle one.
    if (first && !this.signal.aborted) {
      if (this.timer !== undefined) clearTimeout(this.timer);
      this.arm();
    }
    return this.lastAt;
  }

  /** The broker stops reading from the upstream until the client drains: the idle phase waits. */
  pause(): void {
    this.paused = true;
  }

  /** Reading again: the idle phase starts over from now. */
  resume(): void {
    if (!this.paused) return;
    this.paused = false;
    if (this.lastAt >= 0) this.lastAt = this.now();
    if (this.signal.aborted) return;
    // A timer armed while paused aims at the total deadline (the idle phase did not run):
    // aim again, at the idle phase that starts now.
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.arm();
  }

  /** The attempt is over: no timer left behind. */
  done(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.parent.removeEventListener('abort', this.onParent);
  }

  private stop(reason: unknown): void {
    this.done();
    this.signal.abort(reason);
  }

  /** The next moment a phase could end, from now. */
  private due(): { phase: Phase; inMs: number } {
    const now = this.now();
    const t = this.t;
    const phase: Phase = this.lastAt < 0 ? 'first_byte' : 'idle';
    const phaseEnd = this.lastAt < 0 ? this.startedAt + Math.min(this.firstMs, this.headersMs) : this.paused ? Infinity : this.lastAt + t.idleChunkTimeoutMs;
    const totalEnd = t.totalTimeoutMs > 0 ? this.startedAt + t.totalTimeoutMs : Infinity;
    return totalEnd <= phaseEnd ? { phase: 'total', inMs: totalEnd - now } : { phase, inMs: phaseEnd - now };
  }

  private arm(): void {
    const { inMs } = this.due();
    // Paused with no total limit: nothing can expire until resume() arms again.
    if (inMs === Infinity) return;
    this.timer = setTimeout(() => this.check(), Math.max(1, Math.ceil(inMs)));
    this.timer.unref?.();
  }

  private check(): void {
    this.timer = undefined;
    if (this.signal.aborted) return;
    const { phase, inMs } = this.due();
    if (inMs > 0) return this.arm();
    this.expired = phase;
    // Still waiting for the headers, whose own limit was the shorter: that is what ran over.
    const inHeaders = phase === 'first_byte' && this.headersMs < this.firstMs;
    this.stop(new BrokerError('upstream_timeout', timeoutMessage(this.t, phase, this.stream && !inHeaders), { details: { phase } }));
  }
}

function timeoutMessage(t: Timeouts & { readonly id: string }, phase: Phase, stream: boolean): string {
  if (phase === 'total') return `deployment ${t.id} did not finish within totalTimeoutMs (${t.totalTimeoutMs} ms)`;
  if (phase === 'idle') return `deployment ${t.id} sent nothing for idleChunkTimeoutMs (${t.idleChunkTimeoutMs} ms)`;
  if (!stream) return `deployment ${t.id} sent no reply headers within headersTimeoutMs (${t.headersTimeoutMs} ms)`;
  return `deployment ${t.id} sent no first byte within firstTokenTimeoutMs (${t.firstTokenTimeoutMs} ms)`;
}
