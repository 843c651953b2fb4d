// Request translation, on edges testers found: what a translation sends for the deployment's
// output-limit field, what Ollama cannot carry (refused, or sent to a deployment that can),
// wrong-typed sampling numbers refused rather than dropped, a forced function not offered,
// a completion's response_format, and a Messages tool_result's error flag.
// The upstream is a scripted HTTP server answering both wire formats by path.
import t from 'tap';
import type { ServerResponse } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { startTestBroker, postJson } from '../helpers/broker.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';

const up = await startScriptedUpstream();
t.teardown(() => up.close());

/** A one-token reply in the wire format of the path asked, whole or streamed. */
function answer(path: string, b: any, res: ServerResponse): void {
  const usage = { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 };
  if (path.startsWith('/api/')) {
    const done = { model: 'm', created_at: '2024-01-01T00:00:00Z', done: true, done_reason: 'stop', prompt_eval_count: 3, eval_count: 1 };
    const line = path === '/api/generate' ? { ...done, response: 'ok' } : { ...done, message: { role: 'assistant', content: 'ok' } };
    res.writeHead(200, { 'content-type': b.stream === false ? 'application/json' : 'application/x-ndjson' });
    return void res.end(JSON.stringify(line) + '\n');
  }
  const chat = path === '/v1/chat/completions';
  const choice = chat ? { index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' } : { index: 0, text: 'ok', logprobs: null, finish_reason: 'stop' };
  const whole = { id: 'c1', object: chat ? 'chat.completion' : 'text_completion', created: 1, model: 'm', choices: [choice], usage };
  if (b.stream !== true) {
    res.writeHead(200, { 'content-type': 'application/json' });
    return void res.end(JSON.stringify(whole));
  }
  const delta = chat ? { index: 0, delta: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' } : choice;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(`data: ${JSON.stringify({ ...whole, object: chat ? 'chat.completion.chunk' : 'text_completion', choices: [delta], usage: null })}\n\ndata: ${JSON.stringify({ ...whole, choices: [], usage })}\n\ndata: [DONE]\n\n`);
}
up.handler = answer;

const dir = mkdtempSync(join(tmpdir(), 'eb-translate-fidelity-'));
writeFileSync(
  join(dir, 'broker.yaml'),
  stringify({
    modelGroups: {
      oa: { deployments: [{ id: 'oa-1', provider: 'openai', url: up.url, model: 'm', maxTokensField: 'max_completion_tokens' }] },
      ol: { deployments: [{ id: 'ol-1', provider: 'ollama', url: up.url, model: 'm' }] },
      // An unreachable deployment (asked first: its weight) beside one that rate-limits.
      ur: { deployments: [{ id: 'ur-dead', provider: 'openai', url: 'http://127.0.0.1:9', model: 'm', weight: 100 }, { id: 'ur-oa', provider: 'openai', url: up.url, model: 'm' }] },
      // The Ollama one is the heavier: tried first, it must pass on what it cannot carry.
      mx: {
        deployments: [
          { id: 'mx-ol', provider: 'ollama', url: up.url, model: 'm', weight: 4 },
          { id: 'mx-oa', provider: 'openai', url: up.url, model: 'm', weight: 1 },
        ],
      },
    },
  }),
);
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false' });
t.teardown(() => tb.close());

const chat = (model: string, extra: Record<string, unknown> = {}) => ({ model, messages: [{ role: 'user', content: 'Hi' }], ...extra });
const completion = (model: string, extra: Record<string, unknown> = {}) => ({ model, prompt: 'Hi', ...extra });
const last = () => up.seen.at(-1)!;

t.test("an Ollama generate run as chat on an OpenAI deployment: num_predict in the deployment's maxTokensField, as /api/chat's", async (t) => {
  for (const [path, body] of [
    ['/api/generate', { model: 'oa', prompt: 'Hi', stream: false, options: { num_predict: 7 } }],
    ['/api/chat', { model: 'oa', messages: [{ role: 'user', content: 'Hi' }], stream: false, options: { num_predict: 7 } }],
  ] as const) {
    const r = await postJson(`${tb.url}${path}`, body);
    t.equal(r.status, 200, path);
    t.equal(last().path, '/v1/chat/completions', `${path}: asked on chat`);
    t.equal(last().body.max_completion_tokens, 7, `${path}: max_completion_tokens`);
    t.notOk('max_tokens' in last().body, `${path}: no max_tokens beside it`);
  }
});

t.test('Ollama cannot carry log probabilities or an echoed prompt: refused (400 naming the field), or sent where they can go', async (t) => {
  const before = up.seen.length;
  const refused: Array<[string, unknown, string]> = [
    ['/v1/chat/completions', chat('ol', { logprobs: true }), 'logprobs'],
    ['/v1/chat/completions', chat('ol', { top_logprobs: 2 }), 'top_logprobs'],
    ['/v1/chat/completions', chat('ol', { logprobs: true, top_logprobs: 2, stream: true }), 'logprobs'],
    ['/v1/completions', completion('ol', { logprobs: 1 }), 'logprobs'],
    ['/v1/completions', completion('ol', { logprobs: 0 }), 'logprobs'],
    ['/v1/completions', completion('ol', { echo: true }), 'echo'],
  ];
  for (const [path, body, field] of refused) {
    const r = await postJson(`${tb.url}${path}`, body);
    t.equal(r.status, 400, `${path} ${JSON.stringify(body)}`);
    t.match(r.body.error, { type: 'invalid_request_error', code: 'invalid_request', param: field, message: new RegExp(`^${field} `) }, `${field}: named as param and in the message`);
  }
  t.equal(up.seen.length, before, 'nothing reached the upstream');
  // Asking for none of it is fine.
  for (const [path, body] of [
    ['/v1/chat/completions', chat('ol', { logprobs: false, top_logprobs: null, n: 1 })],
    ['/v1/completions', completion('ol', { logprobs: null, echo: false })],
  ] as const) t.equal((await postJson(`${tb.url}${path}`, body)).status, 200, `${path}: ${JSON.stringify(body)}`);
  // A mixed group: the OpenAI-compatible deployment carries them.
  for (const [path, body] of [
    ['/v1/chat/completions', chat('mx', { logprobs: true, top_logprobs: 2 })],
    ['/v1/completions', completion('mx', { echo: true, logprobs: 1 })],
    ['/v1/chat/completions', chat('mx', { n: 2 })],
  ] as const) {
    const r = await postJson(`${tb.url}${path}`, body);
    t.equal(r.status, 200, `mx ${path} ${JSON.stringify(body)}`);
    t.equal(r.headers.get('x-broker-deployment'), 'mx-oa');
    t.equal(last().path, path, 'asked of the OpenAI-compatible deployment, fields as sent');
    t.match(last().body, { ...body, model: 'm' });
  }
});

t.test('Ollama cannot carry audio output, file or audio parts, or an unknown response_format: 400 naming the field, or the OpenAI deployment', async (t) => {
  const before = up.seen.length;
  const refused: Array<[unknown, string]> = [
    [chat('ol', { modalities: ['text', 'audio'], audio: { voice: 'alloy', format: 'wav' } }), 'modalities'],
    [chat('ol', { audio: { voice: 'alloy', format: 'wav' } }), 'audio'],
    [{ model: 'ol', messages: [{ role: 'user', content: [{ type: 'text', text: 'what?' }, { type: 'file', file: { file_id: 'file-abc' } }] }] }, 'messages[0].content[1].type'],
    [{ model: 'ol', messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } }] }] }, 'messages[0].content[0].type'],
    [{ model: 'ol', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/a.png' } }] }] }, 'messages[0].content[0].image_url.url'],
    [chat('ol', { response_format: { type: 'json' } }), 'response_format.type'],
    [chat('ol', { response_format: { type: 'json_schema', json_schema: { name: 'x', schema: 'nope' } } }), 'response_format.json_schema.schema'],
  ];
  for (const [body, field] of refused) {
    const r = await postJson(`${tb.url}/v1/chat/completions`, body);
    t.equal(r.status, 400, field);
    t.match(r.body.error, { code: 'invalid_request', param: field }, `${field}: named as param`);
    t.ok(r.body.error.request_id ?? r.headers.get('x-request-id'), 'with the request id');
  }
  t.equal(up.seen.length, before, 'nothing reached the upstream');
  for (const [body] of refused.slice(0, 4)) {
    const r = await postJson(`${tb.url}/v1/chat/completions`, { ...(body as object), model: 'mx' });
    t.equal(r.status, 200, 'mx');
    t.equal(r.headers.get('x-broker-deployment'), 'mx-oa', 'a mixed group sends it to its OpenAI deployment');
  }
  // An assistant's refusal part is what it said; a json_schema without a schema is JSON.
  t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'ol', response_format: { type: 'json_schema', json_schema: { name: 'x' } }, messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: [{ type: 'refusal', refusal: 'I cannot.' }] }, { role: 'user', content: 'b' }] })).status, 200);
  t.equal(last().body.messages[1].content, 'I cannot.');
  t.equal(last().body.format, 'json');
});

