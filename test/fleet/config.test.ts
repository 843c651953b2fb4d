// Fleet management end to end: the running config (get, patch, schema, restore, reload,
// save, If-Match), the admin credential on every route, and recovery tests.
import t from 'tap';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { admin, metricValue, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startMock } from '../helpers/fleet.ts';
import { broker as fleetBroker, chat, get, send, until } from './helpers.ts';

const broker = (fleet: Record<string, unknown>, env: Record<string, string> = {}): Promise<TestBroker> => fleetBroker(t, fleet, env);

t.test('config: get with a version, patch, schema, invalid and stale changes refused, save and reload', async (t) => {
  const m = await startMock(t);
  const dir = mkdtempSync(join(tmpdir(), 'eb-cfg-'));
  const file = join(dir, 'broker.yaml');
  writeFileSync(file, stringify({ modelGroups: { g: { deployments: [{ id: 'd', provider: 'openai', url: m.url, model: 'm' }] } } }));
  const tb = await startTestBroker({ BROKER_CONFIG: file, INFER_ENABLED: 'false' });
  t.teardown(() => tb.close());
  const res = await fetch(`${tb.url}/api/orchestrator/config`, { headers: admin });
  const etag = res.headers.get('etag')!;
  t.match(etag, /^"\d+"$/);
  t.same(((await res.json()) as any).modelGroups.g.deployments[0].id, 'd');
  const schema = await get(tb, '/api/orchestrator/config/schema');
  t.equal(schema.type, 'object');
  t.ok(schema.properties.modelGroups && schema.properties.servers && schema.properties.fleet, 'the schema covers the file');

  const patched = await send(tb, 'PATCH', '/api/orchestrator/config/queue', { maxSize: 2000 }, { 'if-match': etag });
  t.equal(patched.status, 200);
  t.equal(patched.body.config.scheduler.maxQueue, 2000);
  t.equal(await metricValue(tb.url, 'queue_max_size'), 2000);
  t.equal((await get(tb, '/api/orchestrator/queue')).maxSize, 2000);
  const stale = await send(tb, 'PATCH', '/api/orchestrator/config/queue', { maxSize: 5 }, { 'if-match': etag });
  t.equal(stale.status, 409, 'a stale If-Match');
  t.equal(stale.body.error.code, 'config_conflict');
  const bad = await send(tb, 'PATCH', '/api/orchestrator/config/queue', { maxSize: -1 });
  t.equal(bad.status, 400);
  t.equal(bad.body.error.param, 'maxSize', 'the error names the field');
  t.equal((await send(tb, 'PATCH', '/api/orchestrator/config/queue', { colour: 1 })).status, 400);
  t.equal((await send(tb, 'PATCH', '/api/orchestrator/config/metrics', { historyWindowMinutes: 30 })).status, 200);
  t.equal((await get(tb, '/api/orchestrator/analytics/summary')).windowMinutes, 30);
  const restoreBad = await send(tb, 'POST', '/api/orchestrator/config', { modelGroups: { g: { deployments: [{ id: 'd', provider: 'bedrock', url: m.url, model: 'm' }] } } });
  t.equal(restoreBad.body.error.param, 'modelGroups.g.deployments[0].provider');
  t.equal((await get(tb, '/api/orchestrator/config')).scheduler.maxQueue, 2000, 'nothing changed by the invalid ones');
  t.equal((await chat(tb, 'g')).status, 200);

  const saved = await send(tb, 'POST', '/api/orchestrator/config/save');
  t.equal(saved.status, 200);
  t.match(readFileSync(file, 'utf8'), /maxQueue: 2000/, 'written to the configured file');
  t.ok(existsSync(`${file}.bak`), 'the previous file kept as .bak');
  t.notMatch(readFileSync(`${file}.bak`, 'utf8'), /maxQueue/);
  // A file that cannot be written where it is (here its backup's name is taken by a directory; in a
  // pod, a read-only ConfigMap): 409 saying what to do instead, not 500, and no temporary file left.
  const bak = readFileSync(`${file}.bak`);
  rmSync(`${file}.bak`);
  mkdirSync(`${file}.bak`);
  const notSaved = await send(tb, 'POST', '/api/orchestrator/config/save');
  t.equal(notSaved.status, 409);
  t.equal(notSaved.body.error.code, 'config_not_writable');
  t.match(notSaved.body.error.message, /^cannot save .*: writing it failed \(EISDIR\)\. Change the file where it comes from .* POST \/api\/orchestrator\/config\/reload/);
  t.same(readdirSync(dir).filter((f) => f.includes('.tmp-')), [], 'no temporary file left');
  t.match(readFileSync(file, 'utf8'), /maxQueue: 2000/, 'the file as it was');
  rmSync(`${file}.bak`, { recursive: true });
  writeFileSync(`${file}.bak`, bak);

  // Edit the file by hand, reload it: in force.
  writeFileSync(file, readFileSync(file, 'utf8').replace('maxQueue: 2000', 'maxQueue: 77'));
  t.equal((await send(tb, 'POST', '/api/orchestrator/config/reload')).status, 200);
  t.equal((await get(tb, '/api/orchestrator/queue')).maxSize, 77);
  const other = join(dir, 'other.json');
  writeFileSync(other, JSON.stringify({ modelGroups: { h: { deployments: [{ id: 'h', provider: 'openai', url: m.url, model: 'm' }] } } }));
  t.equal((await send(tb, 'POST', '/api/orchestrator/config/reload', { configPath: other })).status, 200, 'another file in the same directory');
  t.equal((await chat(tb, 'h')).status, 200, 'its group is served on every thread');
  t.equal((await chat(tb, 'g')).status, 404, 'and the old one is gone');
  const outside = await send(tb, 'POST', '/api/orchestrator/config/reload', { configPath: '/etc/passwd' });
  t.equal(outside.status, 400, 'a file outside the config directory');
  t.match(outside.body.error.message, /inside/);
  t.equal((await send(tb, 'POST', '/api/orchestrator/config/reload', { configPath: '../../etc/hosts' })).status, 400);
  // Outside, a file that exists and one that does not get the same answer: no oracle of the machine's files.
  const missing = await send(tb, 'POST', '/api/orchestrator/config/reload', { configPath: '/etc/no-such-file-here' });
  t.equal(missing.status, 400);
  t.equal(missing.body.error.message, outside.body.error.message, 'the same refusal whether it exists or not');
});

