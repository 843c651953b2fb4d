// Reads a request body from uWS with a hard byte limit. uWS neuters each chunk's
// ArrayBuffer after the callback returns, so chunks are copied out at once. The whole body
// is handed on a turn later (see the end of readBody).
import type { HttpResponse } from 'uWebSockets.js';
import { BrokerError } from '../../errors.ts';

/** How much of a refused body is read and dropped so that the client can read its 413. */
export const LINGER_BYTES = 64 * 1024 * 1024;

export function readBody(
  res: HttpResponse,
  maxBytes: number,
  declaredLength: number | undefined,
  done: (err: BrokerError | undefined, body?: Buffer) => void,
  /** Each chunk's bytes as they come: the body is still arriving. */
  onChunk?: (bytes: number) => void,
): void {
  // With a Content-Length we can copy straight into one buffer of the right size.
  const exact = declaredLength !== undefined && Number.isInteger(declaredLength) && declaredLength >= 0 ? Buffer.allocUnsafe(declaredLength) : undefined;
  const parts: Buffer[] = [];
  let received = 0;
  let failed = false;
  // A chunked body past the limit is read to its end and dropped (up to LINGER_BYTES) before
  // the 413: answered mid-upload, the close made a fetch client still writing see EPIPE.
  let dropping = false;
  const tooLarge = (): void => done(new BrokerError('payload_too_large', `request body is larger than MAX_BODY_BYTES (${maxBytes} bytes)`));
  res.onData((chunk, isLast) => {
    if (failed) return;
    onChunk?.(chunk.byteLength);
    const n = chunk.byteLength;
    if (dropping) {
      received += n;
      if (isLast || received > LINGER_BYTES) {
        failed = true;
        tooLarge();
      }
      return;
    }
    if (received + n > maxBytes || (exact !== undefined && received + n > exact.length)) {
      if (exact === undefined && !isLast && received + n <= LINGER_BYTES) {
        dropping = true;
        parts.length = 0;
        received += n;
        return;
      }
      failed = true;
      return tooLarge();
    }
    const view = new Uint8Array(chunk);
    if (exact !== undefined) exact.set(view, received);
    else parts.push(Buffer.from(view)); // Buffer.from(Uint8Array) copies
    received += n;
    if (!isLast) return;
    const body = exact !== undefined ? exact.subarray(0, received) : Buffer.concat(parts, received);
    // Handled a turn later, outside this callback: uWS corks the socket while its callback
    // runs, so a reply written in it (a cache hit, an error) would leave only once the
    // bookkeeping after it (access log, metrics) had run too. Outside, each write's cork
    // flushes at once, and the bookkeeping follows the bytes.
    setImmediate(done, undefined, body);
  });
}
