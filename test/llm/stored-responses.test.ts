// Stored Responses (docs/llm.md#stored-responses): a Response is kept under its id, and a
// later request continues from it with previous_response_id, as the openai SDK's and the
// Agents SDK's conversations do: the upstream (a chat server) gets the whole conversation.
// Read back, listed and deleted; each caller sees only its own; shared by replicas through
// Redis; store: false keeps nothing; RESPONSES_STORE_MB=0 is the old stateless broker.
import t from 'tap';
import type { ServerResponse } from 'node:http';
import OpenAI from 'openai';
import { Redis } from 'ioredis';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { ResponseStore } from '../../src/llm/stored/responses.ts';
import type { Logger } from '../../src/obs/logger.ts';
import { Agent, fetch as undiciFetch, type RequestInit as UndiciInit } from 'undici';
import { startFleetBroker } from '../helpers/fleet.ts';
import { metricValue } from '../helpers/broker.ts';
import { startRedis } from '../helpers/redis.ts';
import { startScriptedUpstream } from '../helpers/scripted-upstream.ts';

const up = await startScriptedUpstream();
t.teardown(() => up.close());

/** What the upstream was sent, in order. */
const seen: any[] = [];
let turn = 0;
/** An OpenAI chat upstream that answers "answer N", whole or streamed; a tool call when asked to call. */
up.handler = (p: string, b: any, res: ServerResponse) => {
  seen.push(b);
  turn++;
  if (p.startsWith('/v1/responses')) {
    // A Responses deployment (responses: true): its own Response, under its own id.
    res.writeHead(200, { 'content-type': 'application/json' });
    const output = [{ type: 'message', id: `msg_up_${turn}`, status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: `upstream answer ${turn}`, annotations: [] }] }];
    // Ollama's are short (resp_<up to 6 digits>): asked for "short", one of those.
    const id = JSON.stringify(b.input).includes('short') ? `resp_${turn}` : `resp_up_${String(turn).padStart(24, '0')}`;
    return void res.end(JSON.stringify({ id, object: 'response', created_at: 1, status: 'completed', model: 'm', output, usage: { input_tokens: 3, output_tokens: 2, total_tokens: 5 } }));
  }
  const last = b.messages.at(-1);
  const call = typeof last?.content === 'string' && last.content.startsWith('call ');
  const message = call ? { role: 'assistant', content: null, tool_calls: [{ id: `call_${turn}`, type: 'function', function: { name: 'f', arguments: '{"x":1}' } }] } : { role: 'assistant', content: `answer ${turn}` };
  const finish = call ? 'tool_calls' : 'stop';
  const usage = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };
  if (b.stream !== true) {
    res.writeHead(200, { 'content-type': 'application/json' });
    return void res.end(JSON.stringify({ id: 'c', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message, finish_reason: finish }], usage }));
  }
  const chunk = (delta: unknown, f: string | null = null) => `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: f }] })}\n\n`;
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  const body = call ? chunk({ role: 'assistant', tool_calls: message.tool_calls!.map((c, index) => ({ index, ...c })) }) : chunk({ role: 'assistant', content: message.content });
  res.end(body + chunk({}, finish) + `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage })}\n\n` + 'data: [DONE]\n\n');
};

const fleet = {
  modelGroups: { g: { deployments: [{ id: 'd', provider: 'openai', url: up.url, model: 'm' }] }, gc: { cache: 'on', deployments: [{ id: 'dc', provider: 'openai', url: up.url, model: 'm' }] }, rp: { deployments: [{ id: 'rp', provider: 'openai', url: up.url, model: 'm', responses: true }] } },
  apiKeys: { 'sk-alice': {}, 'sk-bob': {} },
};

/** The upstream's messages as role: text pairs. */
const said = (b: any): string[] => b.messages.map((m: any) => `${m.role}: ${typeof m.content === 'string' ? m.content : m.tool_calls ? `calls ${m.tool_calls.map((c: any) => c.function.name).join(',')}` : JSON.stringify(m.content)}`);

