// What the Responses, Messages and Ollama clients get matches what their vendors (and
// docs/llm.md) promise, on edges a probe found: a malformed event in a passed-through
// Responses stream, tool-call arguments that are not a JSON object, every part of the
// prompt counted, required fields checked, empty replies, the route errors' shape.
// The upstream is a scripted HTTP server: each test says what it answers.
import t from 'tap';
import type { ServerResponse } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { admin, startTestBroker, postJson } from '../helpers/broker.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';

// ---- the scripted upstream ----

const up = await startScriptedUpstream();
t.teardown(() => up.close());

function sse(res: ServerResponse, blocks: string[], end = true): void {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  for (const b of blocks) res.write(b);
  // A cut: the connection reset once the client has read what came before.
  if (end) res.end();
  else setTimeout(() => res.destroy(), 100);
}

const responsesEvent = (type: string, fields: Record<string, unknown>, seq: number): string => `event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: seq, ...fields })}\n\n`;

interface Call {
  id: string;
  name: string;
  /** Argument fragments as the upstream streams them. */
  args: string[];
}

/** An OpenAI chat upstream's reply, whole or streamed as the request asks. */
function chatReply(body: any, res: ServerResponse, content: string, calls: Call[] = []): void {
  const finish = calls.length > 0 ? 'tool_calls' : 'stop';
  const usage = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };
  if (body.stream !== true) {
    const tool_calls = calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.args.join('') } }));
    const message = { role: 'assistant', content: calls.length > 0 && content === '' ? null : content, ...(calls.length > 0 ? { tool_calls } : {}) };
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id: 'c1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message, finish_reason: finish }], usage }));
    return;
  }
  const chunk = (delta: unknown, finishReason: string | null = null): string =>
    `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finishReason }] })}\n\n`;
  const blocks = [chunk({ role: 'assistant', content: '' })];
  if (content !== '') blocks.push(chunk({ content }));
  calls.forEach((c, index) => {
    c.args.forEach((a, i) => blocks.push(chunk({ tool_calls: [i === 0 ? { index, id: c.id, type: 'function', function: { name: c.name, arguments: a } } : { index, function: { arguments: a } }] })));
  });
  blocks.push(chunk({}, finish), `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage })}\n\n`, 'data: [DONE]\n\n');
  sse(res, blocks);
}

function ollamaReply(body: any, res: ServerResponse, content: string): void {
  res.writeHead(200, { 'content-type': body.stream === false ? 'application/json' : 'application/x-ndjson' });
  res.end(JSON.stringify({ model: 'm', created_at: '2024-01-01T00:00:00Z', message: { role: 'assistant', content }, done: true, done_reason: 'stop', prompt_eval_count: 3, eval_count: 2 }) + '\n');
}

/** An Ollama thinking model's reply: `thinking` lines before the text, or message.thinking in a whole reply. */
const THINKING = ['The user ', 'greets me.'];
function ollamaThinking(b: any, res: ServerResponse): void {
  const line = (message: Record<string, unknown>, done = false) =>
    JSON.stringify({ model: 'm', created_at: '2024-01-01T00:00:00Z', message: { role: 'assistant', content: '', ...message }, done, ...(done ? { done_reason: 'stop', prompt_eval_count: 3, eval_count: 4 } : {}) }) + '\n';
  if (b.stream === false) {
    res.writeHead(200, { 'content-type': 'application/json' });
    return void res.end(line({ thinking: THINKING.join(''), content: 'Hello!' }, true));
  }
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  res.end(THINKING.map((th) => line({ thinking: th })).join('') + line({ content: 'Hello' }) + line({ content: '!' }) + line({}, true));
}

// ---- the broker ----

const dir = mkdtempSync(join(tmpdir(), 'eb-fidelity-'));
writeFileSync(
  join(dir, 'broker.yaml'),
  stringify({
    modelGroups: {
      oa: { deployments: [{ id: 'oa-1', provider: 'openai', url: up.url, model: 'm' }] },
      ol: { deployments: [{ id: 'ol-1', provider: 'ollama', url: up.url, model: 'm' }] },
      rp: { deployments: [{ id: 'rp-1', provider: 'openai', url: up.url, model: 'm', responses: true }] },
      oc: { deployments: [{ id: 'oc-1', provider: 'openai', url: up.url, model: 'm' }], cache: 'on' },
    },
  }),
);
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false', LLM_MAX_MESSAGES: '50', LLM_MAX_PROMPT_CHARS: '1000' });
t.teardown(() => tb.close());
const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'x', maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: tb.url, apiKey: 'x', maxRetries: 0 });

/** The data of each SSE event, parsed. */
async function events(res: Response): Promise<any[]> {
  return [...(await res.text()).matchAll(/^data: (.+)$/gm)].map((m) => JSON.parse(m[1]!));
}

const post = (path: string, body: unknown): Promise<Response> => fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

// ---- 1, 4: passed-through Responses streams ----

t.test('passed-through Responses stream: one malformed event is dropped and the stream goes on', async (t) => {
  up.handler = (_p, _b, res) => {
    const created = { id: 'resp_up_1', object: 'response', status: 'in_progress', model: 'up-model', output: [] };
    sse(res, [
      responsesEvent('response.created', { response: created }, 0),
      'data: upstream hiccup\n\n',
      responsesEvent('response.output_text.delta', { item_id: 'msg_1', output_index: 0, content_index: 0, delta: 'Hi' }, 1),
      responsesEvent('response.completed', { response: { ...created, status: 'completed', usage: { input_tokens: 1, output_tokens: 1, total_tokens: 2 } } }, 2),
    ]);
  };
  const evs = await events(await post('/v1/responses', { model: 'rp', input: 'Hi', stream: true }));
  t.same(evs.map((e) => e.type), ['response.created', 'response.output_text.delta', 'response.completed'], 'the garbage is not forwarded, nothing fails');
});

