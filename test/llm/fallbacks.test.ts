// Fallbacks between model groups, upstream error classes per provider, and the
// per-phase timeouts, against a real broker and real mock upstreams that answer
// with each provider's own error bodies.
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { Ollama } from 'ollama';
import { stringify } from 'yaml';
import { createMockUpstream, mockText, type MockUpstream, type MockUpstreamOptions } from '../../src/mock-upstream/server.ts';
import { createBlackhole } from '../../src/mock-upstream/blackhole.ts';
import { parseSse } from '../../src/mock-upstream/wire.ts';
import { classifyUpstreamError } from '../../src/llm/upstream-class.ts';
import { startTestBroker, metricValue, admin } from '../helpers/broker.ts';

const mocks: MockUpstream[] = [];
async function mock(opts: MockUpstreamOptions): Promise<MockUpstream> {
  const m = await createMockUpstream({ tokens: 8, ...opts });
  mocks.push(m);
  return m;
}

t.test('upstream errors are classified per provider, from the bodies the real servers send', async (t) => {
  const cases = [
    ['context', 'context_length'],
    ['ratelimit', 'rate_limited'],
    ['overloaded', 'overloaded'],
    ['badrequest', 'bad_request'],
  ] as const;
  for (const [fail, cls] of cases) {
    for (const [provider, flavor, path] of [['openai', 'openai', '/v1/chat/completions'], ['openai', 'vllm', '/v1/chat/completions'], ['ollama', 'openai', '/api/chat']] as const) {
      const m = await mock({ fail, flavor });
      const res = await fetch(m.url + path, { method: 'POST', body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }) });
      const text = await res.text();
      t.equal(classifyUpstreamError(provider, res.status, text), cls, `${flavor === 'vllm' ? 'vllm' : provider} ${fail} (${res.status}) → ${cls}`);
    }
  }
  t.equal(classifyUpstreamError('openai', 500, 'Internal Server Error'), 'server_error', 'a plain-text 500');
  // TGI: a generation that failed (a dead shard, CUDA out of memory) is 424, and was taken for the client's fault (no failover, no breaker).
  t.equal(classifyUpstreamError('openai', 424, JSON.stringify({ error: 'Request failed during generation: Server error: CUDA out of memory', error_type: 'generation' })), 'server_error', "TGI's 424");
  for (const status of [402, 410, 421, 423, 451]) t.equal(classifyUpstreamError('openai', status, '{}'), 'server_error', `${status}: not about the request`);
  for (const status of [400, 405, 413, 415, 422]) t.equal(classifyUpstreamError('openai', status, '{}'), 'bad_request', `${status}: the request's fault`);
  // TGI's (and TEI's) prompt alone past --max-input-tokens.
  t.equal(classifyUpstreamError('openai', 422, JSON.stringify({ error: 'Input validation error: `inputs` must have less than 4095 tokens. Given: 5000', error_type: 'validation' })), 'context_length', "TGI's inputs wording");
  const wrongEndpoint = { error: { message: 'This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you mean to use v1/completions?', type: 'invalid_request_error', param: 'model', code: null } };
  t.equal(classifyUpstreamError('openai', 404, JSON.stringify(wrongEndpoint)), 'bad_request', "a model asked on the wrong endpoint: the request's fault, not the deployment's (no breaker)");
  t.equal(classifyUpstreamError('openai', 404, JSON.stringify({ error: { message: 'The model `gpt-5x` does not exist or you do not have access to it.', type: 'invalid_request_error', code: 'model_not_found' } })), 'server_error', "a model the deployment names wrong: the deployment's");
  t.equal(classifyUpstreamError('openai', 400, JSON.stringify({ error: { message: 'x', code: 'context_length_exceeded' } })), 'context_length', 'OpenAI code alone');
  t.equal(classifyUpstreamError('openai', 400, JSON.stringify({ error: { message: "This model's maximum context length is 4096 tokens.", type: 'BadRequestError', code: 400 } })), 'context_length', 'vLLM 0.10+ nested shape');
  t.equal(classifyUpstreamError('openai', 400, JSON.stringify({ error: { code: 400, message: 'the request exceeds the available context size, try increasing it', type: 'exceed_context_size_error', n_prompt_tokens: 5000, n_ctx: 4096 } })), 'context_length', "llama.cpp server's");
  t.equal(classifyUpstreamError('openai', 500, JSON.stringify({ error: { message: 'failed to allocate the context size requested' } })), 'server_error', "a runner's 500 naming its context size is its own failure");
  t.equal(classifyUpstreamError('openai', 400, JSON.stringify({ object: 'error', message: 'The decoder prompt (length 9000) is longer than the maximum model length of 8192. Make sure that `max_model_len` is no smaller than the number of text tokens.', type: 'BadRequestError', code: 400 })), 'context_length', "vLLM's other wording");
  t.equal(classifyUpstreamError('openai', 401, JSON.stringify({ error: { message: 'Incorrect API key provided', type: 'invalid_request_error', code: 'invalid_api_key' } })), 'server_error', 'our key refused: the deployment cannot serve');
  t.equal(classifyUpstreamError('ollama', 404, JSON.stringify({ error: "model 'llama3' not found, try pulling it first" })), 'server_error', 'a model the deployment does not have');
  for (const status of [301, 302, 307, 308]) t.equal(classifyUpstreamError('openai', status, ''), 'server_error', `a redirect (${status}): the deployment's url is wrong, the next one may serve`);
  t.equal(classifyUpstreamError('openai', 422, JSON.stringify({ error: 'Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 200 `max_new_tokens`', error_type: 'validation' })), 'context_length', "TGI's");
  t.equal(classifyUpstreamError('openai', 422, JSON.stringify({ detail: [{ loc: ['body', 'messages'], msg: 'the prompt is too long for the context window', type: 'value_error' }] })), 'context_length', "a FastAPI server's detail list");
  const { upstreamErrorMessage } = await import('../../src/llm/translate/errors.ts');
  t.equal(upstreamErrorMessage({ detail: 'Model not loaded' }), 'Model not loaded', "FastAPI's detail string is the upstream's message, not the raw JSON");
  t.equal(upstreamErrorMessage({ detail: [{ msg: 'field required' }, { msg: 'value is not a valid float' }] }), 'field required; value is not a valid float');
});