t.test('a conversation continued by previous_response_id, whole and streamed, with tools: the upstream gets all of it', async (t) => {
  const tb = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false' });
  const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'x', maxRetries: 0 });
  seen.length = 0;
  const first = await openai.responses.create({ model: 'g', instructions: 'Be brief.', input: 'Hi, I am Ann.' });
  t.match(first, { status: 'completed', store: true, previous_response_id: null, output_text: /^answer/ });
  t.match(first.id, /^resp_[0-9a-f]{32}$/, 'an id no one guesses from another');

  const second = await openai.responses.stream({ model: 'g', previous_response_id: first.id, input: 'What is my name?' }).finalResponse();
  t.equal(second.previous_response_id, first.id, 'the Response says what it continued');
  t.same(said(seen[1]), ['user: Hi, I am Ann.', `assistant: ${first.output_text}`, 'user: What is my name?'], "the first turn's input and answer before this one; not its instructions (OpenAI's: they do not carry over)");

  // A function call and its output, as the Agents SDK sends them on the next turn.
  const third = await openai.responses.create({ model: 'g', previous_response_id: second.id, input: 'call f', tools: [{ type: 'function', name: 'f', parameters: { type: 'object' }, strict: false }] });
  const call = third.output.find((o) => o.type === 'function_call') as any;
  t.ok(call, 'a function call');
  await openai.responses.create({ model: 'g', previous_response_id: third.id, input: [{ type: 'function_call_output', call_id: call.call_id, output: '42' }], tools: [{ type: 'function', name: 'f', parameters: { type: 'object' }, strict: false }] });
  t.same(said(seen[3]), ['user: Hi, I am Ann.', `assistant: ${first.output_text}`, 'user: What is my name?', `assistant: ${second.output_text}`, 'user: call f', 'assistant: calls f', 'tool: 42']);

  // Read back as its client got it; its input items listed, newest first, then oldest first and paged.
  t.same(await openai.responses.retrieve(first.id), first, 'retrieve: the stored Response');
  t.match(await openai.responses.retrieve(second.id), { id: second.id, previous_response_id: first.id, output: [{ type: 'message', content: [{ text: second.output_text }] }] }, 'a streamed one too');
  const items = await openai.responses.inputItems.list(second.id);
  t.same(items.data.map((i: any) => i.type === 'message' ? `${i.role}: ${i.content[0].text}` : i.type), ['user: What is my name?', `assistant: ${first.output_text}`, 'user: Hi, I am Ann.'], 'input_items: what the model was given, newest first');
  t.ok(items.data.every((i: any) => typeof i.id === 'string' && i.id !== ''), 'each item with an id');
  const page = await openai.responses.inputItems.list(second.id, { order: 'asc', limit: 2 });
  t.equal(page.data.length, 2);
  t.equal(page.has_more, true);
  const rest = await openai.responses.inputItems.list(second.id, { order: 'asc', limit: 2, after: page.data[1]!.id });
  t.same(rest.data.map((i: any) => i.content[0].text), ['What is my name?']);

  // Deleted: gone for reads and continuations, on every thread.
  t.match(await openai.responses.delete(first.id), { id: first.id, deleted: true });
  const gone: any = await openai.responses.retrieve(first.id).catch((e: unknown) => e);
  t.equal(gone.status, 404);
  t.match(gone.error, { message: `Response with id '${first.id}' not found.` });
  const orphan: any = await openai.responses.create({ model: 'g', previous_response_id: second.id, input: 'x' }).catch((e: unknown) => e);
  t.equal(orphan.status, 400, 'a turn whose earlier turn was deleted cannot be continued');
  t.match(orphan.error, { param: 'previous_response_id' });
  const refusedBefore = await metricValue(tb.url, 'llm_requests_total', { group: 'g', reason: 'client_error' });
  const unknown: any = await openai.responses.create({ model: 'g', previous_response_id: 'resp_nope', input: 'x' }).catch((e: unknown) => e);
  let refusedAfter = refusedBefore;
  for (const until = Date.now() + 5_000; refusedAfter === refusedBefore && Date.now() < until; ) {
    refusedAfter = await metricValue(tb.url, 'llm_requests_total', { group: 'g', reason: 'client_error' });
    if (refusedAfter === refusedBefore) await new Promise((res) => setTimeout(res, 50));
  }
  t.equal(refusedAfter, refusedBefore + 1, "one outcome in the group's requests, as every refusal");
  t.equal(unknown.status, 400);
  t.match(unknown.error, { param: 'previous_response_id', code: 'previous_response_not_found', message: "Previous response with id 'resp_nope' not found." }, "OpenAI's code: clients resend the whole conversation on it");
  t.equal(orphan.error.code, 'previous_response_not_found');
  t.equal(seen.length, 4, 'nothing refused went upstream');
  const listedGone: any = await openai.responses.inputItems.list(second.id).catch((e: unknown) => e);
  t.equal(listedGone.status, 404, "a turn whose earlier turn is gone: its items cannot be listed (it can still be read)");
  t.equal((await openai.responses.retrieve(second.id)).id, second.id);

  // The AI SDK's OpenAI provider (store on, its default) sends each earlier assistant turn as an item_reference.
  seen.length = 0;
  const asked = await openai.responses.create({ model: 'g', input: 'Say hi.' });
  await openai.responses.create({ model: 'g', input: [{ role: 'user', content: 'Say hi.' }, { type: 'item_reference', id: asked.output[0]!.id } as any, { type: 'item_reference', id: 'msg_notours' } as any, { role: 'user', content: 'Again.' }] });
  t.same(said(seen[1]), ['user: Say hi.', `assistant: ${asked.output_text}`, 'user: Again.'], "a reference to one of the broker's stored items is that item; one to nothing stored here is left out");

  // The AI SDK with a previous_response_id (its providerOptions) and store on: the id and references to what it names.
  seen.length = 0;
  const base = await openai.responses.create({ model: 'g', input: 'Base.' });
  const next = await openai.responses.create({ model: 'g', previous_response_id: base.id, input: [{ role: 'user', content: 'Base.' }, { type: 'item_reference', id: base.output[0]!.id } as any, { role: 'user', content: 'More.' }] });
  t.same(said(seen[1]), ['user: Base.', `assistant: ${base.output_text}`, 'user: Base.', 'user: More.'], 'the referenced answer once, where the conversation has it');
  const listedNext = await openai.responses.inputItems.list(next.id, { order: 'asc', limit: 100 });
  t.equal(new Set(listedNext.data.map((i: any) => i.id)).size, listedNext.data.length, 'every listed item has its own id (a cursor names one)');
  const twice = await openai.responses.create({ model: 'g', input: [{ type: 'message', id: 'm1', role: 'user', content: 'a' }, { type: 'message', id: 'm1', role: 'user', content: 'b' }, { type: 'message', id: 'm1', role: 'user', content: 'c' }] as any });
  const paged: string[] = [];
  for await (const item of openai.responses.inputItems.list(twice.id, { order: 'asc', limit: 1 })) {
    paged.push((item as any).content[0].text);
    if (paged.length > 5) break;
  }
  t.same(paged, ['a', 'b', 'c'], 'items the client sent under one id: each listed once, paging ends');
  const counted = await openai.responses.inputTokens.count({ model: 'g', previous_response_id: next.id, input: 'x' });
  const alone = await openai.responses.inputTokens.count({ model: 'g', input: 'x' });
  t.ok(counted.input_tokens > alone.input_tokens, `input_tokens counts the stored conversation (${counted.input_tokens} > ${alone.input_tokens})`);

  // A streamed cache hit is kept as a live stream is (it is written in one piece).
  const ask = { model: 'gc', input: 'cached?', stream: true as const };
  for await (const _ of await openai.responses.create(ask));
  const hit = await openai.responses.stream({ model: 'gc', input: 'cached?' }).finalResponse();
  t.equal((await openai.responses.retrieve(hit.id)).id, hit.id, 'the hit is stored');
  t.match(await openai.responses.create({ model: 'g', previous_response_id: hit.id, input: 'and?' }), { previous_response_id: hit.id });

  // store: false keeps nothing.
  const unstored = await openai.responses.create({ model: 'g', input: 'secret', store: false });
  t.equal((unstored as any).store, false);
  t.equal(((await openai.responses.retrieve(unstored.id).catch((e: unknown) => e)) as any).status, 404);
  const cancel: any = await openai.responses.cancel(second.id).catch((e: unknown) => e);
  t.equal(cancel.status, 400, 'cancel: only a background response');
  const conv: any = await openai.conversations.create({}).catch((e: unknown) => e);
  t.equal(conv.status, 404);
  t.match(conv.error.message, /conversations are not served here: continue a conversation with previous_response_id/);
});

