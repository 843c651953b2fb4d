// The newer client APIs end to end, each with its vendor's official client, unchanged:
// the OpenAI Responses API (openai's client.responses), Anthropic's Messages API
// (@anthropic-ai/sdk), embeddings (openai and ollama), and tool calls both ways,
// streamed and not, against a real broker (AUTH_MODE=keys: every client sends its key
// its own way) in front of mock upstreams speaking the real wire formats.
// Run once per execution mode (apis-front0.test.ts, apis-front2.test.ts).
import t from 'tap';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { Ollama } from 'ollama';
import { mockEmbedding, mockText, mockToolArguments, type MockUpstream, type MockUpstreamOptions } from '../../src/mock-upstream/server.ts';
import { admin, metricValue } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const mock = (opts: MockUpstreamOptions): Promise<MockUpstream> => startMock(t, { tokens: 8, ...opts });
const okOpenai = await mock({});
const okOllama = await mock({});
const native = await mock({});
const reset = await mock({ fail: 'reset', failAfter: 3 });
const toolsOpenai = await mock({ toolCalls: 2 });
const toolsOllama = await mock({ toolCalls: 2 });
const mixedOpenai = await mock({});
const mixedOllama = await mock({});
const floatsOnly = await mock({ embedFloats: true });

const KEY = 'sk-apis-test';
const dep = (id: string, provider: 'openai' | 'ollama', m: MockUpstream, extra: Record<string, unknown> = {}) => ({ id, provider, url: m.url, model: `${id}-upstream`, ...extra });
const fleet = {
  apiKeys: { [KEY]: {} },
  modelGroups: {
    'chat-openai': { deployments: [dep('openai-1', 'openai', okOpenai)] },
    'chat-ollama': { deployments: [dep('ollama-1', 'ollama', okOllama)] },
    'resp-native': { deployments: [dep('native-1', 'openai', native, { responses: true })] },
    'cut-openai': { deployments: [dep('reset-1', 'openai', reset)] },
    'cut-ollama': { deployments: [dep('reset-2', 'ollama', reset)] },
    'cut-native': { deployments: [dep('reset-3', 'openai', reset, { responses: true })] },
    'tools-openai': { deployments: [dep('tools-1', 'openai', toolsOpenai)] },
    'tools-ollama': { deployments: [dep('tools-2', 'ollama', toolsOllama)] },
    strict: { deployments: [dep('strict-1', 'ollama', okOllama)] },
    'embed-mixed': { deployments: [dep('mixed-ollama', 'ollama', mixedOllama), dep('mixed-openai', 'openai', mixedOpenai)] },
    'embed-floats': { deployments: [dep('floats-1', 'openai', floatsOnly)] },
    'embed-ollama-fb': { deployments: [dep('fb-ollama', 'ollama', mixedOllama)], fallbacks: ['chat-ollama'] },
  },
};
const FRONT_THREADS = process.env.FRONT_THREADS ?? '2';
const tb = await startFleetBroker(t, fleet, { FRONT_THREADS, INFER_ENABLED: 'false', AUTH_MODE: 'keys' });
t.equal(tb.broker.planes?.count ?? 0, Number(FRONT_THREADS), `served by ${FRONT_THREADS} data-plane threads`);

// Each client sends the key its own way: Bearer (openai), x-api-key (Anthropic), a header we give (ollama).
const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: KEY, maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: tb.url, apiKey: KEY, maxRetries: 0 });
const ollama = new Ollama({ host: tb.url, headers: { authorization: `Bearer ${KEY}` } });
const TOOLS_OPENAI: Array<{ type: 'function'; function: { name: string; description?: string; parameters: { type: string; properties: Record<string, { type: string }> } } }> = [
  { type: 'function', function: { name: 'get_weather', description: 'weather', parameters: { type: 'object', properties: { city: { type: 'string' } } } } },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
];

t.test('Responses API, not streamed: chat on OpenAI and Ollama deployments, passed through on a responses: true one', async (t) => {
  for (const [model, upstream, path] of [
    ['chat-openai', okOpenai, '/v1/chat/completions'],
    ['chat-ollama', okOllama, '/api/chat'],
    ['resp-native', native, '/v1/responses'],
  ] as const) {
    const { data: r, response } = await openai.responses.create({ model, input: 'Say something.', instructions: 'Be brief.', max_output_tokens: 100 }).withResponse();
    t.equal(r.object, 'response', model);
    t.equal(r.status, 'completed');
    t.equal(r.output_text, mockText(8), `${model}: the SDK's output_text`);
    t.equal(r.usage?.output_tokens, 8);
    t.ok((r.usage?.input_tokens ?? 0) > 0, 'input tokens counted');
    t.equal(response.headers.get('x-broker-deployment'), fleet.modelGroups[model].deployments[0]!.id);
    t.equal(upstream.stats.lastPath, path, `${model}: upstream ${path}`);
    const up = upstream.stats.lastBody as Record<string, any>;
    t.equal(up.model, `${fleet.modelGroups[model].deployments[0]!.id}-upstream`, 'the deployment model name goes upstream');
    if (path === '/v1/chat/completions') {
      t.same(up.messages, [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: 'Say something.' }], 'instructions become the system message');
      t.equal(up.max_tokens, 100, 'max_output_tokens becomes max_tokens');
    } else if (path === '/api/chat') {
      t.equal(up.options.num_predict, 100, 'max_output_tokens becomes num_predict');
      t.equal(up.messages[0].role, 'system');
    } else {
      t.equal(up.instructions, 'Be brief.', 'passed through as the client sent it');
      t.equal(up.max_output_tokens, 100);
    }
  }
  const short = await openai.responses.create({ model: 'chat-ollama', input: [{ role: 'user', content: [{ type: 'input_text', text: 'Hi' }] }], max_output_tokens: 3 });
  t.equal(short.status, 'incomplete', 'cut by max_output_tokens');
  t.same(short.incomplete_details, { reason: 'max_output_tokens' });
  t.equal(short.output_text, mockText(3));
  // Passed through from a Responses upstream (the mock, as OpenAI does): the cut message item says so.
  const cutNative = await openai.responses.create({ model: 'resp-native', input: 'Hi', max_output_tokens: 3 });
  t.equal(cutNative.status, 'incomplete');
  t.match(cutNative.output, [{ type: 'message', status: 'incomplete' }]);
  t.equal(cutNative.output_text, mockText(3));
});

