// JWT verification with jose: HS256 with JWT_SECRET, or RS256/ES256 with JWT_PUBLIC_KEY
// (PEM) or JWT_JWKS_URL; issuer, audience and a clock skew checked; roles from the
// `roles` claim (a list, or one role as a string in `role`). Works the same on the
// control plane and on data-plane threads.
import type * as Jose from 'jose';
import type { JWTPayload, JWTVerifyGetKey } from 'jose';
import { BrokerError } from '../errors.ts';
import { isRole, type Principal, type Role } from './rbac.ts';

export interface JwtSettings {
  readonly secret: string | undefined;
  readonly publicKey: string | undefined;
  readonly jwksUrl: string | undefined;
  readonly issuer: string | undefined;
  readonly audience: string | undefined;
  readonly clockSkewS: number;
}

export interface JwtVerifier {
  verify(token: string): Promise<Principal & { readonly tier: string | undefined; readonly expiresAt: number | undefined }>;
}

/** Looks like a compact JWS: three base64url parts. */
export function isJwt(token: string): boolean {
  return /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token);
}

/** undefined when no key is configured (JWTs are then refused as unknown credentials). */
export function createJwtVerifier(s: JwtSettings): JwtVerifier | undefined {
  if (s.secret === undefined && s.publicKey === undefined && s.jwksUrl === undefined) return undefined;
  // Loaded when JWTs are configured, not by every thread of every broker (about 70 ms of CPU).
  const jose = import('jose');
  let key: Promise<Uint8Array | Awaited<ReturnType<typeof Jose.importSPKI>> | JWTVerifyGetKey>;
  let algorithms: string[];
  if (s.secret !== undefined) {
    key = Promise.resolve(new TextEncoder().encode(s.secret));
    algorithms = ['HS256'];
  } else if (s.publicKey !== undefined) {
    const pem = s.publicKey.replace(/\\n/g, '\n');
    // RS256 or ES256: the key itself says which.
    key = jose.then(({ importSPKI }) => importSPKI(pem, 'RS256', { extractable: false }).catch(() => importSPKI(pem, 'ES256', { extractable: false })));
    algorithms = ['RS256', 'ES256'];
  } else {
    const url = new URL(s.jwksUrl!);
    key = jose.then(({ createRemoteJWKSet }) => createRemoteJWKSet(url));
    algorithms = ['RS256', 'ES256'];
  }
  // Reported on first use.
  jose.catch(() => undefined);
  key.catch(() => undefined);

  return {
    async verify(token) {
      let payload: JWTPayload;
      try {
        const [{ jwtVerify }, k] = await Promise.all([jose, key]);
        // A token with no exp would be good for ever: refused, as a leaked one could never lapse.
        const opts = { algorithms, issuer: s.issuer, audience: s.audience, clockTolerance: s.clockSkewS, requiredClaims: ['exp'] };
        payload = (typeof k === 'function' ? await jwtVerify(token, k, opts) : await jwtVerify(token, k, opts)).payload;
      } catch (err) {
        const code = (err as { code?: string }).code ?? '';
        const why =
          code === 'ERR_JWT_EXPIRED' ? 'the token has expired'
          : code === 'ERR_JWT_CLAIM_VALIDATION_FAILED' && (err as { reason?: string }).reason === 'missing' ? `the token has no ${(err as { claim?: string }).claim ?? ''} claim`
          : code === 'ERR_JWT_CLAIM_VALIDATION_FAILED' ? `the token's ${(err as { claim?: string }).claim ?? 'claims'} claim is not accepted here`
          : code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' ? 'the token signature is not valid'
          : 'the token is not valid';
        throw new BrokerError('unauthorized', why, { details: { reason: code === 'ERR_JWT_EXPIRED' ? 'expired' : code === 'ERR_JWT_CLAIM_VALIDATION_FAILED' ? 'claim' : code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' ? 'signature' : 'invalid_token' } });
      }
      const listed = Array.isArray(payload.roles) ? payload.roles : typeof payload.role === 'string' ? [payload.role] : [];
      const roles = listed.filter(isRole) as Role[];
      return {
        subject: typeof payload.sub === 'string' && payload.sub !== '' ? payload.sub : 'jwt',
        roles,
        via: 'jwt',
        tier: typeof payload.tier === 'string' ? payload.tier : undefined,
        expiresAt: typeof payload.exp === 'number' ? payload.exp * 1000 : undefined,
      };
    },
  };
}
