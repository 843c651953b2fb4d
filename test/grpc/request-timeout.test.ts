// What one gRPC client may hold open on the broker: a unary or server-streaming call whose
// request never arrives whole ends after GRPC_REQUEST_TIMEOUT_MS (grpc-js ran no handler and
// held it for good: 30,000 such calls from one client, each answered keepalive pings); a
// connection advertises GRPC_MAX_CONCURRENT_STREAMS (grpc-js: 2^32-1); Health/Watch streams
// are capped (60,000 took 400 MB); and every call has its access-log line, health checks and
// a call refused for a second message included.
import t from 'tap';
import { connect, constants, type ClientHttp2Session } from 'node:http2';
import { startGrpcFleetBroker, clients, serverStream, textOf, unary } from '../helpers/grpc.ts';
import { startMock } from '../helpers/fleet.ts';
import { metricValue } from '../helpers/broker.ts';

const m = await startMock(t);
const tb = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: m.url, model: 'm' }] } } }, {
  GRPC_REQUEST_TIMEOUT_MS: '400',
  GRPC_MAX_CONCURRENT_STREAMS: '7',
  GRPC_MAX_HEALTH_WATCHERS: '2',
});
const port = tb.broker.grpcPort;
const CHECK = '/grpc.health.v1.Health/Check';
const WATCH = '/grpc.health.v1.Health/Watch';
const CHAT = '/edge_broker.v1.ChatService/Chat';

function session(t: { teardown(fn: () => unknown): void }): Promise<ClientHttp2Session> {
  return new Promise((resolve, reject) => {
    const s = connect(`http://127.0.0.1:${port}`);
    s.once('remoteSettings', () => resolve(s));
    s.once('error', reject);
    t.teardown(() => s.destroy());
  });
}

/** A length-prefixed gRPC message (uncompressed). */
function frame(message: Buffer): Buffer {
  const head = Buffer.alloc(5);
  head.writeUInt32BE(message.length, 1);
  return Buffer.concat([head, message]);
}

/** protobuf: field 1, a string (Health's CheckRequest.service, ChatRequest.model). */
const stringField1 = (s: string): Buffer => Buffer.concat([Buffer.from([0x0a, Buffer.byteLength(s)]), Buffer.from(s)]);

interface Ended {
  status: string | undefined;
  code: string | undefined;
  message: string | undefined;
  requestId: string | undefined;
}

/** Opens a call, writes `body` (leaving the stream open unless `end`), and resolves with its trailers. */
function call(s: ClientHttp2Session, path: string, body: Buffer, end: boolean, headers: Record<string, string> = {}): Promise<Ended> {
  return new Promise((resolve, reject) => {
    const st = s.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    st.on('error', reject);
    st.resume();
    let trailers: Record<string, unknown> = {};
    st.on('response', (h) => {
      // Trailers-only: the status comes with the headers.
      if (h['grpc-status'] !== undefined) trailers = h;
    });
    st.on('trailers', (h) => (trailers = h));
    st.on('close', () => resolve({ status: trailers['grpc-status'] as string | undefined, code: trailers['x-broker-error-code'] as string | undefined, message: trailers['grpc-message'] as string | undefined, requestId: trailers['trace-id'] as string | undefined }));
    if (end) st.end(body);
    else st.write(body);
  });
}

const accessLines = (route: string) => tb.logs.filter((l) => l['method'] === 'gRPC' && l['route'] === route);

t.test('a request message cut short, or whole but never ended: DEADLINE_EXCEEDED request_timeout, logged; the broker serves on', async (t) => {
  const s = await session(t);
  const before = accessLines(CHAT).length;
  const whole = frame(stringField1('g'));
  const started = Date.now();
  const [cut, open] = await Promise.all([
    // A header announcing 100 bytes, then 3 of them.
    call(s, CHAT, Buffer.concat([Buffer.from([0, 0, 0, 0, 100]), Buffer.from('abc')]), false, { 'x-request-id': 'cut-short-1' }),
    // The whole message, without the end of the stream: grpc-js waits for it before the handler.
    call(s, CHAT, whole, false),
  ]);
  for (const [name, r] of [['cut short', cut], ['never ended', open]] as const) {
    t.equal(r.status, '4', `${name}: DEADLINE_EXCEEDED`);
    t.equal(r.code, 'request_timeout', `${name}: the broker's code`);
    t.match(r.message ?? '', /GRPC_REQUEST_TIMEOUT_MS/, `${name}: the message names the setting`);
  }
  t.equal(cut.requestId, 'cut-short-1', 'the trailers carry the request id');
  t.ok(Date.now() - started < 30_000, 'ended by the broker, not by the test');
  const lines = accessLines(CHAT).slice(before);
  t.equal(lines.length, 2, 'one access line each');
  t.same(lines.map((l) => l['status']), ['DeadlineExceeded', 'DeadlineExceeded']);
  t.same(lines.map((l) => l['error']), ['request_timeout', 'request_timeout']);
  t.equal(await metricValue(tb.url, 'grpc_server_handled_total', { grpc_method: 'Chat', grpc_code: 'DeadlineExceeded' }), 2);

  // A whole call is still served.
  const c = clients(port);
  t.teardown(() => c.close());
  const served = await serverStream(c.chat, 'Chat', { model: 'g', messages: [{ role: 'user', content: 'hi' }] });
  t.equal(served.status.code, 0, 'a whole request is answered OK');
  t.ok(textOf(served.messages).length > 0, 'with its text');
});

