// Why a deployment may not take new requests, as bits of one Int32 per capacity slot
// (src/sched/capacity.ts, cell +16). The control plane's fleet manager writes them with
// Atomics.or/and; every thread's scheduler reads them with one Atomics.load per pick, so
// a ban, a breaker trip or a drain is in force on every thread the moment it is written.

export const UNHEALTHY = 1 << 0; // the server failed its health checks
export const BANNED = 1 << 1; // a ban on the server, the model, or the pair
export const BREAKER_OPEN = 1 << 2; // the server × model breaker is open
export const DRAINING = 1 << 3; // the deployment or its server drains: in-flight requests finish
export const MAINTENANCE = 1 << 4; // the server is in maintenance
export const HALF_OPEN = 1 << 5; // breaker half-open: routable only with a trial permit (cell +20)
export const COLD = 1 << 6; // the server reports the model is not loaded (warm-first prefers others)

/** Any of these and the deployment is never chosen. */
export const BLOCKED = UNHEALTHY | BANNED | BREAKER_OPEN | DRAINING | MAINTENANCE;

const NAMES: readonly [number, string][] = [
  [UNHEALTHY, 'unhealthy'],
  [BANNED, 'banned'],
  [BREAKER_OPEN, 'breaker open'],
  [HALF_OPEN, 'breaker half-open, no trial left'],
  [DRAINING, 'draining'],
  [MAINTENANCE, 'maintenance'],
];

/** "unhealthy, banned": why a deployment was not chosen (for error messages). */
export function describeBits(bits: number): string {
  return NAMES.filter(([b]) => (bits & b) !== 0).map(([, n]) => n).join(', ');
}
