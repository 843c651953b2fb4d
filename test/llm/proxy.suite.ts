// The LLM proxy end to end: the official openai and ollama npm clients, unchanged,
// against a real broker in front of real mock upstreams speaking the wire formats.
// Run once per execution mode (proxy-thread.test.ts, proxy-pool.test.ts).
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { brotliCompressSync, gzipSync } from 'node:zlib';
import { join } from 'node:path';
import { request } from 'undici';
import OpenAI from 'openai';
import { Ollama } from 'ollama';
import { stringify } from 'yaml';
import { createMockUpstream, mockText, type MockUpstream, type MockUpstreamOptions } from '../../src/mock-upstream/server.ts';
import { startTestBroker, metricValue, postJson } from '../helpers/broker.ts';

const mocks: MockUpstream[] = [];
async function mock(opts: MockUpstreamOptions): Promise<MockUpstream> {
  const m = await createMockUpstream({ tokens: 8, ...opts });
  mocks.push(m);
  return m;
}
const okOpenai = await mock({});
const okOllama = await mock({});
const fail500 = await mock({ fail: 500 });
const fail429 = await mock({ fail: 429 });
const reset = await mock({ fail: 'reset', failAfter: 3 });
const stall = await mock({ fail: 'stall', failAfter: 2 });
const slow = await mock({ tokens: 10_000, tps: 50 });
const junk = await mock({ fail: 'garbage', failAfter: 2 });

const dep = (id: string, provider: 'openai' | 'ollama', m: MockUpstream, extra: Record<string, unknown> = {}) => ({ id, provider, url: m.url, model: `${id}-upstream`, ...extra });
const fleet = {
  modelGroups: {
    'chat-openai': { deployments: [dep('openai-1', 'openai', okOpenai)] },
    'chat-ollama': { deployments: [dep('ollama-1', 'ollama', okOllama)] },
    'retry-500': { deployments: [dep('broken-500', 'openai', fail500, { weight: 1000 }), dep('openai-2', 'openai', okOpenai)] },
    'retry-429': { deployments: [dep('limited-429', 'ollama', fail429, { weight: 1000 }), dep('ollama-2', 'ollama', okOllama)] },
    'all-down': { deployments: [dep('down-1', 'openai', fail500)] },
    cut: { deployments: [dep('reset-1', 'openai', reset)] },
    'cut-ollama': { deployments: [dep('reset-2', 'ollama', reset)] },
    stalled: { deployments: [dep('stall-1', 'openai', stall, { idleTimeoutMs: 300 })] },
    slow: { deployments: [dep('slow-1', 'ollama', slow)] },
    junk: { deployments: [dep('junk-1', 'openai', junk)] },
    'junk-ollama': { deployments: [dep('junk-2', 'ollama', junk)] },
    'org/slashed': { deployments: [dep('slashed-1', 'openai', okOpenai)] },
  },
};
const dir = mkdtempSync(join(tmpdir(), 'eb-llm-'));
writeFileSync(join(dir, 'broker.yaml'), stringify(fleet));
const FRONT_THREADS = process.env.FRONT_THREADS ?? '2';
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), MAX_BODY_BYTES: '65536', FRONT_THREADS });
t.equal(tb.broker.planes?.count ?? 0, Number(FRONT_THREADS), `served by ${FRONT_THREADS} data-plane threads`);
t.teardown(async () => {
  await tb.close();
  await Promise.all(mocks.map((m) => m.close()));
});

const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
const ollama = new Ollama({ host: tb.url });
const messages = [{ role: 'user' as const, content: 'Say something.' }];

t.test('OpenAI client, non-streaming, to an OpenAI and to an Ollama deployment', async (t) => {
  for (const model of ['chat-openai', 'chat-ollama']) {
    const { data, response } = await openai.chat.completions.create({ model, messages, max_tokens: 100 }).withResponse();
    t.equal(data.choices[0]!.message.content, mockText(8), model);
    t.equal(data.choices[0]!.finish_reason, 'stop');
    t.equal(data.usage!.completion_tokens, 8);
    t.ok(data.usage!.prompt_tokens > 0);
    t.equal(response.headers.get('x-broker-deployment'), model === 'chat-openai' ? 'openai-1' : 'ollama-1');
  }
  const last = okOllama.stats.lastBody as Record<string, any>;
  t.equal(last.model, 'ollama-1-upstream', 'the deployment model name goes upstream');
  t.equal(last.options.num_predict, 100, 'max_tokens becomes num_predict');
});