const ok = await mock({});
const ok2 = await mock({});
const ctxOpenai = await mock({ fail: 'context' });
const ctxVllm = await mock({ fail: 'context', flavor: 'vllm' });
const ctxOllama = await mock({ fail: 'context' });
const overOpenai = await mock({ fail: 'overloaded' });
const overOllama = await mock({ fail: 'overloaded' });
const rateVllm = await mock({ fail: 'ratelimit', flavor: 'vllm' });
const badOpenai = await mock({ fail: 'badrequest' });
const badOllama = await mock({ fail: 'badrequest' });
const fail500 = await mock({ fail: 500 });
const fail401 = await mock({ fail: 401 });
const fail404 = await mock({ fail: 404 });
const reset = await mock({ fail: 'reset', failAfter: 3 });
const coldStart = await mock({ ttftMs: 5_000 });
const stall = await mock({ fail: 'stall', failAfter: 2 });
const slow = await mock({ tokens: 1_000, tps: 20 });
// An upstream that sends an SSE keep-alive comment at once and its first event 600 ms later
// (as proxies and some servers do while the model thinks).
const commenting = createServer((req, res) => {
  req.resume();
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(': keep-alive\n\n');
  setTimeout(() => {
    res.end(`data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { role: 'assistant', content: 'hi' }, finish_reason: 'stop' }] })}\n\ndata: [DONE]\n\n`);
  }, 600);
});
await new Promise<void>((r) => commenting.listen(0, '127.0.0.1', r));
// A port nothing listens on: an unreachable deployment (ECONNREFUSED).
const closedUrl = await new Promise<string>((resolve) => {
  const s = createServer().listen(0, '127.0.0.1', () => {
    const url = `http://127.0.0.1:${(s.address() as { port: number }).port}`;
    s.close(() => resolve(url));
  });
});
const commentingUrl = `http://127.0.0.1:${(commenting.address() as { port: number }).port}`;
// A 200 stream that ends before its first event (an upstream that drops the request after
// its headers): nothing reached the client, so it may still fall back.
let emptyServed = 0;
const empty = createServer((req, res) => {
  req.resume();
  emptyServed++;
  res.writeHead(200, { 'content-type': req.url!.startsWith('/api/') ? 'application/x-ndjson' : 'text/event-stream' });
  res.end();
});
await new Promise<void>((r) => empty.listen(0, '127.0.0.1', r));
const emptyUrl = `http://127.0.0.1:${(empty.address() as { port: number }).port}`;
/** A scripted upstream: `answer` gets the request's path and the upstream model it names (the deployment's id + '-up'). */
function scripted(answer: (path: string, model: string, res: import('node:http').ServerResponse) => void) {
  return createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => answer(req.url!, String((JSON.parse(body || '{}') as { model?: unknown }).model), res));
  });
}
// Keep-alives, then a failure before any event (OpenRouter-style comments while a model
// thinks): an error event (a deployment id with "err") or a cut connection. Nothing reached
// the client, so it may still fall back, a pass-through client as any other.
let chattyServed = 0;
const chatty = scripted((path, model, res) => {
  chattyServed++;
  const ndjson = path.startsWith('/api/');
  res.writeHead(200, { 'content-type': ndjson ? 'application/x-ndjson' : 'text/event-stream' });
  res.write(ndjson ? '\n\n' : ': keep-alive\n\n: still thinking\n\n');
  setTimeout(() => {
    if (model.includes('err')) res.end(ndjson ? `${JSON.stringify({ error: 'model is overloaded' })}\n` : `data: ${JSON.stringify({ error: { message: 'model is overloaded', type: 'server_error' } })}\n\n`);
    else res.destroy();
  }, 30);
});
await new Promise<void>((r) => chatty.listen(0, '127.0.0.1', r));
const chattyUrl = `http://127.0.0.1:${(chatty.address() as { port: number }).port}`;
// A 200 stream whose first event is an error (an Ollama whose runner died answers so; a
// vLLM out of memory), or an OpenAI stream that is only [DONE]: no reply reached anybody.
let brokenServed = 0;
// Which: by the deployment (broken-2 and -4 send only [DONE], -8 and -9 a role chunk first,
// -10 and -11 vLLM's error shape before 0.10: {"object":"error",...}).
const brokenMode = (model: string): string => (/^broken-[24]-up$/.test(model) ? 'done-only' : /^broken-[89]-up$/.test(model) ? 'role-then-error' : /^broken-1[01]-up$/.test(model) ? 'vllm-error' : 'error');
const broken = scripted((path, model, res) => {
  brokenServed++;
  const ndjson = path.startsWith('/api/');
  res.writeHead(200, { 'content-type': ndjson ? 'application/x-ndjson' : 'text/event-stream' });
  if (ndjson) res.end(`${JSON.stringify({ error: 'llama runner process has terminated: exit status 2' })}\n`);
  else if (brokenMode(model) === 'done-only') res.end('data: [DONE]\n\n');
  else if (brokenMode(model) === 'vllm-error') res.end(`data: ${JSON.stringify({ object: 'error', message: 'CUDA out of memory', type: 'InternalServerError', param: null, code: 500 })}\n\n`);
  // vLLM's and OpenAI's first chunk says only the role; then the failure.
  else if (brokenMode(model) === 'role-then-error') res.end(`data: ${JSON.stringify({ id: 'r', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] })}\n\ndata: ${JSON.stringify({ error: { message: 'CUDA out of memory', code: 500 } })}\n\n`);
  // Held open after the error: the broker must not wait for the end of it.
  else res.write(`data: ${JSON.stringify({ error: { message: 'CUDA out of memory', code: 500 } })}\n\n`);
});
await new Promise<void>((r) => broken.listen(0, '127.0.0.1', r));
const brokenUrl = `http://127.0.0.1:${(broken.address() as { port: number }).port}`;
// An upstream that echoes the request's Authorization header in an error after its 200.
const echoing = createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(`data: ${JSON.stringify({ id: 'e', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { role: 'assistant', content: 'Hi' }, finish_reason: null }] })}\n\n`);
    res.end(`data: ${JSON.stringify({ error: { message: `oops, you sent ${String(req.headers.authorization)}` } })}\n\n`);
  });
});
await new Promise<void>((r) => echoing.listen(0, '127.0.0.1', r));
const echoingUrl = `http://127.0.0.1:${(echoing.address() as { port: number }).port}`;
const DEPLOY_KEY = 'sk-DEPLOYSECRET-xyz';
// An overloaded server that says when to come back: 503 with its own Retry-After.
const overloaded = createServer((req, res) => {
  req.resume();
  res.writeHead(503, { 'content-type': 'application/json', 'retry-after': '30' });
  res.end(JSON.stringify({ error: { message: 'The engine is currently overloaded, please try again later.', type: 'server_error' } }));
});
await new Promise<void>((r) => overloaded.listen(0, '127.0.0.1', r));
const overloadedUrl = `http://127.0.0.1:${(overloaded.address() as { port: number }).port}`;

const blackhole = await createBlackhole();
t.teardown(() => blackhole.close());

