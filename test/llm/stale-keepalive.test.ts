// A kept-alive upstream connection the server closes as idle (uvicorn and llama.cpp after
// 5 s, without a Keep-Alive header) just as the broker sends a request on it: the request
// never reached the server, and is sent again on a new connection, once. Before, the client
// got 502 "closed the connection before replying" from a group of one deployment.
import t from 'tap';
import { createServer, type Server } from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { Socket } from 'node:net';
import { startFleetBroker } from '../helpers/fleet.ts';
import { metricValue } from '../helpers/broker.ts';

// Each connection serves one request; the next request on it finds it closed under it.
const served = new WeakMap<Socket, number>();
let answered = 0;
let dropped = 0;
const server: Server = createServer((req, res) => {
  const n = (served.get(req.socket) ?? 0) + 1;
  served.set(req.socket, n);
  req.resume();
  req.on('end', () => {
    if (n > 1) {
      dropped++;
      req.socket.destroy();
      return;
    }
    answered++;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ id: 'x', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }));
  });
});
// No Keep-Alive header in replies (as uvicorn): the broker keeps the connection by its own setting.
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1');
await once(server, 'listening');
t.teardown(() => new Promise<void>((r) => server.close(() => r())));
const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

const tb = await startFleetBroker(t, { modelGroups: { m: { deployments: [{ id: 'idle-1', provider: 'openai', url, model: 'm', concurrencyLimit: 1 }] } } }, { FRONT_THREADS: '0', INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false' });

t.test('a request sent on a connection the upstream closed under it is sent again on a new one', async (t) => {
  for (let i = 0; i < 4; i++) {
    const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'hi' }] }) });
    t.equal(res.status, 200, `request ${i}: ${res.status === 200 ? '' : await res.text()}`);
  }
  t.equal(answered, 4, 'each answered once');
  t.ok(dropped >= 3, 'the later ones first met a connection that closed under them');
  t.equal(await metricValue(tb.url, 'llm_upstream_errors_total', { deployment: 'idle-1' }), 0, 'no upstream error counted');
});
