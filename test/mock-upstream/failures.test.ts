import t from 'tap';
import { setTimeout as sleep } from 'node:timers/promises';
import { createMockUpstream, mockText } from '../../src/mock-upstream/server.ts';
import { parseNdjson, parseSse } from '../../src/mock-upstream/wire.ts';

const mock = await createMockUpstream({ tokens: 6 });
t.teardown(() => mock.close());

// Wire bodies are checked field by field.
const json = (res: Response): Promise<any> => res.json();

function post(url: string, path: string, body: unknown, headers: Record<string, string> = {}, signal?: AbortSignal): Promise<Response> {
  return fetch(url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    ...(signal ? { signal } : {}),
  });
}

const chat = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };
const chatStream = { ...chat, stream: true };

/** Reads until the stream ends or fails; returns what arrived and the error, if any. */
async function drain(res: Response): Promise<{ text: string; error: unknown }> {
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let text = '';
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return { text, error: undefined };
      text += dec.decode(value, { stream: true });
    }
  } catch (error) {
    return { text, error };
  }
}

type Reader = ReadableStreamDefaultReader<Uint8Array>;

/** Reads until `text` has `count` tokens; returns the reader so the test can keep going. */
async function readTokens(res: Response, count: number): Promise<{ reader: Reader; text: string }> {
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let text = '';
  while ((text.match(/tok\d+ /g)?.length ?? 0) < count) {
    const { done, value } = await reader.read();
    if (done) throw new Error(`stream ended after ${text.length} bytes: ${text}`);
    text += dec.decode(value, { stream: true });
  }
  return { reader, text };
}

t.test('x-mock-fail: 500 answers before any byte, in each API shape', async (t) => {
  const start = performance.now();
  const res = await post(mock.url, '/v1/chat/completions', chatStream, { 'x-mock-fail': '500', 'x-mock-ttft-ms': '5000' });
  t.ok(performance.now() - start < 1000, 'no ttft wait');
  t.equal(res.status, 500);
  t.equal(res.headers.get('content-type'), 'application/json', 'JSON, not SSE');
  const body = await json(res);
  t.equal(body.error.type, 'server_error');
  t.type(body.error.message, 'string');
  t.equal(body.error.code, null);

  const ollama = await post(mock.url, '/api/chat', chat, { 'x-mock-fail': '500' });
  t.equal(ollama.status, 500);
  t.match(ollama.headers.get('content-type'), /^application\/json/);
  const ob = await json(ollama);
  t.same(Object.keys(ob), ['error']);
  t.type(ob.error, 'string');
});

t.test('x-mock-fail: 429 sends Retry-After: 1 and a rate-limit error', async (t) => {
  const res = await post(mock.url, '/v1/chat/completions', chat, { 'x-mock-fail': '429' });
  t.equal(res.status, 429);
  t.equal(res.headers.get('retry-after'), '1');
  t.same(await json(res), {
    error: { message: 'Rate limit reached for requests (mock-upstream). Please try again in 1s.', type: 'requests', param: null, code: 'rate_limit_exceeded' },
  });

  const ollama = await post(mock.url, '/api/generate', { model: 'm', prompt: 'x' }, { 'x-mock-fail': '429' });
  t.equal(ollama.status, 429);
  t.equal(ollama.headers.get('retry-after'), '1');
  t.type((await json(ollama)).error, 'string');
});

t.test('other statuses work too', async (t) => {
  const res503 = await post(mock.url, '/v1/completions', { prompt: 'x' }, { 'x-mock-fail': '503' });
  t.equal(res503.status, 503);
  t.equal(res503.headers.get('retry-after'), '1');
  t.equal((await json(res503)).error.type, 'server_error');
  const res401 = await post(mock.url, '/v1/completions', { prompt: 'x' }, { 'x-mock-fail': '401' });
  t.equal(res401.status, 401);
  t.equal((await json(res401)).error.code, 'invalid_api_key');
  const res418 = await post(mock.url, '/v1/completions', { prompt: 'x' }, { 'x-mock-fail': '418' });
  t.equal(res418.status, 418);
  t.equal((await json(res418)).error.type, 'invalid_request_error');
});

t.test('an injected status wins over a bad body, and the body is still recorded', async (t) => {
  const res = await post(mock.url, '/v1/chat/completions', { model: 'seen' }, { 'x-mock-fail': '500' });
  t.equal(res.status, 500);
  await res.arrayBuffer();
  t.same(mock.stats.lastBody, { model: 'seen' });
});

t.test('x-mock-fail: reset cuts an SSE stream after N tokens', async (t) => {
  const before = mock.stats.clientClosed;
  const res = await post(mock.url, '/v1/chat/completions', chatStream, { 'x-mock-fail': 'reset', 'x-mock-fail-after': '3' });
  t.equal(res.status, 200);
  t.equal(res.headers.get('content-type'), 'text/event-stream');
  const { text, error } = await drain(res);
  t.ok(error, 'the client sees the stream fail');
  const { events, done, rest } = parseSse(text);
  t.notOk(done, 'no [DONE]');
  t.equal(rest, '', 'the cut falls between events');
  const chunks = events as Array<{ choices: Array<{ delta: { role?: string; content?: string }; finish_reason: string | null }> }>;
  t.equal(chunks.length, 1 + 3, 'the role chunk and 3 tokens');
  t.equal(chunks.map((c) => c.choices[0]!.delta.content).join(''), mockText(3));
  t.notOk(chunks.some((c) => c.choices[0]!.finish_reason !== null), 'no finish chunk');
  await mock.idle();
  t.equal(mock.stats.clientClosed, before, 'a reset made by the mock is not a client abort');
});