t.test('every route needs the admin credential; recovery tests keep their failures with an analysis', async (t) => {
  const m = await startMock(t);
  const tb = await broker({ modelGroups: { g: { deployments: [{ id: 'r', provider: 'openai', url: m.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  for (const path of ['/health', '/servers', '/circuit-breakers', '/bans', '/queue', '/config', '/metrics', '/recovery-failures']) {
    const r = await fetch(`${tb.url}/api/orchestrator${path}`);
    t.equal(r.status, 401, `${path} without credentials`);
  }
  const ok = await send(tb, 'POST', '/api/orchestrator/servers/r/models/m/recovery-test');
  t.equal(ok.body.ok, true);
  m.setKnobs({ fail: '500' });
  const failed = await send(tb, 'POST', '/api/orchestrator/servers/r/models/m/recovery-test');
  t.equal(failed.body.ok, false);
  t.equal(failed.body.kind, 'http_5xx');
  const history = await get(tb, '/api/orchestrator/recovery-failures/r/history');
  t.equal(history.history.length, 1);
  const analysis = await get(tb, '/api/orchestrator/recovery-failures/r/analysis');
  t.same(analysis.byKind, { http_5xx: 1 });
  t.ok(analysis.msSinceLastSuccess >= 0);
  const impact = await get(tb, '/api/orchestrator/recovery-failures/r/circuit-breaker-impact');
  t.equal(impact.breakers[0].model, 'm');
  t.equal((await get(tb, '/api/orchestrator/recovery-failures/r')).failures, 1);
  t.equal((await send(tb, 'POST', '/api/orchestrator/recovery-failures/r/reset')).body.reset, true);
  t.equal((await get(tb, '/api/orchestrator/recovery-failures/r')).failures, 0);
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/r/models/nope/recovery-test')).status, 404);
  const text = await (await fetch(`${tb.url}/api/orchestrator/metrics`, { headers: admin })).text();
  t.match(text, /circuit_breaker_state\{server="r",model="m"\}/);
});

t.test("config: a key written in the fleet file shows by its id, a backup restores it, and an id that names no key is refused", async (t) => {
  const m = await startMock(t);
  const tb = await broker({ apiKeys: { 'sk-inline-secret-1': { rpm: 100 } }, modelGroups: { g: { deployments: [{ id: 'd', provider: 'openai', url: m.url, model: 'm' }] } } });
  const res = await fetch(`${tb.url}/api/orchestrator/config`, { headers: admin });
  const text = await res.text();
  t.notMatch(text, /sk-inline-secret-1/, 'the key is not in the view');
  const backup = JSON.parse(text) as { apiKeys: Record<string, unknown> };
  const [id] = Object.keys(backup.apiKeys);
  t.match(id, /^k_[0-9a-f]{12}$/, 'named by its id');
  const restored = await send(tb, 'POST', '/api/orchestrator/config', backup);
  t.equal(restored.status, 200, 'the backup restores');
  t.notMatch(JSON.stringify(restored.body), /sk-inline-secret-1/);
  // The running key still works, and its policy is the restored one.
  const ok = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer sk-inline-secret-1' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) });
  t.equal(ok.status, 200);
  t.same((await get(tb, '/api/orchestrator/config')).apiKeys, { [id!]: { rpm: 100 } }, 'the same key, under the same id');
  const stray = await send(tb, 'POST', '/api/orchestrator/config', { ...backup, apiKeys: { k_0123456789ab: { rpm: 5 } } });
  t.equal(stray.status, 400, 'an id that names no running key');
  t.equal(stray.body.error.param, 'apiKeys.k_0123456789ab');
});

t.test("config: a URL's password and query token are hidden in every view, a backup restores them, the saved file keeps them", async (t) => {
  const m = await startMock(t);
  const withPassword = m.url.replace('http://', 'http://ops:s3cret-pw@');
  const withToken = `${m.url}/?api_key=qs-secret-1&region=eu`;
  const dir = mkdtempSync(join(tmpdir(), 'eb-cfg-'));
  const file = join(dir, 'broker.yaml');
  writeFileSync(file, stringify({ servers: [{ id: 's', provider: 'openai', url: withPassword, models: ['m'] }], modelGroups: { g: { deployments: [{ id: 'd', provider: 'openai', url: withToken, model: 'm' }] } } }));
  const tb = await startTestBroker({ BROKER_CONFIG: file, INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false' });
  t.teardown(() => tb.close());
  const secrets = /s3cret-pw|qs-secret-1/;
  const text = await (await fetch(`${tb.url}/api/orchestrator/config`, { headers: admin })).text();
  t.notMatch(text, secrets, 'not in GET /config');
  const backup = JSON.parse(text) as { servers: { url: string }[]; modelGroups: { g: { deployments: { url: string }[] } } };
  t.equal(backup.servers[0]!.url, m.url.replace('http://', 'http://ops:***@') + '/', 'the password shows as ***');
  t.equal(backup.modelGroups.g.deployments[0]!.url, `${m.url}/?api_key=***&region=eu`, 'the token as ***, the rest as it was');
  t.notMatch(JSON.stringify(await get(tb, '/api/orchestrator/servers')), secrets, 'not in GET /servers');
  const restored = await send(tb, 'POST', '/api/orchestrator/config', backup);
  t.equal(restored.status, 200, 'the backup restores');
  t.notMatch(JSON.stringify(restored.body), secrets, 'nor in the reply to a change');
  t.equal((await send(tb, 'POST', '/api/orchestrator/config/save')).status, 200);
  const saved = readFileSync(file, 'utf8');
  t.ok(saved.includes(withPassword) && saved.includes(withToken), 'the running URLs were kept: the saved file has them');
  const moved = structuredClone(backup);
  moved.servers[0]!.url = 'http://ops:***@127.0.0.1:1/';
  const refused = await send(tb, 'POST', '/api/orchestrator/config', moved);
  t.equal(refused.status, 400, 'a hidden secret that stands for no running URL');
  t.equal(refused.body.error.param, 'servers[0].url');
  t.notMatch(tb.logs.map((l) => JSON.stringify(l)).join('\n'), secrets, 'nor in the logs');
});

t.test('an action refused (an unknown server, 404) leaves no audit line; a done one leaves one', async (t) => {
  const m = await startMock(t);
  const tb = await fleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'r', provider: 'openai', url: m.url, model: 'm' }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  const audits = () => tb.logs.filter((l) => typeof l['audit'] === 'string').map((l) => `${l['audit']}:${String(l['server'])}`);
  for (const [path, body] of [
    ['/servers/ghost/drain', undefined],
    ['/servers/ghost/undrain', undefined],
    ['/servers/ghost/maintenance', { enabled: true }],
    ['/circuit-breakers/ghost/m/open', undefined],
    ['/circuit-breakers/ghost/reset', undefined],
    ['/recovery-failures/ghost/reset', undefined],
  ] as const) t.equal((await send(tb, 'POST', `/api/orchestrator${path}`, body)).status, 404, path);
  t.same(audits().filter((a) => a.endsWith(':ghost')), [], 'no audit line for what was not done');
  t.equal((await send(tb, 'POST', '/api/orchestrator/servers/r/drain')).status, 200);
  t.ok(audits().includes('drain:r'), 'the drain that was done is audited');
});

t.test("a deployment's key or timeouts changed at run time are used at once, on every thread (its pool is made again)", async (t) => {
  const m = await startMock(t);
  process.env['EB_TEST_KEY_OLD'] = 'key-old';
  process.env['EB_TEST_KEY_NEW'] = 'key-new';
  const fleet = (apiKeyEnv: string) => ({ modelGroups: { g: { deployments: [{ id: 'd', provider: 'openai', url: m.url, model: 'm', apiKeyEnv }] } } });
  // The new key's variable is one the operator allowed (UPSTREAM_KEY_ENVS): the file named only the old one.
  const tb = await fleetBroker(t, fleet('EB_TEST_KEY_OLD'), { FRONT_THREADS: '2', FLEET_HEALTH_CHECKS: 'false', UPSTREAM_KEY_ENVS: 'EB_TEST_KEY_NEW' });
  const keys = async (): Promise<Set<unknown>> => {
    const seen = new Set<unknown>();
    for (let i = 0; i < 8; i++) {
      t.equal((await chat(tb, 'g')).status, 200);
      seen.add(m.stats.lastHeaders?.authorization);
    }
    return seen;
  };
  t.same([...(await keys())], ['Bearer key-old']);
  t.equal((await send(tb, 'POST', '/api/orchestrator/config', fleet('EB_TEST_KEY_NEW'))).status, 200);
  t.same([...(await keys())], ['Bearer key-new'], 'the rotated key, from every thread');
  // Any other variable (the broker's own secrets first) would be sent to a URL an admin chose: refused, nothing changes.
  process.env['EB_TEST_OTHER_SECRET'] = 'other-secret';
  for (const name of ['ADMIN_TOKEN', 'EB_TEST_OTHER_SECRET']) {
    const refused = await send(tb, 'POST', '/api/orchestrator/config', fleet(name));
    t.equal(refused.status, 403, name);
    t.match(refused.body.error, { code: 'forbidden', param: 'modelGroups.g.deployments[0].apiKeyEnv', message: new RegExp(`${name} is not one a change through the API may name`) }, name);
    const added = await send(tb, 'POST', '/api/orchestrator/servers/add', { id: `evil-${name}`, provider: 'openai', url: m.url, apiKeyEnv: name });
    t.equal(added.status, 403, `${name}: nor through servers/add`);
  }
  t.same([...(await keys())], ['Bearer key-new'], 'the key in force is unchanged');
  t.notOk(m.stats.lastHeaders?.authorization?.toString().includes('secret') || m.stats.lastHeaders?.authorization?.toString().includes('test-admin-token'), 'no secret reached the upstream');
});

t.test("API keys' rpm and tpm changed at run time are in force at once: lowered, added, removed", async (t) => {
  const { keyId } = await import('../../src/guard/api-key.ts');
  const m = await startMock(t);
  const fleet = (apiKeys: Record<string, unknown>) => ({ modelGroups: { g: { deployments: [{ id: 'd', provider: 'openai', url: m.url, model: 'm' }] } }, apiKeys });
  const tb = await fleetBroker(t, fleet({ 'sk-runtime-a': { rpm: 60 } }), { FRONT_THREADS: '2', FLEET_HEALTH_CHECKS: 'false', BROKER_FF_QUOTA_ENFORCEMENT: 'true' });
  const limits = async (key: string) => (await get(tb, '/api/industrial/quota')).subjects[`key:${keyId(key)}`]?.limits;
  t.match(await limits('sk-runtime-a'), { rpm: 60 });
  t.equal((await send(tb, 'POST', '/api/orchestrator/config', fleet({ 'sk-runtime-a': { rpm: 2 }, 'sk-runtime-b': { tpm: 700 } }))).status, 200);
  t.match(await limits('sk-runtime-a'), { rpm: 2 }, 'lowered');
  t.match(await limits('sk-runtime-b'), { tpm: 700 }, 'a new key has its limit');
  const statuses: number[] = [];
  for (let i = 0; i < 3; i++) statuses.push((await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: 'Bearer sk-runtime-a' }, body: JSON.stringify({ model: 'g', messages: [{ role: 'user', content: 'hi' }] }) })).status);
  t.same(statuses, [200, 200, 429], 'the lowered rpm holds on every thread');
  t.equal((await send(tb, 'POST', '/api/orchestrator/config', fleet({ 'sk-runtime-b': { tpm: 700 } }))).status, 200);
  t.same((await limits('sk-runtime-a')) ?? {}, {}, 'a key gone from the file has no limits left (its usage may still show)');
});

t.test('a concurrency limit set through the admin API outlives a config change (until restart, as documented)', async (t) => {
  const m = await startMock(t);
  const tb = await fleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'cap-d', provider: 'openai', url: m.url, model: 'm', concurrencyLimit: 4 }] } } }, { FLEET_HEALTH_CHECKS: 'false' });
  const limit = async () => (await get(tb, '/api/industrial/capacity/cap-d')).concurrencyLimit;
  t.equal((await send(tb, 'PUT', '/api/industrial/capacity/cap-d/limits', { concurrencyLimit: 1 })).status, 200);
  t.equal(await limit(), 1);
  t.equal((await send(tb, 'PATCH', '/api/orchestrator/config/queue', { maxSize: 500 })).status, 200);
  t.equal(await limit(), 1, 'still the operator\'s, not the file\'s 4');
});

