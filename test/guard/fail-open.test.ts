// AUTH_REDIS_FAIL_MODE=open with the store away: a session this replica saw live passes; one
// it never saw is refused as unknowable (the store cannot say), not as "unknown, expired or revoked".
import t from 'tap';
import { Identity } from '../../src/guard/identity.ts';
import { createMetrics } from '../../src/obs/metrics.ts';
import { createLogger } from '../../src/obs/logger.ts';
import type { Revoked, SessionRecord, StateStore } from '../../src/state/store.ts';

t.test('fail open: a session seen live passes while the store is away; one never seen says why it is refused', async (t) => {
  const now = Date.now();
  const live: SessionRecord = { subject: 'ann', roles: ['user'], tier: undefined, keyId: undefined, createdAt: now, expiresAt: now + 60_000 };
  let up = true;
  let revoked: (r: Revoked) => void = () => undefined;
  const store = {
    get up() {
      return up;
    },
    getSession: async (id: string) => {
      if (!up) throw new Error('Connection is closed.');
      return id.startsWith('sess_seen') ? live : undefined;
    },
    onRevoked: (cb: (r: Revoked) => void) => (revoked = cb),
  } as unknown as StateStore;
  const identity = new Identity({ adminToken: undefined, jwt: undefined, store, sessionTtlMs: 60_000, failMode: 'open', metrics: createMetrics({ defaults: false }), logger: createLogger('silent') });
  t.same(await identity.liveSession('sess_seen'), live, 'seen live while the store is up');
  up = false;
  t.same(await identity.liveSession('sess_seen'), live, 'still passes with the store away');
  await t.rejects(identity.liveSession('sess_never'), { code: 'unauthorized', message: /cannot be checked while the shared store is unreachable \(AUTH_REDIS_FAIL_MODE=open accepts only the sessions this replica saw live\)/ });

  // Revoked on another replica before the store went away: forgotten here, so refused now.
  up = true;
  for (const id of ['sess_seen', 'sess_seen_2', 'sess_seen_3']) await identity.liveSession(id);
  revoked({ ids: ['sess_seen'] });
  revoked({ subject: 'nobody' });
  up = false;
  await t.rejects(identity.liveSession('sess_seen'), { code: 'unauthorized' }, 'revoked by id elsewhere');
  t.same(await identity.liveSession('sess_seen_2'), live, 'the others still pass');
  revoked({ subject: 'ann' });
  await t.rejects(identity.liveSession('sess_seen_2'), { code: 'unauthorized' }, "all of a subject's revoked elsewhere");
  up = true;
  await identity.liveSession('sess_seen_3');
  revoked({ all: true });
  up = false;
  await t.rejects(identity.liveSession('sess_seen_3'), { code: 'unauthorized' }, 'back from an outage (revocations may have been missed): all forgotten');
});

t.test('fail open: a revocation that arrives while the session is being looked up wins over the lookup, and is not undone by it', async (t) => {
  const now = Date.now();
  const live: SessionRecord = { subject: 'bob', roles: ['user'], tier: undefined, keyId: undefined, createdAt: now, expiresAt: now + 60_000 };
  let up = true;
  let revoked: (r: Revoked) => void = () => undefined;
  // Redis answers "live" for a lookup sent before another replica's revocation reached us.
  let answer: ((s: SessionRecord) => void) | undefined;
  const store = {
    get up() {
      return up;
    },
    getSession: (id: string) => {
      if (!up) return Promise.reject(new Error('Connection is closed.'));
      return id === 'sess_slow' ? new Promise<SessionRecord>((resolve) => (answer = resolve)) : Promise.resolve(live);
    },
    onRevoked: (cb: (r: Revoked) => void) => (revoked = cb),
  } as unknown as StateStore;
  const identity = new Identity({ adminToken: undefined, jwt: undefined, store, sessionTtlMs: 60_000, failMode: 'open', metrics: createMetrics({ defaults: false }), logger: createLogger('silent') });
  const lookup = identity.liveSession('sess_slow');
  revoked({ ids: ['sess_slow'] });
  answer!(live);
  // The revocation was heard before the answer came: refused, whatever Redis said (a store
  // restored from an older dump says the same; replicas remember what they heard revoked).
  t.equal(await lookup, undefined, 'the revocation heard wins over the answer Redis gave');
  up = false;
  await t.rejects(identity.liveSession('sess_slow'), { code: 'unauthorized' }, 'but not kept for the outage');
  // A lookup with no revocation in between is kept, as before.
  up = true;
  await identity.liveSession('sess_other');
  up = false;
  t.same(await identity.liveSession('sess_other'), live);
});
