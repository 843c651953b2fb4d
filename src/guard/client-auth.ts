// AUTH_MODE on the client routes (LLM and inference), where they are served: on each
// data-plane thread. `open`: no credential needed, but a live session stands for its key
// (one the store cannot check is refused, as in every mode);
// `keys`: a known API key (the fleet file's, or one made through
// /api/auth/keys) or a session; `jwt`: a valid JWT with a client role, or a session.
// Sessions are looked up on the control plane and cached here for at most a second, so
// that a revocation is in force everywhere within one. An unknown or revoked credential
// gets 401 in the client API's own error shape.
import { BrokerError } from '../errors.ts';
import type { Metrics } from '../obs/metrics.ts';
import type { BrokerRequest, Caller } from '../front/reply.ts';
import { apiKeyOf } from './api-key.ts';
import { isJwt, type JwtVerifier } from './jwt.ts';
import { CLIENT_ROLES, isRole } from './rbac.ts';

export type AuthMode = 'open' | 'keys' | 'jwt';

/** What a thread learns of a live session: its roles, its subject, and what admission holds it to. */
export interface SessionView {
  readonly roles: readonly string[];
  readonly subject?: string | undefined;
  /** The API key it was made from (k_…): its quotas, tier, priority and budget apply. */
  readonly keyId?: string | undefined;
  readonly tier?: string | undefined;
}

/** What a session lookup returns to a thread: the session, or null when it is not live. */
export type SessionLookup = (id: string) => Promise<SessionView | null>;

export interface ClientAuthOptions {
  readonly mode: AuthMode;
  readonly knownKey: (key: string) => boolean;
  /** A known key's role, when it has one (made through /api/auth/keys); the fleet file's keys are client keys. */
  readonly keyRole?: (key: string) => string | undefined;
  /** Whether the key of this id is still known: a session made from a key that left ends with it. */
  readonly knownKeyId?: (id: string) => boolean;
  readonly jwt: JwtVerifier | undefined;
  readonly session: SessionLookup;
  readonly metrics: Metrics;
  readonly now?: () => number;
  /** How long a thread trusts a session lookup, ms (default 1000). */
  readonly cacheMs?: number;
}

const CACHE_MAX = 50_000;

/**
 * A session as a thread last heard of it: live with a client role, live without one, not live;
 * `unknowable`: the store could not say (it is away); `failed`: the lookup failed otherwise.
 */
type SessionState = 'ok' | 'role' | 'dead' | 'unknowable' | 'failed';

