// The fuzz generator: a seeded stream of malformed HTTP/1.1 requests, as raw bytes, over
// every route of the broker. Each case is built from independent choices (method, path,
// headers, body, framing, pacing), so a run covers their combinations; the same seed
// gives the same cases, byte for byte.
import { mulberry32, type Rng } from '../../scripts/train/prng.ts';

export interface FuzzCase {
  readonly index: number;
  /** Route family, for the summary: 'infer', 'llm', 'admin', 'obs', 'unknown'. */
  readonly family: string;
  readonly method: string;
  readonly path: string;
  /** What was done to the request, for the summary. */
  readonly tags: readonly string[];
  /** The bytes to write, in pieces (a pause between pieces when `gapMs` > 0). */
  readonly pieces: readonly Buffer[];
  readonly gapMs: number;
  /** The request is incomplete on purpose (declared more than sent, a chunked body never ended): no reply is owed. */
  readonly partial: boolean;
  /**
   * The head or framing is one uWS's parser refuses (an invalid header name or method, NUL
   * in a value, an absolute or `*` target, a bad chunk size, both lengths): it closes the
   * connection without a reply, at once or after its 10 s idle timeout. A reply is allowed,
   * not owed.
   */
  readonly unparsable: boolean;
}

export interface FuzzContext {
  /** A real PNG (Fashion-MNIST item) as base64, so some image requests get past decoding. */
  readonly pngB64: string;
  readonly adminToken: string;
}

const LLM_ROUTES = ['/v1/chat/completions', '/v1/completions', '/api/chat', '/api/generate'];
const GET_ROUTES = ['/v1/models', '/api/tags', '/healthz', '/health', '/ready', '/metrics'];
const ADMIN_GET = ['/admin/config', '/api/industrial/flags', '/api/industrial/flags/audit', '/api/industrial/capacity', '/api/industrial/performance', '/api/industrial/usage', '/api/industrial/predictions', '/api/industrial/qos', '/api/industrial/quota', '/api/industrial/ptu', '/api/industrial/ptu/recommendations', '/api/industrial/status'];
// Admin routes that change state get no valid token (a fuzzed promote or drain would change
// what the rest of the run measures); they are fuzzed for auth, framing and routing only.
const ADMIN_WRITE = ['/admin/config', '/admin/warmup', '/admin/promote', '/api/industrial/flags/sticky_routing', '/api/industrial/flags/bulk', '/api/industrial/capacity/good-openai/limits', '/api/industrial/capacity/x/drain', '/api/industrial/quota/key:abc', '/api/industrial/qos/resolve', '/api/industrial/usage/team-a', '/api/industrial/ptu/chat/headroom'];
const MODELS = ['chat', 'chat', 'chat', 'flaky', 'cut', 'tight', 'quota', 'no-such-model', ''];
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'TRACE', 'CONNECT', 'FOO', 'post', 'G\x00T'];

class Gen {
  constructor(readonly r: Rng) {}
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.r() * (hi - lo + 1));
  }
  chance(p: number): boolean {
    return this.r() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.r() * xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = Math.floor(this.r() * 256);
    return b;
  }
  /** A string from a nasty alphabet: controls, quotes, escapes, non-BMP, lone surrogates, RTL. */
  text(max: number): string {
    const alphabet = ['a', 'Z', '0', ' ', '"', '\\', '\n', '\r', '\t', '\x00', '\x1b', '\u00e9', '\u202e', '\ud83d\ude00', '\ud800', '\udfff', '\ufeff', '{', '}', '[', ']', '%', '$', '<script>', 'null'];
    let s = '';
    const n = this.int(0, max);
    for (let i = 0; i < n; i++) s += this.pick(alphabet);
    return s;
  }
  /** Any JSON value, `depth` levels at most. */
  value(depth: number): unknown {
    const k = this.int(0, depth > 0 ? 9 : 6);
    switch (k) {
      case 0: return null;
      case 1: return this.chance(0.5);
      case 2: return this.pick([0, -1, 1, 1.5, -5, 2 ** 31, 2 ** 53 + 1, 1e308, -1e308, 5e-324, 50]);
      case 3: return this.text(20);
      case 4: return '';
      case 5: return this.pick(['user', 'system', 'assistant', 'tool', 'chat', 'hello']);
      case 6: return this.text(3);
      case 7: return Array.from({ length: this.int(0, 4) }, () => this.value(depth - 1));
      default: {
        const o: Record<string, unknown> = {};
        for (let i = this.int(0, 4); i > 0; i--) o[this.pick(['role', 'content', 'model', 'messages', 'prompt', 'stream', 'max_tokens', 'n', 'images', 'type', 'text', '__proto__', 'constructor', this.text(5)])] = this.value(depth - 1);
        return o;
      }
    }
  }
}