t.test('performance thresholds, scheduler aging and the PTU registry changed at run time are in force at once, on every thread', async (t) => {
  // Same time to first token (the routing cost), but one streams 4 tokens/s (about 5 measured:
  // 4 tokens, 3 gaps). The fast one's 40 tokens come at once: even a loaded machine measures
  // hundreds a second, far from the floor.
  const fast = await startMock(t, { tokens: 40 });
  const slow = await startMock(t, { tps: 4 });
  const fleet = (minTokensPerSecond: number, ptu: unknown[]) => ({
    performance: { minTokensPerSecond, minSamples: 1, alpha: 1, probeIntervalMs: 600_000 },
    scheduler: { agingMs: 2_000 },
    ptu,
    modelGroups: { g: { deployments: [{ id: 'fast', provider: 'openai', url: fast.url, model: 'm' }, { id: 'slow', provider: 'openai', url: slow.url, model: 'm' }] } },
  });
  const tb = await fleetBroker(t, fleet(0, [{ name: 'ptu-a', capacityTpm: 1000 }]), { FRONT_THREADS: '2', FLEET_HEALTH_CHECKS: 'false' });
  const spread = async () => {
    const picks = await Promise.all(Array.from({ length: 16 }, async () => (await chat(tb, 'g', { stream: true })).deployment));
    return picks.filter((d) => d === 'slow').length;
  };
  // Both measured (each thread learns every completion); no floor yet, so both take traffic.
  await until(async () => (await spread()) > 0 && (await get(tb, '/api/industrial/performance')).deployments.length === 2, 'both measured');
  t.same((await get(tb, '/api/industrial/performance')).degraded, [], 'no tokens/s floor');
  t.same((await get(tb, '/api/industrial/ptu')).deployments.map((d: any) => d.name), ['ptu-a']);

  t.equal((await send(tb, 'POST', '/api/orchestrator/config', fleet(20, [{ name: 'ptu-b', capacityTpm: 2000 }]))).status, 200);
  // No new sample needed: the slow one (about 5 tokens/s) is judged by the new floor at once.
  t.same((await get(tb, '/api/industrial/performance')).degraded, ['slow'], 'degraded by the new floor');
  t.same((await get(tb, '/api/industrial/ptu')).deployments.map((d: any) => d.name), ['ptu-b'], "the PTU registry is the new file's");
  // And the data-plane threads route by it. A thread that had not sent the slow one a request
  // itself may send it one probe (shared with the other thread); the rest go to the fast one.
  const toSlow = await spread();
  t.ok(toSlow <= 2, `every thread avoids the degraded one: ${toSlow} of 16 went to it`);
});
