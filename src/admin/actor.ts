// Who made an admin change, for the flag and fleet audit lines.
import type { RouteContext } from '../front/http/router.ts';

/** The `x-actor` header when it is a short printable name, else `admin@<address>`. */
export function actorOf(ctx: RouteContext): string {
  const named = ctx.req.headers['x-actor'];
  return named !== undefined && /^[\x20-\x7e]{1,64}$/.test(named) ? named : `admin@${ctx.req.remoteAddress}`;
}