const d = (id: string, provider: 'openai' | 'ollama', m: { url: string }, extra: Record<string, unknown> = {}) => ({ id, provider, url: m.url, model: `${id}-up`, ...extra });
const fleet = {
  modelGroups: {
    big: { deployments: [d('big-1', 'openai', ok)] },
    'small-openai': { deployments: [d('ctx-openai', 'openai', ctxOpenai)], contextFallbacks: ['big'] },
    'small-vllm': { deployments: [d('ctx-vllm', 'openai', ctxVllm)], contextFallbacks: ['big'] },
    'small-ollama': { deployments: [d('ctx-ollama', 'ollama', ctxOllama)], contextFallbacks: ['big'] },
    'small-alone': { deployments: [d('ctx-alone', 'openai', ctxOpenai)], fallbacks: ['big'] },
    'small-vllm-alone': { deployments: [d('ctx-vllm-alone', 'openai', ctxVllm)] },
    'small-ollama-alone': { deployments: [d('ctx-ollama-alone', 'ollama', ctxOllama)] },
    tiny: { deployments: [d('tiny-1', 'openai', ok2)], maxContextTokens: 20, contextFallbacks: ['big'] },
    'over-openai': { deployments: [d('over-openai', 'openai', overOpenai)], fallbacks: ['big'] },
    'over-ollama': { deployments: [d('over-ollama', 'ollama', overOllama)], fallbacks: ['big'] },
    'rate-vllm': { deployments: [d('rate-vllm', 'openai', rateVllm)], fallbacks: ['big'] },
    'bad-openai': { deployments: [d('bad-openai', 'openai', badOpenai)], fallbacks: ['big'] },
    'bad-ollama': { deployments: [d('bad-ollama', 'ollama', badOllama)], fallbacks: ['big'] },
    // The chain skips a group whose context window is too small for the prompt.
    down: { deployments: [d('down-1', 'openai', fail500)], fallbacks: ['tiny', 'big'] },
    // A group passed over as too small still leads on to its own fallbacks: chain-a → (chain-b skipped) → big.
    'chain-a': { deployments: [d('chain-a', 'openai', fail500)], fallbacks: ['chain-b'] },
    'chain-b': { deployments: [d('chain-b', 'openai', fail500)], maxContextTokens: 20, fallbacks: ['big'] },
    cut: { deployments: [d('cut-1', 'openai', reset)], fallbacks: ['big'] },
    empty: { deployments: [d('empty-1', 'openai', { url: emptyUrl })], fallbacks: ['big'] },
    'empty-ollama': { deployments: [d('empty-2', 'ollama', { url: emptyUrl })], fallbacks: ['big'] },
    chatty: { deployments: [d('chatty-1', 'openai', { url: chattyUrl })], fallbacks: ['big'] },
    'chatty-err': { deployments: [d('chatty-err-1', 'openai', { url: chattyUrl })], fallbacks: ['big'] },
    'chatty-err-ollama': { deployments: [d('chatty-err-2', 'ollama', { url: chattyUrl })], fallbacks: ['big'] },
    // One deployment per case: three failures in a row would open a shared one's breaker.
    ...Object.fromEntries([1, 2, 3, 4, 8, 9, 10, 11].map((i) => [`broken-${i}`, { deployments: [d(`broken-${i}`, 'openai', { url: brokenUrl })], fallbacks: ['big'] }])),
    ...Object.fromEntries([5, 6].map((i) => [`broken-${i}`, { deployments: [d(`broken-${i}`, 'ollama', { url: brokenUrl })], fallbacks: ['big'] }])),
    'broken-alone': { deployments: [d('broken-7', 'ollama', { url: brokenUrl })] },
    'chatty-ollama': { deployments: [d('chatty-2', 'ollama', { url: chattyUrl })], fallbacks: ['big'] },
    unreachable: { deployments: [d('hole-1', 'openai', blackhole, { connectTimeoutMs: 200 })], fallbacks: ['big'] },
    'unreachable-alone': { deployments: [d('hole-2', 'openai', blackhole, { connectTimeoutMs: 150 })] },
    // A connect that would hang for 20 s, under a 300 ms headers budget: the budget ends it.
    'slow-connect': { deployments: [d('hole-3', 'openai', blackhole, { connectTimeoutMs: 20_000, headersTimeoutMs: 300 })] },
    cold: { deployments: [d('cold-1', 'openai', coldStart, { firstTokenTimeoutMs: 150 })], fallbacks: ['big'] },
    'cold-alone': { deployments: [d('cold-2', 'ollama', coldStart, { firstTokenTimeoutMs: 150 })] },
    stalled: { deployments: [d('stall-1', 'openai', stall, { idleChunkTimeoutMs: 200 })], fallbacks: ['big'] },
    // Non-streamed requests to them are streamed from the upstream and assembled (upstreamStreaming: always; auto for Ollama).
    'cold-whole': { deployments: [d('cold-4', 'openai', coldStart, { firstTokenTimeoutMs: 150, upstreamStreaming: 'always' })], fallbacks: ['big'] },
    'stalled-whole': { deployments: [d('stall-2', 'openai', stall, { idleChunkTimeoutMs: 200, upstreamStreaming: 'always' })], fallbacks: ['big'] },
    'stalled-whole-alone': { deployments: [d('stall-3', 'ollama', stall, { idleChunkTimeoutMs: 200 })] },
    'cold-whole-client': { deployments: [d('cold-5', 'openai', coldStart, { firstTokenTimeoutMs: 150, headersTimeoutMs: 300, upstreamStreaming: 'client' })] },
    endless: { deployments: [d('slow-1', 'ollama', slow, { totalTimeoutMs: 400 })], fallbacks: ['big'] },
    commenting: { deployments: [d('commenting-1', 'openai', { url: commentingUrl })] },
    // QoS tier `narrow` may use this group only, not its fallback.
    'over-narrow': { deployments: [d('over-narrow', 'openai', overOpenai)], fallbacks: ['big'] },
    // Fails, falls back to small-alone, whose context error must not go on to big (a plain fallback still queued).
    'down-then-small': { deployments: [d('down-2', 'openai', fail500)], fallbacks: ['small-alone', 'big'] },
    // Two failing groups that name each other: each tried once.
    'cyc-a': { deployments: [d('cyc-a', 'openai', fail500)], fallbacks: ['cyc-b'] },
    'cyc-b': { deployments: [d('cyc-b', 'openai', fail500)], fallbacks: ['cyc-a'] },
    // Deployments that cannot serve (our key refused, the model not pulled): as a 5xx, the next one may.
    'bad-key': { deployments: [d('bad-key', 'openai', fail401)], fallbacks: ['big'] },
    'not-pulled': { deployments: [d('not-pulled', 'ollama', fail404)], fallbacks: ['big'] },
    'not-pulled-alone': { deployments: [d('not-pulled-2', 'openai', fail404)] },
    // One group named twice in a chain, by its name and by its alias (`twice` for `twice:latest`).
    'dup-a': { deployments: [d('dup-a', 'openai', fail500)], fallbacks: ['twice:latest', 'twice'] },
    'twice:latest': { deployments: [d('twice', 'ollama', fail500)] },
    // One slot each: a second request finds the group full.
    busy: { deployments: [d('busy-1', 'openai', slow, { concurrencyLimit: 1 })], fallbacks: ['big'] },
    'busy-alone': { deployments: [d('busy-2', 'openai', slow, { concurrencyLimit: 1 })] },
    // A cold deployment and a full one: the retry after the cold one's timeout finds no slot in time.
    'cold-then-busy': { deployments: [d('cold-3', 'openai', coldStart, { firstTokenTimeoutMs: 150 }), d('busy-3', 'openai', slow, { concurrencyLimit: 1 })] },
    // One deployment per API: three failures in a row would open a shared one's breaker.
    ...Object.fromEntries([1, 2, 3, 4].map((i) => [`echo-${i}`, { deployments: [d(`echo-${i}`, 'openai', { url: echoingUrl }, { apiKeyEnv: 'ECHO_DEPLOY_KEY' })] }])),
    ...Object.fromEntries([1, 2, 3].map((i) => [`over-alone-${i}`, { deployments: [d(`over-alone-${i}`, 'openai', { url: overloadedUrl })] }])),
    'dead-alone': { deployments: [d('dead-alone', 'openai', { url: closedUrl })] },
  },
  qos: { defaultTier: 'standard', tiers: { standard: {}, narrow: { allowedGroups: ['over-narrow'], priority: 1 }, hasty: { maxQueueWaitMs: 100 } } },
};
const dir = mkdtempSync(join(tmpdir(), 'eb-fallback-'));
writeFileSync(join(dir, 'broker.yaml'), stringify(fleet));
// The fleet file's key is read from the process's environment.
process.env['ECHO_DEPLOY_KEY'] = DEPLOY_KEY;
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false', FRONT_THREADS: process.env.FRONT_THREADS ?? '0', BROKER_FF_QOS_SWITCHING: 'true' });
t.teardown(async () => {
  await tb.close();
  await Promise.all(mocks.map((m) => m.close()));
  commenting.closeAllConnections();
  await new Promise<void>((r) => commenting.close(() => r()));
  empty.closeAllConnections();
  await new Promise<void>((r) => empty.close(() => r()));
  chatty.closeAllConnections();
  await new Promise<void>((r) => chatty.close(() => r()));
  broken.closeAllConnections();
  await new Promise<void>((r) => broken.close(() => r()));
  echoing.closeAllConnections();
  await new Promise<void>((r) => echoing.close(() => r()));
  overloaded.closeAllConnections();
  await new Promise<void>((r) => overloaded.close(() => r()));
});

