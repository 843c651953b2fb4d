import t from 'tap';
import { maxTokensFieldOf } from '../../../src/config/broker-config.ts';
import { ollamaErrorShape, openaiErrorShape, streamErrorEvent } from '../../../src/front/error-body.ts';
import { BrokerError } from '../../../src/errors.ts';
import {
  clientStreams,
  translateRequest,
  translateResponse,
  upstreamError,
} from '../../../src/llm/translate/index.ts';
import { upstreamText } from '../../../src/llm/translate/errors.ts';

const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';
const JPEG = '/9j/4AAQSkZJRgABAQ==';

function body(x: { body: string }): Record<string, unknown> {
  return JSON.parse(x.body) as Record<string, unknown>;
}

// ---- requests ----

t.test('OpenAI chat → Ollama /api/chat', async (t) => {
  const r = translateRequest(
    { client: 'openai', provider: 'ollama', kind: 'chat' },
    {
      model: 'my-model',
      messages: [
        { role: 'developer', content: 'be brief' },
        {
          role: 'user',
          content: [
            { type: 'text', text: 'what is this?' },
            { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG}` } },
          ],
        },
        { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
        { role: 'tool', tool_call_id: 'call_1', content: '{"temp":21}' },
      ],
      temperature: 0.2,
      top_p: 0.9,
      max_tokens: 64,
      stop: 'END',
      seed: 7,
      stream: true,
      stream_options: { include_usage: true },
      response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object' } } },
      tools: [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }],
      user: 'u-1',
    },
    'llama3.2:3b',
  );
  t.equal(r.stream, true);
  t.equal(r.includeUsage, true);
  t.same(body(r), {
    model: 'llama3.2:3b',
    messages: [
      { role: 'system', content: 'be brief' },
      { role: 'user', content: 'what is this?', images: [PNG] },
      { role: 'assistant', content: '', tool_calls: [{ id: 'call_1', function: { name: 'get_weather', arguments: { city: 'Paris' } } }] },
      { role: 'tool', content: '{"temp":21}', tool_name: 'get_weather', tool_call_id: 'call_1' },
    ],
    stream: true,
    options: { temperature: 0.2, top_p: 0.9, num_predict: 64, stop: ['END'], seed: 7 },
    format: { type: 'object' },
    tools: [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }],
  });
});

t.test('OpenAI chat → Ollama: non-streaming is said explicitly (Ollama streams by default)', async (t) => {
  const r = translateRequest({ client: 'openai', provider: 'ollama', kind: 'chat' }, { model: 'm', messages: [{ role: 'user', content: 'hi' }] }, 'up');
  t.same(body(r), { model: 'up', messages: [{ role: 'user', content: 'hi' }], stream: false });
  t.equal(r.stream, false);
  t.equal(r.includeUsage, false);
});

t.test("OpenAI chat → Ollama: think passed on; reasoning_effort none is think false, a level leaves the model's default", async (t) => {
  const ask = (extra: Record<string, unknown>, client: 'openai' | 'responses' = 'openai') =>
    body(translateRequest({ client, provider: 'ollama', kind: 'chat' }, client === 'openai' ? { model: 'm', messages: [{ role: 'user', content: 'hi' }], ...extra } : { model: 'm', input: 'hi', ...extra }, 'up'));
  t.equal(ask({ think: true }).think, true);
  t.equal(ask({ reasoning_effort: 'none' }).think, false);
  t.equal(ask({ reasoning: { effort: 'none' } }, 'responses').think, false, 'Responses reasoning.effort none');
  for (const effort of ['minimal', 'low', 'medium', 'high']) t.notOk('think' in ask({ reasoning_effort: effort }), `${effort}: not think`);
  t.notOk('reasoning_effort' in ask({ reasoning_effort: 'none' }), 'Ollama gets no reasoning_effort');
});

t.test('OpenAI → Ollama rejects what Ollama cannot do', async (t) => {
  const route = { client: 'openai', provider: 'ollama', kind: 'chat' } as const;
  t.throws(() => translateRequest(route, { model: 'm', messages: [], n: 2 }, 'up'), { code: 'invalid_request' });
  t.throws(
    () =>
      translateRequest(
        route,
        { model: 'm', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://x/y.png' } }] }] },
        'up',
      ),
    { code: 'invalid_request', message: /data: URL/ },
  );
  t.throws(() => translateRequest(route, { model: 'm' }, 'up'), { code: 'invalid_request', message: 'messages must be an array' });
  t.throws(() => translateRequest(route, [1], 'up'), { code: 'invalid_request' });
});

t.test("OpenAI → Ollama: a tool call's arguments that are not a JSON object, as a model wrote them, go back as text", async (t) => {
  const route = { client: 'openai', provider: 'ollama', kind: 'chat' } as const;
  const call = (args: unknown) => ({ model: 'm', messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: args } }] }, { role: 'tool', tool_call_id: 'c1', content: 'ok' }] });
  const sent = (args: unknown) => (body(translateRequest(route, call(args), 'up')).messages as { tool_calls?: { function: { arguments: unknown } }[] }[])[1]!.tool_calls![0]!.function.arguments;
  t.same(sent('{"a":1}'), { a: 1 });
  t.same(sent('not json'), { arguments: 'not json' }, 'as Messages keeps a tool_use input it cannot parse');
  t.same(sent('[1,2]'), { arguments: '[1,2]' });
  t.throws(() => translateRequest(route, call(42), 'up'), { code: 'invalid_request' });
});

t.test('OpenAI completion → Ollama /api/generate', async (t) => {
  const r = translateRequest(
    { client: 'openai', provider: 'ollama', kind: 'completion' },
    { model: 'm', prompt: ['def gcd(a, b):'], suffix: '    return r', max_completion_tokens: 32, stop: ['\n\n'], stream: true },
    'codellama:code',
  );
  t.same(body(r), { model: 'codellama:code', prompt: 'def gcd(a, b):', stream: true, suffix: '    return r', options: { num_predict: 32, stop: ['\n\n'] } });
  t.throws(() => translateRequest({ client: 'openai', provider: 'ollama', kind: 'completion' }, { model: 'm', prompt: ['a', 'b'] }, 'x'), {
    code: 'invalid_request',
  });
});

t.test('Ollama chat → OpenAI /v1/chat/completions', async (t) => {
  const r = translateRequest(
    { client: 'ollama', provider: 'openai', kind: 'chat' },
    {
      model: 'my-model',
      messages: [
        { role: 'system', content: 'be brief' },
        { role: 'user', content: 'what is in these?', images: [PNG, JPEG] },
        { role: 'assistant', content: '', tool_calls: [{ function: { name: 'get_weather', arguments: { city: 'Paris' } } }] },
        { role: 'tool', content: '{"temp":21}', tool_name: 'get_weather' },
      ],
      options: { temperature: 0, top_p: 0.5, num_predict: 100, stop: ['user:'], seed: 42, num_ctx: 4096, top_k: 20 },
      format: 'json',
      keep_alive: '5m',
    },
    'gpt-4o-mini',
  );
  t.equal(r.stream, true, 'Ollama streams unless stream: false');
  t.same(body(r), {
    model: 'gpt-4o-mini',
    messages: [
      { role: 'system', content: 'be brief' },
      {
        role: 'user',
        content: [
          { type: 'text', text: 'what is in these?' },
          { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG}` } },
          { type: 'image_url', image_url: { url: `data:image/jpeg;base64,${JPEG}` } },
        ],
      },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_2_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
      { role: 'tool', content: '{"temp":21}', tool_call_id: 'call_2_0' },
    ],
    stream: true,
    temperature: 0,
    top_p: 0.5,
    max_tokens: 100,
    stop: ['user:'],
    seed: 42,
    stream_options: { include_usage: true },
    response_format: { type: 'json_object' },
  });
});

