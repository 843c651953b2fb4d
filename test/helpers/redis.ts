// A real redis-server on a free port, for a test file: started by the test (Debian's
// redis-server package; .ci/run installs it), killed and restarted by it.
import type { ChildProcess } from 'node:child_process';
import { sigkill, spawnReady } from './child.ts';
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
  /** SIGSTOP: connections stay open and nothing answers (a frozen host, a network blackhole). */
  freeze(): void;
  /** SIGCONT: what was sent while frozen is answered. */
  thaw(): void;
}

export async function startRedis(t: Teardown): Promise<RedisProcess> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'eb-redis-'));
  let child: ChildProcess | undefined;
  const start = async (): Promise<void> => {
    const args = ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir];
    child = (await spawnReady('redis-server', args, (out) => (out.includes('Ready to accept connections') ? true : undefined))).child;
  };
  const stop = (): Promise<void> => sigkill(child);
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
    freeze: () => void child?.kill('SIGSTOP'),
    thaw: () => void child?.kill('SIGCONT'),
  };
}
