// The Response object a Responses client gets from a chat upstream, streamed and not:
// it repeats the request's fields as OpenAI's does, says why it is incomplete (length or
// content filter), and a call without arguments says {} in both modes.
import t from 'tap';
import { chatRequest, response, responsesDelta, responsesDone, responsesFailed, responsesWriter } from '../../src/llm/translate/responses_to_chat.ts';
import type { Delta } from '../../src/llm/translate/deltas.ts';

const request = {
  model: 'g',
  input: 'hi',
  instructions: 'Be brief.',
  max_output_tokens: 64,
  temperature: 0.2,
  top_p: 0.9,
  tools: [{ type: 'function', name: 'f', parameters: { type: 'object' } }],
  tool_choice: 'required',
  parallel_tool_calls: false,
  metadata: { run: '7' },
};
const usage = { promptTokens: 3, completionTokens: 2 };
const ctx = { model: 'g', id: 'r1', request };
const delta = (d: Partial<Delta>): Delta => ({ text: '', thinking: '', tools: null, finish: null, usage: null, ...d });

/** The Responses events of a stream, parsed. */
function events(body: string): Array<{ type: string; [k: string]: any }> {
  return [...body.matchAll(/^data: (.+)$/gm)].map((m) => JSON.parse(m[1]!));
}

function streamed(deltas: Delta[]) {
  const w = responsesWriter(ctx);
  let out = '';
  for (const d of deltas) out += responsesDelta(w, d);
  return events(out + responsesDone(w));
}

t.test('the request fields come back in the Response, streamed and not', async (t) => {
  const echoed = { instructions: 'Be brief.', max_output_tokens: 64, temperature: 0.2, top_p: 0.9, tools: request.tools, tool_choice: 'required', parallel_tool_calls: false, metadata: { run: '7' } };
  t.match(response({ text: 'ok', thinking: '', tools: [], finish: 'stop', usage }, ctx), { status: 'completed', ...echoed });
  const evs = streamed([delta({ text: 'ok' }), delta({ finish: 'stop', usage })]);
  t.match(evs[0], { type: 'response.created', response: echoed });
  t.match(evs.at(-1), { type: 'response.completed', response: { status: 'completed', ...echoed } });
  const bare = response({ text: 'ok', thinking: '', tools: [], finish: 'stop', usage }, { model: 'g', id: 'r2' });
  t.match(bare, { instructions: null, tools: [], tool_choice: 'auto', temperature: null }, "without the request: the API's defaults");
  const verbose = response({ text: 'ok', thinking: '', tools: [], finish: 'stop', usage }, { model: 'g', id: 'r3', request: { ...request, text: { verbosity: 'low' } } });
  t.same(verbose['text'], { format: { type: 'text' }, verbosity: 'low' }, 'only text.verbosity sent: text.format still there, as OpenAI always says it');
});

t.test('incomplete says why: max_output_tokens or content_filter', async (t) => {
  for (const [finish, reason] of [['length', 'max_output_tokens'], ['content_filter', 'content_filter']] as const) {
    t.match(response({ text: 'x', thinking: '', tools: [], finish, usage }, ctx), { status: 'incomplete', incomplete_details: { reason } }, `${finish}, whole`);
    t.match(streamed([delta({ text: 'x' }), delta({ finish, usage })]).at(-1), { type: 'response.incomplete', response: { status: 'incomplete', incomplete_details: { reason } } }, `${finish}, streamed`);
  }
  // The cut message item says so too, as OpenAI's does: in the whole reply, its done event and the final Response.
  t.match(response({ text: 'x', thinking: '', tools: [], finish: 'length', usage }, ctx), { output: [{ type: 'message', status: 'incomplete' }] });
  const evs = streamed([delta({ text: 'x' }), delta({ finish: 'length', usage })]);
  t.match(evs.find((e) => e.type === 'response.output_item.done'), { item: { type: 'message', status: 'incomplete' } });
  t.match(evs.at(-1), { response: { output: [{ type: 'message', status: 'incomplete' }] } });
  t.match(streamed([delta({ text: 'x' }), delta({ finish: 'stop', usage })]).at(-1), { response: { output: [{ type: 'message', status: 'completed' }] } }, 'a whole reply stays completed');
});

