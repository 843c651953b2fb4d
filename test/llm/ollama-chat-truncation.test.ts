// An Ollama chat longer than its group's window keeps its system messages and latest turns, as
// Ollama does (it never fails a chat for its length): Open WebUI's long conversations were 400
// context_length_exceeded. Not when a larger group is there to take it whole, nor with
// `truncate: false`; other client APIs are refused as before.
import t from 'tap';
import { Ollama } from 'ollama';
import { startFleetBroker } from '../helpers/fleet.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';

const up = await startScriptedUpstream();
t.teardown(() => up.close());
up.handler = (_p, b, res) => {
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  res.end(JSON.stringify({ model: b.model, created_at: '2024-01-01T00:00:00Z', message: { role: 'assistant', content: 'ok' }, done: true, done_reason: 'stop', prompt_eval_count: 3, eval_count: 1 }) + '\n');
};
const d = (id: string) => ({ id, provider: 'ollama', url: up.url, model: 'm' });
const tb = await startFleetBroker(
  t,
  {
    modelGroups: {
      small: { deployments: [d('s1')], maxContextTokens: 300 },
      spill: { deployments: [d('p1')], maxContextTokens: 300, contextFallbacks: ['big'] },
      big: { deployments: [d('b1')], maxContextTokens: 100_000 },
    },
  },
  { INFER_ENABLED: 'false' },
);
const ollama = new Ollama({ host: tb.url });

// Ten turns of about 100 tokens each: three times the small window.
const history = (n: number) => [
  { role: 'system', content: 'Be brief.' },
  ...Array.from({ length: n }, (_, i) => [
    { role: 'user', content: `question ${i} ` + 'x'.repeat(200) },
    { role: 'assistant', content: `answer ${i} ` + 'y'.repeat(200) },
  ]).flat(),
  { role: 'user', content: 'and now?' },
];

t.test('the oldest turns go, the system message and the latest stay; the reply is 200', async (t) => {
  up.seen.length = 0;
  const r = await ollama.chat({ model: 'small', messages: history(10) });
  t.equal(r.message.content, 'ok');
  const sent = up.seen.at(-1)!.body.messages as Array<{ role: string; content: string }>;
  t.ok(sent.length < 22, `fewer messages upstream (${sent.length} of 22)`);
  t.same(sent[0], { role: 'system', content: 'Be brief.' }, 'the system message stays');
  t.equal(sent.at(-1)!.content, 'and now?', 'the last turn stays');
  t.equal(sent[1]!.role, 'user', 'whole turns go: what is left starts with a question');
  t.ok(sent.some((m) => m.content.startsWith('answer 9')), 'the latest turns stay');
  t.notOk(sent.some((m) => m.content.startsWith('question 0')), 'the oldest went');
  const chars = sent.reduce((n, m) => n + m.content.length, 0);
  t.ok(chars / 4 <= 300, `it fits the window (${Math.ceil(chars / 4)} tokens)`);
});

t.test('a larger group in contextFallbacks takes it whole; truncate: false and other APIs are refused as before', async (t) => {
  up.seen.length = 0;
  await ollama.chat({ model: 'spill', messages: history(10) });
  t.equal(up.seen.at(-1)!.body.messages.length, 22, 'whole, to the larger group');
  const refused = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'small', messages: history(10), truncate: false }) });
  t.equal(refused.status, 400, 'truncate: false');
  t.match(await refused.json(), { error: /does not fit model group small/ });
  const openai = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'small', messages: history(10) }) });
  t.equal(openai.status, 400, 'an OpenAI client is told, as OpenAI would');
  const body = (await openai.json()) as { error: { message: string } };
  t.notMatch(body.error.message, /output limit/, 'no max_tokens was sent: the message does not name one');
  const limited = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'small', max_tokens: 50, messages: history(10) }) });
  t.match(((await limited.json()) as { error: { message: string } }).error.message, /the prompt \(about \d+ tokens\) and its output limit of 50 tokens does not fit/, 'one sent is named, apart from the prompt');
});

t.test('a long conversation is cut in a few reads, not one per turn (quadratic: seconds of a thread), to the same turns', async (t) => {
  const { readTruncated } = await import('../../src/llm/truncation.ts');
  const { readLlmRequest } = await import('../../src/llm/request.ts');
  const req = { id: 'r', method: 'POST', path: '/api/chat', query: '', headers: {}, remoteAddress: '127.0.0.1', startedAt: 0 };
  const group = { name: 'small', deployments: [], maxContextTokens: 300 } as never;
  const body = { model: 'small', messages: history(2_000) } as Record<string, unknown>;
  const messages = body['messages'] as unknown[];
  let reads = 0;
  const r = readTruncated(() => (reads++, readLlmRequest(req, 'ollama', 'chat', body)), body, group, undefined, 'messages', false);
  t.ok(reads <= 14, `${reads} reads for 2,000 turns`);
  t.equal(body['messages'], messages, 'cut in place: the body keeps its array');
  t.ok(r.promptChars / 4 <= 300, 'it fits');
  // The fewest turns dropped: one more turn kept would not fit.
  const kept = messages.length;
  const withOneMore = { model: 'small', messages: [history(2_000)[0], ...history(2_000).slice(-(kept - 1) - 2)] };
  t.ok(readLlmRequest(req, 'ollama', 'chat', withOneMore).promptChars / 4 > 300 - 0, 'one more turn would not fit');
});
