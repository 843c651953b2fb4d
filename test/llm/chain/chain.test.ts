import t from 'tap';
import { KEEPALIVE_HOLD_MS, chainKey, compileChain, type ChainSpec } from '../../../src/llm/chain/compile.ts';
import { createStagedBaseline, runPipeline } from '../../../src/llm/chain/staged-baseline.ts';
import type { Api, Kind } from '../../../src/llm/translate/types.ts';
import { GARBAGE, ROUTES, clientText, ctxFor, openaiStream, ollamaStream, runChain, sseData, toBytes, upstreamStream } from './fixtures.suite.ts';
import { MALFORMED_RUN_LIMIT, MALFORMED_RUN_MESSAGE } from '../../../src/llm/chain/probe.ts';

function spec(client: Api, provider: Api, kind: Kind, flags: Partial<ChainSpec> = {}): ChainSpec {
  return { client, provider, kind, instrument: true, countTokens: true, ...flags };
}

const TOKENS = ['Hé', 'llo', ' 世界', ' 🎉'];

// ---- one golden stream per translated route ----

t.test('Ollama /api/chat stream → OpenAI chat.completion.chunk events', async (t) => {
  const up = ollamaStream('chat', { tokens: ['Hé', ' 🎉'], promptTokens: 5 });
  const { bytes, stream } = runChain(spec('openai', 'ollama', 'chat'), ctxFor({ includeUsage: true }), [Buffer.from(up)]);
  const head = 'data: {"id":"chatcmpl-req-42","object":"chat.completion.chunk","created":1723003053,"model":"my-model","choices":';
  t.equal(
    bytes.toString(),
    head +
      '[{"index":0,"delta":{"role":"assistant","content":"Hé"},"logprobs":null,"finish_reason":null}]}\n\n' +
      head +
      '[{"index":0,"delta":{"content":" 🎉"},"logprobs":null,"finish_reason":null}]}\n\n' +
      head +
      '[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n' +
      head +
      '[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}\n\n' +
      'data: [DONE]\n\n',
  );
  t.same(stream.stats, {
    promptTokens: 5,
    completionTokens: 2,
    finishReason: 'stop',
    firstTokenAt: 10,
    lastTokenAt: 20,
    chunks: 3,
    sawTerminal: true,
    usageFromUpstream: true,
    error: null,
    malformed: 0,
  });
  t.equal(stream.truncated, false);
});

t.test('Ollama /api/generate stream → OpenAI text_completion events, no usage chunk unless asked', async (t) => {
  const up = ollamaStream('completion', { tokens: ['def', ' f'], finish: 'length' });
  const { bytes } = runChain(spec('openai', 'ollama', 'completion'), ctxFor(), [Buffer.from(up)]);
  const head = 'data: {"id":"cmpl-req-42","object":"text_completion","created":1723003053,"model":"my-model","choices":';
  t.equal(
    bytes.toString(),
    head +
      '[{"text":"def","index":0,"logprobs":null,"finish_reason":null}]}\n\n' +
      head +
      '[{"text":" f","index":0,"logprobs":null,"finish_reason":null}]}\n\n' +
      head +
      '[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}]}\n\n' +
      'data: [DONE]\n\n',
  );
});

t.test('OpenAI chat.completion.chunk stream → Ollama /api/chat lines', async (t) => {
  const up = openaiStream('chat', { tokens: ['Hé', ' 🎉'], finish: 'length', promptTokens: 9 });
  // Ollama's durations, as the broker saw them (clients compute tokens/s from eval_duration):
  // opened at 0 ms, first token at 30, done at 100.
  const times = [0, 30, 100];
  const { bytes, stream } = runChain(spec('ollama', 'openai', 'chat'), ctxFor({ durationClock: () => times.shift()! }), [Buffer.from(up)]);
  const head = '{"model":"my-model","created_at":"2024-07-26T13:20:00.000Z",';
  t.equal(
    bytes.toString(),
    head +
      '"message":{"role":"assistant","content":"Hé"},"done":false}\n' +
      head +
      '"message":{"role":"assistant","content":" 🎉"},"done":false}\n' +
      head +
      '"message":{"role":"assistant","content":""},"done_reason":"length","done":true,"total_duration":100000000,"load_duration":0,"prompt_eval_count":9,"prompt_eval_duration":30000000,"eval_count":2,"eval_duration":70000000}\n',
  );
  t.equal(stream.stats.finishReason, 'length');
  t.equal(stream.stats.chunks, 6, 'role chunk, 2 tokens, finish, usage, [DONE]');
});

