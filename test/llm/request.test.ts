// The typed LLM request: read once from the body and headers, with the header values checked.
import t from 'tap';
import { readLlmRequest, promptTokensOf } from '../../src/llm/request.ts';
import type { BrokerRequest } from '../../src/front/reply.ts';

const req = (headers: Record<string, string> = {}): BrokerRequest => ({ id: 'r1', method: 'POST', path: '/v1/chat/completions', query: '', headers, remoteAddress: '127.0.0.1', startedAt: 0 });

t.test('fields from the body and headers', async (t) => {
  const r = readLlmRequest(req({ 'x-api-key': 'k', 'x-broker-label': 'nightly.summaries', 'x-broker-priority': 'high', 'x-broker-qos': 'batch' }), 'openai', 'chat', {
    model: 'g',
    max_completion_tokens: 64,
    messages: [{ role: 'user', content: 'abcd' }],
  });
  t.same({ model: r.model, maxTokens: r.maxTokens, apiKey: r.apiKey, label: r.label, priority: r.priority, tier: r.tier }, { model: 'g', maxTokens: 64, apiKey: 'k', label: 'nightly.summaries', priority: 8, tier: 'batch' });
  t.equal(promptTokensOf(r), 1);
  const o = readLlmRequest(req(), 'ollama', 'completion', { model: 'g', prompt: 'x'.repeat(8), system: 'yyyy', options: { num_predict: 5 } });
  t.same({ maxTokens: o.maxTokens, prompt: o.prompt, system: o.system, messages: o.messages }, { maxTokens: 5, prompt: 'xxxxxxxx', system: 'yyyy', messages: undefined });
  t.equal(promptTokensOf(o), 3);
});

t.test('model is required; labels are short and plain', async (t) => {
  t.throws(() => readLlmRequest(req(), 'openai', 'chat', {}), { code: 'invalid_request' });
  t.throws(() => readLlmRequest(req(), 'openai', 'chat', { model: 7 }), { code: 'invalid_request' });
  for (const bad of ['x'.repeat(65), 'has space', 'ünïcode', 'a/b', '{}']) {
    t.throws(() => readLlmRequest(req({ 'x-broker-label': bad }), 'openai', 'chat', { model: 'g' }), { code: 'invalid_request' }, bad);
  }
  t.equal(readLlmRequest(req({ 'x-broker-label': 'x'.repeat(64) }), 'openai', 'chat', { model: 'g', messages: [{ role: 'user', content: 'hi' }] }).label, 'x'.repeat(64));
});

t.test('malformed bodies are refused at the front with the field named (400, never 500)', async (t) => {
  const read = (body: Record<string, unknown>) => () => readLlmRequest(req(), 'openai', 'chat', { model: 'g', ...body });
  let deep: unknown = 'x';
  for (let i = 0; i < 100_000; i++) deep = [deep];
  t.throws(read({ messages: [{ role: 'user', content: 'hi' }], extra: deep }), { code: 'invalid_request', message: /nests deeper than 32/ });
  t.throws(read({ messages: [{ role: 'user', content: [null] }] }), { code: 'invalid_request', message: /messages\[0\]\.content\[0\]/ });
  t.throws(read({ messages: [null] }), { code: 'invalid_request', message: /messages\[0\] must be an object/ });
  t.throws(read({ messages: [{ content: 'no role' }] }), { code: 'invalid_request', message: /messages\[0\]\.role/ });
  t.throws(read({ messages: 'hi' }), { code: 'invalid_request', message: /messages must be an array/ });
  t.throws(read({ messages: [{ role: 'user', content: 7 }] }), { code: 'invalid_request', message: /content must be a string or an array/ });
  t.doesNotThrow(read({ messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }] }, { role: 'assistant', content: null, tool_calls: [] }] }));
  // A stream flag that is not a boolean is said, not read as "not streamed"; a temperature past a double's range (1e309: Infinity) too.
  for (const stream of ['yes', 1, 'true']) t.throws(read({ messages: [{ role: 'user', content: 'hi' }], stream }), { code: 'invalid_request', message: /stream must be a boolean/ }, String(stream));
  t.doesNotThrow(read({ messages: [{ role: 'user', content: 'hi' }], stream: false }));
  t.doesNotThrow(read({ messages: [{ role: 'user', content: 'hi' }], stream: null }));
  t.throws(read({ messages: [{ role: 'user', content: 'hi' }], temperature: JSON.parse('1e309') }), { code: 'invalid_request', message: /temperature must be a number/ });
});

