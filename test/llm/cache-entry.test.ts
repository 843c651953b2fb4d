// The response cache's pure parts: the key, the plan, and capture ⇄ replay in every
// client API, kind and mode.
import t from 'tap';
import { cacheKey, cachePlan, cacheDirectiveOf } from '../../src/llm/cache/cache.ts';
import { captureStream, captureWhole, entryBytes, fitChunks, withModel, type CachedReply } from '../../src/llm/cache/entry.ts';
import { replay } from '../../src/llm/cache/replay.ts';
import type { LlmRequest } from '../../src/llm/request.ts';

const req = (body: Record<string, unknown>, extra: Partial<LlmRequest> = {}): LlmRequest =>
  ({ api: 'openai', kind: 'chat', body, choices: 1, cache: undefined, ...extra }) as unknown as LlmRequest;

t.test('the key: exact match on what changes the output, not on stream or key order', async (t) => {
  const a = { model: 'g', messages: [{ role: 'user', content: 'hi' }], temperature: 0, max_tokens: 5 };
  const k = cacheKey('g', req(a));
  t.equal(cacheKey('g', req({ max_tokens: 5, temperature: 0, messages: [{ content: 'hi', role: 'user' }], model: 'g', stream: true, stream_options: { include_usage: true } })), k, 'stream, key order and stream_options do not matter');
  t.not(cacheKey('g', req({ ...a, max_tokens: 6 })), k, 'max_tokens does');
  t.not(cacheKey('g', req({ ...a, messages: [{ role: 'user', content: 'hi!' }] })), k, 'the prompt does');
  t.not(cacheKey('other', req(a)), k, 'the group does');
  t.not(cacheKey('g', req(a, { api: 'ollama' } as Partial<LlmRequest>)), k, 'the client API does');
  t.not(cacheKey('g', req(a, { kind: 'completion' } as Partial<LlmRequest>)), k, 'the kind does');
});

t.test('the plan: modes, temperature, directives, n', async (t) => {
  const cold = { messages: [], temperature: 0 };
  const warm = { messages: [], temperature: 0.7 };
  t.equal(cachePlan('off', req(cold), 'g'), null);
  t.ok(cachePlan('deterministic', req(cold), 'g'));
  t.ok(cachePlan('deterministic', req({ messages: [], options: { temperature: 0 } }, { api: 'ollama' } as Partial<LlmRequest>), 'g'), "Ollama's options.temperature");
  t.equal(cachePlan('deterministic', req(warm), 'g'), null);
  t.equal(cachePlan('deterministic', req({ messages: [] }), 'g'), null, 'no temperature is not 0');
  t.ok(cachePlan('deterministic', req(warm, { cache: 'use' }), 'g'));
  t.ok(cachePlan('on', req(warm), 'g'));
  t.equal(cachePlan('on', req(cold, { cache: 'bypass' }), 'g'), null);
  t.same(cachePlan('on', req(cold, { cache: 'refresh' }), 'g')?.lookup, false);
  t.equal(cachePlan('on', req(cold, { choices: 2 }), 'g'), null, 'several choices are never cached');
  t.equal(cacheDirectiveOf(' Use '), 'use');
  t.throws(() => cacheDirectiveOf('always'), /x-broker-cache must be/);
});

const entry: CachedReply = { v: 1, kind: 'chat', chunks: ['Hel', 'lo "w"', '\n!'], finish: 'stop', promptTokens: 7, completionTokens: 3 };
const ctx = { model: 'g', id: 'r1', includeUsage: true, now: Date.UTC(2026, 0, 1) };

