// A non-streamed request streamed from its upstream and assembled (translate/assemble.ts):
// the assembled reply must be the one the same upstream sends unstreamed. Checked against
// the mock upstream, which speaks both forms of each wire format, and on hand-written
// streams for what the mock does not send (several choices, logprobs, calls without an
// index, errors, cuts); every stream is also fed split at every byte.
import t from 'tap';
import v8 from 'node:v8';
import vm from 'node:vm';
import { createMockUpstream } from '../../src/mock-upstream/server.ts';
import { ReplyAssembler, streamedBody } from '../../src/llm/translate/assemble.ts';
import { BrokerError } from '../../src/errors.ts';
import type { Api, Kind } from '../../src/llm/translate/types.ts';

const mock = await createMockUpstream({ tokens: 6 });
t.teardown(() => mock.close());

const MAX = 16 * 1024 * 1024;

function assemble(provider: Api, kind: Kind, chunks: readonly Uint8Array[], max = MAX): unknown {
  const a = new ReplyAssembler(provider, kind, max);
  for (const c of chunks) a.push(c);
  return JSON.parse(a.end());
}

/** The stream whole, then split at every byte: the same reply each time. */
function assembleEverySplit(t: { ok(v: unknown, m: string): unknown }, provider: Api, kind: Kind, text: string): unknown {
  const bytes = Buffer.from(text);
  const whole = assemble(provider, kind, [bytes]);
  let same = true;
  for (let i = 1; i < bytes.length && same; i++) same = JSON.stringify(assemble(provider, kind, [bytes.subarray(0, i), bytes.subarray(i)])) === JSON.stringify(whole);
  t.ok(same, `${provider} ${kind}: the same reply wherever the stream is split`);
  return whole;
}

async function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<string> {
  const res = await fetch(mock.url + path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  if (res.status !== 200) throw new Error(`${path}: ${res.status}`);
  return res.text();
}

/** What differs between two answers to the same request: ids, clocks, durations. */
function stable(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v), (k, x: unknown) => (['id', 'created', 'created_at', 'total_duration', 'load_duration', 'prompt_eval_duration', 'eval_duration', 'system_fingerprint'].includes(k) ? undefined : x));
}

const messages = [{ role: 'user', content: 'hello there' }];
const cases: Array<{ name: string; provider: Api; kind: Kind; path: string; body: Record<string, unknown>; headers?: Record<string, string> }> = [
  { name: 'OpenAI chat, text', provider: 'openai', kind: 'chat', path: '/v1/chat/completions', body: { model: 'm', messages } },
  { name: 'OpenAI chat, two tool calls', provider: 'openai', kind: 'chat', path: '/v1/chat/completions', body: { model: 'm', messages }, headers: { 'x-mock-tool-calls': '2' } },
  { name: 'OpenAI completion', provider: 'openai', kind: 'completion', path: '/v1/completions', body: { model: 'm', prompt: 'once upon' } },
  { name: 'OpenAI chat, cut by max_tokens', provider: 'openai', kind: 'chat', path: '/v1/chat/completions', body: { model: 'm', messages, max_tokens: 3 } },
  { name: 'Ollama chat, text', provider: 'ollama', kind: 'chat', path: '/api/chat', body: { model: 'm', messages } },
  { name: 'Ollama chat, two tool calls', provider: 'ollama', kind: 'chat', path: '/api/chat', body: { model: 'm', messages }, headers: { 'x-mock-tool-calls': '2' } },
  { name: 'Ollama generate', provider: 'ollama', kind: 'completion', path: '/api/generate', body: { model: 'm', prompt: 'once upon' } },
];

