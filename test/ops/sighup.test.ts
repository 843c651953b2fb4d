// SIGHUP (a proxy's reload signal, and what a closed terminal sends to `npm start`): the fleet
// file is read again and put in force, with an open stream going on undisturbed. Node's
// default ended the process at once (exit 129), resetting every stream with no error event.
import t from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { freePort } from '../../bench/lib/process.ts';
import { startMock } from '../helpers/fleet.ts';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

t.test('SIGHUP with a stream open: the fleet file is reloaded, the stream finishes, the broker serves on; a bad file keeps the running config', async (t) => {
  const slow = await startMock(t, { tokens: 40, tps: 40 });
  const dir = mkdtempSync(join(tmpdir(), 'eb-sighup-'));
  const file = join(dir, 'broker.yaml');
  const fleet = (groups: string[]) => stringify({ modelGroups: Object.fromEntries(groups.map((g) => [g, { deployments: [{ id: `${g}-1`, provider: 'openai', url: slow.url, model: 'm' }] }])) });
  writeFileSync(file, fleet(['g']));
  const port = await freePort();
  const env: Record<string, string | undefined> = { ...process.env, PORT: String(port), HOST: '127.0.0.1', FRONT_THREADS: '2', INFER_ENABLED: 'false', GRPC_PORT: '0', BROKER_CONFIG: file, LOG_LEVEL: 'info', ADMIN_TOKEN: 'sighup-admin-token' };
  for (const k of Object.keys(env)) if (k === 'NODE_OPTIONS' || /^_?TAP/i.test(k)) delete env[k];
  const broker = spawn(process.execPath, ['dist/main.js'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  broker.stdout!.on('data', (b: Buffer) => (output += b.toString()));
  broker.stderr!.on('data', (b: Buffer) => (output += b.toString()));
  t.teardown(() => void broker.kill('SIGKILL'));
  const chat = (model: string, stream = false) => fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, stream, messages: [{ role: 'user', content: 'hi' }] }) });
  let res: Response | undefined;
  for (let i = 0; i < 300 && res === undefined; i++) {
    res = await chat('g', true).catch(() => undefined);
    if (res === undefined) await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(res?.status, 200, 'a stream is open', { output });
  // The data-plane threads serve before the main thread has finished starting (a SIGHUP then is kept for after).
  for (let i = 0; i < 300 && !output.includes('edge broker listening'); i++) await new Promise((r) => setTimeout(r, 50));
  const body = res!.text();
  t.equal((await chat('h')).status, 404, 'h is not served yet');

  writeFileSync(file, fleet(['g', 'h']));
  broker.kill('SIGHUP');
  let h = 404;
  for (let i = 0; i < 100 && h !== 200; i++) {
    await new Promise((r) => setTimeout(r, 50));
    h = (await chat('h')).status;
  }
  t.equal(h, 200, 'the reloaded file is in force', { output });
  t.match(await body, /data: \[DONE\]/, 'the open stream finished');
  t.equal(broker.exitCode, null, 'still running');
  t.match(output, /"actor":"signal:SIGHUP".*"orchestrator: config"/, 'the reload is logged');
  const trail = (await (await fetch(`http://127.0.0.1:${port}/api/audit?subject=signal:SIGHUP`, { headers: { authorization: 'Bearer sighup-admin-token' } })).json()) as { entries: { action: string; route: string; after: { path: string; version: number } }[] };
  t.match(trail.entries, [{ action: 'SIGHUP', route: '/api/orchestrator/config/reload', after: { path: file, version: Number } }], 'and in the audit trail');

  writeFileSync(file, 'modelGroups: [not, a, map');
  broker.kill('SIGHUP');
  for (let i = 0; i < 100 && !output.includes('SIGHUP: the fleet file was not reloaded'); i++) await new Promise((r) => setTimeout(r, 50));
  t.match(output, /SIGHUP: the fleet file was not reloaded/, 'a bad file is said');
  t.equal((await chat('h')).status, 200, 'and the running config stays');
  broker.kill('SIGTERM');
});
