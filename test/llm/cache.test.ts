// The response cache: exact match, replay in the client's API and mode, the client's
// directives, per-group modes, clean replies only, shared by the threads of a process
// (FRONT_THREADS=2) and by replicas through Redis, quotas not charged on a hit; the
// Responses and Messages APIs with their vendors' clients (openai, @anthropic-ai/sdk).
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, Client, request, setGlobalDispatcher } from 'undici';
import { Redis } from 'ioredis';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { Ollama } from 'ollama';
import { stringify } from 'yaml';
import { createMockUpstream, mockText, type MockUpstream } from '../../src/mock-upstream/server.ts';
import { parseSse } from '../../src/mock-upstream/wire.ts';
import { startTestBroker, metricValue } from '../helpers/broker.ts';
import { startRedis } from '../helpers/redis.ts';

// One connection per origin for fetch and the SDKs: a repeat then reaches the thread that
// stored the entry. Any other thread has it a message later (tested on its own below, with
// that wait); back to back on a busy machine, a repeat on a new connection could beat it.
setGlobalDispatcher(new Agent({ connections: 1 }));

const redis = await startRedis(t);
const mocks: MockUpstream[] = [];
const mock = async (o: Parameters<typeof createMockUpstream>[0] = {}) => {
  const m = await createMockUpstream({ tokens: 8, ...o });
  mocks.push(m);
  return m;
};
const up = await mock();
const upOllama = await mock();
const upOff = await mock();
const upOn = await mock();
const cut = await mock({ fail: 'reset', failAfter: 3 });
const down = await mock({ fail: 500 });
const upApis = await mock();
const upNative = await mock();
const upTools = await mock({ toolCalls: 2 });
const cutApis = await mock({ fail: 'reset', failAfter: 3 });
// An OpenAI-compatible upstream whose streams just stop: text, then [DONE], no finish reason.
let unfinishedServed = 0;
const unfinished = createServer((req, res) => {
  req.resume();
  unfinishedServed++;
  const chunk = (delta: Record<string, unknown>) => `data: ${JSON.stringify({ id: 'u', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.end(chunk({ role: 'assistant', content: '' }) + chunk({ content: 'half an' }) + 'data: [DONE]\n\n');
});
await new Promise<void>((r) => unfinished.listen(0, '127.0.0.1', r));
t.teardown(() => unfinished.close());
const unfinishedUp = { url: `http://127.0.0.1:${(unfinished.address() as AddressInfo).port}` } as MockUpstream;
// Upstreams that send a whole reply, terminal event included, then hold the response open:
// their end comes long after the client has read the reply (as a server that flushes its last
// event and closes the chunked body later, or a proxy in front of it, may).
const LINGER_MS = 1500;
const lingering = (body: (model: string) => string, contentType: string) => {
  const s = createServer((req, res) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c));
    req.on('end', () => {
      res.writeHead(200, { 'content-type': contentType });
      res.write(body(String((JSON.parse(raw) as { model?: string }).model)));
      const timer = setTimeout(() => res.end(), LINGER_MS);
      res.on('close', () => clearTimeout(timer));
    });
  });
  t.teardown(() => s.closeAllConnections());
  t.teardown(() => s.close());
  return s;
};
const sseChunk = (delta: Record<string, unknown>, finish: string | null) =>
  `data: ${JSON.stringify({ id: 'l', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
const lingerSse = lingering(() => sseChunk({ role: 'assistant', content: '' }, null) + sseChunk({ content: 'kept ' }, null) + sseChunk({ content: 'open' }, null) + sseChunk({}, 'stop') + 'data: [DONE]\n\n', 'text/event-stream');
const lingerNdjson = lingering(
  (model) =>
    [
      { model, created_at: '2026-01-01T00:00:00Z', message: { role: 'assistant', content: 'kept ' }, done: false },
      { model, created_at: '2026-01-01T00:00:00Z', message: { role: 'assistant', content: 'open' }, done: false },
      { model, created_at: '2026-01-01T00:00:00Z', message: { role: 'assistant', content: '' }, done: true, done_reason: 'stop', prompt_eval_count: 5, eval_count: 2 },
    ]
      .map((l) => JSON.stringify(l) + '\n')
      .join(''),
  'application/x-ndjson',
);
await Promise.all([lingerSse, lingerNdjson].map((s) => new Promise<void>((r) => s.listen(0, '127.0.0.1', r))));
const urlOf = (s: ReturnType<typeof createServer>) => ({ url: `http://127.0.0.1:${(s.address() as AddressInfo).port}` }) as MockUpstream;
const d = (id: string, provider: 'openai' | 'ollama', m: MockUpstream) => ({ id, provider, url: m.url, model: `${id}-up` });
const fleet = {
  cache: { mode: 'deterministic', maxBytes: 1_000_000, ttlSeconds: 600 },
  apiKeys: { 'sk-quota': { tpm: 200 }, 'sk-rpm': { rpm: 3 } },
  // A tier that caps output: its replies are keyed apart from the uncapped ones.
  qos: { defaultTier: 'standard', tiers: { standard: {}, short: { maxOutputTokens: 3 } } },
  modelGroups: {
    det: { deployments: [d('det-1', 'openai', up)] },
    llama: { deployments: [d('llama-1', 'ollama', upOllama)] },
    off: { deployments: [d('off-1', 'openai', upOff)], cache: 'off' },
    on: { deployments: [d('on-1', 'openai', upOn)], cache: 'on' },
    cut: { deployments: [d('cut-1', 'openai', cut)], cache: 'on' },
    down: { deployments: [d('down-1', 'openai', down)], cache: 'on' },
    apis: { deployments: [d('apis-1', 'openai', upApis)], cache: 'on' },
    native: { deployments: [{ ...d('native-1', 'openai', upNative), responses: true }], cache: 'on' },
    'apis-tools': { deployments: [d('tools-1', 'openai', upTools)], cache: 'on' },
    'apis-cut': { deployments: [d('apis-cut-1', 'openai', cutApis)], cache: 'on' },
    unfinished: { deployments: [d('unfinished-1', 'openai', unfinishedUp)], cache: 'on' },
    'linger-sse': { deployments: [d('linger-sse-1', 'openai', urlOf(lingerSse))], cache: 'on' },
    'linger-ndjson': { deployments: [d('linger-ndjson-1', 'ollama', urlOf(lingerNdjson))], cache: 'on' },
  },
};
const dir = mkdtempSync(join(tmpdir(), 'eb-cache-'));
writeFileSync(join(dir, 'broker.yaml'), stringify(fleet));
const env = { BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false', REDIS_URL: redis.url, BROKER_FF_QUOTA_ENFORCEMENT: 'true', BROKER_FF_QOS_SWITCHING: 'true' };
const tb = await startTestBroker({ ...env, FRONT_THREADS: '2' });
t.teardown(async () => {
  await tb.close();
  await Promise.all(mocks.map((m) => m.close()));
});

const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
const ollama = new Ollama({ host: tb.url });
const anthropic = new Anthropic({ baseURL: tb.url, apiKey: 'sk-test', maxRetries: 0 });
let n = 0;
/** A prompt no other test uses: entries do not leak between tests. */
const fresh = () => [{ role: 'user' as const, content: `question ${++n} ${Date.now()}` }];

async function streamed(model: string, messages: { role: 'user'; content: string }[], extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) {
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ model, messages, stream: true, temperature: 0, ...extra }) });
  const { events, done } = parseSse(await res.text());
  const deltas = (events as { choices?: { delta?: { content?: string } }[] }[]).map((e) => e.choices?.[0]?.delta?.content).filter((c): c is string => typeof c === 'string' && c !== '');
  return { status: res.status, cache: res.headers.get('x-broker-cache'), deltas, done, events };
}

