// Property: streamed tool calls survive translation whatever the split of the upstream
// bytes. The upstream streams are the mock's own (OpenAI: indexed argument fragments;
// Ollama: whole calls), with tool names in several scripts so that splits land inside
// UTF-8 sequences. For every client API × provider, the chain's output is the same at
// every single split point and at fast-check's random multi-splits, and what the client
// assembles is the calls the mock made, with the right finish reason.

import t from 'tap';
import fc from 'fast-check';
import type { ChainSpec } from '../../../src/llm/chain/compile.ts';
import { createMockUpstream, mockToolArguments } from '../../../src/mock-upstream/server.ts';
import type { Api, ClientApi } from '../../../src/llm/translate/types.ts';
import { ctxFor, runChain } from './fixtures.suite.ts';
import { compileChain } from '../../../src/llm/chain/compile.ts';

const mock = await createMockUpstream();

interface Case {
  readonly calls: number;
  readonly tokens: number;
  readonly names: readonly string[];
}
const CASES: readonly Case[] = [
  { calls: 1, tokens: 0, names: ['f'] },
  { calls: 2, tokens: 3, names: ['météo_ü', '日本語'] },
  { calls: 3, tokens: 2, names: ['🎉tool'] },
];

async function upstreamBytes(provider: Api, c: Case): Promise<Buffer> {
  const tools = c.names.map((name) => ({ type: 'function', function: { name, parameters: { type: 'object' } } }));
  const messages = [{ role: 'user', content: 'go' }];
  const body = provider === 'openai' ? { model: 'm', messages, tools, stream: true, stream_options: { include_usage: true } } : { model: 'm', messages, tools };
  const res = await fetch(`${mock.url}${provider === 'openai' ? '/v1/chat/completions' : '/api/chat'}`, {
    method: 'POST',
    headers: { 'x-mock-tool-calls': String(c.calls), 'x-mock-tokens': String(c.tokens) },
    body: JSON.stringify(body),
  });
  return Buffer.from(await res.arrayBuffer());
}

interface Call {
  name: string;
  args: string;
}

/** The SSE events of a body as [event name, parsed data], independent of the broker's parser. */
function sse(body: string): Array<[string | null, any]> {
  return body
    .split('\n\n')
    .filter((b) => b !== '')
    .map((b) => {
      const lines = b.split('\n');
      const ev = lines.find((l) => l.startsWith('event: '))?.slice(7) ?? null;
      const data = lines.find((l) => l.startsWith('data: '))!.slice(6);
      return [ev, data === '[DONE]' ? '[DONE]' : JSON.parse(data)];
    });
}

/** What a client of `api` assembles from the output: the calls, the finish reason in that API's words. */
function assemble(api: ClientApi, out: string): { calls: Call[]; finish: unknown; text: string } {
  const calls: Call[] = [];
  let finish: unknown = null;
  let text = '';
  if (api === 'ollama') {
    for (const line of out.split('\n').filter((l) => l !== '')) {
      const j = JSON.parse(line);
      text += j.message?.content ?? '';
      for (const tc of j.message?.tool_calls ?? []) calls.push({ name: tc.function.name, args: JSON.stringify(tc.function.arguments) });
      if (j.done) finish = j.done_reason;
    }
  } else if (api === 'openai') {
    for (const [, d] of sse(out)) {
      if (d === '[DONE]') continue;
      const c = d.choices?.[0];
      text += c?.delta?.content ?? '';
      for (const tc of c?.delta?.tool_calls ?? []) {
        const slot = (calls[tc.index] ??= { name: '', args: '' });
        slot.name += tc.function?.name ?? '';
        slot.args += tc.function?.arguments ?? '';
      }
      finish = c?.finish_reason ?? finish;
    }
  } else if (api === 'responses') {
    const byItem = new Map<string, Call>();
    for (const [ev, d] of sse(out)) {
      if (ev !== d.type) throw new Error(`event ${ev} carries ${d.type}`);
      if (d.type === 'response.output_item.added' && d.item.type === 'function_call') byItem.set(d.item.id, { name: d.item.name, args: '' });
      if (d.type === 'response.function_call_arguments.delta') byItem.get(d.item_id)!.args += d.delta;
      if (d.type === 'response.output_text.delta') text += d.delta;
      if (d.type === 'response.completed') {
        finish = d.response.status;
        // The terminal Response holds the same calls as the deltas.
        const final = d.response.output.filter((o: any) => o.type === 'function_call').map((o: any) => ({ name: o.name, args: o.arguments }));
        if (JSON.stringify(final) !== JSON.stringify([...byItem.values()])) throw new Error('response.completed disagrees with the deltas');
      }
    }
    calls.push(...byItem.values());
  } else {
    const blocks: Array<Call | null> = [];
    for (const [ev, d] of sse(out)) {
      if (ev !== d.type) throw new Error(`event ${ev} carries ${d.type}`);
      if (d.type === 'content_block_start') blocks[d.index] = d.content_block.type === 'tool_use' ? { name: d.content_block.name, args: '' } : null;
      if (d.type === 'content_block_delta' && d.delta.type === 'input_json_delta') blocks[d.index]!.args += d.delta.partial_json;
      if (d.type === 'content_block_delta' && d.delta.type === 'text_delta') text += d.delta.text;
      if (d.type === 'message_delta') finish = d.delta.stop_reason;
    }
    for (const b of blocks) if (b !== null && b !== undefined) calls.push(b);
  }
  return { calls, finish, text };
}