t.test('Responses API, streamed: events in order with usage, every provider', async (t) => {
  for (const model of ['chat-openai', 'chat-ollama', 'resp-native']) {
    const stream = await openai.responses.create({ model, input: 'Say something.', stream: true });
    const types: string[] = [];
    const seqs: number[] = [];
    let text = '';
    let completed: OpenAI.Responses.Response | undefined;
    for await (const ev of stream) {
      types.push(ev.type);
      seqs.push(ev.sequence_number);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed') completed = ev.response;
    }
    t.equal(types[0], 'response.created', model);
    t.equal(types.at(-1), 'response.completed');
    t.ok(types.includes('response.output_item.added') && types.includes('response.output_text.done') && types.includes('response.output_item.done'), 'item events');
    t.same(seqs, seqs.map((_, i) => i), 'sequence numbers count from 0');
    t.equal(text, mockText(8));
    t.equal(completed?.usage?.output_tokens, 8, 'usage on response.completed');
    t.ok((completed?.usage?.input_tokens ?? 0) > 0);
    t.equal((completed?.output[0] as OpenAI.Responses.ResponseOutputMessage).content[0]!.type, 'output_text');
  }
});

t.test('Responses API: a stream cut mid-way ends with response.failed, never response.completed', async (t) => {
  for (const model of ['cut-openai', 'cut-ollama', 'cut-native']) {
    const before = await metricValue(tb.url, 'llm_midstream_errors_total', { group: model });
    const stream = await openai.responses.create({ model, input: 'Say something.', stream: true });
    const events: OpenAI.Responses.ResponseStreamEvent[] = [];
    for await (const ev of stream) events.push(ev);
    const last = events.at(-1)!;
    t.equal(last.type, 'response.failed', model);
    t.equal(events[0]!.type, 'response.created');
    t.notOk(events.some((e) => e.type === 'response.completed'));
    if (last.type === 'response.failed') {
      t.equal(last.response.status, 'failed');
      t.equal(last.response.error?.code, 'upstream_error');
      const sent = events.flatMap((e) => (e.type === 'response.output_text.delta' ? [e.delta] : [])).join('');
      // Translated here or passed through, the failed Response holds what was streamed (an
      // SDK's finalResponse() shows it): passed through, as the upstream's events built it.
      t.match(last.response.output, [{ type: 'message', status: 'incomplete', content: [{ type: 'output_text', text: sent }] }], `${model}: the text so far`);
      t.equal(last.response.output.length, 1);
    }
    t.same(events.map((e) => e.sequence_number), events.map((_, i) => i), 'the failure continues the sequence');
    t.equal(events.filter((e) => e.type === 'response.output_text.delta').length, 3, 'the 3 tokens sent before the cut');
    t.equal(await metricValue(tb.url, 'llm_midstream_errors_total', { group: model }), before + 1, 'counted');
  }
});

t.test('Responses API: bad input is a 400 in OpenAI shape naming the field', async (t) => {
  const err = await openai.responses.create({ model: 'chat-openai', input: 42 as unknown as string }).catch((e: unknown) => e);
  t.ok(err instanceof OpenAI.BadRequestError);
  t.match((err as InstanceType<typeof OpenAI.BadRequestError>).error, { code: 'invalid_request', param: 'input', type: 'invalid_request_error' });
  const stateful = await openai.responses.create({ model: 'chat-openai', input: 'x', previous_response_id: 'resp_1' }).catch((e: unknown) => e);
  t.ok(stateful instanceof OpenAI.BadRequestError, 'previous_response_id needs stored responses: refused');
  const missing = await openai.responses.create({ model: 'nope', input: 'x' }).catch((e: unknown) => e);
  t.ok(missing instanceof OpenAI.NotFoundError);
  // A role chat has no message for (a tool result is a function_call_output item), and a
  // tool_choice that names no function, are refused here rather than passed on to fail upstream.
  const refused: Array<[string, Record<string, unknown>]> = [
    ['input[0].role', { input: [{ role: 'tool', content: 'x' }] }],
    ['tool_choice', { input: 'x', tool_choice: 'bogus' }],
    ['tool_choice.name', { input: 'x', tool_choice: { type: 'function' } }],
    ['tool_choice', { input: 'x', tool_choice: { type: 'file_search' } }],
  ];
  for (const [param, body] of refused) {
    const e = await openai.responses.create({ model: 'chat-openai', tools: [{ type: 'function', name: 'f', parameters: {}, strict: false }], ...body } as never).catch((x: unknown) => x);
    t.ok(e instanceof OpenAI.BadRequestError, `${param}: 400`);
    t.match((e as InstanceType<typeof OpenAI.BadRequestError>).error, { code: 'invalid_request', param }, `${param}: named`);
  }
});

