// CORS for browser clients (a web app calling /v1/chat/completions or /api/chat straight
// from the page). Off unless CORS_ORIGINS names the origins: a broker on a developer's
// machine must not let any website read its replies (Ollama, for that reason, allows only
// local origins by default). Credentials are never allowed: clients send keys in headers,
// which CORS lets through once preflighted, and no cookie is needed.

/** CORS_ORIGINS, parsed: any origin, or these exact ones. */
export type CorsOrigins = '*' | ReadonlySet<string>;

/** CORS_ORIGINS → its entries ([] for off, ['*'] for any origin), as the config holds them. Throws naming a bad entry. */
export function parseCorsOrigins(value: string): readonly string[] {
  const entries = value.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (entries.includes('*')) return ['*'];
  return entries.map((e) => {
    const origin = originOf(e);
    if (origin === undefined) throw new Error(`"${e}" is not an origin (scheme://host[:port], no path or trailing slash) or *`);
    return origin;
  });
}

/**
 * An entry as browsers write it in Origin: http(s) in lower case, without the default port. Any
 * scheme: a browser extension (chrome-extension://<id>), a desktop or mobile shell
 * (tauri://localhost, capacitor://localhost) send theirs, which URL's origin reads as "null".
 */
function originOf(entry: string): string | undefined {
  const m = /^([a-zA-Z][a-zA-Z0-9+.-]*):\/\/([^/?#@\s]+)$/.exec(entry);
  if (m === null) return undefined;
  // The scheme in lower case; another scheme's host as written (Safari's extension ids are upper case).
  const e = `${m[1]!.toLowerCase()}://${m[2]!}`;
  if (e.startsWith('http://') || e.startsWith('https://')) {
    try {
      const u = new URL(e);
      return u.pathname === '/' && u.search === '' && u.hash === '' ? u.origin : undefined;
    } catch {
      return undefined;
    }
  }
  return e;
}

/** The config's entries as the front checks them; undefined when CORS is off. */
export function corsOrigins(entries: readonly string[]): CorsOrigins | undefined {
  if (entries.length === 0) return undefined;
  return entries.includes('*') ? '*' : new Set(entries);
}

/** What a page may read from a reply besides the CORS-safelisted headers: the request id and the broker's own. */
const EXPOSED = [
  'x-request-id',
  'trace-id',
  'request-id',
  'retry-after',
  'x-broker-deployment',
  'x-broker-fallback',
  'x-broker-cache',
  'x-broker-overhead-ms',
  'x-should-retry',
  ...['requests', 'tokens'].flatMap((k) => [`x-ratelimit-limit-${k}`, `x-ratelimit-remaining-${k}`, `x-ratelimit-reset-${k}`, `anthropic-ratelimit-${k}-limit`, `anthropic-ratelimit-${k}-remaining`, `anthropic-ratelimit-${k}-reset`]),
  'inference-header-content-length',
].join(', ');

/** The headers every reply to an allowed origin carries. */
export function corsHeaders(origins: CorsOrigins, origin: string | undefined): Record<string, string> | undefined {
  if (origins === '*') return origin === undefined ? undefined : { 'access-control-allow-origin': '*', 'access-control-expose-headers': EXPOSED };
  // The reply differs by origin (none included): a cache in between must not give one origin's to another.
  if (origin === undefined || !origins.has(origin)) return { vary: 'origin' };
  return { 'access-control-allow-origin': origin, 'access-control-expose-headers': EXPOSED, vary: 'origin' };
}

/** Longest Access-Control-Request-Headers echoed back. */
const MAX_REQUEST_HEADERS = 1024;

/**
 * A preflight's answer (an OPTIONS with Access-Control-Request-Method from an allowed
 * origin): the methods, the headers the page asked to send, and how long a browser may
 * keep the answer. Undefined when it is no preflight, or its origin is not allowed.
 */
export function preflight(origins: CorsOrigins, method: string, headers: Readonly<Record<string, string>>): Record<string, string> | undefined {
  if (method !== 'OPTIONS' || headers['access-control-request-method'] === undefined) return undefined;
  const origin = headers['origin'];
  if (origin === undefined || (origins !== '*' && !origins.has(origin))) return undefined;
  const asked = headers['access-control-request-headers'];
  return {
    'access-control-allow-methods': 'GET, POST, PUT, PATCH, DELETE, HEAD',
    ...(asked !== undefined && asked.length <= MAX_REQUEST_HEADERS && /^[\w\-, ]*$/.test(asked) ? { 'access-control-allow-headers': asked } : {}),
    'access-control-max-age': '600',
    // The answer echoes the requested headers: a cache must key on them too.
    vary: 'access-control-request-headers, access-control-request-method',
  };
}