t.test('capture ⇄ replay: every API, kind and mode gives back the same entry', async (t) => {
  for (const api of ['openai', 'ollama'] as const) {
    for (const kind of ['chat', 'completion'] as const) {
      const e = { ...entry, kind };
      const s = replay(api, kind, true, e, ctx);
      t.same(captureStream(api, kind, s.body, { prompt: 0, completion: 0 }), e, `${api} ${kind} stream keeps the chunks`);
      const w = replay(api, kind, false, e, ctx);
      t.same(captureWhole(api, kind, w.body), { ...e, chunks: [e.chunks.join('')] }, `${api} ${kind} whole joins them`);
      t.equal(s.contentType, api === 'openai' ? 'text/event-stream' : 'application/x-ndjson');
    }
  }
  const whole = JSON.parse(replay('openai', 'chat', false, entry, ctx).body);
  t.equal(whole.id, 'chatcmpl-r1');
  t.equal(whole.usage.prompt_tokens_details.cached_tokens, 7);
  const noUsage = replay('openai', 'chat', true, entry, { ...ctx, includeUsage: false }).body;
  t.notMatch(noUsage, /"usage"/, 'no usage chunk unless asked');
  // Ollama clients divide eval_count by eval_duration: a replay's durations are the hit's time, never 0.
  for (const stream of [false, true]) {
    const last = JSON.parse(replay('ollama', 'chat', stream, entry, { ...ctx, elapsedMs: 0.05 }).body.trim().split('\n').at(-1)!);
    t.equal(last.total_duration, 50_000, `total_duration is the hit's 50 µs (stream ${stream})`);
    t.ok(last.eval_duration > 0 && last.prompt_eval_duration > 0, 'no zero duration');
    t.ok(Number.isFinite(last.eval_count / (last.eval_duration / 1e9)), 'tokens per second is a number');
  }
  const bare = JSON.parse(replay('ollama', 'completion', false, { ...entry, kind: 'completion' }, ctx).body);
  t.ok(bare.eval_duration >= 1, 'without a time, still at least 1 ns');
});

t.test('what is not stored: cut streams, errors, tool calls, several choices', async (t) => {
  const ok = replay('openai', 'chat', true, entry, ctx).body;
  t.equal(captureStream('openai', 'chat', ok.replace('data: [DONE]\n\n', ''), { prompt: 0, completion: 0 }), null, 'no [DONE]');
  t.equal(captureStream('openai', 'chat', ok.replace('data: [DONE]', 'data: {"error":{"message":"x"}}'), { prompt: 0, completion: 0 }), null);
  const tool = 'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":"{}"}}]},"finish_reason":null}]}\n\ndata: {"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}\n\ndata: [DONE]\n\n';
  t.equal(captureStream('openai', 'chat', tool, { prompt: 0, completion: 0 }), null);
  t.equal(captureWhole('openai', 'chat', JSON.stringify({ choices: [{ index: 0, message: { content: 'a' }, finish_reason: 'stop' }, { index: 1, message: { content: 'b' }, finish_reason: 'stop' }] })), null);
  const ndjson = replay('ollama', 'chat', true, entry, ctx).body;
  t.equal(captureStream('ollama', 'chat', ndjson.split('\n').slice(0, 2).join('\n'), { prompt: 0, completion: 0 }), null, 'no done line');
  t.equal(captureWhole('ollama', 'chat', JSON.stringify({ message: { role: 'assistant', content: '', tool_calls: [{ function: { name: 'f', arguments: {} } }] }, done: true })), null);
  // Reasoning: an Ollama model's thinking as an OpenAI client gets it, and vLLM's or DeepSeek's own; a replay would drop it.
  for (const k of ['reasoning_content', 'reasoning']) {
    const streamed = `data: {"choices":[{"index":0,"delta":{"role":"assistant","content":null,"${k}":"just thinking"},"finish_reason":null}]}\n\ndata: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n`;
    t.equal(captureStream('openai', 'chat', streamed, { prompt: 0, completion: 0 }), null, `${k}, streamed`);
    t.equal(captureWhole('openai', 'chat', JSON.stringify({ choices: [{ index: 0, message: { role: 'assistant', content: 'hi', [k]: 'just thinking' }, finish_reason: 'stop' }] })), null, `${k}, whole`);
  }
  t.equal(captureWhole('openai', 'chat', JSON.stringify({ choices: [{ index: 0, message: { role: 'assistant', content: 'hi', annotations: [{ type: 'url_citation' }] }, finish_reason: 'stop' }] })), null, 'annotations');
  t.not(captureWhole('openai', 'chat', JSON.stringify({ choices: [{ index: 0, message: { role: 'assistant', content: 'hi', reasoning_content: null, annotations: [] }, finish_reason: 'stop' }] })), null, 'empty reasoning and annotations are stored');
});