for (const c of cases) {
  t.test(`${c.name}: the assembled stream is the upstream's whole reply`, async (t) => {
    const whole = JSON.parse(await post(c.path, { ...c.body, stream: false }, c.headers));
    const streamed = await post(c.path, streamedBody(c.body, c.provider, c.kind), c.headers);
    const got = assembleEverySplit(t, c.provider, c.kind, streamed);
    t.same(stable(got), stable(whole));
    // Plain text events take a fast path (no JSON.parse); spaced out, every event is parsed and merged: the same reply.
    const spaced = streamed.replaceAll('"choices":[', '"choices": [').replaceAll('{"model":', '{ "model":');
    t.not(spaced, streamed);
    t.same(assemble(c.provider, c.kind, [Buffer.from(spaced)]), got, 'the same reply without the fast path');
    if (c.headers?.['x-mock-tool-calls'] !== undefined) {
      // The calls' ids are the mock's own per reply: the assembled ones are those the stream named.
      const calls = c.provider === 'openai' ? (got as any).choices[0].message.tool_calls : (got as any).message.tool_calls;
      t.equal(calls.length, 2);
      if (c.provider === 'openai') t.ok(calls.every((x: any) => typeof x.id === 'string' && x.type === 'function' && x.index === undefined), 'ids kept, no index');
    }
  });
}

t.test('the streamed body asks for the usage chunk on OpenAI routes, and keeps the client options', async (t) => {
  t.same(streamedBody({ model: 'm', stream: false, stream_options: { include_obfuscation: false } }, 'openai', 'chat'), { model: 'm', stream: true, stream_options: { include_obfuscation: false, include_usage: true } });
  t.same(streamedBody({ model: 'm', stream: false }, 'ollama', 'chat'), { model: 'm', stream: true });
  t.same(streamedBody({ model: 'm', input: 'x' }, 'openai', 'responses'), { model: 'm', input: 'x', stream: true }, 'the Responses API reports usage in response.completed');
});

const sse = (...events: unknown[]): string => events.map((e) => `data: ${typeof e === 'string' ? e : JSON.stringify(e)}\n\n`).join('');

t.test('OpenAI: several choices, logprobs, reasoning, refusal and stream-only fields', async (t) => {
  const lp = (tok: string) => ({ token: tok, logprob: -0.5, bytes: [...Buffer.from(tok)], top_logprobs: [] });
  const chunk = (choices: unknown[], extra: Record<string, unknown> = {}) => ({ id: 'c1', object: 'chat.completion.chunk', created: 7, model: 'up', system_fingerprint: 'fp', choices, obfuscation: 'xyz', ...extra });
  const text = sse(
    chunk([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }, { index: 1, delta: { role: 'assistant', content: '' }, finish_reason: null }], { usage: null }),
    chunk([{ index: 0, delta: { reasoning_content: 'think ' }, finish_reason: null }]),
    chunk([{ index: 0, delta: { content: 'Hel' }, logprobs: { content: [lp('Hel')] }, finish_reason: null }, { index: 1, delta: { refusal: 'No.' }, finish_reason: null }]),
    chunk([{ index: 0, delta: { content: 'lo' }, logprobs: { content: [lp('lo')] }, finish_reason: 'stop' }]),
    chunk([{ index: 1, delta: {}, finish_reason: 'stop' }]),
    chunk([], { usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7, completion_tokens_details: { reasoning_tokens: 1 } } }),
    '[DONE]',
  );
  const r = assembleEverySplit(t, 'openai', 'chat', text) as any;
  t.same(r.usage.completion_tokens, 4, "the upstream's usage, not the events counted");
  t.same(r, {
    id: 'c1',
    object: 'chat.completion',
    created: 7,
    model: 'up',
    system_fingerprint: 'fp',
    usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7, completion_tokens_details: { reasoning_tokens: 1 } },
    choices: [
      { index: 0, message: { role: 'assistant', content: 'Hello', refusal: null, annotations: [], reasoning_content: 'think ' }, logprobs: { content: [lp('Hel'), lp('lo')] }, finish_reason: 'stop' },
      { index: 1, message: { role: 'assistant', content: '', refusal: 'No.', annotations: [] }, logprobs: null, finish_reason: 'stop' },
    ],
  });
});