t.test('reset works while pacing, and for NDJSON', async (t) => {
  const res = await post(mock.url, '/api/chat', chat, { 'x-mock-fail': 'reset', 'x-mock-fail-after': '2', 'x-mock-tps': '50' });
  t.equal(res.status, 200);
  const { text, error } = await drain(res);
  t.ok(error);
  const { lines, rest } = parseNdjson(text);
  t.equal(rest, '');
  t.same((lines as Array<{ message: { content: string }; done: boolean }>).map((l) => [l.message.content, l.done]), [
    ['tok0 ', false],
    ['tok1 ', false],
  ]);
});

t.test('reset after more tokens than the answer has drops only the ending', async (t) => {
  const res = await post(mock.url, '/v1/completions', { prompt: 'x', stream: true, max_tokens: 2 }, { 'x-mock-fail': 'reset', 'x-mock-fail-after': '10' });
  const { text, error } = await drain(res);
  t.ok(error);
  const { events, done } = parseSse(text);
  t.notOk(done);
  t.equal(events.length, 2, 'both tokens, no finish chunk');
});

t.test('reset after 0 tokens, and a reset of a non-streamed request', async (t) => {
  const res = await post(mock.url, '/api/generate', { model: 'm', prompt: 'x' }, { 'x-mock-fail': 'reset' });
  t.equal(res.status, 200, 'the headers were sent');
  const { text, error } = await drain(res);
  t.ok(error);
  t.equal(text, '');

  await t.rejects(post(mock.url, '/v1/chat/completions', chat, { 'x-mock-fail': 'reset', 'x-mock-fail-after': '2' }), 'no response at all');
  await t.rejects(post(mock.url, '/api/chat', { ...chat, stream: false }, { 'x-mock-fail': 'reset', 'x-mock-tps': '100' }));
});

t.test('x-mock-fail: stall stops after N tokens and holds the connection until the client leaves', async (t) => {
  mock.resetStats();
  const ac = new AbortController();
  const res = await post(mock.url, '/v1/chat/completions', chatStream, { 'x-mock-fail': 'stall', 'x-mock-fail-after': '2' }, ac.signal);
  t.equal(res.status, 200);
  const { reader, text } = await readTokens(res, 2);
  const more = await Promise.race([reader.read().then(() => 'data'), sleep(300, 'quiet')]);
  t.equal(more, 'quiet', 'nothing more arrives');
  t.equal((text.match(/tok\d+ /g) ?? []).length, 2);
  t.notMatch(text, /\[DONE\]/);
  t.equal(mock.stats.open, 1, 'the request is still open');
  t.equal(mock.stats.clientClosed, 0);

  ac.abort();
  await reader.read().catch(() => undefined);
  await mock.idle();
  t.equal(mock.stats.open, 0);
  t.equal(mock.stats.clientClosed, 1, 'the client leaving is counted');
  t.equal(mock.stats.completed, 0);
});

t.test('a stalled non-streamed request never answers', async (t) => {
  mock.resetStats();
  await t.rejects(post(mock.url, '/api/chat', { ...chat, stream: false }, { 'x-mock-fail': 'stall' }, AbortSignal.timeout(300)), { name: 'TimeoutError' });
  await mock.idle();
  t.equal(mock.stats.clientClosed, 1);
});

t.test('a client abort mid-stream is counted and stops generation', async (t) => {
  mock.resetStats();
  const ac = new AbortController();
  const res = await post(mock.url, '/api/chat', chat, { 'x-mock-tps': '20', 'x-mock-tokens': '1000' }, ac.signal);
  const { reader } = await readTokens(res, 2);
  t.equal(mock.stats.open, 1);
  ac.abort();
  await reader.read().catch(() => undefined);
  await mock.idle();
  t.equal(mock.stats.clientClosed, 1);
  t.equal(mock.stats.completed, 0);

  // a finished request is not an abort
  await (await post(mock.url, '/api/chat', chat)).text();
  await mock.idle();
  t.equal(mock.stats.clientClosed, 1);
  t.equal(mock.stats.completed, 1);
});

t.test('a whole instance can play a broken deployment', async (t) => {
  const broken = await createMockUpstream({ fail: '500' });
  t.teardown(() => broken.close());
  t.equal(broken.knobs.fail, 500);
  const chatRes = await post(broken.url, '/v1/chat/completions', chat);
  t.equal(chatRes.status, 500);
  await chatRes.arrayBuffer();
  t.equal((await fetch(broken.url + '/v1/models')).status, 500, 'listings fail too');
  const tags = await fetch(broken.url + '/api/tags');
  t.equal(tags.status, 500);
  t.type((await json(tags)).error, 'string');

  const healthy = await post(broken.url, '/v1/chat/completions', chat, { 'x-mock-fail': 'none' });
  t.equal(healthy.status, 200, 'x-mock-fail: none overrides it');
  t.equal((await json(healthy)).choices[0].message.content, mockText(16));

  const resetting = await createMockUpstream({ fail: 'reset', failAfter: 1 });
  t.teardown(() => resetting.close());
  await t.rejects(fetch(resetting.url + '/v1/models'), 'GET routes are cut too');
  const { text, error } = await drain(await post(resetting.url, '/v1/chat/completions', chatStream));
  t.ok(error);
  t.equal(parseSse(text).events.length, 2, 'the role chunk and failAfter=1 token');

  const stalling = await createMockUpstream({ fail: 'stall' });
  t.teardown(() => stalling.close());
  await t.rejects(fetch(stalling.url + '/api/tags', { signal: AbortSignal.timeout(200) }), { name: 'TimeoutError' });
  await stalling.idle();
  t.equal(stalling.stats.clientClosed, 1);
});