t.test("passed-through Responses stream cut mid-way: response.failed names the upstream's response and model", async (t) => {
  const call = { type: 'function_call', id: 'fc_1', call_id: 'call_1', name: 'f', arguments: '', status: 'in_progress' };
  const msg = { type: 'message', id: 'msg_1', role: 'assistant', status: 'in_progress', content: [] };
  up.handler = (_p, _b, res) => {
    const created = { id: 'resp_up_2', object: 'response', created_at: 1700000000, status: 'in_progress', model: 'up-model', instructions: 'Be terse.', output: [] };
    sse(res, [
      responsesEvent('response.created', { response: created }, 0),
      responsesEvent('response.output_item.added', { output_index: 0, item: call }, 1),
      responsesEvent('response.function_call_arguments.delta', { item_id: 'fc_1', output_index: 0, delta: '{"a":' }, 2),
      responsesEvent('response.function_call_arguments.delta', { item_id: 'fc_1', output_index: 0, delta: '1}' }, 3),
      responsesEvent('response.output_item.done', { output_index: 0, item: { ...call, arguments: '{"a":1}', status: 'completed' } }, 4),
      responsesEvent('response.output_item.added', { output_index: 1, item: msg }, 5),
      responsesEvent('response.content_part.added', { item_id: 'msg_1', output_index: 1, content_index: 0, part: { type: 'output_text', text: '', annotations: [] } }, 6),
      responsesEvent('response.output_text.delta', { item_id: 'msg_1', output_index: 1, content_index: 0, delta: 'Hi' }, 7),
      responsesEvent('response.output_text.delta', { item_id: 'msg_1', output_index: 1, content_index: 0, delta: ' there' }, 8),
    ], false);
  };
  const evs = await events(await post('/v1/responses', { model: 'rp', input: 'Hi', stream: true }));
  const failed = evs.at(-1);
  t.equal(failed.type, 'response.failed');
  t.match(failed.response, { id: 'resp_up_2', model: 'up-model', created_at: 1700000000, status: 'failed', instructions: 'Be terse.', error: { code: 'upstream_error' } });
  t.same(failed.response.output, [
    { ...call, arguments: '{"a":1}', status: 'completed' },
    { ...msg, status: 'incomplete', content: [{ type: 'output_text', text: 'Hi there', annotations: [] }] },
  ], "the upstream's output so far, the open item incomplete");
  t.equal(failed.sequence_number, 9, 'the sequence runs on from the upstream');
});

// ---- 2: tool-call arguments that are not a JSON object, streamed to a Messages client ----

t.test('Messages: streamed tool input always adds up to the same object as a whole reply', async (t) => {
  const tools = [{ name: 'f1', input_schema: { type: 'object' as const } }];
  const body = { model: 'oa', max_tokens: 50, messages: [{ role: 'user' as const, content: 'x' }], tools };
  const cases: Array<[string, string[], unknown]> = [
    ['broken JSON', ['{bad', ' json'], { arguments: '{bad json' }],
    ['an array', ['[1,', '2]'], { arguments: '[1,2]' }],
    ['an object in fragments', ['{"city"', ':"Paris"}'], { city: 'Paris' }],
  ];
  for (const [label, args, input] of cases) {
    up.handler = (_p, b, res) => chatReply(b, res, '', [{ id: 'call_A', name: 'f1', args }, { id: 'call_B', name: 'f1', args }]);
    const whole = await anthropic.messages.create(body);
    t.same(whole.content.map((c) => c.type === 'tool_use' && c.input), [input, input], `${label}: whole`);
    const stream = anthropic.messages.stream(body);
    const final = await stream.finalMessage();
    t.same(final.content.map((c) => c.type === 'tool_use' && c.input), [input, input], `${label}: streamed, the SDK parses it (the first call and a later one)`);
  }
});

// ---- 3: every part of the prompt counts ----

t.test('Responses: function_call_output and function_call arguments count against LLM_MAX_PROMPT_CHARS; limit errors name input', async (t) => {
  up.handler = (_p, b, res) => chatReply(b, res, 'ok');
  const before = up.seen.length;
  const output = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: [{ type: 'function_call_output', call_id: 'c', output: 'a'.repeat(1001) }] });
  t.equal(output.status, 400);
  t.match(output.body.error, { code: 'invalid_request', param: 'input', message: /LLM_MAX_PROMPT_CHARS/ });
  const args = await postJson(`${tb.url}/v1/responses`, { model: 'rp', input: [{ type: 'function_call', call_id: 'c', name: 'f', arguments: JSON.stringify({ a: 'b'.repeat(1001) }) }] });
  t.equal(args.status, 400);
  t.match(args.body.error, { param: 'input', message: /LLM_MAX_PROMPT_CHARS/ });
  const text = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: 'x'.repeat(1001) });
  t.match(text.body.error, { param: 'input', message: /LLM_MAX_PROMPT_CHARS/ }, 'an input string too');
  const many = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: Array.from({ length: 51 }, () => ({ role: 'user', content: 'x' })) });
  t.match(many.body.error, { param: 'input', message: /LLM_MAX_MESSAGES/ });
  t.equal(up.seen.length, before, 'nothing reached the upstream');
});

t.test('Messages: a user turn of tool_result blocks counts as the messages it becomes (LLM_MAX_MESSAGES)', async (t) => {
  up.handler = (_p, b, res) => chatReply(b, res, 'ok');
  const turn = (n: number) => [{ role: 'user', content: Array.from({ length: n }, (_, i) => ({ type: 'tool_result', tool_use_id: `t${i}`, content: 'x' })) }];
  const few = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false', LLM_MAX_MESSAGES: '3' });
  t.teardown(() => few.close());
  const before = up.seen.length;
  const many = await postJson(`${few.url}/v1/messages`, { model: 'oa', max_tokens: 5, messages: turn(4) });
  t.equal(many.status, 400);
  t.match(many.body, { type: 'error', error: { type: 'invalid_request_error', message: /^messages has 4 messages; at most 3 \(LLM_MAX_MESSAGES\)/ } });
  const mixed = [{ role: 'user', content: [...turn(3)[0]!.content, { type: 'text', text: 'and?' }] }];
  t.match((await postJson(`${few.url}/v1/messages`, { model: 'oa', max_tokens: 5, messages: mixed })).body, { error: { message: /has 4 messages/ } }, 'three results and a text: four');
  t.equal(up.seen.length, before, 'nothing reached the upstream');
  const fits = await postJson(`${few.url}/v1/messages`, { model: 'oa', max_tokens: 5, messages: turn(3) });
  t.equal(fits.status, 200, 'three tool results are three messages');
});

// ---- 5: function_call_output as content parts ----

