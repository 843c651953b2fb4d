// Non-streamed requests assembled from the upstream's stream (upstreamStreaming: always; the
// default, auto, does it for Ollama deployments only),
// against upstreams that do what the mock does not: one that cannot stream (answers a
// stream request with one JSON body, late), one whose stream says it failed.
import t from 'tap';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { admin, metricValue } from '../helpers/broker.ts';
import { keyId } from '../../src/guard/api-key.ts';

async function serve(handler: Parameters<typeof createServer>[1]): Promise<{ url: string; bodies: unknown[] }> {
  const bodies: unknown[] = [];
  const server: Server = createServer((req, res) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', () => {
      bodies.push(JSON.parse(raw));
      handler!(req, res);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, bodies };
}

// Cannot stream: a whole reply, whatever it was asked; at once the first time, then 3 s later.
let jsonReplies = 0;
const jsonOnly = await serve((_req, res) => {
  setTimeout(() => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id: 'x', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'whole' }, finish_reason: 'stop' }], usage: { prompt_tokens: 2, completion_tokens: 1, total_tokens: 3 } }));
  }, jsonReplies++ === 0 ? 0 : 3000);
});
// A stream labelled as plain text (some proxies do): read as the stream it is.
const mislabelled = await serve((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' });
  const chunk = (delta: object, finish: string | null) => `data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
  res.end(chunk({ role: 'assistant', content: 'plain ' }, null) + chunk({ content: 'text' }, null) + chunk({}, 'stop') + 'data: [DONE]\n\n');
});
// A stream that starts, then says it failed.
const failing = await serve((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(`data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { role: 'assistant', content: 'a' }, finish_reason: null }] })}\n\n`);
  res.end(`data: ${JSON.stringify({ error: { message: 'CUDA out of memory', type: 'server_error' } })}\n\n`);
});

// A long answer, 20 tokens a second; the same after a 10 s wait for its first token.
const slow = await startMock(t, { tokens: 200, tps: 20 });
const cold = await startMock(t, { tokens: 200, tps: 20, ttftMs: 10_000 });
// One event that is not JSON after two tokens, in either wire format.
const garbage = await startMock(t, { tokens: 4, fail: 'garbage', failAfter: 2 });

const tb = await startFleetBroker(
  t,
  {
    modelGroups: {
      'json-only': { deployments: [{ id: 'json-1', provider: 'openai', url: jsonOnly.url, model: 'm', firstTokenTimeoutMs: 2000, upstreamStreaming: 'always' }] },
      failing: { deployments: [{ id: 'fail-1', provider: 'openai', url: failing.url, model: 'm', upstreamStreaming: 'always' }] },
      mislabelled: { deployments: [{ id: 'plain-1', provider: 'openai', url: mislabelled.url, model: 'm', upstreamStreaming: 'always' }] },
      'garbage-openai': { deployments: [{ id: 'garbage-1', provider: 'openai', url: garbage.url, model: 'm', upstreamStreaming: 'always' }] },
      'garbage-ollama': { deployments: [{ id: 'garbage-2', provider: 'ollama', url: garbage.url, model: 'm' }] }, // auto: Ollama's are assembled
      slow: { deployments: [{ id: 'slow-1', provider: 'openai', url: slow.url, model: 'm', upstreamStreaming: 'always' }] },
      cold: { deployments: [{ id: 'cold-1', provider: 'openai', url: cold.url, model: 'm', upstreamStreaming: 'always' }] },
    },
    apiKeys: { 'sk-slow': { tpm: 1_000_000 }, 'sk-cold': { tpm: 1_000_000 } },
  },
  { FRONT_THREADS: '0', INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false', BROKER_FF_QUOTA_ENFORCEMENT: 'true' },
);
const messages = [{ role: 'user', content: 'hi' }];
const post = (model: string) => fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, messages }) });

t.test('an upstream that answers a stream request with one JSON body: its later whole replies are timed as whole replies, not cut by the first-token limit', async (t) => {
  const first = await post('json-only');
  t.equal(first.status, 200);
  t.equal((jsonOnly.bodies[0] as { stream: boolean }).stream, true, 'asked as a stream');
  t.equal(((await first.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content, 'whole', 'its JSON read as the whole reply');
  // 3 s for its whole reply, past firstTokenTimeoutMs (2 s): a whole reply's time, not a first token's.
  const second = await post('json-only');
  t.equal(second.status, 200);
  t.equal(((await second.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content, 'whole');
});

t.test("an error event in an assembled stream is the upstream's error: 502, counted by class as a streamed one is", async (t) => {
  const res = await post('failing');
  t.equal(res.status, 502);
  t.match(((await res.json()) as { error: { message: string } }).error.message, /CUDA out of memory/);
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: 'fail-1', class: 'server_error' }), 1);
});

t.test('an event stream whose content type says otherwise is still assembled (the first byte tells a stream from one JSON body)', async (t) => {
  const res = await post('mislabelled');
  t.equal(res.status, 200);
  t.equal(((await res.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content, 'plain text');
});

t.test('an event that is not JSON in an assembled stream is dropped, counted and the reply still whole, as in a stream', async (t) => {
  for (const [model, deployment] of [['garbage-openai', 'garbage-1'], ['garbage-ollama', 'garbage-2']] as const) {
    const res = await post(model);
    t.equal(res.status, 200, model);
    t.equal(((await res.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content, 'tok0 tok1 tok2 tok3 ');
    t.equal(await metricValue(tb.url, 'llm_upstream_malformed_events_total', { deployment }), 1);
  }
});

t.test('a non-streamed request whose client leaves mid-assembly is charged the tokens generated so far, as a stream is', async (t) => {
  const charged = async (model: string, key: string): Promise<number> => {
    const ctl = new AbortController();
    const req = fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', signal: ctl.signal, headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` }, body: JSON.stringify({ model, messages }) }).catch(() => null);
    await new Promise((r) => setTimeout(r, 600));
    ctl.abort();
    await req;
    const subject = `key:${keyId(key)}`;
    let used = 0;
    for (let i = 0; i < 50 && used === 0; i++) {
      const q = (await (await fetch(`${tb.url}/api/industrial/quota`, { headers: admin })).json()) as { subjects: Record<string, { tpm?: number }> };
      used = q.subjects[subject]?.tpm ?? 0;
      if (used === 0) await new Promise((r) => setTimeout(r, 20));
    }
    return used;
  };
  const promptOnly = await charged('cold', 'sk-cold');
  t.ok(promptOnly > 0, `no token yet: the prompt's estimate (${promptOnly})`);
  const withTokens = await charged('slow', 'sk-slow');
  t.ok(withTokens > promptOnly, `tokens had come: charged ${withTokens}, more than the prompt's ${promptOnly}`);
});
