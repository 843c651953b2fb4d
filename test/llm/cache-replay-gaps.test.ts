// What a cache hit must not lose, and what must not be stored at all since replay cannot
// write it: Ollama generate's `context` kept on a hit (whole and streamed); Ollama replies
// with logprobs, and OpenAI streams with audio or content as parts, never stored (a hit would
// answer text only); a Responses hit under a QoS tier that caps output echoes the capped
// max_output_tokens the miss echoed. A scripted upstream, whose request count tells a hit
// from an upstream call, sends the shapes the mock does not.
import t from 'tap';
import type { ServerResponse } from 'node:http';
import { Agent, setGlobalDispatcher } from 'undici';
import OpenAI from 'openai';
import { Ollama } from 'ollama';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

// One connection per origin: a repeat reaches the thread that stored the entry (another
// thread has it a message later), so a miss below is a reply not stored, not a race.
setGlobalDispatcher(new Agent({ connections: 1 }));

const CONTEXT = [128006, 882, 128007, 271, 13347, 11];
const LOGPROBS = [{ token: 'Hi', logprob: -0.01, bytes: [72, 105], top_logprobs: [] }];
const stamp = { created_at: '2026-01-01T00:00:00Z' };

/** Ollama's NDJSON lines, or the one whole object, as a server sends them. */
function ollamaReply(res: ServerResponse, body: any, parts: string[], last: Record<string, unknown>, each: Record<string, unknown> = {}): void {
  const chat = body.messages !== undefined;
  const piece = (s: string) => (chat ? { message: { role: 'assistant', content: s } } : { response: s });
  const done = { model: body.model, ...stamp, done: true, done_reason: 'stop', total_duration: 5, load_duration: 1, prompt_eval_count: 6, prompt_eval_duration: 1, eval_count: parts.length, eval_duration: 3, ...last };
  if (body.stream === false) {
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ...done, ...piece(parts.join('')), ...each }));
    return;
  }
  const lines = parts.map((p) => ({ model: body.model, ...stamp, ...piece(p), ...each, done: false }));
  lines.push({ ...done, ...piece('') } as (typeof lines)[number]);
  res.writeHead(200, { 'content-type': 'application/x-ndjson' }).end(lines.map((l) => JSON.stringify(l) + '\n').join(''));
}

/** An OpenAI-compatible stream of these deltas, then a stop. */
function sse(res: ServerResponse, model: string, deltas: Record<string, unknown>[]): void {
  const ev = (delta: Record<string, unknown>, finish: string | null) => `data: ${JSON.stringify({ id: 'chatcmpl-g', object: 'chat.completion.chunk', created: 1, model, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] })}\n\n`;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(deltas.map((d) => ev(d, null)).join('') + ev({}, 'stop') + 'data: [DONE]\n\n');
}

const up = await startScriptedUpstream();
t.teardown(() => up.close());
up.handler = (path, body, res) => {
  if (path === '/api/generate') return ollamaReply(res, body, ['Hel', 'lo'], { context: CONTEXT });
  if (path === '/api/chat') return ollamaReply(res, body, ['Hi'], {}, { logprobs: LOGPROBS });
  if (body.model === 'audio-up')
    return sse(res, body.model, [
      { role: 'assistant', content: null, audio: { id: 'audio_abc', transcript: 'Hel' } },
      { audio: { transcript: 'lo' } },
      { audio: { data: 'AAAAAA==' } },
      { audio: { id: 'audio_abc', expires_at: 1_900_000_000 } },
    ]);
  if (body.model === 'parts-up')
    return sse(res, body.model, [
      { role: 'assistant', content: [{ type: 'thinking', thinking: [{ type: 'text', text: 'The user greets.' }] }] },
      { content: [{ type: 'text', text: 'Hello' }] },
    ]);
  res.writeHead(404).end();
};
const mock = await startMock(t, { tokens: 8 });
const dep = (id: string, provider: 'openai' | 'ollama', url: string) => ({ deployments: [{ id, provider, url, model: `${id}-up` }] });
const tb = await startFleetBroker(
  t,
  {
    cache: { mode: 'on', maxBytes: 1_000_000, ttlSeconds: 600 },
    // A key whose tier caps output at 3 tokens: its requests go upstream with the cap.
    apiKeys: { 'sk-short': { tier: 'short' } },
    qos: { defaultTier: 'standard', tiers: { standard: {}, short: { maxOutputTokens: 3 } } },
    modelGroups: { gen: dep('gen', 'ollama', up.url), lp: dep('lp', 'ollama', up.url), audio: dep('audio', 'openai', up.url), parts: dep('parts', 'openai', up.url), resp: dep('resp', 'openai', mock.url) },
  },
  { INFER_ENABLED: 'false', BROKER_FF_QOS_SWITCHING: 'true' },
);

