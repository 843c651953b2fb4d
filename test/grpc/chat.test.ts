// ChatService over gRPC against the mock upstream, through both provider kinds.
import t from 'tap';
import { startMock } from '../helpers/fleet.ts';
import { clients, md, serverStream, startGrpcFleetBroker, textOf } from '../helpers/grpc.ts';
import { mockText } from '../../src/mock-upstream/server.ts';
import { logLine, metricValue } from '../helpers/broker.ts';

for (const threads of ['0', '2'])
t.test(`FRONT_THREADS=${threads}: Chat and Complete stream deltas then a final message, through openai and ollama deployments`, async (t) => {
  const m = await startMock(t, { tokens: 6 });
  const tb = await startGrpcFleetBroker(
    t,
    {
      modelGroups: {
        oa: { deployments: [{ id: 'oa-1', provider: 'openai', url: m.url, model: 'mock-model' }] },
        ol: { deployments: [{ id: 'ol-1', provider: 'ollama', url: m.url, model: 'mock-model' }] },
      },
    },
    { FRONT_THREADS: threads },
  );
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  for (const group of ['oa', 'ol']) {
    const traceparent = `00-${'ab'.repeat(16)}-${'cd'.repeat(8)}-01`;
    const r = await serverStream(c.chat, 'Chat', { model: group, messages: [{ role: 'user', content: 'hello' }] }, md({ 'x-request-id': `chat-${group}`, traceparent }));
    t.equal(r.status.code, 0, `${group}: OK`);
    t.equal(m.stats.lastHeaders?.traceparent, traceparent, `${group}: the caller's trace context goes upstream (the gRPC front records no spans)`);
    t.equal(r.metadata?.get('trace-id')[0], `chat-${group}`, `${group}: trace-id in the initial metadata`);
    t.equal(r.status.metadata.get('x-broker-deployment')[0], `${group}-1`, `${group}: deployment in the trailers`);
    const last = r.messages.at(-1);
    t.equal(last.event, 'final', `${group}: the last message is the final one`);
    t.equal(r.messages.filter((x) => x.event === 'final').length, 1, `${group}: exactly one final`);
    t.equal(last.final.finish_reason, 'stop');
    t.equal(last.final.usage.completion_tokens, 6);
    t.equal(last.final.usage.total_tokens, last.final.usage.prompt_tokens + 6);
    t.equal(r.messages[0].delta.role, 'assistant', `${group}: the first delta names the role`);
    t.equal(textOf(r.messages), mockText(6), `${group}: the deltas are the upstream text`);
    const p = await serverStream(c.chat, 'Complete', { model: group, prompt: 'once upon a time' });
    t.equal(p.status.code, 0, `${group}: Complete OK`);
    t.equal(textOf(p.messages), mockText(6), `${group}: Complete text`);
    t.equal(p.messages.at(-1).final.usage.completion_tokens, 6);
    // Fill-in-the-middle, as a code-completion client asks it: the suffix reaches either upstream.
    const fim = await serverStream(c.chat, 'Complete', { model: group, prompt: 'def add(a, b):\n    ', suffix: '\n    return c' });
    t.equal(fim.status.code, 0, `${group}: Complete with a suffix OK`);
    t.match(m.stats.lastBody, { prompt: 'def add(a, b):\n    ', suffix: '\n    return c' }, `${group}: the suffix went upstream (${m.stats.lastPath})`);
  }
  const line = await logLine(tb, (l) => l.trace_id === 'chat-oa' && l.method === 'gRPC');
  t.match(line, { route: '/edge_broker.v1.ChatService/Chat', status: 'OK', duration_ms: Number }, 'one access-log line per call');
});

t.test('HTTP and gRPC share one capacity: a gRPC waiter is woken by a slot freed on a data-plane thread', async (t) => {
  const m = await startMock(t, { tokens: 1000, tps: 50 });
  const tb = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'shared-1', provider: 'openai', url: m.url, model: 'mock-model', concurrencyLimit: 1 }] } } }, { FRONT_THREADS: '2' });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  // HTTP holds the one slot (on a data-plane thread).
  const ctl = new AbortController();
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', signal: ctl.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'g', stream: true, messages: [{ role: 'user', content: 'hi' }] }) });
  const reader = res.body!.getReader();
  await reader.read();
  // gRPC waits in the control plane's queue; the HTTP stream ends; the slot must reach it.
  const waiting = serverStream(c.chat, 'Chat', { model: 'g', messages: [{ role: 'user', content: 'hi' }] });
  for (let i = 0; i < 500 && (await metricValue(tb.url, 'broker_queue_depth')) !== 1; i++) await new Promise((r) => setTimeout(r, 10));
  t.equal(await metricValue(tb.url, 'broker_queue_depth'), 1, 'the gRPC request is queued');
  m.setKnobs({ tps: 0, tokens: 5 });
  ctl.abort();
  const r = await waiting;
  t.equal(r.status.code, 0, 'the queued gRPC stream ran');
  t.equal(textOf(r.messages), mockText(5));
});