t.test('OpenAI text_completion stream → Ollama /api/generate lines', async (t) => {
  const up = openaiStream('completion', { tokens: ['The', ' sky'] });
  const { bytes } = runChain(spec('ollama', 'openai', 'completion'), ctxFor(), [Buffer.from(up)]);
  const head = '{"model":"my-model","created_at":"2024-07-26T13:20:00.000Z",';
  t.equal(
    bytes.toString(),
    head +
      '"response":"The","done":false}\n' +
      head +
      '"response":" sky","done":false}\n' +
      head +
      '"response":"","done":true,"done_reason":"stop","total_duration":2,"load_duration":0,"prompt_eval_count":11,"prompt_eval_duration":1,"eval_count":2,"eval_duration":1}\n',
  );
});

// ---- pass-through ----

t.test('OpenAI → OpenAI forwards the upstream bytes and drops only the usage chunk we added', async (t) => {
  const up = Buffer.from(openaiStream('chat', { tokens: TOKENS, comments: true }));
  const dropped = runChain(spec('openai', 'openai', 'chat'), ctxFor({ includeUsage: false }), [up]);
  const kept = runChain(spec('openai', 'openai', 'chat'), ctxFor({ includeUsage: true }), [up]);
  t.equal(kept.bytes.toString(), up.toString(), 'client asked include_usage: byte for byte');
  const events = sseData(dropped.bytes.toString());
  t.notOk(
    events.some((d) => d.includes('"prompt_tokens"')),
    'usage chunk dropped',
  );
  t.equal(events.at(-1), '[DONE]');
  t.ok(dropped.bytes.toString().includes(': keep-alive\n\n'), 'comments forwarded');
  t.equal(up.toString().replace(/data: \{[^\n]*"prompt_tokens"[^\n]*\n\n/, ''), dropped.bytes.toString(), 'everything else is the same bytes');
  t.same(dropped.stream.stats.completionTokens, 4, 'usage still counted from the dropped chunk');
  t.equal(dropped.stream.stats.usageFromUpstream, true);
  t.equal(dropped.stream.stats.promptTokens, 11);
});

t.test('pass-through output is a view of the pushed chunk when nothing is dropped', async (t) => {
  const up = Buffer.from(openaiStream('chat', { tokens: ['a'] }).split('data: [DONE]')[0]!);
  const s = compileChain(spec('openai', 'openai', 'chat', { instrument: false, countTokens: false })).open(ctxFor({ includeUsage: true }));
  const out = s.push(up) as Uint8Array;
  t.equal(out.buffer, up.buffer, 'no copy');
});

t.test('Ollama → Ollama forwards lines as they came', async (t) => {
  const up = Buffer.from(ollamaStream('chat', { tokens: TOKENS }));
  const { bytes, stream } = runChain(spec('ollama', 'ollama', 'chat'), ctxFor(), [up]);
  t.ok(bytes.equals(up));
  t.equal(stream.stats.completionTokens, 4);
  t.equal(stream.stats.promptTokens, 11);
});

// ---- token counting and instrumentation ----

t.test('without upstream usage, completion tokens are counted token events', async (t) => {
  for (const [client, provider] of [
    ['openai', 'openai'],
    ['ollama', 'openai'],
    ['openai', 'ollama'],
    ['ollama', 'ollama'],
  ] as const) {
    const up = upstreamStream(provider, 'chat', { tokens: ['a', '', 'b', 'c'], usage: false });
    const { stream } = runChain(spec(client, provider, 'chat'), ctxFor(), [up]);
    t.equal(stream.stats.completionTokens, 3, `${client} <- ${provider}`);
    t.equal(stream.stats.usageFromUpstream, false);
    t.equal(stream.stats.promptTokens, 0);
  }
});

t.test('instrument calls onFirstToken once and onToken per token with the previous time', async (t) => {
  const calls: unknown[] = [];
  let now = 100;
  const ctx = ctxFor({
    now: () => (now += 5),
    onFirstToken: (at) => calls.push(['first', at]),
    onToken: (at, prev) => calls.push(['token', at, prev]),
  });
  const { stream } = runChain(spec('openai', 'ollama', 'chat'), ctx, [upstreamStream('ollama', 'chat', { tokens: ['a', '', 'b'] })]);
  t.same(calls, [
    ['first', 105],
    ['token', 105, null],
    ['token', 110, 105],
  ]);
  t.equal(stream.stats.firstTokenAt, 105);
  t.equal(stream.stats.lastTokenAt, 110);
});

t.test('disabled stages are absent: no clock reads, no counts', async (t) => {
  let reads = 0;
  const ctx = ctxFor({
    now: () => {
      reads++;
      return 0;
    },
  });
  for (const provider of ['openai', 'ollama'] as const) {
    const { stream, bytes } = runChain(spec('openai', provider, 'chat', { instrument: false, countTokens: false }), ctx, [
      upstreamStream(provider, 'chat', { tokens: TOKENS }),
    ]);
    t.equal(stream.stats.completionTokens, 0);
    t.equal(stream.stats.firstTokenAt, null);
    t.equal(stream.stats.sawTerminal, true);
    t.equal(clientText('openai', 'chat', bytes), TOKENS.join(''));
  }
  t.equal(reads, 0);
});

// ---- terminal events ----

t.test('an upstream cut before its terminal event ends with the error event, and no [DONE]', async (t) => {
  for (const client of ['openai', 'ollama'] as const) {
    for (const provider of ['openai', 'ollama'] as const) {
      const up = upstreamStream(provider, 'chat', { tokens: TOKENS, truncate: true });
      const cut = up.subarray(0, up.length - 7); // and mid-event
      const { bytes, stream } = runChain(spec(client, provider, 'chat'), ctxFor(), [cut]);
      const text = bytes.toString();
      t.equal(stream.truncated, true, `${client} <- ${provider}`);
      t.equal(stream.stats.sawTerminal, false);
      t.same(stream.stats.error, { code: 'upstream_error', message: 'upstream stream ended before the response was complete' });
      if (client === 'openai') {
        t.notOk(text.includes('[DONE]'));
        t.same(JSON.parse(sseData(text).at(-1)!), {
          error: { message: 'upstream stream ended before the response was complete', type: 'server_error', code: 'upstream_error', param: null, request_id: 'req-42' },
        });
      } else {
        t.equal(text.split('\n').at(-2), '{"error":"upstream stream ended before the response was complete","code":"upstream_error","request_id":"req-42"}');
        t.notOk(text.includes('"done":true'));
      }
      t.equal(clientText(client, 'chat', Buffer.from(text.replace(/.*"error".*\n\n?$/, ''))), TOKENS.slice(0, -1).join(''), 'the whole events before the cut arrived');
    }
  }
});

t.test('finish and usage but no [DONE]: end() writes the missing terminal', async (t) => {
  const up = upstreamStream('openai', 'chat', { tokens: ['a'], noDone: true });
  const pass = runChain(spec('openai', 'openai', 'chat'), ctxFor(), [up]);
  t.equal(pass.stream.truncated, false);
  t.ok(pass.bytes.toString().endsWith('data: [DONE]\n\n'));
  const cross = runChain(spec('ollama', 'openai', 'chat'), ctxFor(), [up]);
  t.match(cross.bytes.toString(), /"done":true,"total_duration":2,"load_duration":0,"prompt_eval_count":11,"prompt_eval_duration":1,"eval_count":1,"eval_duration":1\}\n$/);
});