t.test('a stream at temperature 0 is stored, then replayed with its chunking, streamed and whole', async (t) => {
  const messages = fresh();
  const before = up.stats.total;
  const first = await streamed('det', messages);
  t.equal(first.cache, 'miss');
  t.equal(first.deltas.join(''), mockText(8));
  const again = await streamed('det', messages);
  t.equal(again.cache, 'hit');
  t.same(again.deltas, first.deltas, 'the same chunks, one event each');
  const modelOf = (events: unknown[]) => (events[0] as { model?: string }).model;
  t.equal(modelOf(again.events), modelOf(first.events), 'the model name the miss gave (the upstream passed through), not another');
  t.ok(again.done, '[DONE] at the end');
  t.equal(up.stats.total, before + 1, 'the upstream was called once');
  // The stored stream answers a whole request, in the client's API.
  const { data, response } = await openai.chat.completions.create({ model: 'det', messages, temperature: 0 }).withResponse();
  t.equal(response.headers.get('x-broker-cache'), 'hit');
  t.equal(data.choices[0]!.message.content, mockText(8));
  t.equal(data.choices[0]!.finish_reason, 'stop');
  t.equal(data.usage!.completion_tokens, 8, 'usage reports the cached tokens');
  t.equal(data.usage!.prompt_tokens_details?.cached_tokens, data.usage!.prompt_tokens, 'and says the prompt came from the cache');
  // include_usage on a replayed stream gets the usage chunk.
  const withUsage = await streamed('det', messages, { stream_options: { include_usage: true } });
  t.equal(withUsage.cache, 'hit');
  t.ok((withUsage.events as { usage?: { completion_tokens: number } }[]).some((e) => e.usage?.completion_tokens === 8));
  t.equal(up.stats.total, before + 1);
});

t.test('a whole reply is stored and answers a stream in one chunk', async (t) => {
  const messages = fresh();
  const first = await openai.chat.completions.create({ model: 'det', messages, temperature: 0 }).withResponse();
  t.equal(first.response.headers.get('x-broker-cache'), 'miss');
  const again = await streamed('det', messages);
  t.equal(again.cache, 'hit');
  t.same(again.deltas, [mockText(8)]);
});