t.test('a tool_choice naming one function: Ollama (no tool_choice) is offered only that tool', async (t) => {
  const fn = (name: string) => ({ type: 'function', function: { name, parameters: { type: 'object' } } });
  const r = await postJson(`${tb.url}/v1/chat/completions`, chat('ol', { tools: [fn('get_weather'), fn('get_time')], tool_choice: { type: 'function', function: { name: 'get_time' } } }));
  t.equal(r.status, 200);
  t.same(last().body.tools.map((x: any) => x.function.name), ['get_time']);
  await postJson(`${tb.url}/v1/chat/completions`, chat('ol', { tools: [fn('get_weather'), fn('get_time')], tool_choice: 'auto' }));
  t.same(last().body.tools.map((x: any) => x.function.name), ['get_weather', 'get_time'], 'auto: all of them');
});

t.test('n > 1 to an Ollama deployment: the refusal names n as its param', async (t) => {
  for (const [path, body] of [
    ['/v1/chat/completions', chat('ol', { n: 2 })],
    ['/v1/completions', completion('ol', { n: 3 })],
  ] as const) {
    const r = await postJson(`${tb.url}${path}`, body);
    t.equal(r.status, 400, path);
    t.match(r.body.error, { code: 'invalid_request', param: 'n', message: 'n > 1 is not supported by this model' });
  }
});