t.test('fail() mid-stream: OpenAI client gets the error event and no [DONE]; Ollama client the error line', async (t) => {
  const up = upstreamStream('ollama', 'chat', { tokens: TOKENS, truncate: true });
  const s = compileChain(spec('openai', 'ollama', 'chat')).open(ctxFor());
  t.ok(toBytes(s.push(up)).length > 0);
  const ev = s.fail('upstream timed out', 'upstream_timeout');
  t.equal(ev, 'data: {"error":{"message":"upstream timed out","type":"server_error","code":"upstream_timeout","param":null,"request_id":"req-42"}}\n\n');
  t.equal(s.closed, true);
  t.equal(s.push(Buffer.from('{"done":true}\n')), null, 'input after fail is ignored');
  t.equal(s.end(), null, 'and end() owes nothing: no [DONE]');
  t.equal(s.fail('again', 'internal'), '', 'only one terminal event');
  t.same(s.stats.error, { code: 'upstream_timeout', message: 'upstream timed out' });

  const o = compileChain(spec('ollama', 'ollama', 'chat')).open(ctxFor());
  o.push(up);
  t.equal(o.fail('upstream timed out', 'upstream_timeout'), '{"error":"upstream timed out","code":"upstream_timeout","request_id":"req-42"}\n');
});

