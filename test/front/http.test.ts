// The HTTP front and guards against a real broker: routes, errors, trace ids, body
// limits, rate limit, admin credential, health, metrics.
import t from 'tap';
import { connect } from 'node:net';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestBroker, postJson, metricValue, admin, json, logLine } from '../helpers/broker.ts';

// Two client keys the broker knows (each has its own rate-limit bucket); any other key counts as its address.
const fleet = join(mkdtempSync(join(tmpdir(), 'eb-front-')), 'broker.json');
writeFileSync(fleet, JSON.stringify({ modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: 'http://127.0.0.1:9', model: 'm' }] } }, apiKeys: { 'client-1': {}, 'client-2': {} } }));
const tb = await startTestBroker({ MAX_BODY_BYTES: '4096', RATE_LIMIT_RPS: '5', RATE_LIMIT_BURST: '5', BROKER_CONFIG: fleet });

/** Writes raw bytes on a new connection; what came back by the time it closed (5 s at most). */
function exchange(bytes: string): Promise<string> {
  return new Promise<string>((resolve) => {
    let out = '';
    const s = connect(Number(new URL(tb.url).port), '127.0.0.1', () => s.write(bytes));
    s.on('data', (d) => (out += d.toString('latin1')));
    s.on('close', () => resolve(out));
    s.on('error', () => resolve(out));
    setTimeout(() => s.destroy(), 5000).unref();
  });
}
t.teardown(() => tb.close());

// Two subtests wait out uWS's idle timeout (10 s, on a 4 s tick): 'a body that stops arriving'
// and 'a body that trickles slower than uWS takes'. Their connections are opened here, before
// the first subtest, so that these waits run alongside the other subtests instead of one after
// the other at the end; each subtest awaits its connection's close, then looks its log line up.
// (They take two tokens of the address's rate-limit bucket, at the start, when it is full.)

/** The body that stops arriving. */
const stopped = new Promise<void>((resolve) => {
  const s = connect(tb.broker.port, '127.0.0.1', () => s.write('POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"image_b64":'));
  s.on('close', () => resolve());
  s.on('error', () => resolve());
  s.resume();
});

/** The trickled body. */
const trickled = new Promise<void>((resolve) => {
  let every: NodeJS.Timeout | undefined;
  const s = connect(tb.broker.port, '127.0.0.1', () => {
    s.write('POST /v1/infer HTTP/1.1\r\nHost: x\r\nx-request-id: trickle\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{"image_b64":"');
    every = setInterval(() => s.write('A'.repeat(100)), 500);
  });
  const end = (): void => (clearInterval(every), resolve());
  s.on('close', end);
  s.on('error', end);
  s.resume();
});

t.test("admin credentials with the scheme in lower case: 'bearer' is 'Bearer'", async (t) => {
  const res = await fetch(`${tb.url}/admin/config`, { headers: { authorization: admin.authorization.replace('Bearer', 'bearer') } });
  t.equal(res.status, 200);
});

t.test('health, liveness and readiness', async (t) => {
  t.same(await json(await fetch(`${tb.url}/healthz`)), { ok: true });
  t.same(await json(await fetch(`${tb.url}/health`)), { status: 'ok' });
  const ready = await fetch(`${tb.url}/ready`);
  t.equal(ready.status, 200);
  t.same(await json(ready), { ready: true, models_loaded: true });
});

