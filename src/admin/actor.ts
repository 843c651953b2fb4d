// Who made an admin change, for the flag and fleet audit lines.
import type { RouteContext } from '../front/http/router.ts';

/**
 * The authenticated caller (`admin-token`, a JWT's subject, an API key's id), with the
 * `x-actor` header beside it when it is a short printable name: the person behind a shared
 * ADMIN_TOKEN, say. The header is the caller's own claim, so it never stands in its place.
 */
export function actorOf(ctx: RouteContext): string {
  const who = ctx.principal?.subject ?? `admin@${ctx.req.remoteAddress}`;
  const named = ctx.req.headers['x-actor'];
  return named !== undefined && /^[\x20-\x7e]{1,64}$/.test(named) ? `${who} (x-actor: ${named})` : who;
}