t.test('fail() after a complete stream writes nothing', async (t) => {
  const s = compileChain(spec('openai', 'openai', 'chat')).open(ctxFor());
  s.push(upstreamStream('openai', 'chat', { tokens: ['a'] }));
  t.equal(s.fail('late', 'internal'), '');
  t.equal(s.stats.error, null);
});

t.test('an upstream error event mid-stream becomes the client error event', async (t) => {
  const oaErr = 'data: {"error":{"message":"The server had an error while processing your request.","type":"server_error","param":null,"code":null}}\n\n';
  const oaUp = openaiStream('chat', { tokens: ['a'], truncate: true }) + oaErr + 'data: [DONE]\n\n';
  const olUp = ollamaStream('chat', { tokens: ['a'], truncate: true }) + '{"error":"an error was encountered while running the model: unexpected EOF"}\n';
  for (const client of ['openai', 'ollama'] as const) {
    for (const [provider, up] of [
      ['openai', oaUp],
      ['ollama', olUp],
    ] as const) {
      const { bytes, stream } = runChain(spec(client, provider, 'chat'), ctxFor(), [Buffer.from(up)]);
      const text = bytes.toString();
      const message = provider === 'openai' ? 'The server had an error while processing your request.' : 'an error was encountered while running the model: unexpected EOF';
      t.same(stream.stats.error, { code: 'upstream_error', message }, `${client} <- ${provider}`);
      t.equal(stream.truncated, false);
      if (client === 'openai') {
        t.notOk(text.includes('[DONE]'), 'no [DONE] after an error');
        t.same(JSON.parse(sseData(text).at(-1)!).error, { message, type: 'server_error', code: 'upstream_error', param: null, request_id: 'req-42' });
      } else {
        t.equal(text.split('\n').at(-2), JSON.stringify({ error: message, code: 'upstream_error', request_id: 'req-42' }));
      }
      t.equal(clientText(client, 'chat', Buffer.from(text.replace(/(data: )?\{"error".*\n\n?$/, ''))), 'a');
    }
  }
});

t.test('an SSE `event: error` block is an upstream error too', async (t) => {
  const up = openaiStream('chat', { tokens: ['a'], truncate: true }) + 'event: error\ndata: {"error":{"message":"overloaded"}}\n\n';
  const { stream } = runChain(spec('openai', 'openai', 'chat'), ctxFor(), [Buffer.from(up)]);
  t.same(stream.stats.error, { code: 'upstream_error', message: 'overloaded' });
});

t.test('garbage frames are dropped and counted on every route, never forwarded; a run of them ends the stream', async (t) => {
  for (const route of ROUTES) {
    const label = `${route.client}<-${route.provider}/${route.kind}`;
    const s = spec(route.client, route.provider, route.kind);
    const few = upstreamStream(route.provider, route.kind, { tokens: ['a', 'b'], garbage: { at: 1, n: 3 } });
    const { bytes, stream } = runChain(s, ctxFor(), [few]);
    t.equal(stream.stats.malformed, 3, `${label}: counted`);
    t.equal(stream.stats.error, null, `${label}: the stream goes on`);
    t.equal(clientText(route.client, route.kind, bytes), 'ab', label);
    for (const g of GARBAGE) t.notOk(bytes.includes(g), `${label}: never forwarded`);
    const run = upstreamStream(route.provider, route.kind, { tokens: ['a', 'b'], garbage: { at: 1, n: MALFORMED_RUN_LIMIT } });
    const ended = runChain(s, ctxFor(), [run]);
    t.same(ended.stream.stats.error, { code: 'upstream_error', message: MALFORMED_RUN_MESSAGE }, label);
    t.match(ended.bytes.toString(), /"error"/, `${label}: an explicit error event`);
  }
});

t.test('pass-through: an SSE block without data that is not a comment or field is garbage too, never forwarded', async (t) => {
  // It used to go out as it came ("comment or keep-alive"): text, HTML, raw bytes.
  const junk = [Buffer.from('upstream hiccup\n\n'), Buffer.from([0xff, 0xfe, 0x00, 0x01, 0x0a, 0x0a]), Buffer.from('<html>502</html>\n\n')];
  const up = openaiStream('chat', { tokens: ['a', 'b'] });
  const cut = up.indexOf('\n\n') + 2;
  const chunks = [Buffer.from(up.slice(0, cut)), ...junk, Buffer.from(': keep-alive\n\nevent: ping\n\n'), Buffer.from(up.slice(cut))];
  const s = spec('openai', 'openai', 'chat');
  const { bytes, stream } = runChain(s, ctxFor(), chunks);
  const base = await runPipeline(s, ctxFor(), chunks);
  for (const [name, out, malformed] of [['compiled', bytes, stream.stats.malformed], ['baseline', base.output, base.stats.malformed]] as const) {
    t.equal(malformed, 3, `${name}: counted`);
    t.notOk(out.includes('hiccup') || out.includes('<html>') || out.includes(Buffer.from([0xff, 0xfe])), `${name}: never forwarded`);
    t.ok(out.includes(': keep-alive\n\nevent: ping\n\n'), `${name}: comments and fields still are`);
    t.equal(clientText('openai', 'chat', out), 'ab', name);
  }
});

// ---- tool calls through the stream ----

t.test('OpenAI streamed tool-call fragments → one Ollama tool_calls line', async (t) => {
  const base = { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1722000000, model: 'gpt-4o' };
  const ev = (delta: unknown, finish: string | null): string => 'data: ' + JSON.stringify({ ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] }) + '\n\n';
  const up =
    ev({ role: 'assistant', content: null, tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '' } }] }, null) +
    ev({ tool_calls: [{ index: 0, function: { arguments: '{"ci' } }] }, null) +
    ev({ tool_calls: [{ index: 0, function: { arguments: 'ty":"Paris"}' } }] }, null) +
    ev({}, 'tool_calls') +
    'data: [DONE]\n\n';
  const { bytes, stream } = runChain(spec('ollama', 'openai', 'chat'), ctxFor(), [Buffer.from(up)]);
  const lines = bytes
    .toString()
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  t.same(lines[0].message, { role: 'assistant', content: '', tool_calls: [{ id: 'call_1', function: { name: 'get_weather', arguments: { city: 'Paris' } } }] }, "the upstream's call id goes on (Ollama 0.12.10+ clients send it back)");
  t.equal(lines[1].done, true);
  t.equal(stream.stats.finishReason, 'tool_calls');
  t.equal(stream.stats.completionTokens, 2, 'argument fragments are token events');
});