t.test("a responses: true deployment's Response is kept under the upstream's id; continued, it is sent the conversation, not an id it may not know", async (t) => {
  const tb = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false' });
  const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'x', maxRetries: 0 });
  seen.length = 0;
  const first = await openai.responses.create({ model: 'rp', input: 'one' });
  t.match(first.id, /^resp_up_/);
  t.equal((await openai.responses.retrieve(first.id)).id, first.id);
  const second = await openai.responses.create({ model: 'rp', previous_response_id: first.id, input: 'two' });
  t.notOk('previous_response_id' in seen[1], 'no previous_response_id upstream');
  t.equal(second.previous_response_id, first.id, 'the Response says what it continued, though its upstream did not');
  t.equal((await openai.responses.retrieve(second.id)).previous_response_id, first.id, 'stored so too');
  // An id too short to name one Response alone (a server that repeats them) is not kept.
  const short = await openai.responses.create({ model: 'rp', input: 'short one' });
  t.match(short.id, /^resp_\d+$/);
  t.equal(((await openai.responses.retrieve(short.id).catch((e: unknown) => e)) as any).status, 404);
  t.equal(((await openai.responses.create({ model: 'rp', previous_response_id: short.id, input: 'x' }).catch((e: unknown) => e)) as any).error?.code, 'previous_response_not_found');
  t.match(seen[1].input, [{ role: 'user', content: 'one' }, { type: 'message', id: first.output[0]!.id, role: 'assistant' }, { role: 'user', content: 'two' }]);
});

