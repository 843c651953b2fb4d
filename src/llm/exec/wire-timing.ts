// When an attempt's bytes really crossed the socket, from undici's diagnostics channels:
// the request written (undici:request:bodySent), the response headers parsed
// (undici:request:headers) and the first body chunk parsed (bodyChunkReceived), each
// before undici's Readable and our async iteration get to it. Timestamps taken around
// our own calls instead would count undici's client work (serialising, parsing,
// promise hops: a few hundred µs a request) as the upstream's time, and the broker's
// overhead would read several times lower than a client measures (bench:cache).
//
// A request is tied to its attempt when undici creates it, which it does synchronously
// inside pool.request() (unless every connection of the pool is busy and the request
// queues: then the attempt keeps the coarser timestamps).
import { subscribe } from 'node:diagnostics_channel';
import { performance } from 'node:perf_hooks';
import type { AttemptTiming } from './types.ts';

const byRequest = new WeakMap<object, AttemptTiming>();
let pending: AttemptTiming | undefined;

subscribe('undici:request:create', (m) => {
  if (pending === undefined) return;
  byRequest.set((m as { request: object }).request, pending);
  pending = undefined;
});
subscribe('undici:request:bodySent', (m) => {
  const t = byRequest.get((m as { request: object }).request);
  if (t !== undefined) t.writtenAt = performance.now();
});
subscribe('undici:request:headers', (m) => {
  const t = byRequest.get((m as { request: object }).request);
  if (t !== undefined) t.headersAt = performance.now();
});
subscribe('undici:request:bodyChunkReceived', (m) => {
  const request = (m as { request: object }).request;
  const t = byRequest.get(request);
  if (t === undefined) return;
  if (t.wireFirstByteAt < 0) t.wireFirstByteAt = performance.now();
  // Later chunks find nothing: one WeakMap miss each.
  byRequest.delete(request);
});

/** Runs `send` (which must call pool.request synchronously) with its request tied to `timing`. */
export function timed<T>(timing: AttemptTiming, send: () => T): T {
  pending = timing;
  try {
    return send();
  } finally {
    pending = undefined;
  }
}