t.test('an OpenAI chat is a non-empty conversation (roles are the upstream\'s: vLLM takes its own); tools an array', async (t) => {
  const read = (body: Record<string, unknown>, api: 'openai' | 'ollama' = 'openai') => () => readLlmRequest(req(), api, 'chat', { model: 'g', ...body });
  t.throws(read({ messages: [] }), { code: 'invalid_request', details: { field: 'messages' } });
  t.throws(read({}), { code: 'invalid_request', details: { field: 'messages' } });
  for (const role of ['system', 'developer', 'user', 'assistant', 'tool', 'function', 'ipython']) t.doesNotThrow(read({ messages: [{ role, content: 'x' }] }), role);
  t.throws(read({ messages: [{ role: 'user', content: 'hi' }], tools: 'x' }), { code: 'invalid_request', details: { field: 'tools' } });
  t.throws(read({ messages: [{ role: 'user', content: 'hi' }], tools: { name: 'f' } }, 'ollama'), { code: 'invalid_request', details: { field: 'tools' } });
  t.doesNotThrow(read({ messages: [] }, 'ollama'), "Ollama's empty chat loads the model");
});

t.test('output limits and n are checked, not passed on unchecked', async (t) => {
  const read = (body: Record<string, unknown>, api: 'openai' | 'ollama' = 'openai') => () => readLlmRequest(req(), api, 'chat', { model: 'g', messages: [{ role: 'user', content: 'hi' }], ...body });
  for (const bad of [1e308, -5, 0, 2.5, '10']) t.throws(read({ max_tokens: bad }), { code: 'invalid_request', message: /max_tokens must be an integer/ }, String(bad));
  t.throws(read({ max_completion_tokens: -1 }), { code: 'invalid_request' });
  t.throws(read({ n: 500 }), { code: 'invalid_request', message: /n must be an integer between 1 and 128/ });
  t.throws(read({ options: { num_predict: 1e12 } }, 'ollama'), { code: 'invalid_request' });
  t.equal(readLlmRequest(req(), 'ollama', 'chat', { model: 'g', options: { num_predict: -1 } }).maxTokens, undefined, "Ollama's -1 (no limit) is allowed");
  t.equal(read({ n: 50 })().choices, 50);
  t.equal(read({})().choices, 1);
});

t.test('prompt size limits: message count and characters (LLM_MAX_MESSAGES, LLM_MAX_PROMPT_CHARS)', async (t) => {
  const limits = { maxMessages: 3, maxPromptChars: 10 };
  const read = (body: Record<string, unknown>) => () => readLlmRequest(req(), 'openai', 'chat', { model: 'g', ...body }, limits);
  const msg = (content: string) => ({ role: 'user', content });
  t.throws(read({ messages: [msg('a'), msg('b'), msg('c'), msg('d')] }), { code: 'invalid_request', message: /at most 3 \(LLM_MAX_MESSAGES\)/ });
  t.throws(read({ messages: [msg('12345'), msg('678901')] }), { code: 'invalid_request', message: /holds 11 characters of prompt; at most 10/ });
  t.doesNotThrow(read({ messages: [msg('12345'), msg('67890')] }));
  t.throws(() => readLlmRequest(req(), 'ollama', 'completion', { model: 'g', prompt: 'x'.repeat(11) }, limits), { message: /^prompt holds 11/ });
});

