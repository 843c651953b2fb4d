// Request tracking against a real PostgreSQL (test/helpers/postgres.ts): the rows match
// the requests sent (counts, tokens, outcomes, labels, keys, cost) for inference and LLM,
// streamed and not, over HTTP and gRPC (the Open Inference Protocol on both), with
// FRONT_THREADS=0 and 2. The writer is told
// to flush only on a full batch or every minute, so nothing reaches the table before
// shutdown: the rows found after close() are the ones shutdown flushed.
import t from 'tap';
import pg from 'pg';
import OpenAI from 'openai';
import { Ollama } from 'ollama';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { metricValue, postJson, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { clients, freePort, md as metadata } from '../helpers/grpc.ts';
import { fashionPngs } from '../helpers/images.ts';
import { startPostgres } from '../helpers/postgres.ts';
import { keyId } from '../../src/guard/api-key.ts';
import { V2Client, lengthPrefixed } from '../helpers/v2-client.ts';
import { V2_PROTO } from '../../src/infer/v2/grpc.ts';

const pgc = await startPostgres(t);
const openaiUp = await startMock(t, { tokens: 4 });
const ollamaUp = await startMock(t, { tokens: 6 });
const [image] = await fashionPngs(1);
const KEY = 'tracked-key-0001';
const fleet = {
  modelGroups: {
    g: { deployments: [{ id: 'oa', provider: 'openai', url: openaiUp.url, model: 'm' }] },
    llama: { deployments: [{ id: 'ol', provider: 'ollama', url: ollamaUp.url, model: 'm' }] },
  },
  apiKeys: { [KEY]: { label: 'team-a' } },
  // oa priced per deployment; llama by its model group.
  prices: { currency: 'EUR', models: { oa: { inputPer1M: 1000, outputPer1M: 2000 }, llama: { inputPer1M: 10, outputPer1M: 30 } } },
};

interface Seen {
  id: string;
  api: string;
  prompt?: number;
  completion?: number;
}

async function rowsOf(url: string): Promise<Record<string, any>[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query('SELECT * FROM brk_tracking.completion_request ORDER BY created_at')).rows;
  } finally {
    await c.end();
  }
}

