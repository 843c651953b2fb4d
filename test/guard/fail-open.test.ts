// AUTH_REDIS_FAIL_MODE=open with the store away: a session this replica saw live passes; one
// it never saw is refused as unknowable (the store cannot say), not as "unknown, expired or revoked".
import t from 'tap';
import { Identity } from '../../src/guard/identity.ts';
import { createMetrics } from '../../src/obs/metrics.ts';
import { createLogger } from '../../src/obs/logger.ts';
import type { SessionRecord, StateStore } from '../../src/state/store.ts';

t.test('fail open: a session seen live passes while the store is away; one never seen says why it is refused', async (t) => {
  const now = Date.now();
  const live: SessionRecord = { subject: 'ann', roles: ['user'], tier: undefined, keyId: undefined, createdAt: now, expiresAt: now + 60_000 };
  let up = true;
  const store = {
    get up() {
      return up;
    },
    getSession: async (id: string) => {
      if (!up) throw new Error('Connection is closed.');
      return id === 'sess_seen' ? live : undefined;
    },
  } as unknown as StateStore;
  const identity = new Identity({ adminToken: undefined, jwt: undefined, store, sessionTtlMs: 60_000, failMode: 'open', metrics: createMetrics({ defaults: false }), logger: createLogger('silent') });
  t.same(await identity.liveSession('sess_seen'), live, 'seen live while the store is up');
  up = false;
  t.same(await identity.liveSession('sess_seen'), live, 'still passes with the store away');
  await t.rejects(identity.liveSession('sess_never'), { code: 'unauthorized', message: /cannot be checked while the shared store is unreachable \(AUTH_REDIS_FAIL_MODE=open accepts only the sessions this replica saw live\)/ });
});