t.test("each caller's responses are its own: another API key reads, continues and deletes none of them", async (t) => {
  const tb = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', AUTH_MODE: 'keys' });
  const alice = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-alice', maxRetries: 0 });
  const bob = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-bob', maxRetries: 0 });
  const r = await alice.responses.create({ model: 'g', input: "Alice's secret" });
  t.equal((await alice.responses.retrieve(r.id)).id, r.id);
  t.equal(((await bob.responses.retrieve(r.id).catch((e: unknown) => e)) as any).status, 404, 'read: not found');
  t.equal(((await bob.responses.inputItems.list(r.id).catch((e: unknown) => e)) as any).status, 404, 'input items: not found');
  t.equal(((await bob.responses.delete(r.id).catch((e: unknown) => e)) as any).status, 404, 'delete: not found');
  seen.length = 0;
  t.equal(((await bob.responses.create({ model: 'g', previous_response_id: r.id, input: 'go on' }).catch((e: unknown) => e)) as any).status, 400, 'continued: not found');
  t.equal(seen.length, 0, "nothing of Alice's went upstream");
  t.equal((await alice.responses.retrieve(r.id)).id, r.id, 'still there for its owner');
  const anon: any = await fetch(`${tb.url}/v1/responses/${r.id}`).then((res) => res.status);
  t.equal(anon, 401, 'no credential: refused as every client route');
});

