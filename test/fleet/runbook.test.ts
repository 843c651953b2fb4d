// Every curl of the fleet runbook (docs/fleet.md, the Ollama Orchestrator's commands)
// run with real curl against a broker, in the order the guide gives them, with only the
// host and port changed (and the placeholders filled in). The admin credential comes
// from a .curlrc, as the guide suggests, so the commands stay as written.
import t from 'tap';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ADMIN_TOKEN } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const run = promisify(execFile);
const guide = readFileSync(new URL('../../docs/fleet.md', import.meta.url), 'utf8');

/** The curl commands of the guide's bash blocks, continuation lines joined. */
function curls(text: string): string[] {
  const out: string[] = [];
  for (const block of text.matchAll(/```bash\n([\s\S]*?)```/g)) {
    const lines = block[1]!.split('\n');
    for (let i = 0; i < lines.length; i++) {
      let line = lines[i]!;
      if (!line.startsWith('curl ')) continue;
      while (line.endsWith('\\') && i + 1 < lines.length) line = line.slice(0, -1) + ' ' + lines[++i]!.trim();
      out.push(line);
    }
  }
  return out;
}

let curlFound = true;
try {
  await run('curl', ['--version']);
} catch {
  curlFound = false;
}

t.test('every curl of docs/fleet.md works against the broker', { skip: curlFound ? false : 'curl is not installed (.ci/run installs it)' }, async (t) => {
  const gpu1 = await startMock(t, { models: ['llama3'] });
  const gpu2 = await startMock(t, { models: ['llama3'] });
  const spare = await startMock(t, { models: ['llama3'] });
  const tb = await startFleetBroker(t, { servers: [{ id: 'gpu-1', provider: 'ollama', url: gpu1.url, maxConcurrency: 4 }, { id: 'gpu-2', provider: 'ollama', url: gpu2.url, maxConcurrency: 4 }] }, { INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'true' });
  const port = new URL(tb.url).port;
  const configPath = (tb.broker.config.brokerConfigPath)!;
  const cwd = mkdtempSync(join(tmpdir(), 'eb-runbook-'));
  // curl reads $CURL_HOME/.curlrc: the credential, and the status code after each reply.
  writeFileSync(join(cwd, '.curlrc'), `header = "Authorization: Bearer ${ADMIN_TOKEN}"\nwrite-out = "\\n%{http_code}\\n"\n`);
  const env = { ...process.env, CURL_HOME: cwd };

  // Until the first health checks found the models, nothing routes to them.
  for (let i = 0; i < 200; i++) {
    const s = (await (await fetch(`${tb.url}/api/orchestrator/servers`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as { servers: { models: string[] }[] };
    if (s.servers.every((x) => x.models.length > 0)) break;
    await new Promise((r) => setTimeout(r, 25));
  }

  const commands = curls(guide);
  t.ok(commands.length >= 45, `the guide has the runbook's curls (${commands.length})`);
  let n = 0;
  for (const written of commands) {
    const cmd = written
      .replaceAll('localhost:8080', `127.0.0.1:${port}`)
      .replaceAll('{serverId}', 'gpu-1')
      .replaceAll('{server-id}', 'gpu-2')
      .replaceAll('{model}', 'llama3:latest')
      .replaceAll('http://new-server:11434', spare.url)
      .replaceAll('/path/to/config.yaml', configPath);
    if (cmd.includes('@config-backup.json')) {
      // The restore reads the backup the guide's daily backup wrote.
      const backup = readdirSync(cwd).find((f) => /^config-\d{8}\.json$/.test(f));
      t.ok(backup, 'the daily backup was written');
      // Less the status line our .curlrc's write-out appended.
      writeFileSync(join(cwd, 'config-backup.json'), readFileSync(join(cwd, backup!), 'utf8').replace(/\n\d{3}\n$/, ''));
    }
    const { stdout } = await run('bash', ['-c', `set -o pipefail; ${cmd}`], { cwd, env, maxBuffer: 16 << 20 }).catch((err: { stdout?: string; code?: number }) => {
      t.fail(`${written} exited with ${err.code}: ${String(err.stdout).slice(-300)}`);
      return { stdout: '' };
    });
    if (!cmd.includes('|') && !cmd.includes('>')) {
      const status = Number(stdout.trim().split('\n').pop());
      t.ok(status >= 200 && status < 300, `${written} → ${status}`);
    }
    n++;
  }
  t.equal(n, commands.length);
  // The reload put the file's servers back (the removal and the addition were runtime
  // changes, not saved before it), and the save after it kept the previous file as .bak.
  t.ok(existsSync(`${configPath}.bak`), 'config/save kept a backup');
  const servers = (await (await fetch(`${tb.url}/api/orchestrator/servers`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as { servers: { id: string }[] };
  t.same(servers.servers.map((s) => s.id).sort(), ['gpu-1', 'gpu-2']);
});