t.test('a function call cut at max_output_tokens is incomplete; the calls before it are complete', async (t) => {
  const calls = [{ id: 'call_1', name: 'f', arguments: '{"a":1}' }, { id: 'call_2', name: 'g', arguments: '{"city":"Par' }];
  const whole = response({ text: '', thinking: '', tools: calls, finish: 'length', usage }, ctx) as { output: Array<{ type: string; status: string }> };
  t.same(whole.output.map((o) => [o.type, o.status]), [['function_call', 'completed'], ['function_call', 'incomplete']]);
  const evs = streamed([delta({ tools: [{ index: 0, ...calls[0]! }] }), delta({ tools: [{ index: 1, ...calls[1]! }] }), delta({ finish: 'length', usage })]);
  t.same(evs.filter((e) => e.type === 'response.output_item.done').map((e) => e.item.status), ['completed', 'incomplete'], 'streamed: the done events');
  t.same((evs.at(-1)!.response.output as Array<{ status: string }>).map((o) => o.status), ['completed', 'incomplete'], 'and the final Response');
  const done = response({ text: '', thinking: '', tools: calls, finish: 'tool_calls', usage }, ctx) as { output: Array<{ status: string }> };
  t.same(done.output.map((o) => o.status), ['completed', 'completed'], 'not cut: all complete');
});

t.test('a call without arguments says {} streamed as in a whole reply', async (t) => {
  const evs = streamed([delta({ tools: [{ index: 0, id: 'call_1', name: 'f' }] }), delta({ finish: 'tool_calls', usage })]);
  const args = evs.filter((e) => e.type === 'response.function_call_arguments.delta').map((e) => e.delta).join('');
  t.equal(args, '{}', 'the deltas add up to {}');
  t.match(evs.find((e) => e.type === 'response.function_call_arguments.done'), { arguments: '{}' });
  t.match(evs.at(-1), { response: { output: [{ type: 'function_call', arguments: '{}' }] } });
});

t.test("items close in order, as OpenAI's: the message before a function call opens; later text is an item of its own", async (t) => {
  const evs = streamed([
    delta({ text: 'Let me ' }),
    delta({ text: 'check.' }),
    delta({ tools: [{ index: 0, id: 'call_1', name: 'f', arguments: '{"a"' }] }),
    delta({ tools: [{ index: 0, arguments: ':1}' }] }),
    delta({ text: 'Done.' }),
    delta({ finish: 'tool_calls', usage }),
  ]);
  const at = (pred: (e: any) => boolean) => evs.findIndex(pred);
  const messageDone = at((e) => e.type === 'response.output_item.done' && e.item.type === 'message');
  const callAdded = at((e) => e.type === 'response.output_item.added' && e.item.type === 'function_call');
  t.ok(messageDone >= 0 && messageDone < callAdded, 'the message item is done before the function call is added');
  t.ok(at((e) => e.type === 'response.output_text.done') < callAdded);
  const seqs = evs.map((e) => e.sequence_number);
  t.same(seqs, seqs.map((_, i) => i), 'sequence numbers run on');
  const final = evs.at(-1)!.response;
  t.same(final.output.map((o: any) => o.type), ['message', 'function_call', 'message'], 'the text after the call is a second message item');
  t.equal(final.output[0].content[0].text, 'Let me check.');
  t.equal(final.output[2].content[0].text, 'Done.');
  t.equal(final.output[1].arguments, '{"a":1}');
  // Every item added is done once, and each item's deltas add up to its final text.
  const added = evs.filter((e) => e.type === 'response.output_item.added').map((e) => e.item.id);
  const done = evs.filter((e) => e.type === 'response.output_item.done').map((e) => e.item.id);
  t.same([...done].sort(), [...added].sort());
  for (const item of final.output.filter((o: any) => o.type === 'message')) {
    const text = evs.filter((e) => e.type === 'response.output_text.delta' && e.item_id === item.id).map((e) => e.delta).join('');
    t.equal(text, item.content[0].text, `${item.id}: deltas add up`);
  }
});