t.test('OpenAI client, streaming with usage, both providers', async (t) => {
  for (const model of ['chat-openai', 'chat-ollama']) {
    const stream = await openai.chat.completions.create({ model, messages, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let finish: string | null | undefined;
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
      finish = chunk.choices[0]?.finish_reason ?? finish;
      if (chunk.usage) usage = chunk.usage;
    }
    t.equal(text, mockText(8), model);
    t.equal(finish, 'stop');
    t.equal(usage?.completion_tokens, 8);
  }
});

t.test('OpenAI client without include_usage gets no usage chunk', async (t) => {
  const stream = await openai.chat.completions.create({ model: 'chat-openai', messages, stream: true });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  t.notOk(chunks.some((c) => c.usage), 'no usage chunk');
  t.equal(chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''), mockText(8));
});

t.test('OpenAI completions, streaming and not, to Ollama generate', async (t) => {
  const whole = await openai.completions.create({ model: 'chat-ollama', prompt: 'Once upon a time' });
  t.equal(whole.choices[0]!.text, mockText(8));
  const stream = await openai.completions.create({ model: 'chat-ollama', prompt: 'Once', stream: true });
  let text = '';
  for await (const c of stream) text += c.choices[0]?.text ?? '';
  t.equal(text, mockText(8));
  t.equal(okOllama.stats.lastPath, '/api/generate');
});

