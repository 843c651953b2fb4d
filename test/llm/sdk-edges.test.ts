// Edges an independent check with the official clients found: the final usage of a stream
// whose upstream sent none, a stop on a stop sequence (vLLM says which), the Messages API's
// overload status, an image URL for an Ollama group named in the client's own field, and
// what llm_requests_total counts of a request refused for its form.
// The upstream is a scripted HTTP server: each test says what it answers.
import t from 'tap';
import type { ServerResponse } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { startTestBroker, metricValue } from '../helpers/broker.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';

// ---- the scripted upstream ----

// The busy group's deployment is always rate limited.
const up = await startScriptedUpstream((body, res) => {
  if (body.model !== 'busy') return false;
  res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '1' }).end(JSON.stringify({ error: { message: 'slow down', type: 'requests', code: 'rate_limit_exceeded' } }));
  return true;
});
t.teardown(() => up.close());

const chunk = (choice: Record<string, unknown>, extra: Record<string, unknown> = {}): string =>
  `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, logprobs: null, finish_reason: null, ...choice }], ...extra })}\n\n`;

/**
 * An OpenAI-compatible chat reply of "Hello": streamed with no usage chunk unless `usage`,
 * whole with `usage` only when given; `stopReason`: vLLM's choices[].stop_reason.
 */
