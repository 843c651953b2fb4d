// `npm start` failing to start says why in one line and exits non-zero: a bad setting
// (exit 2), a port another process holds (exit 1), never a stack trace.
import t from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { fileURLToPath } from 'node:url';
import { runTs } from '../helpers/child.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));

function run(env: Record<string, string>): Promise<{ code: number | null; stderr: string }> {
  const child = start(env);
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  return new Promise((resolve) => child.once('exit', (code) => (clearTimeout(timer), resolve({ code, stderr }))));
}

function start(env: Record<string, string>): ChildProcess {
  return spawn(process.execPath, runTs('src/main.ts'), { cwd: root, env: { ...process.env, HOST: '127.0.0.1', INFER_ENABLED: 'false', FRONT_THREADS: '0', LOG_LEVEL: 'error', ...env }, stdio: ['ignore', 'ignore', 'pipe'] });
}

async function holdPort(t: { teardown(fn: () => unknown): void }): Promise<number> {
  const server: Server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.teardown(() => new Promise<void>((r) => server.close(() => r())));
  return (server.address() as { port: number }).port;
}

t.test('a bad setting: exit 2, one line naming it', async (t) => {
  const r = await run({ PORT: '0', GRPC_PORT: '0', SHUTDOWN_GRACE_S: 'soon' });
  t.equal(r.code, 2);
  t.match(r.stderr, /^edge-broker: invalid configuration: .*SHUTDOWN_GRACE_S/);
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

t.test('GRPC_PORT held by another process: exit 1, the port and the setting named', async (t) => {
  const port = await holdPort(t);
  const r = await run({ PORT: '0', GRPC_PORT: String(port) });
  t.equal(r.code, 1);
  t.match(r.stderr, new RegExp(`^edge-broker: cannot start: gRPC cannot listen on 127\\.0\\.0\\.1:${port} \\(GRPC_PORT; 0 turns gRPC off\\): .*EADDRINUSE`, 'm'));
  t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
});

for (const threads of ['0', '2']) {
  t.test(`PORT held by another process, FRONT_THREADS=${threads}: exit 1, the port named`, async (t) => {
    const port = await holdPort(t);
    const r = await run({ PORT: String(port), GRPC_PORT: '0', FRONT_THREADS: threads });
    t.equal(r.code, 1);
    t.match(r.stderr, new RegExp(`^edge-broker: cannot start: HTTP cannot listen on 127\\.0\\.0\\.1:${port}`, 'm'));
    t.notMatch(r.stderr, /\n\s+at /, 'no stack trace');
  });
}

t.test('PORT already served by another broker: the second exits 1 instead of sharing the port (uWS listens with SO_REUSEPORT)', async (t) => {
  const port = await freePort();
  const first = start({ PORT: String(port), GRPC_PORT: '0', FRONT_THREADS: '2' });
  t.teardown(() => void first.kill('SIGKILL'));
  await until(async () => (await fetch(`http://127.0.0.1:${port}/ready`)).status === 200);
  const second = await run({ PORT: String(port), GRPC_PORT: '0', FRONT_THREADS: '2' });
  t.equal(second.code, 1);
  t.match(second.stderr, new RegExp(`^edge-broker: cannot start: HTTP cannot listen on 127\\.0\\.0\\.1:${port} \\(HOST, PORT\\): another process listens on it`, 'm'));
  t.equal((await fetch(`http://127.0.0.1:${port}/ready`)).status, 200, 'the first broker still serves');
});

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as { port: number };
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function until(ok: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await ok().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}
