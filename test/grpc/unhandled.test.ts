// A call that ends before its handler runs (cancelled before its one message came, or ended
// by grpc-js itself) is counted by the metrics interceptor: it gets its access line there too,
// one per call counted (a RST_STREAM before the message was counted, and not logged).
import t from 'tap';
import { connect, constants } from 'node:http2';
import { metricValue, logLine } from '../helpers/broker.ts';
import { startMock } from '../helpers/fleet.ts';
import { status as Status } from '@grpc/grpc-js';
import { clients, serverStream, startGrpcFleetBroker } from '../helpers/grpc.ts';

t.test('a Chat call cancelled before its request message: counted CANCELLED and logged once', async (t) => {
  const m = await startMock(t, { tokens: 3 });
  const tb = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'g-1', provider: 'openai', url: m.url, model: 'm' }] } } });
  const session = connect(`http://127.0.0.1:${tb.broker.grpcPort}`);
  t.teardown(() => session.close());
  const stream = session.request({ ':method': 'POST', ':path': '/edge_broker.v1.ChatService/Chat', 'content-type': 'application/grpc', te: 'trailers', 'x-request-id': 'cancel-before-message' });
  stream.on('error', () => undefined);
  // grpc-js answers nothing before the message: the call is open once its headers were read.
  await new Promise((r) => setTimeout(r, 200));
  stream.close(constants.NGHTTP2_CANCEL);
  const line = await logLine(tb, (l) => l['msg'] === 'request' && l['trace_id'] === 'cancel-before-message');
  t.match(line, { method: 'gRPC', route: '/edge_broker.v1.ChatService/Chat', status: 'Canceled' }, 'its access line');
  t.equal(await metricValue(tb.url, 'grpc_server_handled_total', { grpc_method: 'Chat', grpc_code: 'Canceled' }), 1, 'counted once');
  t.equal(tb.logs.filter((l) => l['trace_id'] === 'cancel-before-message').length, 1, 'one line');
  t.equal(m.stats.requests['/v1/chat/completions'] ?? 0, 0, 'nothing went upstream');
});

// A call the shutdown cuts while its upstream has not answered yet: the shutdown's outcome (as a
// stream cut after its first byte), not a client's abort.
for (const threads of ['0', '2']) {
  t.test(`FRONT_THREADS=${threads}: a Chat call cut by the shutdown before its upstream answered is the shutdown's`, async (t) => {
    const { createServer } = await import('node:http');
    let received = 0;
    const silent = createServer(() => void received++);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    t.teardown(() => {
      silent.closeAllConnections();
      silent.close();
    });
    const url = `http://127.0.0.1:${(silent.address() as { port: number }).port}`;
    const tb = await startGrpcFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'silent', provider: 'openai', url, model: 'm' }] } } }, { FRONT_THREADS: threads });
    const c = clients(tb.broker.grpcPort);
    t.teardown(() => c.close());
    const call = serverStream(c.chat, 'Chat', { model: 'g', messages: [{ role: 'user', content: 'hi' }] });
    // The call has reached its upstream, which does not answer.
    for (let i = 0; i < 500 && received === 0; i++) await new Promise((r) => setTimeout(r, 20));
    t.equal(received, 1, 'the upstream has the request');
    await tb.broker.close(300);
    const r = await call;
    t.equal(r.status.code, Status.UNAVAILABLE);
    t.ok(tb.logs.some((l) => l['msg'] === 'request cut by the shutdown after its grace period' && l['deployment'] === 'silent'), 'recorded as the shutdown\'s cut');
  });
}
