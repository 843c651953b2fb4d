import t from 'tap';
import { createMockUpstream, mockText } from '../../src/mock-upstream/server.ts';
import { parseNdjson, parseSse } from '../../src/mock-upstream/wire.ts';

const mock = await createMockUpstream({ tokens: 4 });
t.teardown(() => mock.close());

// Wire bodies are checked field by field.
const json = (res: Response): Promise<any> => res.json();

function post(url: string, path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

const chat = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };

/** Reads a whole body, noting when each token (`tokN `) first showed up, in ms since `since`. */
async function readTimed(res: Response, since: number): Promise<{ text: string; tokenAt: number[] }> {
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let text = '';
  const tokenAt: number[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += dec.decode(value, { stream: true });
    const seen = text.match(/tok\d+ /g)?.length ?? 0;
    const now = performance.now() - since;
    while (tokenAt.length < seen) tokenAt.push(now);
  }
  return { text, tokenAt };
}

t.test('x-mock-tokens sets the output length', async (t) => {
  const body = await json(await post(mock.url, '/v1/chat/completions', chat, { 'x-mock-tokens': '9' }));
  t.equal(body.choices[0].message.content, mockText(9));
  t.equal(body.usage.completion_tokens, 9);
  t.equal(body.choices[0].finish_reason, 'stop');

  const dflt = await json(await post(mock.url, '/v1/chat/completions', chat));
  t.equal(dflt.choices[0].message.content, mockText(4), 'the process default otherwise');

  const capped = await json(await post(mock.url, '/v1/chat/completions', { ...chat, max_tokens: 5 }, { 'x-mock-tokens': '9' }));
  t.equal(capped.usage.completion_tokens, 5, 'max_tokens still caps it');
  t.equal(capped.choices[0].finish_reason, 'length');
});

t.test('zero tokens', async (t) => {
  const { events, done } = parseSse(await (await post(mock.url, '/v1/chat/completions', { ...chat, stream: true }, { 'x-mock-tokens': '0' })).text());
  t.ok(done);
  t.equal(events.length, 2, 'the role chunk and the finish chunk');
  const ollama = await json(await post(mock.url, '/api/chat', { ...chat, stream: false }, { 'x-mock-tokens': '0' }));
  t.equal(ollama.message.content, '');
  t.equal(ollama.eval_count, 0);
});

t.test('x-mock-ttft-ms delays the first token, not the headers', async (t) => {
  const start = performance.now();
  const res = await post(mock.url, '/v1/chat/completions', { ...chat, stream: true }, { 'x-mock-ttft-ms': '250' });
  const headersAt = performance.now() - start;
  t.equal(res.status, 200);
  t.ok(headersAt < 200, `headers came at once (${headersAt.toFixed(0)} ms)`);
  const { text, tokenAt } = await readTimed(res, start);
  t.ok(tokenAt[0]! >= 240, `first token after the ttft (${tokenAt[0]!.toFixed(0)} ms)`);
  t.ok(parseSse(text).done);

  const unaryStart = performance.now();
  const unary = await json(await post(mock.url, '/v1/chat/completions', chat, { 'x-mock-ttft-ms': '250' }));
  t.ok(performance.now() - unaryStart >= 240, 'a non-streamed answer waits for it too');
  t.equal(unary.choices[0].message.content, mockText(4));
});

t.test('x-mock-tps paces the tokens', async (t) => {
  const start = performance.now();
  const res = await post(mock.url, '/v1/chat/completions', { ...chat, stream: true }, { 'x-mock-tps': '20', 'x-mock-tokens': '5' });
  const { text, tokenAt } = await readTimed(res, start);
  t.equal(tokenAt.length, 5);
  const span = tokenAt[4]! - tokenAt[0]!;
  // Measured by the client, so allow for its own event loop being late now and then.
  t.ok(span >= 150 && span < 1500, `5 tokens at 20/s span ~200 ms (${span.toFixed(0)} ms)`);
  // Not all in one write; a client whose event loop was held (a loaded box) reads several together.
  t.ok(new Set(tokenAt).size >= 2, `tokens came in separate writes (${tokenAt.map((x) => x.toFixed(0)).join(', ')} ms)`);
  const chunks = parseSse(text).events as Array<{ choices: Array<{ delta: { content?: string } }> }>;
  t.equal(chunks.map((c) => c.choices[0]!.delta.content ?? '').join(''), mockText(5));

  const unaryStart = performance.now();
  await json(await post(mock.url, '/v1/completions', { prompt: 'x' }, { 'x-mock-tps': '20', 'x-mock-tokens': '5' }));
  const unaryMs = performance.now() - unaryStart;
  t.ok(unaryMs >= 180, `a non-streamed answer takes as long as the stream would (${unaryMs.toFixed(0)} ms)`);
});