t.test("the output limit is read from the fields the client API's upstreams read, the largest of them (no decoy under a tier's cap)", async (t) => {
  const max = (api: 'openai' | 'ollama' | 'responses' | 'anthropic', body: Record<string, unknown>) =>
    readLlmRequest(req(), api, 'chat', { model: 'g', messages: [{ role: 'user', content: 'x' }], input: 'x', ...body }).maxTokens;
  t.equal(max('openai', { max_tokens: 1, max_completion_tokens: 64 }), 64, 'vLLM and the Ollama translation read max_completion_tokens');
  t.equal(max('openai', { max_tokens: 64, max_completion_tokens: 1 }), 64);
  t.equal(max('openai', { max_tokens: 1, max_output_tokens: 64 }), 1, 'not a chat field');
  t.equal(max('responses', { max_tokens: 1, max_output_tokens: 64 }), 64, 'Responses reads max_output_tokens only');
  t.equal(max('ollama', { max_tokens: 1, options: { num_predict: 64 } }), 64, 'Ollama reads options.num_predict only');
  t.equal(max('ollama', { max_output_tokens: 1 }), undefined, 'no limit an Ollama server reads');
  t.equal(max('anthropic', { max_tokens: 64, max_completion_tokens: 1 }), 64);
});

t.test('x-broker-priority: digits and the four names only; names of Object (constructor, __proto__) are not priorities', async (t) => {
  const p = (h: string) => readLlmRequest(req({ 'x-broker-priority': h }), 'openai', 'chat', { model: 'g', messages: [{ role: 'user', content: 'hi' }] }).priority;
  t.equal(p('critical'), 9);
  t.equal(p('LOW'), 1);
  t.equal(p('7'), 7);
  for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty', 'valueOf']) t.equal(p(name), undefined, name);
});

t.test("OpenAI embeddings: what OpenAI refuses is a 400 naming the field (empty inputs, an unknown encoding)", async (t) => {
  const read = (body: Record<string, unknown>) => () => readLlmRequest(req(), 'openai', 'embed', { model: 'g', ...body });
  t.throws(read({ input: '' }), { code: 'invalid_request', details: { field: 'input' } });
  t.throws(read({ input: ['a', ''] }), { code: 'invalid_request', details: { field: 'input[1]' } });
  t.throws(read({ input: [[1, 2], []] }), { code: 'invalid_request', details: { field: 'input[1]' } });
  t.throws(read({ input: 'a', encoding_format: 'hex' }), { code: 'invalid_request', details: { field: 'encoding_format' } });
  t.doesNotThrow(read({ input: 'a', encoding_format: 'base64' }));
  t.doesNotThrow(read({ input: ['a'], encoding_format: 'float' }));
  // Ollama's /api/embed is not OpenAI's: its own rules.
  t.doesNotThrow(() => readLlmRequest(req(), 'ollama', 'embed', { model: 'g', input: '' }));
});