t.test('capture ⇄ replay: Responses and Messages, streamed and whole, usage says the prompt was cached', async (t) => {
  for (const api of ['responses', 'anthropic'] as const) {
    for (const e of [entry, { ...entry, finish: 'length' }]) {
      const s = replay(api, 'chat', true, e, ctx);
      t.equal(s.contentType, 'text/event-stream');
      t.same(captureStream(api, 'chat', s.body, { prompt: 0, completion: 0 }), e, `${api} ${e.finish} stream keeps the chunks`);
      const w = replay(api, 'chat', false, e, ctx);
      t.same(captureWhole(api, 'chat', w.body), { ...e, chunks: [e.chunks.join('')] }, `${api} ${e.finish} whole joins them`);
    }
  }
  const r = JSON.parse(replay('responses', 'chat', false, entry, ctx).body);
  t.equal(r.id, 'resp_r1');
  t.same([r.usage.input_tokens, r.usage.input_tokens_details.cached_tokens, r.usage.output_tokens], [7, 7, 3]);
  const types = (body: string) => [...body.matchAll(/^event: (.+)$/gm)].map((m) => m[1]);
  t.same(types(replay('responses', 'chat', true, entry, ctx).body), [
    'response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added',
    'response.output_text.delta', 'response.output_text.delta', 'response.output_text.delta',
    'response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed',
  ]);
  t.match(replay('responses', 'chat', true, { ...entry, finish: 'length' }, ctx).body, /event: response\.incomplete\n/);
  const m = JSON.parse(replay('anthropic', 'chat', false, entry, ctx).body);
  t.equal(m.id, 'msg_r1');
  t.same(m.usage, { input_tokens: 0, cache_creation_input_tokens: 0, cache_read_input_tokens: 7, output_tokens: 3 }, 'Anthropic counts cache reads apart from input_tokens');
  t.same(types(replay('anthropic', 'chat', true, entry, ctx).body), [
    'message_start', 'ping', 'content_block_start', 'content_block_delta', 'content_block_delta', 'content_block_delta', 'content_block_stop', 'message_delta', 'message_stop',
  ]);
});