/** JSON nested `depth` deep: [[[...]]] or {"a":{"a":...}}. */
function deep(depth: number, arrays: boolean): string {
  return arrays ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
}

function llmBody(g: Gen, path: string): { body: Buffer; tags: string[] } {
  const tags: string[] = [];
  const ollama = path.startsWith('/api/');
  const completion = path === '/v1/completions' || path === '/api/generate';
  const base: Record<string, unknown> = { model: g.pick(MODELS) };
  if (completion) base.prompt = 'say hi';
  else base.messages = [{ role: 'user', content: 'say hi' }];
  base.stream = ollama ? g.chance(0.5) : g.chance(0.5);
  // Mutations of a valid request: wrong types, odd values, extra and missing fields.
  const mutations = g.int(0, 3);
  for (let i = 0; i < mutations; i++) {
    const m = g.int(0, 13);
    tags.push(`mut${m}`);
    switch (m) {
      case 0: base.model = g.value(2); break;
      case 1: base.messages = g.value(3); break;
      case 2: base.messages = [{ role: g.value(1), content: g.value(2) }]; break;
      case 3: base.messages = [{ role: 'user', content: [null] }]; break;
      case 4: base.max_tokens = g.pick([1e308, -5, 0, 1.5, '10', null, 2 ** 31]); break;
      case 5: base.n = g.pick([50, 0, -1, 2, 'x', 1e9]); break;
      case 6: base.stream = g.value(1); break;
      case 7: base.prompt = g.value(2); break;
      case 8: base.messages = Array.from({ length: g.int(100, 5000) }, () => ({ role: 'user', content: 'x' })); break;
      case 9: base.messages = [{ role: 'user', content: 'x'.repeat(g.int(10_000, 200_000)) }]; break;
      case 10: base[g.text(8)] = g.value(3); break;
      case 11: delete base.model; break;
      case 12: base.messages = [{ role: 'user', content: [{ type: 'text', text: g.value(1) }, { type: 'image_url', image_url: g.value(2) }] }]; break;
      default: base.options = g.value(3); break;
    }
  }
  let text = JSON.stringify(base);
  // Encodings and syntax: the body as bytes.
  const form = g.int(0, 11);
  tags.push(`form${form}`);
  switch (form) {
    case 0: text = deep(g.pick([64, 1000, 100_000]), g.chance(0.5)); break;
    case 1: text = `{"model":"chat","messages":${deep(g.pick([100, 10_000]), true)}}`; break;
    case 2: text = text.slice(0, g.int(0, text.length)); break; // truncated JSON
    case 3: text = text + g.pick(['}', ',', ' garbage', '\x00', '{"a":1}']); break;
    case 4: text = '\ufeff' + text; break; // BOM
    case 5: text = text.replace('"model"', '"model":"x","model"'); break; // duplicate key
    case 6: return { body: Buffer.concat([Buffer.from(text.slice(0, 20)), g.bytes(g.int(1, 64)), Buffer.from(text.slice(20))]), tags }; // invalid UTF-8
    case 7: text = g.pick(['', 'null', '[]', '"str"', '42', 'true', '{}', 'undefined', 'NaN']); break;
    default: break; // the mutated JSON as is
  }
  return { body: Buffer.from(text), tags };
}