t.test('Ollama tool_calls line → OpenAI tool_calls delta and finish_reason tool_calls', async (t) => {
  const up =
    JSON.stringify({
      model: 'llama3.2',
      created_at: '2024-07-22T20:33:28.123648Z',
      message: { role: 'assistant', content: '', tool_calls: [{ function: { name: 'get_weather', arguments: { city: 'Paris' } } }] },
      done: false,
    }) +
    '\n' +
    JSON.stringify({ model: 'llama3.2', created_at: '2024-07-22T20:33:28.2Z', message: { role: 'assistant', content: '' }, done_reason: 'stop', done: true, prompt_eval_count: 3, eval_count: 4 }) +
    '\n';
  const { bytes } = runChain(spec('openai', 'ollama', 'chat'), ctxFor(), [Buffer.from(up)]);
  const events = sseData(bytes.toString());
  const first = JSON.parse(events[0]!);
  t.same(first.choices[0].delta, {
    role: 'assistant',
    content: null,
    tool_calls: [{ index: 0, id: 'call_req-42_0', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }],
  });
  t.equal(JSON.parse(events[1]!).choices[0].finish_reason, 'tool_calls');
  t.equal(events[2], '[DONE]');
});

// ---- the compiler ----

t.test('compileChain caches one factory per spec key', async (t) => {
  const a = compileChain(spec('openai', 'ollama', 'chat'));
  t.equal(compileChain({ ...spec('openai', 'ollama', 'chat') }), a);
  t.not(compileChain(spec('openai', 'ollama', 'chat', { instrument: false })), a);
  t.equal(a.key, chainKey(spec('openai', 'ollama', 'chat')));
  t.equal(a.key, 'openai>ollama/chat+instrument+count');
  t.equal(a.contentType, 'text/event-stream');
  t.equal(compileChain(spec('ollama', 'openai', 'chat')).contentType, 'application/x-ndjson');
  t.ok(Object.isFrozen(a));
  t.throws(() => compileChain({ ...spec('openai', 'ollama', 'chat'), client: 'soap' as Api }), { code: 'internal' });
});

