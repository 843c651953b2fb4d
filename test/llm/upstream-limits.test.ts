// An upstream cannot make the broker buffer what it likes: a non-streamed reply past
// UPSTREAM_MAX_BODY_BYTES answers 502, and an error body is read up to 64 KB only.
import t from 'tap';
import { createServer, type Server } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { startTestBroker, postJson, admin } from '../helpers/broker.ts';

const MiB = 1024 * 1024;
let sent = 0;
// /big/...: a 200 whose JSON body is 3 MiB; /bad/...: a 400 whose JSON error is 2 MiB.
// /endless/...: a stream whose second event never ends: 64 MiB without a newline, unless cut.
let endlessSent = 0;
let endlessCut = false;
const upstream: Server = createServer((req, res) => {
  req.resume();
  req.on('end', async () => {
    if (req.url!.startsWith('/endless/')) {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write('data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n');
      res.write('data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"');
      res.on('close', () => (endlessCut = !res.writableFinished));
      const filler = 'x'.repeat(MiB);
      for (let i = 0; i < 64 && !res.destroyed; i++) {
        endlessSent += MiB;
        if (!res.write(filler)) await new Promise((r) => { res.once('drain', r); res.once('close', r); });
      }
      if (!res.destroyed) res.end('"}}]}\n\ndata: [DONE]\n\n');
      return;
    }
    const embed = /^\/embed(\d+)\//.exec(req.url!);
    if (embed !== null) {
      // An embeddings reply of about N MiB: one vector of 0.125s (6 bytes each).
      const n = Math.floor((Number(embed[1]) * MiB) / 6);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(`{"object":"list","data":[{"object":"embedding","index":0,"embedding":[${Array(n).fill('0.125').join(',')}]}],"model":"m","usage":{"prompt_tokens":1,"total_tokens":1}}`);
      return;
    }
    if (req.url!.startsWith('/big/')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      const filler = 'x'.repeat(MiB);
      res.write('{"id":"c","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"');
      for (let i = 0; i < 3; i++) res.write(filler);
      res.end('"},"finish_reason":"stop"}]}');
      sent += 3 * MiB;
    } else {
      // An error object whose message is 2 MiB: passed on as is, it would reach the client whole.
      res.writeHead(400, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'E'.repeat(2 * MiB), type: 'invalid_request_error' } }));
      sent += 2 * MiB;
    }
  });
});
await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
t.teardown(() => new Promise<void>((r) => upstream.close(() => r())));
const base = `http://127.0.0.1:${(upstream.address() as { port: number }).port}`;

const dir = mkdtempSync(join(tmpdir(), 'eb-limits-'));
writeFileSync(
  join(dir, 'broker.yaml'),
  stringify({
    modelGroups: {
      big: { deployments: [{ id: 'big-1', provider: 'openai', url: `${base}/big`, model: 'm' }] },
      bad: { deployments: [{ id: 'bad-1', provider: 'openai', url: `${base}/bad`, model: 'm' }] },
      endless: { deployments: [{ id: 'endless-1', provider: 'openai', url: `${base}/endless`, model: 'm' }] },
      embed3: { deployments: [{ id: 'embed3-1', provider: 'openai', url: `${base}/embed3`, model: 'm' }] },
      embed5: { deployments: [{ id: 'embed5-1', provider: 'openai', url: `${base}/embed5`, model: 'm' }] },
    },
  }),
);
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), UPSTREAM_MAX_BODY_BYTES: String(MiB), UPSTREAM_MAX_EMBED_BYTES: String(4 * MiB), INFER_ENABLED: 'false', BROKER_FF_QUOTA_ENFORCEMENT: 'true' });
t.teardown(() => tb.close());
const chat = (model: string) => postJson(`${tb.url}/v1/chat/completions`, { model, messages: [{ role: 'user', content: 'hi' }] });

t.test('a reply past UPSTREAM_MAX_BODY_BYTES: 502 naming the limit', async (t) => {
  const res = await chat('big');
  t.equal(res.status, 502);
  t.equal(res.body.error.code, 'upstream_error');
  t.match(res.body.error.message, /UPSTREAM_MAX_BODY_BYTES/);
  t.ok(sent >= 3 * MiB, 'the upstream did send it');
  // Past the breaker's failureThreshold (3): a reply too big for the broker says nothing of the
  // server's health, so the deployment stays open to everyone.
  for (let i = 0; i < 4; i++) t.equal((await chat('big')).status, 502, `again (${i + 1})`);
  const state = await (await fetch(`${tb.url}/api/orchestrator/circuit-breakers`, { headers: admin })).json();
  t.notMatch(JSON.stringify(state), /"state":"open"/, 'no breaker opened');
  t.equal((await chat('big')).status, 502, 'still tried, not 503 upstream_unavailable');
  // Nor free: the prompt the upstream read is charged to the deployment's window, as a cut stream's is.
  const put = await fetch(`${tb.url}/api/industrial/quota/deployment:big-1`, { method: 'PUT', headers: { ...admin, 'content-type': 'application/json' }, body: JSON.stringify({ tpm: 1_000_000 }) });
  t.equal(put.status, 200);
  t.equal((await chat('big')).status, 502);
  const quota = (await (await fetch(`${tb.url}/api/industrial/quota`, { headers: admin })).json()) as { subjects: Record<string, { tpm: number }> };
  t.ok(quota.subjects['deployment:big-1'].tpm > 0, `tokens charged: ${JSON.stringify(quota.subjects['deployment:big-1'])}`);
});

t.test('an embeddings reply has its own, larger limit: UPSTREAM_MAX_EMBED_BYTES', async (t) => {
  const embed = (model: string) => postJson(`${tb.url}/v1/embeddings`, { model, input: 'hi', encoding_format: 'float' });
  // A batch of vectors is far larger than any text reply: 3 MiB passes where a 1 MiB chat reply may not.
  const ok = await embed('embed3');
  t.equal(ok.status, 200);
  t.ok(ok.body.data[0].embedding.length > 500_000, `the whole vector (${ok.body.data[0].embedding.length} values)`);
  const big = await embed('embed5');
  t.equal(big.status, 502);
  t.equal(big.body.error.code, 'upstream_error');
  t.match(big.body.error.message, /UPSTREAM_MAX_EMBED_BYTES \(4194304 bytes\): send fewer inputs per request/);
});

t.test('a huge upstream error body reaches the client cut, not whole', async (t) => {
  const res = await chat('bad');
  t.equal(res.status, 400, "the upstream's status is kept");
  t.ok(JSON.stringify(res.body).length < 70 * 1024, `the error the client gets is small (${JSON.stringify(res.body).length} bytes)`);
});

t.test('the broker keeps serving', async (t) => {
  t.equal((await fetch(`${tb.url}/healthz`)).status, 200);
});

t.test('a streamed event that never ends: cut past 16 MiB with an error event, the upstream connection closed', async (t) => {
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'endless', stream: true, messages: [{ role: 'user', content: 'hi' }] }) });
  t.equal(res.status, 200, 'the first event was sent');
  const text = await res.text();
  t.match(text, /"content":"Hi"/);
  t.match(text, /upstream_error/, 'the stream ends with the error event');
  t.match(text, /more than 16777216 bytes without its end/);
  t.notMatch(text, /xxxxxxxx/, 'none of the unfinished event reaches the client');
  for (let i = 0; i < 200 && !endlessCut; i++) await new Promise((r) => setTimeout(r, 10));
  t.ok(endlessCut, 'the broker closed the upstream connection');
  t.ok(endlessSent < 64 * MiB, `the upstream did not get to send it all (${endlessSent / MiB} MiB)`);
});
