import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Pool } from 'undici';
import { stringify } from 'yaml';
import { startBroker } from '../bench/lib/process.ts';
import { startMock } from '../bench/llm/procs.ts';
import { profileSummary } from '../bench/llm/profile.ts';
const mock = await startMock('mock', { tokens: 16, tps: 0, ttftMs: 0 });
const dir = mkdtempSync(join(tmpdir(), 'prof-'));
writeFileSync(join(dir, 'b.yaml'), stringify({ cache: { mode: 'on' }, modelGroups: { bench: { deployments: [{ id: 'm', provider: 'openai', url: mock.url, model: 'x' }] } } }));
const pdir = mkdtempSync(join(tmpdir(), 'cpuprof-'));
const broker = await startBroker('b', { BROKER_CONFIG: join(dir, 'b.yaml'), FRONT_THREADS: '0', INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false', GRPC_PORT: '0' }, ['--cpu-prof', `--cpu-prof-dir=${pdir}`]);
const pool = new Pool(broker.url, { connections: 1 });
const body = JSON.stringify({ model: 'bench', messages: [{ role: 'user', content: 'What is the cache for?' }], stream: true, temperature: 0 });
for (let i = 0; i < 6000; i++) { const r = await pool.request({ method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json' }, body }); await r.body.text(); }
await pool.close(); await broker.stop(5000); await mock.stop();
console.log(profileSummary(pdir, 40));
