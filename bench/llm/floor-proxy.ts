// The least a Node proxy on the broker's stack can do, as a reference for bench:llm:
// uWS in front, one undici keep-alive pool per upstream behind, the JSON body parsed and
// re-written (model name swapped), the reply passed through: a non-streamed reply in one
// write, a streamed one (`"stream": true`) chunk by chunk as the upstream sends it, with
// back-pressure. No routing beyond the model name, no SSE parsing, metrics, logging or
// translation. What the broker adds on top of this is its own cost; what this adds over
// direct is the price of the extra hop on this machine.
//
//   node --import tsx bench/llm/floor-proxy.ts <upstream model> <client model>=<upstream origin>...
//   prints {"listening": <port>} (a free port on 127.0.0.1)
import uWS from 'uWebSockets.js';
import { Pool } from 'undici';

const [model, ...routeArgs] = process.argv.slice(2);
const routes = new Map<string, Pool>();
for (const a of routeArgs) {
  const i = a.indexOf('=');
  if (i > 0) routes.set(a.slice(0, i), new Pool(a.slice(i + 1), { connections: 2048, pipelining: 1 }));
}
if (model === undefined || routes.size === 0) {
  process.stderr.write('usage: floor-proxy.ts <upstream model> <client model>=<upstream origin>...\n');
  process.exit(2);
}
const fallback = routes.values().next().value!;
const HEADERS = { 'content-type': 'application/json' };

uWS
  .App()
  .post('/v1/chat/completions', (res) => {
    let aborted = false;
    let abortUpstream = (): void => {};
    res.onAborted(() => {
      aborted = true;
      abortUpstream();
    });
    const parts: Buffer[] = [];
    res.onData((chunk, last) => {
      parts.push(Buffer.from(new Uint8Array(chunk))); // copies: uWS reuses the chunk's memory
      if (!last) return;
      const body = JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>;
      const pool = routes.get(String(body.model)) ?? fallback;
      body.model = model;
      const ac = new AbortController();
      abortUpstream = () => ac.abort();
      pool.request({ method: 'POST', path: '/v1/chat/completions', headers: HEADERS, body: JSON.stringify(body), signal: ac.signal }).then(
        async (up) => {
          if (body.stream !== true) {
            const text = await up.body.text();
            if (aborted) return;
            res.cork(() => {
              res.writeStatus(up.statusCode === 200 ? '200 OK' : `${up.statusCode} Upstream`).writeHeader('content-type', 'application/json').end(text);
            });
            return;
          }
          if (aborted) return void up.body.destroy();
          res.cork(() => {
            res.writeStatus(up.statusCode === 200 ? '200 OK' : `${up.statusCode} Upstream`).writeHeader('content-type', String(up.headers['content-type'] ?? 'text/event-stream'));
          });
          const stream = up.body;
          stream.on('data', (c: Buffer) => {
            if (aborted) return;
            let ok = true;
            res.cork(() => {
              ok = res.write(c);
            });
            if (!ok) {
              // Back-pressure: wait until uWS has sent what it buffered.
              stream.pause();
              res.onWritable(() => {
                stream.resume();
                return true;
              });
            }
          });
          stream.on('end', () => {
            if (!aborted) res.cork(() => res.end());
          });
          stream.on('error', () => {
            if (!aborted) res.close();
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