t.test('Ollama chat → OpenAI: a history call whose arguments are JSON text, an image given as a data: URL, a web URL refused', async (t) => {
  const r = translateRequest(
    { client: 'ollama', provider: 'openai', kind: 'chat' },
    {
      model: 'm',
      messages: [
        { role: 'user', content: 'look', images: [`data:image/jpeg;base64,${JPEG}`] },
        { role: 'assistant', content: '', tool_calls: [{ function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
        { role: 'tool', content: '{"temp":21}', tool_name: 'get_weather' },
      ],
    },
    'up',
  );
  const messages = body(r)['messages'] as any[];
  t.same(messages[0].content[1], { type: 'image_url', image_url: { url: `data:image/jpeg;base64,${JPEG}` } }, 'the data: URL as it is, not prefixed twice');
  t.equal(messages[1].tool_calls[0].function.arguments, '{"city":"Paris"}', 'the JSON text, not encoded a second time');
  t.throws(
    () => translateRequest({ client: 'ollama', provider: 'openai', kind: 'chat' }, { model: 'm', messages: [{ role: 'user', content: 'x', images: ['https://example.com/cat.png'] }] }, 'up'),
    { code: 'invalid_request', message: /base64/ },
  );
});

t.test('Ollama chat → OpenAI: stream false, num_predict -1, schema format', async (t) => {
  const r = translateRequest(
    { client: 'ollama', provider: 'openai', kind: 'chat' },
    { model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: false, options: { num_predict: -1 }, format: { type: 'object' } },
    'up',
  );
  t.same(body(r), {
    model: 'up',
    messages: [{ role: 'user', content: 'hi' }],
    stream: false,
    response_format: { type: 'json_schema', json_schema: { name: 'response', schema: { type: 'object' } } },
  });
  t.equal(r.stream, false);
});

t.test("Ollama chat → OpenAI: a tool without type is a function (OpenAI requires the field); think's levels are reasoning_effort", async (t) => {
  const ask = (extra: Record<string, unknown>) => body(translateRequest({ client: 'ollama', provider: 'openai', kind: 'chat' }, { model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: false, ...extra }, 'up'));
  const fn = { name: 'f', parameters: { type: 'object' } };
  t.same(ask({ tools: [{ function: fn }, { type: null, function: fn }, { type: 'function', function: fn }] }).tools, [{ type: 'function', function: fn }, { type: 'function', function: fn }, { type: 'function', function: fn }]);
  t.equal(ask({ think: 'high' }).reasoning_effort, 'high');
  for (const think of [true, false]) t.equal(ask({ think }).reasoning_effort, undefined, `think ${think}: the model's default`);
  t.equal(ask({ think: 'xhigh' }).reasoning_effort, 'xhigh', 'a level the upstream knows, or refuses itself');
  for (const think of [5, '', {}]) t.throws(() => ask({ think }), { code: 'invalid_request', details: { field: 'think' } }, `think ${JSON.stringify(think)}`);
});

t.test('Ollama generate → OpenAI /v1/completions', async (t) => {
  const r = translateRequest(
    { client: 'ollama', provider: 'openai', kind: 'completion' },
    { model: 'm', prompt: 'Why is the sky blue?', system: 'Answer in one line.', suffix: '', options: { num_predict: 20, temperature: 0.8 } },
    'gpt-3.5-turbo-instruct',
  );
  // Only a raw or suffix request runs as a completion: `system` is dropped there, as Ollama drops it.
  t.same(body(r), {
    model: 'gpt-3.5-turbo-instruct',
    prompt: 'Why is the sky blue?',
    stream: true,
    temperature: 0.8,
    max_tokens: 20,
    stream_options: { include_usage: true },
  });
  t.throws(() => translateRequest({ client: 'ollama', provider: 'openai', kind: 'completion' }, { model: 'm', prompt: 'x', images: [PNG] }, 'up'), {
    code: 'invalid_request',
  });
  // format, as /api/chat maps it: not dropped.
  const json = body(translateRequest({ client: 'ollama', provider: 'openai', kind: 'completion' }, { model: 'm', prompt: 'x', format: 'json' }, 'up'));
  t.same(json.response_format, { type: 'json_object' });
  const schema = body(translateRequest({ client: 'ollama', provider: 'openai', kind: 'completion' }, { model: 'm', prompt: 'x', format: { type: 'object' } }, 'up'));
  t.same(schema.response_format, { type: 'json_schema', json_schema: { name: 'response', schema: { type: 'object' } } });
});

t.test("Responses → chat: reasoning.effort is chat's reasoning_effort", async (t) => {
  const chat = body(translateRequest({ client: 'responses', provider: 'openai', kind: 'chat' }, { model: 'm', input: 'hi', reasoning: { effort: 'low' } }, 'up'));
  t.equal(chat.reasoning_effort, 'low');
  t.equal(chat.reasoning, undefined);
});

t.test("Responses → chat: the fields chat has too go on (an image's detail, verbosity, cache key, safety id; not the billed tier); Ollama gets none of them", async (t) => {
  const client = { model: 'm', input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'data:image/png;base64,AAAA', detail: 'low' }] }], text: { verbosity: 'low' }, prompt_cache_key: 'k1', safety_identifier: 'u1', service_tier: 'flex' };
  const chat = body(translateRequest({ client: 'responses', provider: 'openai', kind: 'chat' }, client, 'up'));
  t.same((chat as any).messages[0].content, [{ type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA', detail: 'low' } }]);
  t.same([chat.verbosity, chat.prompt_cache_key, chat.safety_identifier, chat.service_tier], ['low', 'k1', 'u1', undefined]);
  const ollama = body(translateRequest({ client: 'responses', provider: 'ollama', kind: 'chat' }, client, 'up'));
  t.same([ollama.verbosity, ollama.prompt_cache_key, ollama.safety_identifier, ollama.service_tier], [undefined, undefined, undefined, undefined]);
  t.same((ollama as any).messages[0].images, ['AAAA']);
});

t.test('Responses → chat: an assistant message and the calls after it are one assistant turn; a call without arguments has {}', async (t) => {
  const route = { client: 'responses', provider: 'openai', kind: 'chat' } as const;
  const input = [
    { type: 'message', role: 'user', content: 'weather in Oslo and Rome?' },
    { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'Checking both.' }] },
    { type: 'function_call', call_id: 'c1', name: 'weather', arguments: '{"city":"Oslo"}' },
    { type: 'function_call', call_id: 'c2', name: 'now', arguments: '' },
    { type: 'function_call_output', call_id: 'c1', output: 'sunny' },
    { type: 'function_call_output', call_id: 'c2', output: '12:00' },
  ];
  const chat = body(translateRequest(route, { model: 'm', input }, 'up'));
  t.same(chat.messages, [
    { role: 'user', content: 'weather in Oslo and Rome?' },
    {
      role: 'assistant',
      content: 'Checking both.',
      tool_calls: [
        { id: 'c1', type: 'function', function: { name: 'weather', arguments: '{"city":"Oslo"}' } },
        { id: 'c2', type: 'function', function: { name: 'now', arguments: '{}' } },
      ],
    },
    { role: 'tool', tool_call_id: 'c1', content: 'sunny' },
    { role: 'tool', tool_call_id: 'c2', content: '12:00' },
  ]);
  t.throws(() => translateRequest(route, { model: 'm', input: 'hi', prompt: { id: 'pmpt_1' } }, 'up'), { code: 'invalid_request', details: { field: 'prompt' } }, 'a stored prompt is refused, not ignored');
});

