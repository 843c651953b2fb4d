// A client that stops reading makes the broker stop reading the upstream (backpressure).
// That silence is the client's: it must not count as the upstream's idle time. Before, a
// pause longer than idleChunkTimeoutMs ended the stream with upstream_timeout and blamed
// a healthy deployment.
import t from 'tap';
import { connect } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createMockUpstream } from '../../src/mock-upstream/server.ts';
import { logLine, metricValue, startTestBroker } from '../helpers/broker.ts';

const mock = await createMockUpstream({ tokens: 150_000, tps: 0 });
const dir = mkdtempSync(join(tmpdir(), 'eb-slow-reader-'));
writeFileSync(join(dir, 'broker.yaml'), stringify({ modelGroups: { g: { deployments: [{ id: 'big-1', provider: 'openai', url: mock.url, model: 'm', idleChunkTimeoutMs: 300 }] } } }));
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false' });
t.teardown(async () => {
  await tb.close();
  await mock.close();
});

t.test('a client that pauses longer than idleChunkTimeoutMs still gets the whole stream', async (t) => {
  const port = Number(new URL(tb.url).port);
  const body = JSON.stringify({ model: 'g', stream: true, messages: [{ role: 'user', content: 'a long answer' }] });
  const socket = connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  socket.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  // Read the first bytes, then stop reading for well over the idle timeout.
  await new Promise((r) => socket.once('data', r));
  socket.pause();
  await new Promise((r) => setTimeout(r, 1200));
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  socket.resume();
  await new Promise((r) => socket.once('close', r));
  const text = Buffer.concat(chunks).toString('utf8');
  t.notMatch(text, /upstream_timeout/, 'no idle timeout blamed on the upstream');
  t.match(text, /data: \[DONE\]/, 'the stream ended cleanly');
  t.equal(await metricValue(tb.url, 'llm_upstream_timeouts_total', { deployment: 'big-1' }), 0);
});

t.test('a client that reads nothing for 10 s is cut by the front (uWS idle timeout) and counted as the broker cutting a slow client, not as the client leaving', async (t) => {
  const port = Number(new URL(tb.url).port);
  const body = JSON.stringify({ model: 'g', stream: true, messages: [{ role: 'user', content: 'a long answer' }] });
  const before = await metricValue(tb.url, 'http_streams_cut_total', { code: 'client_too_slow' });
  const socket = connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  socket.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  await new Promise((r) => socket.once('data', r));
  socket.pause();
  // Never read again: the front's buffers fill, the reply waits to drain, uWS closes it after
  // 10 s (checked on a 4 s tick: 8 to 14 s; later on a loaded machine). The client waits for
  // the broker's cut (a paused socket never sees the close), up to 40 s: one that closed first
  // would be its own close (the next test).
  const closed = new Promise((r) => socket.once('close', r));
  socket.on('error', () => undefined);
  let cut = before;
  for (const until = Date.now() + 40_000; cut === before && Date.now() < until; ) {
    await new Promise((r) => setTimeout(r, 250));
    cut = await metricValue(tb.url, 'http_streams_cut_total', { code: 'client_too_slow' });
  }
  socket.destroy();
  await closed;
  t.equal(cut, before + 1, 'http_streams_cut_total{code="client_too_slow"}');
});

t.test('a client that stops reading and then closes the stream itself is its own close (client_closed), not a slow client the broker cut', async (t) => {
  const port = Number(new URL(tb.url).port);
  const body = JSON.stringify({ model: 'g', stream: true, messages: [{ role: 'user', content: 'a long answer' }] });
  const before = await metricValue(tb.url, 'http_streams_cut_total', { code: 'client_too_slow' });
  const socket = connect(port, '127.0.0.1');
  await new Promise((r) => socket.once('connect', r));
  socket.write(`POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-request-id: paused-then-gone\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  await new Promise((r) => socket.once('data', r));
  socket.pause();
  socket.on('error', () => undefined);
  // Long enough for the reply to wait on the client's buffers, far short of the idle cut.
  await new Promise((r) => setTimeout(r, 1500));
  socket.destroy();
  const line = await logLine(tb, (l) => l.msg === 'request' && l.trace_id === 'paused-then-gone', 5000);
  t.match(line, { status: 200, aborted: true, error: 'client_closed' });
  t.equal(await metricValue(tb.url, 'http_streams_cut_total', { code: 'client_too_slow' }), before, 'not counted as the broker cutting it');
});
