// llm_tokens_total counts what a request is charged (quotas, tracking): a stream or a whole
// reply the client left before the upstream's usage still read the whole prompt, counted as
// admission's estimate (before: 0 prompt tokens for every aborted request, so cost panels built
// on the metric fell short whenever clients left).
import t from 'tap';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { metricValue } from '../helpers/broker.ts';

const mock = await startMock(t, { tokens: 200, tps: 20 });
const tb = await startFleetBroker(
  t,
  {
    modelGroups: {
      slow: { deployments: [{ id: 's-1', provider: 'openai', url: mock.url, model: 'm' }] },
      'slow-ollama': { deployments: [{ id: 's-2', provider: 'ollama', url: mock.url, model: 'm' }] },
      'slow-whole': { deployments: [{ id: 's-3', provider: 'openai', url: mock.url, model: 'm' }] },
    },
  },
  { FRONT_THREADS: '1', INFER_ENABLED: 'false', FLEET_HEALTH_CHECKS: 'false' },
);
// About 100 tokens of prompt by the 4-characters rule.
const messages = [{ role: 'user', content: 'x'.repeat(400) }];

async function leaveAfterFirstBytes(model: string, stream: boolean): Promise<void> {
  const ctl = new AbortController();
  const req = fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', signal: ctl.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, messages, stream }) }).catch(() => null);
  if (stream) {
    const res = await req;
    await res!.body!.getReader().read();
  } else await new Promise((r) => setTimeout(r, 600));
  ctl.abort();
  await req;
}

async function tokens(group: string, direction: string): Promise<number> {
  return metricValue(tb.url, 'llm_tokens_total', { group, direction });
}

/** The group's prompt tokens once the request's outcome is counted (5 s at most). */
async function counted(group: string): Promise<number> {
  for (let i = 0; i < 100; i++) {
    const n = await tokens(group, 'prompt');
    if (n > 0) return n;
    await new Promise((r) => setTimeout(r, 50));
  }
  return 0;
}

t.test('a stream the client left is counted its prompt estimate and the tokens it was sent', async (t) => {
  await leaveAfterFirstBytes('slow', true);
  const prompt = await counted('slow');
  t.ok(prompt >= 90, `prompt tokens counted: ${prompt}`);
  t.ok((await tokens('slow', 'completion')) >= 1, 'and the tokens streamed');
});

t.test('a whole reply (assembled from an Ollama stream) the client left is counted its prompt estimate', async (t) => {
  await leaveAfterFirstBytes('slow-ollama', false);
  const prompt = await counted('slow-ollama');
  t.ok(prompt >= 90, `prompt tokens counted: ${prompt}`);
});

t.test("a whole reply the client left before the upstream's headers (an OpenAI-compatible upstream answers non-streamed requests in one piece) is counted its prompt estimate", async (t) => {
  await leaveAfterFirstBytes('slow-whole', false);
  const prompt = await counted('slow-whole');
  t.ok(prompt >= 90, `prompt tokens counted: ${prompt}`);
  t.equal(await tokens('slow-whole', 'completion'), 0, 'nothing was sent');
});
