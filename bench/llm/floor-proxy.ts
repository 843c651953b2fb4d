// The least a Node proxy on the broker's stack can do, as a reference for bench:llm:
// uWS in front, one undici keep-alive pool behind, the JSON body parsed and re-written
// (model name swapped), the reply passed through. No routing, metrics, logging or
// translation. What the broker adds on top of this is its own cost; what this adds over
// direct is the price of the extra hop on this machine.
//
//   node --import tsx bench/llm/floor-proxy.ts <upstream origin> <upstream model>
//   prints {"listening": <port>} (a free port on 127.0.0.1)
import uWS from 'uWebSockets.js';
import { Pool } from 'undici';

const [upstream, model] = process.argv.slice(2);
if (upstream === undefined || model === undefined) {
  process.stderr.write('usage: floor-proxy.ts <upstream origin> <upstream model>\n');
  process.exit(2);
}
const pool = new Pool(upstream, { connections: 512, pipelining: 1 });
const HEADERS = { 'content-type': 'application/json' };

uWS
  .App()
  .post('/v1/chat/completions', (res) => {
    let aborted = false;
    res.onAborted(() => {
      aborted = true;
    });
    const parts: Buffer[] = [];
    res.onData((chunk, last) => {
      parts.push(Buffer.from(new Uint8Array(chunk))); // copies: uWS reuses the chunk's memory
      if (!last) return;
      const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>;
      body.model = model;
      pool.request({ method: 'POST', path: '/v1/chat/completions', headers: HEADERS, body: JSON.stringify(body) }).then(
        async (up) => {
          const text = await up.body.text();
          if (aborted) return;
          res.cork(() => {
            res.writeStatus(up.statusCode === 200 ? '200 OK' : `${up.statusCode} Upstream`).writeHeader('content-type', 'application/json').end(text);
          });
        },
        () => {
          if (!aborted) res.cork(() => res.writeStatus('502 Bad Gateway').end());
        },
      );
    });
  })
  .listen('127.0.0.1', 0, (socket) => {
    if (!socket) {
      process.stderr.write('floor-proxy: cannot listen\n');
      process.exit(1);
    }
    process.stdout.write(JSON.stringify({ listening: uWS.us_socket_local_port(socket as unknown as uWS.us_socket) }) + '\n');
  });

for (const signal of ['SIGINT', 'SIGTERM'] as const) process.on(signal, () => process.exit(0));