t.test('unknown route 404, wrong method 405 with Allow, both in the error shape', async (t) => {
  const r404 = await fetch(`${tb.url}/nope`);
  t.equal(r404.status, 404);
  const b404 = await json(r404);
  t.equal(b404.error.code, 'not_found');
  t.equal(b404.error.request_id, r404.headers.get('trace-id'));
  const r405 = await fetch(`${tb.url}/v1/infer`);
  t.equal(r405.status, 405);
  t.equal(r405.headers.get('allow'), 'POST');
  t.equal((await json(r405)).error.code, 'method_not_allowed');
  // Counted and logged under its path's route, not "unmatched": a dashboard shows which route clients misuse.
  const before = await metricValue(tb.url, 'http_request_duration_seconds_count', { route: '/v1/infer', status: '405' });
  const again = await fetch(`${tb.url}/v1/infer`, { headers: { 'x-request-id': 'wrong-method-1' } });
  await again.arrayBuffer();
  t.equal(await metricValue(tb.url, 'http_request_duration_seconds_count', { route: '/v1/infer', status: '405' }), before + 1, 'http metrics under its route');
  t.match(await logLine(tb, (l) => l['trace_id'] === 'wrong-method-1'), { route: '/v1/infer', status: 405 }, 'the access line too');
  // A control-plane route (forwarded by a data-plane thread) too.
  const audit = await fetch(`${tb.url}/api/audit`, { method: 'PUT', headers: { 'x-request-id': 'wrong-method-2' } });
  t.equal(audit.status, 405);
  t.match(await logLine(tb, (l) => l['trace_id'] === 'wrong-method-2'), { route: '/api/audit', status: 405 }, 'a forwarded one under its route');
});

t.test('Trace-Id: the client X-Request-ID when printable and short, else a fresh id', async (t) => {
  const mine = await fetch(`${tb.url}/healthz`, { headers: { 'x-request-id': 'abc-123' } });
  t.equal(mine.headers.get('trace-id'), 'abc-123');
  const tooLong = await fetch(`${tb.url}/healthz`, { headers: { 'x-request-id': 'x'.repeat(129) } });
  t.not(tooLong.headers.get('trace-id'), 'x'.repeat(129));
  t.match(tooLong.headers.get('trace-id'), /^[0-9a-f]{20,}$/);
  const a = (await fetch(`${tb.url}/healthz`)).headers.get('trace-id');
  const b = (await fetch(`${tb.url}/healthz`)).headers.get('trace-id');
  t.not(a, b, 'fresh ids differ');
});

t.test('body over MAX_BODY_BYTES: 413 from Content-Length, server keeps serving', async (t) => {
  const res = await postJson(`${tb.url}/v1/infer`, { image_b64: 'A'.repeat(5000) });
  t.equal(res.status, 413);
  t.equal(res.body.error.code, 'payload_too_large');
  t.match(res.body.error.message, /MAX_BODY_BYTES/);
  t.equal((await fetch(`${tb.url}/healthz`)).status, 200);
});