t.test('replicas sharing Redis continue each other\'s conversations; RESPONSES_STORE_MB=0 keeps none', async (t) => {
  const redis = await startRedis(t);
  const a = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', RESPONSES_STORE_REDIS_URL: redis.url, FRONT_THREADS: '1' });
  const b = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', RESPONSES_STORE_REDIS_URL: redis.url, FRONT_THREADS: '1' });
  const onA = new OpenAI({ baseURL: `${a.url}/v1`, apiKey: 'x', maxRetries: 0 });
  const onB = new OpenAI({ baseURL: `${b.url}/v1`, apiKey: 'x', maxRetries: 0 });
  seen.length = 0;
  const first = await onA.responses.create({ model: 'g', input: 'one' });
  const second = await onB.responses.create({ model: 'g', previous_response_id: first.id, input: 'two' });
  t.same(said(seen[1]), ['user: one', `assistant: ${first.output_text}`, 'user: two'], 'B read A\'s turn from Redis');
  await onA.responses.create({ model: 'g', previous_response_id: second.id, input: 'three' });
  t.same(said(seen[2]).length, 5, "and A B's");
  await onB.responses.delete(first.id);
  t.equal(((await onA.responses.retrieve(first.id).catch((e: unknown) => e)) as any).status, 404, 'a delete on one replica holds on the other');
  const rc = new Redis(redis.url);
  t.teardown(() => rc.disconnect());
  const stored = async (id: string): Promise<number> => (await rc.keys(`eb:resp:*:${id}`)).length;
  t.equal(await stored(first.id), 0, 'gone from Redis');

  // Redis restarted empty (no persistence): the replicas write back what they hold.
  const kept = await onA.responses.create({ model: 'g', input: 'before the restart' });
  // B reads it (and holds a copy), then deletes one of its own that A had read: neither may come back.
  await onB.responses.retrieve(kept.id);
  const doomed = await onB.responses.create({ model: 'g', input: 'deleted before the restart' });
  await onA.responses.retrieve(doomed.id);
  await onB.responses.delete(doomed.id);
  t.equal(await stored(kept.id), 1);
  await redis.restart();
  const deadline = Date.now() + 10_000;
  while ((await stored(kept.id).catch(() => 0)) === 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  t.equal(await stored(kept.id), 1, 'written back to the new Redis by the replica that made it');
  t.match(await onB.responses.create({ model: 'g', previous_response_id: kept.id, input: 'after' }), { previous_response_id: kept.id }, 'continued on the other replica');
  // Right after the restart a response Redis lacks may be one still being written back: 503 a while, then the answer.
  let doomedStatus = 503;
  for (const until = Date.now() + 15_000; doomedStatus === 503 && Date.now() < until; ) {
    doomedStatus = ((await onA.responses.retrieve(doomed.id).catch((e: unknown) => e)) as any).status;
    if (doomedStatus === 503) await new Promise((res) => setTimeout(res, 100));
  }
  t.equal(doomedStatus, 404, 'a deleted one is not written back by a replica that had read it');
  t.equal(await stored(doomed.id), 0);

  const off = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', RESPONSES_STORE_MB: '0' });
  const c = new OpenAI({ baseURL: `${off.url}/v1`, apiKey: 'x', maxRetries: 0 });
  const r = await c.responses.create({ model: 'g', input: 'one' });
  t.equal((r as any).store, false, 'the Response says it is not kept');
  const refused: any = await c.responses.create({ model: 'g', previous_response_id: r.id, input: 'two' }).catch((e: unknown) => e);
  t.equal(refused.status, 400);
  t.match(refused.error.message, /RESPONSES_STORE_MB=0/);
  t.equal(((await c.responses.retrieve(r.id).catch((e: unknown) => e)) as any).status, 404);
});

t.test('a continuation sent the moment a stream ends, on a new connection (another thread): finds it; a stored response seen on every thread; another caller cannot overwrite one', async (t) => {
  const tb = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', FRONT_THREADS: '2' });
  // A fresh connection per request: the kernel spreads them over the threads.
  const fresh = (path: string, init: { method?: string; body?: string; headers?: Record<string, string> } = {}) => undiciFetch(`${tb.url}${path}`, { ...init, headers: { 'content-type': 'application/json', authorization: 'Bearer k', ...init.headers }, dispatcher: new Agent() } satisfies UndiciInit);
  let failures = 0;
  for (let i = 0; i < 20; i++) {
    const res = await fresh('/v1/responses', { method: 'POST', body: JSON.stringify({ model: 'g', input: `turn ${i}`, stream: true }) });
    const reader = res.body!.getReader();
    let text = '';
    let id: string | undefined;
    // Read until the terminal event, then continue at once (the rest of the body is not waited for).
    while (id === undefined) {
      const { value, done } = await reader.read();
      if (done) break;
      text += Buffer.from(value).toString();
      id = /"type":"response.completed".*?"id":"(resp_[0-9a-f]+)"/.exec(text)?.[1];
    }
    void reader.cancel().catch(() => undefined);
    const next = await fresh('/v1/responses', { method: 'POST', body: JSON.stringify({ model: 'g', input: 'go on', previous_response_id: id }) });
    if (next.status !== 200) failures++;
    await next.arrayBuffer();
    for (let j = 0; j < 3; j++) if ((await fresh(`/v1/responses/${id}`)).status !== 200) failures++;
  }
  t.equal(failures, 0, 'every continuation and read found it');

  // A responses: true upstream that repeats ids (resp_up_N from a counter here, the same for two callers).
  const upTurn = turn;
  const alice = await fresh('/v1/responses', { method: 'POST', headers: { authorization: 'Bearer alice' }, body: JSON.stringify({ model: 'rp', input: 'mine' }) }).then((r) => r.json() as Promise<any>);
  turn = upTurn;
  const bob = await fresh('/v1/responses', { method: 'POST', headers: { authorization: 'Bearer bob' }, body: JSON.stringify({ model: 'rp', input: 'his' }) }).then((r) => r.json() as Promise<any>);
  t.equal(alice.id, bob.id, 'the upstream gave both the same id');
  const read = await fresh(`/v1/responses/${alice.id}`, { headers: { authorization: 'Bearer alice' } }).then((r) => r.json() as Promise<any>);
  t.equal(read.output[0].content[0].text, alice.output[0].content[0].text, "Alice's is still hers");
});

t.test('a stored conversation past LLM_MAX_PROMPT_CHARS: refused saying it counted the stored turns; with truncation "auto", its oldest turns dropped', async (t) => {
  const tb = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', LLM_MAX_PROMPT_CHARS: '700' });
  const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'x', maxRetries: 0 });
  let last = await openai.responses.create({ model: 'g', input: 'x'.repeat(120) });
  for (let i = 0; i < 2; i++) last = await openai.responses.create({ model: 'g', previous_response_id: last.id, input: `${i}`.repeat(120) });
  const refused: any = await openai.responses.create({ model: 'g', previous_response_id: last.id, input: 'y'.repeat(120) }).catch((e: unknown) => e);
  t.equal(refused.status, 400);
  t.match(refused.error.message, /counting the stored conversation of previous_response_id .* truncation: "auto"/);
  seen.length = 0;
  const cut = await openai.responses.create({ model: 'g', previous_response_id: last.id, input: 'y'.repeat(120), truncation: 'auto' });
  t.equal(cut.status, 'completed');
  const sent = said(seen[0]);
  t.equal(sent.at(-1), `user: ${'y'.repeat(120)}`, 'this turn kept');
  t.notOk(sent.some((m) => m.includes('x'.repeat(120))), 'the oldest turn dropped');
  t.ok(sent.length < 7, `${sent.length} messages: fewer than the whole conversation`);
});