t.test('a forced function that is not in tools: 400 on /v1/chat/completions for every provider', async (t) => {
  const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
  const before = up.seen.length;
  for (const model of ['oa', 'ol', 'mx']) {
    for (const extra of [{ tools, tool_choice: { type: 'function', function: { name: 'g' } } }, { tool_choice: { type: 'function', function: { name: 'g' } } }]) {
      const r = await postJson(`${tb.url}/v1/chat/completions`, chat(model, extra));
      t.equal(r.status, 400, `${model}: ${JSON.stringify(extra)}`);
      t.match(r.body.error, { code: 'invalid_request', param: 'tool_choice.function.name', message: /g is not one of the function tools in tools/ });
    }
  }
  t.equal(up.seen.length, before, 'nothing reached the upstream');
  const ok = await postJson(`${tb.url}/v1/chat/completions`, chat('oa', { tools, tool_choice: { type: 'function', function: { name: 'f' } } }));
  t.equal(ok.status, 200, 'one that is offered goes on');
  t.same(last().body.tool_choice, { type: 'function', function: { name: 'f' } });
});

t.test('sampling numbers of the wrong type: 400 naming the field, as temperature, not dropped', async (t) => {
  const before = up.seen.length;
  const cases: Array<[string, Record<string, unknown>, string, string]> = [
    ['seed', { seed: '7' }, 'seed', 'seed must be an integer'],
    ['seed', { seed: 7.5 }, 'seed', 'seed must be an integer'],
    ['presence_penalty', { presence_penalty: 'high' }, 'presence_penalty', 'presence_penalty must be a number'],
    ['frequency_penalty', { frequency_penalty: [1] }, 'frequency_penalty', 'frequency_penalty must be a number'],
    ['top_k', { top_k: '20' }, 'top_k', 'top_k must be a number'],
  ];
  for (const model of ['oa', 'ol']) {
    for (const [name, extra, field, message] of cases) {
      for (const [path, body] of [
        ['/v1/chat/completions', chat(model, extra)],
        ['/v1/completions', completion(model, extra)],
      ] as const) {
        const r = await postJson(`${tb.url}${path}`, body);
        t.equal(r.status, 400, `${model} ${path} ${name}`);
        t.match(r.body.error, { code: 'invalid_request', param: field, message });
      }
    }
  }
  for (const model of ['oa', 'ol']) {
    const r = await postJson(`${tb.url}/v1/messages`, { model, max_tokens: 5, top_k: '20', messages: [{ role: 'user', content: 'Hi' }] });
    t.equal(r.status, 400, `${model}: Messages top_k`);
    t.match(r.body, { type: 'error', error: { type: 'invalid_request_error', message: 'top_k must be a number' } });
  }
  t.equal(up.seen.length, before, 'nothing reached the upstream');
  // Right-typed (or null), they go on.
  const ok = await postJson(`${tb.url}/v1/chat/completions`, chat('ol', { seed: 7, presence_penalty: 0.5, frequency_penalty: null, top_k: 20 }));
  t.equal(ok.status, 200);
  t.match(last().body.options, { seed: 7, presence_penalty: 0.5, top_k: 20 });
  const msg = await postJson(`${tb.url}/v1/messages`, { model: 'ol', max_tokens: 5, top_k: 20, messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(msg.status, 200);
  t.equal(last().body.options.top_k, 20);
});

t.test("a completion's response_format reaches an Ollama deployment as /api/generate's format", async (t) => {
  const schema = { type: 'object', properties: { a: { type: 'string' } } };
  for (const [rf, format] of [
    [{ type: 'json_object' }, 'json'],
    [{ type: 'json_schema', json_schema: { name: 'x', schema } }, schema],
  ] as const) {
    const r = await postJson(`${tb.url}/v1/completions`, completion('ol', { response_format: rf }));
    t.equal(r.status, 200);
    t.equal(last().path, '/api/generate');
    t.same(last().body.format, format, rf.type);
  }
  t.equal((await postJson(`${tb.url}/v1/completions`, completion('ol', { response_format: { type: 'text' } }))).status, 200);
  t.notOk('format' in last().body, 'text: no format');
});

t.test("a Messages tool_result with is_error: the upstream's tool message says Error once", async (t) => {
  const turn = (content: unknown) => [
    { role: 'user', content: 'run it' },
    { role: 'assistant', content: [{ type: 'tool_use', id: 't1', name: 'run', input: {} }] },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: 't1', is_error: true, ...(content === undefined ? {} : { content }) }] },
  ];
  for (const model of ['oa', 'ol']) {
    for (const [content, expected] of [
      ['Error: exit code 1', 'Error: exit code 1'],
      ['error: no such file', 'error: no such file'],
      [[{ type: 'text', text: 'Error: boom' }], 'Error: boom'],
      ['exit code 1', 'Error: exit code 1'],
      [undefined, 'Error'],
      ['', 'Error'],
    ] as const) {
      const r = await postJson(`${tb.url}/v1/messages`, { model, max_tokens: 5, messages: turn(content) });
      t.equal(r.status, 200, `${model}: ${JSON.stringify(content)}`);
      const tool = last().body.messages.find((m: any) => m.role === 'tool');
      t.equal(tool.content, expected, `${model}: ${JSON.stringify(content)} → ${expected}`);
    }
  }
});