function openaiReply(body: any, res: ServerResponse, opts: { usage?: Record<string, number>; stopReason?: string | number | null } = {}): void {
  const vllm = 'stopReason' in opts ? { stop_reason: opts.stopReason } : {};
  if (body.stream !== true) {
    res.writeHead(200, { 'content-type': 'application/json' });
    return void res.end(JSON.stringify({ id: 'c1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'Hello' }, finish_reason: 'stop', ...vllm }], ...(opts.usage ? { usage: opts.usage } : {}) }));
  }
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(chunk({ delta: { role: 'assistant', content: '' } }));
  res.write(chunk({ delta: { content: 'Hel' } }));
  res.write(chunk({ delta: { content: 'lo' } }));
  res.write(chunk({ delta: {}, finish_reason: 'stop', ...vllm }));
  if (opts.usage) res.write(`data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage: opts.usage })}\n\n`);
  res.end('data: [DONE]\n\n');
}

// ---- the broker ----

const dir = mkdtempSync(join(tmpdir(), 'eb-sdk-edges-'));
writeFileSync(
  join(dir, 'broker.yaml'),
  stringify({
    modelGroups: {
      oa: { deployments: [{ id: 'oa-1', provider: 'openai', url: up.url, model: 'm' }] },
      ol: { deployments: [{ id: 'ol-1', provider: 'ollama', url: up.url, model: 'm' }] },
      busy: { deployments: [{ id: 'busy-1', provider: 'openai', url: up.url, model: 'busy' }] },
    },
  }),
);
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false' });
t.teardown(() => tb.close());
const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'x', maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: tb.url, apiKey: 'x', maxRetries: 0 });

const post = (path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> =>
  fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

// 40 characters: the broker's estimate is 10 tokens (4 characters a token).
const PROMPT = 'Tell me something about the sea, briefly';

// ---- 1: the prompt's estimate when the upstream says no usage ----

t.test("a stream whose upstream sends no usage reports the prompt's estimate in every client API's final usage", async (t) => {
  const messages = [{ role: 'user' as const, content: PROMPT }];
  const estimate = (await anthropic.messages.countTokens({ model: 'oa', messages })).input_tokens;
  t.equal(estimate, 10, 'the estimate');
  up.handler = (_p, b, res) => openaiReply(b, res);

  const stream = anthropic.messages.stream({ model: 'oa', max_tokens: 20, messages });
  let started = -1;
  stream.on('streamEvent', (e) => {
    if (e.type === 'message_start') started = e.message.usage.input_tokens;
  });
  const final = await stream.finalMessage();
  t.equal(started, estimate, 'message_start says the estimate');
  t.equal(final.usage.input_tokens, estimate, "Messages: finalMessage()'s input_tokens is the estimate, not 0");
  t.equal(final.usage.output_tokens, 2, 'the token events counted');

  const rs = await openai.responses.stream({ model: 'oa', input: PROMPT }).finalResponse();
  t.equal(rs.usage?.input_tokens, estimate, "Responses: response.completed's input_tokens is the estimate");

  const lines = (await (await post('/api/chat', { model: 'oa', messages })).text()).trim().split('\n').map((l) => JSON.parse(l));
  const done = lines.at(-1);
  t.equal(done.done, true);
  t.equal(done.prompt_eval_count, estimate, "Ollama: the done line's prompt_eval_count is the estimate");
  t.equal(done.eval_count, 2);

  // An Ollama-compatible server whose done line has no counters, for an OpenAI client that asked for usage.
  up.handler = (_p, _b, res) => {
    res.writeHead(200, { 'content-type': 'application/x-ndjson' });
    const line = (message: Record<string, unknown>, done = false) => JSON.stringify({ model: 'm', created_at: '2024-01-01T00:00:00Z', message: { role: 'assistant', content: '', ...message }, done, ...(done ? { done_reason: 'stop' } : {}) }) + '\n';
    res.end(line({ content: 'Hel' }) + line({ content: 'lo' }) + line({}, true));
  };
  let usage: OpenAI.CompletionUsage | null | undefined;
  for await (const c of await openai.chat.completions.create({ model: 'ol', messages, stream: true, stream_options: { include_usage: true } })) if (c.usage) usage = c.usage;
  t.equal(usage?.prompt_tokens, estimate, "OpenAI chat: the usage chunk's prompt_tokens is the estimate");
  t.equal(usage?.completion_tokens, 2);

  // The upstream's own figures when it gives them.
  up.handler = (_p, b, res) => openaiReply(b, res, { usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } });
  t.equal((await anthropic.messages.stream({ model: 'oa', max_tokens: 20, messages }).finalMessage()).usage.input_tokens, 3, "Messages: the upstream's count");
  t.equal((await openai.responses.stream({ model: 'oa', input: PROMPT }).finalResponse()).usage?.input_tokens, 3, "Responses: the upstream's count");
  const last = JSON.parse((await (await post('/api/chat', { model: 'oa', messages })).text()).trim().split('\n').at(-1)!);
  t.equal(last.prompt_eval_count, 3, "Ollama: the upstream's count");
});

t.test('a whole reply whose upstream sends no usage: the estimates, for the client (Messages, Responses) and for the token counts, not zeros', async (t) => {
  const messages = [{ role: 'user' as const, content: PROMPT }];
  up.handler = (_p, b, res) => openaiReply(b, res);
  // "Hello": 5 characters, 2 tokens by the estimate; the prompt 10.
  const msg = await anthropic.messages.create({ model: 'oa', max_tokens: 20, messages });
  t.same([msg.usage.input_tokens, msg.usage.output_tokens], [10, 2], 'Messages: the estimates');
  const rs = await openai.responses.create({ model: 'oa', input: PROMPT });
  t.same([rs.usage?.input_tokens, rs.usage?.output_tokens], [10, 2], 'Responses: the estimates');
  const counted = (direction: string) => metricValue(tb.url, 'llm_tokens_total', { group: 'oa', direction });
  const [p0, c0] = [await counted('prompt'), await counted('completion')];
  const chat = await openai.chat.completions.create({ model: 'oa', messages });
  t.equal(chat.choices[0]!.message.content, 'Hello');
  t.equal(chat.usage, undefined, 'passed through as the upstream sent it');
  t.equal((await counted('prompt')) - p0, 10, 'counted: the prompt estimate');
  t.equal((await counted('completion')) - c0, 2, 'counted: the reply estimate (quotas and tracking are charged the same), not 0');
});

// ---- 2: stop sequences ----

t.test("a stop on one of stop_sequences is stop_reason stop_sequence with the string, when the upstream (vLLM) says which", async (t) => {
  const req = { model: 'oa', max_tokens: 20, stop_sequences: ['###', 'END'], messages: [{ role: 'user' as const, content: 'Hi' }] };
  up.handler = (_p, b, res) => openaiReply(b, res, { stopReason: 'END' });
  const streamed = await anthropic.messages.stream(req).finalMessage();
  t.equal(streamed.stop_reason, 'stop_sequence', 'streamed');
  t.equal(streamed.stop_sequence, 'END');
  t.same(up.seen.at(-1)?.body.stop, ['###', 'END'], 'the stop sequences went upstream');
  const whole = await anthropic.messages.create(req);
  t.equal(whole.stop_reason, 'stop_sequence', 'whole');
  t.equal(whole.stop_sequence, 'END');

  // EOS (null), a stop token id (a number), or a string the request did not ask for: an end_turn.
  for (const stopReason of [null, 128009, 'other']) {
    up.handler = (_p, b, res) => openaiReply(b, res, { stopReason });
    const s = await anthropic.messages.stream(req).finalMessage();
    const w = await anthropic.messages.create(req);
    t.same([s.stop_reason, s.stop_sequence, w.stop_reason, w.stop_sequence], ['end_turn', null, 'end_turn', null], `stop_reason ${JSON.stringify(stopReason)}`);
  }
});

// ---- 3: overloaded on the Messages API ----

t.test('no deployment available: 529 overloaded_error on /v1/messages (with Retry-After), 503 elsewhere', async (t) => {
  const before529 = await metricValue(tb.url, 'http_requests_errors_total', { route: '/v1/messages', status: '529' });
  const beforeLlm = await metricValue(tb.url, 'llm_requests_total', { group: 'busy', outcome: 'error' });
  const r = await post('/v1/messages', { model: 'busy', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(r.status, 529, "Anthropic's status for overloaded_error");
  t.equal(r.statusText, 'Overloaded', 'with a reason phrase, not "Unknown"');
  t.ok(r.headers.get('retry-after'), 'Retry-After kept');
  t.match(await r.json(), { type: 'error', error: { type: 'overloaded_error', code: 'upstream_unavailable' } });
  const err = await anthropic.messages.create({ model: 'busy', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] }).catch((e: unknown) => e);
  t.ok(err instanceof Anthropic.InternalServerError && (err as InstanceType<typeof Anthropic.APIError>).status === 529, 'the SDK sees a 529');
  // The SDK retries it as any 5xx (Retry-After: 1 s).
  const retrying = new Anthropic({ baseURL: tb.url, apiKey: 'x', maxRetries: 1 });
  await retrying.messages.create({ model: 'busy', max_tokens: 5, messages: [{ role: 'user', content: 'Hi' }] }).catch(() => undefined);
  t.equal((await metricValue(tb.url, 'http_requests_errors_total', { route: '/v1/messages', status: '529' })) - before529, 4, 'counted under 529 in the HTTP metrics, the retry included');
  t.equal((await metricValue(tb.url, 'llm_requests_total', { group: 'busy', outcome: 'error' })) - beforeLlm, 4, 'and once each in llm_requests_total, as before');
  // The other client APIs keep 503.
  const oa = await post('/v1/chat/completions', { model: 'busy', messages: [{ role: 'user', content: 'Hi' }] });
  t.equal(oa.status, 503);
  const ol = await post('/api/chat', { model: 'busy', messages: [{ role: 'user', content: 'Hi' }], stream: false });
  t.equal(ol.status, 503);
});

// ---- 4: an image URL for an Ollama group ----

t.test("an image URL for an Ollama group is refused naming the client's own field", async (t) => {
  const url = 'https://example.com/cat.png';
  const err = await anthropic.messages
    .create({ model: 'ol', max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'text', text: 'What is it?' }, { type: 'image', source: { type: 'url', url } }] }] })
    .catch((e: unknown) => e);
  t.ok(err instanceof Anthropic.BadRequestError);
  const msg = (err as InstanceType<typeof Anthropic.BadRequestError>).error as any;
  t.match(msg.error.message, /^messages\[0\]\.content\[1\]\.source\.url /, 'the Messages field');
  t.notMatch(msg.error.message, /image_url/, "not OpenAI's");
  const rerr = await openai.responses
    .create({ model: 'ol', input: [{ role: 'user', content: [{ type: 'input_text', text: 'What is it?' }, { type: 'input_image', image_url: url, detail: 'auto' }] }] })
    .catch((e: unknown) => e);
  t.ok(rerr instanceof OpenAI.BadRequestError);
  t.equal((rerr as InstanceType<typeof OpenAI.BadRequestError>).param, 'input[0].content[1].image_url', 'Responses: the field, as param');
  // A base64 image still goes.
  up.handler = (_p, _b, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ model: 'm', created_at: '2024-01-01T00:00:00Z', message: { role: 'assistant', content: 'A cat' }, done: true, done_reason: 'stop', prompt_eval_count: 3, eval_count: 2 }));
  };
  const ok = await anthropic.messages.create({ model: 'ol', max_tokens: 5, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'iVBORw0KGgo=' } }] }] });
  t.equal(ok.stop_reason, 'end_turn');
});