t.test('a function call first, then text: the call item is done before the message item is added', async (t) => {
  const evs = streamed([
    delta({ tools: [{ index: 0, id: 'call_1', name: 'f', arguments: '{"a":1}' }] }),
    delta({ text: 'Calling ' }),
    delta({ text: 'f.' }),
    delta({ finish: 'tool_calls', usage }),
  ]);
  const at = (pred: (e: any) => boolean) => evs.findIndex(pred);
  const callDone = at((e) => e.type === 'response.output_item.done' && e.item.type === 'function_call');
  const messageAdded = at((e) => e.type === 'response.output_item.added' && e.item.type === 'message');
  const firstText = at((e) => e.type === 'response.output_text.delta');
  t.ok(callDone >= 0 && callDone < messageAdded && messageAdded < firstText, 'no item streams while another is open');
  const final = evs.at(-1)!.response;
  t.same(final.output.map((o: any) => o.type), ['function_call', 'message']);
  t.equal(final.output[1].content[0].text, 'Calling f.');
  t.same(final.output.map((o: any) => o.id), evs.filter((e) => e.type === 'response.output_item.done').map((e) => e.item.id), 'done in output order');
});

// Codex CLI's tools (0.171): function tools, a namespace of them (its multi-agent tools, its
// MCP servers), web_search. Chat has no namespace: flattened upstream, restored in the calls.
t.test("Codex's namespace tools: flat names upstream, a call reported by its own name and namespace; hosted tools left out", async (t) => {
  const codex = {
    model: 'g',
    input: [
      { role: 'user', content: 'spawn one' },
      { type: 'function_call', call_id: 'c0', name: 'wait_agent', namespace: 'multi_agent_v1', arguments: '{}' },
      { type: 'function_call_output', call_id: 'c0', output: 'done' },
    ],
    tools: [
      { type: 'function', name: 'shell', parameters: { type: 'object' } },
      { type: 'namespace', name: 'multi_agent_v1', description: 'agents', tools: [{ type: 'function', name: 'spawn_agent', parameters: { type: 'object' } }, { type: 'function', name: 'wait_agent', parameters: { type: 'object' } }] },
      { type: 'namespace', name: 'mcp__browser__', tools: [{ type: 'function', name: 'navigate' }] },
      { type: 'web_search', external_web_access: false },
    ],
    tool_choice: 'auto',
  };
  const chat = chatRequest(codex);
  t.same((chat.tools as any[]).map((x) => x.function.name), ['shell', 'multi_agent_v1__spawn_agent', 'multi_agent_v1__wait_agent', 'mcp__browser__navigate'], 'flattened; web_search left out');
  t.equal((chat.messages[1] as any).tool_calls[0].function.name, 'multi_agent_v1__wait_agent', "an earlier turn's namespaced call, as the model was offered it");
  const ctx2 = { model: 'g', id: 'r9', request: codex };
  const calls = [{ id: 'call_1', name: 'multi_agent_v1__spawn_agent', arguments: '{"task":"x"}' }, { id: 'call_2', name: 'shell', arguments: '{}' }, { id: 'call_3', name: 'mcp__browser__navigate', arguments: '{}' }];
  const whole = response({ text: '', thinking: '', tools: calls, finish: 'tool_calls', usage }, ctx2);
  t.match(whole.output, [
    { type: 'function_call', name: 'spawn_agent', namespace: 'multi_agent_v1', call_id: 'call_1' },
    { type: 'function_call', name: 'shell', call_id: 'call_2' },
    { type: 'function_call', name: 'navigate', namespace: 'mcp__browser__' },
  ]);
  t.notOk('namespace' in (whole.output as any[])[1], 'a plain function has no namespace');
  const w = responsesWriter(ctx2);
  let out = '';
  calls.forEach((c, index) => (out += responsesDelta(w, delta({ tools: [{ index, id: c.id, name: c.name, arguments: c.arguments }] }))));
  const evs = events(out + responsesDone(w));
  t.match(evs.find((e) => e.type === 'response.output_item.added')?.item, { name: 'spawn_agent', namespace: 'multi_agent_v1' });
  t.match(evs.find((e) => e.type === 'response.function_call_arguments.done'), { name: 'spawn_agent' });
  t.match(evs.find((e) => e.type === 'response.output_item.done')?.item, { name: 'spawn_agent', namespace: 'multi_agent_v1' });
  t.match(evs.at(-1)?.response.output[2], { name: 'navigate', namespace: 'mcp__browser__' });
  t.throws(() => chatRequest({ model: 'g', input: 'x', tools: [{ type: 'web_search' }], tool_choice: { type: 'web_search' } }), { code: 'invalid_request', details: { field: 'tool_choice' } }, 'a hosted tool forced: 400');
});