const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-test', maxRetries: 0 });
const ollama = new Ollama({ host: tb.url });
const messages = [{ role: 'user' as const, content: 'Say something.' }];

t.test('a context-length error goes to contextFallbacks, for each provider', async (t) => {
  for (const [model, up] of [['small-openai', ctxOpenai], ['small-vllm', ctxVllm], ['small-ollama', ctxOllama]] as const) {
    const before = up.stats.total;
    const { data, response } = await openai.chat.completions.create({ model, messages }).withResponse();
    t.equal(data.choices[0]!.message.content, mockText(8), model);
    t.equal(response.headers.get('x-broker-fallback'), 'big', `${model}: the reply names the group that answered`);
    t.equal(response.headers.get('x-broker-deployment'), 'big-1');
    t.equal(up.stats.total, before + 1, `${model}: the small group was tried first`);
  }
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'small-vllm', to: 'big', reason: 'context_length' }), 1, 'counted, with its reason');
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: 'ctx-ollama', class: 'context_length' }), 1);
});

t.test('without contextFallbacks a context-length error is the client\'s 400, with the upstream message; plain fallbacks do not take it', async (t) => {
  const before = ok.stats.total;
  const err = (await openai.chat.completions.create({ model: 'small-alone', messages }).then(() => undefined, (e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>;
  t.equal(err.status, 400);
  t.match(err.message, /maximum context length is 8192 tokens/);
  t.equal(ok.stats.total, before, 'big was not asked');
  // vLLM's error body is flat ({"object":"error","message":...}): its message, not the JSON.
  const vllm = (await openai.chat.completions.create({ model: 'small-vllm-alone', messages }).then(() => undefined, (e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>;
  t.equal(vllm.status, 400);
  t.match(vllm.message, /^400 This model's maximum context length is \d+ tokens/);
  t.notMatch(vllm.message, /"object"/);
  // OpenAI's code (agents compact their history on it) and the prompt's field in the client's API.
  for (const e of [err, vllm]) t.match(e, { code: 'context_length_exceeded', param: 'messages', type: 'invalid_request_error' });
  const ollama = (await openai.chat.completions.create({ model: 'small-ollama-alone', messages }).then(() => undefined, (e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>;
  t.match(ollama, { status: 400, code: 'context_length_exceeded', param: 'messages' }, 'an Ollama upstream');
  for (const [path, body, param] of [
    ['/v1/completions', { model: 'small-alone', prompt: 'hi' }, 'prompt'],
    ['/v1/responses', { model: 'small-alone', input: 'hi' }, 'input'],
  ] as const) {
    const res = await fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    t.equal(res.status, 400, path);
    t.match(((await res.json()) as { error: unknown }).error, { code: 'context_length_exceeded', param }, path);
  }
  const m = await fetch(`${tb.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'small-alone', max_tokens: 8, messages }) });
  // Anthropic's words, which Claude Code reads to tell its user to compact, before the upstream's.
  t.match(await m.json(), { type: 'error', error: { type: 'invalid_request_error', code: 'context_length_exceeded', message: /^prompt is too long: .*maximum context length is 8192 tokens/ } }, 'Messages');
});

t.test('a context-length error met on a fallback group is not taken by the plain fallbacks still queued', async (t) => {
  const before = ok.stats.total;
  const err = (await openai.chat.completions.create({ model: 'down-then-small', messages }).then(() => undefined, (e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>;
  t.equal(err.status, 400, 'the context error, not an answer from big');
  t.match(err.message, /maximum context length is 8192 tokens/);
  t.equal(err.headers?.get('x-broker-fallback'), 'small-alone', 'the group that gave the error');
  t.equal(ok.stats.total, before, 'big was not asked');
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'small-alone', to: 'big', reason: 'context_length' }), 0);
});

t.test('a group whose maxContextTokens is below prompt + max_tokens is skipped without a call', async (t) => {
  const before = ok2.stats.total;
  const { data, response } = await openai.chat.completions.create({ model: 'tiny', messages, max_tokens: 50 }).withResponse();
  t.equal(data.choices[0]!.message.content, mockText(8));
  t.equal(response.headers.get('x-broker-fallback'), 'big');
  t.equal(ok2.stats.total, before, "tiny's upstream was never called");
  // A prompt that fits stays on tiny.
  const small = await openai.chat.completions.create({ model: 'tiny', messages, max_tokens: 5 }).withResponse();
  t.equal(small.response.headers.get('x-broker-fallback'), null, 'no fallback header when the group itself answered');
  t.equal(ok2.stats.total, before + 1);
  // In a fallback chain, too small is skipped: down → (tiny skipped) → big.
  const chain = await openai.chat.completions.create({ model: 'down', messages, max_tokens: 50 }).withResponse();
  t.equal(chain.response.headers.get('x-broker-fallback'), 'big');
  t.equal(ok2.stats.total, before + 1, 'tiny skipped in the chain');
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'tiny', to: 'big', reason: 'context_window' }), 1);
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'down', to: 'big', reason: 'failure' }), 1);
  // A group skipped as too small hands on to its own fallbacks.
  const onward = await openai.chat.completions.create({ model: 'chain-a', messages, max_tokens: 50 }).withResponse();
  t.equal(onward.response.headers.get('x-broker-fallback'), 'big', "chain-b skipped, its own fallback answers");
  // Tool definitions count: the same short prompt with a long tool schema does not fit tiny.
  const tools = [{ type: 'function' as const, function: { name: 'lookup', description: 'x'.repeat(200), parameters: { type: 'object', properties: {} } } }];
  const withTools = await openai.chat.completions.create({ model: 'tiny', messages, max_tokens: 5, tools }).withResponse();
  t.equal(withTools.response.headers.get('x-broker-fallback'), 'big', 'the tools made the prompt too long for tiny');
  t.equal(ok2.stats.total, before + 1, 'tiny not called');
});

t.test('overloaded and rate-limited groups fall back, streamed and not, OpenAI and Ollama clients', async (t) => {
  for (const model of ['over-openai', 'over-ollama', 'rate-vllm']) {
    const { data, response } = await openai.chat.completions.create({ model, messages }).withResponse();
    t.equal(data.choices[0]!.message.content, mockText(8), model);
    t.equal(response.headers.get('x-broker-fallback'), 'big');
  }
  let text = '';
  for await (const part of await ollama.chat({ model: 'over-ollama', messages, stream: true })) text += part.message.content;
  t.equal(text, mockText(8), 'streamed fallback, Ollama client');
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: 'over-ollama', class: 'overloaded' }), 2);
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: 'rate-vllm', class: 'rate_limited' }), 1);
});

t.test("an overloaded upstream with nowhere else to go: 503 upstream_unavailable with its Retry-After (529 on Messages), not a 502", async (t) => {
  const err = await openai.chat.completions.create({ model: 'over-alone-1', messages }).then(() => undefined, (e: unknown) => e as InstanceType<typeof OpenAI.APIError>);
  t.equal(err?.status, 503);
  t.equal((err?.error as { code?: string } | undefined)?.code, 'upstream_unavailable');
  t.equal(err?.headers?.get('retry-after'), '30', "the upstream's own Retry-After");
  t.match(err?.message, /every deployment is overloaded/);
  const messagesApi = await fetch(`${tb.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'over-alone-2', max_tokens: 5, messages }) });
  t.equal(messagesApi.status, 529, "Anthropic's overloaded status");
  t.equal(messagesApi.headers.get('retry-after'), '30');
  t.match(await messagesApi.json(), { type: 'error', error: { type: 'overloaded_error' } });
  const ollamaApi = await fetch(`${tb.url}/api/chat`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'over-alone-3', messages, stream: false }) });
  t.equal(ollamaApi.status, 503);
  t.equal(ollamaApi.headers.get('retry-after'), '30');
});

t.test('an unreachable upstream with nowhere else to go: 503 upstream_unavailable with Retry-After 1 (529 on Messages), as docs/llm.md says', async (t) => {
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'dead-alone', messages }) });
  t.equal(res.status, 503);
  t.match(await res.json(), { error: { code: 'upstream_unavailable', message: /deployment dead-alone is unreachable: ECONNREFUSED/ } });
  t.equal(res.headers.get('retry-after'), '1', 'the SDKs wait before they retry');
  const messagesApi = await fetch(`${tb.url}/v1/messages`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'dead-alone', max_tokens: 5, messages }) });
  t.equal(messagesApi.status, 529);
  t.equal(messagesApi.headers.get('retry-after'), '1');
});