t.test('OpenAI → OpenAI keeps every field, replaces model, asks usage when streaming', async (t) => {
  const route = { client: 'openai', provider: 'openai', kind: 'chat' } as const;
  const client = { model: 'my-model', messages: [{ role: 'user', content: 'hi' }], stream: true, logprobs: true, tool_choice: 'auto', stream_options: { foo: 1 } };
  const r = translateRequest(route, client, 'gpt-4o-mini');
  t.same(body(r), { ...client, model: 'gpt-4o-mini', stream_options: { foo: 1, include_usage: true } });
  t.equal(r.includeUsage, false, 'the client did not ask for usage itself');
  const plain = translateRequest(route, { model: 'm', messages: [], temperature: 1 }, 'up');
  t.same(body(plain), { model: 'up', messages: [], temperature: 1 }, 'no stream_options without stream');
  const c = translateRequest({ client: 'openai', provider: 'openai', kind: 'completion' }, { model: 'm', prompt: 'x', stream: true, stream_options: { include_usage: true } }, 'up');
  t.equal(c.includeUsage, true);
});

t.test('Ollama → Ollama keeps every field, replaces model', async (t) => {
  const client = { model: 'alias', messages: [{ role: 'user', content: 'hi' }], options: { num_ctx: 8192 }, keep_alive: 0, think: true };
  const r = translateRequest({ client: 'ollama', provider: 'ollama', kind: 'chat' }, client, 'qwen3:8b');
  t.same(body(r), { ...client, model: 'qwen3:8b' });
  t.equal(r.stream, true);
  const g = translateRequest({ client: 'ollama', provider: 'ollama', kind: 'completion' }, { model: 'a', prompt: 'p', stream: false }, 'b');
  t.equal(g.stream, false);
});