t.test('Ollama client: stored stream replayed as NDJSON and whole, chunking kept', async (t) => {
  const messages = fresh();
  const before = upOllama.stats.total;
  const parts: string[] = [];
  let missModel = '';
  for await (const p of await ollama.chat({ model: 'llama', messages, stream: true, options: { temperature: 0 } })) {
    if (p.message.content !== '') parts.push(p.message.content);
    missModel = p.model;
  }
  const replayed: string[] = [];
  let last;
  for await (const p of await ollama.chat({ model: 'llama', messages, stream: true, options: { temperature: 0 } })) {
    if (p.message.content !== '') replayed.push(p.message.content);
    last = p;
  }
  t.same(replayed, parts);
  t.equal(last?.done, true);
  t.equal(last?.eval_count, 8);
  const whole = await ollama.chat({ model: 'llama', messages, options: { temperature: 0 } });
  t.equal(whole.message.content, mockText(8));
  t.equal(last?.model, missModel, 'a streamed hit names the model the miss did');
  t.equal(whole.model, missModel, 'so does a whole one');
  t.equal(upOllama.stats.total, before + 1);
  // Another API is another entry: an OpenAI client asking the same is a miss.
  const other = await streamed('llama', messages);
  t.equal(other.cache, 'miss');
});

t.test('deterministic mode: other temperatures go upstream unless the client says use', async (t) => {
  const messages = fresh();
  const before = up.stats.total;
  t.equal((await streamed('det', messages, { temperature: 0.7 })).cache, 'miss');
  t.equal((await streamed('det', messages, { temperature: 0.7 })).cache, 'miss');
  t.equal(up.stats.total, before + 2);
  t.equal((await streamed('det', messages, { temperature: 0.7 }, { 'x-broker-cache': 'use' })).cache, 'miss');
  t.equal((await streamed('det', messages, { temperature: 0.7 }, { 'x-broker-cache': 'use' })).cache, 'hit');
  t.equal(up.stats.total, before + 3);
  // A parameter that changes the output is another entry.
  t.equal((await streamed('det', messages, { temperature: 0.7, max_tokens: 4 }, { 'x-broker-cache': 'use' })).cache, 'miss');
});

t.test('bypass skips the cache, refresh fetches again and stores', async (t) => {
  const messages = fresh();
  await streamed('det', messages);
  const before = up.stats.total;
  t.equal((await streamed('det', messages, {}, { 'x-broker-cache': 'bypass' })).cache, 'miss');
  t.equal((await streamed('det', messages, {}, { 'x-broker-cache': 'refresh' })).cache, 'miss');
  t.equal(up.stats.total, before + 2);
  t.equal((await streamed('det', messages)).cache, 'hit');
  t.equal(up.stats.total, before + 2);
  const bad = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'x-broker-cache': 'always' }, body: JSON.stringify({ model: 'det', messages }) });
  t.equal(bad.status, 400);
  t.equal(((await bad.json()) as { error: { code: string } }).error.code, 'invalid_request');
});

t.test('per group: off never caches, on caches any temperature', async (t) => {
  const messages = fresh();
  await streamed('off', messages);
  t.equal((await streamed('off', messages)).cache, 'miss');
  t.equal((await streamed('off', messages, {}, { 'x-broker-cache': 'use' })).cache, 'miss');
  t.equal(upOff.stats.total, 3);
  await streamed('on', messages, { temperature: 1 });
  t.equal((await streamed('on', messages, { temperature: 1 })).cache, 'hit');
  t.equal(upOn.stats.total, 1);
});

t.test('a reply whose upstream never said how it finished is served as it came, but never stored, in any client API', async (t) => {
  const messages = fresh();
  const calls: Array<[string, Record<string, unknown>]> = [
    ['/v1/chat/completions', { stream: true }],
    ['/v1/messages', { stream: true, max_tokens: 50 }],
    ['/v1/responses', { stream: true, input: messages[0]!.content }],
    ['/api/chat', {}],
  ];
  for (const [path, body] of calls) {
    for (let i = 0; i < 2; i++) {
      const served = unfinishedServed;
      const res = await fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'x-broker-cache': 'use' }, body: JSON.stringify({ model: 'unfinished', messages, ...body }) });
      t.match(await res.text(), /half an/, `${path}: the text as it came`);
      t.equal(res.headers.get('x-broker-cache'), 'miss', `${path}, request ${i + 1}: not from the cache`);
      t.equal(unfinishedServed, served + 1, `${path}, request ${i + 1}: the upstream was asked`);
    }
  }
});

t.test('a cut stream is never stored; an error reply carries x-broker-cache too', async (t) => {
  const messages = fresh();
  const a = await streamed('cut', messages);
  t.notOk(a.done);
  const b = await streamed('cut', messages);
  t.equal(b.cache, 'miss');
  t.equal(cut.stats.total, 2);
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'down', messages }) });
  t.equal(res.status, 502);
  t.equal(res.headers.get('x-broker-cache'), 'miss');
  t.equal((await streamed('down', messages)).cache, 'miss', 'an error is not stored either');
});