function inferBody(g: Gen, ctx: FuzzContext): { body: Buffer; tags: string[] } {
  const images: [string, () => string][] = [
    ['png', () => ctx.pngB64],
    ['png-data-url', () => `data:image/png;base64,${ctx.pngB64}`],
    ['png-urlsafe', () => ctx.pngB64.replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')],
    ['png-truncated', () => ctx.pngB64.slice(0, g.int(4, ctx.pngB64.length - 4))],
    ['random-bytes', () => g.bytes(g.int(1, 4096)).toString('base64')],
    ['svg', () => Buffer.from('<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"/>').toString('base64')],
    ['gif', () => Buffer.from('GIF89a\x01\x00\x01\x00\x80\x00\x00', 'latin1').toString('base64')],
    ['tiff', () => Buffer.concat([Buffer.from('II*\x00', 'latin1'), g.bytes(64)]).toString('base64')],
    ['png-header-huge', () => Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'), Buffer.from([0x00, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 8, 2, 0, 0, 0]), g.bytes(16)]).toString('base64')],
    ['jpeg-magic', () => Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), g.bytes(200)]).toString('base64')],
    ['webp-magic', () => Buffer.concat([Buffer.from('RIFF\x10\x00\x00\x00WEBPVP8 ', 'latin1'), g.bytes(40)]).toString('base64')],
    ['not-base64', () => g.text(40)],
    ['empty', () => ''],
  ];
  const [kind, img] = g.pick(images);
  const tags = [kind];
  const body: Record<string, unknown> = { image_b64: img() };
  if (g.chance(0.3)) body.img_size = g.pick([28, 0, -1, 8, 7, 65536, 1e308, '28', null, 28.5]);
  if (g.chance(0.3)) body.top_k = g.pick([1, 0, -1, 11, 1e9, '3', null, [], 2.5]);
  if (g.chance(0.15)) body.image_b64 = g.value(2);
  if (g.chance(0.05)) return { body: Buffer.from(deep(g.pick([1000, 100_000]), g.chance(0.5))), tags: [...tags, 'deep'] };
  return { body: Buffer.from(JSON.stringify(body)), tags };
}

function adminBody(g: Gen): Buffer {
  return Buffer.from(g.chance(0.8) ? JSON.stringify(g.value(3)) : g.text(100));
}