t.test('a response kept while Redis could not be reached (the same Redis, not restarted) is written once it can: the other replicas find it', async (t) => {
  const redis = await startRedis(t);
  // A link to Redis this test can cut and restore (a network partition, a proxy's hiccup).
  const sockets = new Set<Socket>();
  let cut = false;
  const link = createServer((c) => {
    if (cut) return void c.destroy();
    const r = connect(redis.port, '127.0.0.1');
    for (const s of [c, r]) {
      sockets.add(s);
      s.on('error', () => undefined).on('close', () => sockets.delete(s));
    }
    c.pipe(r).pipe(c);
  });
  await new Promise<void>((res) => link.listen(0, '127.0.0.1', res));
  t.teardown(() => link.close());
  const quiet = { warn() {}, info() {} } as unknown as Logger;
  const a = new ResponseStore({ maxBytes: 1 << 20, ttlSeconds: 60, logger: quiet, redisUrl: `redis://127.0.0.1:${(link.address() as AddressInfo).port}` });
  const b = new ResponseStore({ maxBytes: 1 << 20, ttlSeconds: 60, logger: quiet, redisUrl: redis.url });
  t.teardown(() => (a.close(), b.close()));
  const id = 'resp_' + 'a1'.repeat(16);
  const record = { owner: 'anyone', previous: null, chain: [], input: [], response: { id, status: 'completed', output: [] } };
  for (const until = Date.now() + 10_000; Date.now() < until; ) {
    if ((await a.get('resp_none', 'anyone').then(() => true, () => false))) break;
    await new Promise((res) => setTimeout(res, 50));
  }
  cut = true;
  for (const s of sockets) s.destroy();
  a.put(id, record);
  t.same(await a.get(id, 'anyone').catch(() => 'unavailable'), record, 'A serves it from memory meanwhile');
  t.equal(await b.get(id, 'anyone'), undefined, 'B cannot know it');
  cut = false;
  let found: unknown;
  for (const until = Date.now() + 15_000; found === undefined && Date.now() < until; ) {
    found = await b.get(id, 'anyone');
    if (found === undefined) await new Promise((res) => setTimeout(res, 100));
  }
  t.same(found, record, 'written when A reached Redis again');
});

