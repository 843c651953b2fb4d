// uWS listens with SO_REUSEPORT (that is how every data-plane thread shares the port), so
// a second broker started on a port that one already serves would listen too, silently,
// and the kernel would split connections between the two. A plain socket, which does not
// set SO_REUSEPORT, cannot bind a port such a listener holds: binding one first, and
// closing it, tells a free port from a taken one.
import { createServer } from 'node:net';

/** Rejects with the reason when another process listens on host:port (port 0: nothing to check). */
export function assertPortFree(host: string, port: number): Promise<void> {
  if (port === 0) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', (err: NodeJS.ErrnoException) =>
      reject(new Error(`HTTP cannot listen on ${host}:${port} (HOST, PORT): ${err.code === 'EADDRINUSE' ? 'another process listens on it' : err.message}`)),
    );
    probe.listen({ host, port, exclusive: true }, () => probe.close(() => resolve()));
  });
}