t.test('a tps above timer resolution is kept on average', async (t) => {
  const start = performance.now();
  const res = await post(mock.url, '/api/generate', { model: 'm', prompt: 'x' }, { 'x-mock-tps': '2000', 'x-mock-tokens': '400' });
  const { text, tokenAt } = await readTimed(res, start);
  const span = tokenAt[399]! - tokenAt[0]!;
  t.ok(span >= 150 && span < 2000, `400 tokens at 2000/s span ~200 ms (${span.toFixed(0)} ms)`);
  const lines = parseNdjson(text).lines as Array<{ response: string; eval_count?: number }>;
  t.equal(lines.map((l) => l.response).join(''), mockText(400));
  t.equal(lines.at(-1)!.eval_count, 400);
});

t.test('Ollama durations follow the knobs', async (t) => {
  const body = await json(await post(mock.url, '/api/chat', { ...chat, stream: false }, { 'x-mock-ttft-ms': '100', 'x-mock-tps': '20', 'x-mock-tokens': '3' }));
  t.ok(body.prompt_eval_duration >= 95e6, `prompt_eval_duration ~ ttft (${body.prompt_eval_duration} ns)`);
  t.ok(body.eval_duration > 0 && body.prompt_eval_duration + body.eval_duration >= 190e6, `eval_duration: the rest of ttft + 2 intervals of 50 ms (${body.eval_duration} ns)`);
  t.ok(body.total_duration >= 190e6);

  const res = await post(mock.url, '/api/chat', chat, { 'x-mock-ttft-ms': '100', 'x-mock-tps': '20', 'x-mock-tokens': '3' });
  const lines = parseNdjson(await res.text()).lines as Array<{ done: boolean; prompt_eval_duration?: number; eval_duration?: number }>;
  const last = lines.at(-1)!;
  t.equal(last.done, true);
  t.ok(last.prompt_eval_duration! >= 95e6);
  // Tokens keep to their schedule from the start: a first token late under load leaves the
  // next ones closer together, so only the sum spans ttft + 2 intervals.
  t.ok(last.eval_duration! > 0);
  t.ok(last.prompt_eval_duration! + last.eval_duration! >= 190e6, `prompt eval + eval ${last.prompt_eval_duration! + last.eval_duration!} ns`);
});

t.test('process-level knobs, overridden per request', async (t) => {
  const slow = await createMockUpstream({ ttftMs: 400, tokens: 3, tps: 0 });
  t.teardown(() => slow.close());
  t.same(slow.knobs, { ttftMs: 400, tps: 0, tokens: 3, fail: 'none', failAfter: 0, toolCalls: 0, flavor: 'openai', embedFloats: false });

  let start = performance.now();
  const body = await json(await post(slow.url, '/v1/chat/completions', chat));
  t.ok(performance.now() - start >= 390, 'the process ttft applies');
  t.equal(body.usage.completion_tokens, 3);

  start = performance.now();
  const fast = await json(await post(slow.url, '/v1/chat/completions', chat, { 'x-mock-ttft-ms': '0', 'x-mock-tokens': '2' }));
  t.ok(performance.now() - start < 300, 'x-mock-ttft-ms: 0 overrides it');
  t.equal(fast.usage.completion_tokens, 2);
});

t.test('invalid knob headers are rejected with 400 in the API shape', async (t) => {
  const cases: Array<[string, string]> = [
    ['x-mock-ttft-ms', 'soon'],
    ['x-mock-tps', '-1'],
    ['x-mock-tokens', '1.5'],
    ['x-mock-tokens', '99999999'],
    ['x-mock-fail', 'explode'],
    ['x-mock-fail', '200'],
    ['x-mock-fail-after', ''],
  ];
  for (const [name, value] of cases) {
    const res = await post(mock.url, '/v1/chat/completions', chat, { [name]: value });
    t.equal(res.status, 400, `${name}: ${JSON.stringify(value)}`);
    t.match((await json(res)).error.message, name);
  }
  const ollama = await post(mock.url, '/api/chat', chat, { 'x-mock-tps': 'fast' });
  t.equal(ollama.status, 400);
  t.match((await json(ollama)).error, 'x-mock-tps');
});

t.test('invalid options throw', async (t) => {
  await t.rejects(createMockUpstream({ tokens: -1 }), RangeError);
  await t.rejects(createMockUpstream({ tps: Number.NaN }), RangeError);
  await t.rejects(createMockUpstream({ failAfter: 0.5 }), RangeError);
  await t.rejects(createMockUpstream({ fail: 'sometimes' }), RangeError);
  await t.rejects(createMockUpstream({ fail: 200 }), RangeError);
});