t.test('Responses: a function_call_output given as content parts reaches the upstream as its text', async (t) => {
  const input = [
    { type: 'function_call', call_id: 'c', name: 'f', arguments: '{}' },
    { type: 'function_call_output', call_id: 'c', output: [{ type: 'input_text', text: 'sunny, ' }, { type: 'input_text', text: '20C' }] },
  ];
  for (const model of ['oa', 'ol']) {
    up.handler = (_p, b, res) => (model === 'oa' ? chatReply(b, res, 'ok') : ollamaReply(b, res, 'ok'));
    const r = await postJson(`${tb.url}/v1/responses`, { model, input });
    t.equal(r.status, 200, model);
    const tool = up.seen.at(-1)!.body.messages.find((m: any) => m.role === 'tool');
    t.equal(tool.content, 'sunny, \n20C', `${model}: the tool message's text, one part a line (as Messages' blocks)`);
  }
  // A message's text parts too: one a line, not run together ("Helloworld").
  up.handler = (_p, b, res) => chatReply(b, res, 'ok');
  const parts = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: [{ role: 'user', content: [{ type: 'input_text', text: 'Hello' }, { type: 'input_text', text: 'world' }] }] });
  t.equal(parts.status, 200);
  t.equal(up.seen.at(-1)!.body.messages.at(-1).content, 'Hello\nworld');
  // Images follow as a user message (translate-fidelity-responses.test.ts); a file has no chat form.
  const file = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: [input[0], { ...input[1], output: [{ type: 'input_file', file_id: 'file-1' }] }] });
  t.equal(file.status, 400, 'a file part is refused, not sent as JSON text');
  t.match(file.body.error, { param: 'input[1].output[0]' });
});

// ---- 6: required fields and types ----

t.test('required fields and sampling types: 400 in the client API shape, naming the field, nothing forwarded', async (t) => {
  up.handler = (_p, b, res) => chatReply(b, res, 'ok');
  const before = up.seen.length;
  const responses: Array<[unknown, string]> = [
    [{ model: 'oa', input: [{ type: 'function_call_output', output: 'x' }] }, 'input[0].call_id'],
    [{ model: 'rp', input: [{ type: 'function_call_output', output: 'x' }] }, 'input[0].call_id'],
    [{ model: 'oa', input: [{ type: 'function_call', call_id: 'c', arguments: '{}' }] }, 'input[0].name'],
    [{ model: 'oa', input: [{ type: 'function_call_output', call_id: 'c' }] }, 'input[0].output'],
    [{ model: 'oa', input: 'x', temperature: 'hot' }, 'temperature'],
    [{ model: 'rp', input: 'x', top_p: '1' }, 'top_p'],
    [{ model: 'oa', input: [] }, 'input'],
    [{ model: 'oa', input: [], instructions: 'Be brief.' }, 'input'],
    [{ model: 5, input: 'x' }, 'model'],
  ];
  for (const [body, param] of responses) {
    const r = await postJson(`${tb.url}/v1/responses`, body);
    t.equal(r.status, 400, param);
    t.match(r.body.error, { code: 'invalid_request', type: 'invalid_request_error', param, message: new RegExp(`^${param.replace(/[[\].]/g, '\\$&')} `) });
  }
  const messages: Array<[unknown, string]> = [
    [{ model: 'oa', max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'tool_result', content: 'r' }] }] }, 'messages[0].content[0].tool_use_id'],
    [{ model: 'oa', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], temperature: 'hot' }, 'temperature'],
  ];
  for (const [body, field] of messages) {
    const r = await postJson(`${tb.url}/v1/messages`, body);
    t.equal(r.status, 400, field);
    t.match(r.body, { type: 'error', error: { type: 'invalid_request_error', code: 'invalid_request', message: new RegExp(`^${field.replace(/[[\].]/g, '\\$&')} `) } });
  }
  const chat = await postJson(`${tb.url}/v1/chat/completions`, { model: 'oa', messages: [{ role: 'user', content: 'x' }], temperature: 'hot' });
  t.match(chat.body.error, { param: 'temperature' }, 'chat completions too');
  t.equal(up.seen.length, before, 'nothing reached the upstream');
  const err: any = await openai.responses.create({ model: 'oa', input: [{ type: 'function_call_output', output: 'x' } as any] }).catch((e: unknown) => e);
  t.match({ status: err.status, param: err.param }, { status: 400, param: 'input[0].call_id' }, 'the SDK reads it');
});

// ---- 7: an empty reply, streamed and not ----