t.test('stop, stream_options and Ollama options of the wrong type are a 400 naming the field, as the vendors answer', async (t) => {
  const chat = (body: Record<string, unknown>) => () => readLlmRequest(req(), 'openai', 'chat', { model: 'g', messages: [{ role: 'user', content: 'hi' }], ...body });
  t.throws(chat({ stop: 5 }), { code: 'invalid_request', details: { field: 'stop' } });
  t.throws(chat({ stop: ['a', 1] }), { code: 'invalid_request', details: { field: 'stop' } });
  t.doesNotThrow(chat({ stop: 'x' }));
  t.doesNotThrow(chat({ stop: ['x', 'y'] }));
  t.doesNotThrow(chat({ stop: null }));
  t.throws(chat({ stream: true, stream_options: 5 }), { code: 'invalid_request', details: { field: 'stream_options' } });
  t.doesNotThrow(chat({ stream: true, stream_options: { include_usage: true } }));
  const ollama = (options: unknown) => () => readLlmRequest(req(), 'ollama', 'chat', { model: 'g', messages: [{ role: 'user', content: 'hi' }], options });
  t.throws(ollama('x'), { code: 'invalid_request', details: { field: 'options' } });
  t.throws(ollama([1]), { code: 'invalid_request', details: { field: 'options' } });
  t.doesNotThrow(ollama({ temperature: 0 }));
  // A number option that is not a number, and images that are not an array of strings: Ollama's 400, not dropped in translation.
  t.throws(ollama({ temperature: 'hot' }), { code: 'invalid_request', details: { field: 'options.temperature' } });
  t.throws(ollama({ top_k: '40' }), { code: 'invalid_request', details: { field: 'options.top_k' } });
  t.doesNotThrow(ollama({ temperature: 0.2, top_k: 40, seed: 7, num_ctx: 8192 }));
  const images = (body: Record<string, unknown>) => () => readLlmRequest(req(), 'ollama', 'chat', { model: 'g', ...body });
  t.throws(images({ messages: [{ role: 'user', content: 'hi', images: 'abc' }] }), { code: 'invalid_request', details: { field: 'messages[0].images' } });
  t.throws(images({ messages: [{ role: 'user', content: 'hi', images: [1] }] }), { code: 'invalid_request', details: { field: 'messages[0].images' } });
  t.doesNotThrow(images({ messages: [{ role: 'user', content: 'hi', images: ['iVBORw0KGgo='] }] }));
  // Ollama's 400 "illegal base64 data": passed on, it reached an OpenAI upstream as a broken data: URL.
  t.throws(images({ messages: [{ role: 'user', content: 'hi', images: ['not base64!!'] }] }), { code: 'invalid_request', details: { field: 'messages[0].images[0]' } });
  t.throws(images({ messages: [{ role: 'user', content: 'hi', images: ['iVBORw0KGgo=', 'https://example.com/cat.png'] }] }), { code: 'invalid_request', details: { field: 'messages[0].images[1]' } });
  t.throws(images({ messages: [{ role: 'user', content: 'hi', images: [''] }] }), { code: 'invalid_request', details: { field: 'messages[0].images[0]' } });
  t.doesNotThrow(images({ messages: [{ role: 'user', content: 'hi', images: ['data:image/jpeg;base64,/9j/4AAQ'] }] }), 'a data: URL of base64');
  t.throws(() => readLlmRequest(req(), 'ollama', 'completion', { model: 'g', prompt: 'x', images: 'abc' }), { code: 'invalid_request', details: { field: 'images' } });
  // At most 64 stop sequences, in each API's field.
  const many = Array.from({ length: 65 }, (_, i) => `s${i}`);
  t.throws(chat({ stop: many }), { code: 'invalid_request', details: { field: 'stop' } });
  t.doesNotThrow(chat({ stop: many.slice(0, 64) }));
  t.throws(ollama({ stop: many }), { code: 'invalid_request', details: { field: 'options.stop' } });
  t.throws(() => readLlmRequest(req(), 'anthropic', 'chat', { model: 'g', max_tokens: 5, messages: [{ role: 'user', content: 'hi' }], stop_sequences: many }), { code: 'invalid_request', details: { field: 'stop_sequences' } });
});