t.test("one caller past its share (RESPONSES_STORE_OWNER_MB) loses its own oldest responses, not another caller's: in each thread's memory", async (t) => {
  const quiet = { warn() {}, info() {} } as unknown as Logger;
  // A quarter of the store each: Alice alone writes four times what the store holds.
  const store = new ResponseStore({ maxBytes: 1 << 20, ownerMaxBytes: 1 << 18, ttlSeconds: 60, logger: quiet });
  t.teardown(() => store.close());
  const id = (who: string, i: number): string => `resp_${who}${String(i).padStart(31, '0')}`;
  const record = (owner: string, rid: string, size: number) => ({ owner, previous: null, chain: [], input: [{ role: 'user', content: 'x'.repeat(size) }], response: { id: rid, status: 'completed', output: [] } });
  for (let i = 0; i < 3; i++) store.put(id('b', i), record('bob', id('b', i), 1_000));
  store.put(id('a', 0), record('alice', id('a', 0), 50_000));
  for (let i = 1; i < 80; i++) {
    store.put(id('a', i), record('alice', id('a', i), 50_000));
    // The first turn of a conversation in use (read each turn, as a continuation does) is not among its oldest.
    t.ok(await store.get(id('a', 0), 'alice'), `alice's turn in use, after ${i} more`);
  }
  for (let i = 0; i < 3; i++) t.ok(await store.get(id('b', i), 'bob'), `bob's ${i} is still kept`);
  const alices = (await store.records(Array.from({ length: 80 }, (_, i) => id('a', i)), 'alice')).map((r) => r !== undefined);
  t.ok(alices[79] && alices[78], 'alice\'s newest are kept');
  t.notOk(alices[1], "alice's oldest unused one went");
  const kept = alices.filter(Boolean).length;
  t.ok(kept * 50_000 <= 1 << 18 && kept >= 4, `alice keeps about her share: ${kept} of 50 kB`);
  // One larger than a caller's share is not kept (it would push out all its others).
  store.put(id('a', 90), record('alice', id('a', 90), 300_000));
  t.equal(await store.get(id('a', 90), 'alice'), undefined);
  t.ok(await store.get(id('a', 79), 'alice'), 'and pushed none of hers out');
});

t.test('RESPONSES_STORE_OWNER_MB: a caller sending large requests keeps a quarter of the store, not the others\' conversations', async (t) => {
  const tb = await startFleetBroker(t, fleet, { INFER_ENABLED: 'false', AUTH_MODE: 'keys', RESPONSES_STORE_MB: '1', RESPONSES_STORE_OWNER_MB: '0.25' });
  const alice = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-alice', maxRetries: 0 });
  const bob = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: 'sk-bob', maxRetries: 0 });
  const his = await bob.responses.create({ model: 'g', input: 'mine' });
  const hers = [];
  for (let i = 0; i < 12; i++) hers.push(await alice.responses.create({ model: 'g', input: `${i}`.repeat(100_000) }));
  t.equal((await bob.responses.retrieve(his.id)).id, his.id, "bob's is kept");
  t.equal(((await alice.responses.retrieve(hers[0]!.id).catch((e: unknown) => e)) as any).status, 404, "alice's oldest went");
  t.equal((await alice.responses.retrieve(hers[11]!.id)).id, hers[11]!.id, 'her newest is kept');
});

