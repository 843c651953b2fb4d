import t from 'tap';
import { createMockUpstream, mockText } from '../../src/mock-upstream/server.ts';
import { parseSse } from '../../src/mock-upstream/wire.ts';

const mock = await createMockUpstream({ tokens: 6, models: ['gpt-mock', 'other'] });
t.teardown(() => mock.close());

interface Chunk {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: Array<{ index: number; delta?: { role?: string; content?: string }; text?: string; finish_reason: string | null }>;
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
}

// Wire bodies are checked field by field.
const json = (res: Response): Promise<any> => res.json();

function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(mock.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

const messages = [
  { role: 'system', content: 'be brief' }, // 8 chars
  { role: 'user', content: 'hello there, mock!' }, // 18 chars
];
const promptTokens = Math.ceil(26 / 4);

t.test('chat completion, not streamed', async (t) => {
  const res = await post('/v1/chat/completions', { model: 'gpt-x', messages });
  t.equal(res.status, 200);
  t.equal(res.headers.get('content-type'), 'application/json');
  const text = await res.text();
  t.equal(res.headers.get('content-length'), String(Buffer.byteLength(text)));
  const body = JSON.parse(text);
  t.match(body.id, /^chatcmpl-/);
  t.equal(body.object, 'chat.completion');
  t.type(body.created, 'number');
  t.ok(Math.abs(body.created - Date.now() / 1000) < 5, 'created is a unix time in seconds');
  t.equal(body.model, 'gpt-x', 'echoes the model');
  t.same(body.choices, [
    { index: 0, message: { role: 'assistant', content: 'tok0 tok1 tok2 tok3 tok4 tok5 ', refusal: null, annotations: [] }, logprobs: null, finish_reason: 'stop' },
  ]);
  t.same(body.usage, { prompt_tokens: promptTokens, completion_tokens: 6, total_tokens: promptTokens + 6 });
});

t.test('max_tokens caps the answer and finishes with "length"', async (t) => {
  const body = await json(await post('/v1/chat/completions', { model: 'm', messages, max_tokens: 2 }));
  t.equal(body.choices[0].message.content, 'tok0 tok1 ');
  t.equal(body.choices[0].finish_reason, 'length');
  t.equal(body.usage.completion_tokens, 2);

  const newer = await json(await post('/v1/chat/completions', { model: 'm', messages, max_completion_tokens: 3 }));
  t.equal(newer.choices[0].message.content, mockText(3), 'max_completion_tokens too');
  t.equal(newer.choices[0].finish_reason, 'length');

  const roomy = await json(await post('/v1/chat/completions', { model: 'm', messages, max_tokens: 6 }));
  t.equal(roomy.choices[0].finish_reason, 'stop', 'a cap the answer does not reach is not "length"');
  t.equal(roomy.usage.completion_tokens, 6);
});

t.test('no model falls back to the first configured model; content parts are counted', async (t) => {
  const body = await json(
    await post('/v1/chat/completions', {
      messages: [{ role: 'user', content: [{ type: 'text', text: 'abcdefgh' }, { type: 'image_url', image_url: { url: 'x' } }, { type: 'text', text: 'ij' }] }],
    }),
  );
  t.equal(body.model, 'gpt-mock');
  t.equal(body.usage.prompt_tokens, 3, 'ceil(10 / 4)');
});

t.test('chat completion streamed, no usage', async (t) => {
  const res = await post('/v1/chat/completions', { model: 'gpt-s', messages, stream: true });
  t.equal(res.status, 200);
  t.equal(res.headers.get('content-type'), 'text/event-stream');
  t.equal(res.headers.get('cache-control'), 'no-cache');
  const text = await res.text();
  t.ok(text.endsWith('\n\ndata: [DONE]\n\n'), 'ends with [DONE]');
  const { events, done, rest } = parseSse(text);
  t.ok(done);
  t.equal(rest, '');
  const chunks = events as Chunk[];
  t.equal(chunks.length, 1 + 6 + 1, 'role chunk, one chunk per token, finish chunk');
  for (const c of chunks) {
    t.equal(c.object, 'chat.completion.chunk');
    t.equal(c.model, 'gpt-s');
    t.equal(c.id, chunks[0]!.id, 'one id for the whole stream');
    t.notOk('usage' in c, 'no usage field without include_usage');
    t.equal(c.choices.length, 1);
  }
  t.same(chunks[0]!.choices[0], { index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null });
  const content = chunks.map((c) => c.choices[0]!.delta!.content ?? '').join('');
  t.equal(content, mockText(6));
  t.same(chunks.slice(1, 7).map((c) => c.choices[0]!.delta!.content), ['tok0 ', 'tok1 ', 'tok2 ', 'tok3 ', 'tok4 ', 'tok5 ']);
  t.same(chunks[7]!.choices[0], { index: 0, delta: {}, logprobs: null, finish_reason: 'stop' });
});

t.test('chat completion streamed with include_usage and max_tokens', async (t) => {
  const res = await post('/v1/chat/completions', {
    model: 'gpt-s',
    messages,
    stream: true,
    max_tokens: 4,
    stream_options: { include_usage: true },
  });
  const { events, done } = parseSse(await res.text());
  t.ok(done);
  const chunks = events as Chunk[];
  t.equal(chunks.length, 1 + 4 + 1 + 1);
  for (const c of chunks.slice(0, -1)) t.equal(c.usage, null, 'usage: null on every chunk but the last');
  t.equal(chunks[5]!.choices[0]!.finish_reason, 'length');
  const last = chunks[6]!;
  t.same(last.choices, [], 'usage chunk has no choices');
  t.same(last.usage, { prompt_tokens: promptTokens, completion_tokens: 4, total_tokens: promptTokens + 4 });
  t.equal(last.id, chunks[0]!.id);
});

t.test('stream: false and a missing stream are not streamed', async (t) => {
  const res = await post('/v1/chat/completions', { messages, stream: false });
  t.equal(res.headers.get('content-type'), 'application/json');
  t.equal((await json(res)).object, 'chat.completion');
});

t.test('legacy completion, not streamed', async (t) => {
  const res = await post('/v1/completions', { model: 'davinci-mock', prompt: 'Say this is a test.' });
  t.equal(res.status, 200);
  const body = await json(res);
  t.match(body.id, /^cmpl-/);
  t.equal(body.object, 'text_completion');
  t.equal(body.model, 'davinci-mock');
  t.same(body.choices, [{ text: mockText(6), index: 0, logprobs: null, finish_reason: 'stop' }]);
  t.same(body.usage, { prompt_tokens: 5, completion_tokens: 6, total_tokens: 11 });
});

t.test('legacy completion streamed with usage and max_tokens', async (t) => {
  const res = await post('/v1/completions', {
    prompt: ['abcd', 'efgh'],
    stream: true,
    max_tokens: 3,
    stream_options: { include_usage: true },
  });
  t.equal(res.headers.get('content-type'), 'text/event-stream');
  const { events, done } = parseSse(await res.text());
  t.ok(done);
  const chunks = events as Chunk[];
  t.equal(chunks.length, 3 + 1 + 1, 'a chunk per token, the finish chunk, the usage chunk');
  for (const c of chunks) t.equal(c.object, 'text_completion');
  t.same(chunks.slice(0, 3).map((c) => c.choices[0]!.text), ['tok0 ', 'tok1 ', 'tok2 ']);
  t.same(chunks[3]!.choices, [{ text: '', index: 0, logprobs: null, finish_reason: 'length' }]);
  t.equal(chunks[3]!.usage, null);
  t.same(chunks[4]!.choices, []);
  t.same(chunks[4]!.usage, { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 });
});

t.test('legacy completion streamed without usage', async (t) => {
  const { events, done } = parseSse(await (await post('/v1/completions', { prompt: 'x', stream: true })).text());
  t.ok(done);
  t.equal(events.length, 7);
  t.notOk((events as Chunk[]).some((c) => 'usage' in c));
});

t.test('GET /v1/models lists the configured models', async (t) => {
  const res = await fetch(mock.url + '/v1/models');
  t.equal(res.status, 200);
  const body = await json(res);
  t.equal(body.object, 'list');
  t.same(body.data.map((m: { id: string }) => m.id), ['gpt-mock', 'other']);
  for (const m of body.data) {
    t.equal(m.object, 'model');
    t.type(m.created, 'number');
    t.type(m.owned_by, 'string');
  }
});

t.test('request errors use the OpenAI error shape', async (t) => {
  const bad = await post('/v1/chat/completions', '{"messages": [');
  t.equal(bad.status, 400);
  t.equal(bad.headers.get('content-type'), 'application/json');
  const body = await json(bad);
  t.type(body.error.message, 'string');
  t.equal(body.error.type, 'invalid_request_error');
  t.equal(body.error.param, null);
  t.equal(body.error.code, null);

  const notObject = await post('/v1/completions', '[1,2]');
  t.equal(notObject.status, 400);
  t.equal((await json(notObject)).error.type, 'invalid_request_error');

  const noMessages = await post('/v1/chat/completions', { model: 'm' });
  t.equal(noMessages.status, 400);
  t.match((await json(noMessages)).error.message, /messages/);

  const empty = await post('/v1/chat/completions', '');
  t.equal(empty.status, 400, 'an empty body is not JSON');
  await empty.arrayBuffer();
});

t.test('embeddings: token arrays count their ids; dimensions it cannot give are refused, as a real server does', async (t) => {
  const ids = await json(await post('/v1/embeddings', { model: 'gpt-mock', input: [[1, 2, 3], [4]] }));
  t.same(ids.usage, { prompt_tokens: 4, total_tokens: 4 }, 'one token per id');
  t.equal((await json(await post('/v1/embeddings', { model: 'gpt-mock', input: [5, 6, 7] }))).usage.prompt_tokens, 3);
  t.equal((await json(await post('/v1/embeddings', { model: 'gpt-mock', input: ['abcdefgh', 'abcd'] }))).usage.prompt_tokens, 3, 'texts by the estimate');
  t.equal((await json(await post('/v1/embeddings', { model: 'gpt-mock', input: 'x', dimensions: 4096 }))).data[0].embedding.length, 4096);
  for (const dimensions of [4097, 0, 2.5, 'x']) {
    const r = await post('/v1/embeddings', { model: 'gpt-mock', input: 'x', dimensions });
    t.equal(r.status, 400, `dimensions ${dimensions}`);
    t.match((await json(r)).error.message, /dimensions must be an integer from 1 to 4096/);
  }
  const ol = await post('/api/embed', { model: 'gpt-mock', input: 'x', dimensions: 5000 });
  t.equal(ol.status, 400, 'Ollama too');
});

t.test('a generation error case leaves the listings answering: health checks pass, as against a real server', async (t) => {
  const m = await createMockUpstream({ fail: 'context' });
  t.teardown(() => m.close());
  t.equal((await fetch(`${m.url}/v1/models`)).status, 200);
  t.equal((await fetch(`${m.url}/api/tags`)).status, 200);
  const r = await fetch(`${m.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'x', messages: [{ role: 'user', content: 'hi' }] }) });
  t.equal(r.status, 400, 'the generation still fails as asked');
});
