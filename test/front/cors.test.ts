// CORS: a browser page on an allowed origin may call the broker (preflight answered, replies
// readable, the broker's headers exposed); any other origin, or a broker without
// CORS_ORIGINS, gets no CORS header, and the browser keeps the reply from the page.
import t from 'tap';
import { connect } from 'node:net';
import { ADMIN_TOKEN, startTestBroker } from '../helpers/broker.ts';
import { loadConfig } from '../../src/config/env.ts';
import { corsHeaders, corsOrigins, parseCorsOrigins, preflight } from '../../src/front/http/cors.ts';

const APP = 'https://app.example';

const preflightOf = (url: string, origin: string) =>
  fetch(`${url}/v1/chat/completions`, {
    method: 'OPTIONS',
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type, x-broker-cache' },
  });

for (const threads of ['0', '2']) {
  t.test(`CORS_ORIGINS names the page's origin, FRONT_THREADS=${threads}`, async (t) => {
    const tb = await startTestBroker({ CORS_ORIGINS: `${APP}, http://localhost:3000`, FRONT_THREADS: threads, INFER_ENABLED: 'false' });
    t.teardown(() => tb.close());

    const pre = await preflightOf(tb.url, APP);
    t.equal(pre.status, 204, 'the preflight is answered');
    t.equal(pre.headers.get('access-control-allow-origin'), APP);
    t.match(pre.headers.get('access-control-allow-methods'), /POST/);
    t.equal(pre.headers.get('access-control-allow-headers'), 'authorization, content-type, x-broker-cache', 'the headers the page asked to send');
    t.equal(pre.headers.get('access-control-max-age'), '600');
    t.notOk(pre.headers.get('access-control-allow-credentials'), 'never credentials');

    // A reply (a data-plane route, an error, a control-plane route) is readable by the page, the request id with it.
    for (const [path, init] of [['/healthz', {}], ['/v1/chat/completions', { method: 'POST', body: '{' }], ['/admin/config', { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } }]] as const) {
      const res = await fetch(`${tb.url}${path}`, { ...init, headers: { ...('headers' in init ? init.headers : {}), origin: APP } });
      t.equal(res.headers.get('access-control-allow-origin'), APP, `${path} ${res.status}: allowed`);
      t.match(res.headers.get('access-control-expose-headers'), /x-request-id.*x-broker-cache/, `${path}: the broker's headers exposed`);
      t.match(res.headers.get('vary'), /origin/i, `${path}: varies by origin`);
    }

    // Another origin: nothing a browser would let the page read.
    const evil = await preflightOf(tb.url, 'https://evil.example');
    t.not(evil.status, 204, 'no preflight for another origin');
    t.equal(evil.headers.get('access-control-allow-origin'), null);
    const read = await fetch(`${tb.url}/healthz`, { headers: { origin: 'https://evil.example' } });
    t.equal(read.status, 200, 'served: CORS is the browser keeping the reply, not a refusal');
    t.equal(read.headers.get('access-control-allow-origin'), null);
    // No Origin at all (not a browser): no CORS header, but the reply still varies by origin for a cache in between.
    const plain = await fetch(`${tb.url}/healthz`);
    t.equal(plain.headers.get('access-control-allow-origin'), null);
    t.match(plain.headers.get('vary'), /origin/i, 'varies by origin');
    // A preflight that carries a body (none should): answered, and the connection closed after it.
    const bodied = await fetch(`${tb.url}/v1/chat/completions`, { method: 'OPTIONS', headers: { origin: APP, 'access-control-request-method': 'POST' }, body: 'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n' });
    t.equal(bodied.status, 204);
    t.equal(bodied.headers.get('connection'), 'close', 'no bytes after it read as another request');
    // A preflight with Content-Length twice is the smuggling case the front refuses: never a 204
    // that would let uWS serve what its body hides (before, the preflight was answered first).
    const raw = await new Promise<string>((resolve) => {
      const s = connect(Number(new URL(tb.url).port), '127.0.0.1');
      let got = '';
      s.on('data', (d) => (got += d.toString()));
      s.on('close', () => resolve(got));
      setTimeout(() => s.destroy(), 1500);
      s.write(`OPTIONS /v1/models HTTP/1.1\r\nHost: x\r\nOrigin: ${APP}\r\nAccess-Control-Request-Method: POST\r\nContent-Length: 0\r\nContent-Length: 39\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n`);
    });
    t.notMatch(raw, /204/, 'no preflight answer');
    t.notMatch(raw, /"ok":true/, 'and the request hidden in the body is not served');
  });
}

