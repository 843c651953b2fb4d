// How a reply ends, translated: tool calls that an OpenAI-compatible upstream closes with
// `stop` (OpenAI's own finish when tool_choice names a function) are still `tool_use` for a
// Messages client, whose agent loop runs tools only on that reason; and an empty answer from
// Ollama still names the assistant's role for an OpenAI stream client (the SDK's
// chat.completions.stream() refuses a choice without one).
import t from 'tap';
import { translateResponse } from '../../../src/llm/translate/index.ts';
import { ctxFor, runChain, sseData } from './fixtures.suite.ts';

const call = { id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Oslo"}' } };

t.test('a Messages client: tool calls finished with `stop` are tool_use, whole and streamed', async (t) => {
  const whole = { id: 'c1', object: 'chat.completion', created: 1, model: 'up', choices: [{ index: 0, message: { role: 'assistant', content: null, tool_calls: [call] }, finish_reason: 'stop' }], usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } };
  const m = JSON.parse(String(translateResponse({ client: 'anthropic', provider: 'openai', kind: 'chat' }, JSON.stringify(whole), { model: 'g', id: 'r1', request: { model: 'g', max_tokens: 8, messages: [] } }).body));
  t.equal(m.stop_reason, 'tool_use');
  t.match(m.content, [{ type: 'tool_use', name: 'get_weather', input: { city: 'Oslo' } }]);

  const chunk = (delta: unknown, finish: string | null): string => `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'up', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
  const up = chunk({ role: 'assistant', tool_calls: [{ index: 0, ...call }] }, null) + chunk({}, 'stop') + 'data: [DONE]\n\n';
  const { bytes } = runChain({ client: 'anthropic', provider: 'openai', kind: 'chat', instrument: false, countTokens: true }, ctxFor(), [Buffer.from(up)]);
  const delta = sseData(bytes.toString()).map((d) => JSON.parse(d)).find((e) => e.type === 'message_delta');
  t.equal(delta?.delta.stop_reason, 'tool_use');

  // Without calls, `stop` stays end_turn; a call cut by the token limit stays max_tokens.
  const plain = chunk({ role: 'assistant', content: 'hi' }, null) + chunk({}, 'stop') + 'data: [DONE]\n\n';
  const p = runChain({ client: 'anthropic', provider: 'openai', kind: 'chat', instrument: false, countTokens: true }, ctxFor(), [Buffer.from(plain)]);
  t.equal(sseData(p.bytes.toString()).map((d) => JSON.parse(d)).find((e) => e.type === 'message_delta')?.delta.stop_reason, 'end_turn');
  const cut = chunk({ role: 'assistant', tool_calls: [{ index: 0, ...call }] }, null) + chunk({}, 'length') + 'data: [DONE]\n\n';
  const c = runChain({ client: 'anthropic', provider: 'openai', kind: 'chat', instrument: false, countTokens: true }, ctxFor(), [Buffer.from(cut)]);
  t.equal(sseData(c.bytes.toString()).map((d) => JSON.parse(d)).find((e) => e.type === 'message_delta')?.delta.stop_reason, 'max_tokens');
});

t.test('an OpenAI stream client: an empty Ollama answer still says role assistant', async (t) => {
  const up = JSON.stringify({ model: 'm', created_at: '2026-01-01T00:00:00Z', message: { role: 'assistant', content: '' }, done: true, done_reason: 'stop', prompt_eval_count: 2, eval_count: 0 }) + '\n';
  const { bytes } = runChain({ client: 'openai', provider: 'ollama', kind: 'chat', instrument: false, countTokens: true }, ctxFor(), [Buffer.from(up)]);
  const events = sseData(bytes.toString()).filter((d) => d !== '[DONE]').map((d) => JSON.parse(d));
  t.equal(events[0].choices[0].delta.role, 'assistant', 'the first chunk names the role');
  t.equal(events.at(-1).choices[0].finish_reason, 'stop');
});
