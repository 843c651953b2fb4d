// Malformed LLM bodies get a 400 naming the field, on every client API and provider, and
// the broker keeps serving (they used to reach the translators and give 500).
import t from 'tap';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { createMockUpstream } from '../../src/mock-upstream/server.ts';
import { metricValue, startTestBroker, postJson } from '../helpers/broker.ts';

const mock = await createMockUpstream({ tokens: 3 });
t.teardown(() => mock.close());
const dir = mkdtempSync(join(tmpdir(), 'eb-bad-'));
writeFileSync(
  join(dir, 'broker.yaml'),
  stringify({
    modelGroups: {
      oa: { deployments: [{ id: 'oa-1', provider: 'openai', url: mock.url, model: 'm' }] },
      ol: { deployments: [{ id: 'ol-1', provider: 'ollama', url: mock.url, model: 'm' }] },
    },
  }),
);
const tb = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false' });
t.teardown(() => tb.close());

t.test('JSON nested 100,000 deep: 400, refused before it is parsed; 40 deep: after, by the LLM routes\' own limit', async (t) => {
  const body = `{"model":"oa","messages":[{"role":"user","content":"hi"}],"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`;
  const res = await postJson(`${tb.url}/v1/chat/completions`, body);
  t.equal(res.status, 400);
  t.equal(res.body.error.code, 'invalid_request');
  t.match(res.body.error.message, /nests deeper than 64 levels/, 'the scan before JSON.parse, whose time grows with the depth');
  for (const path of ['/v1/infer', '/v2/models/m/infer', '/api/industrial/flags/bulk']) {
    const r = await postJson(`${tb.url}${path}`, `{"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}`, { authorization: 'Bearer test-admin-token' });
    t.match([r.status, JSON.stringify(r.body)], [400, /nests deeper than 64 levels/], path);
  }
  const forty = await postJson(`${tb.url}/v1/chat/completions`, `{"model":"oa","messages":[{"role":"user","content":"[[[[\\\\"}],"x":${'['.repeat(40)}${']'.repeat(40)}}`);
  t.match([forty.status, forty.body.error.message], [400, /nests deeper than 32 levels/], 'brackets in a string do not count');
});

t.test('650,000 object keys in a 7.7 MB body: 400 before it is parsed (it held a data-plane thread for 2 s); 128 tools with schemas pass', async (t) => {
  const keys = Array.from({ length: 650_000 }, (_, i) => `"k${i}":1`).join(',');
  const res = await postJson(`${tb.url}/v1/chat/completions`, `{"model":"oa","messages":[{"role":"user","content":"hi"}],"x":{${keys}}}`);
  t.equal(res.status, 400);
  t.match(res.body.error, { code: 'invalid_request', message: /more than 100000 object keys/ });
  const schema = { type: 'object', properties: Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`p${i}`, { type: 'string', description: 'x:y' }])) };
  const tools = Array.from({ length: 128 }, (_, i) => ({ type: 'function', function: { name: `f${i}`, parameters: schema } }));
  t.equal((await postJson(`${tb.url}/v1/chat/completions`, { model: 'oa', messages: [{ role: 'user', content: 'a:b' }], tools })).status, 200);
});