t.test('paths and stream defaults', async (t) => {
  t.equal(clientStreams('openai', {}), false);
  t.equal(clientStreams('ollama', {}), true);
  t.equal(clientStreams('ollama', { stream: false }), false);
});

// ---- non-streaming replies ----

const ollamaChatReply = {
  model: 'llama3.2:3b',
  created_at: '2023-12-12T14:13:43.416799Z',
  message: { role: 'assistant', content: 'Hello! How are you today?' },
  done_reason: 'length',
  done: true,
  total_duration: 5191566416,
  load_duration: 2154458,
  prompt_eval_count: 26,
  prompt_eval_duration: 383809000,
  eval_count: 298,
  eval_duration: 4799921000,
};

t.test('Ollama /api/chat reply → chat.completion', async (t) => {
  const r = translateResponse({ client: 'openai', provider: 'ollama', kind: 'chat' }, JSON.stringify(ollamaChatReply), { model: 'my-model', id: 'r1' });
  t.same(JSON.parse(r.body as string), {
    id: 'chatcmpl-r1',
    object: 'chat.completion',
    created: 1702390423,
    model: 'my-model',
    choices: [{ index: 0, message: { role: 'assistant', content: 'Hello! How are you today?' }, logprobs: null, finish_reason: 'length' }],
    usage: { prompt_tokens: 26, completion_tokens: 298, total_tokens: 324 },
  });
  t.same(r.usage, { promptTokens: 26, completionTokens: 298 });
  t.equal(r.finishReason, 'length');
});

t.test('Ollama /api/chat reply with tool calls → finish_reason tool_calls', async (t) => {
  const reply = {
    ...ollamaChatReply,
    done_reason: 'stop',
    message: { role: 'assistant', content: '', tool_calls: [{ function: { name: 'get_current_weather', arguments: { format: 'celsius', location: 'Paris, FR' } } }] },
  };
  const r = translateResponse({ client: 'openai', provider: 'ollama', kind: 'chat' }, Buffer.from(JSON.stringify(reply)), { model: 'm', id: 'r2' });
  const j = JSON.parse(r.body as string);
  t.same(j.choices[0], {
    index: 0,
    message: {
      role: 'assistant',
      content: null,
      tool_calls: [{ id: 'call_r2_0', type: 'function', function: { name: 'get_current_weather', arguments: '{"format":"celsius","location":"Paris, FR"}' } }],
    },
    logprobs: null,
    finish_reason: 'tool_calls',
  });
  t.equal(r.finishReason, 'tool_calls');
});

t.test('Ollama /api/generate reply → text_completion', async (t) => {
  const reply = {
    model: 'llama3.2',
    created_at: '2023-08-04T19:22:45.499127Z',
    response: 'The sky is blue because it is the color of the sky.',
    done: true,
    context: [1, 2, 3],
    total_duration: 5043500667,
    load_duration: 5025959,
    prompt_eval_count: 26,
    prompt_eval_duration: 325953000,
    eval_count: 290,
    eval_duration: 4709213000,
  };
  const r = translateResponse({ client: 'openai', provider: 'ollama', kind: 'completion' }, JSON.stringify(reply), { model: 'my-model', id: 'r3' });
  t.same(JSON.parse(r.body as string), {
    id: 'cmpl-r3',
    object: 'text_completion',
    created: 1691176965,
    model: 'my-model',
    choices: [{ text: reply.response, index: 0, logprobs: null, finish_reason: 'stop' }],
    usage: { prompt_tokens: 26, completion_tokens: 290, total_tokens: 316 },
  });
});