// Codex's apply_patch for GPT-5 models (0.171): a custom tool with a Lark grammar, free-form
// input. Chat has only functions: it goes up as one of one string argument and its calls come
// back as custom_tool_call items, whole and streamed.
t.test('a custom tool: a function of one string argument upstream, its call a custom_tool_call with the input', async (t) => {
  const PATCH = '*** Begin Patch\n*** Add File: a.txt\n+hi "there"\n*** End Patch';
  const codex = {
    model: 'g',
    input: [
      { role: 'user', content: 'patch it' },
      { type: 'custom_tool_call', call_id: 'c0', name: 'apply_patch', input: 'old' },
      { type: 'custom_tool_call_output', call_id: 'c0', output: 'Success' },
    ],
    tools: [
      { type: 'function', name: 'shell', parameters: { type: 'object' } },
      { type: 'custom', name: 'apply_patch', description: 'Edit files.', format: { type: 'grammar', syntax: 'lark', definition: 'start: begin_patch hunk+ end_patch' } },
      { type: 'namespace', name: 'mcp__ed__', tools: [{ type: 'custom', name: 'write' }] },
    ],
    tool_choice: { type: 'custom', name: 'apply_patch' },
  };
  const chat = chatRequest(codex);
  const tools = chat.tools as any[];
  t.same(tools.map((x) => x.function.name), ['shell', 'apply_patch', 'mcp__ed__write']);
  t.match(tools[1].function, { description: 'Edit files.', parameters: { type: 'object', required: ['input'], properties: { input: { type: 'string' } } } });
  t.match(tools[1].function.parameters.properties.input.description, /Lark grammar:\nstart: begin_patch hunk\+ end_patch/, 'the grammar is shown to the model');
  t.same(chat['tool_choice'], { type: 'function', function: { name: 'apply_patch' } }, 'forced as the function it goes up as');
  t.same((chat.messages[1] as any).tool_calls[0].function, { name: 'apply_patch', arguments: '{"input":"old"}' }, 'an earlier call, as the function was offered');
  t.throws(() => chatRequest({ ...codex, tools: [{ type: 'custom', name: 'p', format: { type: 'grammar' } }], tool_choice: 'auto' }), { code: 'invalid_request', details: { field: 'tools[0].format.definition' } });
  t.throws(() => chatRequest({ ...codex, tools: [{ type: 'custom', name: 'p', format: 'lark' }], tool_choice: 'auto' }), { code: 'invalid_request', details: { field: 'tools[0].format' } });
  // The Agents SDK's shellTool() and applyPatchTool(): their calls are items chat has no word for.
  for (const type of ['shell', 'apply_patch']) t.throws(() => chatRequest({ model: 'g', input: 'x', tools: [{ type }] }), { code: 'invalid_request', message: `tools[0] a "${type}" tool is not served for a chat upstream: send function, custom or namespace tools (the built-in shell and apply_patch tools: as function or custom tools of your own)` });
  t.same(chatRequest({ model: 'g', input: 'x', tools: [{ type: 'computer' }, { type: 'computer_use_preview', display_width: 1, display_height: 1, environment: 'linux' }] }).tools, undefined, 'the GA computer tool is left out as its preview is');

  const ctx2 = { model: 'g', id: 'r9', request: codex };
  const args = JSON.stringify({ input: PATCH });
  const calls = [{ id: 'call_1', name: 'apply_patch', arguments: args }, { id: 'call_2', name: 'shell', arguments: '{}' }, { id: 'call_3', name: 'mcp__ed__write', arguments: '{"text":"x"}' }];
  const whole = response({ text: '', thinking: '', tools: calls, finish: 'tool_calls', usage }, ctx2);
  t.match(whole.output, [
    { type: 'custom_tool_call', id: /^ctc_/, call_id: 'call_1', name: 'apply_patch', input: PATCH, status: 'completed' },
    { type: 'function_call', name: 'shell', call_id: 'call_2' },
    { type: 'custom_tool_call', name: 'write', namespace: 'mcp__ed__', input: 'x', call_id: 'call_3' },
  ]);
  t.notOk('arguments' in (whole.output as any[])[0], 'a custom call has input, not arguments');

  // Streamed in pieces (as a chat upstream streams arguments): the input comes whole at the call's end.
  const w = responsesWriter(ctx2);
  let out = responsesDelta(w, delta({ tools: [{ index: 0, id: 'call_1', name: 'apply_patch', arguments: args.slice(0, 7) }] }));
  out += responsesDelta(w, delta({ tools: [{ index: 0, arguments: args.slice(7) }] }));
  out += responsesDelta(w, delta({ tools: [{ index: 1, id: 'call_2', name: 'shell', arguments: '{}' }] }));
  const evs = events(out + responsesDone(w));
  const custom = evs.filter((e) => e.item_id?.startsWith('ctc_') || e.item?.type === 'custom_tool_call');
  t.same(custom.map((e) => e.type), ['response.output_item.added', 'response.custom_tool_call_input.delta', 'response.custom_tool_call_input.done', 'response.output_item.done']);
  t.match(custom[0].item, { type: 'custom_tool_call', name: 'apply_patch', input: '', status: 'in_progress' });
  t.equal(custom[1].delta, PATCH);
  t.equal(custom[2].input, PATCH);
  t.match(custom[3].item, { type: 'custom_tool_call', input: PATCH, status: 'completed', call_id: 'call_1' });
  t.same(new Set(custom.map((e) => e.item_id ?? e.item.id)).size, 1, 'one item id throughout');
  t.notOk(evs.some((e) => e.type.startsWith('response.function_call_arguments') && e.item_id === custom[0].item.id), 'no function-call events for it');
  t.match(evs.at(-1)?.response.output, [{ type: 'custom_tool_call', input: PATCH }, { type: 'function_call', name: 'shell' }]);
  t.match(evs.find((e) => e.type === 'response.function_call_arguments.done'), { name: 'shell' }, 'a function beside it streams as before');
});