t.test('threads share entries: a repeat hits on any thread, on a new connection each time', async (t) => {
  const messages = fresh();
  const received = await metricValue(tb.url, 'llm_cache_received_total');
  await streamed('det', messages);
  const before = up.stats.total;
  // Stores reach the other threads by message (the other data-plane thread and the control
  // plane's gRPC side): wait until both have it, then open new connections.
  for (let i = 0; i < 200 && (await metricValue(tb.url, 'llm_cache_received_total')) < received + 2; i++) await new Promise((r) => setTimeout(r, 10));
  const results: string[] = [];
  for (let i = 0; i < 8; i++) {
    const agent = new Agent({ pipelining: 0 });
    const res = await request(`${tb.url}/v1/chat/completions`, { method: 'POST', dispatcher: agent, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'det', messages, temperature: 0 }) });
    await res.body.text();
    results.push(String(res.headers['x-broker-cache']));
    await agent.close();
  }
  t.same(results, Array(8).fill('hit'));
  t.equal(up.stats.total, before);
});

t.test('a repeat right after the reply, on a connection the other thread serves, hits', async (t) => {
  // The entry goes to the other threads before the reply's last byte, not after it: a client
  // that repeats at once on another connection no longer races the store (most of these
  // missed when the store came after the reply). A request id starts with its thread's prefix.
  const ask = async (c: Client, content: string, stream: boolean) => {
    const res = await c.request({ path: '/v1/chat/completions', method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'det', messages: [{ role: 'user', content }], temperature: 0, stream }) });
    await res.body.text();
    return { cache: String(res.headers['x-broker-cache']), thread: String(res.headers['x-request-id']).slice(0, 12) };
  };
  const conns: { c: Client; thread: string }[] = [];
  for (let i = 0; i < 40 && conns.length < 2; i++) {
    const c = new Client(tb.url);
    const { thread } = await ask(c, `which thread ${i} ${Date.now()}`, false);
    if (conns.some((x) => x.thread === thread)) await c.close();
    else conns.push({ c, thread });
  }
  t.teardown(() => Promise.all(conns.map((x) => x.c.close())));
  t.equal(conns.length, 2, 'two connections on two threads');
  const [a, b] = conns as [{ c: Client; thread: string }, { c: Client; thread: string }];
  const before = up.stats.total;
  const results: string[] = [];
  for (let i = 0; i < 30; i++) {
    const content = `repeat at once ${i} ${Date.now()}`;
    const stream = i % 2 === 0;
    t.equal((await ask(a.c, content, stream)).cache, 'miss');
    const repeat = await ask(b.c, content, !stream);
    t.not(repeat.thread, a.thread);
    results.push(repeat.cache);
  }
  t.same(results, Array(30).fill('hit'), 'every repeat on the other thread hit');
  t.equal(up.stats.total - before, 30, 'only the first of each pair went upstream');
});

t.test("a stream is stored at its terminal event, not at the upstream's end: a repeat read as soon as the reply is whole hits", async (t) => {
  // The client reads until its terminal event ([DONE], the done line) and asks again at once on
  // a new connection, while the upstream still holds its response open: before, the entry was
  // stored only when the upstream ended, and every one of these repeats missed.
  const cases = [
    { model: 'linger-sse', path: '/v1/chat/completions', terminal: 'data: [DONE]', text: (b: string) => parseSse(b).events.map((e) => (e as { choices?: { delta?: { content?: string } }[] }).choices?.[0]?.delta?.content ?? '').join('') },
    { model: 'linger-ndjson', path: '/api/chat', terminal: '"done":true', text: (b: string) => b.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { message?: { content?: string } }).message?.content ?? '').join('') },
  ];
  for (const c of cases) {
    for (let i = 0; i < 3; i++) {
      const messages = fresh();
      const first = new Client(tb.url);
      t.teardown(() => first.close());
      const res = await first.request({ path: c.path, method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: c.model, messages, stream: true, temperature: 0 }) });
      t.equal(res.headers['x-broker-cache'], 'miss', `${c.model}: the first goes upstream`);
      let seen = '';
      for await (const chunk of res.body) {
        seen += String(chunk);
        if (seen.includes(c.terminal)) break;
      }
      t.equal(c.text(seen), 'kept open', `${c.model}: the reply is whole`);
      // The first response is still open (the upstream lingers): the repeat takes a new connection.
      const again = new Client(tb.url);
      const rep = await again.request({ path: c.path, method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: c.model, messages, stream: false, temperature: 0 }) });
      const body = await rep.body.text();
      await again.close();
      t.equal(rep.headers['x-broker-cache'], 'hit', `${c.model}: repeat ${i} hits before the upstream has ended`);
      t.match(body, /kept open/);
    }
  }
});

