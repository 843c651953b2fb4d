// A gRPC connection that never finishes its HTTP/2 preface is closed after
// GRPC_HANDSHAKE_TIMEOUT_MS (a slowloris held one descriptor each, for good), while a
// client that finished it keeps its connection and is served.
import t from 'tap';
import { connect, type Socket } from 'node:net';
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
