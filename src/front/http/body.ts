// Reads a request body from uWS with a hard byte limit. uWS neuters each chunk's
// ArrayBuffer after the callback returns, so chunks are copied out at once.
import type { HttpResponse } from 'uWebSockets.js';
import { BrokerError } from '../../errors.ts';

export function readBody(
  res: HttpResponse,
  maxBytes: number,
  declaredLength: number | undefined,
  done: (err: BrokerError | undefined, body?: Buffer) => void,
): void {
  // With a Content-Length we can copy straight into one buffer of the right size.
  const exact = declaredLength !== undefined && Number.isInteger(declaredLength) && declaredLength >= 0 ? Buffer.allocUnsafe(declaredLength) : undefined;
  const parts: Buffer[] = [];
  let received = 0;
  let failed = false;
  res.onData((chunk, isLast) => {
    if (failed) return;
    const n = chunk.byteLength;
    if (received + n > maxBytes || (exact !== undefined && received + n > exact.length)) {
      failed = true;
      return done(new BrokerError('payload_too_large', `request body is larger than MAX_BODY_BYTES (${maxBytes} bytes)`));
    }
    const view = new Uint8Array(chunk);
    if (exact !== undefined) exact.set(view, received);
    else parts.push(Buffer.from(view)); // Buffer.from(Uint8Array) copies
    received += n;
    if (isLast) done(undefined, exact !== undefined ? exact.subarray(0, received) : Buffer.concat(parts, received));
  });
}