t.test('Responses and Messages: what is not stored', async (t) => {
  const z = { prompt: 0, completion: 0 };
  const rs = replay('responses', 'chat', true, entry, ctx).body;
  t.equal(captureStream('responses', 'chat', rs.slice(0, rs.indexOf('event: response.completed')), z), null, 'no response.completed: cut');
  const failed = rs.slice(0, rs.indexOf('event: response.output_text.done')) + 'event: response.failed\ndata: {"type":"response.failed","response":{"status":"failed","error":{"code":"upstream_error","message":"x"}}}\n\n';
  t.equal(captureStream('responses', 'chat', failed, z), null, 'response.failed');
  const call = 'event: response.output_item.added\ndata: {"type":"response.output_item.added","output_index":0,"item":{"type":"function_call","name":"f","arguments":""}}\n\n';
  t.equal(captureStream('responses', 'chat', call + rs, z), null, 'a function call');
  const whole = JSON.parse(replay('responses', 'chat', false, entry, ctx).body);
  t.ok(captureWhole('responses', 'chat', JSON.stringify(whole)));
  t.equal(captureWhole('responses', 'chat', JSON.stringify({ ...whole, output: [...whole.output, { type: 'function_call', name: 'f', arguments: '{}' }] })), null, 'several outputs');
  t.equal(captureWhole('responses', 'chat', JSON.stringify({ ...whole, output: [{ type: 'reasoning', summary: [] }] })), null, 'reasoning');
  t.equal(captureWhole('responses', 'chat', JSON.stringify({ ...whole, output: [{ ...whole.output[0], content: [{ type: 'output_text', text: 'a', annotations: [{ type: 'url_citation' }] }] }] })), null, 'annotations');
  t.equal(captureWhole('responses', 'chat', JSON.stringify({ ...whole, status: 'failed' })), null);
  const as = replay('anthropic', 'chat', true, entry, ctx).body;
  t.equal(captureStream('anthropic', 'chat', as.replace(/event: message_stop\n.*\n\n$/, ''), z), null, 'no message_stop: cut');
  t.equal(captureStream('anthropic', 'chat', as.replace(/event: message_delta[^]*$/, 'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"x"}}\n\n'), z), null, 'an error event');
  const tool = as.replace('"type":"content_block_stop","index":0}\n\n', '"type":"content_block_stop","index":0}\n\nevent: content_block_start\ndata: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}\n\n');
  t.equal(captureStream('anthropic', 'chat', tool, z), null, 'a tool_use block');
  const msg = JSON.parse(replay('anthropic', 'chat', false, entry, ctx).body);
  t.equal(captureWhole('anthropic', 'chat', JSON.stringify({ ...msg, content: [...msg.content, { type: 'tool_use', id: 't', name: 'f', input: {} }], stop_reason: 'tool_use' })), null);
  t.equal(captureWhole('anthropic', 'chat', JSON.stringify({ ...msg, stop_reason: 'tool_use' })), null);
  t.equal(captureWhole('anthropic', 'chat', JSON.stringify({ type: 'error', error: { type: 'api_error', message: 'x' } })), null);
});

t.test('a stream too large only by its chunking is kept with its chunks merged; one whose text is too large is not', async (t) => {
  const tokens = Array.from({ length: 10_000 }, (_, i) => `w${i % 10} `);
  const streamed: CachedReply = { v: 1, kind: 'chat', chunks: tokens, finish: 'stop', promptTokens: 3, completionTokens: tokens.length };
  const whole: CachedReply = { ...streamed, chunks: [tokens.join('')] };
  const budget = entryBytes(whole) + 1000;
  t.ok(entryBytes(streamed) > budget, 'as streamed, the chunking alone puts it over');
  const fitted = fitChunks(streamed, budget);
  t.ok(entryBytes(fitted) <= budget, 'merged, it fits');
  t.equal(fitted.chunks.join(''), tokens.join(''), 'the same text');
  t.ok(fitted.chunks.length > 1 && fitted.chunks.length < tokens.length, `still streamed in chunks (${fitted.chunks.length})`);
  t.equal(fitChunks(streamed, entryBytes(streamed)), streamed, 'within its budget: as it is');
  t.equal(fitChunks(streamed, entryBytes(whole) - 10), streamed, 'its text alone too large: as it is (not stored)');
});

t.test("the model a hit names is the one its miss gave, whether or not the reply's JSON is indented", async (t) => {
  const e: CachedReply = { v: 1, kind: 'chat', chunks: ['hi'], finish: 'stop', promptTokens: 1, completionTokens: 1 };
  t.equal(withModel(e, '{"id":"x","model":"gpt-4o-2024-08-06","choices":[]}')!.model, 'gpt-4o-2024-08-06');
  // An indented reply (as some servers send it): the group's name was given instead.
  t.equal(withModel(e, '{\n  "id": "x",\n  "model" : "mock-model",\n  "choices": []\n}')!.model, 'mock-model');
  t.equal(withModel(e, '{"model":"a\\"b"}')!.model, 'a"b');
});
