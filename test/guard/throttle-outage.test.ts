// A session that cannot be checked because the shared store is away (AUTH_REDIS_FAIL_MODE
// closed) is refused, but is no wrong credential: a dashboard polling with its session
// through a Redis outage used to lock its address out, ADMIN_TOKEN included.
import t from 'tap';
import { ADMIN_TOKEN, startTestBroker } from '../helpers/broker.ts';
import { freePort } from '../../bench/lib/process.ts';

const port = await freePort();
const tb = await startTestBroker({ REDIS_URL: `redis://127.0.0.1:${port}`, ADMIN_AUTH_MAX_FAILURES: '5', INFER_ENABLED: 'false', FRONT_THREADS: '0' });
t.teardown(() => tb.close());
const get = (token: string) => fetch(`${tb.url}/api/industrial/flags`, { headers: { authorization: `Bearer ${token}` } });

t.test('sessions refused while the store is away do not count against the address', async (t) => {
  for (let i = 0; i < 12; i++) {
    const r = await get('sess_abcdefghijklmnopqrstuvwxyz012345');
    t.equal(r.status, 401);
    const body = (await r.json()) as { error: { message: string } };
    if (i === 0) t.match(body.error.message, /store is unreachable/);
  }
  t.equal((await get(ADMIN_TOKEN)).status, 200, 'ADMIN_TOKEN still works');
});

t.test('wrong credentials still do', async (t) => {
  const statuses: number[] = [];
  for (let i = 0; i < 7; i++) statuses.push((await get('wrong-token')).status);
  t.ok(statuses.includes(429), `throttled: ${statuses}`);
});