for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}: one row per request, flushed at shutdown`, async (t) => {
    const db = await pgc.createDatabase(`rows_${threads}`);
    const grpcPort = await freePort();
    const tb: TestBroker = await startFleetBroker(t, fleet, {
      FRONT_THREADS: threads,
      GRPC_PORT: String(grpcPort),
      DATABASE_URL: db,
      TRACKING_FLUSH_MS: '60000',
      TRACKING_BATCH_ROWS: '100000',
      BROKER_FF_OUTPUT_PREDICTION: 'true',
    });
    const seen: Seen[] = [];
    const id = (n: string): string => `${threads}-${n}`;
    const openai = new OpenAI({ baseURL: `${tb.url}/v1`, apiKey: KEY, maxRetries: 0 });

    // OpenAI chat, whole and streamed (with usage), and a completion.
    const whole = await openai.chat.completions.create({ model: 'g', messages: [{ role: 'user', content: 'hello there' }] }, { headers: { 'x-request-id': id('chat') } });
    seen.push({ id: id('chat'), api: 'openai.chat', prompt: whole.usage!.prompt_tokens, completion: whole.usage!.completion_tokens });
    const stream = await openai.chat.completions.create({ model: 'g', stream: true, stream_options: { include_usage: true }, messages: [{ role: 'user', content: 'stream it' }] }, { headers: { 'x-request-id': id('chat-stream') } });
    let usage: OpenAI.CompletionUsage | undefined;
    for await (const c of stream) if (c.usage) usage = c.usage;
    seen.push({ id: id('chat-stream'), api: 'openai.chat', prompt: usage!.prompt_tokens, completion: usage!.completion_tokens });
    const comp = await openai.completions.create({ model: 'g', prompt: 'complete me' }, { headers: { 'x-request-id': id('completion') } });
    seen.push({ id: id('completion'), api: 'openai.completion', prompt: comp.usage!.prompt_tokens, completion: comp.usage!.completion_tokens });

    // Ollama chat streamed (the key's label wins over the header's), generate whole.
    const ollama = new Ollama({ host: tb.url, headers: { 'x-api-key': KEY, 'x-broker-label': 'ollama-jobs', 'x-request-id': id('ollama') } });
    let last: { prompt_eval_count: number; eval_count: number } | undefined;
    for await (const part of await ollama.chat({ model: 'llama', stream: true, messages: [{ role: 'user', content: 'hi' }] })) if (part.done) last = part;
    seen.push({ id: id('ollama'), api: 'ollama.chat', prompt: last!.prompt_eval_count, completion: last!.eval_count });
    const gen = await new Ollama({ host: tb.url, headers: { 'x-request-id': id('generate') } }).generate({ model: 'llama', prompt: 'go', stream: false });
    seen.push({ id: id('generate'), api: 'ollama.generate', prompt: gen.prompt_eval_count, completion: gen.eval_count });

    // Refused: unknown model (404) and a bad body (400).
    const missing = await postJson(`${tb.url}/v1/chat/completions`, { model: 'nope', messages: [{ role: 'user', content: 'x' }] }, { 'x-request-id': id('missing') });
    t.equal(missing.status, 404);
    const bad = await postJson(`${tb.url}/v1/chat/completions`, { model: 'g', messages: 'not a list' }, { 'x-request-id': id('bad') });
    t.equal(bad.status, 400);
    // Ollama's own alias for the group (what its clients send by default): priced as the group.
    t.equal((await postJson(`${tb.url}/api/chat`, { model: 'llama:latest', stream: false, messages: [{ role: 'user', content: 'hi' }] }, { 'x-request-id': id('alias') })).status, 200);
    // Ollama's "load the model" (an embed without input), answered without an upstream call.
    t.equal((await postJson(`${tb.url}/api/embed`, { model: 'llama' }, { 'x-request-id': id('load') })).status, 200);

    // Inference over HTTP; a request id with a backslash and a tab-free oddity survives COPY's escaping.
    const inf = await postJson(`${tb.url}/v1/infer`, { image_b64: image!.b64 }, { 'x-request-id': id('infer\\x'), 'x-api-key': KEY });
    t.equal(inf.status, 200);

    // Open Inference Protocol over REST (served by the control plane; threaded, a forwarded request).
    const v2 = await new V2Client(tb.url, 'json').infer(inf.body.model, { inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], data: [Buffer.from(image!.b64, 'base64')] }], headers: { 'x-request-id': id('oip') } });
    t.equal(v2.status, 200);
    // An unknown model: its row carries the name the request gave (as on gRPC; it was NULL over REST).
    const v2unknown = await new V2Client(tb.url, 'json').infer('no-such-model', { inputs: [{ name: 'input', datatype: 'BYTES', shape: [1], data: [Buffer.from(image!.b64, 'base64')] }], headers: { 'x-request-id': id('oip-unknown') } });
    t.equal(v2unknown.status, 404);

    // gRPC: a Chat stream and a unary Infer.
    const c = clients(grpcPort);
    t.teardown(() => c.close());
    const md = new grpc.Metadata();
    md.set('x-request-id', id('grpc-chat'));
    md.set('x-api-key', KEY);
    await new Promise<void>((resolve, reject) => {
      const call = c.chat.Chat({ model: 'g', messages: [{ role: 'user', content: 'grpc hi' }] }, md);
      call.on('data', () => undefined);
      call.on('error', reject);
      call.on('end', resolve);
    });
    const md2 = new grpc.Metadata();
    md2.set('x-request-id', id('grpc-infer'));
    md2.set('x-api-key', KEY);
    const reply: any = await new Promise((resolve, reject) => c.inference.Infer({ image: Buffer.from(image!.b64, 'base64') }, md2, (err: Error | null, r: unknown) => (err ? reject(err) : resolve(r))));
    t.ok(reply.model);

    // KServe v2 over gRPC (ModelInfer, a client built from the proto as published): an image as raw BYTES, and an unknown model.
    const v2pkg = grpc.loadPackageDefinition(protoLoader.loadSync(V2_PROTO, { keepCase: true, longs: Number, defaults: true, oneofs: true })) as any;
    const kserve = new v2pkg.inference.GRPCInferenceService(`127.0.0.1:${grpcPort}`, grpc.credentials.createInsecure());
    t.teardown(() => kserve.close());
    const modelInfer = (req: object, rid: string): Promise<{ err: grpc.ServiceError | null; res: any }> =>
      new Promise((resolve) => kserve.ModelInfer(req, metadata({ 'x-request-id': rid }), (err: grpc.ServiceError | null, res: unknown) => resolve({ err, res })));
    const png = Buffer.from(image!.b64, 'base64');
    const kOk = await modelInfer({ model_name: inf.body.model, inputs: [{ name: 'input', datatype: 'BYTES', shape: [1] }], raw_input_contents: [lengthPrefixed([png])] }, id('kserve'));
    t.equal(kOk.err, null, 'ModelInfer served');
    t.equal(kOk.res?.model_name, inf.body.model);
    const kMissing = await modelInfer({ model_name: 'nope', inputs: [{ name: 'input', datatype: 'BYTES', shape: [1] }], raw_input_contents: [lengthPrefixed([png])] }, id('kserve-missing'));
    t.equal(kMissing.err?.code, grpc.status.NOT_FOUND, 'an unknown model is NOT_FOUND');
    t.same(kMissing.err?.metadata.get('trace-id'), [id('kserve-missing')], 'its trailers carry the trace id');

    // Nothing written yet: the batch is not full and the timer is a minute away.
    t.equal((await rowsOf(db)).length, 0, 'no row reaches the table before shutdown (flush by size or time only)');
    await tb.close();
    const rows = await rowsOf(db);
    const byId = new Map(rows.map((r) => [r.broker_request_id, r]));
    t.equal(rows.length, 16, 'one row per request, every one flushed at shutdown');
    t.match(byId.get(id('oip-unknown')), { api: 'oip.infer', status: 404, model: 'no-such-model' });

    for (const s of seen) {
      const r = byId.get(s.id);
      t.ok(r, `row for ${s.id}`);
      if (r === undefined) continue;
      t.equal(r.api, s.api, `${s.id}: api`);
      t.equal(r.outcome, 'ok', `${s.id}: outcome`);
      t.equal(r.status, 200, `${s.id}: status`);
      t.equal(r.protocol, 'http');
      t.equal(r.prompt_tokens, s.prompt, `${s.id}: prompt tokens as the client saw them`);
      t.equal(r.completion_tokens, s.completion, `${s.id}: completion tokens as the client saw them`);
      t.ok(r.total_ms > 0 && r.finished_at >= r.created_at, `${s.id}: timing`);
      t.equal(r.retries, 0);
      t.ok(r.predicted_tokens > 0, `${s.id}: predicted output tokens (prediction on)`);
    }
    const chat = byId.get(id('chat'))!;
    t.match(chat, { model: 'g', deployment: 'oa', api_key_id: keyId(KEY), semantic_label: 'team-a', priority: 5, route: '/v1/chat/completions' });
    t.ok(chat.ttft_ms >= 0 && chat.upstream_ms >= 0 && chat.queue_ms >= 0, 'ttft, upstream and queue ms');
    t.equal(chat.cost, (chat.prompt_tokens * 1000 + chat.completion_tokens * 2000) / 1e6, 'cost from the deployment price');
    const ol = byId.get(id('ollama'))!;
    t.match(ol, { model: 'llama', deployment: 'ol', semantic_label: 'team-a', api_key_id: keyId(KEY) }, "a known key's label wins over the header");
    t.equal(ol.cost, (ol.prompt_tokens * 10 + ol.completion_tokens * 30) / 1e6, 'cost from the model group price');
    const gen2 = byId.get(id('generate'))!;
    t.equal(gen2.api_key_id, null, 'no key, no key id');
    t.equal(gen2.semantic_label, 'ollama:completion', 'a keyless request has its API as label');
    t.match(byId.get(id('missing')), { outcome: 'model_not_found', status: 404, error_code: 'model_not_found', model: 'nope', prompt_tokens: null, cost: null });
    t.match(byId.get(id('bad')), { outcome: 'invalid_request', status: 400, error_code: 'invalid_request' });
    const alias = byId.get(id('alias'))!;
    t.equal(alias.model, 'llama', 'an alias is recorded under its group');
    t.equal(alias.cost, (alias.prompt_tokens * 10 + alias.completion_tokens * 30) / 1e6, "and priced as the group: no spend outside the budgets");
    t.match(byId.get(id('load')), { api: 'ollama.embed', outcome: 'ok', status: 200, model: 'llama', deployment: null }, 'a load answered here names its group');
    const infer = byId.get(id('infer\\x'));
    t.ok(infer, 'the backslash survived COPY');
    t.match(infer, { api: 'infer', outcome: 'ok', status: 200, arm: 'A', model: inf.body.model, route: '/v1/infer', cost: null, api_key_id: keyId(KEY) }, 'an inference names its key id too');
    t.ok(infer?.queue_ms >= 0);
    const gchat = byId.get(id('grpc-chat'))!;
    t.match(gchat, { api: 'grpc.chat', protocol: 'grpc', status: 0, outcome: 'ok', model: 'g', deployment: 'oa', completion_tokens: 4, api_key_id: keyId(KEY), semantic_label: 'team-a' });
    t.ok(gchat.prompt_tokens > 0);
    t.match(byId.get(id('grpc-infer')), { api: 'grpc.infer', protocol: 'grpc', status: 0, outcome: 'ok', model: reply.model, arm: reply.arm, api_key_id: keyId(KEY) });
    const oip = byId.get(id('oip'));
    t.match(oip, { api: 'oip.infer', protocol: 'http', status: 200, outcome: 'ok', model: inf.body.model, arm: 'A', route: '/v2/models/:model/infer' });
    t.ok(typeof oip?.queue_ms === 'number' && oip.queue_ms >= 0, 'oip: queue ms');
    const kRow = byId.get(id('kserve'));
    t.match(kRow, { api: 'grpc.oip.infer', protocol: 'grpc', status: 0, outcome: 'ok', error_code: null, model: inf.body.model, arm: 'A', route: '/inference.GRPCInferenceService/ModelInfer', cost: null });
    t.ok(typeof kRow?.queue_ms === 'number' && kRow.queue_ms >= 0 && kRow.total_ms > 0, 'ModelInfer: queue and total ms');
    t.match(byId.get(id('kserve-missing')), { api: 'grpc.oip.infer', protocol: 'grpc', status: grpc.status.NOT_FOUND, outcome: 'model_not_found', error_code: 'model_not_found', model: 'nope', arm: null });
    t.ok(rows.every((r) => r.replica === tb.broker.config.replicaId), 'each row names its replica');
  });
}

t.test('a stream whose upstream sends its headers before its first token: upstream_ms within total_ms', async (t) => {
  // Its wait for the first token was counted twice (written → first byte, and again by the pump from the headers on).
  const slowUp = await startMock(t, { tokens: 3, ttftMs: 150 });
  const db = await pgc.createDatabase('upstream_ms');
  const tb = await startFleetBroker(t, { modelGroups: { s: { deployments: [{ id: 'sd', provider: 'openai', url: slowUp.url, model: 'm' }] } } }, { FRONT_THREADS: '0', INFER_ENABLED: 'false', DATABASE_URL: db });
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': 'slow-stream' }, body: JSON.stringify({ model: 's', stream: true, messages: [{ role: 'user', content: 'hi' }] }) });
  t.equal(res.status, 200);
  await res.text();
  await tb.close();
  const [row] = await rowsOf(db);
  t.match(row, { broker_request_id: 'slow-stream', outcome: 'ok', completion_tokens: 3 });
  t.ok(row!.ttft_ms > 0 && row!.upstream_ms >= row!.ttft_ms * 0.5, 'the wait for the first token is upstream time');
  t.ok(row!.upstream_ms <= row!.total_ms, `upstream_ms (${row!.upstream_ms}) is part of total_ms (${row!.total_ms})`);
});

t.test('a stream the client aborts before the upstream sent its usage: the prompt is counted by its estimate, not as 0', async (t) => {
  // The upstream read the whole prompt before the client left: quotas, budgets and the row
  // count admission's estimate of it (4 characters a token), as they would have reserved.
  const slowUp = await startMock(t, { tokens: 200, tps: 20 });
  const db = await pgc.createDatabase('aborted_prompt');
  const tb = await startFleetBroker(t, { modelGroups: { s: { deployments: [{ id: 'sd', provider: 'openai', url: slowUp.url, model: 'm' }] } } }, { FRONT_THREADS: '2', INFER_ENABLED: 'false', DATABASE_URL: db });
  const ac = new AbortController();
  const res = await fetch(`${tb.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-request-id': 'aborted-stream' },
    body: JSON.stringify({ model: 's', stream: true, messages: [{ role: 'system', content: 's'.repeat(40) }, { role: 'user', content: 'u'.repeat(400) }] }),
    signal: ac.signal,
  });
  t.equal(res.status, 200);
  const reader = res.body!.getReader();
  let text = '';
  while (!text.includes('"content"')) text += Buffer.from((await reader.read()).value!).toString();
  ac.abort();
  await reader.cancel().catch(() => undefined);
  // The broker notices the close and ends the request before shutdown flushes its row.
  for (let i = 0; i < 100 && slowUp.stats.open > 0; i++) await new Promise((r) => setTimeout(r, 20));
  await tb.close();
  const [row] = await rowsOf(db);
  t.match(row, { broker_request_id: 'aborted-stream', outcome: 'aborted' });
  t.equal(row!.prompt_tokens, Math.ceil(440 / 4), 'the prompt by its estimate');
  t.ok(row!.completion_tokens >= 1 && row!.completion_tokens < 200, `the tokens streamed before the abort (${row!.completion_tokens})`);
});

