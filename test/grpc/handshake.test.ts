// A gRPC connection that never finishes its HTTP/2 preface (with TLS: its TLS handshake) is
// closed after GRPC_HANDSHAKE_TIMEOUT_MS (a slowloris held one descriptor each, for good;
// with TLS, for Node's 120 s), while a client that finished it keeps its connection and is served.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { connect as tlsConnect } from 'node:tls';
import { startGrpcFleetBroker, clients, unary } from '../helpers/grpc.ts';
import { startMock } from '../helpers/fleet.ts';

const m = await startMock(t);
const tb = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: m.url, model: 'm' }] } } }, { GRPC_HANDSHAKE_TIMEOUT_MS: '300' });
const port = tb.broker.grpcPort;

/** Resolves with whether the server closed the socket within `ms`. */
function closedWithin(socket: Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

t.test('half a preface, then nothing: the connection is closed; a real client is still served', async (t) => {
  const sockets = await Promise.all(
    Array.from({ length: 5 }, () => new Promise<Socket>((resolve) => {
      const s = connect(port, '127.0.0.1', () => {
        s.write('PRI * HTTP/2.0\r\n');
        resolve(s);
      });
      s.on('error', () => undefined);
      // Read what the server sends (its SETTINGS): a paused socket would never see the close.
      s.resume();
    })),
  );
  // Ten times the deadline: a connection still open then would be open for good.
  const closed = await Promise.all(sockets.map((s) => closedWithin(s, 3000)));
  t.same(closed, [true, true, true, true, true], 'every half-open connection was closed');
  for (const s of sockets) s.destroy();

  const c = clients(port);
  t.teardown(() => c.close());
  const first = await unary(c.health, 'Check', { service: '' });
  t.equal(first.error, null, 'a client that sent its preface is served');
  // Past the deadline, the same channel (its connection kept) is still served.
  await new Promise((r) => setTimeout(r, 900));
  const again = await unary(c.health, 'Check', { service: '' });
  t.equal(again.error, null);
  t.equal(again.value?.status, 'SERVING');
});

t.test('with TLS: a connection that never starts its handshake is closed; one that finishes it is served', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'eb-grpc-tls-'));
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost'], { stdio: 'ignore' });
  const secure = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: m.url, model: 'm' }] } } }, { GRPC_HANDSHAKE_TIMEOUT_MS: '300', GRPC_TLS_CERT: cert, GRPC_TLS_KEY: key });
  const tlsPort = secure.broker.grpcPort;
  // Swapped files: the start fails naming the TLS variables, not the port (grpc-js says it only when binding).
  const swapped = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: m.url, model: 'm' }] } } }, { GRPC_TLS_CERT: key, GRPC_TLS_KEY: cert }).then(
    () => undefined,
    (err: unknown) => err as Error,
  );
  t.match(swapped?.message, /GRPC_TLS_CERT .* and GRPC_TLS_KEY .* must be a PEM certificate chain and its private key/);
  t.notMatch(swapped?.message, /GRPC_PORT/);
  const silent = await Promise.all(
    Array.from({ length: 3 }, () => new Promise<Socket>((resolve) => {
      const s = connect(tlsPort, '127.0.0.1', () => resolve(s));
      s.on('error', () => undefined);
      s.resume();
    })),
  );
  t.same(await Promise.all(silent.map((s) => closedWithin(s, 3000))), [true, true, true], 'no TLS handshake: closed');
  for (const s of silent) s.destroy();
  // A TLS client that finishes its handshake in time, then sends its preface: not cut.
  const handshaken = tlsConnect({ port: tlsPort, host: '127.0.0.1', servername: 'localhost', rejectUnauthorized: false, ALPNProtocols: ['h2'] });
  handshaken.on('error', () => undefined);
  await new Promise((r) => handshaken.once('secureConnect', r));
  handshaken.resume();
  t.equal(await closedWithin(handshaken, 900), true, 'handshake done but no preface: closed by the preface deadline');
  // A real client over TLS, past the deadline, on the same channel.
  const c = clients(tlsPort, { 'grpc.ssl_target_name_override': 'localhost' }, grpc.credentials.createSsl(readFileSync(cert)));
  t.teardown(() => c.close());
  t.equal((await unary(c.health, 'Check', { service: '' })).error, null, 'a TLS client is served');
  await new Promise((r) => setTimeout(r, 900));
  const again = await unary(c.health, 'Check', { service: '' });
  t.equal(again.error, null, 'and still, past the deadline');
  t.equal(again.value?.status, 'SERVING');
});