/** One chat.completion.chunk event of a hand-written OpenAI stream. */
const chunk = (delta: Record<string, unknown>, finish: string | null = null): string => 'data: ' + JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] }) + '\n\n';

const FINISH: Record<ClientApi, unknown> = { openai: 'tool_calls', ollama: 'stop', responses: 'completed', anthropic: 'tool_use' };
const CLIENTS: readonly ClientApi[] = ['openai', 'ollama', 'responses', 'anthropic'];
// Wall-clock stamps (a Response's created_at) may differ between two runs.
const stable = (b: Buffer): string => b.toString('utf8').replace(/"created_at":\d+/g, '"created_at":0');

// Every upstream stream first: the mock is closed before the subtests run.
const streams = new Map<string, Buffer>();
for (const provider of ['openai', 'ollama'] as const) for (const c of CASES) streams.set(`${provider}/${c.calls}`, await upstreamBytes(provider, c));
await mock.close();

for (const provider of ['openai', 'ollama'] as const) {
  for (const c of CASES) {
    const up = streams.get(`${provider}/${c.calls}`)!;
    for (const client of CLIENTS) {
      const spec: ChainSpec = { client, provider, kind: 'chat', instrument: true, countTokens: true };
      const label = `${client} <- ${provider}, ${c.calls} call(s) of ${c.tokens} token(s)`;
      t.test(label, async (t) => {
        const whole = runChain(spec, ctxFor(), [up]);
        const want = stable(whole.bytes);
        const got = assemble(client, want);
        t.same(
          got.calls,
          Array.from({ length: c.calls }, (_, i) => ({ name: c.names[i % c.names.length], args: mockToolArguments(i, c.tokens) })),
          'the calls the upstream made',
        );
        t.equal(got.finish, FINISH[client], 'finish reason');
        t.equal(got.text, '', 'no call arrives as text');
        t.equal(whole.stream.stats.error, null, 'a clean stream');
        // Every single split point, each byte boundary, UTF-8 sequences included.
        let differ = -1;
        for (let i = 1; i < up.length && differ === -1; i++) {
          if (stable(runChain(spec, ctxFor(), [up.subarray(0, i), up.subarray(i)]).bytes) !== want) differ = i;
        }
        t.equal(differ, -1, `the same output at all ${up.length - 1} split points`);
        // And random multi-way splits.
        fc.assert(
          fc.property(fc.uniqueArray(fc.integer({ min: 1, max: up.length - 1 }), { maxLength: 24 }), (cuts) => {
            const at = [0, ...cuts.sort((a, b) => a - b), up.length];
            const chunks = at.slice(1).map((end, k) => up.subarray(at[k], end));
            return stable(runChain(spec, ctxFor(), chunks).bytes) === want;
          }),
          { numRuns: 60, seed: 0x7001 },
        );
      });
    }
  }
}

