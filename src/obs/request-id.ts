import { randomBytes } from 'node:crypto';

// Printable ASCII without spaces, as it goes back out in a header and into logs.
const CLIENT_ID = /^[\x21-\x7e]{1,128}$/;

let counter = 0;
const prefix = randomBytes(6).toString('hex');

/** The client's X-Request-ID when it is printable and at most 128 characters, else a fresh id. */
export function requestIdFrom(clientId: string | undefined): string {
  if (clientId !== undefined && CLIENT_ID.test(clientId)) return clientId;
  // A process-unique prefix plus a counter: unique, cheap, no syscall per request.
  counter += 1;
  return `${prefix}${counter.toString(16).padStart(8, '0')}`;
}