t.test('body over MAX_BODY_BYTES sent chunked: 413 once the body is read and dropped', async (t) => {
  const port = tb.broker.port;
  const reply = await new Promise<string>((resolve, reject) => {
    const sock = connect(port, '127.0.0.1', () => {
      sock.write('POST /v1/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n');
      const chunk = 'A'.repeat(1000);
      for (let i = 0; i < 6; i++) sock.write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`);
      sock.write('0\r\n\r\n');
    });
    let data = '';
    sock.on('data', (d) => (data += d.toString()));
    sock.on('close', () => resolve(data));
    sock.on('error', reject);
    setTimeout(() => sock.destroy(), 3000);
  });
  t.match(reply, /^HTTP\/1.1 413/);
  t.match(reply, /payload_too_large/);
});

t.test('logs: one JSON line per request with trace id, route, status, duration; no secrets', async (t) => {
  await fetch(`${tb.url}/admin/config`, { headers: { ...admin, 'x-request-id': 'log-check-1' } });
  const line = await logLine(tb, (l) => l.trace_id === 'log-check-1' && l.msg === 'request');
  t.ok(line, 'a line for the request');
  t.equal(line!.route, '/admin/config');
  t.equal(line!.status, 200);
  t.type(line!.duration_ms, 'number');
  t.match(line!.client, /127\.0\.0\.1$/, 'the client address');
  t.notMatch(JSON.stringify(tb.logs), /test-admin-token/, 'the admin token never appears in logs');
});

t.test('admin routes: 401 without credential, 403 with a wrong one', async (t) => {
  const none = await fetch(`${tb.url}/admin/config`);
  t.equal(none.status, 401);
  t.equal((await json(none)).error.code, 'unauthorized');
  const wrong = await fetch(`${tb.url}/admin/config`, { headers: { authorization: 'Bearer nope-nope-nope' } });
  t.equal(wrong.status, 403);
  t.equal((await json(wrong)).error.code, 'forbidden');
  t.equal((await fetch(`${tb.url}/admin/config`, { headers: admin })).status, 200);
});

t.test('POST /admin/config validates and names the bad field', async (t) => {
  const bad = await postJson(`${tb.url}/admin/config`, { ab_weight_a: 'lots' }, admin);
  t.equal(bad.status, 400);
  t.match(bad.body.error.message, /ab_weight_a/);
  const unknown = await postJson(`${tb.url}/admin/config`, { nope: 1 }, admin);
  t.equal(unknown.status, 400);
  t.match(unknown.body.error.message, /nope/);
  // The names every object inherits are unknown fields too (before: 200, and a stray key in the live config).
  for (const body of ['{"constructor":5}', '{"__proto__":5}', '{"toString":0}', '{"hasOwnProperty":1,"ab_weight_b":3}']) {
    const inherited = await postJson(`${tb.url}/admin/config`, body, admin);
    t.equal(inherited.status, 400, body);
    t.match(inherited.body.error, { code: 'invalid_request', message: /unknown field/ }, body);
  }
  const pct = await postJson(`${tb.url}/admin/config`, { canary_percent: 101 }, admin);
  t.match(pct.body.error.message, /canary_percent/);
  const ok = await postJson(`${tb.url}/admin/config`, { ab_weight_a: 0.5, ab_weight_b: 0.5, shadow_enabled: true }, admin);
  t.equal(ok.status, 200);
  t.equal(ok.body.ab_weight_b, 0.5);
  t.equal(ok.body.shadow_enabled, true);
  const read = await json(await fetch(`${tb.url}/admin/config`, { headers: admin }));
  t.equal(read.b_share, 0.5);
  // Both weights 0: the error names the field the caller sent.
  const zero = await postJson(`${tb.url}/admin/config`, { ab_weight_a: 0, ab_weight_b: 0 }, admin);
  t.equal(zero.status, 400);
  t.equal(zero.body.error.param ?? zero.body.error.details?.field, 'ab_weight_a', 'both sent: the first');
  t.equal((await postJson(`${tb.url}/admin/config`, { ab_weight_a: 0, ab_weight_b: 1 }, admin)).status, 200);
  const onlyB = await postJson(`${tb.url}/admin/config`, { ab_weight_b: 0 }, admin);
  t.equal(onlyB.status, 400);
  t.equal(onlyB.body.error.param ?? onlyB.body.error.details?.field, 'ab_weight_b', 'B set to 0 while A is 0: names ab_weight_b');
  t.equal((await postJson(`${tb.url}/admin/config`, { ab_weight_a: 0.5, ab_weight_b: 0.5 }, admin)).status, 200);
  const warm = await fetch(`${tb.url}/admin/warmup`, { method: 'POST', headers: admin });
  t.equal(warm.status, 200);
  t.equal((await json(warm)).warmed, true);
});

t.test('rate limit per client: 429 rate_limited with Retry-After; another key has its own bucket', async (t) => {
  const statuses: number[] = [];
  let limited: Response | undefined;
  for (let i = 0; i < 12; i++) {
    const res = await fetch(`${tb.url}/v1/infer`, { method: 'POST', headers: { 'x-api-key': 'client-1' }, body: '{}' });
    statuses.push(res.status);
    if (res.status === 429) limited ??= res;
    else await res.text();
  }
  t.ok(statuses.filter((s) => s === 429).length >= 5, `some were limited: ${statuses}`);
  t.ok(limited);
  t.equal(limited!.headers.get('retry-after'), '1');
  t.equal((await json(limited!)).error.code, 'rate_limited');
  const other = await fetch(`${tb.url}/v1/infer`, { method: 'POST', headers: { 'x-api-key': 'client-2' }, body: '{}' });
  t.equal(other.status, 400, 'another client is not limited');
  t.ok((await metricValue(tb.url, 'rate_limit_rejections_total')) >= 5);
});

t.test('made-up API keys do not escape the limit: they count as the client address', async (t) => {
  await new Promise((r) => setTimeout(r, 1100)); // the address bucket refills (5/s, burst 5)
  const statuses: number[] = [];
  for (let i = 0; i < 10; i++) {
    const res = await fetch(`${tb.url}/v1/infer`, { method: 'POST', headers: { 'x-api-key': `random-${i}-${Math.random()}` }, body: '{}' });
    statuses.push(res.status);
    await res.text();
  }
  t.ok(statuses.filter((s) => s !== 429).length <= 6, `at most the burst (and a refill) got through: ${statuses}`);
  t.ok(statuses.includes(429));
});

t.test('metrics expose the http metrics', async (t) => {
  const res = await fetch(`${tb.url}/metrics`);
  t.match(res.headers.get('content-type'), /text\/plain/);
  const text = await res.text();
  for (const name of ['http_request_duration_seconds_bucket', 'http_requests_errors_total', 'http_requests_active', 'process_cpu_seconds_total']) t.match(text, name);
});

t.test("/metrics passes promtool's lint, as an operator's CI checks it", async (t) => {
  await postJson(`${tb.url}/v1/infer`, { image_b64: 'bm90IGFuIGltYWdl' });
  const text = await (await fetch(`${tb.url}/metrics`)).text();
  let out = '';
  try {
    out = execFileSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8', stdio: 'pipe' });
  } catch (err) {
    const e = err as { status?: number; stdout?: string; stderr?: string };
    out = `exit ${e.status}: ${e.stdout ?? ''}${e.stderr ?? ''}`;
  }
  t.equal(out.trim(), '', 'no lint finding');
  t.match(text, /^nodejs_active_handles\{type="/m, 'the per-type handles stay');
});

t.test('admin refused when ADMIN_TOKEN is not set, with a start-up warning', async (t) => {
  // Admin routes are the control plane's (data-plane threads forward them there whole), and
  // no image is sent: no data-plane thread, one inference thread.
  const nb = await startTestBroker({ ADMIN_TOKEN: '', FRONT_THREADS: '0', INFER_THREADS: '1' });
  t.teardown(() => nb.close());
  const res = await fetch(`${nb.url}/admin/config`, { headers: admin });
  t.equal(res.status, 403);
  t.equal((await json(res)).error.code, 'admin_disabled');
  t.ok(nb.logs.some((l) => l.level === 40 && /ADMIN_TOKEN/.test(String(l.msg))));
});

t.test('a short ADMIN_TOKEN starts with a warning', async (t) => {
  // The suite's token is 17 characters.
  t.ok(tb.logs.some((l) => l.level === 40 && /ADMIN_TOKEN is shorter than 32/.test(String(l.msg))));
});

t.test('HEAD works wherever GET does: headers and length, no body', async (t) => {
  for (const path of ['/healthz', '/ready', '/metrics', '/v1/models']) {
    const get = await fetch(`${tb.url}${path}`);
    const getBody = await get.text();
    const head = await fetch(`${tb.url}${path}`, { method: 'HEAD' });
    t.equal(head.status, get.status, `${path}: same status`);
    t.equal(await head.text(), '', `${path}: no body`);
    t.equal(head.headers.get('content-type'), get.headers.get('content-type'));
    if (path !== '/metrics') t.equal(Number(head.headers.get('content-length')), Buffer.byteLength(getBody), `${path}: the GET body's length`);
  }
  const r405 = await fetch(`${tb.url}/healthz`, { method: 'DELETE' });
  t.equal(r405.status, 405);
  t.match(r405.headers.get('allow'), /HEAD/);
  // The connection goes on after a HEAD (Claude Code sends HEAD / first: its next request on that
  // keep-alive connection got no answer).
  const replies = await new Promise<string>((resolve) => {
    const s = connect(tb.broker.port, '127.0.0.1');
    let got = '';
    s.on('data', (c) => {
      got += c.toString('latin1');
      if (got.includes('"version"')) s.end();
    });
    s.on('close', () => resolve(got));
    s.write('HEAD / HTTP/1.1\r\nHost: x\r\n\r\n');
    setTimeout(() => s.write('GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n'), 50);
    setTimeout(() => s.destroy(), 2000);
  });
  t.equal(replies.match(/HTTP\/1\.1 200/g)?.length, 2, 'the GET after a HEAD on one connection is answered');
  t.match(replies, /content-length: 17\r\n/i, "HEAD / says the length of GET /'s body");
});

t.test('capacity ids follow the fleet id rule', async (t) => {
  const bad = await fetch(`${tb.url}/api/industrial/capacity/${'x'.repeat(65)}/register`, { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, body: '{"concurrencyLimit":2}' });
  t.equal(bad.status, 400);
  t.equal((await json(bad)).error.code, 'invalid_request');
  const ok = await fetch(`${tb.url}/api/industrial/capacity/dep.ok-1/register`, { method: 'POST', headers: { ...admin, 'content-type': 'application/json' }, body: '{"concurrencyLimit":2}' });
  t.equal(ok.status, 201);
});

t.test('a capacity id of its own (no fleet deployment) is said so on drain, and DELETE takes it back from the views and metrics', async (t) => {
  const H = { ...admin, 'content-type': 'application/json' };
  const cap = (path = '', init: RequestInit = {}) => fetch(`${tb.url}/api/industrial/capacity${path}`, { headers: H, ...init });
  t.equal((await cap('/own-1/register', { method: 'POST', body: '{"concurrencyLimit":20}' })).status, 201);
  t.ok(((await json(await cap())).deployments as { id: string }[]).some((d) => d.id === 'own-1'), 'listed');
  t.equal(await metricValue(tb.url, 'broker_capacity_limit', { deployment: 'own-1' }), 20);
  const drain = await cap('/own-1/drain', { method: 'POST', body: '{"draining":true}' });
  t.equal(drain.status, 404);
  t.match((await json(drain)).error.message, /registered capacity id, not a deployment of the fleet/);
  const del = await cap('/own-1', { method: 'DELETE' });
  t.equal(del.status, 200);
  t.same(await json(del), { id: 'own-1', removed: true });
  t.equal((await cap('/own-1')).status, 404, 'gone from its view');
  t.notOk(((await json(await cap())).deployments as { id: string }[]).some((d) => d.id === 'own-1'), 'and from the list');
  t.notMatch(await (await fetch(`${tb.url}/metrics`)).text(), /deployment="own-1"/, 'and from the metrics');
  t.equal((await cap('/own-1', { method: 'DELETE' })).status, 404, 'once');
  const fleetDep = await cap('/g-1', { method: 'DELETE' });
  t.equal(fleetDep.status, 409, "a fleet deployment is the fleet config's to remove");
  t.equal((await json(fleetDep)).error.code, 'config_conflict');
  t.equal((await cap('/own-1/register', { method: 'POST', body: '{"concurrencyLimit":3}' })).status, 201, 'registered again');
  t.equal(((await json(await cap('/own-1'))) as { concurrencyLimit: number }).concurrencyLimit, 3);
});

t.test('Content-Length twice: 400 and the connection closed, so a request hidden in the body is never served', async (t) => {
  const inner = 'GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Request-ID: smuggled-req\r\nConnection: close\r\n\r\n';
  for (const [first, second] of [[0, inner.length], [inner.length, 0]]) {
    const text = await exchange(`DELETE /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: ${first}\r\nContent-Length: ${second}\r\n\r\n${inner}`);
    // With bytes after it the connection closes at once (uWS); alone, the 400 says why.
    t.notMatch(text, /HTTP\/1\.1 200/, `Content-Length ${first} then ${second}: nothing served`);
    t.notMatch(text, /smuggled-req/, 'the hidden request was not served');
  }
  const alone = await exchange('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}');
  t.same(alone.match(/HTTP\/1\.1 \d+/g), ['HTTP/1.1 400'], 'no bytes after it: a 400, then the connection closes');
  t.match(alone, /"code":"invalid_request"/);
  t.match(alone, /Content-Length appears more than once/);
  // An empty (or otherwise not digits) Content-Length: uWS read it as 0 and served the body as the next request.
  for (const value of ['', '+72', ' 1e2', '0x48']) {
    const text = await exchange(`POST /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: ${value}\r\n\r\n${inner}`);
    t.notMatch(text, /smuggled-req/, `Content-Length ${JSON.stringify(value)}: the request in the body was not served`);
    t.notMatch(text, /HTTP\/1\.1 200/);
  }
  const empty = await exchange('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n');
  t.same(empty.match(/HTTP\/1\.1 \d+/g), ['HTTP/1.1 400'], 'alone: a 400 saying why, then the connection closes');
  t.match(empty, /Content-Length must be a number of bytes/);
});

t.test('a transfer coding besides chunked is refused (415 unsupported_encoding), not read as if absent', async (t) => {
  const port = Number(new URL(tb.url).port);
  const raw = (te: string): Promise<string> =>
    new Promise<string>((resolve) => {
      let out = '';
      const body = '{"model":"x","messages":[]}';
      const s = connect(port, '127.0.0.1', () => s.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: ${te}\r\nConnection: close\r\n\r\n${body.length.toString(16)}\r\n${body}\r\n0\r\n\r\n`));
      s.on('data', (d) => (out += d.toString('latin1')));
      s.on('close', () => resolve(out));
      s.on('error', () => resolve(out));
      setTimeout(() => s.destroy(), 5000).unref();
    });
  const gz = await raw('gzip, chunked');
  t.match(gz, /^HTTP\/1\.1 415/);
  t.match(gz, /transfer-encoding \\"gzip, chunked\\" is not supported/);
  t.match(await raw('gzip\r\nTransfer-Encoding: chunked'), /^HTTP\/1\.1 415/, 'on two lines: one list, all of it checked');
  t.notMatch(await raw('chunked'), /^HTTP\/1\.1 415/, 'chunked alone is read');
});

t.test('a credential header twice is refused, whichever comes first: a proxy in front may take the other', async (t) => {
  const port = Number(new URL(tb.url).port);
  const raw = (head: string): Promise<string> =>
    new Promise<string>((resolve) => {
      let out = '';
      const s = connect(port, '127.0.0.1', () => s.write(`GET /v1/models HTTP/1.1\r\nHost: x\r\n${head}Connection: close\r\n\r\n`));
      s.on('data', (d) => (out += d.toString('latin1')));
      s.on('close', () => resolve(out));
      s.on('error', () => resolve(out));
      setTimeout(() => s.destroy(), 5000).unref();
    });
  for (const head of ['Authorization: Bearer a\r\nAuthorization: Bearer b\r\n', 'X-Api-Key: a\r\nx-api-key: b\r\n', 'Host: y\r\n']) {
    const text = await raw(head);
    t.match(text, /^HTTP\/1\.1 400/, JSON.stringify(head));
    t.match(text, /(authorization|x-api-key|host) appears more than once/);
  }
  t.match(await raw('Authorization: Bearer a\r\nX-Api-Key: b\r\n'), /^HTTP\/1\.1 200/, 'one of each is no conflict here (the route decides which it reads)');
});

t.test('a body that stops arriving ends as 408 in the log and metrics, not 499', async (t) => {
  // Its connection was opened at the top of the file (see `stopped`).
  await stopped;
  // Not the trickled request's line (408 too, its connection opened alongside).
  const line = await logLine(tb, (l) => l.msg === 'request' && l.status === 408 && l.trace_id !== 'trickle', 3000);
  t.ok(line, 'logged as 408');
  t.equal(line?.error, 'request_timeout');
});

t.test('a body that trickles slower than uWS takes (16 KB/s) is cut while still arriving: 408 request_timeout', async (t) => {
  // Its connection was opened at the top of the file (see `trickled`).
  await trickled;
  const line = await logLine(tb, (l) => l.msg === 'request' && l.trace_id === 'trickle', 3000);
  t.match(line, { status: 408, error: 'request_timeout' });
});

t.test('a client that closes mid-body at once is its own close: 499 client_closed, not 408 request_timeout', async (t) => {
  const port = Number(new URL(tb.url).port);
  const id = 'left-mid-body';
  await new Promise<void>((resolve) => {
    const s = connect(port, '127.0.0.1', () => {
      s.write(`POST /v1/infer HTTP/1.1\r\nHost: x\r\nx-request-id: ${id}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"image_b64":`);
      setTimeout(() => s.destroy(), 200);
    });
    s.on('close', () => resolve());
    s.on('error', () => resolve());
  });
  const line = await logLine(tb, (l) => l.msg === 'request' && l.trace_id === id, 3000);
  t.match(line, { status: 499, error: 'client_closed', aborted: true });
});

t.test("a large refused upload: Node's fetch reads the 413 (lingering close), not EPIPE", async (t) => {
  // 40 MiB against MAX_BODY_BYTES=4096: the client is still writing when the broker answers.
  let status: number | string;
  try {
    const res = await fetch(`${tb.url}/v1/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: 'x'.repeat(40 * 1024 * 1024) });
    status = res.status;
    t.equal((await json(res)).error.code, 'payload_too_large');
  } catch (err) {
    status = String((err as Error & { cause?: Error }).cause?.message ?? err);
  }
  t.equal(status, 413);
  t.equal((await fetch(`${tb.url}/healthz`)).status, 200);
});

t.test("a large refused chunked upload: Node's fetch reads the 413, not EPIPE", async (t) => {
  // A streamed body has no Content-Length: the broker answered as the bytes passed the limit and
  // closed while fetch was still writing (EPIPE, no status, about one run in five).
  const counts: Record<string, number> = {};
  for (let i = 0; i < 10; i++) {
    const body = new ReadableStream({
      start(c) {
        for (let k = 0; k < 40; k++) c.enqueue(new Uint8Array(256 * 1024).fill(0x78));
        c.close();
      },
    });
    let status: number | string;
    try {
      // An unmatched path: the body limit holds there too, and no rate limit gets in the way.
      const res = await fetch(`${tb.url}/no-such-route`, { method: 'POST', headers: { 'content-type': 'application/json' }, body, duplex: 'half' } as RequestInit);
      status = res.status;
      await res.text();
    } catch (err) {
      status = String((err as Error & { cause?: Error }).cause?.message ?? err);
    }
    counts[status] = (counts[status] ?? 0) + 1;
  }
  t.same(counts, { 413: 10 });
  t.equal((await fetch(`${tb.url}/healthz`)).status, 200);
});

for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}: a Content-Length over the limit with a credential still being checked gets its 413; the refused credential ends nothing`, async (t) => {
    // No image is sent: one inference thread (the data-plane threads are the point here).
    const nb = await startTestBroker({ FRONT_THREADS: threads, INFER_THREADS: '1', MAX_BODY_BYTES: '4096', AUTH_MODE: 'keys', BROKER_CONFIG: fleet });
    t.teardown(() => nb.close());
    const port = Number(new URL(nb.url).port);
    // A session id not yet known (looked up asynchronously), and an admin route (checked asynchronously) with none.
    for (const head of ['POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer sess_unknown', 'POST /api/orchestrator/config HTTP/1.1']) {
      const text = await new Promise<string>((resolve) => {
        let out = '';
        const s = connect(port, '127.0.0.1', () => s.write(`${head}\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n`));
        s.on('data', (d) => (out += d.toString('latin1')));
        s.on('close', () => resolve(out));
        s.on('error', () => resolve(out));
        setTimeout(() => s.destroy(), 3000).unref();
      });
      t.match(text, /^HTTP\/1\.1 413/, `${head.split(' ')[1]}: 413`);
      // The credential's refusal lands after the 413: let it.
      await new Promise((r) => setTimeout(r, 200));
      t.equal((await fetch(`${nb.url}/healthz`)).status, 200, 'still serving');
    }
    t.equal(await metricValue(nb.url, 'broker_data_plane_restarts_total'), 0, 'no thread died');
  });
}

t.test('a very long path is logged cut, with its length: one request is one bounded log line', async (t) => {
  // Under uWS's 4 KB for a request head that arrives in more than one read (docs/operations.md):
  // a 70 KB path was served only when the kernel handed it over in one read (else reset).
  const long = `/v1/${'x'.repeat(3_500)}`;
  const res = await fetch(`${tb.url}${long}`, { headers: { 'x-request-id': 'long-path' } });
  t.equal(res.status, 404);
  await res.arrayBuffer();
  const line = await logLine(tb, (l) => l.trace_id === 'long-path');
  t.ok(line, 'logged');
  t.ok(String(line?.path).length < 2200, `the path logged in ${String(line?.path).length} characters`);
  t.match(String(line?.path), /…\(3504 characters\)$/);
});

t.test("a client's Connection: close is answered with one, and the connection closes after the reply", async (t) => {
  const port = Number(new URL(tb.url).port);
  for (const value of ['close', 'keep-alive, Close', 'CLOSE']) {
    const text = await exchange(`GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: ${value}\r\n\r\n`);
    t.match(text, /^HTTP\/1\.1 200/, value);
    t.match(text, /\r\nconnection: close\r\n/i, `${value}: the reply says close (RFC 9112 §9.6)`);
  }
  // The closing request after the first reply (uWS closes a pipelined connection: docs/operations.md).
  const kept = await new Promise<string>((resolve) => {
    let out = '';
    const s = connect(port, '127.0.0.1', () => s.write('GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n'));
    s.on('data', (d) => {
      const first = out === '';
      out += d.toString('latin1');
      if (first) s.write('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    });
    s.on('close', () => resolve(out));
    setTimeout(() => s.destroy(), 5000).unref();
  });
  t.equal(kept.match(/HTTP\/1\.1 200/g)?.length, 2, 'a kept-alive request, then the closing one');
  t.equal(kept.match(/connection: close/gi)?.length, 1, 'only the closing one says close');
  // Node's http.Agent without keep-alive, Connection: close on each request: before, it wrote
  // requests on connections uWS was closing, and a third of them died with "socket hang up".
  const { Agent, request } = await import('node:http');
  const agent = new Agent({ keepAlive: false, maxSockets: 4 });
  const one = (): Promise<number> =>
    new Promise((resolve) => {
      const r = request(`${tb.url}/healthz`, { agent, headers: { connection: 'close' } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      r.on('error', () => resolve(-1));
      r.end();
    });
  const statuses = await Promise.all(Array.from({ length: 60 }, one));
  agent.destroy();
  t.same(statuses.filter((s) => s !== 200), [], 'every request answered');
});