export function createClientAuth(o: ClientAuthOptions): ((req: BrokerRequest) => void | Promise<void>) | undefined {
  const now = o.now ?? Date.now;
  const cacheMs = o.cacheMs ?? 1000;
  /** A session as looked up: its state, and whom admission holds it to. */
  type Known = { state: SessionState; caller: Caller | undefined };
  const cache = new Map<string, Known & { at: number }>();
  // One lookup per session at a time: requests that come while it runs wait for it.
  const pending = new Map<string, Promise<Known>>();
  // A credential the broker does not take: 401; one it takes whose roles may not call the client APIs: 403.
  const refuse = (reason: string, message: string): never => {
    o.metrics.authFailures.labels(reason).inc();
    throw new BrokerError(reason === 'role' ? 'forbidden' : 'unauthorized', message, { details: { reason } });
  };
  const clientRole = (roles: readonly string[]): boolean => roles.some((r) => isRole(r) && CLIENT_ROLES.includes(r));
  const ROLE_MESSAGE = `the session's roles may not call the client APIs; one of ${CLIENT_ROLES.join(', ')} is needed`;

  const lookup = (id: string): Promise<Known> => {
    let p = pending.get(id);
    if (p === undefined) {
      p = o.session(id).then(
        (s): Known => {
          // A session made from a key that was revoked or left the config ends with it.
          const keyGone = s !== null && s.keyId !== undefined && o.knownKeyId !== undefined && !o.knownKeyId(s.keyId);
          const state: SessionState = s === null || keyGone ? 'dead' : clientRole(s.roles) ? 'ok' : 'role';
          const caller = s === null ? undefined : { keyId: s.keyId, tier: s.tier, subject: s.subject };
          const known = { state, caller };
          if (cache.size >= CACHE_MAX) cache.clear();
          cache.set(id, { ...known, at: now() });
          return known;
        },
        // The store could not say (it is away, sessions fail closed; the control plane refuses
        // with 401 store_unavailable, whose code alone crosses threads): not cached, not a dead
        // session. Any other failure is not cached either.
        (err: unknown): Known => ({ state: (err as { code?: string } | null)?.code === 'unauthorized' ? 'unknowable' : 'failed', caller: undefined }),
      );
      pending.set(id, p);
      void p.finally(() => pending.delete(id));
    }
    return p;
  };
  const judge = (req: BrokerRequest, s: Known): void => {
    // Open: no credential is needed, and one that is not live is no one's (anonymous). One the
    // store could not check may be live, held to its key's quota and tier: served as anonymous,
    // it would escape them, so it is refused as in the other modes. (A lookup that failed for
    // another reason, an internal error, stays anonymous there.)
    if (o.mode === 'open' && s.state !== 'ok' && s.state !== 'unknowable') return;
    if (s.state === 'dead') refuse('session', 'the session is unknown, expired or revoked');
    if (s.state === 'role') refuse('role', ROLE_MESSAGE);
    if (s.state === 'unknowable' || s.state === 'failed') refuse('store_unavailable', 'sessions cannot be checked while the shared store is unreachable (AUTH_REDIS_FAIL_MODE=closed, or a session this replica has not seen)');
    // Under AUTH_MODE=jwt a key is no client credential: nor is a session made from one (else
    // POST /api/auth/sessions would turn any key back into one). Its admin role still holds there.
    if (o.mode === 'jwt' && s.caller?.keyId !== undefined) refuse('session', 'a session made from an API key is no client credential under AUTH_MODE=jwt: a JWT, or a session made from one, is needed');
    // Held to its key's quotas, tier, priority and budget (admission), and tracked as that key.
    req.caller = s.caller;
    const facts = req.facts;
    if (facts !== undefined) {
      if (s.caller?.keyId !== undefined) facts.keyId = s.caller.keyId;
      if (s.caller?.subject !== undefined) facts.subject = s.caller.subject;
    }
  };
  // A cached answer is given at once (no promise, no async path in dispatch).
  const bySession = (req: BrokerRequest, id: string): void | Promise<void> => {
    const hit = cache.get(id);
    if (hit !== undefined && now() - hit.at < cacheMs) return judge(req, hit);
    return lookup(id).then((s) => judge(req, s));
  };

  // Open: anyone may call, but a live session still stands for its key (quotas, tier, a
  // per-key cache scope), as in the other modes; keys are read by admission itself.
  if (o.mode === 'open') {
    return (req) => {
      const credential = apiKeyOf(req.headers);
      if (credential !== undefined && credential.startsWith('sess_')) return bySession(req, credential);
    };
  }

  return (req) => {
    const credential = apiKeyOf(req.headers);
    if (credential === undefined) return refuse('missing', `this broker needs credentials (AUTH_MODE=${o.mode}): Authorization: Bearer <${o.mode === 'jwt' ? 'JWT' : 'API key'} or session>, or x-api-key`);
    if (credential.startsWith('sess_')) return bySession(req, credential);
    // A known key first: a key may have the shape of a JWT (`team.prod.key1`).
    if (o.mode === 'keys' && o.knownKey(credential)) {
      const role = o.keyRole?.(credential);
      // A key made for an admin API role (an analyst's) is no client credential, as its session is not.
      if (role !== undefined && !clientRole([role])) refuse('role', `the API key's role (${role}) may not call the client APIs; one of ${CLIENT_ROLES.join(', ')} is needed`);
      return;
    }
    if (isJwt(credential) && o.jwt !== undefined) {
      return o.jwt.verify(credential).then(
        (p) => {
          // Request tracking records who called (the token's subject), never the token.
          if (req.facts !== undefined) req.facts.subject = p.subject;
          if (!clientRole(p.roles)) refuse('role', `the token's roles (${p.roles.join(', ') || 'none'}) may not call the client APIs; one of ${CLIENT_ROLES.join(', ')} is needed`);
          // Its tier claim holds in admission, as a key's tier does.
          req.caller = { tier: p.tier, subject: p.subject };
        },
        (err: BrokerError) => refuse(String(err.details?.reason ?? 'invalid_token'), err.message),
      );
    }
    return refuse('invalid', o.mode === 'keys' ? 'the API key is unknown or revoked' : 'a JWT or a session is needed (AUTH_MODE=jwt)');
  };
}