t.test('reasoning is the first item; reasoning after the text is dropped, with a keep-alive comment every 32 of its events', async (t) => {
  const w = responsesWriter(ctx);
  let out = '';
  for (let i = 0; i < 3; i++) out += responsesDelta(w, delta({ thinking: `step ${i}. ` }));
  out += responsesDelta(w, delta({ text: 'ok' }));
  // Thinking once the answer began: no item can take it (dropped), the stream kept alive.
  let late = '';
  for (let i = 0; i < 64; i++) late += responsesDelta(w, delta({ thinking: 'hmm ' }));
  t.equal(late.split(': keep-alive\n\n').length - 1, 2);
  t.equal(late.replaceAll(': keep-alive\n\n', ''), '', 'nothing else');
  const evs = events(out + late + responsesDone(w));
  const seqs = evs.map((e) => e.sequence_number);
  t.same(seqs, seqs.map((_, i) => i), 'sequence numbers run on without gaps');
  t.same(evs.filter((e) => e.type === 'response.reasoning_summary_text.delta').map((e) => e.delta), ['step 0. ', 'step 1. ', 'step 2. ']);
  t.match(evs.find((e) => e.type === 'response.reasoning_summary_text.done'), { item_id: 'rs_r1', output_index: 0, summary_index: 0, text: 'step 0. step 1. step 2. ' });
  const final = evs.at(-1)!.response;
  t.same(final.output[0], { type: 'reasoning', id: 'rs_r1', summary: [{ type: 'summary_text', text: 'step 0. step 1. step 2. ' }] });
  t.match(final.output[1], { type: 'message', content: [{ text: 'ok' }] });
  t.equal(final.usage.output_tokens, 3 + 1 + 64, 'without upstream usage, reasoning events count as output, the dropped late ones too (generated all the same)');
  // Before a function call, and alone (cut while the model reasoned: no empty message after it, streamed or whole).
  const calls = streamed([delta({ thinking: 'plan' }), delta({ tools: [{ index: 0, id: 'c1', name: 'f', arguments: '{}' }] }), delta({ finish: 'tool_calls', usage })]);
  t.same(calls.at(-1)!.response.output.map((o: any) => o.type), ['reasoning', 'function_call']);
  t.ok(calls.findIndex((e) => e.type === 'response.output_item.done' && e.item.type === 'reasoning') < calls.findIndex((e) => e.type === 'response.output_item.added' && e.item.type === 'function_call'));
  const alone = streamed([delta({ thinking: 'plan' }), delta({ finish: 'stop', usage })]);
  t.same(alone.at(-1)!.response.output.map((o: any) => o.type), ['reasoning']);
  t.notOk(alone.some((e) => e.type === 'response.output_item.added' && e.item.type === 'message'), 'no message item opened');
  t.same((response({ text: '', thinking: 'plan', tools: [], finish: 'length', usage }, ctx) as any).output.map((o: any) => o.type), ['reasoning'], 'whole: the same items');
  // A stream that fails while the model reasons lists the reasoning it sent.
  const wf = responsesWriter(ctx);
  const failed = events(responsesDelta(wf, delta({ thinking: 'half' })) + responsesFailed(wf, 'r1', 'g', 'upstream_error', 'cut'));
  t.match(failed.at(-1), { type: 'response.failed', response: { output: [{ type: 'reasoning', summary: [{ text: 'half' }] }] } });
});

