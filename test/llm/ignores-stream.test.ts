// Upstreams that ignore `stream: true` and answer one JSON body (older llama.cpp builds,
// hand-written shims, proxies in front of a model): a streamed client still gets its stream,
// in its own API, with the text, tool calls, finish and usage, and the deployment is not
// failed for it. Raw HTTP servers, since the mock always streams when asked.
import t from 'tap';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startFleetBroker } from '../helpers/fleet.ts';
import { metricValue } from '../helpers/broker.ts';

async function serve(reply: (body: Record<string, unknown>) => object): Promise<{ url: string; asked: Record<string, unknown>[] }> {
  const asked: Record<string, unknown>[] = [];
  const server: Server = createServer((req, res) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', () => {
      const body = JSON.parse(raw) as Record<string, unknown>;
      asked.push(body);
      res.writeHead(200, { 'content-type': 'application/json' });
      // Written in two pieces: a whole body may come in several chunks.
      const text = JSON.stringify(reply(body));
      res.write(text.slice(0, 7));
      res.end(text.slice(7));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, asked };
}

const usage = { prompt_tokens: 11, completion_tokens: 3, total_tokens: 14 };
const openai = await serve((body) =>
  body['prompt'] !== undefined
    ? { id: 'cmpl-1', object: 'text_completion', created: 1, model: 'm', choices: [{ index: 0, text: 'a whole text', finish_reason: 'length', logprobs: null }], usage }
    : JSON.stringify(body['messages']).includes('weather')
      ? { id: 'c-2', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: null, tool_calls: [{ id: 'call_a', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Oslo"}' } }, { id: 'call_b', type: 'function', function: { name: 'get_time', arguments: '{}' } }] }, finish_reason: 'tool_calls' }], usage }
      : { id: 'c-1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'whole answer here' }, finish_reason: 'stop' }], usage },
);
// An Ollama server asked to stream that answers as with stream: false.
const ollama = await serve(() => ({ model: 'm', created_at: '2026-01-01T00:00:00Z', message: { role: 'assistant', content: 'ollama whole' }, done: true, done_reason: 'stop', prompt_eval_count: 9, eval_count: 2, total_duration: 1000, eval_duration: 500 }));

const tb = await startFleetBroker(
  t,
  {
    modelGroups: {
      whole: { deployments: [{ id: 'whole-1', provider: 'openai', url: openai.url, model: 'm' }] },
      'whole-ollama': { deployments: [{ id: 'whole-2', provider: 'ollama', url: ollama.url, model: 'm' }] },
    },
  },
  { FRONT_THREADS: '1', INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false' },
);
const client = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'x', maxRetries: 0 });

t.test('an OpenAI client streaming from a server that answered whole gets the text as a stream, with finish and usage', async (t) => {
  const stream = await client.chat.completions.create({ model: 'whole', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish: string | null = null;
  let seen: OpenAI.CompletionUsage | undefined;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta.content ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
    if (chunk.usage) seen = chunk.usage;
  }
  t.equal(text, 'whole answer here');
  t.equal(finish, 'stop');
  t.match(seen, { prompt_tokens: 11, completion_tokens: 3 });
  t.equal(openai.asked.at(-1)!['stream'], true, 'asked as a stream');
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: 'whole-1' }), 0, 'not counted as the upstream failing');
});

t.test('whole tool calls reach a streaming client as indexed deltas with finish tool_calls', async (t) => {
  const stream = await client.chat.completions.create({ model: 'whole', messages: [{ role: 'user', content: 'weather in Oslo?' }], stream: true, tools: [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object' } } }] });
  const calls: { id?: string; name?: string; args: string }[] = [];
  let finish: string | null = null;
  for await (const chunk of stream) {
    for (const d of chunk.choices[0]?.delta.tool_calls ?? []) {
      const c = (calls[d.index] ??= { args: '' });
      if (d.id) c.id = d.id;
      if (d.function?.name) c.name = d.function.name;
      c.args += d.function?.arguments ?? '';
    }
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  t.same(calls, [{ id: 'call_a', name: 'get_weather', args: '{"city":"Oslo"}' }, { id: 'call_b', name: 'get_time', args: '{}' }]);
  t.equal(finish, 'tool_calls');
});

t.test('a streamed text completion from a whole one', async (t) => {
  const stream = await client.completions.create({ model: 'whole', prompt: 'say', stream: true });
  let text = '';
  let finish: string | null = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.text ?? '';
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  t.equal(text, 'a whole text');
  t.equal(finish, 'length');
});

t.test('Messages and Ollama clients streaming through the same server', async (t) => {
  const anthropic = new Anthropic({ baseURL: tb.url, apiKey: 'x', maxRetries: 0 });
  const msg = await anthropic.messages.stream({ model: 'whole', max_tokens: 50, messages: [{ role: 'user', content: 'hi' }] }).finalMessage();
  t.same(msg.content.map((b) => b.type), ['text']);
  t.equal(msg.content[0]!.type === 'text' ? msg.content[0]!.text : '', 'whole answer here');
  t.equal(msg.stop_reason, 'end_turn');
  t.equal(msg.usage.output_tokens, 3);
  const res = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'whole', messages: [{ role: 'user', content: 'hi' }] }) });
  t.equal(res.status, 200);
  const lines = (await res.text()).trim().split('\n').map((l) => JSON.parse(l) as { message?: { content: string }; done: boolean; eval_count?: number });
  t.equal(lines.map((l) => l.message?.content ?? '').join(''), 'whole answer here');
  t.equal(lines.at(-1)!.done, true);
  t.equal(lines.at(-1)!.eval_count, 3);
});

t.test('an Ollama server that answers a stream request whole: its one line is its stream', async (t) => {
  const stream = await client.chat.completions.create({ model: 'whole-ollama', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } });
  let text = '';
  let u: OpenAI.CompletionUsage | undefined;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta.content ?? '';
    if (chunk.usage) u = chunk.usage;
  }
  t.equal(text, 'ollama whole');
  t.match(u, { prompt_tokens: 9, completion_tokens: 2 });
  const res = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'whole-ollama', messages: [{ role: 'user', content: 'hi' }] }) });
  const lines = (await res.text()).trim().split('\n').map((l) => JSON.parse(l) as { message?: { content: string }; done: boolean });
  t.equal(lines.map((l) => l.message?.content ?? '').join(''), 'ollama whole');
  t.equal(lines.at(-1)!.done, true);
});
