import t from 'tap';
import { Agent, request, type IncomingMessage } from 'node:http';
import { createMockUpstream, mockText } from '../../src/mock-upstream/server.ts';
import { parseNdjson, parseSse } from '../../src/mock-upstream/wire.ts';

const mock = await createMockUpstream({ tokens: 3 });
t.teardown(() => mock.close());

// Wire bodies are checked field by field.
const json = (res: Response): Promise<any> => res.json();

function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(mock.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

const chat = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };

t.test('url and port', async (t) => {
  t.match(mock.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  t.ok(mock.port > 0);
  t.equal(mock.url, `http://127.0.0.1:${mock.port}`);
});

t.test('unknown paths are 404 in the API shape of their prefix', async (t) => {
  const openai = await post('/v1/audio/speech', { input: 'x' });
  t.equal(openai.status, 404);
  t.same(await json(openai), { error: { message: 'Invalid URL (POST /v1/audio/speech)', type: 'invalid_request_error', param: null, code: null } });

  const ollama = await fetch(mock.url + '/api/pull');
  t.equal(ollama.status, 404);
  t.same(await json(ollama), { error: '404 page not found' });

  const other = await fetch(mock.url + '/nope?x=1');
  t.equal(other.status, 404);
  t.equal((await json(other)).error.message, 'Invalid URL (GET /nope)', 'the query string is not part of the path');
});

t.test('a known path with the wrong method is 405 with Allow', async (t) => {
  const res = await fetch(mock.url + '/v1/chat/completions');
  t.equal(res.status, 405);
  t.equal(res.headers.get('allow'), 'POST');
  t.equal((await json(res)).error.type, 'invalid_request_error');
  const tags = await post('/api/tags', {});
  t.equal(tags.status, 405);
  t.equal(tags.headers.get('allow'), 'GET');
  t.type((await json(tags)).error, 'string');
});

t.test('a query string does not change the route', async (t) => {
  const res = await post('/v1/chat/completions?api-version=2024-01-01', chat);
  t.equal(res.status, 200);
  t.equal((await json(res)).choices[0].message.content, mockText(3));
});

t.test('stats count per path and record the last request', async (t) => {
  mock.resetStats();
  t.same(mock.stats.requests['/v1/chat/completions'], 0, 'known paths start at 0');
  await (await post('/v1/chat/completions', chat, { 'x-trace': 'one' })).text();
  await (await post('/v1/chat/completions', { ...chat, stream: true })).text();
  await (await fetch(mock.url + '/api/tags')).text();
  await (await fetch(mock.url + '/missing')).text();
  await (await post('/api/generate', { model: 'g', prompt: 'p' }, { authorization: 'Bearer abc' })).text();
  await mock.idle();

  const s = mock.stats;
  t.equal(s.total, 5);
  t.equal(s.requests['/v1/chat/completions'], 2);
  t.equal(s.requests['/api/tags'], 1);
  t.equal(s.requests['/missing'], 1);
  t.equal(s.requests['/api/generate'], 1);
  t.equal(s.requests['/api/chat'], 0);
  t.equal(s.open, 0);
  t.equal(s.completed, 5);
  t.equal(s.clientClosed, 0);
  t.equal(s.lastMethod, 'POST');
  t.equal(s.lastPath, '/api/generate');
  t.equal(s.lastHeaders!.authorization, 'Bearer abc');
  t.equal(s.lastHeaders!['content-type'], 'application/json');
  t.same(s.lastBody, { model: 'g', prompt: 'p' });

  await (await fetch(mock.url + '/v1/models')).text();
  t.equal(mock.stats.lastBody, undefined, 'a GET has no body');
  await (await post('/api/chat', '{nope')).text();
  t.equal(mock.stats.lastBody, undefined, 'nor does a request with bad JSON');
  t.equal(mock.stats.lastPath, '/api/chat');

  mock.resetStats();
  t.equal(mock.stats.total, 0);
  t.equal(mock.stats.requests['/v1/chat/completions'], 0);
  t.equal(mock.stats.lastHeaders, undefined);
});

t.test('open counts requests in flight', async (t) => {
  mock.resetStats();
  // Both held for seconds, and polled for (a fixed 100 ms wait missed one on a loaded box).
  const slow = post('/v1/chat/completions', chat, { 'x-mock-ttft-ms': '3000' });
  const slower = post('/api/chat', chat, { 'x-mock-tps': '5' });
  for (let i = 0; i < 250 && mock.stats.open < 2; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(mock.stats.open, 2);
  await Promise.all([(await slow).text(), (await slower).text()]);
  await mock.idle();
  t.equal(mock.stats.open, 0);
  t.equal(mock.stats.completed, 2);
});

t.test('idle() rejects while a request stays open, resolves once it closes', async (t) => {
  const ac = new AbortController();
  const pending = fetch(mock.url + '/v1/chat/completions', {
    method: 'POST',
    headers: { 'x-mock-fail': 'stall' },
    body: JSON.stringify(chat),
    signal: ac.signal,
  }).catch((err: Error) => err.name);
  await new Promise((r) => setTimeout(r, 50));
  await t.rejects(mock.idle(100), /1 request\(s\) still open after 100 ms/);
  ac.abort();
  t.equal(await pending, 'AbortError');
  await mock.idle();
  t.equal(mock.stats.open, 0);
});

t.test('keep-alive: sequential requests reuse one connection', async (t) => {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  t.teardown(() => agent.destroy());
  const get = (path: string, body?: string): Promise<{ res: IncomingMessage; reused: boolean; text: string }> =>
    new Promise((resolve, reject) => {
      const req = request(mock.url + path, { agent, method: body === undefined ? 'GET' : 'POST' }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ res, reused: req.reusedSocket, text }));
      });
      req.on('error', reject);
      req.end(body);
    });
  const a = await get('/v1/models');
  t.equal(a.res.headers.connection, 'keep-alive');
  t.equal(a.res.headers['keep-alive'], 'timeout=65');
  t.notOk(a.reused);
  const b = await get('/v1/chat/completions', JSON.stringify({ ...chat, stream: true }));
  t.ok(b.reused, 'a streamed answer on the same socket');
  t.ok(parseSse(b.text).done);
  const c = await get('/api/chat', JSON.stringify(chat));
  t.ok(c.reused, 'and another one after it');
  t.equal(parseNdjson(c.text).lines.length, 4);
});