t.test('an empty reply is the same streamed and not: one empty text (Responses message item, Messages text block)', async (t) => {
  up.handler = (_p, b, res) => chatReply(b, res, '');
  const whole = await openai.responses.create({ model: 'oa', input: 'Hi' });
  const shape = (output: any[]) => output.map((o) => [o.type, o.content.map((c: any) => [c.type, c.text])]);
  t.same(shape(whole.output), [['message', [['output_text', '']]]], 'Responses, whole');
  const evs = await events(await post('/v1/responses', { model: 'oa', input: 'Hi', stream: true }));
  t.same(shape(evs.at(-1).response.output), shape(whole.output), 'Responses, streamed: response.completed');
  t.same(
    evs.map((e) => e.type),
    ['response.created', 'response.in_progress', 'response.output_item.added', 'response.content_part.added', 'response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'response.completed'],
    'the message item opens and closes',
  );
  t.same(evs.map((e) => e.sequence_number), evs.map((_, i) => i));
  const body = { model: 'oa', max_tokens: 5, messages: [{ role: 'user' as const, content: 'Hi' }] };
  const msg = await anthropic.messages.create(body);
  t.same(msg.content, [{ type: 'text', text: '' }], 'Messages, whole');
  const final = await anthropic.messages.stream(body).finalMessage();
  t.same(final.content.map((c) => c.type === 'text' && c.text), [''], 'Messages, streamed: one empty text block');
});

t.test("Responses: a chat upstream's reasoning is a reasoning item with its text as the summary, whole and streamed, read by the openai SDK's stream helper", async (t) => {
  const thinking = THINKING;
  const ollama = ollamaThinking;
  // OpenAI-compatible (vLLM, DeepSeek): reasoning_content.
  const openaiStyle = (b: any, res: ServerResponse) => {
    const usage = { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 };
    if (b.stream !== true) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify({ id: 'c1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'Hello!', reasoning_content: thinking.join('') }, finish_reason: 'stop' }], usage }));
    }
    const chunk = (delta: unknown, finish: string | null = null) => `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
    sse(res, [chunk({ role: 'assistant', content: '' }), ...thinking.map((th) => chunk({ reasoning_content: th })), chunk({ content: 'Hello' }), chunk({ content: '!' }), chunk({}, 'stop'), `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage })}\n\n`, 'data: [DONE]\n\n']);
  };
  const shape = (output: any[]) => output.map((o) => (o.type === 'reasoning' ? ['reasoning', o.summary.map((p: any) => [p.type, p.text])] : [o.type, o.content.map((c: any) => c.text)]));
  const expected = [['reasoning', [['summary_text', 'The user greets me.']]], ['message', ['Hello!']]];
  for (const [model, reply] of [['ol', ollama], ['oa', openaiStyle]] as const) {
    up.handler = (_p, b, res) => reply(b, res);
    const whole = await openai.responses.create({ model, input: 'Hi', reasoning: { summary: 'auto' } });
    t.same(shape(whole.output), expected, `${model}: whole`);
    t.equal(whole.output_text, 'Hello!', `${model}: output_text is the answer only`);
    // The SDK's stream helper accumulates every event into the Response: a reasoning event out of
    // its order (a summary delta before its part was added) would throw here.
    const stream = openai.responses.stream({ model, input: 'Hi', reasoning: { summary: 'auto' } });
    const deltas: string[] = [];
    stream.on('response.reasoning_summary_text.delta', (e) => deltas.push(e.delta));
    const final = await stream.finalResponse();
    t.same(shape(final.output), expected, `${model}: streamed, as the SDK accumulated it`);
    t.same(deltas, thinking, `${model}: one summary delta per reasoning chunk`);
    const evs = await events(await post('/v1/responses', { model, input: 'Hi', stream: true }));
    t.same(
      evs.map((e) => e.type).slice(0, 9),
      ['response.created', 'response.in_progress', 'response.output_item.added', 'response.reasoning_summary_part.added', 'response.reasoning_summary_text.delta', 'response.reasoning_summary_text.delta', 'response.reasoning_summary_text.done', 'response.reasoning_summary_part.done', 'response.output_item.done'],
      `${model}: the reasoning item opens, streams and closes before the message item opens`,
    );
    t.same(shape(evs.at(-1).response.output), expected, `${model}: response.completed lists both items`);
    // The next turn sends the output back, reasoning item included (as agents do): accepted, the reasoning not passed on.
    const before = up.seen.length;
    const next = await openai.responses.create({ model, input: [{ role: 'user', content: 'Hi' }, ...(whole.output as any[]), { role: 'user', content: 'And?' }] });
    t.equal(next.status, 'completed', `${model}: a later turn with the reasoning item`);
    t.same(up.seen[before]!.body.messages.map((m: any) => m.role), ['user', 'assistant', 'user'], `${model}: the turns as chat`);
    t.same(evs.map((e) => e.output_index ?? null).filter((i) => i !== null).at(-1), 1, `${model}: the message is output 1`);
    t.same(evs.map((e) => e.sequence_number), evs.map((_, i) => i));
  }
});

t.test("Messages: reasoning is a thinking block when the request asks for thinking, dropped when not; disabled is Ollama's think: false", async (t) => {
  const thinking = THINKING;
  up.handler = (_p, b, res) => ollamaThinking(b, res);
  const body = { model: 'ol', max_tokens: 2048, messages: [{ role: 'user' as const, content: 'Hi' }] };
  const shape = (content: any[]) => content.map((c) => (c.type === 'thinking' ? ['thinking', c.thinking, c.signature] : [c.type, c.text]));
  const asked = [['thinking', 'The user greets me.', ''], ['text', 'Hello!']];
  for (const type of ['enabled', 'adaptive'] as const) {
    const cfg = type === 'enabled' ? { type, budget_tokens: 1024 } : { type };
    const before = up.seen.length;
    const whole = await anthropic.messages.create({ ...body, thinking: cfg } as any);
    t.notOk('think' in up.seen[before]!.body, `${type}: Ollama keeps its model's default (think: true is refused by a model that cannot think)`);
    t.same(shape(whole.content), asked, `${type}: whole`);
    const s = anthropic.messages.stream({ ...body, thinking: cfg } as any);
    const deltas: string[] = [];
    s.on('thinking', (d) => deltas.push(d));
    t.same(shape((await s.finalMessage()).content), asked, `${type}: streamed, as the SDK accumulated it`);
    t.same(deltas, thinking, `${type}: one thinking_delta per reasoning chunk`);
  }
  const evs = await events(await post('/v1/messages', { ...body, stream: true, thinking: { type: 'enabled', budget_tokens: 1024 } }));
  t.same(
    evs.filter((e) => e.type.startsWith('content_block')).map((e) => [e.type, e.index, e.content_block?.type ?? e.delta?.type ?? null]),
    [
      ['content_block_start', 0, 'thinking'],
      ['content_block_delta', 0, 'thinking_delta'],
      ['content_block_delta', 0, 'thinking_delta'],
      ['content_block_stop', 0, null],
      ['content_block_start', 1, 'text'],
      ['content_block_delta', 1, 'text_delta'],
      ['content_block_delta', 1, 'text_delta'],
      ['content_block_stop', 1, null],
    ],
    'the thinking block is closed before the text block opens',
  );
  // The next turn sends the thinking block back (as Claude Code does): accepted, not passed on.
  const prior = await anthropic.messages.create({ ...body, thinking: { type: 'enabled', budget_tokens: 1024 } });
  const nextTurn = await anthropic.messages.create({ ...body, messages: [...body.messages, { role: 'assistant', content: prior.content as any }, { role: 'user', content: 'And?' }] });
  t.equal(nextTurn.type, 'message', 'a later turn with the thinking block');
  t.same(up.seen.at(-1)!.body.messages.map((m: any) => [m.role, m.content]), [['user', 'Hi'], ['assistant', 'Hello!'], ['user', 'And?']], 'the thinking block is not in the chat turns');
  // Not asked (or disabled): no thinking block, as Anthropic's; disabled tells Ollama not to think.
  const before = up.seen.length;
  t.same(shape((await anthropic.messages.create(body)).content), [['text', 'Hello!']], 'not asked: whole');
  t.notOk('think' in up.seen[before]!.body, 'not asked: Ollama keeps its default');
  t.same(shape((await anthropic.messages.stream(body).finalMessage()).content), [['text', 'Hello!']], 'not asked: streamed');
  await anthropic.messages.create({ ...body, thinking: { type: 'disabled' } });
  t.equal(up.seen.at(-1)!.body.think, false, 'disabled: Ollama is told not to think');
  // An OpenAI-compatible upstream gets no such field.
  up.handler = (_p, b, res) => chatReply(b, res, 'ok');
  await anthropic.messages.create({ ...body, model: 'oa', thinking: { type: 'enabled', budget_tokens: 1024 } } as any);
  t.notOk('think' in up.seen.at(-1)!.body, 'OpenAI-compatible: no think field');
  // Cut while the model thought: the thinking block alone, no empty text after it (as Anthropic's), streamed and whole.
  up.handler = (_p, b, res) => {
    const line = (message: Record<string, unknown>, done = false) =>
      JSON.stringify({ model: 'm', created_at: '2024-01-01T00:00:00Z', message: { role: 'assistant', content: '', ...message }, done, ...(done ? { done_reason: 'length', prompt_eval_count: 3, eval_count: 2 } : {}) }) + '\n';
    res.writeHead(200, { 'content-type': b.stream === false ? 'application/json' : 'application/x-ndjson' });
    res.end(b.stream === false ? line({ thinking: 'Let me' }, true) : line({ thinking: 'Let me' }) + line({}, true));
  };
  const cutBody = { ...body, thinking: { type: 'enabled' as const, budget_tokens: 1024 } };
  const cutWhole = await anthropic.messages.create(cutBody);
  t.same([shape(cutWhole.content), cutWhole.stop_reason], [[['thinking', 'Let me', '']], 'max_tokens'], 'cut while thinking: whole');
  const cutStreamed = await anthropic.messages.stream(cutBody).finalMessage();
  t.same([shape(cutStreamed.content), cutStreamed.stop_reason], [[['thinking', 'Let me', '']], 'max_tokens'], 'cut while thinking: streamed');
  const bad = await post('/v1/messages', { ...body, thinking: { type: 'sometimes' } });
  t.equal(bad.status, 400);
  t.match(await bad.json(), { type: 'error', error: { type: 'invalid_request_error', message: /thinking\.type/ } });
});