t.test('Ollama client, chat and generate, streaming and not, both providers', async (t) => {
  for (const model of ['chat-ollama', 'chat-openai']) {
    const res = await ollama.chat({ model, messages, options: { num_predict: 50 } });
    t.equal(res.message.content, mockText(8), model);
    t.equal(res.done, true);
    t.equal(res.eval_count, 8);
    t.ok(res.prompt_eval_count > 0);
    let text = '';
    let done;
    for await (const part of await ollama.chat({ model, messages, stream: true })) {
      text += part.message.content;
      if (part.done) done = part;
    }
    t.equal(text, mockText(8));
    t.equal(done?.eval_count, 8);
    // Ollama's durations on every done line (Open WebUI divides eval_count by eval_duration).
    for (const d of [res, done!]) {
      t.ok(d.eval_duration > 0 && d.prompt_eval_duration > 0, `${model}: durations`);
      // Translated, they are the broker's measure; an Ollama upstream's own pass as they are.
      if (model === 'chat-openai') t.equal(d.total_duration, d.prompt_eval_duration + d.eval_duration, `${model}: they add up`);
    }
    // Ollama's name with its tag is the same model (a client may add `:latest`).
    t.equal((await ollama.chat({ model: `${model}:latest`, messages })).message.content, mockText(8), `${model}:latest`);
    const gen = await ollama.generate({ model, prompt: 'hi' });
    t.equal(gen.response, mockText(8));
    let gtext = '';
    for await (const part of await ollama.generate({ model, prompt: 'hi', stream: true })) gtext += part.response;
    t.equal(gtext, mockText(8));
  }
  const last = okOpenai.stats.lastBody as Record<string, any>;
  t.equal(last.model, 'openai-1-upstream');
  // The root answers as Ollama's does: the CLI and clients check it before anything else.
  const root = await fetch(`${tb.url}/`);
  t.equal(root.status, 200);
  t.equal(await root.text(), 'Ollama is running');
  t.equal((await fetch(`${tb.url}/`, { method: 'HEAD' })).status, 200);
  // What a model is (the `ollama` CLI asks before it runs one; a 404 makes it pull): an Ollama
  // group's server describes its own model, another group is described from the fleet file.
  const shown = await ollama.show({ model: 'chat-ollama' });
  t.match(shown, { template: /<\|user\|>/, model_info: { 'mock.context_length': 4096 }, capabilities: ['completion', 'tools'] }, "the Ollama server's own description");
  const made = await ollama.show({ model: 'chat-openai' });
  t.match(made, { model_info: { 'general.architecture': 'edge-broker' }, capabilities: ['completion', 'tools'], details: { format: '' } }, 'described here');
  const missing = await fetch(`${tb.url}/api/show`, { method: 'POST', body: JSON.stringify({ model: 'nope' }) });
  t.equal(missing.status, 404);
  t.match(await missing.json(), { error: "model 'nope' not found" }, "Ollama's shape and words");
  // The Go client (`ollama run`, `ollama show`) sends `model` empty beside `name`: Ollama reads `name`.
  const goShow = await fetch(`${tb.url}/api/show`, { method: 'POST', body: JSON.stringify({ model: '', system: '', template: '', verbose: false, options: null, name: 'chat-openai' }) });
  t.equal(goShow.status, 200, "the Go client's body");
  // `ollama list` and `ollama ps` print a digest's first 12 characters (an empty one panics them).
  const tags = (await (await fetch(`${tb.url}/api/tags`)).json()) as { models: { name: string; digest: string; modified_at: string }[] };
  t.ok(tags.models.length > 0 && tags.models.every((m) => /^[0-9a-f]{64}$/.test(m.digest)), 'every listed model has a 64-hex digest');
  // Not the epoch: model pickers print it as the model's age.
  t.ok(tags.models.every((m) => Date.now() - Date.parse(m.modified_at) < 86_400_000), 'modified_at is recent');
  const ps = (await (await fetch(`${tb.url}/api/ps`)).json()) as { models: { digest: string }[] };
  t.ok(ps.models.every((m) => /^[0-9a-f]{64}$/.test(m.digest)), '/api/ps too');
  // Every name with its tag, as Ollama lists them: Open WebUI adds `:latest` to a bare name and
  // looks it up in this list (a group listed bare was "not found" there), and the name listed works.
  t.ok(tags.models.every((m) => m.name.includes(':')), `tagged: ${tags.models.map((m) => m.name).join(', ')}`);
  const listed = tags.models.find((m) => m.name === 'chat-openai:latest');
  t.ok(listed !== undefined, 'the untagged group chat-openai listed as chat-openai:latest');
  t.match(await ollama.chat({ model: listed!.name, messages: [{ role: 'user', content: 'hi' }] }), { done: true }, 'and served under that name');
  // One date whichever thread answers (each thread's own start time made two), and /api/show's too.
  const dates = new Set<string>();
  for (let i = 0; i < 8; i++) for (const m of ((await (await fetch(`${tb.url}/api/tags`, { headers: { connection: 'close' } })).json()) as { models: { modified_at: string }[] }).models) dates.add(m.modified_at);
  t.equal(dates.size, 1, `one modified_at: ${[...dates].join(', ')}`);
  t.equal((made as unknown as { modified_at: string }).modified_at, [...dates][0], "a group described here: the same date, not the epoch");
});

