// Log lines written by each thread to stdout: pieces a pipe takes whole, what it refuses
// spilled in order; and a broker process whose every thread writes there gives one valid
// JSON line per request, from every thread.
import t from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { fdLogStream, PIPE_BUF, writeLines } from '../../src/obs/log-stream.ts';
import { runTs } from '../helpers/child.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));

const line = (i: number, size: number): string => `{"i":${i},"pad":"${'x'.repeat(size)}"}\n`;

t.test('writes in pieces of at most PIPE_BUF bytes that end at a line end; a longer line alone', async (t) => {
  const lines = [line(0, 100), line(1, 3000), line(2, 2000), line(3, 9000), line(4, 10), line(5, 4070)];
  const pieces: string[] = [];
  writeLines(Buffer.from(lines.join('')), 1, (_fd, buf, off, len) => (pieces.push(buf.toString('utf8', off, off + len)), len), () => t.fail('nothing spills'));
  t.equal(pieces.join(''), lines.join(''), 'everything, in order');
  for (const p of pieces) {
    t.ok(p.endsWith('\n'), 'a piece ends at a line end');
    if (p.length > PIPE_BUF) t.equal(p.split('\n').length, 2, 'a piece above PIPE_BUF is one line');
  }
  t.same(pieces.map((p) => p.length), [lines[0]!.length + lines[1]!.length, lines[2]!.length, lines[3]!.length, lines[4]!.length, lines[5]!.length]);
});

t.test('a full non-blocking stdout (EAGAIN) is waited out and a partial write finished first: whole lines, in order; only a broken descriptor spills', async (t) => {
  const lines = [line(0, 3000), line(1, 3000), line(2, 3000)];
  const calls: Array<[number, number]> = [];
  let n = 0;
  const written: string[] = [];
  writeLines(Buffer.from(lines.join('')), 1, (_fd, buf, off, len) => {
    n++;
    calls.push([off, len]);
    if (n === 2) return (written.push(buf.toString('utf8', off, off + 100)), 100);
    if (n === 3 || n === 4) throw Object.assign(new Error('EAGAIN'), { code: 'EAGAIN' });
    return (written.push(buf.toString('utf8', off, off + len)), len);
  }, () => t.fail('nothing spills on EAGAIN'));
  t.equal(written.join(''), lines.join(''), 'everything, in order, once');
  t.same(calls[2], [lines[0]!.length + 100, lines[1]!.length - 100], "after a partial write, the rest of that line's piece goes next");
  const spilled: string[] = [];
  const sent: string[] = [];
  writeLines(Buffer.from(lines.join('')), 1, (_fd, buf, off, len) => {
    if (sent.length === 1) throw Object.assign(new Error('EPIPE'), { code: 'EPIPE' });
    sent.push(buf.toString('utf8', off, off + len));
    return len;
  }, (text) => spilled.push(text));
  t.same(spilled, [lines.slice(1).join('')], 'a broken descriptor: the rest spills, once');
});

t.test('lines of one turn go out in one write; flush(cb) writes what is gathered at once', async (t) => {
  const writes: string[] = [];
  const s = fdLogStream({ fd: 1, spill: () => t.fail('nothing spills'), writeSync: (_fd, buf, off, len) => (writes.push(buf.toString('utf8', off, off + len)), len) });
  s.write('{"a":1}\n');
  s.write('{"a":2}\n');
  t.same(writes, [], 'not written within the turn');
  await new Promise((r) => setImmediate(r));
  t.same(writes, ['{"a":1}\n{"a":2}\n']);
  s.write('{"a":3}\n');
  let called = false;
  s.flush(() => (called = true));
  t.ok(called);
  t.same(writes, ['{"a":1}\n{"a":2}\n', '{"a":3}\n']);
  await new Promise((r) => setImmediate(r));
  t.equal(writes.length, 2, 'the turn that was scheduled finds nothing left');
});

// The broker as a process, stdout a pipe: the data-plane threads write their own lines there
// (not through the control plane), concurrently with each other and the control plane.
t.test('a broker with two data-plane threads: every stdout line is JSON, one access line per request, from both threads', async (t) => {
  const child = spawn(process.execPath, runTs('src/main.ts'), {
    cwd: root,
    env: { ...process.env, HOST: '127.0.0.1', PORT: '0', GRPC_PORT: '0', FRONT_THREADS: '2', INFER_ENABLED: 'false', LOG_LEVEL: 'info', RATE_LIMIT_RPS: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  const kill = setTimeout(() => child.kill('SIGKILL'), 120_000);
  t.teardown(() => {
    clearTimeout(kill);
    child.kill('SIGKILL');
  });
  const deadline = Date.now() + 60_000;
  let port: number | undefined;
  while (port === undefined && Date.now() < deadline && child.exitCode === null) {
    const p = /"port":(\d+)[^\n]*"msg":"edge broker listening"/.exec(out);
    if (p !== null) port = Number(p[1]);
    else await new Promise((r) => setTimeout(r, 50));
  }
  if (port === undefined) return t.fail('no listening line with the port', { out });

  // Many connections, so that SO_REUSEPORT spreads them over both threads; paths with a
  // query (redacted in the log) and bodies up to several KiB in one turn's batch.
  const ids = new Set<string>();
  const statuses: number[] = [];
  const { Agent, request } = await import('undici');
  for (let round = 0; round < 4; round++) {
    const agents = Array.from({ length: 16 }, () => new Agent({ connections: 1 }));
    await Promise.all(agents.flatMap((dispatcher, i) => Array.from({ length: 8 }, async (_, k) => {
      const res = await request(`http://127.0.0.1:${port}/v1/models?round=${round}&i=${i}&k=${k}`, { dispatcher });
      await res.body.text();
      statuses.push(res.statusCode);
      ids.add(String(res.headers['x-request-id']));
    })));
    await Promise.all(agents.map((a) => a.close()));
  }
  t.same(new Set(statuses), new Set([200]), 'every request answered');
  t.equal(ids.size, 4 * 16 * 8, 'every request has its id');

  child.kill('SIGTERM');
  t.equal(await exited, 0, 'a graceful stop');
  const lines = out.split('\n').filter((l) => l !== '');
  const parsed = lines.map((l) => {
    try {
      return JSON.parse(l) as Record<string, unknown>;
    } catch {
      return undefined;
    }
  });
  t.same(lines.filter((_, i) => parsed[i] === undefined), [], 'every line is one JSON object');
  const access = parsed.filter((o) => o?.msg === 'request' && o.route === '/v1/models');
  const seen = new Map<string, number>();
  for (const o of access) seen.set(String(o!.trace_id), (seen.get(String(o!.trace_id)) ?? 0) + 1);
  t.same([...ids].filter((id) => seen.get(id) !== 1), [], 'one access line per request');
  t.same(new Set(access.map((o) => o!.plane)), new Set([0, 1]), 'both data-plane threads wrote their lines');
  t.ok(parsed.some((o) => o?.msg === 'shutting down'), 'the control plane wrote to the same stdout');
});