t.test("Responses: a developer item is chat's system to the upstream; the Response says reasoning and user as OpenAI's; Messages usage always has its cache fields", async (t) => {
  up.handler = (_p, b, res) => chatReply(b, res, 'ok');
  const before = up.seen.length;
  const r = await openai.responses.create({ model: 'oa', input: [{ role: 'developer', content: 'Answer in French.' }, { role: 'user', content: 'Hi' }], user: 'u-7' });
  t.same(up.seen[before]!.body.messages.map((m: any) => m.role), ['system', 'user'], 'developer → system');
  t.same(r.reasoning, { effort: null, summary: null }, 'reasoning, unused');
  t.equal(r.user, 'u-7');
  const withEffort = await openai.responses.create({ model: 'oa', input: 'Hi', reasoning: { effort: 'low' } });
  t.same(withEffort.reasoning, { effort: 'low', summary: null }, 'reasoning, as asked, both fields');
  t.equal(withEffort.user, null, 'user, not given');
  const body = { model: 'oa', max_tokens: 5, messages: [{ role: 'user' as const, content: 'Hi' }] };
  const msg = await anthropic.messages.create(body);
  t.same(msg.usage, { input_tokens: 3, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, output_tokens: 2 }, 'a whole Message');
  const evs = await events(await post('/v1/messages', { ...body, stream: true }));
  t.match(evs[0].message.usage, { cache_creation_input_tokens: 0, cache_read_input_tokens: 0 }, 'message_start');
  t.match(evs.find((e) => e.type === 'message_delta').usage, { input_tokens: 3, cache_creation_input_tokens: 0, cache_read_input_tokens: 0, output_tokens: 2 }, 'message_delta');
});

t.test("Anthropic's SDK lists and retrieves models in Anthropic's shape; OpenAI's still gets its own", async (t) => {
  const page = await anthropic.models.list();
  t.same(page.data.map((m) => [m.type, m.id, m.display_name]).sort(), [['model', 'oa', 'oa'], ['model', 'oc', 'oc'], ['model', 'ol', 'ol'], ['model', 'rp', 'rp']]);
  t.equal((await anthropic.models.retrieve('ol')).type, 'model');
  const missing: any = await anthropic.models.retrieve('nope').catch((e: unknown) => e);
  t.equal(missing.status, 404);
  t.match(missing.error, { type: 'error', error: { type: 'not_found_error' } }, "Anthropic's error shape");
  t.ok(missing.requestID, 'with its request-id header');
  t.same((await openai.models.list()).data.map((m) => m.object), ['model', 'model', 'model', 'model'], 'OpenAI clients: unchanged');
});

// ---- 8: errors on /v1/messages paths ----