t.test('a fallback reply names the group that answered in the trailers, as HTTP does in x-broker-fallback', async (t) => {
  const ok = await startMock(t, { tokens: 4 });
  const down = await startMock(t, { fail: 500 });
  const tb = await startGrpcFleetBroker(t, {
    modelGroups: {
      down: { deployments: [{ id: 'down-1', provider: 'openai', url: down.url, model: 'mock-model' }], fallbacks: ['up'] },
      up: { deployments: [{ id: 'up-1', provider: 'ollama', url: ok.url, model: 'mock-model' }] },
    },
  });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  const r = await serverStream(c.chat, 'Chat', { model: 'down', messages: [{ role: 'user', content: 'hello' }] });
  t.equal(r.status.code, 0);
  t.equal(textOf(r.messages), mockText(4));
  t.same(r.status.metadata.get('x-broker-fallback'), ['up']);
  t.same(r.status.metadata.get('x-broker-deployment'), ['up-1']);
  const direct = await serverStream(c.chat, 'Chat', { model: 'up', messages: [{ role: 'user', content: 'hello' }] });
  t.same(direct.status.metadata.get('x-broker-fallback'), [], 'no fallback, no trailer');
});

t.test("a key's quota in the trailers (x-ratelimit-*), as HTTP sends it in headers; the refusal carries it too", async (t) => {
  const m = await startMock(t, { tokens: 3 });
  const tb = await startGrpcFleetBroker(t, { apiKeys: { 'sk-rl': { rpm: 2 }, 'sk-many': { rpm: 100 } }, modelGroups: { up: { deployments: [{ id: 'up-1', provider: 'openai', url: m.url, model: 'mock-model' }] }, dead: { deployments: [{ id: 'dead-1', provider: 'openai', url: 'http://127.0.0.1:9', model: 'mock-model' }] } } }, { BROKER_FF_QUOTA_ENFORCEMENT: 'true' });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  const call = () => serverStream(c.chat, 'Chat', { model: 'up', messages: [{ role: 'user', content: 'hello' }] }, md({ authorization: 'Bearer sk-rl' }));
  const first = await call();
  t.equal(first.status.code, 0);
  t.same(first.status.metadata.get('x-ratelimit-limit-requests'), ['2']);
  t.same(first.status.metadata.get('x-ratelimit-remaining-requests'), ['1']);
  t.same(first.status.metadata.get('x-ratelimit-limit-tokens'), [], 'no tpm on the key');
  t.same((await call()).status.metadata.get('x-ratelimit-remaining-requests'), ['0']);
  const refused = await call();
  t.equal(refused.status.code, 8, 'RESOURCE_EXHAUSTED');
  t.same(refused.status.metadata.get('x-ratelimit-remaining-requests'), ['0']);
  t.match(String(refused.status.metadata.get('x-ratelimit-reset-requests')[0]), /^\d+(\.\d+)?s$/);
  const keyless = await serverStream(c.chat, 'Chat', { model: 'up', messages: [{ role: 'user', content: 'hello' }] });
  t.same(keyless.status.metadata.get('x-ratelimit-limit-requests'), [], 'a caller without a limited key: none');
  // Admitted (a request of the key spent), then failed upstream: the figures still say so.
  const failed = await serverStream(c.chat, 'Chat', { model: 'dead', messages: [{ role: 'user', content: 'hello' }] }, md({ authorization: 'Bearer sk-many' }));
  t.equal(failed.status.code, 14, 'UNAVAILABLE');
  t.same(failed.status.metadata.get('x-ratelimit-remaining-requests'), ['99']);
});

t.test('an OpenAI-compatible upstream that sends no usage: the final message counts the prompt by its estimate, as quotas and tracking do', async (t) => {
  const { createServer } = await import('node:http');
  // An older OpenAI-compatible server: it ignores stream_options.include_usage.
  const upstream = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const chunk = (delta: object, finish: string | null) => `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
      res.end(chunk({ role: 'assistant', content: 'a' }, null) + chunk({ content: 'b' }, null) + chunk({}, 'stop') + 'data: [DONE]\n\n');
    });
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  t.teardown(() => upstream.close());
  const url = `http://127.0.0.1:${(upstream.address() as { port: number }).port}`;
  const tb = await startGrpcFleetBroker(t, { modelGroups: { old: { deployments: [{ id: 'old-1', provider: 'openai', url, model: 'm' }] } } }, { FRONT_THREADS: '0' });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  const content = 'x'.repeat(400);
  const r = await serverStream(c.chat, 'Chat', { model: 'old', messages: [{ role: 'user', content }] });
  t.equal(r.status.code, 0);
  const usage = r.messages.at(-1).final.usage;
  t.equal(usage.completion_tokens, 2, 'one per token event');
  t.ok(usage.prompt_tokens >= 100, `the prompt estimated (400 characters / 4), not 0: ${usage.prompt_tokens}`);
  t.equal(usage.total_tokens, usage.prompt_tokens + 2);
});

t.test('an answer of tool calls over gRPC: finish_reason tool_calls from either provider (chat.proto carries no calls)', async (t) => {
  const m = await startMock(t, { tokens: 3, toolCalls: 2 });
  const tb = await startGrpcFleetBroker(t, { modelGroups: { oa: { deployments: [{ id: 'oa-1', provider: 'openai', url: m.url, model: 'mock-model' }] }, ol: { deployments: [{ id: 'ol-1', provider: 'ollama', url: m.url, model: 'mock-model' }] } } }, { FRONT_THREADS: '0' });
  const c = clients(tb.broker.grpcPort);
  t.teardown(() => c.close());
  for (const group of ['oa', 'ol']) {
    const r = await serverStream(c.chat, 'Chat', { model: group, messages: [{ role: 'user', content: 'weather?' }] });
    t.equal(r.status.code, 0, group);
    t.equal(r.messages.at(-1).final.finish_reason, 'tool_calls', `${group}: the finish says tool calls`);
  }
});
