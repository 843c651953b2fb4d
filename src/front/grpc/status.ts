// Errors to gRPC statuses, from the one error table (src/errors.ts, its `grpc` column).
// Every error status carries, in its trailers: the trace id, the broker's error code
// (x-broker-error-code) and grpc-status-details-bin, a google.rpc.Status with an
// ErrorInfo (reason = the broker's code) and, when a retry time is known, a RetryInfo
// (what Retry-After is over HTTP: capacity, quota and rate limits).
import { Metadata, status as Status, type StatusObject } from '@grpc/grpc-js';
import { ERROR_TABLE, type BrokerError } from '../../errors.ts';
import { statusDetails } from './wire.ts';

/** The gRPC status code of a broker error code; INTERNAL for a code not in the table. */
export function grpcCodeOf(code: string): Status {
  const name = Object.hasOwn(ERROR_TABLE, code) ? ERROR_TABLE[code as keyof typeof ERROR_TABLE].grpc : 'INTERNAL';
  return Status[name as keyof typeof Status];
}

/** The status object grpc-js sends for `err` (callback(err), call.emit('error', err)). */
export function grpcStatusOf(err: BrokerError, traceId?: string, trailers: Metadata = new Metadata()): Partial<StatusObject> {
  const code = grpcCodeOf(err.code);
  if (traceId !== undefined) trailers.set('trace-id', traceId);
  trailers.set('x-broker-error-code', err.code);
  trailers.set('grpc-status-details-bin', statusDetails(code, err.message, err.code, err.retryAfter));
  return { code, details: err.message, metadata: trailers };
}

const CODE_NAMES: Record<number, string> = {};
// go-grpc-prometheus labels codes with Go's codes.Code.String(): "OK", "Canceled", "DeadlineExceeded", ...
for (const [name, n] of Object.entries(Status)) {
  if (typeof n !== 'number') continue;
  CODE_NAMES[n] = name === 'CANCELLED' ? 'Canceled' : name.toLowerCase().replace(/(^|_)([a-z])/g, (_m, _s, c: string) => c.toUpperCase());
}
CODE_NAMES[Status.OK] = 'OK';

/** The grpc_code label of go-grpc-prometheus for a status code. */
export function codeLabel(code: number): string {
  return CODE_NAMES[code] ?? 'Unknown';
}