t.test('tools, tool_choice, response_format, Ollama format and a completion prompt of the wrong shape: a 400 naming the field, as the vendors answer', async (t) => {
  const messages = [{ role: 'user', content: 'hi' }];
  const chat = (body: Record<string, unknown>) => () => readLlmRequest(req(), 'openai', 'chat', { model: 'g', messages, ...body });
  const fn = { type: 'function', function: { name: 'read', parameters: { type: 'object', properties: {} } } };
  t.throws(chat({ tools: [{ type: 'function' }] }), { code: 'invalid_request', details: { field: 'tools[0].function.name' } });
  t.throws(chat({ tools: [fn, null] }), { code: 'invalid_request', details: { field: 'tools[1]' } });
  t.throws(chat({ tools: [1] }), { code: 'invalid_request', details: { field: 'tools[0]' } });
  t.throws(chat({ tools: [{ function: { name: 'read' } }] }), { code: 'invalid_request', details: { field: 'tools[0]' } }, 'OpenAI requires the type');
  t.throws(chat({ tools: [{ type: 'function', function: { name: 5, parameters: 'x' } }] }), { code: 'invalid_request', details: { field: 'tools[0].function.name' } });
  t.throws(chat({ tools: [{ type: 'function', function: { name: 'read', parameters: 'x' } }] }), { code: 'invalid_request', details: { field: 'tools[0].function.parameters' } });
  t.doesNotThrow(chat({ tools: [fn, { type: 'function', function: { name: 'bare' } }] }));
  t.doesNotThrow(chat({ tools: [{ type: 'custom', custom: { name: 'apply_patch' } }] }), 'another type passes on, for an upstream that serves it');
  t.throws(chat({ tools: [fn], tool_choice: { type: 'function', function: {} } }), { code: 'invalid_request', details: { field: 'tool_choice.function.name' } });
  t.throws(chat({ tools: [fn], tool_choice: 'sometimes' }), { code: 'invalid_request', details: { field: 'tool_choice' } });
  t.throws(chat({ tools: [fn], tool_choice: 5 }), { code: 'invalid_request', details: { field: 'tool_choice' } });
  for (const ok of ['none', 'auto', 'required', { type: 'function', function: { name: 'read' } }, null]) t.doesNotThrow(chat({ tools: [fn], tool_choice: ok }), JSON.stringify(ok));
  t.throws(chat({ response_format: 'json' }), { code: 'invalid_request', details: { field: 'response_format' } });
  t.throws(chat({ response_format: {} }), { code: 'invalid_request', details: { field: 'response_format' } });
  t.doesNotThrow(chat({ response_format: { type: 'json_object' } }));

  const ollama = (body: Record<string, unknown>) => () => readLlmRequest(req(), 'ollama', 'chat', { model: 'g', messages, ...body });
  t.throws(ollama({ tools: [null, 1] }), { code: 'invalid_request', details: { field: 'tools[0]' } });
  t.throws(ollama({ tools: [{ type: 'function', function: {} }] }), { code: 'invalid_request', details: { field: 'tools[0].function.name' } });
  t.doesNotThrow(ollama({ tools: [fn, { function: { name: 'untyped' } }] }), "Ollama takes a tool without a type for a function");
  t.throws(ollama({ format: 5 }), { code: 'invalid_request', details: { field: 'format' } });
  t.doesNotThrow(ollama({ format: 'json' }));
  t.throws(ollama({ format: 'xml' }), { code: 'invalid_request', details: { field: 'format' } }, 'another string: 400, as Ollama');
  t.doesNotThrow(ollama({ format: '' }), 'empty: no format, as Ollama');
  t.doesNotThrow(ollama({ format: { type: 'object', properties: { a: { type: 'string' } } } }));

  const completion = (prompt: unknown) => () => readLlmRequest(req(), 'openai', 'completion', { model: 'g', prompt });
  t.throws(completion([1, { a: 1 }]), { code: 'invalid_request', details: { field: 'prompt' } });
  t.throws(completion(5), { code: 'invalid_request', details: { field: 'prompt' } });
  for (const ok of ['a', ['a', 'b'], [1, 2, 3], [[1, 2], [3]]]) t.doesNotThrow(completion(ok), JSON.stringify(ok));
});

