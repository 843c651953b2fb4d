// Header names with '_' (Codex CLI sends `session_id` and `conversation_id` on every call):
// answered, through the patched uWS addon (src/front/http/uws.ts).
// Raw sockets: fetch would not show a request that gets no answer apart from a slow one.
import t from 'tap';
import { connect } from 'node:net';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startTestBroker } from '../helpers/broker.ts';
import { runTs } from '../helpers/child.ts';
import { loadUws } from '../../src/front/http/uws.ts';

/** The status line of the reply to `head`, or 'no answer' when none came within a second. */
function statusOf(port: number, head: string): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    let got = '';
    const timer = setTimeout(() => {
      s.destroy();
      resolve('no answer');
    }, 1000);
    s.on('data', (c) => {
      got += c.toString('latin1');
      const line = got.indexOf('\r\n');
      if (line < 0) return;
      clearTimeout(timer);
      s.destroy();
      resolve(got.slice(0, line));
    });
    s.on('error', () => {
      clearTimeout(timer);
      resolve('no answer');
    });
    s.write(head);
  });
}

// The patch is made for one build: Linux x64, Node 20's ABI. Elsewhere the package loads as it is.
const patchable = process.platform === 'linux' && process.arch === 'x64' && process.versions.modules === '115';

t.test('the addon in use is the patched build where the patch applies; UWS_HEADER_PATCH=false is the escape hatch', async (t) => {
  t.equal(loadUws().underscoreHeaders, patchable, loadUws().note ?? 'patched');
  t.equal(typeof loadUws().uws.App, 'function');
  // Another process (the choice is made once per thread): the package as it is.
  // Compiled (npm test), the module's .js twin, with no tsx: runTs's last argument is the module.
  const run = runTs(fileURLToPath(new URL('../../src/front/http/uws.ts', import.meta.url)));
  const module = run.at(-1)!;
  const script = `const { loadUws } = await import(${JSON.stringify(module)}); const u = loadUws(); console.log(JSON.stringify({ patched: u.underscoreHeaders, app: typeof u.uws.App, note: u.note }));`;
  for (const off of ['false', 'Off']) {
    const out = JSON.parse(execFileSync(process.execPath, [...run.slice(0, -1), '--input-type=module', '-e', script], { env: { ...process.env, UWS_HEADER_PATCH: off }, encoding: 'utf8' }).trim().split('\n').at(-1)!);
    t.same(out, { patched: false, app: 'function', note: `UWS_HEADER_PATCH=${off}` }, `any spelling of false: ${off}`);
  }
});

t.test("a request with '_' in header names is answered; names with other characters are still refused", { skip: patchable ? false : 'the patch applies to Linux x64 on Node 20 only' }, async (t) => {
  const tb = await startTestBroker({ INFER_ENABLED: 'false' });
  t.teardown(() => tb.close());
  const get = (headers: string): string => `GET /healthz HTTP/1.1\r\nHost: x\r\n${headers}\r\n`;
  t.equal(await statusOf(tb.broker.port, get('session_id: abc\r\nconversation_id: d\r\n')), 'HTTP/1.1 200 OK', 'Codex CLI headers');
  t.equal(await statusOf(tb.broker.port, get('X_Mixed_Case: 1\r\nabcdefgh_ijklmnop_q: 2\r\n')), 'HTTP/1.1 200 OK', 'long names, an underscore in and past the first 8 bytes');
  t.equal(await statusOf(tb.broker.port, get('a^b: 1\r\na`b: 2\r\n')), 'HTTP/1.1 200 OK', "the other token characters next to the letters");
  for (const bad of ['x[y: 1', 'x y: 1', 'x/y: 1', 'x"y: 1', 'abcdefghij]k: 1']) {
    t.equal(await statusOf(tb.broker.port, get(`${bad}\r\n`)), 'no answer', `${bad}: refused as before`);
  }
  // Not a way around a credential: x_api_key is not x-api-key (uWS makes its '_' 0x7f).
  const keyed = await startTestBroker({ INFER_ENABLED: 'false', AUTH_MODE: 'keys' });
  t.teardown(() => keyed.close());
  const post = (h: string): string => `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n${h}\r\n{}`;
  t.equal(await statusOf(keyed.broker.port, post('x_api_key: anything\r\n')), 'HTTP/1.1 401 Unauthorized');
});
