// The client's API key: x-api-key, else the Authorization bearer token. Rate limits,
// QoS tiers, priorities and quotas are all keyed by it.
import { createHash } from 'node:crypto';

export function apiKeyOf(headers: Readonly<Record<string, string>>): string | undefined {
  const k = headers['x-api-key'];
  if (k) return k;
  return bearerToken(headers['authorization']);
}

/** The token of `Authorization: Bearer <token>`; the scheme's case does not matter (RFC 9110 §11.1). */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (authorization === undefined || authorization.length <= 7 || authorization.charCodeAt(6) !== 32) return undefined;
  return authorization.slice(0, 6).toLowerCase() === 'bearer' ? authorization.slice(7) : undefined;
}

const ids = new Map<string, string>();
const KEY_ID = /^k_[0-9a-f]{12}$/;

/**
 * How the broker names an API key wherever it shows one (quota subjects, usage labels,
 * admin replies, logs): `k_` and the first 12 hex digits of its SHA-256. Never the key.
 */
export function keyId(key: string): string {
  let id = ids.get(key);
  if (id === undefined) {
    id = 'k_' + createHash('sha256').update(key).digest('hex').slice(0, 12);
    // Only known keys get here per request; the bound keeps made-up ones from growing it.
    if (ids.size >= 10_000) ids.clear();
    ids.set(key, id);
  }
  return id;
}

/** A route parameter as logs may show it: `key:<key>` by the key's id, a session id masked. */
export function redactParam(v: string): string {
  if (v.startsWith('key:')) return 'key:' + (isKeyId(v.slice(4)) ? v.slice(4) : keyId(v.slice(4)));
  if (v.startsWith('sess_')) return 'sess_…';
  return v;
}

export function isKeyId(s: string): boolean {
  return KEY_ID.test(s);
}

const QUOTA_KEY = /\/quota\/+(?:k|%6b)(?:e|%65)(?:y|%79)(?::|%3a)/i;
const KEYS_ROUTE = /\/auth\/+keys\/+/i;

/**
 * A logged path with any API key in it replaced by its id: PUT /api/industrial/quota/key:<key>,
 * and DELETE /api/auth/keys/<key> (an operator who pastes the key where its id goes).
 */
export function redactPath(path: string): string {
  // Session ids are credentials too (DELETE /api/auth/sessions/sess_…).
  if (path.includes('sess_')) path = path.replace(/sess_[A-Za-z0-9_-]+/g, 'sess_…');
  // Any spelling the router (or a 404) may see: `key%3A`, `%6Bey:`, `KEY:`, `quota//key:`.
  return redactSegmentAfter(redactSegmentAfter(path, QUOTA_KEY), KEYS_ROUTE);
}

/** The path segment after `marker`, unless it is a key id, replaced by the id of the key it would be. */
function redactSegmentAfter(path: string, marker: RegExp): string {
  const m = marker.exec(path);
  if (m === null) return path;
  const start = m.index + m[0].length;
  const end = path.indexOf('/', start);
  let raw = path.slice(start, end < 0 ? undefined : end);
  if (raw === '') return path;
  try {
    raw = decodeURIComponent(raw);
  } catch {
    // keep it as sent: it is hashed all the same
  }
  return path.slice(0, start) + (isKeyId(raw) ? raw : keyId(raw)) + (end < 0 ? '' : path.slice(end));
}
