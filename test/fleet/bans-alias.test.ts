// A model goes by two names on Ollama: `llama3` is `llama3:latest`. A ban (or a forced-open
// breaker) on one holds for the other; before, a client asking for `llama3` reached the
// server's `llama3:latest` deployment through a ban on `llama3`.
import t from 'tap';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { ADMIN_TOKEN } from '../helpers/broker.ts';

t.test('a model ban and a forced breaker hold under either of the model\'s names', async (t) => {
  const m = await startMock(t, { models: ['llama3:latest'] });
  const tb = await startFleetBroker(t, {
    servers: [{ id: 'gpu-1', provider: 'ollama', url: m.url, models: ['llama3:latest'] }],
    modelGroups: { chat: { deployments: [{ server: 'gpu-1', model: 'llama3' }] } },
  }, { INFER_ENABLED: 'false' });
  const admin = (method: string, path: string, body?: unknown) => fetch(`${tb.url}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
  const ask = async (model: string) => {
    const res = await fetch(`${tb.url}/api/chat`, { method: 'POST', body: JSON.stringify({ model, stream: false, messages: [{ role: 'user', content: 'hi' }] }) });
    await res.arrayBuffer();
    return res.status;
  };
  t.equal(await ask('chat'), 200, 'served before the ban');
  // Routed by a group, the server's llama3:latest is no group of its own, under either name (docs/fleet.md).
  for (const model of ['llama3', 'llama3:latest']) t.equal(await ask(model), 404, `${model}: not a group of its own`);
  for (const name of ['llama3', 'llama3:latest']) {
    const ban = await admin('POST', `/api/orchestrator/bans/model/${encodeURIComponent(name)}`, { reason: 'bad build' });
    t.equal(ban.status, 200, await ban.text());
    t.equal(await ask('chat'), 503, `refused under the ban on ${name}`);
    t.equal((await admin('DELETE', '/api/orchestrator/bans')).status, 200);
    t.equal(await ask('chat'), 200, 'served again');
  }
  for (const name of ['llama3', 'llama3:latest']) {
    t.equal((await admin('POST', `/api/orchestrator/circuit-breakers/gpu-1/${encodeURIComponent(name)}/open`)).status, 200);
    t.equal(await ask('chat'), 503, `refused with the breaker of gpu-1/${name} forced open`);
    t.equal((await admin('POST', `/api/orchestrator/circuit-breakers/gpu-1/${encodeURIComponent(name)}/reset`)).status, 200);
    t.equal(await ask('chat'), 200, 'served again');
  }
});
