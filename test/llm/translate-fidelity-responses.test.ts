// A Responses client's history on a chat upstream (OpenAI-compatible or Ollama): the items
// Codex's built-in tools leave in it (custom and local_shell calls, web searches, item
// references, compaction) and images in a function_call_output, as the upstream gets them.
// The upstream is a scripted HTTP server answering both wire formats by path.
import t from 'tap';
import type { ServerResponse } from 'node:http';
import { postJson } from '../helpers/broker.ts';
import { startFleetBroker } from '../helpers/fleet.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';

const up = await startScriptedUpstream();
t.teardown(() => up.close());

up.handler = (path: string, _b: any, res: ServerResponse) => {
  if (path === '/api/chat') {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    return void res.end(JSON.stringify({ model: 'm', created_at: '2024-01-01T00:00:00Z', message: { role: 'assistant', content: 'ok' }, done: true, done_reason: 'stop', prompt_eval_count: 3, eval_count: 1 }) + '\n');
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ id: 'c1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }], usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 } }));
};

const tb = await startFleetBroker(
  t,
  {
    modelGroups: {
      oa: { deployments: [{ id: 'oa-1', provider: 'openai', url: up.url, model: 'm' }] },
      ol: { deployments: [{ id: 'ol-1', provider: 'ollama', url: up.url, model: 'm' }] },
    },
  },
  { INFER_ENABLED: 'false' },
);

const sent = () => up.seen.at(-1)!.body.messages as any[];

const PATCH = '*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch';
const LS = { type: 'exec', command: ['ls', '-la'], env: {}, working_directory: '/w' };
const PWD = { type: 'exec', command: ['pwd'], env: {} };

t.test("Codex's built-in tool items in the history: calls paired with their outputs, the rest left out", async (t) => {
  const input = [
    { type: 'message', role: 'user', content: 'fix it' },
    { type: 'web_search_call', id: 'ws_1', status: 'completed', action: { type: 'search', query: 'how' } },
    { type: 'custom_tool_call', id: 'ctc_1', call_id: 'call_c', name: 'apply_patch', input: PATCH },
    { type: 'custom_tool_call_output', call_id: 'call_c', output: 'Success' },
    { type: 'local_shell_call', id: 'lsc_1', call_id: 'call_s', status: 'completed', action: LS },
    { type: 'function_call_output', call_id: 'call_s', output: 'a.txt' },
    { type: 'item_reference', id: 'msg_old' },
    // An output that names its call by the call item's id (the API's local_shell_call_output).
    { type: 'local_shell_call', id: 'lsc_2', call_id: 'call_t', status: 'completed', action: PWD },
    { type: 'local_shell_call_output', id: 'lsc_2', output: '/w' },
    { type: 'compaction', encrypted_content: 'opaque' },
    { type: 'message', role: 'user', content: 'thanks' },
  ];
  const r = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input });
  t.equal(r.status, 200);
  t.same(sent(), [
    { role: 'user', content: 'fix it' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_c', type: 'function', function: { name: 'apply_patch', arguments: JSON.stringify({ input: PATCH }) } }] },
    { role: 'tool', tool_call_id: 'call_c', content: 'Success' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_s', type: 'function', function: { name: 'local_shell', arguments: JSON.stringify(LS) } }] },
    { role: 'tool', tool_call_id: 'call_s', content: 'a.txt' },
    { role: 'assistant', content: null, tool_calls: [{ id: 'call_t', type: 'function', function: { name: 'local_shell', arguments: JSON.stringify(PWD) } }] },
    { role: 'tool', tool_call_id: 'call_t', content: '/w' },
    { role: 'user', content: 'thanks' },
  ]);
  const o = await postJson(`${tb.url}/v1/responses`, { model: 'ol', input });
  t.equal(o.status, 200);
  t.same(sent(), [
    { role: 'user', content: 'fix it' },
    { role: 'assistant', content: '', tool_calls: [{ id: 'call_c', function: { name: 'apply_patch', arguments: { input: PATCH } } }] },
    { role: 'tool', content: 'Success', tool_name: 'apply_patch', tool_call_id: 'call_c' },
    { role: 'assistant', content: '', tool_calls: [{ id: 'call_s', function: { name: 'local_shell', arguments: LS } }] },
    { role: 'tool', content: 'a.txt', tool_name: 'local_shell', tool_call_id: 'call_s' },
    { role: 'assistant', content: '', tool_calls: [{ id: 'call_t', function: { name: 'local_shell', arguments: PWD } }] },
    { role: 'tool', content: '/w', tool_name: 'local_shell', tool_call_id: 'call_t' },
    { role: 'user', content: 'thanks' },
  ]);
  // Another unknown item type is still refused, naming it.
  const bad = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: [{ type: 'file_search_call', id: 'f' }] });
  t.equal(bad.status, 400);
  t.match(bad.body.error, { param: 'input[0].type', message: /file_search_call is not supported/ });
});

const PNG = 'iVBORw0KGgo=';
const PNG2 = 'iVBORw0KGgoA';
const url = (b64: string) => `data:image/png;base64,${b64}`;

t.test('images in a function_call_output: the text stays the tool message, the images follow as a user message', async (t) => {
  const input = [
    { type: 'message', role: 'user', content: 'look' },
    { type: 'function_call', call_id: 'c1', name: 'screenshot', arguments: '{}' },
    { type: 'function_call', call_id: 'c2', name: 'screenshot', arguments: '{}' },
    { type: 'function_call_output', call_id: 'c1', output: [{ type: 'input_text', text: 'left' }, { type: 'input_image', image_url: url(PNG), detail: 'high' }] },
    { type: 'function_call_output', call_id: 'c2', output: [{ type: 'input_image', image_url: url(PNG2) }] },
    { type: 'message', role: 'user', content: 'and?' },
  ];
  const r = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input });
  t.equal(r.status, 200);
  // Both tool messages first: chat's tool messages follow their calls unbroken.
  t.same(sent().slice(2), [
    { role: 'tool', tool_call_id: 'c1', content: 'left' },
    { role: 'tool', tool_call_id: 'c2', content: '' },
    { role: 'user', content: [{ type: 'image_url', image_url: { url: url(PNG), detail: 'high' } }, { type: 'image_url', image_url: { url: url(PNG2) } }] },
    { role: 'user', content: 'and?' },
  ]);
  const o = await postJson(`${tb.url}/v1/responses`, { model: 'ol', input });
  t.equal(o.status, 200);
  t.same(sent().slice(2), [
    { role: 'tool', content: 'left', tool_name: 'screenshot', tool_call_id: 'c1' },
    { role: 'tool', content: '', tool_name: 'screenshot', tool_call_id: 'c2' },
    { role: 'user', content: '', images: [PNG, PNG2] },
    { role: 'user', content: 'and?' },
  ]);
  // Last in the input, they still go.
  const end = await postJson(`${tb.url}/v1/responses`, { model: 'oa', input: input.slice(0, 4) });
  t.equal(end.status, 200);
  t.same(sent().at(-1), { role: 'user', content: [{ type: 'image_url', image_url: { url: url(PNG), detail: 'high' } }] });
  // Ollama takes base64 only: a web URL is refused, naming it.
  const web = await postJson(`${tb.url}/v1/responses`, { model: 'ol', input: [input[1], { ...input[3], output: [{ type: 'input_image', image_url: 'https://x/y.png' }] }] });
  t.equal(web.status, 400);
  t.match(web.body.error, { param: 'input[1].output[0].image_url' });
});