t.test("a completion's prompt as strings or token ids, and its suffix, count as a string prompt does (limits, a group's window, the token quota)", async (t) => {
  const read = (body: Record<string, unknown>, limits = { maxMessages: 10, maxPromptChars: 100 }) => readLlmRequest(req(), 'openai', 'completion', { model: 'g', ...body }, limits);
  t.equal(promptTokensOf(read({ prompt: 'x'.repeat(40) })), 10);
  t.equal(promptTokensOf(read({ prompt: ['x'.repeat(20), 'y'.repeat(40)] })), 10, 'a batch of prompts: its longest, which must fit alone');
  t.equal(promptTokensOf(read({ prompt: [5, 6, 7] })), 3, 'a token id is a token');
  t.equal(promptTokensOf(read({ prompt: [[1, 2], [3, 4, 5]] })), 3, 'a batch of token prompts: its longest');
  t.equal(promptTokensOf(read({ prompt: Array(20).fill('x'.repeat(80)) })), 20, 'twenty prompts that each fit are not refused as their sum');
  t.equal(promptTokensOf(read({ prompt: 'x'.repeat(20), suffix: 'y'.repeat(20) })), 10, 'the suffix is prompt too');
  t.throws(() => read({ prompt: ['x'.repeat(101)] }), { code: 'invalid_request', details: { field: 'prompt' } }, 'past LLM_MAX_PROMPT_CHARS as an array too');
  t.throws(() => read({ prompt: 'a', suffix: 'x'.repeat(101) }), { code: 'invalid_request' }, 'and with a long suffix');
  t.throws(() => read({ prompt: Array(30).fill(1) }), { code: 'invalid_request' }, 'and in token ids');
  const ollama = readLlmRequest(req(), 'ollama', 'completion', { model: 'g', prompt: 'x'.repeat(20), suffix: 'y'.repeat(20) });
  t.equal(promptTokensOf(ollama), 10, "Ollama's suffix too");
});

t.test("embeddings' input as each vendor takes it, and dimensions: a 400 naming the field", async (t) => {
  const embed = (api: 'openai' | 'ollama', body: Record<string, unknown>) => () => readLlmRequest(req(), api, 'embed', { model: 'g', ...body });
  t.throws(embed('ollama', { input: [[1, 2, 3], [4, 5]] }), { code: 'invalid_request', details: { field: 'input[0]' } }, 'Ollama takes no token ids');
  t.throws(embed('ollama', { input: [[]] }), { code: 'invalid_request', details: { field: 'input[0]' } });
  t.throws(embed('ollama', { input: ['a', 1] }), { code: 'invalid_request', details: { field: 'input[1]' } });
  t.doesNotThrow(embed('ollama', { input: ['a', 'b'] }));
  t.throws(embed('openai', { input: [1, 'a'] }), { code: 'invalid_request', details: { field: 'input[1]' } }, 'one kind per request');
  t.throws(embed('openai', { input: ['a', [1, 2]] }), { code: 'invalid_request', details: { field: 'input[1]' } });
  for (const ok of [['a', 'b'], [1, 2, 3], [[1, 2], [3]], [[0]]]) t.doesNotThrow(embed('openai', { input: ok }), JSON.stringify(ok));
  // Token ids are whole numbers >= 0, one kind per request: else OpenAI's 400, counted against the deployment.
  for (const [bad, at] of [[[[1.5, 2]], 0], [[[-1, 2]], 0], [[1.5], 0], [[[1, 2], true], 1], [[1, null], 1]] as const) {
    t.throws(embed('openai', { input: bad }), { code: 'invalid_request', details: { field: `input[${at}]` }, message: /token id/ }, `input ${JSON.stringify(bad)}`);
  }
  t.throws(embed('openai', { input: [[1, 2], 3] }), { code: 'invalid_request', details: { field: 'input[1]' }, message: /mixes token ids and arrays of them/ });
  for (const bad of ['x', 0, 1.5, -1]) t.throws(embed('openai', { input: 'a', dimensions: bad }), { code: 'invalid_request', details: { field: 'dimensions' } }, `dimensions ${JSON.stringify(bad)}`);
  t.doesNotThrow(embed('openai', { input: 'a', dimensions: 256 }));
  t.throws(embed('ollama', { input: 'a', dimensions: 'x' }), { code: 'invalid_request', details: { field: 'dimensions' } });
});

