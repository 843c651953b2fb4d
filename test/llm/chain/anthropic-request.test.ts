// Anthropic Messages → chat: what an upstream chat API receives.
import t from 'tap';
import { anthropicDelta, anthropicDone, anthropicWriter, chatRequest } from '../../../src/llm/translate/anthropic_to_chat.ts';

t.test('several text blocks of one turn stay apart (one per line), as the system blocks do', async (t) => {
  const r = chatRequest({
    model: 'm',
    max_tokens: 5,
    system: [{ type: 'text', text: 'Be brief.' }, { type: 'text', text: 'Answer in English.' }],
    messages: [{ role: 'user', content: [{ type: 'text', text: 'Hi' }, { type: 'text', text: 'there' }] }],
  });
  t.same(r.messages, [
    { role: 'system', content: 'Be brief.\nAnswer in English.' },
    { role: 'user', content: 'Hi\nthere' },
  ]);
});

t.test("empty turns are refused as Anthropic refuses them; an empty final assistant turn is dropped", async (t) => {
  const req = (messages: unknown[]) => () => chatRequest({ model: 'm', max_tokens: 5, messages });
  t.throws(req([{ role: 'user', content: [] }]), { code: 'invalid_request', details: { field: 'messages[0].content' } }, 'no blocks');
  t.throws(req([{ role: 'user', content: '' }]), { code: 'invalid_request', details: { field: 'messages[0].content' } }, 'an empty string');
  t.throws(req([{ role: 'user', content: [{ type: 'text', text: '' }] }]), { code: 'invalid_request', details: { field: 'messages[0].content[0].text' } }, 'an empty text block');
  t.throws(req([{ role: 'assistant', content: '' }, { role: 'user', content: 'Hi' }]), { code: 'invalid_request' }, 'an empty assistant turn before the last');
  const r = chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }, { role: 'assistant', content: '' }] });
  t.same(r.messages, [{ role: 'user', content: 'Hi' }], 'a final empty assistant turn (nothing to prefill) is dropped');
});

t.test('while the upstream only reasons (dropped), a ping every 32 of its events keeps the stream visibly alive', async (t) => {
  const w = anthropicWriter({ model: 'm', id: 'r1', promptEstimate: 3 });
  const thinking = { text: '', thinking: 'hmm ', tools: null, finish: null, usage: null };
  let out = '';
  for (let i = 0; i < 64; i++) out += anthropicDelta(w, thinking);
  const pings = out.split('event: ping\n').length - 1;
  t.equal(pings, 3, 'the one after message_start, then one per 32 reasoning events');
  t.notMatch(out, /hmm/, 'the reasoning itself is not sent');
  const text = anthropicDelta(w, { ...thinking, text: 'Hi', thinking: '' });
  t.notMatch(text, /ping/, 'text is no reason to ping');
  t.match(text, /text_delta/);
});

t.test("while a tool call's arguments are held for its block's end, a ping every 32 fragments keeps the stream visibly alive", async (t) => {
  const w = anthropicWriter({ model: 'm', id: 'r1', promptEstimate: 3 });
  const frag = (args: string, first = false) => ({ text: '', thinking: '', tools: [{ index: 0, ...(first ? { id: 'call_1', name: 'write' } : {}), arguments: args }], finish: null, usage: null });
  let out = anthropicDelta(w, frag('{"text":"', true));
  for (let i = 0; i < 64; i++) out += anthropicDelta(w, frag('x'));
  out += anthropicDelta(w, frag('"}'));
  t.equal(out.split('event: ping\n').length - 1, 3, 'the one after message_start, then one per 32 held fragments');
  t.notMatch(out, /input_json_delta/, 'the arguments themselves wait for the block to close');
  const done = anthropicDone(w);
  const delta = done.split('\n').find((l) => l.includes('input_json_delta'))!;
  t.same(JSON.parse(JSON.parse(delta.slice('data: '.length)).delta.partial_json), { text: 'x'.repeat(64) }, 'then the whole input, unchanged');
});