t.test('a tool_choice naming a function that is not in tools is 400, as OpenAI answers (a namespaced one by its namespace)', async (t) => {
  const tools = [{ type: 'function', name: 'read', parameters: { type: 'object' } }, { type: 'namespace', name: 'fs', tools: [{ type: 'function', name: 'write', parameters: { type: 'object' } }] }];
  t.throws(() => chatRequest({ model: 'm', input: 'x', tools, tool_choice: { type: 'function', name: 'nope' } }), { code: 'invalid_request', details: { field: 'tool_choice.name' } });
  t.throws(() => chatRequest({ model: 'm', input: 'x', tool_choice: { type: 'function', name: 'read' } }), { code: 'invalid_request', details: { field: 'tool_choice.name' } }, 'no tools at all');
  t.ok(chatRequest({ model: 'm', input: 'x', tools, tool_choice: { type: 'function', name: 'read' } })['tool_choice'], 'an offered function');
  t.ok(chatRequest({ model: 'm', input: 'x', tools, tool_choice: { type: 'function', namespace: 'fs', name: 'write' } })['tool_choice'], 'a namespaced one');
});

t.test("an input_image's detail: chat's own values as they are, Responses' original (Codex's view_image) as high", async (t) => {
  const image = (detail: string) => (chatRequest({ model: 'g', input: [{ role: 'user', content: [{ type: 'input_image', image_url: 'data:image/png;base64,AAAA', detail }] }] }).messages[0]!.content as any[])[0].image_url.detail;
  t.same(['low', 'high', 'auto', 'original'].map(image), ['low', 'high', 'auto', 'high']);
});

// Codex 0.171 for GPT-5.5 models offers MCP tools through a tool_search it runs itself; for its
// "lite" models (gpt-5.6, gpt-6) every tool comes in an additional_tools input item.
t.test("Codex's client-run tool_search and additional_tools: functions upstream, tool_search_call items back, found tools offered from then on", async (t) => {
  const search = { type: 'tool_search', execution: 'client', description: 'Find MCP tools.', parameters: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] } };
  const found = { type: 'namespace', name: 'mcp__notes__', tools: [{ type: 'function', name: 'write_note', parameters: { type: 'object' } }] };
  const codex = {
    model: 'g',
    input: [
      { role: 'user', content: 'note it' },
      { type: 'tool_search_call', call_id: 'ts1', execution: 'client', arguments: { query: 'notes' }, status: 'completed' },
      { type: 'tool_search_output', call_id: 'ts1', execution: 'client', tools: [found] },
    ],
    tools: [{ type: 'function', name: 'exec_command', parameters: { type: 'object' } }, search, { type: 'tool_search' }],
  };
  const chat = chatRequest(codex);
  t.same((chat.tools as any[]).map((x) => x.function.name), ['exec_command', 'tool_search', 'mcp__notes__write_note'], 'the client-run search as a function, what it found after; a server-run one left out');
  t.match((chat.tools as any[])[1].function, { description: 'Find MCP tools.', parameters: search.parameters });
  t.same(chat.messages.slice(1).map((m: any) => [m.role, m.tool_calls?.[0]?.function ?? m.content]), [['assistant', { name: 'tool_search', arguments: '{"query":"notes"}' }], ['tool', 'Tools loaded: mcp__notes__write_note']]);

  const ctx2 = { model: 'g', id: 'r7', request: codex };
  const whole = response({ text: '', thinking: '', tools: [{ id: 'c1', name: 'tool_search', arguments: '{"query":"calendar"}' }, { id: 'c2', name: 'mcp__notes__write_note', arguments: '{"text":"x"}' }], finish: 'tool_calls', usage }, ctx2);
  t.match(whole.output, [{ type: 'tool_search_call', id: /^tsc_/, call_id: 'c1', execution: 'client', arguments: { query: 'calendar' }, status: 'completed' }, { type: 'function_call', name: 'write_note', namespace: 'mcp__notes__', call_id: 'c2' }]);
  const w = responsesWriter(ctx2);
  let out = responsesDelta(w, delta({ tools: [{ index: 0, id: 'c1', name: 'tool_search', arguments: '{"query":' }] }));
  out += responsesDelta(w, delta({ tools: [{ index: 0, arguments: '"calendar"}' }] }));
  const evs = events(out + responsesDone(w));
  const mine = evs.filter((e) => e.item?.type === 'tool_search_call' || e.item_id?.startsWith('tsc_'));
  t.same(mine.map((e) => e.type), ['response.output_item.added', 'response.output_item.done'], 'added and done, no argument events');
  t.match(mine[1].item, { type: 'tool_search_call', arguments: { query: 'calendar' }, status: 'completed' });

  const lite = chatRequest({ model: 'g', input: [{ type: 'additional_tools', role: 'developer', tools: [{ type: 'function', name: 'exec', parameters: { type: 'object' } }, found] }, { role: 'user', content: 'go' }] });
  t.same((lite.tools as any[]).map((x) => x.function.name), ['exec', 'mcp__notes__write_note'], "additional_tools' tools offered");
  t.same(lite.messages.map((m: any) => m.role), ['user'], 'the item is no turn');
  t.throws(() => chatRequest({ model: 'g', input: [{ type: 'additional_tools', role: 'developer', tools: [{ type: 'shell' }] }] }), { code: 'invalid_request', details: { field: 'input[0].tools[0]' } });
});

