// Runs the broker as a child process (`node --import tsx src/main.ts`), so that the
// load generator and the server never share an event loop. Bound to 127.0.0.1 only.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { sleep } from './stats.ts';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));

// Children still running when the bench exits (an error, Ctrl-C) are killed with it.
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));

export interface BrokerProcess {
  readonly pid: number;
  readonly port: number;
  readonly url: string;
  /** The last lines the broker wrote (stdout and stderr), for error messages. */
  output(): string;
  /** SIGTERM (graceful), then SIGKILL if it has not exited after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
}

/** A port that was free a moment ago (main.ts has no way to report PORT=0's choice at LOG_LEVEL=warn). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts the broker with these environment variables on top of the bench's own
 * (HOST, PORT and LOG_LEVEL are set here) and waits until /ready says 200.
 * `nodeArgs` go before the script: `--cpu-prof` to profile a run, say (it is not allowed in NODE_OPTIONS).
 */
export async function startBrokerProcess(env: Record<string, string>, { readyTimeoutMs = 120_000, nodeArgs = [] as readonly string[] } = {}): Promise<BrokerProcess> {
  const port = await freePort();
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: { ...process.env, HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let tail = '';
  const keep = (chunk: Buffer) => {
    tail = (tail + chunk.toString('utf8')).slice(-8000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let exited: number | string | null | undefined;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = code ?? signal;
      live.delete(child);
      resolve();
    });
  });
  const url = `http://127.0.0.1:${port}`;
  const proc: BrokerProcess = {
    pid: child.pid!,
    port,
    url,
    output: () => tail,
    async stop(graceMs = 15_000) {
      if (exited !== undefined) return;
      child.kill('SIGTERM');
      const killed = await Promise.race([exit.then(() => false), sleep(graceMs).then(() => true)]);
      if (killed) {
        child.kill('SIGKILL');
        await exit;
      }
    },
  };

  const deadline = Date.now() + readyTimeoutMs;
  for (;;) {
    if (exited !== undefined) throw new Error(`broker exited (${exited}) before it was ready:\n${tail}`);
    try {
      const res = await fetch(`${url}/ready`);
      await res.arrayBuffer();
      if (res.status === 200) return proc;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      await proc.stop(2000);
      throw new Error(`broker not ready after ${readyTimeoutMs} ms:\n${tail}`);
    }
    await sleep(100);
  }
}

/** Sum and count of a Prometheus histogram from /metrics text, over the label sets that contain `labelFilter`. */
export function histogramTotals(metricsText: string, name: string, labelFilter = ''): { sum: number; count: number } {
  let sum = 0;
  let count = 0;
  for (const line of metricsText.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$/.exec(line);
    if (m === null || !(m[2] ?? '').includes(labelFilter)) continue;
    if (m[1] === `${name}_sum`) sum += Number(m[3]);
    else if (m[1] === `${name}_count`) count += Number(m[3]);
  }
  return { sum, count };
}

export async function scrapeMetrics(url: string): Promise<string> {
  const res = await fetch(`${url}/metrics`);
  return res.text();
}