t.test('a cycle of fallbacks tries each group once, and counts as the last failure, not no_deployment', async (t) => {
  const err = await openai.chat.completions.create({ model: 'cyc-a', messages }).then(() => undefined, (e: unknown) => e as { status: number });
  t.equal(err?.status, 502);
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: 'cyc-a' }), 1);
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: 'cyc-b' }), 1);
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'cyc-b', reason: 'upstream_error' }), 1);
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'cyc-b', deployment: 'cyc-b', reason: 'upstream_error' }), 1, "under the deployment that failed last, for per-deployment error rates");
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'cyc-b', reason: 'no_deployment' }), 0);
});

t.test('a deployment that refuses our key (401) or lacks the model (404) is moved on from, to the fallbacks', async (t) => {
  for (const model of ['bad-key', 'not-pulled']) {
    const { data, response } = await openai.chat.completions.create({ model, messages }).withResponse();
    t.equal(data.choices[0]!.message.content, mockText(8), model);
    t.equal(response.headers.get('x-broker-fallback'), 'big', `${model}: answered by the fallback`);
    t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: model, class: 'server_error' }), 1);
  }
});

t.test("a deployment's 404 with no fallback left: 502 naming the provider and status, the upstream's text not passed on", async (t) => {
  const err = await openai.chat.completions.create({ model: 'not-pulled-alone', messages }).then(() => undefined, (e: unknown) => e as { status: number; error: { code: string; message: string } });
  t.equal(err?.status, 502);
  t.match(err?.error, { code: 'upstream_error', message: 'openai upstream replied 404' });
});

t.test('a group named twice in a chain, by its name and its alias, is tried once', async (t) => {
  const err = await openai.chat.completions.create({ model: 'dup-a', messages }).then(() => undefined, (e: unknown) => e as { status: number });
  t.equal(err?.status, 502);
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'dup-a', to: 'twice:latest' }), 1);
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'twice:latest', to: 'twice:latest' }), 0, 'no move from a group to itself');
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: 'twice' }), 1);
});

t.test("a fallback group must be allowed by the request's QoS tier too", async (t) => {
  const before = ok.stats.total;
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'x-broker-qos': 'narrow' }, body: JSON.stringify({ model: 'over-narrow', messages }) });
  t.equal(res.status, 503, 'the group\'s own upstream failure (overloaded), not an answer from a group the tier may not use');
  t.match(await res.json(), { error: { code: 'upstream_unavailable', message: /every deployment is overloaded/ } });
  t.equal(res.headers.get('x-broker-fallback'), null);
  t.equal(ok.stats.total, before, 'big was not asked');
  // The default tier may use every group: the same request falls back.
  const { response } = await openai.chat.completions.create({ model: 'over-narrow', messages }).withResponse();
  t.equal(response.headers.get('x-broker-fallback'), 'big');
  t.equal(ok.stats.total, before + 1);
});

