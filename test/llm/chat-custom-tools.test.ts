// OpenAI Chat Completions' custom (free-form) tools, `{type: "custom", custom: {name, format}}`,
// served by an Ollama group: Ollama has only functions, so a custom tool goes as a function of
// one string argument (its grammar shown in the description) and the model's call comes back
// to the openai SDK as a custom tool call with the input, whole and streamed; a custom call in
// the history goes back as the function call it was offered as. allowed_tools narrows what
// Ollama is offered (it has no tool_choice). The upstream is scripted and records each request.
import t from 'tap';
import type { ServerResponse } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import OpenAI from 'openai';
import { startTestBroker } from '../helpers/broker.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';

const up = await startScriptedUpstream();
t.teardown(() => up.close());

const dir = mkdtempSync(join(tmpdir(), 'eb-chat-custom-'));
writeFileSync(join(dir, 'broker.yaml'), stringify({ modelGroups: { ol: { deployments: [{ id: 'ol-1', provider: 'ollama', url: up.url, model: 'm' }] } } }));
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false' });
t.teardown(() => tb.close());
const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'x', maxRetries: 0 });

const PATCH = '*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch';

/** Ollama's /api/chat answer: one call of `name` with `args`, whole or as NDJSON lines. */
function ollamaCall(body: any, res: ServerResponse, name: string, args: Record<string, unknown>): void {
  const message = { role: 'assistant', content: '', tool_calls: [{ function: { name, arguments: args } }] };
  const done = { done: true, done_reason: 'stop', prompt_eval_count: 9, eval_count: 4 };
  if (body.stream !== true) {
    res.writeHead(200, { 'content-type': 'application/json' });
    return void res.end(JSON.stringify({ model: 'm', created_at: '2026-01-01T00:00:00Z', message, ...done }));
  }
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  res.write(JSON.stringify({ model: 'm', created_at: '2026-01-01T00:00:00Z', message, done: false }) + '\n');
  res.end(JSON.stringify({ model: 'm', created_at: '2026-01-01T00:00:00Z', message: { role: 'assistant', content: '' }, ...done }) + '\n');
}

const tools: OpenAI.Chat.Completions.ChatCompletionTool[] = [
  { type: 'custom', custom: { name: 'apply_patch', description: 'Edit files.', format: { type: 'grammar', grammar: { syntax: 'lark', definition: 'start: "*** Begin Patch" /(.|\\n)*/' } } } },
  { type: 'function', function: { name: 'read', parameters: { type: 'object', properties: { path: { type: 'string' } } } } },
];

t.test('a custom tool reaches Ollama as a one-string function; its call comes back as a custom tool call', async (t) => {
  up.handler = (_p, b, res) => ollamaCall(b, res, 'apply_patch', { input: PATCH });
  up.seen.length = 0;
  const r = await openai.chat.completions.create({ model: 'ol', messages: [{ role: 'user', content: 'add a.txt' }], tools });
  const sent = up.seen[0]!.body;
  t.equal(up.seen[0]!.path, '/api/chat');
  t.match(sent.tools[0], { type: 'function', function: { name: 'apply_patch', description: 'Edit files.', parameters: { type: 'object', properties: { input: { type: 'string' } }, required: ['input'] } } });
  t.match(sent.tools[0].function.parameters.properties.input.description, /Lark grammar:\nstart: "\*\*\* Begin Patch"/, 'the grammar shown to the model');
  t.same(sent.tools[1], tools[1], 'a function tool as it came');
  t.equal(r.choices[0]!.finish_reason, 'tool_calls');
  const call = r.choices[0]!.message.tool_calls![0]!;
  t.equal(call.type, 'custom');
  t.same((call as OpenAI.Chat.Completions.ChatCompletionMessageCustomToolCall).custom, { name: 'apply_patch', input: PATCH }, 'the free-form input, not JSON arguments');
  t.match(call.id, /\S/);
  t.notOk('function' in call, 'no function object on a custom call');
});