t.test("an Ollama client's empty input is refused before it goes to an OpenAI-compatible upstream (which answers it 400)", async (t) => {
  const { openaiRequest } = await import('../../src/llm/translate/embeddings.ts');
  t.throws(() => openaiRequest({ model: 'g', input: '' }, 'm'), { code: 'invalid_request', details: { field: 'input' } });
  t.throws(() => openaiRequest({ model: 'g', input: ['a', ''] }, 'm'), { code: 'invalid_request', details: { field: 'input' } });
  t.same(openaiRequest({ model: 'g', input: ['a'], dimensions: 8 }, 'm'), { model: 'm', input: ['a'], encoding_format: 'float', dimensions: 8 });
});

t.test('an image counts 1,024 tokens whatever its size, in every client API (not its base64: a screenshot was 66,000 tokens)', async (t) => {
  const b64 = (n: number): string => 'A'.repeat(n);
  const counts = (n: number): number[] => {
    const url = `data:image/png;base64,${b64(n)}`;
    const image = { type: 'image', source: { type: 'base64', media_type: 'image/png', data: b64(n) } };
    return [
      readLlmRequest(req(), 'openai', 'chat', { model: 'g', messages: [{ role: 'user', content: [{ type: 'text', text: 'what' }, { type: 'image_url', image_url: { url } }] }] }),
      readLlmRequest(req(), 'responses', 'chat', { model: 'g', input: [{ role: 'user', content: [{ type: 'input_text', text: 'what' }, { type: 'input_image', image_url: url }] }] }),
      readLlmRequest(req(), 'anthropic', 'chat', { model: 'g', max_tokens: 8, messages: [{ role: 'user', content: [image, { type: 'text', text: 'what' }] }] }),
      // A screenshot tool's result: the image nested in a tool_result block.
      readLlmRequest(req(), 'anthropic', 'chat', {
        model: 'g',
        max_tokens: 8,
        messages: [
          { role: 'assistant', content: [{ type: 'tool_use', id: 't1', name: 'shot', input: {} }] },
          { role: 'user', content: [{ type: 'tool_result', tool_use_id: 't1', content: [image] }] },
        ],
      }),
      readLlmRequest(req(), 'ollama', 'chat', { model: 'g', messages: [{ role: 'user', content: 'what', images: [b64(n)] }] }),
      readLlmRequest(req(), 'ollama', 'completion', { model: 'g', prompt: 'what', images: [b64(n)] }),
    ].map((r) => promptTokensOf(r));
  };
  const small = counts(4_000);
  const large = counts(400_000);
  t.same(large, small, 'the same count for a 100× larger image');
  for (const n of small) t.ok(n >= 1024 && n < 1100, `about 1,024 tokens (${n})`);
  const two = readLlmRequest(req(), 'ollama', 'chat', { model: 'g', messages: [{ role: 'user', content: 'what', images: [b64(8), b64(8)] }] });
  t.equal(promptTokensOf(two), 2048 + 1, 'two images, two counts');
});

t.test('audio and files count as an image does, and their base64 is not prompt text (a 150 KB PDF was 50,000 tokens; 3 MB was over LLM_MAX_PROMPT_CHARS)', async (t) => {
  const data = 'A'.repeat(4_400_000); // 3.3 MB of bytes: past the 4,000,000 characters of prompt text
  const limits = { maxMessages: 4096, maxPromptChars: 4_000_000 };
  const reqs = [
    readLlmRequest(req(), 'openai', 'chat', { model: 'g', messages: [{ role: 'user', content: [{ type: 'text', text: 'what' }, { type: 'input_audio', input_audio: { data, format: 'wav' } }] }] }, limits),
    readLlmRequest(req(), 'openai', 'chat', { model: 'g', messages: [{ role: 'user', content: [{ type: 'text', text: 'what' }, { type: 'file', file: { file_data: `data:application/pdf;base64,${data}`, filename: 'a.pdf' } }] }] }, limits),
    readLlmRequest(req(), 'responses', 'chat', { model: 'g', input: [{ role: 'user', content: [{ type: 'input_text', text: 'what' }, { type: 'input_file', file_data: `data:application/pdf;base64,${data}`, filename: 'a.pdf' }] }] }, limits),
  ];
  for (const r of reqs) t.ok(promptTokensOf(r) >= 1024 && promptTokensOf(r) < 1100, `about 1,024 tokens (${promptTokensOf(r)})`);
});