t.test('replicas share entries through Redis, with a TTL', async (t) => {
  const messages = fresh();
  await streamed('det', messages);
  const other = await startTestBroker({ ...env, FRONT_THREADS: '0' });
  t.teardown(() => other.close());
  const before = up.stats.total;
  const res = await fetch(`${other.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'det', messages, temperature: 0 }) });
  t.equal(res.headers.get('x-broker-cache'), 'hit', 'the other replica never saw it');
  t.equal(((await res.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content, mockText(8));
  t.equal(up.stats.total, before);
  const r = new Redis(redis.url);
  t.teardown(() => r.disconnect());
  const keys = await r.keys('eb:cache:*');
  t.ok(keys.length > 0);
  const ttl = await r.ttl(keys[0]!);
  t.ok(ttl > 0 && ttl <= 600, `TTL ${ttl} s`);
});

t.test('a hit charges no quota; metrics count hits, misses, stores and bytes', async (t) => {
  const messages = fresh();
  const keyed = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-quota', maxRetries: 0 });
  await keyed.chat.completions.create({ model: 'det', messages, temperature: 0, max_tokens: 20 });
  const phase = (p: string) => metricValue(tb.url, 'llm_phase_seconds_count', { phase: p, stream: 'false' });
  const [upstream0, dispatch0] = [await phase('upstream'), await phase('dispatch')];
  // About 15 tokens each: charged, 30 hits would be ~450 tokens of a 200 TPM key.
  for (let i = 0; i < 30; i++) {
    const { response } = await keyed.chat.completions.create({ model: 'det', messages, temperature: 0, max_tokens: 20 }).withResponse();
    t.equal(response.headers.get('x-broker-cache'), 'hit');
  }
  t.ok((await metricValue(tb.url, 'llm_cache_lookups_total', { group: 'det', result: 'hit' })) >= 30);
  t.ok((await metricValue(tb.url, 'llm_cache_lookups_total', { group: 'det', result: 'miss' })) > 0);
  t.ok((await metricValue(tb.url, 'llm_cache_stores_total', { group: 'det' })) > 0);
  t.ok((await metricValue(tb.url, 'llm_cache_bytes')) > 0);
  t.equal(await metricValue(tb.url, 'llm_requests_total', { deployment: 'cache', reason: 'cache_hit' }) >= 30, true);
  t.equal((await phase('dispatch')) - dispatch0, 30, 'each hit in the dispatch phase');
  t.equal((await phase('upstream')) - upstream0, 0, 'no hit in the upstream phase: it had none');
});

t.test('a hit gives the request back to an RPM quota too', async (t) => {
  // One minute's window: start well inside one. Requests that count are spaced by more than
  // the lease keeper's tick (REDIS_URL: the key's budget comes in leased blocks, topped up every 50 ms).
  const left = 60_000 - (Date.now() % 60_000);
  if (left < 5_000) await new Promise((r) => setTimeout(r, left + 100));
  const settle = () => new Promise((r) => setTimeout(r, 200));
  const messages = fresh();
  const keyed = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-rpm', maxRetries: 0 });
  await keyed.chat.completions.create({ model: 'det', messages, temperature: 0 });
  await settle();
  // rpm 3: charged, the third hit would be refused with 429.
  for (let i = 0; i < 6; i++) {
    const { response } = await keyed.chat.completions.create({ model: 'det', messages, temperature: 0 }).withResponse();
    t.equal(response.headers.get('x-broker-cache'), 'hit', `hit ${i + 1} of 6 answered`);
  }
  // Misses still count: two more fill the minute, the next is refused.
  await settle();
  await keyed.chat.completions.create({ model: 'det', messages: fresh(), temperature: 0 });
  await settle();
  await keyed.chat.completions.create({ model: 'det', messages: fresh(), temperature: 0 });
  await settle();
  const err = (await keyed.chat.completions.create({ model: 'det', messages: fresh(), temperature: 0 }).then(() => undefined, (e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>;
  t.equal(err?.status, 429, 'the fourth upstream request of the minute is over rpm 3');
  t.ok((await metricValue(tb.url, 'llm_requests_total', { group: 'det', deployment: 'none', outcome: 'client_error', reason: 'quota_exceeded' })) >= 1, "the key's refusal is in llm_requests_total");
  // The minute is spent, but a hit takes no quota: it is still answered (the quota is
  // reserved only once the cache missed), and takes no budget from the other replicas' share.
  const { response } = await keyed.chat.completions.create({ model: 'det', messages, temperature: 0 }).withResponse();
  t.equal(response.headers.get('x-broker-cache'), 'hit', 'a hit is answered with the quota spent');
});

t.test('embeddings reserve no output tokens and get no output cap', async (t) => {
  // A 200 TPM key: with 256 output tokens reserved, an embedding could never fit.
  const keyed = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-quota', maxRetries: 0 });
  const r = await keyed.embeddings.create({ model: 'det', input: ['a short text'] });
  t.equal(r.data.length, 1, 'served within a 200 TPM quota');
  await keyed.embeddings.create({ model: 'det', input: ['a short text'] }, { headers: { 'x-broker-qos': 'short' } });
  const sent = up.stats.lastBody as Record<string, unknown>;
  t.equal(sent['max_tokens'], undefined, "the tier's output cap is not written into an embeddings body");
});

t.test("a QoS tier's capped reply does not answer another tier, nor the other way round", async (t) => {
  const messages = fresh();
  const short = await streamed('on', messages, {}, { 'x-broker-qos': 'short' });
  t.equal(short.cache, 'miss');
  t.equal(short.deltas.join(''), mockText(3), 'the tier caps the output at 3 tokens');
  const full = await streamed('on', messages);
  t.equal(full.cache, 'miss', 'the standard tier is not answered by the capped reply');
  t.equal(full.deltas.join(''), mockText(8));
  const again = await streamed('on', messages, {}, { 'x-broker-qos': 'short' });
  t.equal(again.cache, 'hit', 'each tier hits its own entry');
  t.equal(again.deltas.join(''), mockText(3));
  // A client that asks for the capped size itself gets the same upstream request: one entry.
  const same = await streamed('on', messages, { max_tokens: 3 });
  t.equal(same.cache, 'hit');
});

/** A Responses or Messages request as raw SSE: the event names as sent (ping included, which the SDK skips). */
async function sse(path: '/v1/responses' | '/v1/messages', body: Record<string, unknown>, headers: Record<string, string> = {}) {
  const res = await fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ ...body, stream: true }) });
  const text = await res.text();
  const types = [...text.matchAll(/^event: (.+)$/gm)].map((m) => m[1]!);
  const data = [...text.matchAll(/^data: (.+)$/gm)].map((m) => JSON.parse(m[1]!) as { type: string; delta?: unknown });
  const deltas = data.map((e) => (e.type === 'response.output_text.delta' ? e.delta : e.type === 'content_block_delta' ? (e.delta as { text?: string }).text : undefined)).filter((x): x is string => typeof x === 'string');
  return { status: res.status, cache: res.headers.get('x-broker-cache'), types, deltas, data };
}
const question = () => fresh()[0]!.content;

t.test('Responses API: a stream is stored and replayed event for event; it answers a whole request', async (t) => {
  for (const [model, m] of [['apis', upApis], ['native', upNative]] as const) {
    const input = question();
    const before = m.stats.total;
    const first = await sse('/v1/responses', { model, input });
    t.equal(first.cache, 'miss');
    t.equal(first.deltas.join(''), mockText(8));
    const again = await sse('/v1/responses', { model, input });
    t.equal(again.cache, 'hit', `${model}: a hit`);
    t.same(again.types, first.types, `${model}: the same events in the same order (${first.types.length})`);
    t.same(again.deltas, first.deltas, 'the same chunks');
    // The official client reads the replayed stream.
    const { data: stream, response } = await openai.responses.create({ model, input, stream: true }).withResponse();
    t.equal(response.headers.get('x-broker-cache'), 'hit');
    let text = '';
    let done: OpenAI.Responses.Response | undefined;
    for await (const ev of stream) {
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed') done = ev.response;
    }
    t.equal(text, mockText(8));
    t.equal(done?.usage?.output_tokens, 8, 'usage reports the stored tokens');
    t.ok((done?.usage?.input_tokens ?? 0) > 0);
    t.equal(done?.usage?.input_tokens_details.cached_tokens, done?.usage?.input_tokens, 'and says the prompt came from the cache');
    // The stored stream answers a whole request.
    const whole = await openai.responses.create({ model, input }).withResponse();
    t.equal(whole.response.headers.get('x-broker-cache'), 'hit');
    t.equal(whole.data.output_text, mockText(8));
    t.equal(whole.data.status, 'completed');
    t.equal(whole.data.usage?.input_tokens_details.cached_tokens, whole.data.usage?.input_tokens);
    t.equal(m.stats.total, before + 1, `${model}: the upstream was called once`);
  }
});

t.test('Responses API: a whole reply answers a stream; deterministic mode and the directives apply', async (t) => {
  const input = question();
  const first = await openai.responses.create({ model: 'apis', input, max_output_tokens: 50 }).withResponse();
  t.equal(first.response.headers.get('x-broker-cache'), 'miss');
  const again = await sse('/v1/responses', { model: 'apis', input, max_output_tokens: 50 });
  t.equal(again.cache, 'hit');
  t.same(again.deltas, [mockText(8)], 'one chunk');
  t.equal((await sse('/v1/responses', { model: 'apis', input, max_output_tokens: 51 })).cache, 'miss', 'another parameter is another entry');
  t.equal((await sse('/v1/responses', { model: 'apis', input, max_output_tokens: 50 }, { 'x-broker-cache': 'bypass' })).cache, 'miss');
  // det is deterministic: temperature 0 or x-broker-cache: use.
  const q = question();
  await sse('/v1/responses', { model: 'det', input: q, temperature: 0.5 });
  t.equal((await sse('/v1/responses', { model: 'det', input: q, temperature: 0.5 })).cache, 'miss');
  await sse('/v1/responses', { model: 'det', input: q, temperature: 0 });
  t.equal((await sse('/v1/responses', { model: 'det', input: q, temperature: 0 })).cache, 'hit');
});

t.test('Messages API: a stream is stored and replayed event for event; it answers a whole request and messages.stream', async (t) => {
  const messages = fresh();
  const body = { model: 'apis', max_tokens: 100, messages };
  const before = upApis.stats.total;
  const first = await sse('/v1/messages', body);
  t.equal(first.cache, 'miss');
  const again = await sse('/v1/messages', body);
  t.equal(again.cache, 'hit');
  t.same(again.types, first.types, `the same events in the same order, ping included (${first.types.join(' ')})`);
  t.same(again.deltas, first.deltas);
  t.equal(again.deltas.join(''), mockText(8));
  const started = again.data.find((e) => e.type === 'message_start') as unknown as { message: { usage: Record<string, number> } };
  t.ok(started.message.usage['cache_read_input_tokens']! > 0, "a replay's message_start says the prompt, read from the cache, as Anthropic's does");
  const { data: stream, response } = await anthropic.messages.stream(body).withResponse();
  t.equal(response.headers.get('x-broker-cache'), 'hit');
  const final = await stream.finalMessage();
  t.same(final.content, [{ type: 'text', text: mockText(8) }]);
  t.equal(final.stop_reason, 'end_turn');
  t.equal(final.usage.output_tokens, 8, 'usage reports the stored tokens');
  t.equal(final.usage.input_tokens, 0, 'the prompt is counted as read from the cache');
  t.ok((final.usage.cache_read_input_tokens ?? 0) > 0);
  const whole = await anthropic.messages.create(body).withResponse();
  t.equal(whole.response.headers.get('x-broker-cache'), 'hit');
  t.same(whole.data.content, [{ type: 'text', text: mockText(8) }]);
  t.equal(whole.data.usage.cache_read_input_tokens, final.usage.cache_read_input_tokens);
  t.equal(upApis.stats.total, before + 1, 'the upstream was called once');
  // A whole reply answers a stream, in one chunk.
  const other = { ...body, messages: fresh() };
  t.equal((await anthropic.messages.create(other).withResponse()).response.headers.get('x-broker-cache'), 'miss');
  const s = await sse('/v1/messages', other);
  t.equal(s.cache, 'hit');
  t.same(s.deltas, [mockText(8)]);
});

t.test('Responses and Messages: cut streams and tool calls are not stored', async (t) => {
  const input = question();
  const cutR = await sse('/v1/responses', { model: 'apis-cut', input });
  t.equal(cutR.types.at(-1), 'response.failed');
  t.equal((await sse('/v1/responses', { model: 'apis-cut', input })).cache, 'miss');
  const messages = fresh();
  const cutM = await sse('/v1/messages', { model: 'apis-cut', max_tokens: 100, messages });
  t.equal(cutM.types.at(-1), 'error');
  t.equal((await sse('/v1/messages', { model: 'apis-cut', max_tokens: 100, messages })).cache, 'miss');
  // Each repeat went upstream again (a miss, not a replay); the last may instead meet the
  // deployment's breaker, open after three streams cut in a row.
  t.ok(cutApis.stats.total >= 3, `upstream requests: ${cutApis.stats.total}`);

  const before = upTools.stats.total;
  const rTools = [{ type: 'function' as const, name: 'get_weather', parameters: { type: 'object', properties: {} }, strict: false }];
  for (let i = 0; i < 2; i++) {
    const r = await openai.responses.create({ model: 'apis-tools', input, tools: rTools }).withResponse();
    t.equal(r.response.headers.get('x-broker-cache'), 'miss');
    t.equal(r.data.output[0]?.type, 'function_call');
    t.equal((await sse('/v1/responses', { model: 'apis-tools', input, tools: rTools })).cache, 'miss');
  }
  const mTools = [{ name: 'get_weather', input_schema: { type: 'object' as const } }];
  for (let i = 0; i < 2; i++) {
    const m = await anthropic.messages.create({ model: 'apis-tools', max_tokens: 100, tools: mTools, messages }).withResponse();
    t.equal(m.response.headers.get('x-broker-cache'), 'miss');
    t.equal(m.data.stop_reason, 'tool_use');
    const final = await anthropic.messages.stream({ model: 'apis-tools', max_tokens: 100, tools: mTools, messages }).finalMessage();
    t.equal(final.content[0]?.type, 'tool_use');
  }
  t.equal(upTools.stats.total, before + 8, 'every tool-call request went upstream');
});

// Last: a second replica on the same Redis splits the keys' quota leases (the quota tests above).
t.test('across replicas: a refresh on one reaches the other, and an entry read from Redis keeps only the time it had left', async (t) => {
  const other = await startTestBroker({ ...env, FRONT_THREADS: '0' });
  t.teardown(() => other.close());
  const r = new Redis(redis.url);
  t.teardown(() => r.disconnect());
  const ask = async (url: string, messages: { role: 'user'; content: string }[], headers: Record<string, string> = {}) => {
    const res = await fetch(`${url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ model: 'on', messages }) });
    return { cache: res.headers.get('x-broker-cache'), text: ((await res.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content };
  };
  // Refresh: the other replica held the old reply in memory; it must serve the new one.
  const messages = fresh();
  const stored = new Set(await r.keys('eb:cache:*'));
  t.equal((await ask(tb.url, messages)).cache, 'miss');
  // The entry reaches Redis once the reply has ended: a moment after the client read it.
  for (let i = 0; i < 100 && (await r.keys('eb:cache:*')).every((k) => stored.has(k)); i++) await new Promise((res) => setTimeout(res, 10));
  t.same(await ask(other.url, messages), { cache: 'hit', text: mockText(8) }, 'the other replica reads it from Redis');
  upOn.setKnobs({ tokens: 5 });
  t.teardown(() => upOn.setKnobs({ tokens: 8 }));
  t.same(await ask(tb.url, messages, { 'x-broker-cache': 'refresh' }), { cache: 'miss', text: mockText(5) }, 'refreshed here');
  let seen = await ask(other.url, messages);
  for (let i = 0; i < 100 && seen.text !== mockText(5); i++) {
    await new Promise((res) => setTimeout(res, 20));
    seen = await ask(other.url, messages);
  }
  t.same(seen, { cache: 'hit', text: mockText(5) }, 'the other replica serves the refreshed reply, not its old copy');
  // TTL: the key expires in Redis soon; the copy read from it must not outlive it.
  const later = fresh();
  const before = new Set(await r.keys('eb:cache:*'));
  await ask(tb.url, later);
  let key: string | undefined;
  for (let i = 0; i < 100 && key === undefined; i++) {
    key = (await r.keys('eb:cache:*')).find((k) => !before.has(k));
    if (key === undefined) await new Promise((res) => setTimeout(res, 10));
  }
  t.ok(key, 'stored in Redis');
  await r.pexpire(key!, 400);
  t.equal((await ask(other.url, later)).cache, 'hit', 'read from Redis with 400 ms left');
  await new Promise((res) => setTimeout(res, 600));
  t.equal((await ask(other.url, later)).cache, 'miss', 'gone from memory when it left Redis (not a whole TTL later)');
});