t.test('Messages API, not streamed: system, stop_sequences, max_tokens, both providers', async (t) => {
  for (const [model, upstream] of [
    ['chat-openai', okOpenai],
    ['chat-ollama', okOllama],
  ] as const) {
    const msg = await anthropic.messages.create({
      model,
      max_tokens: 100,
      system: [{ type: 'text', text: 'Be brief.' }],
      stop_sequences: ['END'],
      messages: [{ role: 'user', content: [{ type: 'text', text: 'Say something.' }] }],
    });
    t.equal(msg.type, 'message', model);
    t.equal(msg.role, 'assistant');
    t.same(msg.content, [{ type: 'text', text: mockText(8) }]);
    t.equal(msg.stop_reason, 'end_turn');
    t.equal(msg.usage.output_tokens, 8);
    t.ok(msg.usage.input_tokens > 0);
    const up = upstream.stats.lastBody as Record<string, any>;
    t.same(up.messages[0], { role: 'system', content: 'Be brief.' }, 'system becomes the system message');
    if (model === 'chat-openai') {
      t.same(up.stop, ['END'], 'stop_sequences become stop');
      t.equal(up.max_tokens, 100);
    } else {
      t.same(up.options.stop, ['END']);
      t.equal(up.options.num_predict, 100);
    }
  }
  const short = await anthropic.messages.create({ model: 'chat-openai', max_tokens: 3, messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(short.stop_reason, 'max_tokens');
  t.same(short.content, [{ type: 'text', text: mockText(3) }]);
});

t.test('Messages API structured output (output_config.format, output_format) reaches both providers, top_k Ollama; a bad format is a 400 naming it', async (t) => {
  const schema = { type: 'object', properties: { name: { type: 'string' } }, required: ['name'], additionalProperties: false };
  for (const [model, upstream] of [
    ['chat-openai', okOpenai],
    ['chat-ollama', okOllama],
  ] as const) {
    for (const extra of [{ output_config: { format: { type: 'json_schema', schema } } }, { output_format: { type: 'json_schema', schema } }]) {
      const res = await fetch(`${tb.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', 'anthropic-version': '2023-06-01', 'x-api-key': KEY }, body: JSON.stringify({ model, max_tokens: 50, top_k: 5, messages: [{ role: 'user', content: 'A name?' }], ...extra }) });
      t.equal(res.status, 200, `${model} ${Object.keys(extra)[0]}`);
      const up = upstream.stats.lastBody as Record<string, any>;
      if (model === 'chat-openai') {
        t.same(up.response_format, { type: 'json_schema', json_schema: { name: 'response', schema } }, 'the schema as response_format');
        t.equal(up.top_k, undefined, 'top_k: OpenAI refuses it');
      } else {
        t.same(up.format, schema, "the schema as Ollama's format");
        t.equal(up.options.top_k, 5);
      }
    }
  }
  for (const [format, field] of [
    [{ output_config: { format: { type: 'text' } } }, 'output_config.format.type'],
    [{ output_format: { type: 'json_schema', schema: 'x' } }, 'output_format.schema'],
  ] as const) {
    const res = await fetch(`${tb.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': KEY }, body: JSON.stringify({ model: 'chat-openai', max_tokens: 50, messages: [{ role: 'user', content: 'A name?' }], ...format }) });
    t.equal(res.status, 400);
    t.match(await res.json(), { type: 'error', error: { type: 'invalid_request_error', message: new RegExp(field.replace(/\./g, '\\.')) } });
  }
});

t.test('Messages API, streamed: message_start … message_stop with usage, both providers', async (t) => {
  for (const model of ['chat-openai', 'chat-ollama']) {
    const stream = await anthropic.messages.create({ model, max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'Say something.' }] });
    const types: string[] = [];
    let text = '';
    let delta: Anthropic.MessageDeltaEvent | undefined;
    let started: Anthropic.MessageStartEvent | undefined;
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === 'message_start') started = ev;
      if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') text += ev.delta.text;
      if (ev.type === 'message_delta') delta = ev;
    }
    t.same(
      types,
      ['message_start', 'content_block_start', ...Array(8).fill('content_block_delta'), 'content_block_stop', 'message_delta', 'message_stop'],
      `${model}: the event sequence (ping is skipped by the SDK)`,
    );
    t.equal(text, mockText(8));
    t.equal(delta?.delta.stop_reason, 'end_turn');
    t.equal(delta?.usage.output_tokens, 8, 'usage on message_delta');
    t.ok(started!.message.usage.input_tokens > 0, 'message_start names the prompt (an estimate) before the upstream has, as Anthropic names it');
    // The SDK's own accumulator reads the same stream into a whole Message.
    const final = await anthropic.messages.stream({ model, max_tokens: 100, messages: [{ role: 'user', content: 'Hi' }] }).finalMessage();
    t.same(final.content, [{ type: 'text', text: mockText(8) }]);
    t.equal(final.usage.output_tokens, 8);
  }
  const raw = await fetch(`${tb.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY },
    body: JSON.stringify({ model: 'chat-openai', max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'Hi' }] }),
  });
  t.equal(raw.headers.get('content-type'), 'text/event-stream');
  t.equal(raw.headers.get('cache-control'), 'no-cache');
  t.equal(raw.headers.get('x-accel-buffering'), 'no', 'nginx in front does not buffer the stream');
  const body = await raw.text();
  t.match(body, /^event: message_start\ndata: /, 'named SSE events');
  t.match(body, /event: ping\ndata: \{"type":"ping"\}/, 'a ping after message_start, as Anthropic sends');
});

t.test('Messages API: a stream cut mid-way ends with an error event; the SDK throws', async (t) => {
  for (const model of ['cut-openai', 'cut-ollama']) {
    const stream = await anthropic.messages.create({ model, max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'Hi' }] });
    const types: string[] = [];
    const err = await (async () => {
      for await (const ev of stream) types.push(ev.type);
    })().catch((e: unknown) => e);
    t.ok(err instanceof Anthropic.APIError, `${model}: thrown as an APIError`);
    t.equal((err as InstanceType<typeof Anthropic.APIError>).type, 'api_error');
    t.notOk(types.includes('message_stop'), 'no message_stop');
    t.equal(types.filter((x) => x === 'content_block_delta').length, 3);
  }
  const res = await fetch(`${tb.url}/v1/messages`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-api-key': KEY },
    body: JSON.stringify({ model: 'cut-openai', max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'Hi' }] }),
  });
  const text = await res.text();
  t.match(text, /event: error\ndata: \{"type":"error","error":\{"type":"api_error","message":"[^"]+","code":"upstream_error"\},"request_id":"[^"]+"\}\n\n$/, 'the last event');
});

t.test('Messages API: errors in Anthropic shape', async (t) => {
  const missing = await anthropic.messages.create({ model: 'nope', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] }).catch((e: unknown) => e);
  t.ok(missing instanceof Anthropic.NotFoundError);
  t.match((missing as InstanceType<typeof Anthropic.NotFoundError>).error, { type: 'error', error: { type: 'not_found_error', code: 'model_not_found' } });
  const bad = await anthropic.messages.create({ model: 'chat-openai', max_tokens: 5, messages: [{ role: 'robot' as 'user', content: 'Hi' }] }).catch((e: unknown) => e);
  t.ok(bad instanceof Anthropic.BadRequestError, 'a role Anthropic does not know');
  t.match((bad as InstanceType<typeof Anthropic.BadRequestError>).error, { error: { type: 'invalid_request_error', message: /messages\[0\]\.role/ } });
});

t.test('Messages API: a tool_result with an image (a screenshot tool) and is_error reaches either upstream', async (t) => {
  const png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==';
  const messages: Anthropic.MessageParam[] = [
    { role: 'user', content: 'Take a screenshot.' },
    { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'screenshot', input: {} }] },
    {
      role: 'user',
      content: [
        { type: 'tool_result', tool_use_id: 'toolu_1', is_error: true, content: [{ type: 'text', text: 'partial capture' }, { type: 'image', source: { type: 'base64', media_type: 'image/png', data: png } }] },
      ],
    },
  ];
  const tools: Anthropic.Tool[] = [{ name: 'screenshot', input_schema: { type: 'object', properties: {} } }];
  for (const [model, up] of [['chat-openai', okOpenai], ['chat-ollama', okOllama]] as const) {
    const r = await anthropic.messages.create({ model, max_tokens: 8, messages, tools, tool_choice: { type: 'auto', disable_parallel_tool_use: true } });
    t.equal(r.stop_reason, 'end_turn', `${model}: answered`);
    const sent = up.stats.lastBody as Record<string, any>;
    const tool = sent.messages.find((m: any) => m.role === 'tool');
    t.equal(tool.content, 'Error: partial capture', `${model}: the error flag in the tool's text`);
    const after = sent.messages[sent.messages.indexOf(tool) + 1];
    if (model === 'chat-openai') {
      t.match(after, { role: 'user', content: [{ type: 'image_url', image_url: { url: `data:image/png;base64,${png}` } }] }, 'the image follows in the user turn');
      t.equal(sent.parallel_tool_calls, false, 'disable_parallel_tool_use');
    } else t.same(after.images, [png], 'Ollama: the image on the user turn');
  }
});

t.test('tool_choice none to an Ollama upstream offers no tools; an unserved /v1/messages path answers in Anthropic\'s shape', async (t) => {
  await openai.chat.completions.create({ model: 'chat-ollama', messages: [{ role: 'user', content: 'Hi' }], tools: TOOLS_OPENAI, tool_choice: 'none' });
  t.equal((okOllama.stats.lastBody as Record<string, unknown>).tools, undefined, 'Ollama has no tool_choice: the tools are left out');
  await openai.chat.completions.create({ model: 'chat-ollama', messages: [{ role: 'user', content: 'Hi' }], tools: TOOLS_OPENAI });
  t.ok((okOllama.stats.lastBody as Record<string, unknown>).tools, 'offered otherwise');
  const err = await anthropic.messages.batches.list().catch((e: unknown) => e);
  t.ok(err instanceof Anthropic.NotFoundError);
  t.match((err as InstanceType<typeof Anthropic.NotFoundError>).error, { type: 'error', error: { type: 'not_found_error', code: 'not_found' } });
  t.equal((await anthropic.messages.countTokens({ model: 'chat-openai', messages: [{ role: 'user', content: 'Hi' }] })).input_tokens, 1, 'count_tokens is served');
});

t.test('Messages API: a block the upstream API has no word for is the client\'s 400, never a failure of the deployment', async (t) => {
  // Refused while writing the upstream request, after a deployment was chosen: it must not
  // feed that deployment's breaker (3 such requests opened it: every client got 503).
  const doc = { type: 'document', source: { type: 'base64', media_type: 'application/pdf', data: 'JVBERi0xLjQ=' } } as unknown as Anthropic.TextBlockParam;
  for (let i = 0; i < 4; i++) {
    const err = await anthropic.messages.create({ model: 'strict', max_tokens: 5, messages: [{ role: 'user', content: [doc] }] }).catch((e: unknown) => e);
    t.ok(err instanceof Anthropic.BadRequestError, `request ${i}: 400`);
    t.match((err as InstanceType<typeof Anthropic.BadRequestError>).error, { error: { type: 'invalid_request_error', message: /a PDF, a URL or a file has no form a chat upstream reads/ } });
  }
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'strict', deployment: 'none', reason: 'client_error' }), 4, 'counted as client errors, refused before any upstream call');
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'strict', deployment: 'strict-1' }), 0, 'none under the deployment');
  // Refused for its form before a deployment is chosen: one outcome too, in the group it names.
  for (const bad of [{ messages: 'Hi' }, { messages: [{ role: 'user', content: 'Hi' }], temperature: 'hot' }]) {
    const r = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` }, body: JSON.stringify({ model: 'strict', ...bad }) });
    t.equal(r.status, 400);
  }
  const noMax = await anthropic.messages.create({ model: 'strict', messages: [{ role: 'user', content: 'Hi' }] } as unknown as Anthropic.MessageCreateParamsNonStreaming).catch((e: unknown) => e);
  t.ok(noMax instanceof Anthropic.BadRequestError, 'max_tokens missing');
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'strict', deployment: 'none', reason: 'client_error' }), 7, 'each counted once');
  const ok = await anthropic.messages.create({ model: 'strict', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(ok.stop_reason, 'max_tokens', 'the deployment still serves');
  // The good request's lesson reached the breaker (after the bad ones' on the same connection).
  let view: any;
  for (let i = 0; i < 400; i++) {
    view = await (await fetch(`${tb.url}/api/orchestrator/circuit-breakers/strict-1/strict-1-upstream`, { headers: admin })).json();
    if (view.window.requests >= 1) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  t.equal(view.state, 'closed');
  t.equal(view.window.failures, 0, 'no failure recorded against the deployment');
  t.equal(view.consecutiveFailures, 0);
});

t.test('AUTH_MODE=keys: a request without its key gets 401 in each API\'s own shape', async (t) => {
  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  const messages = [{ role: 'user', content: 'Hi' }];
  const r1 = await post('/v1/responses', { model: 'chat-openai', input: 'Hi' });
  t.equal(r1.status, 401);
  t.match(await r1.json(), { error: { type: 'authentication_error', code: 'unauthorized' } }, 'Responses: OpenAI shape');
  const r2 = await post('/v1/messages', { model: 'chat-openai', max_tokens: 5, messages });
  t.equal(r2.status, 401);
  t.match(await r2.json(), { type: 'error', error: { type: 'authentication_error', code: 'unauthorized' } }, 'Messages: Anthropic shape');
  const r3 = await post('/v1/embeddings', { model: 'chat-openai', input: 'Hi' });
  t.equal(r3.status, 401);
  t.match(await r3.json(), { error: { type: 'authentication_error' } });
  const r4 = await post('/api/embed', { model: 'chat-ollama', input: 'Hi' });
  t.equal(r4.status, 401);
  const b4 = (await r4.json()) as Record<string, unknown>;
  t.equal(typeof b4.error, 'string', 'Ollama shape');
  const wrong = await new Anthropic({ baseURL: tb.url, apiKey: 'sk-wrong', maxRetries: 0 }).messages.create({ model: 'chat-openai', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] }).catch((e: unknown) => e);
  t.ok(wrong instanceof Anthropic.APIError && (wrong.status === 401 || wrong.status === 403), 'an unknown x-api-key is refused');
  t.equal((wrong as InstanceType<typeof Anthropic.APIError>).type, wrong instanceof Anthropic.APIError && wrong.status === 401 ? 'authentication_error' : 'permission_error');
});

t.test('Embeddings: batched, both clients, both providers, order kept', async (t) => {
  const input = ['alpha', 'beta', 'gamma'];
  const want = input.map((s) => mockEmbedding(s));
  for (const [model, upstream, path] of [
    ['chat-openai', okOpenai, '/v1/embeddings'],
    ['chat-ollama', okOllama, '/api/embed'],
  ] as const) {
    // The SDK asks base64 by default and decodes it; the broker encodes when the upstream sent floats.
    const r = await openai.embeddings.create({ model, input });
    t.equal(upstream.stats.lastPath, path, `${model}: upstream ${path}`);
    t.same(r.data.map((d) => d.index), [0, 1, 2], model);
    t.same(r.data.map((d) => d.embedding), want, 'the vectors, in order');
    t.ok(r.usage.prompt_tokens > 0);
    const floats = await openai.embeddings.create({ model, input: 'alpha', encoding_format: 'float' });
    t.same(floats.data[0]!.embedding, want[0]);
    const e = await ollama.embed({ model, input });
    t.same(e.embeddings, want, `ollama client → ${model}`);
    t.ok(e.prompt_eval_count > 0);
    // The legacy call (older clients): one prompt, one vector.
    const legacy = await ollama.embeddings({ model, prompt: 'alpha' });
    t.same(legacy.embedding, want[0], `ollama client embeddings() → ${model}`);
  }
  // Ollama reads a missing prompt as "" (a Go string): its "load the model", answered with no vector.
  const noPrompt = await ollama.embeddings({ model: 'chat-ollama' } as never);
  t.same(noPrompt, { embedding: [] }, 'the legacy call without a prompt is a load, as Ollama answers it');
  t.match((await ollama.version()).version, /^\d+\.\d+\.\d+$/, 'ollama client version()');
  const bad = await openai.embeddings.create({ model: 'chat-openai', input: [] }).catch((e: unknown) => e);
  t.ok(bad instanceof OpenAI.BadRequestError, 'an empty batch is refused');
  t.ok((await metricValue(tb.url, 'llm_requests_total', { group: 'chat-ollama', outcome: 'ok' })) > 0, 'counted as LLM requests');
});

t.test('Embeddings in a group of both providers: each request goes to a deployment that can carry it', async (t) => {
  const wantIds = [mockEmbedding('1 2 3'), mockEmbedding('4 5')];
  const before = await metricValue(tb.url, 'llm_requests_total', { group: 'embed-mixed', outcome: 'client_error' });
  // Token ids reach only an OpenAI upstream: the Ollama deployment is passed over, never a 400 by the draw.
  for (let i = 0; i < 12; i++) {
    const r = await openai.embeddings.create({ model: 'embed-mixed', input: [[1, 2, 3], [4, 5]] }).withResponse();
    t.equal(r.response.headers.get('x-broker-deployment'), 'mixed-openai', `request ${i}: on the OpenAI deployment`);
    t.same(r.data.data.map((d) => d.embedding), wantIds);
  }
  t.equal(mixedOllama.stats.requests['/api/embed'] ?? 0, 0, 'nothing reached the Ollama deployment it cannot go to');
  // An Ollama client's empty string cannot go to an OpenAI upstream: the Ollama deployment takes it.
  for (let i = 0; i < 6; i++) {
    const e = await ollama.embed({ model: 'embed-mixed', input: ['a', ''] });
    t.same(e.embeddings, [mockEmbedding('a'), mockEmbedding('')], `request ${i}`);
  }
  t.equal(mixedOpenai.stats.requests['/v1/embeddings'], 12, 'the OpenAI deployment had only the token ids');
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'embed-mixed', outcome: 'client_error' }), before, 'no refusal counted');
  // The one that can carry it is down (its breaker forced open): that is the answer, 503, not the other's refusal.
  const breaker = `${tb.url}/api/orchestrator/circuit-breakers/mixed-openai/mixed-openai-upstream`;
  t.equal((await fetch(`${breaker}/open`, { method: 'POST', headers: admin })).status, 200);
  const down = await openai.embeddings.create({ model: 'embed-mixed', input: [[1, 2, 3]] }).catch((e: unknown) => e as { status?: number });
  t.equal((down as { status?: number }).status, 503, 'no deployment available');
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'embed-mixed', deployment: 'mixed-ollama', outcome: 'error' }), 0, 'no failure counted under the deployment that was passed over');
  t.equal((await fetch(`${breaker}/reset`, { method: 'POST', headers: admin })).status, 200);
  // A group none of whose deployments can carry it still refuses it, once, as the client's error.
  const refusals = { group: 'chat-openai', deployment: 'none', reason: 'client_error' };
  const refusedBefore = await metricValue(tb.url, 'llm_requests_total', refusals);
  const refused = await ollama.embed({ model: 'chat-openai', input: ['a', ''] }).catch((e: unknown) => e as { status_code?: number; error?: string });
  t.equal((refused as { status_code?: number }).status_code, 400);
  t.match((refused as { error?: string }).error, /input/);
  t.equal(await metricValue(tb.url, 'llm_requests_total', refusals), refusedBefore + 1, 'one refusal, under no deployment');
  // A group with fallbacks: a request none of its deployments can carry is the client's 400, not a
  // failure to fall back on (it was 503 "no deployment available", and 529 on /v1/messages).
  const fb = await openai.embeddings.create({ model: 'embed-ollama-fb', input: [[1, 2]] }).catch((e: unknown) => e);
  t.ok(fb instanceof OpenAI.BadRequestError, `400, got ${String((fb as { status?: number }).status)}`);
  t.match((fb as InstanceType<typeof OpenAI.BadRequestError>).message, /input/);
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'embed-ollama-fb' }), 0, 'no fallback counted');
});

t.test('Embeddings from an OpenAI-compatible upstream that ignores encoding_format: the SDK still gets its vectors', async (t) => {
  const input = ['alpha', 'beta'];
  const want = input.map((s) => mockEmbedding(s));
  // The SDK asks base64 and decodes it: floats passed on as they came read as empty vectors.
  const r = await openai.embeddings.create({ model: 'embed-floats', input });
  t.same(r.data.map((d) => d.embedding), want, 're-encoded as base64 and decoded by the SDK');
  t.same((floatsOnly.stats.lastBody as { encoding_format?: string }).encoding_format, 'base64', 'the client asked for base64');
  const raw = (await (await fetch(`${tb.url}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` }, body: JSON.stringify({ model: 'embed-floats', input, encoding_format: 'base64' }) })).json()) as { data: Array<{ embedding: unknown }> };
  t.ok(raw.data.every((d) => typeof d.embedding === 'string'), 'base64 strings on the wire, as asked');
  const floats = await openai.embeddings.create({ model: 'embed-floats', input, encoding_format: 'float' });
  t.same(floats.data.map((d) => d.embedding), want, 'floats asked, floats passed on');
  const fromOllama = await ollama.embed({ model: 'chat-openai', input: 'alpha' });
  t.ok(fromOllama.total_duration > 0, "a translated reply's total_duration is the time waited (clients divide by it)");
});

/** Tool calls gathered from OpenAI chat chunks by index. */
function gather(chunks: OpenAI.Chat.Completions.ChatCompletionChunk[]): Array<{ id: string; name: string; args: string }> {
  const calls: Array<{ id: string; name: string; args: string }> = [];
  for (const c of chunks) {
    for (const tc of c.choices[0]?.delta.tool_calls ?? []) {
      const slot = (calls[tc.index] ??= { id: '', name: '', args: '' });
      if (tc.id) slot.id = tc.id;
      if (tc.function?.name) slot.name += tc.function.name;
      if (tc.function?.arguments) slot.args += tc.function.arguments;
    }
  }
  return calls;
}

t.test('Tool calls, OpenAI client: streamed with indexed deltas and not, from both providers', async (t) => {
  for (const model of ['tools-openai', 'tools-ollama']) {
    const messages = [{ role: 'user' as const, content: 'Weather and time?' }];
    const whole = await openai.chat.completions.create({ model, messages, tools: TOOLS_OPENAI });
    const m = whole.choices[0]!;
    t.equal(m.finish_reason, 'tool_calls', model);
    t.same(m.message.tool_calls?.map((c) => c.type === 'function' && [c.function.name, c.function.arguments]), [
      ['get_weather', mockToolArguments(0, 8)],
      ['get_time', mockToolArguments(1, 8)],
    ]);
    t.equal(new Set(m.message.tool_calls?.map((c) => c.id)).size, 2, 'distinct ids');
    const chunks = [];
    let finish: string | null | undefined;
    for await (const c of await openai.chat.completions.create({ model, messages, tools: TOOLS_OPENAI, stream: true })) {
      chunks.push(c);
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    const calls = gather(chunks);
    t.same(calls.map((c) => [c.name, c.args]), [
      ['get_weather', mockToolArguments(0, 8)],
      ['get_time', mockToolArguments(1, 8)],
    ], `${model}: streamed calls assemble`);
    t.ok(calls.every((c) => c.id !== ''), 'each call has an id');
    t.equal(finish, 'tool_calls', 'finish_reason tool_calls, not stop');
    t.notOk(chunks.some((c) => (c.choices[0]?.delta.content ?? '') !== ''), 'no call leaks as text');
  }
  const up = toolsOllama.stats.lastBody as Record<string, any>;
  t.same(up.tools, TOOLS_OPENAI, 'tools reach Ollama');
});

t.test('Tool calls, Ollama client: message.tool_calls streamed and not, from both providers', async (t) => {
  const want = [
    { function: { name: 'get_weather', arguments: JSON.parse(mockToolArguments(0, 8)) } },
    { function: { name: 'get_time', arguments: JSON.parse(mockToolArguments(1, 8)) } },
  ];
  for (const model of ['tools-ollama', 'tools-openai']) {
    const messages = [{ role: 'user', content: 'Weather and time?' }];
    const r = await ollama.chat({ model, messages, tools: TOOLS_OPENAI, stream: false });
    t.match(r.message.tool_calls, want, model);
    t.equal(r.done_reason, 'stop');
    const calls = [];
    let done = false;
    for await (const part of await ollama.chat({ model, messages, tools: TOOLS_OPENAI, stream: true })) {
      calls.push(...(part.message.tool_calls ?? []));
      done ||= part.done;
    }
    t.match(calls, want, `${model}: streamed`);
    t.equal(calls.length, 2);
    t.ok(done);
  }
  const up = toolsOpenai.stats.lastBody as Record<string, any>;
  t.same(up.tools, TOOLS_OPENAI, 'tools reach the OpenAI upstream');
});

t.test('a tool call that is not an object is the client\'s 400 naming it, through a translation or not', async (t) => {
  const cases = [
    ['/v1/chat/completions', 'tools-ollama', [null]],
    ['/api/chat', 'tools-openai', [null]],
    ['/v1/chat/completions', 'tools-openai', 'call'],
    ['/api/chat', 'tools-ollama', [{ function: 'get_weather' }]],
  ] as const;
  for (const [path, model, calls] of cases) {
    const res = await fetch(`${tb.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ model, stream: false, messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: '', tool_calls: calls }] }),
    });
    t.equal(res.status, 400, `${path} → ${model}: ${JSON.stringify(calls)}`);
    t.match(JSON.stringify(await res.json()), /messages\[1\]\.tool_calls/);
  }
});