const openaiChatReply = {
  id: 'chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT',
  object: 'chat.completion',
  created: 1741569952,
  model: 'gpt-4.1-2025-04-14',
  choices: [
    {
      index: 0,
      message: { role: 'assistant', content: 'Hello! How can I assist you today?', refusal: null, annotations: [] },
      logprobs: null,
      finish_reason: 'stop',
    },
  ],
  usage: { prompt_tokens: 19, completion_tokens: 10, total_tokens: 29, prompt_tokens_details: { cached_tokens: 0 } },
  service_tier: 'default',
};

t.test('chat.completion → Ollama /api/chat reply', async (t) => {
  // The durations as the broker saw them (a whole reply: 1 ns of prompt, the rest eval), never 0.
  const r = translateResponse({ client: 'ollama', provider: 'openai', kind: 'chat' }, JSON.stringify(openaiChatReply), { model: 'my-model', id: 'r4', elapsedMs: 250 });
  t.same(JSON.parse(r.body as string), {
    model: 'my-model',
    created_at: '2025-03-10T01:25:52.000Z',
    message: { role: 'assistant', content: 'Hello! How can I assist you today?' },
    done_reason: 'stop',
    done: true,
    total_duration: 250_000_000,
    load_duration: 0,
    prompt_eval_count: 19,
    prompt_eval_duration: 1,
    eval_count: 10,
    eval_duration: 249_999_999,
  });
  t.same(r.usage, { promptTokens: 19, completionTokens: 10 });
});

t.test('chat.completion with tool calls → Ollama tool_calls with object arguments', async (t) => {
  const reply = structuredClone(openaiChatReply) as unknown as { choices: Array<Record<string, unknown>> };
  reply.choices[0] = {
    index: 0,
    message: { role: 'assistant', content: null, tool_calls: [{ id: 'call_abc', type: 'function', function: { name: 'f', arguments: '{"x":1}' } }] },
    finish_reason: 'tool_calls',
  };
  const r = translateResponse({ client: 'ollama', provider: 'openai', kind: 'chat' }, JSON.stringify(reply), { model: 'm', id: 'r5' });
  t.same(JSON.parse(r.body as string).message, { role: 'assistant', content: '', tool_calls: [{ id: 'call_abc', function: { name: 'f', arguments: { x: 1 } } }] });
});

t.test('text_completion → Ollama /api/generate reply', async (t) => {
  const reply = {
    id: 'cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7',
    object: 'text_completion',
    created: 1589478378,
    model: 'gpt-3.5-turbo-instruct',
    system_fingerprint: 'fp_44709d6fcb',
    choices: [{ text: '\n\nThis is indeed a test', index: 0, logprobs: null, finish_reason: 'length' }],
    usage: { prompt_tokens: 5, completion_tokens: 7, total_tokens: 12 },
  };
  const r = translateResponse({ client: 'ollama', provider: 'openai', kind: 'completion' }, JSON.stringify(reply), { model: 'my-model', id: 'r6' });
  t.same(JSON.parse(r.body as string), {
    model: 'my-model',
    created_at: '2020-05-14T17:46:18.000Z',
    response: '\n\nThis is indeed a test',
    done: true,
    done_reason: 'length',
    total_duration: 2,
    load_duration: 0,
    prompt_eval_count: 5,
    prompt_eval_duration: 1,
    eval_count: 7,
    eval_duration: 1,
  });
});

t.test('same-API replies are the upstream bytes, only read for usage', async (t) => {
  const bytes = Buffer.from(JSON.stringify(openaiChatReply));
  const r = translateResponse({ client: 'openai', provider: 'openai', kind: 'chat' }, bytes, { model: 'm', id: 'x' });
  t.equal(r.body, bytes, 'same object, not re-serialised');
  t.same(r.usage, { promptTokens: 19, completionTokens: 10 });
  t.equal(r.finishReason, 'stop');
  const text = JSON.stringify(ollamaChatReply);
  const o = translateResponse({ client: 'ollama', provider: 'ollama', kind: 'chat' }, text, { model: 'm', id: 'x' });
  t.equal(o.body, text);
  t.same(o.usage, { promptTokens: 26, completionTokens: 298 });
});

t.test('an error object or non-JSON with a 2xx is an upstream_error', async (t) => {
  const route = { client: 'openai', provider: 'ollama', kind: 'chat' } as const;
  t.throws(() => translateResponse(route, '{"error":"model runner has unexpectedly stopped"}', { model: 'm', id: 'x' }), {
    code: 'upstream_error',
    message: /unexpectedly stopped/,
  });
  t.throws(() => translateResponse(route, '<html>', { model: 'm', id: 'x' }), { code: 'upstream_error' });
});

// ---- errors ----

t.test('BrokerError in the client error shape', async (t) => {
  const err = new BrokerError('rate_limited', 'slow down', { retryAfter: 2 });
  t.same(openaiErrorShape(err.code, err.message, 'req-1', err.status), {
    error: { message: 'slow down', type: 'rate_limit_error', code: 'rate_limited', param: null, request_id: 'req-1' },
  });
  t.same(ollamaErrorShape(err.code, err.message, 'req-1', err.status), { error: 'slow down', code: 'rate_limited', request_id: 'req-1' });
  const types = (['invalid_request', 'unauthorized', 'forbidden', 'model_not_found', 'quota_exceeded', 'internal', 'upstream_unavailable'] as const).map(
    (c) => (openaiErrorShape(c, 'm', 'r', 500) as { error: { type: string } }).error.type,
  );
  t.same(types, ['invalid_request_error', 'authentication_error', 'permission_error', 'invalid_request_error', 'rate_limit_error', 'server_error', 'server_error']);
});

