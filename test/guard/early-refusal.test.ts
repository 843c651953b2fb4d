// A request the control plane serves (admin routes, OIP v2 inference) reached it only once the
// data-plane thread had read its whole body: a caller with no credential could hold 8 MB per
// connection (30 stalled bodies took a broker from 144 to 373 MiB) before its 401. Refused now
// on the thread, before the body is read.
import t from 'tap';
import { connect } from 'node:net';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const mock = await startMock(t);
const tb = await startFleetBroker(t, { modelGroups: { g: { deployments: [{ id: 'd', provider: 'openai', url: mock.url, model: 'm' }] } }, apiKeys: { 'sk-good': {} } }, { AUTH_MODE: 'keys', FRONT_THREADS: '1' });
const port = Number(new URL(tb.url).port);

/** Sends only the headers of a large body; what comes back within 3 s, the body never sent. */
const headersOnly = (path: string, extra = ''): Promise<string> =>
  new Promise((resolve) => {
    let out = '';
    const s = connect(port, '127.0.0.1', () => s.write(`POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8000000\r\n${extra}\r\n`));
    s.on('data', (d) => (out += d.toString('latin1')));
    const done = (): void => {
      s.destroy();
      resolve(out);
    };
    s.on('close', done);
    setTimeout(done, 3000).unref();
  });

t.test('an admin route without Authorization is 401 before its body', async (t) => {
  const reply = await headersOnly('/api/orchestrator/servers/add');
  t.match(reply, /^HTTP\/1\.1 401/);
  t.match(reply, /admin routes need Authorization/);
});

t.test('a v2 inference with no credential, or an unknown key, is 401 before its body', async (t) => {
  t.match(await headersOnly('/v2/models/mnist/infer'), /^HTTP\/1\.1 401/);
  t.match(await headersOnly('/v2/models/mnist/infer', 'Authorization: Bearer sk-unknown\r\n'), /^HTTP\/1\.1 401/);
});

t.test('a known credential still gets its body read and judged by the control plane', async (t) => {
  t.equal(await headersOnly('/v2/models/mnist/infer', 'Authorization: Bearer sk-good\r\n'), '', 'nothing before the body (it is waited for)');
  t.equal(await headersOnly('/api/orchestrator/servers/add', 'Authorization: Bearer wrong\r\n'), '', 'an admin credential is the control plane\'s to judge');
  const res = await fetch(`${tb.url}/v2/models/mnist`, { headers: { authorization: 'Bearer sk-good' } });
  t.not(res.status, 401);
});