let n = 0;
/** A prompt no other test uses: entries do not leak between tests. */
const fresh = () => `question ${++n} ${Date.now()}`;
const calls = (path: string) => up.seen.filter((s) => s.path === path).length;

async function post(path: string, body: Record<string, unknown>): Promise<{ cache: string | null; text: string }> {
  const res = await fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${text}`);
  return { cache: res.headers.get('x-broker-cache'), text };
}

t.test("Ollama generate: a hit gives back the miss's context, whole and streamed", async (t) => {
  const ollama = new Ollama({ host: tb.url });
  for (const firstStreams of [false, true]) {
    const prompt = fresh();
    const before = calls('/api/generate');
    const lastOf = async () => {
      let last;
      for await (const p of await ollama.generate({ model: 'gen', prompt, stream: true })) last = p;
      return last!;
    };
    const miss = firstStreams ? await lastOf() : await ollama.generate({ model: 'gen', prompt, stream: false });
    t.same(miss.context, CONTEXT, 'the miss passes the upstream context on');
    // A client sends the context back on its next turn: a hit without it loses the conversation.
    const whole = await ollama.generate({ model: 'gen', prompt, stream: false });
    t.same(whole.context, CONTEXT, `stored from a ${firstStreams ? 'stream' : 'whole reply'}: a whole hit has it`);
    const streamed = await lastOf();
    t.same(streamed.context, CONTEXT, 'a streamed hit has it on its done line');
    t.equal(calls('/api/generate'), before + 1, 'the upstream was asked once: both were hits');
  }
});

t.test('Ollama replies with logprobs are not stored: replay would drop them', async (t) => {
  for (const stream of [false, true]) {
    const body = { model: 'lp', messages: [{ role: 'user', content: fresh() }], logprobs: true, stream };
    const before = calls('/api/chat');
    t.equal((await post('/api/chat', body)).cache, 'miss');
    const again = await post('/api/chat', body);
    t.equal(again.cache, 'miss', `stream ${stream}: the repeat is a miss`);
    t.match(again.text, /"logprobs":\[\{"token":"Hi"/, 'and has its logprobs');
    t.equal(calls('/api/chat'), before + 2, 'the upstream was asked again');
  }
});

t.test('OpenAI streams with audio, or with content as parts, are not stored: replay writes text content only', async (t) => {
  const cases = [
    ['audio', { modalities: ['text', 'audio'], audio: { voice: 'alloy', format: 'pcm16' } }],
    ['parts', {}],
  ] as const;
  for (const [model, extra] of cases) {
    const body = { model, messages: [{ role: 'user', content: fresh() }], stream: true, ...extra };
    const before = calls('/v1/chat/completions');
    t.equal((await post('/v1/chat/completions', body)).cache, 'miss');
    const again = await post('/v1/chat/completions', body);
    t.equal(again.cache, 'miss', `${model}: the repeat is a miss`);
    t.match(again.text, model === 'audio' ? /"audio":\{"id":"audio_abc","transcript":"Hel"\}/ : /"content":\[\{"type":"text","text":"Hello"\}\]/, `${model}: as the upstream sent it`);
    t.equal(calls('/v1/chat/completions'), before + 2, `${model}: the upstream was asked again`);
  }
});

t.test("Responses API: a hit under a tier's output cap echoes the capped max_output_tokens, as the miss did", async (t) => {
  const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-short', maxRetries: 0 });
  const input = fresh();
  const before = mock.stats.total;
  const miss = await openai.responses.create({ model: 'resp', input, max_output_tokens: 100 }).withResponse();
  t.equal(miss.response.headers.get('x-broker-cache'), 'miss');
  t.equal(miss.data.max_output_tokens, 3, 'the miss echoes the limit that went upstream');
  const hit = await openai.responses.create({ model: 'resp', input, max_output_tokens: 100 }).withResponse();
  t.equal(hit.response.headers.get('x-broker-cache'), 'hit');
  t.equal(hit.data.max_output_tokens, 3, 'so does a whole hit, not the 100 the client asked for');
  const events = [];
  for await (const e of await openai.responses.create({ model: 'resp', input, max_output_tokens: 100, stream: true })) events.push(e);
  const done = events.find((e) => e.type === 'response.completed' || e.type === 'response.incomplete');
  const created = events.find((e) => e.type === 'response.created');
  t.equal(created?.type === 'response.created' ? created.response.max_output_tokens : undefined, 3, 'a streamed hit, from its first event');
  t.equal(done && 'response' in done ? done.response.max_output_tokens : undefined, 3, 'to its last');
  t.equal(mock.stats.total, before + 1, 'the upstream was asked once');
});