t.test("metadata.user_id is the chat `user`; one past OpenAI's 64 characters (Claude Code's) goes as its SHA-256", async (t) => {
  const req = (user_id: string) => chatRequest({ model: 'm', max_tokens: 5, metadata: { user_id }, messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(req('user-1')['user'], 'user-1', 'a short one as it is');
  const long = 'user_' + 'a'.repeat(64) + '_account__session_' + '0'.repeat(36);
  const hashed = req(long)['user'] as string;
  t.match(hashed, /^[0-9a-f]{64}$/, 'exactly 64 characters');
  t.equal(req(long)['user'], hashed, 'the same user, the same value');
  t.not(req(long + 'x')['user'], hashed, 'another user, another value');
});

t.test("a document with a text source is its text (title and context first); a PDF is refused naming the block", async (t) => {
  const r = chatRequest({
    model: 'm',
    max_tokens: 5,
    messages: [
      {
        role: 'user',
        content: [
          { type: 'document', title: 'notes.txt', source: { type: 'text', media_type: 'text/plain', data: 'line one' } },
          { type: 'document', source: { type: 'content', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] } },
          { type: 'text', text: 'Summarise.' },
        ],
      },
    ],
  });
  t.same(r.messages, [{ role: 'user', content: 'notes.txt\nline one\na\nb\nSummarise.' }]);
  const pdf = () => chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'document', source: { type: 'base64', media_type: 'application/pdf', data: 'JVBERi0=' } }] }] });
  t.throws(pdf, { code: 'invalid_request', details: { field: 'messages[0].content[0].source' } });
});

t.test("a system message between the turns (Claude Code's mid-conversation-system) is a chat system message where it stands", async (t) => {
  const r = chatRequest({
    model: 'm',
    max_tokens: 5,
    system: 'You are Claude Code.',
    messages: [
      { role: 'user', content: 'Hi' },
      { role: 'system', content: 'Available agent types for the Agent tool: general.' },
      { role: 'assistant', content: 'Hello.' },
      { role: 'system', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] },
      { role: 'user', content: 'Go on.' },
    ],
  });
  t.same(r.messages.map((m) => [m.role, m.content]), [
    ['system', 'You are Claude Code.'],
    ['user', 'Hi'],
    ['system', 'Available agent types for the Agent tool: general.'],
    ['assistant', 'Hello.'],
    ['system', 'a\nb'],
    ['user', 'Go on.'],
  ]);
  const bad = (content: unknown) => () => chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }, { role: 'system', content }] });
  t.throws(bad(''), { code: 'invalid_request', details: { field: 'messages[1].content' } }, 'empty');
  t.throws(bad([{ type: 'image', source: {} }]), { code: 'invalid_request', details: { field: 'messages[1].content[0]' } }, 'not text');
  t.throws(() => chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'tool', content: 'x' }] }), { code: 'invalid_request', details: { field: 'messages[0].role' } }, 'another role');
});

t.test("server tools (Claude Code's WebSearch sends web_search_20250305) are left out; forced by tool_choice, 400; a tool with no schema, 400", async (t) => {
  const tools = [
    { name: 'Bash', description: 'run', input_schema: { type: 'object' } },
    { type: 'web_search_20250305', name: 'web_search', max_uses: 8 },
    { type: 'web_fetch_20250910', name: 'web_fetch' },
  ];
  const r = chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'search' }], tools });
  t.same((r.tools as any[]).map((x) => x.function.name), ['Bash']);
  const only = chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'search' }], tools: [tools[1]] });
  t.equal(only.tools, undefined, 'nothing left to offer: no tools');
  t.throws(() => chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], tools, tool_choice: { type: 'tool', name: 'web_search' } }), { code: 'invalid_request', details: { field: 'tool_choice.name' } });
  t.throws(() => chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'bash_20250124', name: 'bash' }] }), { code: 'invalid_request', details: { field: 'tools[0]' } });
});