t.test('without CORS_ORIGINS: no CORS header, no preflight', async (t) => {
  const tb = await startTestBroker({ INFER_ENABLED: 'false' });
  t.teardown(() => tb.close());
  const pre = await preflightOf(tb.url, APP);
  t.equal(pre.status, 405);
  t.equal(pre.headers.get('access-control-allow-origin'), null);
  t.equal((await fetch(`${tb.url}/healthz`, { headers: { origin: APP } })).headers.get('access-control-allow-origin'), null);
});

t.test('CORS_ORIGINS=*: any origin, as the wildcard', async (t) => {
  const any = corsOrigins(parseCorsOrigins('*'))!;
  t.match(corsHeaders(any, 'https://whoever.example'), { 'access-control-allow-origin': '*' });
  t.equal(corsHeaders(any, undefined), undefined, 'no Origin, no CORS headers (not a browser)');
  t.ok(preflight(any, 'OPTIONS', { origin: 'https://whoever.example', 'access-control-request-method': 'POST' }));
  t.equal(preflight(any, 'OPTIONS', { origin: 'https://whoever.example' }), undefined, 'an OPTIONS without Access-Control-Request-Method is no preflight');
  t.equal(preflight(any, 'OPTIONS', { origin: 'x', 'access-control-request-method': 'POST', 'access-control-request-headers': 'a\r\nb' })?.['access-control-allow-headers'], undefined, 'odd requested headers are not echoed');
  t.equal(corsOrigins(parseCorsOrigins(' ')), undefined, 'blank: off');
});

t.test('CORS_ORIGINS takes origins only: a bad entry stops the start naming the variable', async (t) => {
  for (const bad of ['https://app.example/', 'app.example', 'https://app.example/path', 'ftp://']) {
    t.throws(() => loadConfig({ CORS_ORIGINS: `http://localhost:3000,${bad}` }), { name: 'ConfigError', message: /CORS_ORIGINS/ }, bad);
  }
  t.same(loadConfig({ CORS_ORIGINS: 'http://localhost:3000, https://app.example:8443' }).corsOrigins, ['http://localhost:3000', 'https://app.example:8443']);
  // Origins as browsers send them: a browser extension's or a desktop shell's scheme (refused
  // before: only * let them in), upper case and a default port written out.
  t.same(loadConfig({ CORS_ORIGINS: 'chrome-extension://abcdefghijklmnop, tauri://localhost, https://App.Example:443, HTTP://localhost:80' }).corsOrigins, ['chrome-extension://abcdefghijklmnop', 'tauri://localhost', 'https://app.example', 'http://localhost']);
  for (const bad of ['chrome-extension://abc/popup.html', 'tauri://', 'https://user@app.example']) t.throws(() => parseCorsOrigins(bad), /is not an origin/, bad);
  // Another scheme's host keeps its case (Safari's extension ids are upper case in Origin).
  t.same(parseCorsOrigins('Safari-Web-Extension://140BB581-AB12'), ['safari-web-extension://140BB581-AB12']);
  const ext = corsOrigins(parseCorsOrigins('chrome-extension://abcdefghijklmnop'))!;
  t.match(corsHeaders(ext, 'chrome-extension://abcdefghijklmnop'), { 'access-control-allow-origin': 'chrome-extension://abcdefghijklmnop' });
  // A page's SDK reads x-should-retry (a 429 no retry can fix) only if it is exposed.
  t.match(corsHeaders(ext, 'chrome-extension://abcdefghijklmnop')?.['access-control-expose-headers'], /x-should-retry/);
});
