// Anthropic's message threads (`thread` on /v1/messages, the SDK's tool runner and
// beta.messages.thread() since SDK 1.2): a `continue` carries only the new turn, the server
// keeping the rest. The broker keeps no threads: it refuses `thread` with the code the SDK
// recovers from (thread_unsupported_request in error.details.error_code), and the tool runner
// then sends the whole conversation. Before, a continue reached the upstream as tool results
// alone: no user turn, no tool calls, no system, no tools.
import t from 'tap';
import type { ServerResponse } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import Anthropic from '@anthropic-ai/sdk';
import { betaTool } from '@anthropic-ai/sdk/helpers/beta/json-schema';
import { startTestBroker, postJson } from '../helpers/broker.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';

const up = await startScriptedUpstream();
t.teardown(() => up.close());

/** An OpenAI chat reply: a call of get_weather while the conversation has no tool result, then text. */
function answer(_path: string, body: any, res: ServerResponse): void {
  const answered = body.messages.some((m: any) => m.role === 'tool');
  const message = answered ? { role: 'assistant', content: 'Sunny in Oslo.' } : { role: 'assistant', content: null, tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Oslo"}' } }] };
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ id: 'c1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message, finish_reason: answered ? 'stop' : 'tool_calls' }], usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 } }));
}
up.handler = answer;

const dir = mkdtempSync(join(tmpdir(), 'eb-threads-'));
writeFileSync(join(dir, 'broker.yaml'), stringify({ modelGroups: { oa: { deployments: [{ id: 'oa-1', provider: 'openai', url: up.url, model: 'm', upstreamStreaming: 'client' }] } } }));
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false' });
t.teardown(() => tb.close());
const client = new Anthropic({ baseURL: tb.url, apiKey: 'x', maxRetries: 0 });

t.test("the SDK's tool runner: every upstream request carries the whole conversation, system and tools", async (t) => {
  up.seen.length = 0;
  const weather = betaTool({ name: 'get_weather', description: 'The weather in a city.', inputSchema: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }, run: async ({ city }) => `sunny in ${city}` });
  const final = await client.beta.messages.toolRunner({ model: 'oa', max_tokens: 100, system: 'Be brief.', tools: [weather], messages: [{ role: 'user', content: 'Weather in Oslo?' }] });
  t.match(final.content, [{ type: 'text', text: 'Sunny in Oslo.' }]);
  t.equal(up.seen.length, 2, 'two turns upstream');
  const second = up.seen[1]!.body;
  t.match(second.messages, [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Weather in Oslo?' },
    { role: 'assistant', tool_calls: [{ function: { name: 'get_weather' } }] },
    { role: 'tool', tool_call_id: 'call_1', content: 'sunny in Oslo' },
  ], 'the second turn has its history');
  t.equal(second.tools?.[0]?.function?.name, 'get_weather', 'and its tools');
});

t.test('`thread` on /v1/messages: 400 thread_unsupported_request in Anthropic\'s shape, with the details the SDKs read', async (t) => {
  const before = up.seen.length;
  for (const thread of [{ type: 'create' }, { type: 'continue', previous_message_id: 'msg_x' }]) {
    const r = await postJson(`${tb.url}/v1/messages`, { model: 'oa', max_tokens: 10, messages: thread.type === 'create' ? [{ role: 'user', content: 'hi' }] : [], thread });
    t.equal(r.status, 400, thread.type);
    t.match(r.body, { type: 'error', error: { type: 'invalid_request_error', details: { error_code: 'thread_unsupported_request' } } });
    t.ok(r.headers.get('request-id') ?? r.body.request_id, 'with the request id');
  }
  t.equal(up.seen.length, before, 'nothing went upstream');
});
