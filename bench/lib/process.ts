// Child processes for the benches: every server runs as its own process bound to
// 127.0.0.1, so the load generator never shares an event loop with it; children still
// running when the bench exits are killed with it.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { sleep } from './stats.ts';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
// Children still running when the bench exits (an error, Ctrl-C) are killed with it.
export const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});
for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));

export interface Child {
  readonly name: string;
  readonly pid: number;
  readonly port: number;
  readonly url: string;
  /** The last lines the child wrote (stdout and stderr), for error messages. */
  output(): string;
  /** How it exited (code or signal), or undefined while it runs. */
  exited(): number | string | null | undefined;
  /** SIGTERM, then SIGKILL after graceMs. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * A port that was free a moment ago, for a child to listen on (the broker cannot report
 * PORT=0's choice at LOG_LEVEL=warn). Taken below the kernel's ephemeral range: a port the
 * kernel hands out for listen(0) is one it also hands to outgoing connections, and with
 * tests side by side one of their client sockets took it in the seconds before the child
 * listened (gRPC's EADDRINUSE, seen in CI).
 */
export async function freePort(): Promise<number> {
  const below = ephemeralLow();
  for (let tries = 0; below > LOWEST_PORT + 1000 && tries < 50; tries++) {
    const port = LOWEST_PORT + Math.floor(Math.random() * (below - LOWEST_PORT));
    if ((await listenOnce(port)) !== undefined) return port;
  }
  const port = await listenOnce(0);
  if (port === undefined) throw new Error('no free port on 127.0.0.1');
  return port;
}

// Above the ports well-known servers take (PostgreSQL 5432, Redis 6379, 8080s, 9090s).
const LOWEST_PORT = 20_000;

function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) ? low : 0;
  } catch {
    return 0; // not Linux: the kernel's choice
  }
}

/** Listens on port (0: the kernel's choice) and closes again: the port, or undefined if taken. */
function listenOnce(port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(undefined));
    srv.listen(port, '127.0.0.1', () => {
      const addr = srv.address();
      const got = typeof addr === 'object' && addr !== null ? addr.port : undefined;
      srv.close(() => resolve(got));
    });
  });
}

export interface SpawnSpec {
  readonly name: string;
  readonly args: readonly string[];
  readonly env?: Record<string, string>;
  /** Resolves the port once the child is ready; throws to keep waiting. */
  ready(out: () => string): Promise<number>;
  readonly readyTimeoutMs: number;
}

/**
 * Variables of the operator's shell that would change what a bench measures without it
 * saying so (a baseline "without Redis" with REDIS_URL exported, a 401 for every request
 * with AUTH_MODE=keys): left out of its children's environment; a bench that wants one sets
 * it in the child's own env.
 */
const NOT_INHERITED = /^(REDIS_URL|RESPONSES_STORE_REDIS_URL|DATABASE_URL|TRACKING_.*|AUTH_MODE|JWT_.*|API_KEYS.*|ADMIN_TOKEN|OTEL_.*|BROKER_CONFIG|BROKER_FF_.*|RATE_LIMIT_.*|NODE_OPTIONS)$/;

/** The environment a bench's child starts with: this process's, less NOT_INHERITED, plus `own`. */
export function childEnv(own: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!NOT_INHERITED.test(k)) env[k] = v;
  return { ...env, ...own };
}

/** Spawns `node <args>` in the project root and waits until `spec.ready` resolves its port. */
export async function startChild(spec: SpawnSpec): Promise<Child> {
  const child = spawn(process.execPath, [...spec.args], {
    cwd: ROOT,
    env: childEnv(spec.env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let tail = '';
  const keep = (chunk: Buffer): void => {
    tail = (tail + chunk.toString('utf8')).slice(-8000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let exited: number | string | null | undefined;
  let stopping = false;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', (code, signal) => {
      exited = code ?? signal;
      live.delete(child);
      resolve();
    });
  });
  const stop = async (graceMs = 5000): Promise<void> => {
    stopping = true;
    if (exited !== undefined) return;
    child.kill('SIGTERM');
    const late = await Promise.race([exit.then(() => false), sleep(graceMs).then(() => true)]);
    if (late) {
      child.kill('SIGKILL');
      await exit;
    }
  };
  const deadline = Date.now() + spec.readyTimeoutMs;
  for (;;) {
    if (exited !== undefined) throw new Error(`${spec.name} exited (${exited}) before it was ready:\n${tail}`);
    try {
      const port = await spec.ready(() => tail);
      // exited() stays undefined after our own stop(): only an exit nobody asked for counts.
      return { name: spec.name, pid: child.pid!, port, url: `http://127.0.0.1:${port}`, output: () => tail, exited: () => (stopping ? undefined : exited), stop };
    } catch {
      // not ready yet
    }
    if (Date.now() > deadline) {
      await stop(1000);
      throw new Error(`${spec.name} not ready after ${spec.readyTimeoutMs} ms:\n${tail}`);
    }
    await sleep(100);
  }
}

/** Any HTTP answer on the port means it is listening. */
export async function answers(url: string, okStatus?: number): Promise<void> {
  const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
  await res.arrayBuffer();
  if (okStatus !== undefined && res.status !== okStatus) throw new Error(`status ${res.status}`);
}

/** How a bench runs the broker: the TypeScript sources through tsx, or the compiled `dist/main.js`. */
export type BrokerRuntime = 'tsx' | 'dist';

/** The node arguments that start the broker (or another src/ entry, e.g. 'mock-upstream/main') in that runtime. */
export function srcEntry(runtime: BrokerRuntime, entry = 'main'): string[] {
  return runtime === 'dist' ? [`dist/${entry}.js`] : ['--import', 'tsx', `src/${entry}.ts`];
}

/**
 * Brings dist/ up to date as `npm run build` does (incremental `tsc -b`, about a second when
 * nothing changed), so a dist broker is never stale. Returns what happened, for the results.
 */
export function buildDist(): { ok: boolean; ms: number; message?: string } {
  const t0 = Date.now();
  try {
    execFileSync(process.execPath, ['node_modules/typescript/bin/tsc', '-b', 'tsconfig.build.json'], { cwd: ROOT, stdio: 'pipe', encoding: 'utf8' });
    return { ok: true, ms: Date.now() - t0 };
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    return { ok: false, ms: Date.now() - t0, message: `${e.stdout ?? ''}${e.stderr ?? ''}`.slice(0, 2000) || e.message };
  }
}

/**
 * The broker (src/main.ts, or dist/main.js with runtime 'dist') with these env vars on top
 * of the bench's own; ready when /ready says 200. `nodeArgs` go before the script:
 * `--cpu-prof`, say (not allowed in NODE_OPTIONS). The default runtime is tsx, as the
 * benches always ran it; 'dist' spares the broker tsx's loader (and every worker thread
 * its own tsx import), and is what `npm start` runs.
 */
export async function startBroker(name: string, env: Record<string, string>, nodeArgs: readonly string[] = [], readyTimeoutMs = 120_000, runtime: BrokerRuntime = 'tsx'): Promise<Child> {
  const port = await freePort();
  return startChild({
    name,
    args: [...nodeArgs, ...srcEntry(runtime)],
    // gRPC off unless asked for: two brokers on one machine (a bench beside a soak) would
    // both take the default 50051, and the second would exit after its HTTP front came up.
    env: { HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn', GRPC_PORT: '0', ...env },
    readyTimeoutMs,
    async ready() {
      await answers(`http://127.0.0.1:${port}/ready`, 200);
      return port;
    },
  });
}