t.test('GET /v1/messages and /v1/messages/batches: Anthropic error shape and request-id', async (t) => {
  const get = await fetch(`${tb.url}/v1/messages`, { headers: { 'x-request-id': 'fid-1' } });
  t.equal(get.status, 405);
  t.match(await get.json(), { type: 'error', error: { type: 'invalid_request_error' }, request_id: 'fid-1' });
  t.equal(get.headers.get('request-id'), 'fid-1');
  const batches = await fetch(`${tb.url}/v1/messages/batches`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': 'fid-2' }, body: '{}' });
  t.equal(batches.status, 404);
  t.equal(batches.headers.get('request-id'), 'fid-2');
  t.match(await batches.json(), { type: 'error', error: { type: 'not_found_error' } });
});

t.test("count_tokens (Claude Code asks it every turn): the broker's estimate, as its window checks count; nothing sent upstream", async (t) => {
  const before = up.seen.length;
  const tools = [{ name: 'Bash', description: 'Run a command', input_schema: { type: 'object' as const, properties: { command: { type: 'string' } } } }];
  const base = { model: 'oa', messages: [{ role: 'user' as const, content: 'x'.repeat(40) }] };
  const plain = await anthropic.messages.countTokens(base);
  t.equal(plain.input_tokens, 10, '40 characters: 10 tokens');
  const more = await anthropic.messages.countTokens({ ...base, system: [{ type: 'text', text: 'y'.repeat(40), cache_control: { type: 'ephemeral' } }], tools });
  t.ok(more.input_tokens > 20, `the system blocks and the tools count too (${more.input_tokens})`);
  // Claude Code calls the beta path with ?beta=true.
  const beta = await anthropic.beta.messages.countTokens({ ...base, betas: ['token-counting-2024-11-01'] });
  t.equal(beta.input_tokens, 10, 'the beta client, ?beta=true');
  const image = { type: 'image' as const, source: { type: 'base64' as const, media_type: 'image/png' as const, data: 'A'.repeat(300_000) } };
  const shot = await anthropic.messages.countTokens({ model: 'oa', messages: [{ role: 'user', content: [image] }] });
  t.ok(shot.input_tokens >= 1024 && shot.input_tokens < 1100, `an image is about 1,024 tokens, not its base64 (${shot.input_tokens})`);
  t.equal(up.seen.length, before, 'no upstream call');
  const missing: any = await anthropic.messages.countTokens({ model: 'nope', messages: base.messages }, { headers: { 'x-request-id': 'fid-3' } }).catch((e: unknown) => e);
  t.equal(missing.status, 404);
  t.match(missing.error, { type: 'error', error: { type: 'not_found_error' } });
  t.equal(missing.requestID ?? missing.request_id, 'fid-3', "the SDK's request id");
  const bad: any = await anthropic.messages.countTokens({ model: 'oa', messages: [] }).catch((e: unknown) => e);
  t.equal(bad.status, 400);
  t.match(bad.error, { type: 'error', error: { type: 'invalid_request_error', message: /messages/ } });
});

t.test("Responses: input_tokens counts as count_tokens does; an unknown stored response is 404 (test/llm/stored-responses.test.ts has the store)", async (t) => {
  const before = up.seen.length;
  const n = await openai.responses.inputTokens.count({ model: 'oa', input: 'x'.repeat(40) });
  t.equal(n.input_tokens, 10);
  t.equal((n as any).object, 'response.input_tokens');
  const withInstructions = await openai.responses.inputTokens.count({ model: 'oa', input: 'x'.repeat(40), instructions: 'y'.repeat(40) });
  t.equal(withInstructions.input_tokens, 20, 'instructions count');
  t.equal(up.seen.length, before, 'no upstream call');
  const missing: any = await openai.responses.inputTokens.count({ model: 'nope', input: 'x' }).catch((e: unknown) => e);
  t.equal(missing.status, 404);
  t.equal(missing.code, 'model_not_found');
  for (const call of [() => openai.responses.retrieve('resp_1'), () => openai.responses.delete('resp_1'), () => openai.responses.cancel('resp_1'), () => openai.responses.inputItems.list('resp_1')]) {
    const err: any = await call().then(() => undefined, (e: unknown) => e);
    t.equal(err?.status, 404);
    t.match(err?.message, /Response with id 'resp_1' not found/, 'says which');
  }
  const compact: any = await fetch(`${tb.url}/v1/responses/compact`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
  t.equal(compact.status, 404);
  t.match((await compact.json()).error.message, /not served here/);
});

t.test("OpenAI's paths the broker does not serve, and a wrong method on its routes: OpenAI's error types", async (t) => {
  const err: any = await openai.fineTuning.jobs.retrieve('ft-1').catch((e: unknown) => e);
  t.equal(err.status, 404);
  t.equal(err.type, 'invalid_request_error', 'fine-tuning jobs: 404 typed as OpenAI types it');
  t.equal(err.code, 'not_found');
  const get = await fetch(`${tb.url}/v1/chat/completions`);
  t.equal(get.status, 405);
  t.match(await get.json(), { error: { type: 'invalid_request_error', code: 'method_not_allowed' } });
  const infer = await fetch(`${tb.url}/v1/infer/nothing`);
  t.match(await infer.json(), { error: { type: 'not_found', code: 'not_found' } }, "the broker's own /v1/infer keeps its shape");
});

// ---- 9: Ollama mid-stream errors carry the code ----

t.test('Ollama stream cut mid-way: the error line carries code (and the request id)', async (t) => {
  up.handler = (_p, _b, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    // A clean end without the done line: the broker reports the truncation.
    res.end(JSON.stringify({ model: 'm', created_at: '2024-01-01T00:00:00Z', message: { role: 'assistant', content: 'a' }, done: false }) + '\n');
  };
  const res = await fetch(`${tb.url}/api/chat`, { method: 'POST', headers: { 'x-request-id': 'fid-9' }, body: JSON.stringify({ model: 'ol', messages: [{ role: 'user', content: 'x' }] }) });
  const lines = (await res.text()).trim().split('\n').map((l) => JSON.parse(l));
  t.match(lines.at(-1), { error: /ended before/, code: 'upstream_error', request_id: 'fid-9' });
});

t.test("Ollama's think: false on an OpenAI-compatible upstream: its reasoning is not passed on, streamed or whole; left out, it is", async (t) => {
  up.handler = (_p, b, res) => {
    const usage = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };
    if (b.stream !== true) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: 'c1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'Hi', reasoning_content: 'hm' }, finish_reason: 'stop' }], usage }));
      return;
    }
    const chunk = (delta: unknown, finish: string | null = null) => `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
    sse(res, [chunk({ role: 'assistant', content: '' }), chunk({ reasoning_content: 'hm' }), chunk({ content: 'Hi' }), chunk({}, 'stop'), 'data: [DONE]\n\n']);
  };
  const lines = async (body: Record<string, unknown>) => (await (await post('/api/chat', { model: 'oa', messages: [{ role: 'user', content: 'x' }], ...body })).text()).trim().split('\n').map((l) => JSON.parse(l));
  const thoughts = (ls: any[]) => ls.map((l) => l.message?.thinking ?? '').join('');
  for (const stream of [true, false]) {
    t.equal(thoughts(await lines({ stream })), 'hm', `think left out: the reasoning (stream ${stream})`);
    const off = await lines({ stream, think: false });
    t.equal(thoughts(off), '', `think: false: none (stream ${stream})`);
    t.equal(off.map((l) => l.message?.content ?? '').join(''), 'Hi', `and the answer whole (stream ${stream})`);
  }
  const gen = (await (await post('/api/generate', { model: 'oa', prompt: 'x', think: false })).text()).trim().split('\n').map((l) => JSON.parse(l));
  t.equal(gen.map((l) => l.thinking ?? '').join(''), '', '/api/generate too');
  t.equal(gen.map((l) => l.response ?? '').join(''), 'Hi');
});

t.test("an unknown model on Ollama's routes: 404 in Ollama's words (clients look for \"not found\")", async (t) => {
  for (const [path, body] of [['/api/chat', { messages: [{ role: 'user', content: 'x' }] }], ['/api/generate', { prompt: 'x' }], ['/api/embed', { input: 'x' }]] as const) {
    const res = await post(path, { model: 'nope', ...body });
    t.equal(res.status, 404, path);
    t.match(await res.json(), { error: 'model "nope" not found, try pulling it first' }, path);
  }
  const openai = await post('/v1/chat/completions', { model: 'nope', messages: [{ role: 'user', content: 'x' }] });
  t.match(((await openai.json()) as any).error.message, /model nope is not served here/, "OpenAI's route keeps its own");
});

t.test("Responses: Codex's custom apply_patch tool served by chat upstreams (OpenAI-compatible and Ollama): a function of one string upstream, a custom_tool_call to the SDK, whole and streamed", async (t) => {
  const PATCH = '*** Begin Patch\n*** Update File: a.ts\n@@\n-x\n+y "q"\n*** End Patch\n';
  const args = JSON.stringify({ input: PATCH });
  const seen: any[] = [];
  up.handler = (_p, b: any, res) => {
    seen.push(b);
    if (b.messages === undefined || Array.isArray(b.tools) === false) return chatReply(b, res, 'no tools?');
    if (_p.startsWith('/api/chat')) {
      // Ollama: a call comes whole, its arguments an object.
      const line = (message: Record<string, unknown>, done = false) =>
        JSON.stringify({ model: 'm', created_at: '2024-01-01T00:00:00Z', message: { role: 'assistant', content: '', ...message }, done, ...(done ? { done_reason: 'stop', prompt_eval_count: 3, eval_count: 4 } : {}) }) + '\n';
      res.writeHead(200, { 'content-type': b.stream === false ? 'application/json' : 'application/x-ndjson' });
      const call = { function: { name: 'apply_patch', arguments: { input: PATCH } } };
      return void res.end(b.stream === false ? line({ tool_calls: [call] }, true) : line({ tool_calls: [call] }) + line({}, true));
    }
    chatReply(b, res, '', [{ id: 'call_p', name: 'apply_patch', args: [args.slice(0, 9), args.slice(9, 30), args.slice(30)] }]);
  };
  const tools: any[] = [{ type: 'custom', name: 'apply_patch', description: 'Edit files.', format: { type: 'grammar', syntax: 'lark', definition: 'start: begin_patch hunk+ end_patch' } }];
  for (const model of ['oa', 'ol']) {
    seen.length = 0;
    const whole = await openai.responses.create({ model, input: 'fix it', tools });
    const sent = seen[0];
    const fn = sent.tools[0].function;
    t.match(fn, { name: 'apply_patch', parameters: { required: ['input'], properties: { input: { type: 'string' } } } }, `${model}: a function of one string argument upstream`);
    t.match(whole.output, [{ type: 'custom_tool_call', name: 'apply_patch', input: PATCH, status: 'completed' }], `${model}: whole`);
    const stream = openai.responses.stream({ model, input: 'fix it', tools });
    const types: string[] = [];
    let streamedInput = '';
    for await (const e of stream) {
      types.push(e.type);
      if (e.type === 'response.custom_tool_call_input.delta') streamedInput += e.delta;
    }
    const final = await stream.finalResponse();
    t.match(final.output, [{ type: 'custom_tool_call', name: 'apply_patch', input: PATCH }], `${model}: the SDK's final Response`);
    t.equal(streamedInput, PATCH, `${model}: the input deltas add up`);
    t.ok(types.includes('response.custom_tool_call_input.done') && !types.some((x) => x.startsWith('response.function_call_arguments')), `${model}: custom-tool events only`);
    // The next turn, as Codex sends it: the call and its output go back as the function call it was.
    seen.length = 0;
    await openai.responses.create({ model, input: [{ role: 'user', content: 'fix it' }, ...(final.output as any[]), { type: 'custom_tool_call_output', call_id: (final.output[0] as any).call_id, output: 'Done!' }], tools });
    const history = seen[0].messages;
    const call = history[1].tool_calls[0].function;
    t.equal(call.name, 'apply_patch', `${model}: the earlier call goes back by name`);
    t.same(typeof call.arguments === 'string' ? JSON.parse(call.arguments) : call.arguments, { input: PATCH }, `${model}: with the input it had`);
    t.match(history[2], { role: 'tool', content: 'Done!' });
  }
});