t.test('a namespaced tool past 64 characters goes up under a stable short name and its calls map back; a call by its bare or dotted name maps to it when unambiguous', async (t) => {
  const ns = 'mcp__an_extremely_verbose_server_name_for_notes__';
  const long = 'write_a_note_to_the_local_filesystem_with_many_extra_words';
  const req = { model: 'g', input: [{ role: 'user', content: 'x' }, { type: 'function_call', call_id: 'c0', name: long, namespace: ns, arguments: '{}' }, { type: 'function_call_output', call_id: 'c0', output: 'ok' }], tools: [{ type: 'namespace', name: ns, tools: [{ type: 'function', name: long }] }] };
  const chat = chatRequest(req);
  const flat = (chat.tools as any[])[0].function.name;
  t.equal(flat.length, 64, `${flat}: OpenAI's limit`);
  t.match(flat, /^[a-zA-Z0-9_-]{1,64}$/);
  t.equal((chat.messages[1] as any).tool_calls[0].function.name, flat, 'the history names it the same way');
  t.equal((chatRequest(req).tools as any[])[0].function.name, flat, 'every turn');
  t.match(response({ text: '', thinking: '', tools: [{ id: 'c1', name: flat, arguments: '{}' }], finish: 'tool_calls', usage }, { model: 'g', id: 'r', request: req }).output, [{ type: 'function_call', name: long, namespace: ns }]);

  // Codex's lite models: its prompt calls the tools `exec` or `functions.exec`; offered as functions__exec.
  const lite = { model: 'g', input: [{ type: 'additional_tools', role: 'developer', tools: [{ type: 'namespace', name: 'functions', tools: [{ type: 'custom', name: 'exec' }, { type: 'function', name: 'wait' }] }, { type: 'namespace', name: 'other', tools: [{ type: 'function', name: 'wait' }] }] }], tools: [{ type: 'function', name: 'shell' }, { type: 'namespace', name: 'x', tools: [{ type: 'function', name: 'shell' }] }] };
  const reported = (name: string) => (response({ text: '', thinking: '', tools: [{ id: 'c', name, arguments: '{"input":"1+1"}' }], finish: 'tool_calls', usage }, { model: 'g', id: 'r', request: lite }).output as any[])[0];
  t.match(reported('exec'), { type: 'custom_tool_call', name: 'exec', namespace: 'functions', input: '1+1' }, 'bare');
  t.match(reported('functions.exec'), { type: 'custom_tool_call', name: 'exec', namespace: 'functions' }, 'dotted');
  t.match(reported('other.wait'), { type: 'function_call', name: 'wait', namespace: 'other' });
  t.notOk('namespace' in reported('wait'), 'a bare name two namespaces have: as the model said it');
  t.notOk('namespace' in reported('shell'), 'a bare name a top-level tool has: that tool');
});