t.test('Ollama load and unload (no prompt, no messages): answered as Ollama does, no upstream call, on either provider', async (t) => {
  const upstreamCalls = () => Object.values(okOpenai.stats.requests).reduce((a, b) => a + b, 0) + Object.values(okOllama.stats.requests).reduce((a, b) => a + b, 0);
  const before = upstreamCalls();
  const counted = () => metricValue(tb.url, 'llm_requests_total', { reason: 'answered_here' });
  const countedBefore = await counted();
  for (const model of ['chat-openai', 'chat-ollama']) {
    const gen = await ollama.generate({ model, prompt: '' });
    t.match(gen, { model, response: '', done: true, done_reason: 'load' }, `${model}: ollama run's preload`);
    const stop = await ollama.generate({ model, prompt: '', keep_alive: 0 });
    t.equal(stop.done_reason, 'unload', 'ollama stop');
    // keep_alive is a Go duration: any zero one unloads, any other loads.
    for (const [keep, reason] of [['0m', 'unload'], ['0h0m0s', 'unload'], ['5m', 'load']] as const) {
      const r = await fetch(`${tb.url}/api/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, keep_alive: keep }) });
      t.equal(((await r.json()) as { done_reason: string }).done_reason, reason, `keep_alive ${keep}`);
    }
    for (const messages of [[], null, undefined]) {
      const r = await fetch(`${tb.url}/api/chat`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, messages }) });
      t.equal(r.status, 200);
      t.match(await r.json(), { model, message: { role: 'assistant', content: '' }, done: true, done_reason: 'load' }, `chat, messages ${JSON.stringify(messages)}`);
    }
  }
  t.equal(upstreamCalls(), before, 'no upstream was asked');
  // 2 models x (2 generates + 3 keep_alives + 3 chats): each one outcome in llm_requests_total.
  t.equal((await counted()) - countedBefore, 16, 'each counted once in llm_requests_total (reason answered_here)');
  const unknown = await fetch(`${tb.url}/api/generate`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'nope' }) });
  t.equal(unknown.status, 404, 'an unknown model is still 404');
});

t.test("Ollama generate on an OpenAI deployment: chat completions (the templated prompt), /v1/completions only raw or with a suffix", async (t) => {
  const gen = await ollama.generate({ model: 'chat-openai', system: 'Be brief.', prompt: 'hi', format: 'json', images: ['iVBORw0KGgo='], options: { temperature: 0.5 } });
  t.equal(gen.response, mockText(8));
  t.equal(gen.done_reason, 'stop');
  t.equal(gen.eval_count, 8);
  t.equal(okOpenai.stats.lastPath, '/v1/chat/completions', "OpenAI's own models answer only on chat");
  const body = okOpenai.stats.lastBody as Record<string, any>;
  // Not streamed: an OpenAI-compatible upstream is asked as the client asked (upstreamStreaming: auto).
  t.match(body, { model: 'openai-1-upstream', temperature: 0.5, response_format: { type: 'json_object' }, stream: false });
  t.same(body.messages, [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: [{ type: 'text', text: 'hi' }, { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } }] }]);
  let text = '';
  let done: any;
  for await (const part of await ollama.generate({ model: 'chat-openai', prompt: 'hi', stream: true })) {
    text += part.response;
    if (part.done) done = part;
  }
  t.equal(text, mockText(8), 'streamed: chat chunks as generate lines');
  t.match(done, { done: true, done_reason: 'stop', eval_count: 8 });
  t.equal(okOpenai.stats.lastPath, '/v1/chat/completions');
  for (const extra of [{ raw: true }, { suffix: ' the end' }]) {
    // `system` as Ollama takes it there: dropped (a raw prompt is templated already; before a
    // fill-in-the-middle prefix it would be code). num_predict 0 is Ollama's "no limit".
    const r = await ollama.generate({ model: 'chat-openai', prompt: 'hi', system: 'Be brief.', options: { num_predict: 0 }, ...extra });
    t.equal(r.response, mockText(8));
    t.equal(okOpenai.stats.lastPath, '/v1/completions', JSON.stringify(extra));
    t.equal((okOpenai.stats.lastBody as Record<string, any>).prompt, 'hi');
    t.notOk('max_tokens' in (okOpenai.stats.lastBody as Record<string, any>), 'no max_tokens: 0 for an upstream to refuse');
  }
});

t.test('a 500 before the first byte is retried on another deployment', async (t) => {
  const before = fail500.stats.total;
  const retries = () => metricValue(tb.url, 'llm_upstream_retries_total', { group: 'retry-500', reason: 'upstream_5xx' });
  const retriesBefore = await retries();
  const { data, response } = await openai.chat.completions.create({ model: 'retry-500', messages }).withResponse();
  t.equal(data.choices[0]!.message.content, mockText(8));
  t.equal(response.headers.get('x-broker-deployment'), 'openai-2');
  t.ok(fail500.stats.total > before, 'the broken deployment was tried first');
  t.equal(await retries(), retriesBefore + (fail500.stats.total - before), 'one retry counted per failed attempt that another followed');
});

t.test('a 429 is retried on another deployment and counted', async (t) => {
  const before = fail429.stats.total;
  const res = await ollama.chat({ model: 'retry-429', messages });
  t.equal(res.message.content, mockText(8));
  t.ok(fail429.stats.total > before);
  t.ok((await metricValue(tb.url, 'llm_rate_limit_hits_total', { deployment: 'limited-429' })) >= 1);
});

t.test('out of deployments: 502 with the upstream error, in the client API shape', async (t) => {
  const err = await openai.chat.completions.create({ model: 'all-down', messages }).catch((e) => e);
  t.ok(err instanceof OpenAI.APIError);
  t.equal(err.status, 502);
  t.equal(err.code, 'upstream_error');
  const res = await postJson(`${tb.url}/api/chat`, { model: 'all-down', messages });
  t.equal(res.status, 502);
  t.type(res.body.error, 'string');
  // Nothing was left to retry on: a last failure is no retry (it was counted as one).
  t.equal(await metricValue(tb.url, 'llm_upstream_retries_total', { group: 'all-down' }), 0, 'no retry counted');
});

t.test('reset mid-stream: an explicit error event, never a silent end', async (t) => {
  const res = await request(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'cut', messages, stream: true }) });
  t.equal(res.statusCode, 200);
  const text = await res.body.text();
  const events = text.split('\n\n').filter(Boolean);
  const last = JSON.parse(events.at(-1)!.slice('data: '.length));
  t.equal(last.error.code, 'upstream_error');
  t.notMatch(text, /\[DONE\]/, 'no [DONE] after a failure');
  t.match(text, /tok2 /, 'the tokens before the cut were delivered');

  // The official client surfaces it as an error, after the first tokens.
  let got = '';
  const err = await (async () => {
    for await (const c of await openai.chat.completions.create({ model: 'cut', messages, stream: true })) got += c.choices[0]?.delta.content ?? '';
  })().catch((e) => e);
  t.ok(err instanceof Error, 'openai client throws');
  t.equal(got, mockText(3));

  const ores = await request(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'cut-ollama', messages }) });
  const lines = (await ores.body.text()).trim().split('\n').map((l) => JSON.parse(l));
  t.type(lines.at(-1).error, 'string', 'ollama clients get a final error line');
  t.notOk(lines.some((l) => l.done === true), 'and no done line');
  t.ok((await metricValue(tb.url, 'llm_midstream_errors_total', { group: 'cut' })) >= 2);
});

t.test('a whole reply the upstream cuts after taking the request: 502 upstream_error, not 503 unreachable', async (t) => {
  // An OpenAI-compatible upstream's whole reply (cut before it); an Ollama's, streamed and assembled (cut halfway).
  for (const [model, said] of [['cut', /closed the connection before replying/], ['cut-ollama', /closed the connection before the reply was complete/]] as const) {
    const res = await postJson(`${tb.url}/v1/chat/completions`, { model, messages });
    t.equal(res.status, 502, model);
    t.equal(res.body.error.code, 'upstream_error');
    t.match(res.body.error.message, said);
  }
});

t.test('an upstream event that is not JSON is dropped and counted, never forwarded: pass-through and translated', async (t) => {
  // Pass-through (OpenAI to OpenAI) and translated (OpenAI client to Ollama), through the official client.
  for (const model of ['junk', 'junk-ollama']) {
    let got = '';
    for await (const c of await openai.chat.completions.create({ model, messages, stream: true })) got += c.choices[0]?.delta.content ?? '';
    t.equal(got, mockText(8), `${model}: the whole answer, no error`);
    const raw = await (await request(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, messages, stream: true }) })).body.text();
    t.notMatch(raw, /hiccup/, `${model}: the junk never reaches the client`);
    t.match(raw, /data: \[DONE\]\n\n$/);
  }
  // Ollama clients: pass-through and translated.
  for (const model of ['junk-ollama', 'junk']) {
    let got = '';
    for await (const c of await ollama.chat({ model, messages, stream: true })) got += c.message.content;
    t.equal(got, mockText(8), `ollama client, ${model}`);
  }
  t.equal(await metricValue(tb.url, 'llm_upstream_malformed_events_total', { deployment: 'junk-1' }), 3);
  t.equal(await metricValue(tb.url, 'llm_upstream_malformed_events_total', { deployment: 'junk-2' }), 3);
});

t.test('stall mid-stream: idle timeout ends the stream with upstream_timeout', async (t) => {
  const res = await request(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'stalled', messages, stream: true }) });
  const text = await res.body.text();
  const last = JSON.parse(text.split('\n\n').filter(Boolean).at(-1)!.slice('data: '.length));
  t.equal(last.error.code, 'upstream_timeout');
  t.match(text, /tok1 /);
  t.ok((await metricValue(tb.url, 'llm_requests_total', { group: 'stalled', outcome: 'error', reason: 'midstream_timeout' })) >= 1);
  // `timeout` is a failure before the first byte, a 504 the availability SLO counts as a 5xx already.
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'stalled', outcome: 'error', reason: 'timeout' }), 0, 'not counted as a timeout before the first byte');
  // The availability SLO's HTTP term for a stream cut after its 200.
  t.ok((await metricValue(tb.url, 'http_streams_cut_total', { route: '/v1/chat/completions', code: 'upstream_timeout' })) >= 1, 'counted as a cut stream');
});

t.test('a client that goes away aborts the upstream request', async (t) => {
  const before = slow.stats.clientClosed;
  const ac = new AbortController();
  const res = await request(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'slow', messages }), signal: ac.signal });
  t.equal(res.statusCode, 200);
  for await (const chunk of res.body) {
    if (chunk.length > 0) break;
  }
  ac.abort();
  await slow.idle(5000);
  t.equal(slow.stats.clientClosed, before + 1, 'the mock saw its request closed');
  t.equal(slow.stats.open, 0);
  await t.resolves(async () => {
    for (let i = 0; i < 50 && (await metricValue(tb.url, 'llm_requests_total', { group: 'slow', outcome: 'aborted' })) < 1; i++) await new Promise((r) => setTimeout(r, 20));
  });
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'slow', outcome: 'aborted' }), 1);
});

t.test('unknown model: 404 model_not_found in each API shape', async (t) => {
  const err = await openai.chat.completions.create({ model: 'nope', messages }).catch((e) => e);
  t.equal(err.status, 404);
  t.equal(err.code, 'model_not_found');
  t.equal(err.param, 'model', 'the field at fault, as GET /v1/models/{model} names it');
  const o = await ollama.chat({ model: 'nope', messages }).catch((e) => e);
  t.equal(o.status_code, 404);
  t.match(o.error, /nope/);
  // A model name of 50 kB is not echoed back whole: the message is clipped (MAX_ERROR_MESSAGE_CHARS).
  const huge = await openai.chat.completions.create({ model: 'm'.repeat(50_000), messages }).catch((e) => e);
  t.equal(huge.status, 404);
  t.ok(huge.message.length <= 1100, `message of ${huge.message.length} characters`);
  t.match(huge.message, /…/);
});

t.test('bad JSON and oversized bodies', async (t) => {
  const bad = await postJson(`${tb.url}/v1/chat/completions`, '{"model":');
  t.equal(bad.status, 400);
  t.equal(bad.body.error.code, 'invalid_json');
  const badOllama = await postJson(`${tb.url}/api/chat`, '{"model":');
  t.equal(badOllama.status, 400);
  t.type(badOllama.body.error, 'string');
  const big = await postJson(`${tb.url}/v1/chat/completions`, { model: 'chat-openai', messages: [{ role: 'user', content: 'x'.repeat(70_000) }] });
  t.equal(big.status, 413);
  t.equal(big.body.error.code, 'payload_too_large');
  const noModel = await postJson(`${tb.url}/v1/chat/completions`, { messages });
  t.equal(noModel.status, 400);
});

t.test('a compressed body: 415 unsupported_encoding before it is read, in the client API shape', async (t) => {
  const json = JSON.stringify({ model: 'chat-openai', messages });
  const res = await fetch(`${tb.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'content-encoding': 'gzip', 'x-request-id': 'gzip-body-1' },
    body: gzipSync(json),
  });
  t.equal(res.status, 415);
  t.equal(res.headers.get('accept-encoding'), 'identity', 'says which coding it takes');
  const body = (await res.json()) as { error: { code: string; message: string; request_id: string; param: string | null } };
  t.equal(body.error.code, 'unsupported_encoding');
  t.match(body.error.message, /gzip/);
  t.equal(body.error.request_id, 'gzip-body-1');
  t.equal(body.error.param, 'content-encoding');
  // The Ollama routes answer in Ollama's shape.
  const o = await fetch(`${tb.url}/api/chat`, { method: 'POST', headers: { 'content-type': 'application/json', 'content-encoding': 'br' }, body: brotliCompressSync(json) });
  t.equal(o.status, 415);
  t.match(((await o.json()) as { error: string }).error, /br/);
  // identity is no coding at all; and the broker still serves after the refusals.
  const plain = await postJson(`${tb.url}/v1/chat/completions`, json, { 'content-encoding': 'identity' });
  t.equal(plain.status, 200);
  t.equal(plain.body.choices[0].message.content, mockText(8));
});

t.test('model lists', async (t) => {
  const models = await openai.models.list();
  t.ok(models.data.some((m) => m.id === 'chat-openai'));
  t.match(await openai.models.retrieve('chat-openai'), { id: 'chat-openai', object: 'model', owned_by: 'edge-broker' }, 'models.retrieve()');
  const missing: any = await openai.models.retrieve('no-such-model').catch((e: unknown) => e);
  t.equal(missing.status, 404);
  t.equal(missing.code, 'model_not_found');
  t.equal(missing.param, 'model');
  // openai-node v4 puts `org/name` in the path as it is; v5 encodes the slash.
  for (const path of ['org/slashed', 'org%2Fslashed']) {
    const r = await fetch(`${tb.url}/v1/models/${path}`, { headers: { authorization: 'Bearer sk-test' } });
    t.equal(r.status, 200, path);
    t.match(await r.json(), { id: 'org/slashed', object: 'model' });
  }
  const tags = await ollama.list();
  t.ok(tags.models.some((m) => m.name === 'chat-ollama:latest'), 'listed with its tag, as Ollama lists it');
});

t.test('LLM metrics', async (t) => {
  t.ok((await metricValue(tb.url, 'llm_requests_total', { group: 'chat-openai', outcome: 'ok' })) >= 3);
  t.ok((await metricValue(tb.url, 'llm_tokens_total', { group: 'chat-openai', direction: 'completion' })) >= 24);
  t.ok((await metricValue(tb.url, 'llm_ttft_seconds_count', { group: 'chat-openai' })) >= 1);
  t.ok((await metricValue(tb.url, 'llm_inter_token_seconds_count', { group: 'chat-openai' })) >= 7);
  t.ok((await metricValue(tb.url, 'llm_request_duration_seconds_count')) >= 10);
  t.ok((await metricValue(tb.url, 'broker_overhead_seconds_count')) >= 10);
});

t.test('without BROKER_CONFIG and no local Ollama: 503 saying how to configure one', async (t) => {
  const nb = await startTestBroker({ OLLAMA_URL: 'http://127.0.0.1:9' });
  t.teardown(() => nb.close());
  const res = await postJson(`${nb.url}/v1/chat/completions`, { model: 'x', messages });
  t.equal(res.status, 503);
  t.equal(res.body.error.code, 'upstream_unavailable');
  t.match(res.body.error.message, /BROKER_CONFIG/);
  const o = await postJson(`${nb.url}/api/generate`, { model: 'x', prompt: 'hi' });
  t.equal(o.status, 503);
  t.match(o.body.error, /BROKER_CONFIG/);
});

t.test('without BROKER_CONFIG, a local Ollama (here the mock) is discovered', async (t) => {
  const local = await mock({ models: ['llama-local'] });
  const nb = await startTestBroker({ OLLAMA_URL: local.url });
  t.teardown(() => nb.close());
  const o = new Ollama({ host: nb.url });
  t.ok((await o.list()).models.some((m) => m.name === 'llama-local:latest'));
  t.equal((await o.chat({ model: 'llama-local', messages })).message.content, mockText(8));
});

t.test("an Ollama endpoint the broker does not serve: 404 in Ollama's shape, which the Ollama client reads; the broker's own /api/ routes keep its shape", async (t) => {
  const err = (await ollama.pull({ model: 'llama3' }).catch((e: unknown) => e)) as { status_code?: number; error?: string; message?: string };
  t.equal(err.status_code, 404);
  t.match(err.error ?? err.message, /no route for \/api\/pull/, 'a message, not [object Object]');
  // ps is served: what is loaded (test/fleet/runtime.test.ts has the loaded and cold cases).
  t.ok(Array.isArray((await ollama.ps()).models), "ollama.ps() reads the broker's answer");
  const own = await fetch(`${tb.url}/api/industrial/no-such-thing`);
  const body = (await own.json()) as { error: { code?: string } };
  t.equal(typeof body.error, 'object', 'admin routes: the broker shape');
});
