// The audit trail when the store is away: the log's warning is the change's record, whole.
import t from 'tap';
import { auditTrail } from '../../src/obs/audit.ts';
import type { Logger } from '../../src/obs/logger.ts';
import type { StateStore } from '../../src/state/store.ts';
import type { AdminChange } from '../../src/front/http/dispatch.ts';

t.test('a change the store could not take is in the warning, with who, what and the target', async (t) => {
  const warned: Record<string, unknown>[] = [];
  // At LOG_LEVEL=warn only warnings are written.
  const logger = { info: () => undefined, warn: (o: Record<string, unknown>) => warned.push(o) } as unknown as Logger;
  const store = { appendAudit: () => Promise.reject(new Error('Connection is closed.')) } as unknown as StateStore;
  const change = {
    principal: { subject: 'ops-1', roles: ['admin'] },
    req: { id: 'req-9', method: 'POST', path: '/api/orchestrator/bans', query: '', headers: {}, remoteAddress: '127.0.0.1', startedAt: 0 },
    params: {},
    note: { target: 'm1', after: { banned: true } },
  } as unknown as AdminChange;
  auditTrail(store, logger, 'r3')(change);
  await new Promise((r) => setImmediate(r));
  t.equal(warned.length, 1);
  t.match(warned[0], { subject: 'ops-1', action: 'POST /api/orchestrator/bans', target: 'm1', after: { banned: true }, replica: 'r3', trace_id: 'req-9', err: 'Connection is closed.' });
});
