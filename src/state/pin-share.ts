// Sticky pins across replicas. A pin set or dropped on one replica (a prompt prefix →
// deployment) is published on Redis pub/sub in small batches, and every other replica
// applies it to its own pins, on every thread. Pins are soft state with a TTL: a
// replica that misses some (Redis away, or it started later) only routes those
// prefixes afresh, so nothing is replayed on reconnect.

/** What carries pins between replicas (RedisStore). */
export interface PinChannel {
  publishPins(pins: readonly Pin[]): Promise<void>;
  onPins(cb: (pins: readonly Pin[]) => void): void;
}

/** A prefix key and its deployment; null: the pin was dropped. */
export type Pin = readonly [key: string, dep: string | null];

/** Pins per message: a burst is split rather than sent as one huge message. */
const MAX_BATCH = 500;

export class PinShare {
  private out: Pin[] = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly channel: PinChannel,
    apply: (pins: readonly Pin[]) => void,
    private readonly flushMs = 50,
  ) {
    channel.onPins(apply);
  }

  /** A pin this replica made: shared with the others within flushMs. */
  add(key: string, dep: string | null): void {
    this.out.push([key, dep]);
    if (this.out.length >= MAX_BATCH) this.flush();
    else this.timer ??= setTimeout(() => this.flush(), this.flushMs).unref();
  }

  flush(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const batch = this.out;
    this.out = [];
    // Redis away: these pins stay local, as documented.
    if (batch.length > 0) void this.channel.publishPins(batch).catch(() => undefined);
  }

  close(): void {
    clearTimeout(this.timer);
    this.out = [];
  }
}