t.test("an Ollama model's thinking to an OpenAI chat client: reasoning_content and reasoning (Ollama's own /v1, the Agents SDK's chat model), whole and streamed", async (t) => {
  up.handler = (_p, b, res) => ollamaThinking(b, res);
  const whole = await openai.chat.completions.create({ model: 'ol', messages: [{ role: 'user', content: 'Hi' }] });
  t.match(whole.choices[0]!.message, { content: 'Hello!', reasoning_content: THINKING.join(''), reasoning: THINKING.join('') });
  const stream = await openai.chat.completions.create({ model: 'ol', messages: [{ role: 'user', content: 'Hi' }], stream: true });
  let viaContent = '';
  let viaReasoning = '';
  for await (const c of stream) {
    const d = c.choices[0]?.delta as any;
    viaContent += d?.reasoning_content ?? '';
    viaReasoning += d?.reasoning ?? '';
  }
  t.equal(viaContent, THINKING.join(''));
  t.equal(viaReasoning, THINKING.join(''));
});

t.test('/api/version says an Ollama release with the Responses API: codex --oss refuses one before 0.13.4', async (t) => {
  const { version } = (await (await fetch(`${tb.url}/api/version`)).json()) as any;
  const [major, minor, patch] = version.split('.').map(Number);
  t.ok(major > 0 || minor > 13 || (minor === 13 && patch >= 4), `version ${version}`);
});