t.test('a bad request is passed on, never retried nor fallen back', async (t) => {
  const before = ok.stats.total;
  const err = (await openai.chat.completions.create({ model: 'bad-openai', messages }).then(() => undefined, (e: unknown) => e)) as InstanceType<typeof OpenAI.APIError>;
  t.equal(err.status, 400);
  t.match(err.message, /Invalid value for 'temperature'/);
  const res = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'bad-ollama', messages, stream: false }) });
  t.equal(res.status, 400);
  t.match(((await res.json()) as { error: string }).error, /cannot unmarshal/);
  t.equal(ok.stats.total, before, 'no fallback');
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { class: 'bad_request' }), 2);
});

t.test('never after the first byte: a stream cut mid-way ends with an error event, no fallback', async (t) => {
  const before = ok.stats.total;
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'cut', messages, stream: true }) });
  t.equal(res.status, 200);
  const { events, done } = parseSse(await res.text());
  t.notOk(done);
  t.match(JSON.stringify(events.at(-1)), /error/);
  t.equal(res.headers.get('x-broker-fallback'), null);
  t.equal(ok.stats.total, before, 'big was not asked');
});

t.test('a 200 stream that ends with no event, or a 200 with no reply in its body, reached nobody: it falls back, for each client API', async (t) => {
  for (const model of ['empty', 'empty-ollama']) {
    const served = emptyServed;
    const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model, messages, stream: true }) });
    t.equal(res.status, 200);
    const { events, done } = parseSse(await res.text());
    t.ok(done, `${model}: a whole stream`);
    t.equal(events.map((e) => (e as { choices?: { delta?: { content?: string } }[] }).choices?.[0]?.delta?.content ?? '').join(''), mockText(8), `${model}: big's answer, no error event`);
    t.equal(res.headers.get('x-broker-fallback'), 'big');
    t.equal(emptyServed, served + 1, 'the empty upstream was asked first');
    const nd = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model, messages }) });
    t.equal(nd.headers.get('x-broker-fallback'), 'big', `${model}: Ollama client too`);
    const lines = (await nd.text()).trim().split('\n').map((l) => JSON.parse(l) as { done: boolean; error?: string });
    t.equal(lines.at(-1)!.done, true);
    t.notOk(lines.some((l) => l.error !== undefined));
    // Not streamed: a 200 whose body is no reply at all.
    const served2 = emptyServed;
    const whole = await openai.chat.completions.create({ model, messages }).withResponse();
    t.equal(whole.data.choices[0]!.message.content, mockText(8), `${model}: not streamed, big's answer, not a 502`);
    t.equal(whole.response.headers.get('x-broker-fallback'), 'big');
    t.equal(emptyServed, served2 + 1);
  }
});

t.test('keep-alives and then a failure before the first event reached nobody: it falls back, for a pass-through client too', async (t) => {
  for (const failure of ['error', 'cut']) {
    // The pass-through pairs (OpenAI client to OpenAI server, Ollama to Ollama) would forward a keep-alive as is.
    const cases = [
      { model: failure === 'error' ? 'chatty-err' : 'chatty', path: '/v1/chat/completions', body: { stream: true } },
      { model: failure === 'error' ? 'chatty-err-ollama' : 'chatty-ollama', path: '/api/chat', body: {} },
    ];
    for (const c of cases) {
      const served = chattyServed;
      const res = await fetch(`${tb.url}${c.path}`, { method: 'POST', body: JSON.stringify({ model: c.model, messages, ...c.body }) });
      const text = await res.text();
      t.equal(res.status, 200);
      t.equal(res.headers.get('x-broker-fallback'), 'big', `${c.model}, ${failure}: fell back`);
      t.equal(chattyServed, served + 1, 'the chatty upstream was asked first');
      t.notMatch(text, /overloaded|"error"|keep-alive/, `${c.model}, ${failure}: only big's answer reached the client`);
      if (c.path === '/api/chat') t.equal(JSON.parse(text.trim().split('\n').at(-1)!).done, true);
      else t.ok(parseSse(text).done, 'a whole stream');
    }
  }
});

t.test("an upstream's error as the first event of its 200 stream (or a stream that is only [DONE]) reached nobody: it falls back, in every client API", async (t) => {
  const cases = [
    { model: 'broken-1', path: '/v1/chat/completions', body: { stream: true }, mode: 'error' },
    { model: 'broken-2', path: '/v1/chat/completions', body: { stream: true }, mode: 'done-only' },
    { model: 'broken-3', path: '/v1/messages', body: { stream: true, max_tokens: 50 }, mode: 'error' },
    { model: 'broken-4', path: '/v1/responses', body: { stream: true, input: 'hi' }, mode: 'done-only' },
    { model: 'broken-5', path: '/api/chat', body: {}, mode: 'error' },
    { model: 'broken-6', path: '/v1/chat/completions', body: { stream: true }, mode: 'error' },
    // A role chunk carries nothing: a translated reply has not begun, and may still fall back.
    { model: 'broken-8', path: '/v1/messages', body: { stream: true, max_tokens: 50 }, mode: 'role-then-error' },
    { model: 'broken-9', path: '/v1/responses', body: { stream: true, input: 'hi' }, mode: 'role-then-error' },
    // vLLM before 0.10 streams its error as {"object":"error",...}: passed through as a chunk, it lost the fallback.
    { model: 'broken-10', path: '/v1/chat/completions', body: { stream: true }, mode: 'vllm-error' },
    { model: 'broken-11', path: '/v1/messages', body: { stream: true, max_tokens: 50 }, mode: 'vllm-error' },
  ];
  for (const c of cases) {
    const served = brokenServed;
    const res = await fetch(`${tb.url}${c.path}`, { method: 'POST', body: JSON.stringify({ model: c.model, messages, ...c.body }) });
    const text = await res.text();
    const what = `${c.model} ${c.path} ${c.mode}`;
    t.equal(brokenMode(`${c.model}-up`), c.mode, `${what}: the upstream answers so`);
    t.equal(res.status, 200, what);
    t.equal(res.headers.get('x-broker-fallback'), 'big', `${what}: fell back`);
    t.equal(brokenServed, served + 1, `${what}: the broken upstream was asked first`);
    t.notMatch(text, /CUDA|llama runner|"error":[{"]|event: error|response\.failed/, `${what}: only big's answer reached the client`);
    // What the upstream said in its 200 is an upstream error reply, counted by its class.
    // (A stream that is only [DONE] is one too: a reply with no output.)
    t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: c.model, class: 'server_error' }), 1, `${what}: counted`);
  }
  // With nowhere else to go, the upstream's error is the answer: an error status, not a 200 stream.
  const alone = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'broken-alone', messages }) });
  t.equal(alone.status, 502);
  t.match(await alone.text(), /llama runner process has terminated/, 'the upstream\'s own message');
});

