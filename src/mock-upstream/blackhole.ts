// An address where TCP connect never completes, for connect-timeout tests. A server
// on a worker thread listens with a backlog of 1 and then blocks its event loop, so
// nothing is ever accepted; once its accept queue holds the few connections we open
// here, the kernel drops every further SYN and a client's connect hangs until its own
// timeout, as with a host that went away. (A closed port answers RST at once: that is
// a connect error, not a timeout.)
import { Worker } from 'node:worker_threads';
import { connect, type Socket } from 'node:net';

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const net = require('node:net');
const server = net.createServer(() => {});
server.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
  parentPort.postMessage(server.address().port);
  // Block this thread's event loop until released: nothing is accepted meanwhile.
  Atomics.wait(new Int32Array(workerData), 0, 0);
  server.close();
});
`;

export interface Blackhole {
  readonly url: string;
  close(): Promise<void>;
}

export async function createBlackhole(): Promise<Blackhole> {
  const flag = new SharedArrayBuffer(4);
  const worker = new Worker(WORKER, { eval: true, workerData: flag });
  const port = await new Promise<number>((resolve, reject) => {
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  // Fill the accept queue: connections complete until it is full, then one hangs.
  const fillers: Socket[] = [];
  for (let i = 0; i < 16; i++) {
    const s = connect(port, '127.0.0.1');
    s.on('error', () => undefined);
    fillers.push(s);
    const connected = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 300);
      s.once('connect', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });
    if (!connected) break;
  }
  return {
    url: `http://127.0.0.1:${port}`,
    async close() {
      for (const s of fillers) s.destroy();
      const a = new Int32Array(flag);
      Atomics.store(a, 0, 1);
      Atomics.notify(a, 0);
      await worker.terminate();
    },
  };
}
