// A request's abort signal, without EventTarget. One AbortController per LLM request
// was the broker's largest source of garbage that died old: under 1,500 req/s the
// sampling heap profiler put 6.4 MB of the objects that died in full collections on
// AbortSignal (event-target bookkeeping outlives the request by a scavenge or two), so
// a mark-compact ran about every second. This class has exactly what undici and our
// stages use: `aborted`, `reason`, and add/removeEventListener('abort').

/** What the request path reads of a signal; a DOM AbortSignal fits it too. */
export interface AbortLike {
  readonly aborted: boolean;
  readonly reason: unknown;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

export class RequestAbort implements AbortLike {
  aborted = false;
  reason: unknown = undefined;
  private listeners: (() => void)[] | undefined;

  /** Aborts once: listeners run in the order they were added, each at most once. */
  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason ?? new DOMException('This operation was aborted', 'AbortError');
    const ls = this.listeners;
    this.listeners = undefined;
    if (ls !== undefined) for (const l of ls) l();
  }

  addEventListener(_type: 'abort', listener: () => void): void {
    if (this.aborted) return;
    (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const ls = this.listeners;
    if (ls === undefined) return;
    const i = ls.indexOf(listener);
    if (i >= 0) ls.splice(i, 1);
  }
}