t.test('with the compiled_chain flag off (the staged pipeline), an error first, [DONE] alone and keep-alives then a failure fall back too', async (t) => {
  const staged = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false', FRONT_THREADS: '0', BROKER_FF_COMPILED_CHAIN: 'false' });
  t.teardown(() => staged.close());
  const cases: { model: string; path: string; body: Record<string, unknown>; headers: Record<string, string> }[] = [
    { model: 'broken-1', path: '/v1/chat/completions', body: { stream: true }, headers: {} },
    { model: 'broken-2', path: '/v1/chat/completions', body: { stream: true }, headers: {} },
    { model: 'broken-5', path: '/api/chat', body: {}, headers: {} },
    { model: 'chatty-err', path: '/v1/chat/completions', body: { stream: true }, headers: {} },
    { model: 'chatty-ollama', path: '/api/chat', body: {}, headers: {} },
    { model: 'empty', path: '/v1/chat/completions', body: { stream: true }, headers: {} },
  ];
  for (const c of cases) {
    const res = await fetch(`${staged.url}${c.path}`, { method: 'POST', headers: c.headers, body: JSON.stringify({ model: c.model, messages, ...c.body }) });
    const text = await res.text();
    t.equal(res.headers.get('x-broker-fallback'), 'big', `${c.model} ${c.path}: fell back`);
    t.notMatch(text, /CUDA|llama runner|overloaded|"error":[{"]|keep-alive/, `${c.model}: only big's answer reached the client`);
  }
  // What an upstream said in its 200 is counted by its class; a cut or an empty 200 said nothing.
  t.equal(await metricValue(staged.url, 'llm_upstream_errors_total', { deployment: 'broken-1', class: 'server_error' }), 1);
  t.equal(await metricValue(staged.url, 'llm_upstream_errors_total', { deployment: 'chatty-err-1', class: 'overloaded' }), 1);
  for (const dep of ['chatty-2', 'empty-1']) t.equal(await metricValue(staged.url, 'llm_upstream_errors_total', { deployment: dep }), 0, `${dep}: a cut is no error reply`);
  const alone = await fetch(`${staged.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'broken-alone', messages }) });
  t.equal(alone.status, 502, 'nowhere else: an error status');
});

t.test('connect timeout: the deployment never accepts, the request falls back', async (t) => {
  const { data, response } = await openai.chat.completions.create({ model: 'unreachable', messages }).withResponse();
  t.equal(data.choices[0]!.message.content, mockText(8));
  t.equal(response.headers.get('x-broker-fallback'), 'big');
  t.equal(await metricValue(tb.url, 'llm_upstream_timeouts_total', { deployment: 'hole-1', phase: 'connect' }), 1);
  const alone = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'unreachable-alone', messages }) });
  t.equal(alone.status, 504);
  t.match(((await alone.json()) as { error: { message: string } }).error.message, /hole-2 did not accept a connection within connectTimeoutMs \(150 ms\)/, 'the phase and its limit named');
});

t.test('a phase that runs over during a hanging connect ends the attempt then, not when the connect gives up', async (t) => {
  const started = Date.now();
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'slow-connect', messages }) });
  t.equal(res.status, 504);
  t.match(((await res.json()) as { error: { message: string } }).error.message, /hole-3 sent no reply headers within headersTimeoutMs \(300 ms\)/);
  // An order, not a speed: the 20 s connect timeout must not be what ended it.
  t.ok(Date.now() - started < 10_000, 'answered long before connectTimeoutMs (20 s) could fire');
});

t.test('first-token timeout: before the first byte it falls back; alone it is a 504', async (t) => {
  const stream = await openai.chat.completions.create({ model: 'cold', messages, stream: true }).withResponse();
  let text = '';
  for await (const c of stream.data) text += c.choices[0]?.delta.content ?? '';
  t.equal(text, mockText(8));
  t.equal(stream.response.headers.get('x-broker-fallback'), 'big', 'the cold deployment sent headers but no token: still before the first byte');
  t.equal(await metricValue(tb.url, 'llm_upstream_timeouts_total', { deployment: 'cold-1', phase: 'first_byte' }), 1);
  const res = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'cold-alone', messages }) });
  t.equal(res.status, 504);
  t.match(((await res.json()) as { error: string }).error, /firstTokenTimeoutMs \(150 ms\)/);
});

t.test('idle-chunk timeout after the first byte: the stream ends with an explicit error event', async (t) => {
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'stalled', messages, stream: true }) });
  t.equal(res.status, 200);
  const { events, done } = parseSse(await res.text());
  t.notOk(done, 'no [DONE]');
  const last = events.at(-1) as { error?: { code?: string; message?: string } };
  t.equal(last.error?.code, 'upstream_timeout');
  t.match(last.error?.message, /idleChunkTimeoutMs \(200 ms\)/);
  t.equal(res.headers.get('x-broker-fallback'), null);
  t.equal(await metricValue(tb.url, 'llm_upstream_timeouts_total', { deployment: 'stall-1', phase: 'idle' }), 1);
});

t.test('a non-streamed request is streamed from its upstream: first-token and idle timeouts apply, and both fall back (nothing reached the client)', async (t) => {
  const cold = await openai.chat.completions.create({ model: 'cold-whole', messages }).withResponse();
  t.equal(cold.data.choices[0]!.message.content, mockText(8));
  t.equal(cold.response.headers.get('x-broker-fallback'), 'big', 'the cold deployment sent no token within firstTokenTimeoutMs');
  t.equal(await metricValue(tb.url, 'llm_upstream_timeouts_total', { deployment: 'cold-4', phase: 'first_byte' }), 1);
  const stalled = await openai.chat.completions.create({ model: 'stalled-whole', messages }).withResponse();
  t.equal(stalled.data.choices[0]!.message.content, mockText(8), 'two tokens then silence: the whole reply comes from the fallback');
  t.equal(stalled.response.headers.get('x-broker-fallback'), 'big');
  t.equal(await metricValue(tb.url, 'llm_upstream_timeouts_total', { deployment: 'stall-2', phase: 'idle' }), 1);
  // Alone, an Ollama client's non-streamed chat: the phase and its limit named.
  const alone = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'stalled-whole-alone', messages, stream: false }) });
  t.equal(alone.status, 504);
  t.match(((await alone.json()) as { error: string }).error, /stall-3 sent nothing for idleChunkTimeoutMs \(200 ms\)/);
  // upstreamStreaming: client: the upstream answers whole, so only the headers' limit applies.
  const whole = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'cold-whole-client', messages }) });
  t.equal(whole.status, 504);
  t.match(((await whole.json()) as { error: { message: string } }).error.message, /cold-5 sent no reply headers within headersTimeoutMs \(300 ms\)/);
  t.equal(await metricValue(tb.url, 'llm_upstream_timeouts_total', { deployment: 'cold-5', phase: 'first_byte' }), 1);
});

t.test('total timeout: a stream still going ends with an error event', async (t) => {
  const lines: Record<string, unknown>[] = [];
  const res = await fetch(`${tb.url}/api/generate`, { method: 'POST', body: JSON.stringify({ model: 'endless', prompt: 'go' }) });
  for (const l of (await res.text()).split('\n')) if (l) lines.push(JSON.parse(l));
  t.ok(lines.length > 1, 'tokens came first');
  t.match(lines.at(-1)!.error, /totalTimeoutMs \(400 ms\)/);
  t.equal(await metricValue(tb.url, 'llm_upstream_timeouts_total', { deployment: 'slow-1', phase: 'total' }), 1);
});

t.test("an upstream's keep-alive comments before its first event: their wait is the upstream's, not the broker's overhead", async (t) => {
  // Translated (an Ollama client): the comment gives the client nothing, so its first byte waits for the event.
  const res = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model: 'commenting', messages }) });
  t.equal(res.status, 200);
  t.match(await res.text(), /"content":"hi"/);
  const overhead = Number(res.headers.get('x-broker-overhead-ms'));
  // The upstream waited 600 ms after its comment; none of it may be counted as the broker's.
  t.ok(overhead >= 0 && overhead < 300, `x-broker-overhead-ms ${overhead} leaves out the upstream's 600 ms`);
});

t.test('x-broker-overhead-ms on replies, and the phases as histograms', async (t) => {
  const { response } = await openai.chat.completions.create({ model: 'big', messages }).withResponse();
  const v = Number(response.headers.get('x-broker-overhead-ms'));
  t.ok(Number.isFinite(v) && v >= 0, `a number of ms: ${response.headers.get('x-broker-overhead-ms')}`);
  for (const phase of ['admission', 'queue', 'dispatch', 'upstream', 'relay']) t.ok((await metricValue(tb.url, 'llm_phase_seconds_count', { phase })) > 0, phase);
  t.ok((await metricValue(tb.url, 'broker_overhead_seconds_count', { route: 'llm' })) > 0);
});

/** A stream that holds its group's only slot until `stop` is called. */
async function holdSlot(model: string): Promise<{ stop: () => void }> {
  const ctl = new AbortController();
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, messages, stream: true }), signal: ctl.signal });
  const reader = res.body!.getReader();
  await reader.read();
  return { stop: () => ctl.abort() };
}

