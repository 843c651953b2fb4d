// Non-streamed requests assembled from the upstream's stream (upstreamStreaming: always),
// against upstreams that do what the mock does not: one that cannot stream (answers a
// stream request with one JSON body, late), one whose stream says it failed.
import t from 'tap';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { startFleetBroker } from '../helpers/fleet.ts';
import { metricValue } from '../helpers/broker.ts';

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

// Cannot stream: a whole reply, whatever it was asked; at once the first time, then 400 ms later.
let jsonReplies = 0;
const jsonOnly = await serve((_req, res) => {
  setTimeout(() => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id: 'x', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'whole' }, finish_reason: 'stop' }], usage: { prompt_tokens: 2, completion_tokens: 1, total_tokens: 3 } }));
  }, jsonReplies++ === 0 ? 0 : 400);
});
// A stream that starts, then says it failed.
const failing = await serve((_req, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write(`data: ${JSON.stringify({ id: 'x', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { role: 'assistant', content: 'a' }, finish_reason: null }] })}\n\n`);
  res.end(`data: ${JSON.stringify({ error: { message: 'CUDA out of memory', type: 'server_error' } })}\n\n`);
});

const tb = await startFleetBroker(
  t,
  {
    modelGroups: {
      'json-only': { deployments: [{ id: 'json-1', provider: 'openai', url: jsonOnly.url, model: 'm', firstTokenTimeoutMs: 200 }] },
      failing: { deployments: [{ id: 'fail-1', provider: 'openai', url: failing.url, model: 'm' }] },
    },
  },
  { FRONT_THREADS: '0', INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false' },
);
const messages = [{ role: 'user', content: 'hi' }];
const post = (model: string) => fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, messages }) });

t.test('an upstream that answers a stream request with one JSON body: its later whole replies are timed as whole replies, not cut by the first-token limit', async (t) => {
  const first = await post('json-only');
  t.equal(first.status, 200);
  t.equal((jsonOnly.bodies[0] as { stream: boolean }).stream, true, 'asked as a stream');
  t.equal(((await first.json()) as { choices: { message: { content: string } }[] }).choices[0]!.message.content, 'whole', 'its JSON read as the whole reply');
  // 400 ms for its whole reply, past firstTokenTimeoutMs (200): a whole reply's time, not a first token's.
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