t.test('Tool calls through the Responses and Messages APIs', async (t) => {
  for (const model of ['tools-openai', 'tools-ollama']) {
    const tools = [{ type: 'function' as const, name: 'get_weather', parameters: { type: 'object', properties: {} }, strict: false }];
    const r = await openai.responses.create({ model, input: 'Weather?', tools });
    const fc = r.output.filter((o) => o.type === 'function_call');
    t.same(fc.map((o) => [o.name, o.arguments]), [
      ['get_weather', mockToolArguments(0, 8)],
      ['get_weather', mockToolArguments(1, 8)],
    ], `Responses ← ${model}`);
    let args = '';
    const types: string[] = [];
    for await (const ev of await openai.responses.create({ model, input: 'Weather?', tools, stream: true })) {
      types.push(ev.type);
      if (ev.type === 'response.function_call_arguments.delta' && ev.output_index === 0) args += ev.delta;
    }
    t.equal(args, mockToolArguments(0, 8), 'streamed arguments');
    t.equal(types.at(-1), 'response.completed');
    const msg = await anthropic.messages.create({ model, max_tokens: 100, tools: [{ name: 'get_weather', input_schema: { type: 'object' } }], messages: [{ role: 'user', content: 'Weather?' }] });
    t.equal(msg.stop_reason, 'tool_use', `Messages ← ${model}`);
    t.same(msg.content.map((b) => b.type === 'tool_use' && [b.name, b.input]), [
      ['get_weather', JSON.parse(mockToolArguments(0, 8))],
      ['get_weather', JSON.parse(mockToolArguments(1, 8))],
    ]);
    const final = await anthropic.messages.stream({ model, max_tokens: 100, tools: [{ name: 'get_weather', input_schema: { type: 'object' } }], messages: [{ role: 'user', content: 'Weather?' }] }).finalMessage();
    t.equal(final.stop_reason, 'tool_use');
    t.same(final.content.map((b) => b.type === 'tool_use' && b.input), [JSON.parse(mockToolArguments(0, 8)), JSON.parse(mockToolArguments(1, 8))], 'the SDK parses the streamed input_json_delta');
  }
});