t.test('mid-stream terminal error events', async (t) => {
  t.equal(
    streamErrorEvent('openai', 'upstream timed out', 'upstream_timeout', 'req-9'),
    'data: {"error":{"message":"upstream timed out","type":"server_error","code":"upstream_timeout","param":null,"request_id":"req-9"}}\n\n',
  );
  t.equal(streamErrorEvent('ollama', 'upstream timed out', 'upstream_timeout', 'req-9'), '{"error":"upstream timed out","code":"upstream_timeout","request_id":"req-9"}\n');
});

/** A 500's param stays upstream: nothing of a server error is the client's. */
const boomField = () => upstreamError('openai', 500, '{"error":{"message":"x","param":"secret_field"}}').details?.['field'];

t.test('upstream errors → BrokerError', async (t) => {
  const bad = upstreamError(
    'openai',
    400,
    '{"error":{"message":"This model\'s maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}',
  );
  t.equal(bad.code, 'invalid_request');
  t.match(bad.message, /maximum context length/);
  t.equal(bad.details?.['field'], 'messages', "the upstream's param goes on as the reply's");
  t.equal(boomField(), undefined);
  const missing = upstreamError('ollama', 404, Buffer.from('{"error":"model \\"llama9\\" not found, try pulling it first"}'));
  t.equal(missing.code, 'model_not_found');
  t.equal(missing.message, 'ollama upstream replied 404', "the deployment's 404 (a server_error) stays in details");
  t.match(missing.details?.['upstreamMessage'], /not found, try pulling/);
  t.equal(upstreamError('openai', 404, '<html><body>404 Not Found</body></html>').message, 'openai upstream replied 404', "a proxy's page never reaches the client");
  const boom = upstreamError('openai', 500, '{"error":{"message":"internal secret detail","type":"server_error"}}');
  t.equal(boom.code, 'upstream_error');
  t.equal(boom.message, 'openai upstream replied 500', 'upstream internals stay in details');
  t.equal(boom.details?.['upstreamMessage'], 'internal secret detail');
  t.equal(upstreamError('ollama', 503, 'busy').code, 'upstream_unavailable');
  t.equal(upstreamError('openai', 429, '{}').code, 'capacity_exhausted');
  t.equal(upstreamError('openai', 504, '').code, 'upstream_timeout');
  t.equal(upstreamError('openai', 401, '{"error":{"message":"bad key"}}').code, 'upstream_error');
});

t.test('an upstream message passed on is cut and never carries what the broker sent upstream', async (t) => {
  const echo = upstreamError('openai', 400, JSON.stringify({ error: { message: `bad request; you sent Authorization: Bearer sk-upstream-secret and ${'x'.repeat(2000)}` } }), ['sk-upstream-secret']);
  t.equal(echo.code, 'invalid_request');
  t.notMatch(echo.message, /sk-upstream-secret/);
  t.match(echo.message, /Bearer \[redacted\]/);
  t.ok(echo.message.length <= 500, `cut (${echo.message.length})`);
  t.notMatch(JSON.stringify(echo.details), /sk-upstream-secret/, 'nor in the details that reach the log');
  // Masked before the cut: a key across the 500th character left its start in the message before.
  const key = 'sk-DEPLOYSECRET-xyz';
  const padded = upstreamError('openai', 400, JSON.stringify({ error: { message: 'x'.repeat(485) + `Bearer ${key}`, param: `p ${key}` } }), [key]);
  t.notMatch(padded.message, /sk-DEPLO/, `no start of the key: ${padded.message.slice(-30)}`);
  t.notMatch(String(padded.details?.['field']), /sk-DEPLO/, "nor in the upstream's param");
  // A message the upstream cut itself, ending in the key's start.
  t.equal(upstreamText('y'.repeat(496) + 'sk-DEPLOYSE' + 'z'.repeat(10), [key]), 'y'.repeat(496) + '[redacted]');
  // A 200 whose body is an error object.
  t.throws(() => translateResponse({ client: 'openai', provider: 'openai', kind: 'chat' }, JSON.stringify({ error: { message: `echo ${key}` } }), { model: 'm', id: 'x', secrets: [key] }), { code: 'upstream_error', message: /echo \[redacted\]/ });
});