t.test('Messages: stop_sequences null is the default, as a null temperature or system', async (t) => {
  const r = await postJson(`${tb.url}/v1/messages`, { model: 'oa', max_tokens: 5, stop_sequences: null, messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(r.status, 200, JSON.stringify(r.body));
  t.notOk('stop' in last().body, 'no stop upstream');
  const bad = await postJson(`${tb.url}/v1/messages`, { model: 'oa', max_tokens: 5, stop_sequences: 'x', messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(bad.status, 400, 'a string is still refused');
});

t.test("Responses: a custom or local_shell call item needs its call id (sent on, it would be ''); its input counts toward the prompt", async (t) => {
  const r = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: [{ type: 'custom_tool_call', name: 'apply_patch', input: 'x' }, { type: 'message', role: 'user', content: 'Hi' }] });
  t.equal(r.status, 400);
  t.match(r.body.error, { param: 'input[0].call_id' });
  const nameless = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: [{ type: 'custom_tool_call', call_id: 'c1', input: 'x' }, { type: 'message', role: 'user', content: 'Hi' }] });
  t.match(nameless.body.error, { param: 'input[0].name' });
  // A local_shell_call_output may name its call by the call item's id.
  const shell = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: [{ type: 'local_shell_call', id: 'lsc_1', action: { type: 'exec', command: ['pwd'] } }, { type: 'local_shell_call_output', id: 'lsc_1', output: '/w' }] });
  t.equal(shell.status, 200, JSON.stringify(shell.body));
  // LLM_MAX_PROMPT_CHARS counts a custom call's input, which goes upstream as its arguments.
  const small = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false', LLM_MAX_PROMPT_CHARS: '1000' });
  t.teardown(() => small.close());
  const patch = (n: number) => postJson(`${small.url}/v1/responses`, { model: 'oa', input: [{ type: 'custom_tool_call', call_id: 'c1', name: 'apply_patch', input: 'x'.repeat(n) }, { type: 'custom_tool_call_output', call_id: 'c1', output: 'ok' }] });
  t.equal((await patch(10)).status, 200);
  const long = await patch(4000);
  t.equal(long.status, 400, 'a 4,000-character patch is over 1,000 characters of prompt');
  t.match(long.body.error.message, /prompt/);
});