t.test('OpenAI tool calls: arguments in pieces by index, or whole calls without one', async (t) => {
  const byIndex = sse(
    { id: 'c', choices: [{ index: 0, delta: { role: 'assistant', content: null, tool_calls: [{ index: 0, id: 'call_a', type: 'function', function: { name: 'get', arguments: '' } }] }, finish_reason: null }] },
    { id: 'c', choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '{"q":' } }] }, finish_reason: null }] },
    { id: 'c', choices: [{ index: 0, delta: { tool_calls: [{ index: 1, id: 'call_b', type: 'function', function: { name: 'put', arguments: '{}' } }] }, finish_reason: null }] },
    { id: 'c', choices: [{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '1}' } }] }, finish_reason: null }] },
    { id: 'c', choices: [{ index: 0, delta: {}, finish_reason: 'tool_calls' }] },
    '[DONE]',
  );
  const r = assembleEverySplit(t, 'openai', 'chat', byIndex) as any;
  t.same(r.choices[0].message, { role: 'assistant', content: null, refusal: null, annotations: [], tool_calls: [{ id: 'call_a', type: 'function', function: { name: 'get', arguments: '{"q":1}' } }, { id: 'call_b', type: 'function', function: { name: 'put', arguments: '{}' } }] });
  t.equal(r.choices[0].finish_reason, 'tool_calls');
  const noIndex = sse(
    { id: 'c', choices: [{ index: 0, delta: { tool_calls: [{ id: 'x1', function: { name: 'a', arguments: '{}' } }, { id: 'x2', function: { name: 'b', arguments: '{"k":' } }] }, finish_reason: null }] },
    { id: 'c', choices: [{ index: 0, delta: { tool_calls: [{ function: { arguments: '2}' } }] }, finish_reason: 'tool_calls' }] },
  );
  const n = assembleEverySplit(t, 'openai', 'chat', noIndex) as any;
  t.same(n.choices[0].message.tool_calls, [{ type: 'function', id: 'x1', function: { name: 'a', arguments: '{}' } }, { type: 'function', id: 'x2', function: { name: 'b', arguments: '{"k":2}' } }], 'complete with a finish on every choice, no [DONE] needed');
});

t.test('OpenAI: choices in index order whatever order their chunks came in; no usage chunk: the estimate and the events counted', async (t) => {
  const text = sse(
    { id: 'c', choices: [{ index: 1, delta: { role: 'assistant', content: 'B1' }, finish_reason: null }] },
    { id: 'c', choices: [{ index: 0, delta: { role: 'assistant', content: 'A1' }, finish_reason: null }] },
    { id: 'c', choices: [{ index: 1, delta: { content: ' B2' }, finish_reason: 'length' }] },
    { id: 'c', choices: [{ index: 0, delta: { content: ' A2' }, finish_reason: 'stop' }] },
    '[DONE]',
  );
  const a = new ReplyAssembler('openai', 'chat', MAX, 11);
  a.push(Buffer.from(text));
  const r = JSON.parse(a.end());
  t.same(r.choices.map((c: any) => [c.index, c.message.content, c.finish_reason]), [[0, 'A1 A2', 'stop'], [1, 'B1 B2', 'length']]);
  t.same(r.usage, { prompt_tokens: 11, completion_tokens: 4, total_tokens: 15 }, "the upstream said no usage: admission's estimate, one token per event");
});

t.test('Ollama: thinking and content in pieces, the done line brings counts, reason and context', async (t) => {
  const text = [
    { model: 'up', created_at: 't1', message: { role: 'assistant', content: '', thinking: 'hm' }, done: false },
    { model: 'up', created_at: 't2', message: { role: 'assistant', content: 'Hi' }, done: false },
    { model: 'up', created_at: 't3', message: { role: 'assistant', content: '!' }, done: false },
    { model: 'up', created_at: 't4', message: { role: 'assistant', content: '' }, done: true, done_reason: 'stop', prompt_eval_count: 5, eval_count: 3, total_duration: 9 },
  ]
    .map((l) => JSON.stringify(l) + '\n')
    .join('');
  t.same(assembleEverySplit(t, 'ollama', 'chat', text), { model: 'up', created_at: 't4', message: { role: 'assistant', content: 'Hi!', thinking: 'hm' }, done: true, done_reason: 'stop', prompt_eval_count: 5, eval_count: 3, total_duration: 9 });
  const gen = [{ model: 'up', response: 'a', done: false }, { model: 'up', response: 'b', done: false }, { model: 'up', response: '', done: true, done_reason: 'length', context: [1, 2, 3] }].map((l) => JSON.stringify(l) + '\n').join('');
  t.same(assembleEverySplit(t, 'ollama', 'completion', gen), { model: 'up', response: 'ab', done: true, done_reason: 'length', context: [1, 2, 3] });
});