t.test('push after end is ignored; end is idempotent', async (t) => {
  const s = compileChain(spec('ollama', 'ollama', 'chat')).open(ctxFor());
  s.push(upstreamStream('ollama', 'chat', { tokens: ['a'] }));
  t.equal(s.end(), null);
  t.equal(s.end(), null);
  t.equal(s.push(Buffer.from('{"x":1}\n')), null);
});

t.test('an unterminated last NDJSON line is completed for the client', async (t) => {
  const up = ollamaStream('chat', { tokens: ['a'] }).trimEnd();
  const { bytes, stream } = runChain(spec('ollama', 'ollama', 'chat'), ctxFor(), [Buffer.from(up)]);
  t.equal(bytes.toString(), up + '\n');
  t.equal(stream.stats.sawTerminal, true);
});

t.test('flags change the stats, never the client bytes', async (t) => {
  for (const r of ROUTES) {
    const up = upstreamStream(r.provider, r.kind, { tokens: TOKENS, comments: true });
    const outs = [
      [false, false],
      [true, false],
      [false, true],
      [true, true],
    ].map(([instrument, countTokens]) => runChain({ ...r, instrument: instrument!, countTokens: countTokens! }, ctxFor(), [up]).bytes.toString());
    t.equal(new Set(outs).size, 1, `${r.client} <- ${r.provider}/${r.kind}`);
  }
});

t.test('the pipeline agrees on truncation and fail()', async (t) => {
  for (const r of ROUTES) {
    const up = upstreamStream(r.provider, r.kind, { tokens: TOKENS, truncate: true });
    const compiled = runChain({ ...r, instrument: true, countTokens: true }, ctxFor(), [up]);
    const piped = await runPipeline({ ...r, instrument: true, countTokens: true }, ctxFor(), [up]);
    t.ok(piped.output.equals(compiled.bytes), `${r.client} <- ${r.provider}/${r.kind}: truncated output`);
    t.equal(piped.truncated, true);
    const p = createStagedBaseline({ ...r, instrument: false, countTokens: false }, ctxFor());
    const s = compileChain({ ...r, instrument: false, countTokens: false }).open(ctxFor());
    t.equal(p.fail('upstream timed out', 'upstream_timeout'), s.fail('upstream timed out', 'upstream_timeout'));
    t.equal(p.fail('again', 'internal'), '');
  }
});