t.test("a document in a tool_result is its text; a server tool's blocks in the history (a session begun against Anthropic) are left out", async (t) => {
  const r = chatRequest({
    model: 'm',
    max_tokens: 5,
    messages: [
      { role: 'user', content: 'Search, then read the file.' },
      {
        role: 'assistant',
        content: [
          { type: 'server_tool_use', id: 'srvtoolu_1', name: 'web_search', input: { query: 'x' } },
          { type: 'web_search_tool_result', tool_use_id: 'srvtoolu_1', content: [{ type: 'web_search_result', url: 'https://e.x', title: 'E', encrypted_content: 'zz' }] },
          { type: 'text', text: 'Found it.' },
          { type: 'tool_use', id: 'toolu_1', name: 'read', input: { p: 1 } },
        ],
      },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: [{ type: 'document', title: 'f.txt', source: { type: 'text', media_type: 'text/plain', data: 'file body' } }] }] },
    ],
  });
  t.same(r.messages, [
    { role: 'user', content: 'Search, then read the file.' },
    { role: 'assistant', content: 'Found it.', tool_calls: [{ id: 'toolu_1', type: 'function', function: { name: 'read', arguments: '{"p":1}' } }] },
    { role: 'tool', tool_call_id: 'toolu_1', content: 'f.txt\nfile body' },
  ]);
  t.throws(() => chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'bogus' }] }] }), { code: 'invalid_request', details: { field: 'messages[0].content[0].type' } }, 'an unknown block is still refused');
});

t.test('a tool_choice naming a tool that is not in tools is 400, as Anthropic answers', async (t) => {
  const tools = [{ name: 'read', input_schema: { type: 'object' } }];
  t.throws(() => chatRequest({ model: 'm', max_tokens: 5, tools, tool_choice: { type: 'tool', name: 'nope' }, messages: [{ role: 'user', content: 'x' }] }), { code: 'invalid_request', details: { field: 'tool_choice.name' } });
  t.throws(() => chatRequest({ model: 'm', max_tokens: 5, tool_choice: { type: 'tool', name: 'read' }, messages: [{ role: 'user', content: 'x' }] }), { code: 'invalid_request', details: { field: 'tool_choice.name' } }, 'no tools at all');
  const r = chatRequest({ model: 'm', max_tokens: 5, tools, tool_choice: { type: 'tool', name: 'read' }, messages: [{ role: 'user', content: 'x' }] });
  t.same(r['tool_choice'], { type: 'function', function: { name: 'read' } });
});

// Claude Code with ENABLE_TOOL_SEARCH: MCP tools sent deferred, its ToolSearch tool's result
// references the tools it found (tool_reference blocks), which Anthropic then loads.
t.test("Claude Code's client-run tool search: a deferred tool is offered once a tool_reference loads it; the reference is a tool message's text", async (t) => {
  const tools = [
    { name: 'ToolSearch', description: 'Find tools', input_schema: { type: 'object', properties: { query: { type: 'string' } } } },
    { name: 'mcp__notes__write_note', description: 'Write a note', input_schema: { type: 'object' }, defer_loading: true },
    { name: 'mcp__notes__delete_note', input_schema: { type: 'object' }, defer_loading: true },
  ];
  const first = chatRequest({ model: 'm', max_tokens: 10, tools, messages: [{ role: 'user', content: 'note it' }] });
  t.same((first.tools as any[]).map((x) => x.function.name), ['ToolSearch'], 'deferred tools wait to be found');
  const next = chatRequest({
    model: 'm',
    max_tokens: 10,
    tools,
    messages: [
      { role: 'user', content: 'note it' },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'tu1', name: 'ToolSearch', input: { query: 'notes' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'tu1', content: [{ type: 'tool_reference', tool_name: 'mcp__notes__write_note' }] }] },
    ],
  });
  t.same((next.tools as any[]).map((x) => x.function.name), ['ToolSearch', 'mcp__notes__write_note'], 'the one found is offered, with its schema');
  t.match(next.messages.at(-1), { role: 'tool', tool_call_id: 'tu1', content: 'Tools loaded: mcp__notes__write_note' });
});