t.test("an earlier turn's thinking blocks are not counted: they are never sent upstream (Claude Code's long sessions reached the window early)", async (t) => {
  const turn = (blocks: unknown[]) =>
    readLlmRequest(req(), 'anthropic', 'chat', {
      model: 'g',
      max_tokens: 8,
      messages: [
        { role: 'user', content: 'hi' },
        { role: 'assistant', content: [...blocks, { type: 'text', text: 'Hello' }] },
        { role: 'user', content: 'again' },
      ],
    });
  const bare = promptTokensOf(turn([]));
  // Left out of the JSON counted, a block leaves its place (`null,`): a token at most.
  t.ok(promptTokensOf(turn([{ type: 'thinking', thinking: 'x'.repeat(7_400), signature: 's'.repeat(400) }])) <= bare + 1, 'thinking');
  t.ok(promptTokensOf(turn([{ type: 'redacted_thinking', data: 'd'.repeat(7_400) }])) <= bare + 1, 'redacted thinking');
  t.ok(promptTokensOf(turn([{ type: 'text', text: 'x'.repeat(7_400) }])) > bare + 1_800, 'text of the same length counts');
});

t.test("an Ollama client's images: unpadded base64 taken, one character past a multiple of four refused", async (t) => {
  const images = (img: string) => () => readLlmRequest(req(), 'ollama', 'chat', { model: 'g', messages: [{ role: 'user', content: 'hi', images: [img] }] });
  t.doesNotThrow(images('iVBORw0KGgo'), 'unpadded');
  t.doesNotThrow(images('data:image/png;base64,iVBORw0KGgo'), 'unpadded, in a data: URL');
  t.throws(images('iVBORw0KG'), { code: 'invalid_request', details: { field: 'messages[0].images[0]' } });
});

t.test("Anthropic's thinking budget is checked as Anthropic checks it, against the client's own max_tokens (a QoS tier's cap comes later)", async (t) => {
  const read = (thinking: unknown, max_tokens = 32_000, headers: Record<string, string> = {}) => () =>
    readLlmRequest(req(headers), 'anthropic', 'chat', { model: 'g', max_tokens, thinking, messages: [{ role: 'user', content: 'hi' }] });
  t.throws(read({ type: 'enabled' }), { code: 'invalid_request', details: { field: 'thinking.budget_tokens' } }, 'required');
  t.throws(read({ type: 'enabled', budget_tokens: 'x' }), { code: 'invalid_request', details: { field: 'thinking.budget_tokens' } }, 'an integer');
  t.throws(read({ type: 'enabled', budget_tokens: 1000 }), { code: 'invalid_request', details: { field: 'thinking.budget_tokens' } }, 'at least 1024');
  t.throws(read({ type: 'enabled', budget_tokens: 5000 }, 100), { code: 'invalid_request', message: /less than max_tokens \(100\)/ }, 'below max_tokens');
  t.doesNotThrow(read({ type: 'enabled', budget_tokens: 10_000 }), "below the client's 32,000");
  t.doesNotThrow(read({ type: 'enabled', budget_tokens: 5000 }, 100, { 'anthropic-beta': 'interleaved-thinking-2025-05-14' }), 'interleaved thinking: the budget may pass max_tokens');
  t.doesNotThrow(read({ type: 'adaptive' }), 'adaptive has no budget');
});