t.test('a failure before anything was written is held back until end(); a real reply with no finish reason is not one', async (t) => {
  const run = (s: ChainSpec, pushes: string[]) => {
    const stream = compileChain(s).open(ctxFor());
    const out = pushes.map((p) => stream.push(Buffer.from(p)));
    return { out, tail: stream.end(), stats: stream.stats };
  };
  const chunk = (delta: Record<string, unknown>) => `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
  // Held: an error first (after garbage and a keep-alive), a Responses upstream's error first, a stream that is only [DONE].
  const held = run(spec('openai', 'openai', 'chat'), ['data: {not json\n\n', ': keep-alive\n\n', 'data: {"error":{"message":"CUDA out of memory"}}\n\n']);
  t.same(held.out, [null, null, null], 'nothing written for the client while it may go elsewhere');
  t.match(toBytes(held.tail).toString(), /CUDA out of memory/, 'end() owes the error event');
  const resp = run({ client: 'responses', provider: 'openai', kind: 'responses', instrument: false, countTokens: false }, ['event: error\ndata: {"type":"error","message":"overloaded","sequence_number":0}\n\n']);
  t.same(resp.out, [null], 'Responses pass-through: held too');
  t.match(toBytes(resp.tail).toString(), /response\.failed[\s\S]*overloaded/);
  t.match(run(spec('ollama', 'openai', 'chat'), ['data: [DONE]\n\n']).stats.error, { message: /no reply/ }, 'only [DONE]');
  const usageOnly = 'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":0,"total_tokens":3}}\n\n';
  for (const [name, first] of [['garbage', 'garbage\n\n'], ['a usage-only chunk', usageOnly]] as const) {
    const r = run(spec('openai', 'openai', 'chat'), [first, 'data: [DONE]\n\n']);
    t.same(r.out, [null, null], `${name} then [DONE]: nothing written`);
    t.match(r.stats.error, { message: /no reply/ }, `${name} then [DONE]: no reply`);
  }
  // Not failures: a reply whose last event shares its chunk with [DONE] (gRPC), tool calls an
  // Ollama client gets whole at the end, an empty reply: none says its finish reason.
  const grpc = run({ ...spec('openai', 'openai', 'chat'), encoder: 'grpc' }, [chunk({ role: 'assistant', content: 'Hi' }) + 'data: [DONE]\n\n']);
  t.equal(grpc.stats.error, null, 'gRPC: content and [DONE] in one chunk');
  const tools = run(spec('ollama', 'openai', 'chat'), [
    chunk({ role: 'assistant', tool_calls: [{ index: 0, id: 'c1', type: 'function', function: { name: 'f', arguments: '' } }] }),
    chunk({ tool_calls: [{ index: 0, function: { arguments: '{"a":1}' } }] }),
    'data: [DONE]\n\n',
  ]);
  t.equal(tools.stats.error, null, 'Ollama client: tool calls with no finish reason');
  t.match([...tools.out, tools.tail].map((o) => toBytes(o).toString()).join(''), /"tool_calls"/);
  t.equal(run(spec('ollama', 'openai', 'chat'), [chunk({ role: 'assistant', content: '' }), 'data: [DONE]\n\n']).stats.error, null, 'an empty reply');
});

t.test('keep-alives before the first event are held back for KEEPALIVE_HOLD_MS, then passed on (a proxy in front must not cut an idle wait)', async (t) => {
  let clock = 0;
  const ctx = ctxFor({ now: () => clock });
  for (const [client, provider, ka] of [['openai', 'openai', ': keep-alive\n\n'], ['ollama', 'ollama', '\n']] as const) {
    clock = 0;
    const stream = compileChain(spec(client, provider, 'chat')).open(ctx);
    t.equal(stream.push(Buffer.from(ka)), null, `${client}: held at first`);
    clock = KEEPALIVE_HOLD_MS - 1;
    t.equal(stream.push(Buffer.from(ka)), null, `${client}: still held just before the limit`);
    clock = KEEPALIVE_HOLD_MS;
    t.equal(toBytes(stream.push(Buffer.from(ka))).toString(), ka, `${client}: passed on after it`);
  }
  // Translated to an SSE client (Claude Code on /v1/messages, a Responses or an OpenAI client of an
  // Ollama server): a comment, after the same hold. An Ollama client (NDJSON: every line is JSON) gets none.
  for (const [client, provider, ka] of [['anthropic', 'openai', ': keep-alive\n\n'], ['responses', 'openai', ': ping\n\n'], ['openai', 'ollama', '\n'], ['anthropic', 'ollama', '\n'], ['ollama', 'openai', ': keep-alive\n\n']] as const) {
    clock = 0;
    const stream = compileChain({ client, provider, kind: 'chat', instrument: true, countTokens: true }).open(ctx);
    t.equal(stream.push(Buffer.from(ka)), null, `${client} <- ${provider}: held at first`);
    clock = KEEPALIVE_HOLD_MS;
    const out = stream.push(Buffer.from(ka));
    if (client === 'ollama') t.equal(out, null, `${client} <- ${provider}: nothing an NDJSON client would choke on`);
    else t.equal(toBytes(out).toString(), ': keep-alive\n\n', `${client} <- ${provider}: an SSE comment after the hold`);
  }
});

// An upstream may echo the request's headers in an error event after its 200, the
// deployment's key with them: masked in every client API's error event, both pipelines, and in
// the stats the log line is made of (before: the key reached the client and the log whole).
t.test("a mid-stream upstream error echoing the deployment's key: masked for every client and in the stats", async (t) => {
  const key = 'sk-DEPLOYSECRET-xyz';
  const data = (o: unknown) => 'data: ' + JSON.stringify(o) + '\n\n';
  const oa = Buffer.from(data({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { content: 'Hi' }, finish_reason: null }] }) + data({ error: { message: `oops Bearer ${key}` } }));
  const ol = Buffer.from(JSON.stringify({ model: 'm', created_at: '2026-01-01T00:00:00Z', message: { role: 'assistant', content: 'Hi' }, done: false }) + '\n' + JSON.stringify({ error: `oops Bearer ${key}` }) + '\n');
  for (const [provider, up] of [['openai', oa], ['ollama', ol]] as const) {
    for (const client of ['openai', 'ollama', 'anthropic', 'responses'] as const) {
      const s: ChainSpec = { client, provider, kind: 'chat', instrument: true, countTokens: true };
      const compiled = runChain(s, ctxFor({ secrets: [key] }), [up]);
      t.notMatch(compiled.bytes.toString(), /sk-DEPLOY/, `${client} <- ${provider}: not in the stream`);
      t.match(compiled.bytes.toString(), /\[redacted\]/, `${client} <- ${provider}: masked`);
      t.match(compiled.stream.stats.error, { code: 'upstream_error', message: 'oops Bearer [redacted]' }, `${client} <- ${provider}: the stats`);
      if (client === 'anthropic' || client === 'responses') continue;
      const staged = await runPipeline(s, ctxFor({ secrets: [key] }), [up]);
      t.notMatch(staged.output.toString(), /sk-DEPLOY/, `${client} <- ${provider}: staged, not in the stream`);
      t.equal(staged.stats.error?.message, 'oops Bearer [redacted]', `${client} <- ${provider}: staged stats`);
    }
  }
  // A Responses deployment's own failure event, passed on as it came: without the key.
  const failed = Buffer.from('event: response.created\ndata: ' + JSON.stringify({ type: 'response.created', sequence_number: 0, response: { id: 'resp_1', status: 'in_progress', output: [] } }) + '\n\n' + 'event: response.output_text.delta\ndata: ' + JSON.stringify({ type: 'response.output_text.delta', sequence_number: 1, item_id: 'm', output_index: 0, content_index: 0, delta: 'Hi' }) + '\n\n' + 'event: response.failed\ndata: ' + JSON.stringify({ type: 'response.failed', sequence_number: 2, response: { id: 'resp_1', status: 'failed', error: { code: 'server_error', message: `oops Bearer ${key}` } } }) + '\n\n');
  const pass = runChain({ client: 'responses', provider: 'openai', kind: 'responses', instrument: true, countTokens: true }, ctxFor({ secrets: [key] }), [failed]);
  t.notMatch(pass.bytes.toString(), /sk-DEPLOY/, 'a passed-through failure event: not in the stream');
  t.match(pass.bytes.toString(), /oops Bearer \[redacted\]/);
  t.equal(pass.stream.stats.error?.message, 'oops Bearer [redacted]');
});