t.test("one caller past its share writes no more to the shared Redis this window: another caller's are not evicted there; its own are kept in memory meanwhile", async (t) => {
  const redis = await startRedis(t);
  const rc = new Redis(redis.url);
  t.teardown(() => rc.disconnect());
  // A Redis for conversations alone, as advised: allkeys-lru, little room (1.5 MB past what it uses empty).
  const used = Number(/used_memory:(\d+)/.exec(await rc.info('memory'))![1]);
  await rc.config('SET', 'maxmemory', String(used + 1_500_000));
  await rc.config('SET', 'maxmemory-policy', 'allkeys-lru');
  const quiet = { warn() {}, info() {} } as unknown as Logger;
  // What the operator is told: each record kept out counted, the owner logged once per window.
  const warned: Record<string, unknown>[] = [];
  let over = 0;
  const told = { warn: (o: Record<string, unknown>) => warned.push(o), info() {} } as unknown as Logger;
  const a = new ResponseStore({ maxBytes: 64 << 20, ownerMaxBytes: 600_000, ttlSeconds: 60, logger: told, redisUrl: redis.url, overOwnerBudget: () => over++ });
  const b = new ResponseStore({ maxBytes: 64 << 20, ownerMaxBytes: 600_000, ttlSeconds: 60, logger: quiet, redisUrl: redis.url });
  t.teardown(() => (a.close(), b.close()));
  for (const s of [a, b]) {
    for (const until = Date.now() + 10_000; Date.now() < until; ) {
      if (await s.get('resp_none', 'anyone').then(() => true, () => false)) break;
      await new Promise((res) => setTimeout(res, 50));
    }
  }
  const id = (who: string, i: number): string => `resp_${who}${String(i).padStart(31, '0')}`;
  const record = (owner: string, rid: string, size: number) => ({ owner, previous: null, chain: [], input: [{ role: 'user', content: 'x'.repeat(size) }], response: { id: rid, status: 'completed', output: [] } });
  for (let i = 0; i < 3; i++) a.put(id('b', i), record('bob', id('b', i), 1_000));
  // Alice writes 6 MB, four times what Redis has room for.
  for (let i = 0; i < 40; i++) a.put(id('a', i), record('alice', id('a', i), 150_000));
  // Replies come in order: this one's follows every write's.
  await a.get('resp_none', 'anyone');
  for (let i = 0; i < 3; i++) t.ok(await b.get(id('b', i), 'bob'), `bob's ${i}: in Redis, read on another replica`);
  const inRedis = (await rc.keys('eb:resp:*')).length;
  t.equal(inRedis, 3 + 3, "bob's 3 and alice's first 3 (her 600 kB budget), nothing else");
  // Under her owner tag (her records' keys say it).
  const tag = (await rc.keys(`eb:resp:*:${id('a', 0)}`))[0]!.split(':')[2];
  const counter = `eb:resp-bytes:${tag}`;
  let written = 0;
  for (const k of await rc.keys(`eb:resp:${tag}:*`)) written += await rc.strlen(k);
  t.equal(Number(await rc.get(counter)), written, "alice's bytes written, counted");
  const window = await rc.pttl(counter);
  t.ok(window > 0 && window <= 60_000, `for the TTL (${window} ms left)`);
  t.ok(await b.get(id('a', 0), 'alice'), "alice's first ones: on every replica");
  t.equal(await b.get(id('a', 39), 'alice'), undefined, 'past her budget: not on another replica');
  t.ok(await a.get(id('a', 39), 'alice'), 'but on the one that made it, from its memory');
  t.equal(over, 37, 'each of the 37 kept out of Redis is counted');
  t.same(warned.filter((w) => w['owner'] !== undefined).map((w) => w['owner']), [tag], 'and her owner tag logged once');
  // The window over (here: its count gone), what she kept in memory is written when next read.
  await rc.del(counter);
  await a.get(id('a', 39), 'alice');
  await a.get('resp_none', 'anyone');
  t.ok(await b.get(id('a', 39), 'alice'), 'written once the budget allows');
});