t.test('a request that arrives whole in time is not cut by the timer later', async (t) => {
  const c = clients(port);
  t.teardown(() => c.close());
  const r = await unary(c.health, 'Check', { service: '' });
  t.equal(r.error, null);
  await new Promise((res) => setTimeout(res, 700));
  // A server stream kept open past the timeout by the server (Watch) is not the request's wait.
  const s = await session(t);
  const st = s.request({ ':method': 'POST', ':path': WATCH, 'content-type': 'application/grpc', te: 'trailers' });
  st.end(frame(stringField1('')));
  let data = 0;
  st.on('data', (d: Buffer) => (data += d.length));
  await new Promise((res) => setTimeout(res, 800));
  t.ok(data > 0, 'the Watch answered');
  t.equal(st.closed, false, 'and is still open past GRPC_REQUEST_TIMEOUT_MS');
  st.close(constants.NGHTTP2_CANCEL);
});

t.test('a second request message on a unary call: UNIMPLEMENTED, and an access line', async (t) => {
  const s = await session(t);
  const before = accessLines(CHAT).length;
  const r = await call(s, CHAT, Buffer.concat([frame(stringField1('g')), frame(stringField1('g'))]), true, { 'x-request-id': 'two-messages-1' });
  t.equal(r.status, '12', 'UNIMPLEMENTED');
  await new Promise((res) => setTimeout(res, 100));
  const lines = accessLines(CHAT).slice(before);
  t.equal(lines.length, 1, 'one access line');
  t.equal(lines[0]?.['trace_id'], 'two-messages-1');
  t.equal(lines[0]?.['status'], 'Unimplemented');
});

t.test('health checks write their access line', async (t) => {
  const c = clients(port);
  t.teardown(() => c.close());
  const before = accessLines(CHECK).length;
  for (const service of ['', 'no.such.Service']) await unary(c.health, 'Check', { service });
  await new Promise((res) => setTimeout(res, 100));
  t.same(accessLines(CHECK).slice(before).map((l) => l['status']), ['OK', 'NotFound']);
});

t.test('Health/Watch streams are capped; a cancelled one frees its place', async (t) => {
  const s = await session(t);
  const open = (): Promise<{ status: string | undefined; stream: ReturnType<ClientHttp2Session['request']> }> =>
    new Promise((resolve) => {
      const st = s.request({ ':method': 'POST', ':path': WATCH, 'content-type': 'application/grpc', te: 'trailers' });
      st.end(frame(stringField1('')));
      st.on('response', (h) => {
        if (h['grpc-status'] !== undefined) resolve({ status: h['grpc-status'] as string, stream: st });
      });
      st.on('trailers', (h) => resolve({ status: h['grpc-status'] as string, stream: st }));
      st.on('data', () => resolve({ status: undefined, stream: st }));
      st.on('error', () => undefined);
    });
  const a = await open();
  const b = await open();
  t.equal(a.status, undefined, 'first Watch streams');
  t.equal(b.status, undefined, 'second Watch streams');
  const c = await open();
  t.equal(c.status, '8', 'third: RESOURCE_EXHAUSTED');
  a.stream.close(constants.NGHTTP2_CANCEL);
  await new Promise((res) => setTimeout(res, 200));
  const d = await open();
  t.equal(d.status, undefined, 'a place freed by a cancel is taken again');
  b.stream.close(constants.NGHTTP2_CANCEL);
  d.stream.close(constants.NGHTTP2_CANCEL);
});

t.test('a connection advertises GRPC_MAX_CONCURRENT_STREAMS', async (t) => {
  const s = await session(t);
  t.equal(s.remoteSettings.maxConcurrentStreams, 7);
});