/** The request line's target: the route, or a mangled form of it. */
function mangle(g: Gen, path: string, tags: string[]): string {
  if (!g.chance(0.25)) return path;
  const m = g.int(0, 11);
  tags.push(`path${m}`);
  switch (m) {
    case 0: return path + '?' + g.pick(['a=1', 'model=chat&stream=true', '%00', '&&&', 'x='.repeat(500)]);
    case 1: return path + '/';
    case 2: return '/' + path;
    case 3: return path.toUpperCase();
    case 4: return path.replace('/', '/%2e%2e/');
    case 5: return path + '%00';
    case 6: return path + '/' + 'a'.repeat(g.int(100, 9000));
    case 7: return `http://127.0.0.1${path}`;
    case 8: return '*';
    case 9: return '/' + path.slice(1).replace(/\//g, '%2F');
    case 10: return '/v1/' + [...Buffer.from(g.text(10))].map((c) => (c > 0x20 && c < 0x7f && c !== 0x25 ? String.fromCharCode(c) : `%${c.toString(16).padStart(2, '0')}`)).join('');
    default: return path + '#frag';
  }
}

export function* fuzzCases(seed: number, count: number, ctx: FuzzContext): Generator<FuzzCase> {
  const g = new Gen(mulberry32(seed));
  for (let index = 0; index < count; index++) {
    const tags: string[] = [];
    const familyRoll = g.r();
    let family: string;
    let method: string;
    let path: string;
    let body: Buffer | undefined;
    const headers: [string, string][] = [];
    if (familyRoll < 0.4) {
      family = 'llm';
      path = g.pick(LLM_ROUTES);
      method = 'POST';
      const b = llmBody(g, path);
      body = b.body;
      tags.push(...b.tags);
    } else if (familyRoll < 0.65) {
      family = 'infer';
      path = '/v1/infer';
      method = 'POST';
      const b = inferBody(g, ctx);
      body = b.body;
      tags.push(...b.tags);
    } else if (familyRoll < 0.8) {
      family = 'admin';
      const write = g.chance(0.5);
      path = write ? g.pick(ADMIN_WRITE) : g.pick(ADMIN_GET);
      method = write ? g.pick(['POST', 'PUT', 'DELETE']) : 'GET';
      if (write) body = adminBody(g);
      const auth = g.int(0, 4);
      tags.push(`auth${auth}`);
      if (auth === 1 && !write) headers.push(['authorization', `Bearer ${ctx.adminToken}`]);
      else if (auth === 2) headers.push(['authorization', `Bearer ${g.text(40)}`.replace(/[\x00-\x1f\x7f]/g, '')]);
      else if (auth === 3) headers.push(['authorization', g.pick(['Basic abc', 'Bearer', 'bearer  x', 'Bearer ' + 'x'.repeat(5000)])]);
    } else if (familyRoll < 0.92) {
      family = 'obs';
      path = g.pick(GET_ROUTES);
      method = 'GET';
    } else {
      family = 'unknown';
      path = g.pick(['/', '/v2/infer', '/api/pull', '/admin', '/api/industrial', '/v1/audio/speech', '/.env', '/favicon.ico']);
      method = 'GET';
    }
    // Another method than the route's.
    if (g.chance(0.12)) {
      method = g.pick(METHODS);
      tags.push('method');
      if (method === 'POST' && body === undefined) body = Buffer.from(g.text(50));
    }
    const target = mangle(g, path, tags);
    // uWS answers the standard methods only (case-sensitive): another token is refused unanswered.
    let unparsable = !['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'HEAD', 'OPTIONS', 'TRACE'].includes(method) || !target.startsWith('/');

    // Headers.
    let contentType: string | undefined = body !== undefined ? 'application/json' : undefined;
    if (body !== undefined && g.chance(0.15)) {
      contentType = g.pick(['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/json; charset=utf-16', '', 'application/json\x00']);
      tags.push('ctype');
      if (contentType.includes('\x00')) unparsable = true;
    }
    if (contentType !== undefined) headers.push(['content-type', contentType]);
    if (g.chance(0.08)) headers.push(['content-encoding', g.pick(['gzip', 'br', 'deflate', 'identity, gzip'])]);
    if (g.chance(0.1)) headers.push(['x-request-id', g.pick(['x'.repeat(200), '\u00e9t\u00e9', 'a b', '', 'id-1'])]);
    if (g.chance(0.1)) headers.push(['x-broker-priority', g.pick(['9', '-1', '10', 'critical', 'HIGH', '1e9', '', 'normal,high'])]);
    if (g.chance(0.1)) headers.push(['x-broker-label', g.pick(['team-a', 'x'.repeat(90_000), 'a/b', '', '..', 'ok:label'])]);
    if (g.chance(0.08)) headers.push(['x-broker-qos', g.pick(['realtime', 'batch', 'nope', ''])]);
    if (g.chance(0.08)) headers.push(['x-api-key', g.pick(['k', 'x'.repeat(3000), 'key with spaces'])]);
    if (g.chance(0.05)) headers.push(['cookie', g.pick(['eb_arm=B', 'eb_arm=Z', 'eb_arm=', 'eb_arm=A; eb_arm=B'])]);
    if (g.chance(0.03)) headers.push(['x-big', 'y'.repeat(g.pick([4096, 16_384, 70_000]))]);
    if (g.chance(0.03)) {
      headers.push([g.pick(['bad header', 'x\x01', ':path', 'é']), 'v']);
      tags.push('bad-header-name');
      unparsable = true;
    }
    if (g.chance(0.05)) headers.push(['expect', '100-continue']);

    // Framing of the body: exact length, a lie, chunked (valid or not), none, or streamed slowly.
    let partial = false;
    let gapMs = 0;
    const pieces: Buffer[] = [];
    const framing = body === undefined ? (g.chance(0.1) ? g.int(1, 2) : 0) : g.int(0, 9);
    // Control characters in a header value (as the latin1 bytes on the wire): uWS refuses the head.
    if (headers.some(([, v]) => [...Buffer.from(v, 'latin1')].some((c) => (c < 0x20 && c !== 0x09) || c === 0x7f))) unparsable = true;
    // A head past 64 KiB may be over uWS's limit (it closes the connection).
    if (headers.reduce((n, [k, v]) => n + k.length + v.length + 4, target.length + 64) > 65_536) unparsable = true;
    const head = (extra: [string, string][]): Buffer => {
      const lines = [`${method} ${target} HTTP/1.1`, 'host: 127.0.0.1', ...[...headers, ...extra].map(([k, v]) => `${k}: ${v}`), 'connection: close'];
      return Buffer.from(lines.join('\r\n') + '\r\n\r\n', 'latin1');
    };
    const b = body ?? Buffer.alloc(0);
    switch (framing) {
      case 1: // declares more than it sends: a partial body (or for a GET, a body the route does not read)
        tags.push('short-body');
        pieces.push(head([['content-length', String(b.length + g.int(1, 1000))]]), b);
        partial = true;
        break;
      case 2: // declares less than it sends: the rest looks like a pipelined request
        tags.push('long-body');
        pieces.push(head([['content-length', String(Math.max(0, b.length - g.int(1, 20)))]]), b);
        break;
      case 3: { // chunked, valid, in random chunk sizes
        tags.push('chunked');
        const parts: Buffer[] = [];
        for (let at = 0; at < b.length; ) {
          const n = Math.min(b.length - at, g.int(1, 4096));
          parts.push(Buffer.from(n.toString(16) + '\r\n'), b.subarray(at, at + n), Buffer.from('\r\n'));
          at += n;
        }
        parts.push(Buffer.from('0\r\n\r\n'));
        pieces.push(head([['transfer-encoding', 'chunked']]), Buffer.concat(parts));
        break;
      }
      case 4: // chunked, never finished
        tags.push('chunked-partial');
        pieces.push(head([['transfer-encoding', 'chunked']]), Buffer.from(b.length.toString(16) + '\r\n'), b.subarray(0, Math.floor(b.length / 2)));
        partial = true;
        break;
      case 5: // chunked with a bad size line
        tags.push('chunked-bad');
        pieces.push(head([['transfer-encoding', 'chunked']]), Buffer.from(g.pick(['zz\r\n', '-1\r\n', 'ffffffffffffffff\r\n', '5;ext\r\n'])), b, Buffer.from('\r\n0\r\n\r\n'));
        unparsable = true;
        break;
      case 6: // both content-length and chunked, or two content-lengths
        tags.push('ambiguous-length');
        pieces.push(head(g.chance(0.5) ? [['content-length', String(b.length)], ['transfer-encoding', 'chunked']] : [['content-length', String(b.length)], ['content-length', String(b.length + 1)]]), b);
        unparsable = true;
        break;
      case 7: { // the exact body, written in slow pieces
        tags.push('slow');
        pieces.push(head([['content-length', String(b.length)]]));
        const n = g.int(2, 5);
        for (let i = 0; i < n; i++) pieces.push(b.subarray(Math.floor((i * b.length) / n), Math.floor(((i + 1) * b.length) / n)));
        gapMs = g.int(5, 40);
        break;
      }
      case 8: // declared as larger than MAX_BODY_BYTES
        tags.push('huge-declared');
        pieces.push(head([['content-length', String(g.pick([9_000_000, 2 ** 40, 1e30]))]]), b.subarray(0, 1000));
        partial = true;
        break;
      default:
        pieces.push(head(body === undefined ? [] : [['content-length', String(b.length)]]), b);
    }
    yield { index, family, method, path, tags, pieces, gapMs, partial, unparsable };
  }
}