// Refused before admission, as temperature is: checked in the translators, a bad seed waited for
// a free deployment (a 504 after the queue's timeout, a 503 with all of them drained).
t.test('a wrong-typed seed or a forced function not offered is 400 at once, even with no deployment free', async (t) => {
  const d = mkdtempSync(join(tmpdir(), 'eb-translate-fidelity-solo-'));
  writeFileSync(join(d, 'broker.yaml'), stringify({ modelGroups: { solo: { deployments: [{ id: 'solo-1', provider: 'ollama', url: up.url, model: 'm' }] } } }));
  const solo = await startTestBroker({ BROKER_CONFIG: join(d, 'broker.yaml'), INFER_ENABLED: 'false' });
  t.teardown(() => solo.close());
  const drain = await postJson(`${solo.url}/api/industrial/capacity/solo-1/drain`, {}, { authorization: 'Bearer test-admin-token' });
  t.equal(drain.status, 200);
  t.equal((await postJson(`${solo.url}/v1/chat/completions`, chat('solo'))).status, 503, 'drained: nothing serves the group');
  const seed = await postJson(`${solo.url}/v1/chat/completions`, chat('solo', { seed: 'x' }));
  t.match([seed.status, seed.body.error?.param], [400, 'seed'], 'a bad seed is the client\'s 400, not the 503');
  const forced = await postJson(`${solo.url}/v1/chat/completions`, chat('solo', { tools: [{ type: 'function', function: { name: 'f' } }], tool_choice: { type: 'function', function: { name: 'g' } } }));
  t.match([forced.status, forced.body.error?.param], [400, 'tool_choice.function.name']);
  const topK = await postJson(`${solo.url}/v1/messages`, { model: 'solo', max_tokens: 5, top_k: '20', messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(topK.status, 400, 'a Messages top_k too');
});

// A Response echoes these fields: of a type OpenAI refuses, they came back as sent (breaking the
// Response's schema for typed clients) and some went upstream.
t.test('Responses: reasoning, text, metadata, user, parallel_tool_calls and truncation of the wrong type are 400 naming the field', async (t) => {
  const cases: [Record<string, unknown>, string][] = [
    [{ reasoning: 'high' }, 'reasoning'],
    [{ text: 'x' }, 'text'],
    [{ text: { format: 'json' } }, 'text.format'],
    [{ metadata: 'm' }, 'metadata'],
    [{ user: {} }, 'user'],
    [{ parallel_tool_calls: 'yes' }, 'parallel_tool_calls'],
    [{ truncation: 5 }, 'truncation'],
  ];
  for (const [extra, param] of cases) {
    const r = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: 'hi', ...extra });
    t.match([r.status, r.body.error?.param], [400, param], JSON.stringify(extra));
  }
  const ok = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: 'hi', reasoning: null, text: { format: { type: 'text' } }, truncation: 'disabled', parallel_tool_calls: false, user: 'u' });
  t.equal(ok.status, 200, 'the right types pass');
  const odd = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: [{ type: { a: 1 }, role: 'user', content: 'hi' }] });
  t.match(odd.body.error?.message, /^input\[0\]\.type \{"a":1\} is not supported/, 'an object type is named as JSON');
});