// ---- 5: llm_requests_total and a request refused for its form ----

t.test('a request refused for a header or field counts once in the HTTP metrics and once in the group it names', async (t) => {
  const llm = () => metricValue(tb.url, 'llm_requests_total', { group: 'oa', deployment: 'none', outcome: 'client_error' });
  const http = () => metricValue(tb.url, 'http_requests_errors_total', { route: '/v1/chat/completions', status: '400', code: 'invalid_request' });
  const [llm0, http0] = [await llm(), await http()];
  const bad = await post('/v1/chat/completions', { model: 'oa', messages: [{ role: 'user', content: 'Hi' }] }, { 'x-broker-cache': 'foo' });
  t.equal(bad.status, 400);
  t.equal(((await bad.json()) as any).error.param, 'x-broker-cache');
  t.equal((await post('/v1/chat/completions', { model: 'oa', messages: [{ role: 'user', content: 'Hi' }], temperature: 'hot' })).status, 400);
  t.equal((await http()) - http0, 2, 'in the HTTP metrics');
  t.equal((await llm()) - llm0, 2, 'in llm_requests_total, as client errors of the group it names');
});

t.test("an Anthropic SDK's call of an API not served here (files) gets Anthropic's error shape and request-id; models.list says its request id", async (t) => {
  const err = await anthropic.beta.files.list().then(
    () => undefined,
    (e: unknown) => e as InstanceType<typeof Anthropic.APIError>,
  );
  t.ok(err instanceof Anthropic.NotFoundError, 'a NotFoundError');
  t.match(err?.error, { type: 'error', error: { type: 'not_found_error' } }, "Anthropic's shape");
  t.ok(err?.requestID, 'the request-id header');
  const page = await anthropic.models.list();
  t.ok(page.data.some((m) => m.id === 'oa'));
  const { response } = await anthropic.models.list().withResponse();
  t.ok(response.headers.get('request-id'), 'request-id on the model list');
  // An OpenAI client's unknown path keeps OpenAI's shape.
  const r = await fetch(`${tb.url}/v1/files`);
  t.match(await r.json(), { error: { type: 'invalid_request_error' } });
});

t.test("an unknown model asked by an Anthropic client: one request-id header, the SDK's requestID that id", async (t) => {
  const err = (await anthropic.models.retrieve('zzz').catch((e: unknown) => e)) as InstanceType<typeof Anthropic.APIError>;
  t.equal(err.status, 404);
  t.match(err.requestID, /^[0-9a-f]+$/, 'one id, not two joined');
});