t.test('a full group falls back rather than queue (at capacity is a reason to fall back); without a fallback it queues', async (t) => {
  const hold = await holdSlot('busy');
  t.teardown(() => hold.stop());
  const replies = await Promise.all([1, 2].map(() => openai.chat.completions.create({ model: 'busy', messages }).withResponse()));
  for (const r of replies) {
    t.equal(r.response.headers.get('x-broker-fallback'), 'big', 'served by the fallback at once');
    t.equal(r.data.choices[0]!.message.content, mockText(8));
  }
  t.equal(await metricValue(tb.url, 'broker_capacity_rejections_total', { group: 'busy' }), 0, 'no refusal counted: both were served');
});

t.test('a request that leaves while queued for capacity is counted once, as aborted', async (t) => {
  const hold = await holdSlot('busy-alone');
  const before = await metricValue(tb.url, 'llm_requests_total', { group: 'busy-alone', reason: 'aborted' });
  const ctl = new AbortController();
  const queued = fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'busy-alone', messages }), signal: ctl.signal }).catch(() => undefined);
  for (let i = 0; i < 200; i++) {
    const cap = (await (await fetch(`${tb.url}/api/industrial/capacity`, { headers: admin })).json()) as { queue: { size: number } };
    if (cap.queue.size === 1) break;
    await new Promise((r) => setTimeout(r, 20));
  }
  ctl.abort();
  await queued;
  let after = before;
  for (let i = 0; i < 100 && after === before; i++) {
    await new Promise((r) => setTimeout(r, 20));
    after = await metricValue(tb.url, 'llm_requests_total', { group: 'busy-alone', reason: 'aborted' });
  }
  t.equal(after - before, 1, 'the queued request, counted when it left');
  hold.stop();
});

t.test("a retry that finds no slot in what is left of the request's wait answers the failure that made it retry, not queue_timeout", async (t) => {
  const hold = await holdSlot('cold-then-busy');
  t.teardown(() => hold.stop());
  // The tier lets it wait 100 ms for a slot; the cold deployment alone takes 150 ms to fail.
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-broker-qos': 'hasty' }, body: JSON.stringify({ model: 'cold-then-busy', messages, stream: true }) });
  const body = (await res.json()) as { error: { code: string; message: string } };
  t.equal(res.status, 504);
  t.equal(body.error.code, 'upstream_timeout', 'the cold deployment timed out: that is the answer');
  t.match(body.error.message, /firstTokenTimeoutMs/);
});

t.test("an upstream's error after its 200 that echoes the deployment's key: the client sees it masked, in every API", async (t) => {
  const stream = await openai.chat.completions.create({ model: 'echo-1', messages: [{ role: 'user', content: 'hi' }], stream: true });
  const err = await (async () => {
    for await (const _ of stream) void _;
  })().then(() => undefined, (e: unknown) => e as Error);
  t.match(err?.message, /oops, you sent Bearer \[redacted\]/, 'the OpenAI SDK throws the masked message');
  for (const [path, body] of [
    ['/api/chat', { model: 'echo-2', messages: [{ role: 'user', content: 'hi' }] }],
    ['/v1/messages', { model: 'echo-3', max_tokens: 10, stream: true, messages: [{ role: 'user', content: 'hi' }] }],
    ['/v1/responses', { model: 'echo-4', input: 'hi', stream: true }],
  ] as const) {
    const text = await (await fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })).text();
    t.notMatch(text, /sk-DEPLOY/, `${path}: not in the stream`);
    t.match(text, /\[redacted\]/, `${path}: masked`);
  }
});

t.test("an upstream's Retry-After: delay-seconds or an HTTP-date (RFC 9110), at least 1 s", async (t) => {
  const { retryAfterSeconds } = await import('../../src/llm/proxy.ts');
  const now = Date.parse('2026-12-05T20:00:00Z');
  t.equal(retryAfterSeconds('7', now), 7);
  t.equal(retryAfterSeconds('0', now), 1);
  t.equal(retryAfterSeconds('Sat, 05 Dec 2026 20:00:30 GMT', now), 30, 'a date 30 s ahead (it was read as 1 s)');
  t.equal(retryAfterSeconds('Sat, 05 Dec 2026 19:59:00 GMT', now), 1, 'a date past');
  t.equal(retryAfterSeconds('soon', now), 1);
  t.equal(retryAfterSeconds(undefined, now), 1);
});