t.test('a search_result block (in a turn or a tool_result) is its title, source and text; thinking between_tools is thinking off (Ollama think: false)', async (t) => {
  const sr = { type: 'search_result', source: 'https://docs.example/a', title: 'A', content: [{ type: 'text', text: 'first' }, { type: 'text', text: 'second' }] };
  const r = chatRequest({
    model: 'm',
    max_tokens: 5,
    thinking: { type: 'between_tools' },
    messages: [
      { role: 'user', content: [sr, { type: 'text', text: 'Sum up.' }] },
      { role: 'assistant', content: [{ type: 'tool_use', id: 't1', name: 'search', input: { q: 'a' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 't1', content: [sr] }] },
    ],
  });
  t.equal(r.messages[0]!.content, 'A\nhttps://docs.example/a\nfirst\nsecond\nSum up.');
  t.equal(r['think'], false, 'between_tools: thinking turned off');
  t.match(r.messages[2], { role: 'tool', tool_call_id: 't1', content: 'A\nhttps://docs.example/a\nfirst\nsecond' });
  t.throws(() => chatRequest({ model: 'm', max_tokens: 5, messages: [{ role: 'user', content: [{ ...sr, content: 'x' }] }] }), { code: 'invalid_request', details: { field: 'messages[0].content[0].content' } });
  t.throws(() => chatRequest({ model: 'm', max_tokens: 5, thinking: { type: 'sometimes' }, messages: [{ role: 'user', content: 'x' }] }), { code: 'invalid_request', details: { field: 'thinking.type' } });
});

t.test('reasoning a client did not ask for (dropped) is still output the upstream generated: the usage without an upstream figure counts it, in every writer', async (t) => {
  const { responsesWriter, responsesDelta, responsesDone } = await import('../../../src/llm/translate/responses_to_chat.ts');
  const { ndjsonWriter, chatChunk, chatDone } = await import('../../../src/llm/translate/ollama_to_openai.ts');
  const reasoning = { text: '', thinking: 'hmm ', tools: null, finish: null, usage: null };
  const text = { ...reasoning, text: 'Hi', thinking: '' };
  // Messages without `thinking`: four reasoning events, three text events, no usage from upstream.
  const a = anthropicWriter({ model: 'm', id: 'r1', promptEstimate: 3 });
  let out = '';
  for (let i = 0; i < 4; i++) out += anthropicDelta(a, reasoning);
  for (let i = 0; i < 3; i++) out += anthropicDelta(a, text);
  out += anthropicDone(a);
  t.notMatch(out, /hmm/, 'the reasoning is not shown');
  const delta = out.split('\n').find((l) => l.includes('"message_delta"'))!;
  t.equal(JSON.parse(delta.slice('data: '.length)).usage.output_tokens, 7, 'Messages: 4 + 3');
  // Responses: reasoning after the text began is dropped, and counted.
  const r = responsesWriter({ model: 'm', id: 'r2', promptEstimate: 3, request: { model: 'm', input: 'hi' } } as never);
  let rout = responsesDelta(r, text) + responsesDelta(r, reasoning) + responsesDelta(r, reasoning);
  rout += responsesDone(r);
  const completed = rout.split('\n').find((l) => l.includes('"response.completed"'))!;
  t.equal(JSON.parse(completed.slice('data: '.length)).response.usage.output_tokens, 3, 'Responses: 1 + 2 late');
  // An Ollama client with think: false: reasoning_content dropped, counted.
  const o = ndjsonWriter({ model: 'g', id: 'r3', request: { model: 'g', think: false, messages: [] } } as never);
  const chunk = (delta: Record<string, unknown>) => ({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'up', choices: [{ index: 0, delta, finish_reason: null }] }) as never;
  let lines = chatChunk(o, chunk({ reasoning_content: 'hmm' })) + chatChunk(o, chunk({ reasoning_content: 'hmm' })) + chatChunk(o, chunk({ content: 'Hi' }));
  lines += chatDone(o);
  t.notMatch(lines, /hmm/, 'not shown');
  t.equal(JSON.parse(lines.trim().split('\n').at(-1)!).eval_count, 3, 'Ollama: 2 + 1');
});
