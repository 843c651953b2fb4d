import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseMockUpstreamArgs } from '../../src/mock-upstream/args.ts';
import { mockText } from '../../src/mock-upstream/server.ts';
import { runTs } from '../helpers/child.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
const main = 'src/mock-upstream/main.ts';

t.test('flags map to options', async (t) => {
  t.same(parseMockUpstreamArgs([]), { help: false, options: {} });
  t.same(
    parseMockUpstreamArgs([
      '--port', '8081', '--host', '0.0.0.0', '--ttft-ms', '200', '--tps', '12.5', '--tokens', '64',
      '--fail', 'stall', '--fail-after', '3', '--models', 'a, b,,c', '--keep-alive-ms', '1000',
    ]),
    {
      help: false,
      options: { port: 8081, host: '0.0.0.0', ttftMs: 200, tps: 12.5, tokens: 64, fail: 'stall', failAfter: 3, models: ['a', 'b', 'c'], keepAliveTimeoutMs: 1000 },
    },
  );
  t.same(parseMockUpstreamArgs(['--port=0', '--fail=500']).options, { port: 0, fail: '500' });
  t.equal(parseMockUpstreamArgs(['-h']).help, true);
  t.throws(() => parseMockUpstreamArgs(['--tokens', 'many']), /--tokens must be a number/);
  t.throws(() => parseMockUpstreamArgs(['--port', '']), /--port must be a number/);
  t.throws(() => parseMockUpstreamArgs(['--verbose']), { code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' });
  t.throws(() => parseMockUpstreamArgs(['extra']), { code: 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL' });
  // A negative number after a flag is its value (refused later by its range), not a flag.
  t.same(parseMockUpstreamArgs(['--tokens', '-3', '--ttft-ms', '-.5', '-h']), { help: true, options: { tokens: -3, ttftMs: -0.5 } });
  t.throws(() => parseMockUpstreamArgs(['--tokens', '-x']), { code: 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' });
});

function run(args: string[]) {
  return spawn(process.execPath, [...runTs(main), ...args], { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
}

async function output(child: ReturnType<typeof run>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c));
  child.stderr.on('data', (c: Buffer) => (stderr += c));
  const [code] = (await once(child, 'exit')) as [number | null];
  return { code, stdout, stderr };
}

t.test('main prints {"listening": port}, serves, and stops on SIGTERM', async (t) => {
  const child = run(['--port', '0', '--tokens', '2', '--models', 'cli-model']);
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const lines = createInterface({ input: child.stdout });
  const [first] = (await once(lines, 'line')) as [string];
  const ready = JSON.parse(first);
  t.same(Object.keys(ready), ['listening']);
  t.type(ready.listening, 'number');

  const res = await fetch(`http://127.0.0.1:${ready.listening}/v1/chat/completions`, {
    method: 'POST',
    body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] }),
  });
  const body = (await res.json()) as { model: string; choices: Array<{ message: { content: string } }> };
  t.equal(body.model, 'cli-model');
  t.equal(body.choices[0]!.message.content, mockText(2));

  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const [code] = (await exited) as [number | null];
  t.equal(code, 0);
});

t.test('bad flags exit 2 with the usage', async (t) => {
  const { code, stderr, stdout } = await output(run(['--tokens', 'lots']));
  t.equal(code, 2);
  t.match(stderr, /--tokens must be a number/);
  t.match(stderr, /usage: npm run mock-upstream/);
  t.equal(stdout, '');
});

t.test('bad option values exit 1', async (t) => {
  const { code, stderr } = await output(run(['--fail', 'sometimes']));
  t.equal(code, 1);
  t.match(stderr, /^mock-upstream: fail must be none, reset, stall, garbage, context, ratelimit, overloaded, badrequest or an HTTP status/);
  t.notMatch(stderr, /mock-upstream: mock-upstream:/, 'named once');
  // --tokens -3 and --tokens=-3 alike: a value out of range, not a bad flag.
  const spaced = await output(run(['--tokens', '-3']));
  const joined = await output(run(['--tokens=-3']));
  t.equal(spaced.code, 1);
  t.equal(joined.code, 1);
  t.match(spaced.stderr, /tokens must be a whole number >= 0/);
  t.equal(spaced.stderr, joined.stderr);
});

t.test('--help prints the usage', async (t) => {
  const { code, stdout } = await output(run(['--help']));
  t.equal(code, 0);
  t.match(stdout, /--ttft-ms/);
  t.match(stdout, /x-mock-fail-after/);
});