// An OpenAI-compatible upstream may interleave the fragments of parallel calls. A Messages
// block cannot be reopened once closed: the first call streams, the others come whole at
// the end, none loses a fragment (before, call 0's last fragment was dropped: input {}).
t.test('interleaved call fragments from an OpenAI upstream reach every client API whole', async (t) => {
  const fn = (index: number, args: string, name?: string) => ({ index, ...(name !== undefined ? { id: `call_${index}`, type: 'function', function: { name, arguments: args } } : { function: { arguments: args } }) });
  const up = Buffer.from(
    chunk({ role: 'assistant', tool_calls: [fn(0, '{"a"', 'f1'), fn(1, '{"b"', 'f2')] }) +
      chunk({ tool_calls: [fn(1, ':2}')] }) +
      chunk({ tool_calls: [fn(0, ':1}')] }) +
      chunk({}, 'tool_calls') +
      'data: [DONE]\n\n',
  );
  for (const client of CLIENTS) {
    const out = runChain({ client, provider: 'openai', kind: 'chat', instrument: true, countTokens: true }, ctxFor(), [up]);
    const got = assemble(client, out.bytes.toString('utf8'));
    const args = got.calls.map((c) => JSON.parse(c.args));
    t.same(got.calls.map((c) => c.name), ['f1', 'f2'], `${client}: both calls`);
    t.same(args, [{ a: 1 }, { b: 2 }], `${client}: every fragment in its call`);
    t.equal(got.finish, FINISH[client], `${client}: finish reason`);
  }
});

t.test('a call whose arguments are whole is closed when the next begins: it reaches Messages and Responses clients before the end, and whole if the stream is then cut', async (t) => {
  const fn = (index: number, args: string, name?: string) => ({ index, ...(name !== undefined ? { id: `call_${index}`, type: 'function', function: { name, arguments: args } } : { function: { arguments: args } }) });
  const first = Buffer.from(chunk({ role: 'assistant', tool_calls: [fn(0, '', 'f1')] }) + chunk({ tool_calls: [fn(0, '{"a":')] }) + chunk({ tool_calls: [fn(0, '1}')] }));
  const second = Buffer.from(chunk({ tool_calls: [fn(1, '{"b"', 'f2')] }));
  // The upstream is cut after the second call began: no [DONE], no finish reason.
  for (const client of ['anthropic', 'responses'] as const) {
    const s = compileChainFor(client);
    const before = s.push(first)?.toString() ?? '';
    const atSecond = s.push(second)?.toString() ?? '';
    const tail = s.end()?.toString() ?? '';
    t.notMatch(before, client === 'anthropic' ? /content_block_stop/ : /function_call_arguments\.done/, `${client}: the first call is open while it may still grow`);
    const events = sse(atSecond);
    if (client === 'anthropic') {
      const names = events.map(([e, d]) => `${e}:${d.delta?.type ?? d.content_block?.type ?? ''}`);
      t.same(names, ['content_block_delta:input_json_delta', 'content_block_stop:', 'content_block_start:tool_use'], 'the first block closes with its input, then the second opens');
      t.same(JSON.parse(events[0]![1].delta.partial_json), { a: 1 });
      t.match(tail, /event: error/, 'the cut ends with an error event');
    } else {
      const types = events.map(([, d]) => d.type);
      t.same(types.slice(0, 3), ['response.function_call_arguments.done', 'response.output_item.done', 'response.output_item.added'], 'the first item is done before the second is added');
      t.equal(events[1]![1].item.status, 'completed');
      t.same(JSON.parse(events[1]![1].item.arguments), { a: 1 });
      const failed = sse(tail).find(([, d]) => d.type === 'response.failed')![1];
      t.same(failed.response.output.map((i: any) => [i.name, i.status]), [['f1', 'completed'], ['f2', 'incomplete']], 'the finished call completed, the cut one incomplete');
    }
  }
});

function compileChainFor(client: 'anthropic' | 'responses') {
  return compileChain({ client, provider: 'openai', kind: 'chat', instrument: true, countTokens: true }).open(ctxFor());
}

