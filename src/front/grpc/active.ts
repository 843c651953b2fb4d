// The calls in progress, each with how to end it when shutdown's grace period is over
// (UNAVAILABLE, and the work behind it aborted).
export class ActiveCalls {
  private readonly stops = new Set<() => void>();

  /** Registers a call's stop; returns the function that forgets it (call it when the call ends). */
  track(stop: () => void): () => void {
    this.stops.add(stop);
    return () => this.stops.delete(stop);
  }

  get size(): number {
    return this.stops.size;
  }

  /** Ends every call still open; returns how many there were. */
  stopAll(): number {
    const all = [...this.stops];
    this.stops.clear();
    for (const stop of all) stop();
    return all.length;
  }
}