t.test('a body larger than maxBodyBytes is 413 and closes the connection', async (t) => {
  const small = await createMockUpstream({ maxBodyBytes: 1000 });
  t.teardown(() => small.close());
  const res = await fetch(small.url + '/v1/chat/completions', {
    method: 'POST',
    body: JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(5000) }] }),
  });
  t.equal(res.status, 413);
  t.equal(res.headers.get('connection'), 'close');
  t.match((await json(res)).error.message, /larger than 1000 bytes/);
  const ollama = await fetch(small.url + '/api/chat', { method: 'POST', body: 'x'.repeat(5000) });
  t.equal(ollama.status, 413);
  t.type((await json(ollama)).error, 'string');
});

t.test('many concurrent streams are all complete and correct', async (t) => {
  const n = 50;
  const results = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const res = await post('/v1/chat/completions', { ...chat, model: `m${i}`, stream: true }, { 'x-mock-tokens': String(i), 'x-mock-tps': '500' });
      return parseSse(await res.text());
    }),
  );
  results.forEach((r, i) => {
    const chunks = r.events as Array<{ model: string; choices: Array<{ delta: { content?: string } }> }>;
    t.ok(r.done);
    t.equal(chunks.map((c) => c.choices[0]!.delta.content ?? '').join(''), mockText(i), `stream ${i}`);
    t.ok(chunks.every((c) => c.model === `m${i}`));
  });
});

t.test('close() ends stalled connections too', async (t) => {
  const m = await createMockUpstream({ fail: 'stall' });
  const pending = fetch(m.url + '/v1/chat/completions', { method: 'POST', body: JSON.stringify({ ...chat, stream: true }) }).then(
    (r) => r.text(),
  );
  await new Promise((r) => setTimeout(r, 50));
  const start = performance.now();
  await m.close();
  t.ok(performance.now() - start < 1000, 'close does not wait for the stalled request');
  await t.rejects(pending, 'the stalled client sees the connection end');
});

t.test('a taken port is reported', async (t) => {
  await t.rejects(createMockUpstream({ port: mock.port }), { code: 'EADDRINUSE' });
});

t.test('wire parsers reject bad framing', async (t) => {
  t.throws(() => parseSse('event: x\ndata: {}\n\n'), /not a single-line SSE data event/);
  t.throws(() => parseSse('data: [DONE]\n\ndata: {}\n\n'), /after \[DONE\]/);
  t.throws(() => parseSse('data: {nope\n\n'), SyntaxError);
  t.same(parseSse('data: {"a":1}\n\ndata: {"b"'), { events: [{ a: 1 }], done: false, rest: 'data: {"b"' });
  t.throws(() => parseNdjson('{"a":1}\nnope\n'), SyntaxError);
  t.same(parseNdjson('{"a":1}\n{"b"'), { lines: [{ a: 1 }], rest: '{"b"' });
});
