// A reply's ids are the broker's own: a client (or a proxy in front) that sends a fixed
// X-Request-ID gave every turn of an agent loop the same message id and the same made-up
// tool-call ids (Ollama's calls carry none), with the header's characters in them; the
// request id itself stays the header's, for tracing.
import t from 'tap';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const ANTHROPIC_ID = /^[a-zA-Z0-9_-]+$/;

t.test('a fixed X-Request-ID: fresh reply and tool-call ids each time, the request id kept', async (t) => {
  const mock = await startMock(t, { toolCalls: 1 });
  const plain = await startMock(t, { tokens: 3, fail: 'reset', failAfter: 1 });
  const tb = await startFleetBroker(t, {
    modelGroups: {
      tools: { deployments: [{ id: 'ol', provider: 'ollama', url: mock.url, model: 'mock-model' }] },
      cut: { deployments: [{ id: 'cut', provider: 'ollama', url: plain.url, model: 'mock-model' }] },
    },
  }, { INFER_ENABLED: 'false' });
  const fixed = 'abc/def:ghi';
  const messages = async (stream: boolean): Promise<{ id: string; toolIds: string[]; requestId: string | null }> => {
    const res = await fetch(`${tb.url}/v1/messages`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': fixed },
      body: JSON.stringify({ model: 'tools', max_tokens: 50, stream, tools: [{ name: 'Bash', input_schema: { type: 'object' } }], messages: [{ role: 'user', content: 'x' }] }),
    });
    const text = await res.text();
    t.equal(res.status, 200, text.slice(0, 200));
    if (!stream) {
      const b = JSON.parse(text);
      return { id: b.id, toolIds: b.content.filter((c: any) => c.type === 'tool_use').map((c: any) => c.id), requestId: res.headers.get('x-request-id') };
    }
    const events = text.split('\n').filter((l) => l.startsWith('data: ')).map((l) => JSON.parse(l.slice(6)));
    return {
      id: events.find((e) => e.type === 'message_start').message.id,
      toolIds: events.filter((e) => e.type === 'content_block_start' && e.content_block.type === 'tool_use').map((e) => e.content_block.id),
      requestId: res.headers.get('x-request-id'),
    };
  };
  for (const stream of [false, true]) {
    const a = await messages(stream);
    const b = await messages(stream);
    t.equal(a.requestId, fixed, 'the request id is still the client\'s');
    t.not(a.id, b.id, `two replies, two message ids (stream ${stream})`);
    t.equal(a.toolIds.length, 1);
    t.not(a.toolIds[0], b.toolIds[0], 'and two tool-call ids');
    for (const id of [a.id, ...a.toolIds]) t.match(id, ANTHROPIC_ID, `${id} fits Anthropic's id pattern`);
  }

  // OpenAI chat: a completion id of its own, not chatcmpl-<the header>.
  const chat = async (): Promise<string> => {
    const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': fixed }, body: JSON.stringify({ model: 'tools', messages: [{ role: 'user', content: 'x' }] }) });
    return ((await res.json()) as any).id;
  };
  const c1 = await chat();
  t.not(c1, await chat(), 'two completions, two ids');
  t.not(c1, `chatcmpl-${fixed}`);

  // With no X-Request-ID the completion id still carries the request id the broker made (one id to grep for).
  const res = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tools', messages: [{ role: 'user', content: 'x' }] }) });
  t.equal(((await res.json()) as any).id, `chatcmpl-${res.headers.get('x-request-id')}`);

  // A stream's error event still names the request by the client's id.
  const cut = await fetch(`${tb.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': fixed }, body: JSON.stringify({ model: 'cut', stream: true, messages: [{ role: 'user', content: 'x' }] }) });
  const text = await cut.text();
  const err = text.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6))).find((e) => e.error !== undefined);
  t.equal(err?.error?.request_id, fixed, `the error event's request_id is the client's (${text.slice(-300)})`);
});