t.test('rows of a whole reply the client aborts, of /api/embed, and of a group whose deployments all timed out', async (t) => {
  const slowUp = await startMock(t, { tokens: 3, ttftMs: 3_000 });
  const up = await startMock(t, { tokens: 3 });
  const db = await pgc.createDatabase('aborted_whole');
  const fleet = {
    modelGroups: {
      s: { deployments: [{ id: 'sd', provider: 'openai', url: slowUp.url, model: 'm' }] },
      e: { deployments: [{ id: 'ed', provider: 'ollama', url: up.url, model: 'm' }] },
      t: { deployments: [{ id: 'td', provider: 'openai', url: slowUp.url, model: 'm', firstTokenTimeoutMs: 100 }] },
    },
  };
  const tb = await startFleetBroker(t, fleet, { FRONT_THREADS: '2', INFER_ENABLED: 'false', DATABASE_URL: db });
  const post = (path: string, id: string, body: unknown, signal?: AbortSignal) => fetch(`${tb.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': id }, body: JSON.stringify(body), signal });
  // Aborted while the upstream works on a whole reply: its prompt was sent, and is charged.
  const ac = new AbortController();
  const pending = post('/v1/chat/completions', 'aborted-whole', { model: 's', messages: [{ role: 'user', content: 'u'.repeat(400) }] }, ac.signal).catch(() => undefined);
  for (let i = 0; i < 200 && slowUp.stats.open === 0; i++) await new Promise((r) => setTimeout(r, 10));
  ac.abort();
  await pending;
  for (let i = 0; i < 200 && slowUp.stats.open > 0; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal((await post('/api/embed', 'embed', { model: 'e', input: ['a', 'b'] })).status, 200);
  const timedOut = await post('/v1/chat/completions', 'timed-out', { model: 't', stream: true, messages: [{ role: 'user', content: 'hi' }] });
  t.equal(timedOut.status, 504);
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 't', reason: 'timeout' }), 1, 'counted as a timeout, not no_deployment');
  await tb.close();
  const byId = new Map((await rowsOf(db)).map((r) => [r.broker_request_id, r]));
  t.match(byId.get('aborted-whole'), { outcome: 'aborted', prompt_tokens: 100 }, 'the prompt by its estimate, not 0');
  t.match(byId.get('embed'), { api: 'ollama.embed', outcome: 'ok' });
  t.match(byId.get('timed-out'), { outcome: 'timeout', status: 504, error_code: 'upstream_timeout' });
});