t.test('Responses passed through: the final event carries the whole Response', async (t) => {
  const resp = { id: 'resp_1', object: 'response', status: 'completed', output: [{ type: 'message', content: [{ type: 'output_text', text: 'Hi' }] }], usage: { input_tokens: 2, output_tokens: 1, total_tokens: 3 } };
  const text =
    `event: response.created\ndata: ${JSON.stringify({ type: 'response.created', response: { ...resp, status: 'in_progress', output: [] } })}\n\n` +
    `event: response.output_text.delta\ndata: ${JSON.stringify({ type: 'response.output_text.delta', delta: 'Hi' })}\n\n` +
    `event: response.completed\ndata: ${JSON.stringify({ type: 'response.completed', response: resp })}\n\n`;
  t.same(assembleEverySplit(t, 'openai', 'responses', text), resp);
  t.throws(() => assemble('openai', 'responses', [Buffer.from(text.slice(0, text.indexOf('event: response.completed')))]), { code: 'upstream_error' }, 'no final event: cut');
});

t.test('the fast path: escapes decoded, tokens counted, and an event that says more than text is merged in full', async (t) => {
  const head = { id: 'c', object: 'chat.completion.chunk', created: 1, model: 'up' };
  const text = sse(
    { ...head, choices: [{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }] },
    { ...head, choices: [{ index: 0, delta: { content: 'a "quoted" \\ line\n' }, logprobs: null, finish_reason: null }] },
    { ...head, choices: [{ index: 0, delta: { content: 'é' }, logprobs: null, finish_reason: null }], usage: { prompt_tokens: 1, completion_tokens: 9, total_tokens: 10 } },
    { ...head, choices: [{ index: 0, delta: { content: '!' }, logprobs: null, finish_reason: null }] },
    { ...head, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }] },
    '[DONE]',
  );
  const r = assembleEverySplit(t, 'openai', 'chat', text) as any;
  t.equal(r.choices[0].message.content, 'a "quoted" \\ line\né!');
  t.same(r.usage, { prompt_tokens: 1, completion_tokens: 9, total_tokens: 10 }, 'an event with usage is merged in full');
  const a = new ReplyAssembler('openai', 'chat', MAX, 2);
  a.push(Buffer.from(text.replace(/"usage":\{[^}]*\}/, '"usage":null')));
  t.same(JSON.parse(a.end()).usage, { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 }, 'text events counted on the fast path too');
});

t.test('events that are not JSON objects are dropped and counted; a run of them is the reply failing; tokens are counted as they come', async (t) => {
  const a = new ReplyAssembler('openai', 'chat', MAX);
  a.push(Buffer.from(sse({ id: 'c', choices: [{ index: 0, delta: { role: 'assistant', content: 'a' }, finish_reason: null }] }, 'hiccup', '[1,2]', { id: 'c', choices: [{ index: 0, delta: { content: 'b' }, finish_reason: null }] })));
  t.equal(a.malformed, 2);
  t.equal(a.tokens, 2, 'what a client that leaves now is charged');
  a.push(Buffer.from(sse({ id: 'c', choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }, '[DONE]')));
  t.equal(JSON.parse(a.end()).choices[0].message.content, 'ab');
  const run = new ReplyAssembler('ollama', 'chat', MAX);
  run.push(Buffer.from('{"model":"m","message":{"role":"assistant","content":"x"},"done":false}\n' + 'junk\n'.repeat(8) + '{"model":"m","message":{"role":"assistant","content":""},"done":true}\n'));
  t.equal(run.tokens, 1, 'Ollama lines with text count too');
  t.match(JSON.parse(run.end()), { error: { message: /8 events in a row that are not JSON objects/ } });
});