t.test("an OpenAI upstream's usage details reach Responses and Messages clients: cached and reasoning tokens", async (t) => {
  const reply = {
    id: 'c1',
    object: 'chat.completion',
    created: 1,
    model: 'up',
    choices: [{ index: 0, message: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15, prompt_tokens_details: { cached_tokens: 4 }, completion_tokens_details: { reasoning_tokens: 2 } },
  };
  const responses = JSON.parse(String(translateResponse({ client: 'responses', provider: 'openai', kind: 'chat' }, JSON.stringify(reply), { model: 'g', id: 'r1', request: { model: 'g', input: 'x' } }).body));
  t.same(responses.usage.input_tokens_details, { cached_tokens: 4 });
  t.same(responses.usage.output_tokens_details, { reasoning_tokens: 2 });
  const messages = JSON.parse(String(translateResponse({ client: 'anthropic', provider: 'openai', kind: 'chat' }, JSON.stringify(reply), { model: 'g', id: 'r2', request: { model: 'g', max_tokens: 8, messages: [] } }).body));
  t.match(messages.usage, { input_tokens: 6, cache_read_input_tokens: 4, output_tokens: 5 }, "Anthropic's input_tokens leave out the cache reads");
});

t.test("an OpenAI model's refusal reaches Responses and Messages clients as its text, whole and streamed", async (t) => {
  const { deltaFromOpenAI } = await import('../../../src/llm/translate/deltas.ts');
  const reply = { id: 'c1', object: 'chat.completion', created: 1, model: 'up', choices: [{ index: 0, message: { role: 'assistant', content: null, refusal: "I can't help with that." }, finish_reason: 'stop' }], usage: { prompt_tokens: 3, completion_tokens: 6, total_tokens: 9 } };
  const responses = JSON.parse(String(translateResponse({ client: 'responses', provider: 'openai', kind: 'chat' }, JSON.stringify(reply), { model: 'g', id: 'r1', request: { model: 'g', input: 'x' } }).body));
  t.equal(responses.output[0].content[0].text, "I can't help with that.");
  const messages = JSON.parse(String(translateResponse({ client: 'anthropic', provider: 'openai', kind: 'chat' }, JSON.stringify(reply), { model: 'g', id: 'r2', request: { model: 'g', max_tokens: 8, messages: [] } }).body));
  t.equal(messages.content[0].text, "I can't help with that.");
  const chunk = { id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'up', choices: [{ index: 0, delta: { refusal: "I can't" }, finish_reason: null }] };
  t.equal(deltaFromOpenAI(chunk as never).text, "I can't");
});

t.test("an OpenAI model's refusal reaches an Ollama client as its content, whole and streamed", async (t) => {
  const { ndjsonWriter, chatChunk } = await import('../../../src/llm/translate/ollama_to_openai.ts');
  const reply = { id: 'c1', object: 'chat.completion', created: 1, model: 'up', choices: [{ index: 0, message: { role: 'assistant', content: null, refusal: "I can't help with that." }, finish_reason: 'stop' }], usage: { prompt_tokens: 3, completion_tokens: 6, total_tokens: 9 } };
  const ollama = JSON.parse(String(translateResponse({ client: 'ollama', provider: 'openai', kind: 'chat' }, JSON.stringify(reply), { model: 'g', id: 'r3', request: { model: 'g', messages: [] } }).body));
  t.equal(ollama.message.content, "I can't help with that.");
  const w = ndjsonWriter({ model: 'g', id: 'r4', request: {} } as never);
  const line = chatChunk(w, { id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'up', choices: [{ index: 0, delta: { refusal: "I can't" }, finish_reason: null }] } as never);
  t.equal(JSON.parse(line).message.content, "I can't", 'a streamed refusal is a content line');
});

t.test('n > 1 upstream: a chunk carrying only choice 1 adds nothing to the one-choice APIs (Responses, Messages, Ollama)', async (t) => {
  const { deltaFromOpenAI, replyFromOpenAI } = await import('../../../src/llm/translate/deltas.ts');
  const { ndjsonWriter, chatChunk } = await import('../../../src/llm/translate/ollama_to_openai.ts');
  const chunk = (index: number, content: string) => ({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'up', choices: [{ index, delta: { content }, finish_reason: null }] });
  t.equal(deltaFromOpenAI(chunk(0, 'A0') as never).text, 'A0');
  t.equal(deltaFromOpenAI(chunk(1, 'B1') as never).text, '', "choice 1's text is not choice 0's");
  const w = ndjsonWriter({ model: 'g', id: 'r', request: {} } as never);
  t.equal(chatChunk(w, chunk(1, 'B1') as never), '', 'no Ollama line for choice 1');
  t.equal(JSON.parse(chatChunk(w, chunk(0, 'A1') as never)).message.content, 'A1');
  // A whole reply whose choices come out of order: choice 0 is still the reply.
  const whole = { id: 'c', object: 'chat.completion', created: 1, model: 'up', choices: [{ index: 1, message: { role: 'assistant', content: 'B' }, finish_reason: 'stop' }, { index: 0, message: { role: 'assistant', content: 'A' }, finish_reason: 'stop' }] };
  t.equal(replyFromOpenAI(whole as never).text, 'A');
});

t.test('a chat request without messages names the field (param "messages" in the OpenAI error)', async (t) => {
  for (const [client, provider] of [['openai', 'openai'], ['openai', 'ollama'], ['ollama', 'ollama'], ['ollama', 'openai']] as const) {
    t.throws(() => translateRequest({ client, provider, kind: 'chat' }, { model: 'g' }, 'up'), { code: 'invalid_request', details: { field: 'messages' } }, `${client} → ${provider}`);
  }
});

t.test('a connection cut mid-stream is one message whatever undici calls it (UND_ERR_SOCKET, ECONNRESET)', async (t) => {
  const { describeBodyError } = await import('../../../src/llm/exec/run.ts');
  const cut = (code: string) => describeBodyError(Object.assign(new Error('other side closed'), { code }));
  t.same(cut('UND_ERR_SOCKET'), cut('ECONNRESET'));
  t.same(cut('ECONNRESET'), { code: 'upstream_error', message: 'upstream closed the connection mid-stream' });
  t.match(cut('EHOSTUNREACH').message, /EHOSTUNREACH/, 'other failures keep their code');
});

t.test("the output limit goes in the one field the upstream reads: max_completion_tokens for OpenAI's hosts, max_tokens for the rest", async (t) => {
  t.equal(maxTokensFieldOf('auto', 'https://api.openai.com/v1'), 'max_completion_tokens', "OpenAI's reasoning models refuse max_tokens");
  t.equal(maxTokensFieldOf('auto', 'https://my-res.openai.azure.com/openai'), 'max_completion_tokens', 'Azure OpenAI too');
  t.equal(maxTokensFieldOf('auto', 'http://127.0.0.1:8000/v1'), 'max_tokens', 'vLLM, llama.cpp and the like: the field every one of them reads');
  t.equal(maxTokensFieldOf('max_completion_tokens', 'http://127.0.0.1:8000'), 'max_completion_tokens', 'set by the operator');
  const sent = (route: Parameters<typeof translateRequest>[0], body: unknown, field: 'max_tokens' | 'max_completion_tokens') => JSON.parse(translateRequest(route, body, 'up', 'client', field).body) as Record<string, unknown>;
  const anthropic = { client: 'anthropic', provider: 'openai', kind: 'chat' } as const;
  const claude = { model: 'm', max_tokens: 300, messages: [{ role: 'user', content: 'hi' }] };
  const toOpenai = sent(anthropic, claude, 'max_completion_tokens');
  t.equal(toOpenai['max_completion_tokens'], 300, "an Anthropic client's max_tokens to OpenAI");
  t.notOk('max_tokens' in toOpenai, 'and never both');
  t.equal(sent(anthropic, claude, 'max_tokens')['max_tokens'], 300, 'to a local server as max_tokens');
  const responses = sent({ client: 'responses', provider: 'openai', kind: 'chat' }, { model: 'm', input: 'hi', max_output_tokens: 50 }, 'max_completion_tokens');
  t.equal(responses['max_completion_tokens'], 50, "a Responses client's max_output_tokens to OpenAI");
  const openai = { client: 'openai', provider: 'openai', kind: 'chat' } as const;
  const local = sent(openai, { model: 'm', max_completion_tokens: 64, messages: [{ role: 'user', content: 'hi' }] }, 'max_tokens');
  t.same([local['max_tokens'], 'max_completion_tokens' in local], [64, false], "a client's max_completion_tokens to a server that reads max_tokens (llamafile ignores the other: unbounded)");
  const both = sent(openai, { model: 'm', max_tokens: 10, max_completion_tokens: 64, messages: [{ role: 'user', content: 'hi' }] }, 'max_completion_tokens');
  t.same([both['max_completion_tokens'], 'max_tokens' in both], [64, false], 'both given: max_completion_tokens, as OpenAI and vLLM read them');
  const bothLocal = sent(openai, { model: 'm', max_tokens: 64, max_completion_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }, 'max_tokens');
  t.same([bothLocal['max_tokens'], 'max_completion_tokens' in bothLocal], [10, false], 'in max_tokens too: the limit the client meant is not loosened');
  t.equal(maxTokensFieldOf('auto', 'https://x.cognitiveservices.azure.com'), 'max_completion_tokens', "Azure's newer hosts");
  const legacy = sent({ client: 'openai', provider: 'openai', kind: 'completion' }, { model: 'm', prompt: 'hi', max_tokens: 7 }, 'max_completion_tokens');
  t.equal(legacy['max_tokens'], 7, 'legacy completions have max_tokens only');
});

// Ollama 0.12.10+ names the call a tool result answers: two calls of one tool answered in another
// order were paired by name and position, and the results swapped.
t.test('Ollama chat → OpenAI: a tool result pairs with its call by tool_call_id when it names one', async (t) => {
  const r = translateRequest(
    { client: 'ollama', provider: 'openai', kind: 'chat' },
    {
      model: 'm',
      stream: false,
      messages: [
        { role: 'user', content: 'two lookups' },
        { role: 'assistant', content: '', tool_calls: [{ id: 'call_X', function: { name: 'lookup', arguments: { q: 'x' } } }, { id: 'call_Y', function: { name: 'lookup', arguments: { q: 'y' } } }] },
        { role: 'tool', content: 'result-for-Y', tool_name: 'lookup', tool_call_id: 'call_Y' },
        { role: 'tool', content: 'result-for-X', tool_name: 'lookup', tool_call_id: 'call_X' },
      ],
    },
    'up',
  );
  const msgs = body(r).messages as { content: unknown; tool_call_id?: string }[];
  t.same(msgs.slice(2).map((m) => [m.content, m.tool_call_id]), [['result-for-Y', 'call_Y'], ['result-for-X', 'call_X']]);
});