t.test('tool calls to Ollama keep their ids, and tool results the call they answer (two calls of one tool answered out of order)', async (t) => {
  const r = await postJson(`${tb.url}/v1/messages`, {
    model: 'ol',
    max_tokens: 20,
    tools: [{ name: 'temp', input_schema: { type: 'object', properties: { city: { type: 'string' } } } }],
    messages: [
      { role: 'user', content: 'Paris and Rome?' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_A', name: 'temp', input: { city: 'Paris' } }, { type: 'tool_use', id: 'toolu_B', name: 'temp', input: { city: 'Rome' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_B', content: '20C' }, { type: 'tool_result', tool_use_id: 'toolu_A', content: '10C' }] },
    ],
  });
  t.equal(r.status, 200);
  t.equal(last().path, '/api/chat');
  const [, call, first, second] = last().body.messages;
  t.same(call.tool_calls.map((c: { id?: string }) => c.id), ['toolu_A', 'toolu_B'], 'the calls carry their ids');
  t.match([first, second], [{ role: 'tool', content: '20C', tool_call_id: 'toolu_B', tool_name: 'temp' }, { role: 'tool', content: '10C', tool_call_id: 'toolu_A', tool_name: 'temp' }], 'each result names its call');
});

t.test("what Ollama has no word for: OpenAI's deprecated functions, logit_bias, a data: URL that is not base64 (400 naming the field, or the OpenAI deployment)", async (t) => {
  const before = up.seen.length;
  const fn = { name: 'get_weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } };
  const refused: Array<[unknown, string]> = [
    [chat('ol', { functions: [fn], function_call: 'auto' }), 'functions'],
    [chat('ol', { function_call: 'none' }), 'function_call'],
    [{ model: 'ol', messages: [{ role: 'user', content: 'w?' }, { role: 'assistant', content: null, function_call: { name: 'get_weather', arguments: '{}' } }, { role: 'user', content: 'ok' }] }, 'messages[1].function_call'],
    [{ model: 'ol', messages: [{ role: 'user', content: 'w?' }, { role: 'function', name: 'get_weather', content: '10C' }] }, 'messages[1].role'],
    [chat('ol', { logit_bias: { '50256': -100 } }), 'logit_bias'],
    [{ model: 'ol', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/svg+xml,%3Csvg%2F%3E' } }] }] }, 'messages[0].content[0].image_url.url'],
  ];
  for (const [body, field] of refused) {
    const r = await postJson(`${tb.url}/v1/chat/completions`, body);
    t.equal(r.status, 400, field);
    t.match(r.body.error, { code: 'invalid_request', param: field }, `${field}: named as param`);
  }
  t.equal(up.seen.length, before, 'nothing reached the upstream');
  for (const [body, field] of refused) {
    const r = await postJson(`${tb.url}/v1/chat/completions`, { ...(body as object), model: 'mx' });
    t.equal(r.headers.get('x-broker-deployment'), 'mx-oa', `${field}: a mixed group sends it to its OpenAI deployment`);
  }
  // An empty logit_bias asks for nothing; nor do null functions or an assistant message's null function_call (SDKs echo them).
  t.equal((await postJson(`${tb.url}/v1/chat/completions`, chat('ol', { logit_bias: {}, functions: null }))).status, 200);
  t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'ol', messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b', function_call: null }, { role: 'user', content: 'c' }] })).status, 200);
});

t.test("an Ollama client to an OpenAI deployment: generate's context and template refused; a tool result's images follow in a user message", async (t) => {
  for (const [body, field] of [
    [{ model: 'oa', prompt: 'and then?', context: [1, 2, 3], stream: false }, 'context'],
    [{ model: 'oa', prompt: 'hi', template: '{{ .Prompt }}', stream: false }, 'template'],
    [{ model: 'oa', prompt: 'x', raw: true, context: [1, 2], stream: false }, 'context'],
  ] as const) {
    const r = await postJson(`${tb.url}/api/generate`, body);
    t.equal(r.status, 400, field);
    t.match(r.body, { error: new RegExp(`^${field} `) }, `${field}: said`);
  }
  t.equal((await postJson(`${tb.url}/api/generate`, { model: 'oa', prompt: 'hi', context: [], stream: false })).status, 200, 'an empty context asks for nothing');
  const png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
  const r = await postJson(`${tb.url}/api/chat`, {
    model: 'oa',
    stream: false,
    messages: [
      { role: 'user', content: 'look' },
      { role: 'assistant', content: '', tool_calls: [{ function: { name: 'shot', arguments: {} } }, { function: { name: 'shot', arguments: {} } }] },
      { role: 'tool', tool_name: 'shot', content: 'here', images: [png] },
      { role: 'tool', tool_name: 'shot', content: 'and here' },
      { role: 'user', content: 'what do you see?' },
    ],
  });
  t.equal(r.status, 200);
  t.match(
    last().body.messages.map((m: { role: string; content: unknown }) => [m.role, m.content]),
    [
      ['user', 'look'],
      ['assistant', null],
      ['tool', 'here'],
      ['tool', 'and here'],
      ['user', [{ type: 'image_url', image_url: { url: `data:image/png;base64,${png}` } }]],
      ['user', 'what do you see?'],
    ],
    'the tool messages unbroken, their image after them',
  );
});

t.test('every deployment rate limited: the Retry-After is the soonest any said, not the last one asked', async (t) => {
  const before = up.handler;
  t.teardown(() => void (up.handler = before));
  up.handler = (path, _b, res) => void res.writeHead(429, { 'content-type': 'application/json', 'retry-after': path.startsWith('/api/') ? '5' : '30' }).end('{"error":"slow down"}');
  for (let i = 0; i < 5; i++) {
    const r = await postJson(`${tb.url}/v1/chat/completions`, chat('mx'));
    t.equal(r.status, 503);
    t.equal(r.headers.get('retry-after'), '5', 'the Ollama deployment is free again in 5 s, whichever was asked last');
  }
  // An unreachable deployment says nothing of when the other is free: its 30 s stands.
  const r = await postJson(`${tb.url}/v1/chat/completions`, chat('ur'));
  t.equal(r.status, 503);
  t.equal(r.headers.get('retry-after'), '30', 'the rate-limited one said 30');
});
