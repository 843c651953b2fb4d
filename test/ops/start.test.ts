// The production start, as the README gives it and as an operator stops it: `npm start`
// (its prestart builds dist/, then the compiled broker runs, no tsx or esbuild beside it),
// and SIGTERM or SIGINT sent to the npm process stops the broker gracefully: npm exits 0,
// the node process is gone and the port is closed.
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { freePort } from '../../bench/lib/process.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** pid -> [parent pid, command line], from /proc (no /proc/<pid>/task/<tid>/children on every kernel). */
function processTable(): Map<number, { ppid: number; cmd: string }> {
  const out = new Map<number, { ppid: number; cmd: string }>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // pid (comm) state ppid ...: comm may hold spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').split('\0').join(' ').trim();
      out.set(Number(name), { ppid, cmd });
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

function descendants(root: number): { pid: number; cmd: string }[] {
  const table = processTable();
  const out: { pid: number; cmd: string }[] = [];
  const queue = [root];
  while (queue.length > 0) {
    const parent = queue.shift()!;
    for (const [pid, p] of table) {
      if (p.ppid === parent) {
        out.push({ pid, cmd: p.cmd });
        queue.push(pid);
      }
    }
  }
  return out;
}

/** Alive and not a zombie. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

async function answers(url: string): Promise<number | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return undefined;
  }
}

async function until(what: string, deadlineMs: number, check: () => Promise<boolean> | boolean, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!(await check())) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`npm start exited (${child.exitCode ?? child.signalCode}) before ${what}`);
    if (Date.now() > deadline) throw new Error(`no ${what} after ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function startAndStop(t: Test, signal: 'SIGTERM' | 'SIGINT'): Promise<void> {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  // The test runner's own loaders (NODE_OPTIONS, tap's variables) must not reach the broker.
  const env: Record<string, string | undefined> = { ...process.env, PORT: String(port), HOST: '127.0.0.1', INFER_THREADS: '1', LOG_LEVEL: 'info', GRPC_PORT: String(await freePort()) };
  for (const k of Object.keys(env)) if (k === 'NODE_OPTIONS' || /^_?TAP/i.test(k)) delete env[k];
  // The README's command. Its own process group, so that a failing test can clean up everything.
  const npm = spawn('npm', ['start'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let output = '';
  npm.stdout!.on('data', (b: Buffer) => (output += b.toString()));
  npm.stderr!.on('data', (b: Buffer) => (output += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => npm.once('exit', (code, sig) => resolve({ code, signal: sig })));
  t.teardown(() => {
    try {
      process.kill(-npm.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  });
  try {
    // The build (prestart: a full tsc run on a fresh clone, well under a second after), then the broker.
    await until('/healthz', 60_000, async () => (await answers(`${base}/healthz`)) === 200, npm);
    // The inference workers have loaded their models (a running broker, not one still starting).
    // A bound, not a speed: the suite runs two test files at once on a 2-core box.
    await until('/ready', 90_000, async () => (await answers(`${base}/ready`)) === 200, npm);
  } catch (err) {
    t.fail(String(err), { output });
    return;
  }

  const tree = descendants(npm.pid!);
  const brokers = tree.filter((p) => /\bnode\b.*\bdist\/main\.js\b/.test(p.cmd));
  t.equal(brokers.length, 1, 'one compiled broker runs under npm', { tree });
  t.same(tree.filter((p) => /esbuild|tsx/.test(p.cmd)), [], 'no esbuild or tsx process beside the broker', { tree });
  t.notOk(tree.some((p) => /^(\S*\/)?(ba|da)?sh\b/.test(p.cmd)), 'no shell between npm and the broker', { tree });

  process.kill(npm.pid!, signal);
  const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 20_000).unref());
  const result = await Promise.race([exited, timeout]);
  t.not(result, 'timeout', `npm exits within 20 s of ${signal}`, { output });
  if (result === 'timeout') return;
  t.same(result, { code: 0, signal: null }, 'npm exits 0: the broker stopped gracefully', { output });
  for (const b of brokers) t.notOk(running(b.pid), `the broker (pid ${b.pid}) is gone`);
  t.equal(await answers(`${base}/healthz`), undefined, 'the port no longer answers');
  t.match(output, new RegExp(`"signal":"${signal}"[^\\n]*"msg":"shutting down"`), 'the broker logged the signal and shut down');
  t.match(output, /"msg":"gRPC listening"/, 'the compiled broker found the .proto files and served gRPC');
}

t.test('SIGTERM to npm start', (t) => startAndStop(t, 'SIGTERM'));
t.test('SIGINT to npm start', (t) => startAndStop(t, 'SIGINT'));