t.test('an error event is the upstream error reply; a cut stream is upstream_error; the size is bounded', async (t) => {
  t.same(assemble('openai', 'chat', [Buffer.from(sse({ id: 'c', choices: [{ index: 0, delta: { content: 'a' } }] }, { error: { message: 'overloaded', type: 'server_error' } }))]), { error: { message: 'overloaded', type: 'server_error' } });
  t.same(assemble('ollama', 'chat', [Buffer.from('{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n{"error":"llama runner process has terminated"}\n')]), { error: 'llama runner process has terminated' });
  for (const [provider, text] of [
    ['openai', sse({ id: 'c', choices: [{ index: 0, delta: { content: 'a' }, finish_reason: null }] })],
    ['openai', ''],
    ['ollama', '{"model":"m","message":{"role":"assistant","content":"a"},"done":false}\n'],
  ] as const) {
    t.throws(() => assemble(provider, 'chat', [Buffer.from(text)]), new BrokerError('upstream_error', 'upstream closed the stream before the reply was complete'), `${provider}: cut`);
  }
  const big = sse(...Array.from({ length: 50 }, () => ({ id: 'c', choices: [{ index: 0, delta: { content: 'x'.repeat(100) } }] })));
  t.throws(() => assemble('openai', 'chat', [Buffer.from(big)], 1000), { code: 'upstream_error', message: /UPSTREAM_MAX_BODY_BYTES \(1000 bytes\)/ });
});

// A reply of one-character tokens: V8 would keep the text grown piece by piece as a rope of
// ~32 bytes a piece, 30 times what UPSTREAM_MAX_BODY_BYTES counts (an independent check saw
// 105 MB of heap for a 4 MiB cap). The heap the assembler holds must stay near its text.
t.test('text grown one character an event holds about its own size in the heap, on the fast path and the full merge', async (t) => {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  const N = 100_000;
  const enc = new TextEncoder();
  // 32 characters a piece: a slice of the event would keep the whole event (~200 bytes) alive.
  const LONG = 'abcdefghijklmnopqrstuvwxyzABCDEF';
  const cases: Array<[string, (i: number) => string, (reply: any) => string, number?]> = [
    ['content (fast path)', (i) => sse({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { content: 'abcdefghij'[i % 10] }, logprobs: null, finish_reason: null }] }), (r) => r.choices[0].message.content],
    ['content of 32-character pieces (fast path)', (i) => sse({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { content: LONG.slice(i % 10) + LONG.slice(0, i % 10) }, logprobs: null, finish_reason: null }] }), (r) => r.choices[0].message.content, 32],
    ['reasoning_content (merge)', (i) => sse({ id: 'c', choices: [{ index: 0, delta: { reasoning_content: 'abcdefghij'[i % 10] } }] }), (r) => r.choices[0].message.reasoning_content],
    ['tool-call arguments', (i) => sse({ id: 'c', choices: [{ index: 0, delta: { tool_calls: [i === 0 ? { index: 0, id: 'call_1', type: 'function', function: { name: 'f', arguments: '1' } } : { index: 0, function: { arguments: String(i % 10) } }] } }] }), (r) => r.choices[0].message.tool_calls[0].function.arguments],
  ];
  for (const [name, event, textOf, per = 1] of cases) {
    const a = new ReplyAssembler('openai', 'chat', 64 * 1024 * 1024);
    a.push(enc.encode(sse({ id: 'c', choices: [{ index: 0, delta: { role: 'assistant', content: '' } }] })));
    gc();
    const before = process.memoryUsage().heapUsed;
    for (let i = 0; i < N; i++) a.push(enc.encode(event(i)));
    gc();
    const held = (process.memoryUsage().heapUsed - before) / (N * per);
    t.ok(held < 4, `${name}: ${held.toFixed(1)} bytes of heap per character held (under 4)`);
    a.push(enc.encode(sse({ id: 'c', choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] }) + 'data: [DONE]\n\n'));
    t.equal(textOf(JSON.parse(a.end())).length, N * per, `${name}: the whole text`);
  }
});
