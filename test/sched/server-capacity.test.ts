// A server's maxConcurrency is over all its models: a slot one model frees may serve a
// request for another model waiting on the same server. Before, only the freeing model's
// waiters were woken, and the other model's request waited out its queue time (504)
// beside an idle server.
import t from 'tap';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

t.test('a waiter for model b is served when model a frees the server it shares', async (t) => {
  const m = await startMock(t, { ttftMs: 600, models: ['a', 'b'] });
  const tb = await startFleetBroker(t, {
    servers: [{ id: 'one', provider: 'ollama', url: m.url, maxConcurrency: 1, models: ['a', 'b'] }],
    scheduler: { maxQueue: 100, maxWaitMs: 8_000 },
  }, { INFER_ENABLED: 'false' });
  const ask = async (model: string) => {
    const res = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model, stream: false, messages: [{ role: 'user', content: 'hi' }] }) });
    await res.arrayBuffer();
    return { status: res.status, server: res.headers.get('x-broker-deployment') };
  };
  const first = ask('a');
  await new Promise((r) => setTimeout(r, 150));
  const second = ask('b');
  const [ra, rb] = await Promise.all([first, second]);
  t.equal(ra.status, 200);
  t.equal(rb.status, 200, "b took the slot a freed on the server they share (not a 504 after maxWaitMs)");
});
