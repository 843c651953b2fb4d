// Tells a stall of this thread from a dependency that does not answer. A command's timer
// fires right after a stall of this thread (a start compiling models, a long GC, a busy
// host), in the timers phase, before the poll phase reads the reply that has been waiting
// in the socket: without this, a busy host reads as a hung Redis.
import { performance } from 'node:perf_hooks';

/** The heartbeat's period. */
const TICK_MS = 100;

export class ThreadStall {
  private tickAt = performance.now();
  private stalledAt = -Infinity;
  private readonly tick = setInterval(() => {
    const now = performance.now();
    if (now - this.tickAt > TICK_MS + this.stallMs) this.stalledAt = now;
    this.tickAt = now;
  }, TICK_MS).unref();

  /** `stallMs`: how late the heartbeat may run before this thread counts as stalled; below the caller's command timeout. */
  constructor(private readonly stallMs = 200) {}

  /** Whether this thread stalled within the last `windowMs` (then a late reply is ours, not the peer's). */
  within(windowMs: number): boolean {
    const now = performance.now();
    return now - this.tickAt > TICK_MS + this.stallMs || now - this.stalledAt < windowMs;
  }

  close(): void {
    clearInterval(this.tick);
  }
}