// Some OpenAI-compatible servers split a call's name across fragments, others repeat it in
// every fragment. A Messages block and a Responses item name the call when they open, so
// they wait for the first piece of the arguments (before: a split name reached a Messages
// client cut short, "Re" for "Read").
t.test('a tool name split across fragments, or repeated in each, reaches every translated client API whole', async (t) => {
  const piece = (fn: Record<string, unknown>, id?: string) => ({ tool_calls: [{ index: 0, ...(id !== undefined ? { id, type: 'function' } : {}), function: fn }] });
  const split = Buffer.from(
    chunk({ role: 'assistant', ...piece({ name: 'Re', arguments: '' }, 'call_0') }) +
      chunk(piece({ name: 'ad', arguments: '' })) +
      chunk(piece({ arguments: '{"p":' })) +
      chunk(piece({ arguments: '1}' })) +
      chunk({}, 'tool_calls') +
      'data: [DONE]\n\n',
  );
  const repeated = Buffer.from(
    chunk({ role: 'assistant', ...piece({ name: 'Read', arguments: '' }, 'call_0') }) +
      chunk(piece({ name: 'Read', arguments: '{"p":' })) +
      chunk(piece({ name: 'Read', arguments: '1}' })) +
      chunk({}, 'tool_calls') +
      'data: [DONE]\n\n',
  );
  for (const [label, up] of [['split', split], ['repeated', repeated]] as const) {
    for (const client of ['anthropic', 'responses', 'ollama'] as const) {
      const out = runChain({ client, provider: 'openai', kind: 'chat', instrument: true, countTokens: true }, ctxFor(), [up]).bytes.toString('utf8');
      const got = assemble(client, out);
      t.same(got.calls, [{ name: 'Read', args: '{"p":1}' }], `${label} name, ${client}: the whole name in the call's first event`);
      if (client !== 'ollama') t.notMatch(out, /"name":"Re"[,}]|ReadRead/, `${label} name, ${client}: no event names a piece of it`);
    }
  }
  // The Messages block and the Responses item still open with the first piece of the arguments, not at the end.
  const s = compileChain({ client: 'anthropic', provider: 'openai', kind: 'chat', instrument: true, countTokens: true }).open(ctxFor());
  const head = s.push(split.subarray(0, split.indexOf('{\\"p\\":')))?.toString() ?? '';
  t.notMatch(head, /content_block_start/, 'no block before the name is whole');
  const more = s.push(split.subarray(split.indexOf('{\\"p\\":'), split.indexOf('1}')))?.toString() ?? '';
  t.match(more, /"content_block_start".*"name":"Read"/, 'the block opens with the first piece of the arguments');
});

// Ollama sends a call's arguments as an object; some compatible servers send the JSON text
// itself. It is that JSON, not a string to encode again (before: input {"arguments": "\"{...}\""}).
t.test('Ollama tool-call arguments sent as JSON text are not encoded twice', async (t) => {
  const line = (o: Record<string, unknown>) => JSON.stringify({ model: 'm', created_at: '2026-01-01T00:00:00Z', ...o }) + '\n';
  const up = Buffer.from(
    line({ message: { role: 'assistant', content: '', tool_calls: [{ function: { name: 'A', arguments: '{"a":1}' } }] }, done: false }) +
      line({ message: { role: 'assistant', content: '' }, done: true, done_reason: 'stop', prompt_eval_count: 3, eval_count: 2 }),
  );
  for (const client of ['anthropic', 'responses', 'openai'] as const) {
    const out = runChain({ client, provider: 'ollama', kind: 'chat', instrument: true, countTokens: true }, ctxFor(), [up]).bytes.toString('utf8');
    const got = assemble(client, out);
    t.same(got.calls.map((c) => [c.name, JSON.parse(c.args)]), [['A', { a: 1 }]], `${client}: the arguments object`);
  }
});

// A stream cut after a call's name but before any of its arguments: the call was never added
// to the Responses stream, so the failed Response does not list it either (before: an item the
// client had no output_item.added for).
t.test('a Responses stream cut before a call had arguments: the failed Response lists only what was streamed', async (t) => {
  const up = Buffer.from(chunk({ role: 'assistant', content: 'Let me look.' }) + chunk({ tool_calls: [{ index: 0, id: 'call_0', type: 'function', function: { name: 'Read', arguments: '' } }] }));
  const out = runChain({ client: 'responses', provider: 'openai', kind: 'chat', instrument: true, countTokens: true }, ctxFor(), [up]).bytes.toString('utf8');
  const events = sse(out).map(([, d]) => d);
  t.notOk(events.some((d) => d.type === 'response.output_item.added' && d.item.type === 'function_call'), 'the call was never added');
  const failed = events.find((d) => d.type === 'response.failed');
  t.same(failed.response.output.map((i: any) => i.type), ['message'], 'nor listed when the Response fails');
});