t.test('the request id reaches the SDKs: x-request-id (OpenAI _request_id), request-id on /v1/messages (Anthropic _request_id)', async (t) => {
  const r = await openai.chat.completions.create({ model: 'chat-openai', messages: [{ role: 'user', content: 'Hi' }] }, { headers: { 'x-request-id': 'sdk-openai-1' } });
  t.equal(r._request_id, 'sdk-openai-1');
  const m = await anthropic.messages.create({ model: 'chat-openai', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] }, { headers: { 'x-request-id': 'sdk-anthropic-1' } });
  t.equal(m._request_id, 'sdk-anthropic-1');
  const err = (await anthropic.messages.create({ model: 'no-such-model', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] }, { headers: { 'x-request-id': 'sdk-anthropic-2' } }).catch((e: unknown) => e)) as { requestID?: string; request_id?: string };
  t.equal(err.requestID ?? err.request_id, 'sdk-anthropic-2', 'and on an error the SDK throws');
});

t.test('Messages API: max_tokens and a non-empty messages list are required, as on Anthropic', async (t) => {
  const noMax = (await anthropic.messages.create({ model: 'chat-openai', messages: [{ role: 'user', content: 'Hi' }] } as never).catch((e: unknown) => e)) as { status?: number; error?: { error?: { type?: string; message?: string } } };
  t.equal(noMax.status, 400);
  t.equal(noMax.error?.error?.type, 'invalid_request_error');
  t.match(noMax.error?.error?.message, /max_tokens/);
  const empty = (await anthropic.messages.create({ model: 'chat-openai', max_tokens: 5, messages: [] }).catch((e: unknown) => e)) as { status?: number; error?: { error?: { message?: string } } };
  t.equal(empty.status, 400);
  t.match(empty.error?.error?.message, /messages/);
});
