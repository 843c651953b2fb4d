// The fleet file against the running config Redis keeps (sync.ts fileWins): a replica that
// starts with an edited file puts it in force on every replica, also when the first replica
// found the store empty, and keeps what an operator changed on it while Redis was away.
import t from 'tap';
import { Redis } from 'ioredis';
import { ADMIN_TOKEN, json, startTestBroker, type TestBroker } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { startRedis } from '../helpers/redis.ts';

const redis = await startRedis(t);
/** The fleet doc's fingerprint in the store, once a replica wrote one. */
const storedFileHash = async (): Promise<string | undefined> => {
  const r = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 0 });
  try {
    await r.connect();
    const doc = await r.hget('eb:doc', 'fleet');
    return doc === null ? undefined : (JSON.parse(doc) as { fileHash?: string }).fileHash;
  } catch {
    return undefined;
  } finally {
    r.disconnect();
  }
};
const up = await startMock(t);
const fleetWith = (maxQueue: number) => ({ scheduler: { maxQueue }, modelGroups: { g: { deployments: [{ id: 'd1', provider: 'openai', url: up.url, model: 'm' }, { id: 'd2', provider: 'openai', url: up.url, model: 'm' }] } } });
const env = { INFER_ENABLED: 'false', REDIS_URL: redis.url, FLEET_HEALTH_CHECKS: 'false' };

async function call(tb: TestBroker, method: string, path: string, body?: unknown): Promise<{ status: number; body: any }> {
  const res = await fetch(`${tb.url}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) }, body: body === undefined ? undefined : JSON.stringify(body) });
  return { status: res.status, body: await json(res) };
}
const queueOf = async (tb: TestBroker): Promise<unknown> => (await call(tb, 'GET', '/api/orchestrator/config')).body.scheduler?.maxQueue;
const stateOf = async (tb: TestBroker, id: string): Promise<string> => (await call(tb, 'GET', '/api/orchestrator/servers')).body.servers.find((s: any) => s.id === id).state;

async function until(cond: () => Promise<boolean>, what: string, ms = 8000): Promise<void> {
  const start = Date.now();
  while (Date.now() - start < ms) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}

t.test('the first replica found the store empty; one started with an edited file puts it in force on both', async (t) => {
  const a = await startFleetBroker(t, fleetWith(10), { ...env, REPLICA_ID: 'a' });
  await until(async () => (await storedFileHash()) !== undefined, "a's doc in the store");
  const first = await storedFileHash();
  const n = await startFleetBroker(t, fleetWith(55), { ...env, REPLICA_ID: 'n' });
  for (const tb of [n, a]) await until(async () => (await queueOf(tb)) === 55, 'the edited file on both');
  // It stays so: the first replica does not put its older file back on the next change it reads.
  await new Promise((r) => setTimeout(r, 300));
  t.same([await queueOf(a), await queueOf(n)], [55, 55]);
  t.not(await storedFileHash(), first, "the store's doc names the edited file");
});

t.test('started with an edited file while Redis hung: the file goes in force when it answers, with the drain made meanwhile', async (t) => {
  const a = await startFleetBroker(t, fleetWith(55), { ...env, REPLICA_ID: 'a2' });
  await until(async () => (await queueOf(a)) === 55, 'a2 on the shared config');
  redis.freeze();
  t.teardown(() => redis.thaw());
  const m = await startFleetBroker(t, fleetWith(66), { ...env, REPLICA_ID: 'm' });
  t.equal((await call(m, 'POST', '/api/orchestrator/servers/d2/drain')).status, 200, 'drained on m while Redis does not answer');
  redis.thaw();
  for (const tb of [m, a]) await until(async () => (await queueOf(tb)) === 66 && (await stateOf(tb, 'd2')) === 'draining', "m's file and drain on both", 20000);
  t.pass("m's file and its drain are in force on both");
});

// POST /config/save writes the running config to the file; a replica restarted with that file
// is not an edited one: it takes the running config, changes made after the save included (it
// put the saved config back on every replica, undoing them).
t.test('a replica restarted with the file /config/save wrote keeps the changes made after the save, on every replica', async (t) => {
  const a = await startFleetBroker(t, fleetWith(30), { ...env, REPLICA_ID: 'sa' });
  await until(async () => (await queueOf(a)) === 30, 'a on its file');
  const b = await startFleetBroker(t, fleetWith(30), { ...env, REPLICA_ID: 'sb' });
  t.equal((await call(b, 'PATCH', '/api/orchestrator/config/queue', { maxSize: 31 })).status, 200);
  await until(async () => (await queueOf(a)) === 31, 'the change on a');
  const saved = await call(a, 'POST', '/api/orchestrator/config/save');
  t.equal(saved.status, 200, 'saved');
  t.equal((await call(b, 'PATCH', '/api/orchestrator/config/queue', { maxSize: 32 })).status, 200);
  await until(async () => (await queueOf(a)) === 32, 'the change after the save on a');
  const path = a.broker.config.brokerConfigPath!;
  await a.close();
  const again = await startTestBroker({ BROKER_CONFIG: path, ...env, REPLICA_ID: 'sa' });
  t.teardown(() => again.close());
  await until(async () => (await queueOf(again)) === 32, 'the restarted replica on the running config');
  await new Promise((r) => setTimeout(r, 300));
  t.same([await queueOf(again), await queueOf(b)], [32, 32], 'nothing undone on either');

  // The saved file edited by hand is an edit again: it goes in force on both.
  const edited = await startFleetBroker(t, fleetWith(33), { ...env, REPLICA_ID: 'sc' });
  for (const tb of [edited, b, again]) await until(async () => (await queueOf(tb)) === 33, 'an edited file on every replica');
  t.pass('an edited file still wins');
});

// A replica started with another file replaces the model groups of every other replica: each
// of them says so (only the replica that put its file in force said anything).
t.test('a replica whose groups another replica replaced says so, naming what came and went', async (t) => {
  const groups = (names: string[]) => ({ modelGroups: Object.fromEntries(names.map((g) => [g, { deployments: [{ id: `${g}-1`, provider: 'openai', url: up.url, model: 'm' }] }])) });
  const a = await startFleetBroker(t, groups(['keep', 'old']), { ...env, REPLICA_ID: 'ga' });
  await until(async () => (await call(a, 'GET', '/v1/models')).status === 200, 'a serving');
  const b = await startFleetBroker(t, groups(['keep', 'new']), { ...env, REPLICA_ID: 'gb' });
  await until(async () => a.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('a config from another replica')), "a's line");
  const line = a.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('a config from another replica'))!;
  t.equal(line.level, 40, 'a warning: its groups changed');
  t.match(line, { groups_added: ['new'], groups_removed: ['old'], servers_added: ['new-1'], servers_removed: ['old-1'], file_hash: String });
  t.not(line.file_hash, line.file_hash_before, 'the file in force is not the one it started with');
  t.notOk(b.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('a config from another replica')), 'the replica whose file it is says nothing of the kind');
});