// Gemini's OpenAI-compatible endpoint sends each call whole in its own chunk without `index`
// (openai-python#2806); other servers fragment an index-less call, its id on the first piece
// only. Each new id is the next call, a piece without id continues the last (before: every
// call was index 0, merged into one: the second call's arguments glued onto the first's).
t.test('tool calls streamed without index reach every translated client API as separate calls', async (t) => {
  const whole = Buffer.from(
    chunk({ role: 'assistant', tool_calls: [{ id: 'call_a', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] }) +
      chunk({ tool_calls: [{ id: 'call_b', type: 'function', function: { name: 'read_file', arguments: '{"path":"/x"}' } }] }) +
      chunk({}, 'tool_calls') +
      'data: [DONE]\n\n',
  );
  const pieces = Buffer.from(
    chunk({ role: 'assistant', tool_calls: [{ id: 'call_a', type: 'function', function: { name: 'get_weather', arguments: '{"city":' } }] }) +
      chunk({ tool_calls: [{ function: { arguments: '"Paris"}' } }] }) +
      chunk({ tool_calls: [{ id: 'call_b', type: 'function', function: { name: 'read_file', arguments: '{"path":' } }] }) +
      chunk({ tool_calls: [{ function: { arguments: '"/x"}' } }] }) +
      chunk({}, 'tool_calls') +
      'data: [DONE]\n\n',
  );
  for (const [label, up] of [['whole', whole], ['in pieces', pieces]] as const) {
    for (const client of ['anthropic', 'responses', 'ollama'] as const) {
      const out = runChain({ client, provider: 'openai', kind: 'chat', instrument: true, countTokens: true }, ctxFor(), [up]).bytes.toString('utf8');
      const got = assemble(client, out);
      t.same(got.calls.map((c) => [c.name, JSON.parse(c.args)]), [['get_weather', { city: 'Paris' }], ['read_file', { path: '/x' }]], `${label}, ${client}: two calls`);
      t.equal(got.finish, FINISH[client], `${label}, ${client}: finish`);
    }
  }
});

t.test("a legacy finish_reason function_call with tool calls is a Messages client's tool_use", async (t) => {
  const up = Buffer.from(chunk({ role: 'assistant', tool_calls: [{ index: 0, id: 'call_a', type: 'function', function: { name: 'f', arguments: '{}' } }] }) + chunk({}, 'function_call') + 'data: [DONE]\n\n');
  const out = runChain({ client: 'anthropic', provider: 'openai', kind: 'chat', instrument: true, countTokens: true }, ctxFor(), [up]).bytes.toString('utf8');
  t.equal(assemble('anthropic', out).finish, 'tool_use');
});

// Ollama sends each call whole: its Messages block and Responses item close as it comes, so an
// upstream cut right after it leaves the client a whole call (before: a Messages tool_use block
// started with no input, a Responses item marked incomplete).
t.test('an Ollama call closes as it comes: a cut after it leaves every translated client a whole call', async (t) => {
  const line = JSON.stringify({ model: 'm', created_at: '2026-01-01T00:00:00Z', message: { role: 'assistant', content: '', tool_calls: [{ function: { name: 'read', arguments: { p: 1 } } }] }, done: false }) + '\n';
  const a = runChain({ client: 'anthropic', provider: 'ollama', kind: 'chat', instrument: true, countTokens: true }, ctxFor(), [Buffer.from(line)]).bytes.toString('utf8');
  const events = sse(a);
  const stop = events.findIndex(([e]) => e === 'content_block_stop');
  t.ok(stop > 0, 'the block is closed');
  t.same(JSON.parse(events.find(([, d]) => d.delta?.type === 'input_json_delta')![1].delta.partial_json), { p: 1 }, 'with its input');
  t.ok(events.findIndex(([e]) => e === 'error') > stop, 'before the error event of the cut');
  const r = runChain({ client: 'responses', provider: 'ollama', kind: 'chat', instrument: true, countTokens: true }, ctxFor(), [Buffer.from(line)]).bytes.toString('utf8');
  const failed = sse(r).find(([, d]) => d.type === 'response.failed')![1];
  t.same(failed.response.output.map((i: any) => [i.name, i.status, i.arguments]), [['read', 'completed', '{"p":1}']]);
});