t.test('llm_cache_bytes drops when entries expire, without a lookup to find them', async (t) => {
  const file = join(dir, 'short-ttl.yaml');
  writeFileSync(file, stringify({ cache: { mode: 'on', maxBytes: 1_000_000, ttlSeconds: 1 }, modelGroups: { on: { deployments: [d('short-1', 'openai', upOn)] } } }));
  const short = await startTestBroker({ BROKER_CONFIG: file, INFER_ENABLED: 'false', FRONT_THREADS: '0' });
  t.teardown(() => short.close());
  const res = await fetch(`${short.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'on', messages: fresh() }) });
  t.equal(res.headers.get('x-broker-cache'), 'miss');
  await res.text();
  let bytes = 0;
  for (let i = 0; i < 50 && bytes === 0; i++) {
    bytes = await metricValue(short.url, 'llm_cache_bytes');
    if (bytes === 0) await new Promise((r) => setTimeout(r, 10));
  }
  t.ok(bytes > 0, `stored: ${bytes} bytes`);
  await new Promise((r) => setTimeout(r, 1300));
  t.equal(await metricValue(short.url, 'llm_cache_bytes'), 0, 'expired: nothing live is counted');
});

t.test('the entry bound counts the entry, not the events that carried it; a refused entry is not counted as stored', async (t) => {
  // An upstream that streams without usage, as some OpenAI-compatible servers do.
  const bare = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const w of ['Hello', ' there']) res.write(`data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { content: w }, finish_reason: null }] })}\n\n`);
      res.end(`data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] })}\n\ndata: [DONE]\n\n`);
    });
  });
  await new Promise<void>((r) => bare.listen(0, '127.0.0.1', r));
  t.teardown(() => bare.close());
  const long = await mock({ tokens: 100 });
  const file = join(dir, 'entry-bound.yaml');
  writeFileSync(
    file,
    stringify({
      cache: { mode: 'on', maxBytes: 1_000_000, ttlSeconds: 600, maxEntryBytes: 4000 },
      modelGroups: {
        long: { deployments: [d('long-1', 'openai', long)] },
        bare: { deployments: [{ id: 'bare-1', provider: 'openai', url: `http://127.0.0.1:${(bare.address() as AddressInfo).port}`, model: 'm' }] },
      },
    }),
  );
  const b = await startTestBroker({ BROKER_CONFIG: file, INFER_ENABLED: 'false', FRONT_THREADS: '0' });
  t.teardown(() => b.close());
  const ask = async (model: string, content: string, stream: boolean) => {
    const res = await fetch(`${b.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, messages: [{ role: 'user', content }], stream }) });
    return { cache: res.headers.get('x-broker-cache'), text: await res.text() };
  };
  // 100 tokens: ~15 KB of SSE, an entry of ~2 KB. Stored from the stream as from a whole reply.
  const q = `long ${Date.now()}`;
  const wire = await ask('long', q, true);
  t.ok(wire.text.length > 4000, `the stream was ${wire.text.length} bytes on the wire`);
  t.equal((await ask('long', q, false)).cache, 'hit', 'a stream past the bound on the wire, under it as an entry, is stored');
  // A prompt that alone passes the bound: never stored, and not counted as stored.
  const stores = await metricValue(b.url, 'llm_cache_stores_total');
  const big = 'b'.repeat(3900);
  t.equal((await ask('long', big, false)).cache, 'miss');
  t.equal((await ask('long', big, false)).cache, 'miss');
  t.equal(await metricValue(b.url, 'llm_cache_stores_total'), stores, 'nothing counted as stored');
  // An upstream that sent no usage: the hit reports the prompt as the broker estimated it, not 0.
  const p = `bare ${Date.now()} ${'x'.repeat(80)}`;
  await ask('bare', p, true);
  const hit = await ask('bare', p, false);
  t.equal(hit.cache, 'hit');
  const usage = (JSON.parse(hit.text) as { usage: { prompt_tokens: number; completion_tokens: number } }).usage;
  t.ok(usage.prompt_tokens > 0, `prompt_tokens ${usage.prompt_tokens}`);
});