t.test('content: [null] to an Ollama group, and other bad messages: 400 naming the field', async (t) => {
  const before = mock.stats.total;
  for (const [api, path] of [['openai', '/v1/chat/completions'], ['ollama', '/api/chat']] as const) {
    const res = await postJson(`${tb.url}${path}`, { model: 'ol', messages: [{ role: 'user', content: [null] }] });
    t.equal(res.status, 400, api);
    t.match(JSON.stringify(res.body), /messages\[0\]\.content\[0\]/);
  }
  const noRole = await postJson(`${tb.url}/v1/chat/completions`, { model: 'oa', messages: [{ content: 'x' }] });
  t.equal(noRole.status, 400);
  // What the vendors' own APIs refuse with a 400, refused here before any upstream sees it.
  const refused: Array<[string, Record<string, unknown>, string]> = [
    ['/v1/chat/completions', { model: 'oa', messages: [{ role: 'user', content: [{ type: 'text' }] }] }, 'messages[0].content[0].text'],
    ['/v1/messages', { model: 'oa', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], tool_choice: 'bogus' }, 'tool_choice'],
    ['/v1/messages', { model: 'oa', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], tool_choice: { type: 'bogus' } }, 'tool_choice.type'],
    ['/v1/messages', { model: 'oa', max_tokens: 5, messages: [{ role: 'user', content: 'x' }], tool_choice: { type: 'tool' } }, 'tool_choice.name'],
    ['/v1/messages', { model: 'oa', max_tokens: 5, messages: [{ role: 'user', content: 'x' }, { role: 'assistant', content: [{ type: 'tool_use', id: 't1', name: 'f', input: 'notobj' }] }] }, 'messages[1].content[0].input'],
    ['/v1/responses', { model: 'oa', input: [{ type: 'function_call', call_id: 'c1', name: 'f', arguments: { a: 1 } }] }, 'input[0].arguments'],
    ['/v1/completions', { model: 'ol', prompt: ['a', 'b'] }, 'prompt'],
  ];
  for (const [path, body, field] of refused) {
    const res = await postJson(`${tb.url}${path}`, body);
    t.equal(res.status, 400, `${path} ${field}`);
    const e = res.body.error;
    t.equal(path === '/v1/messages' ? undefined : e.param, path === '/v1/messages' ? undefined : field, `${path}: the field named`);
    t.match(typeof e === 'string' ? e : e.message, path === '/v1/messages' ? field.split('.')[0] : /./);
  }
  t.equal(mock.stats.total, before, 'nothing reached the upstream');
});

t.test('the broker keeps serving', async (t) => {
  const ok = await postJson(`${tb.url}/v1/chat/completions`, { model: 'ol', messages: [{ role: 'user', content: [{ type: 'text', text: 'hi' }] }] });
  t.equal(ok.status, 200);
});

t.test('LLM_MAX_MESSAGES and LLM_MAX_PROMPT_CHARS refuse oversized prompts before any work', async (t) => {
  const small = await startTestBroker({ BROKER_CONFIG: join(dir, 'broker.yaml'), INFER_ENABLED: 'false', LLM_MAX_MESSAGES: '2', LLM_MAX_PROMPT_CHARS: '100' });
  t.teardown(() => small.close());
  const before = mock.stats.total;
  const many = await postJson(`${small.url}/v1/chat/completions`, { model: 'oa', messages: [1, 2, 3].map(() => ({ role: 'user', content: 'x' })) });
  t.equal(many.status, 400);
  t.match(many.body.error.message, /LLM_MAX_MESSAGES/);
  const long = await postJson(`${small.url}/api/generate`, { model: 'oa', prompt: 'y'.repeat(101) });
  t.equal(long.status, 400);
  t.match(long.body.error, /LLM_MAX_PROMPT_CHARS/);
  t.equal(mock.stats.total, before, 'nothing reached the upstream');
});

// One junk event in every stream of a deployment was one warning line per request (4,943 in 20
// minutes from one deployment): once a minute per deployment now, and the metric counts all.
t.test('a deployment sending junk events: counted every time, logged once a minute', async (t) => {
  const junk = await createMockUpstream({ tokens: 4, fail: 'garbage', failAfter: 2 });
  t.teardown(() => junk.close());
  const d = mkdtempSync(join(tmpdir(), 'eb-junk-'));
  writeFileSync(join(d, 'broker.yaml'), stringify({ modelGroups: { j: { deployments: [{ id: 'junk-1', provider: 'openai', url: junk.url, model: 'm' }] } } }));
  const b = await startTestBroker({ BROKER_CONFIG: join(d, 'broker.yaml'), INFER_ENABLED: 'false', FRONT_THREADS: '0' });
  t.teardown(() => b.close());
  for (let i = 0; i < 5; i++) {
    const res = await fetch(`${b.url}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'j', stream: true, messages: [{ role: 'user', content: 'hi' }] }) });
    t.match(await res.text(), /\[DONE\]/, 'the stream goes on past the junk');
  }
  t.equal(await metricValue(b.url, 'llm_upstream_malformed_events_total', { deployment: 'junk-1' }), 5, 'every junk event counted');
  t.equal(b.logs.filter((l) => String(l['msg']).startsWith('upstream sent events that are not JSON objects')).length, 1, 'one warning');
});
