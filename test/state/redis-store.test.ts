// The Redis store on its own, against a real redis-server: what replicas read back.
import t from 'tap';
import { RedisStore } from '../../src/state/redis.ts';
import { createLogger } from '../../src/obs/logger.ts';
import { startRedis } from '../helpers/redis.ts';
import type { AuditEntry } from '../../src/state/store.ts';

const redis = await startRedis(t);
const store = new RedisStore({ url: redis.url, replica: 'r1', logger: createLogger('silent') });
await store.connect();
t.teardown(() => store.close());

t.test("revoking a subject's sessions reaches a long one made before a shorter one", async (t) => {
  const now = Date.now();
  const s = (ttlMs: number) => ({ subject: 'bob', roles: ['admin'], tier: undefined, keyId: undefined, createdAt: now, expiresAt: now + ttlMs });
  await store.putSession('sess_long', s(3_600_000));
  await store.putSession('sess_short', s(300));
  await new Promise((r) => setTimeout(r, 600));
  t.equal(await store.deleteSubjectSessions('bob'), 1, 'the hour-long session is found and revoked');
  t.equal(await store.getSession('sess_long'), undefined);
});

t.test('audit filters find an old entry whatever the limit', async (t) => {
  const e = (subject: string, action: string): AuditEntry => ({ at: new Date().toISOString(), replica: 'r1', subject, role: 'admin', action, route: '/x', target: null, before: null, after: null });
  await store.appendAudit(e('zed', 'PUT /api/industrial/flags/output_prediction'));
  for (let i = 0; i < 1200; i++) await store.appendAudit(e('other', 'POST /api/orchestrator/bans'));
  t.equal((await store.readAudit({ subject: 'zed', limit: 5 })).length, 1, 'by subject');
  t.equal((await store.readAudit({ action: 'PUT /api/industrial/flags/output_prediction', limit: 1 })).length, 1, 'by action');
  const newest = await store.readAudit({ limit: 3 });
  t.equal(newest.length, 3);
  t.ok(newest.every((x) => x.subject === 'other'), 'newest first');
  t.equal((await store.readAudit({ subject: 'other', limit: 1100 })).length, 1100, 'across pages');
  t.equal((await store.readAudit({ subject: 'zed', limit: 5, since: Date.now() + 60_000 })).length, 0, 'since');
});
