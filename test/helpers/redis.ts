// A real redis-server on a free port, for a test file: started by the test (Debian's
// redis-server package; .ci/run installs it), killed and restarted by it.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../bench/lib/process.ts';

interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface RedisProcess {
  readonly port: number;
  readonly url: string;
  /** SIGKILL: gone at once, connections reset. */
  kill(): Promise<void>;
  /** A fresh redis-server on the same port (empty: no persistence). */
  restart(): Promise<void>;
}

export async function startRedis(t: Teardown): Promise<RedisProcess> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'eb-redis-'));
  let child: ChildProcess | undefined;
  const start = async (): Promise<void> => {
    const c = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    child = c;
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      c.stdout!.on('data', (d: Buffer) => {
        buf += d.toString();
        if (buf.includes('Ready to accept connections')) resolve();
      });
      c.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${buf.slice(-500)}`)));
    });
  };
  const stop = async (): Promise<void> => {
    const c = child;
    if (c === undefined || c.exitCode !== null || c.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      c.once('exit', () => resolve());
      c.kill('SIGKILL');
    });
  };
  await start();
  t.teardown(stop);
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill: stop,
    async restart() {
      await stop();
      await start();
    },
  };
}