t.test('streamed: the call comes as one custom tool call delta with its input', async (t) => {
  up.handler = (_p, b, res) => ollamaCall(b, res, 'apply_patch', { input: PATCH });
  const stream = await openai.chat.completions.create({ model: 'ol', messages: [{ role: 'user', content: 'add a.txt' }], tools, stream: true });
  const calls: any[] = [];
  let finish: string | null = null;
  for await (const c of stream) {
    for (const tc of c.choices[0]?.delta.tool_calls ?? []) calls.push(tc);
    finish = c.choices[0]?.finish_reason ?? finish;
  }
  t.equal(calls.length, 1);
  t.match(calls[0], { index: 0, type: 'custom', custom: { name: 'apply_patch', input: PATCH } });
  t.equal(finish, 'tool_calls');
});

t.test('a function call of the same request stays a function call', async (t) => {
  up.handler = (_p, b, res) => ollamaCall(b, res, 'read', { path: 'a.txt' });
  const r = await openai.chat.completions.create({ model: 'ol', messages: [{ role: 'user', content: 'read a.txt' }], tools });
  t.match(r.choices[0]!.message.tool_calls![0], { type: 'function', function: { name: 'read', arguments: '{"path":"a.txt"}' } });
});

t.test("a custom call in the history goes back to Ollama as the function call it was offered as, its output named", async (t) => {
  up.handler = (_p, b, res) => ollamaCall(b, res, 'read', { path: 'a.txt' });
  up.seen.length = 0;
  await openai.chat.completions.create({
    model: 'ol',
    tools,
    messages: [
      { role: 'user', content: 'add a.txt' },
      { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'custom', custom: { name: 'apply_patch', input: PATCH } }] },
      { role: 'tool', tool_call_id: 'call_1', content: 'Done' },
    ],
  });
  const messages = up.seen[0]!.body.messages;
  t.same(messages[1].tool_calls, [{ id: 'call_1', function: { name: 'apply_patch', arguments: { input: PATCH } } }]);
  t.match(messages[2], { role: 'tool', tool_name: 'apply_patch', tool_call_id: 'call_1', content: 'Done' });
});

t.test('allowed_tools: Ollama is offered only the tools it names; "none" offers none', async (t) => {
  up.handler = (_p, b, res) => ollamaCall(b, res, 'read', { path: 'a.txt' });
  up.seen.length = 0;
  await openai.chat.completions.create({ model: 'ol', messages: [{ role: 'user', content: 'x' }], tools, tool_choice: { type: 'allowed_tools', allowed_tools: { mode: 'auto', tools: [{ type: 'function', function: { name: 'read' } }] } } });
  t.same(up.seen[0]!.body.tools.map((x: any) => x.function.name), ['read']);
  await openai.chat.completions.create({ model: 'ol', messages: [{ role: 'user', content: 'x' }], tools, tool_choice: { type: 'allowed_tools', allowed_tools: { mode: 'auto', tools: [{ type: 'custom', custom: { name: 'apply_patch' } }] } } });
  t.same(up.seen[1]!.body.tools.map((x: any) => x.function.name), ['apply_patch']);
  await openai.chat.completions.create({ model: 'ol', messages: [{ role: 'user', content: 'x' }], tools, tool_choice: 'none' });
  t.notOk('tools' in up.seen[2]!.body);
});

t.test('a custom tool without a name, or a tool_choice naming no tool (or none in tools), is a 400 naming the field', async (t) => {
  up.seen.length = 0;
  for (const [body, field] of [
    [{ tools: [{ type: 'custom', custom: { description: 'x' } }] }, 'tools[0].custom.name'],
    [{ tools, tool_choice: { type: 'custom', custom: {} } }, 'tool_choice.custom.name'],
    [{ tools, tool_choice: { type: 'allowed_tools', allowed_tools: { mode: 'auto' } } }, 'tool_choice.allowed_tools.tools'],
    // Naming no offered tool: sent on, Ollama would get none and answer in text.
    [{ tools, tool_choice: { type: 'custom', custom: { name: 'zzz' } } }, 'tool_choice'],
    [{ tools, tool_choice: { type: 'allowed_tools', allowed_tools: { mode: 'required', tools: [] } } }, 'tool_choice.allowed_tools.tools'],
  ] as const) {
    const r = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'ol', messages: [{ role: 'user', content: 'x' }], ...body }) });
    t.equal(r.status, 400, field);
    const e = (await r.json()) as any;
    t.match(e.error, { code: 'invalid_request', param: field }, field);
    t.ok(r.headers.get('x-request-id'));
  }
  t.equal(up.seen.length, 0, 'nothing sent upstream');
});