t.test("Responses: Codex's client-run tool_search through the broker, whole and streamed: a tool_search_call the SDK reads; the found tools offered on the next turn", async (t) => {
  const seenBodies: any[] = [];
  up.handler = (_p, b, res) => {
    seenBodies.push(b);
    chatReply(b, res, '', [{ id: 'call_s', name: 'tool_search', args: ['{"query":', '"notes"}'] }]);
  };
  const tools: any[] = [{ type: 'tool_search', execution: 'client', description: 'Find tools.', parameters: { type: 'object', properties: { query: { type: 'string' } } } }];
  const whole = await openai.responses.create({ model: 'oa', input: 'note it', tools });
  t.match(whole.output, [{ type: 'tool_search_call', call_id: 'call_s', arguments: { query: 'notes' } }]);
  const final = await openai.responses.stream({ model: 'oa', input: 'note it', tools }).finalResponse();
  t.match(final.output, [{ type: 'tool_search_call', call_id: 'call_s', arguments: { query: 'notes' } }]);
  seenBodies.length = 0;
  const found = { type: 'namespace', name: 'mcp__notes__', description: 'Notes', tools: [{ type: 'function', name: 'write_note', parameters: { type: 'object' } }] };
  await openai.responses.create({ model: 'oa', input: [{ role: 'user', content: 'note it' }, ...(final.output as any[]), { type: 'tool_search_output', call_id: 'call_s', execution: 'client', tools: [found] } as any], tools });
  t.same(seenBodies[0].tools.map((x: any) => x.function.name), ['tool_search', 'mcp__notes__write_note']);
});

t.test("vLLM's and SGLang's finish_reason abort (the server cut the generation): a failure for a translated client, as an OpenAI client's own word, and never cached", async (t) => {
  let calls = 0;
  up.handler = (_p, b, res) => {
    calls++;
    const chunk = (delta: unknown, finish: string | null = null): string => `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
    if (b.stream !== true) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify({ id: 'c1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'Hel' }, finish_reason: 'abort' }], usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 } }));
    }
    sse(res, [chunk({ role: 'assistant', content: '' }), chunk({ content: 'Hel' }), chunk({}, 'abort'), 'data: [DONE]\n\n']);
  };
  const body = { model: 'oa', max_tokens: 16, messages: [{ role: 'user' as const, content: 'Hi' }] };
  // Messages: streamed, an error event (the SDK throws), no end_turn; whole, no 200.
  const streamed = await events(await post('/v1/messages', { ...body, stream: true }));
  t.equal(streamed.at(-1).type, 'error', 'the stream ends with an error event');
  t.notOk(streamed.some((e) => e.type === 'message_delta' && e.delta?.stop_reason === 'end_turn'), 'not a finished turn');
  const whole = await post('/v1/messages', body);
  t.equal(whole.status, 502, 'a whole reply: the upstream failed');
  // Responses: response.failed, not completed.
  const resp = await events(await post('/v1/responses', { model: 'oa', input: 'Hi', stream: true }));
  t.equal(resp.at(-1).type, 'response.failed');
  // Ollama: an error line, not done_reason stop.
  const lines = (await (await post('/api/chat', { model: 'oa', messages: [{ role: 'user', content: 'Hi' }] })).text()).trim().split('\n').map((l) => JSON.parse(l));
  t.ok(lines.at(-1).error !== undefined && lines.every((l) => l.done_reason !== 'stop'), 'an Ollama error line');
  // The staged chain (compiled_chain off, the test oracle) the same.
  const flag = (enabled: boolean) => fetch(`${tb.url}/api/industrial/flags/compiled_chain`, { method: 'PUT', headers: { ...admin, 'content-type': 'application/json' }, body: JSON.stringify({ enabled }) });
  t.equal((await flag(false)).status, 200);
  try {
    const staged = (await (await post('/api/chat', { model: 'oc', messages: [{ role: 'user', content: 'Hi' }] })).text()).trim().split('\n').map((l) => JSON.parse(l));
    t.ok(staged.at(-1).error !== undefined && staged.every((l) => l.done_reason !== 'stop'), 'an Ollama error line from the staged chain too');
  } finally {
    await flag(true);
  }
  // An OpenAI client gets vLLM's own word; a cache-on group stores none of it.
  calls = 0;
  const chat = { model: 'oc', temperature: 0, messages: [{ role: 'user', content: 'Hi' }] };
  const first = await post('/v1/chat/completions', { ...chat, stream: true });
  t.match(await first.text(), /"finish_reason":"abort"/, 'passed on as the upstream said it');
  const again = await post('/v1/chat/completions', { ...chat, stream: true });
  await again.text();
  t.equal(again.headers.get('x-broker-cache'), 'miss', 'a cut stream is not stored');
  const w1 = await post('/v1/chat/completions', chat);
  t.equal(((await w1.json()) as any).choices[0].finish_reason, 'abort');
  const w2 = await post('/v1/chat/completions', chat);
  await w2.text();
  t.equal(w2.headers.get('x-broker-cache'), 'miss', 'a cut whole reply is not stored');
  t.equal(calls, 4, 'every one went upstream');
});

t.test("llama.cpp's older error line (`error: {...}`, an SSE field of its own) is the upstream's error, its message kept, not garbage then a cut", async (t) => {
  // Group oc: oa's breaker is open after the abort test's failures.
  up.handler = (_p, _b, res) => {
    const chunk = (delta: unknown): string => `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
    sse(res, [chunk({ role: 'assistant', content: '' }), chunk({ content: 'Hel' }), 'error: {"code":500,"message":"llama_decode failed: out of memory","type":"server_error"}\n\n']);
  };
  const openaiText = await (await post('/v1/chat/completions', { model: 'oc', stream: true, messages: [{ role: 'user', content: 'Hi' }] })).text();
  t.match(openaiText, /llama_decode failed: out of memory/, "an OpenAI client's error event says it");
  t.notMatch(openaiText, /\[DONE\]/);
  const evs = await events(await post('/v1/messages', { model: 'oc', max_tokens: 16, stream: true, messages: [{ role: 'user', content: 'Hi' }] }));
  t.match(evs.at(-1), { type: 'error', error: { message: /llama_decode failed: out of memory/ } }, "a Messages client's too");
});
