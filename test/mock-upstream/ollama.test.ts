import t, { type Test } from 'tap';
import { createMockUpstream, mockText } from '../../src/mock-upstream/server.ts';
import { parseNdjson } from '../../src/mock-upstream/wire.ts';

const mock = await createMockUpstream({ tokens: 5, models: ['llama3.2', 'qwen:0.5b'] });
t.teardown(() => mock.close());

interface Line {
  model: string;
  created_at: string;
  message?: { role: string; content: string };
  response?: string;
  done: boolean;
  done_reason?: string;
  total_duration?: number;
  load_duration?: number;
  prompt_eval_count?: number;
  prompt_eval_duration?: number;
  eval_count?: number;
  eval_duration?: number;
}

// Wire bodies are checked field by field.
const json = (res: Response): Promise<any> => res.json();

function post(path: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(mock.url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

const messages = [{ role: 'user', content: 'why is the sky blue?' }]; // 20 chars
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

function checkDoneStats(t: Test, line: Line, promptEvalCount: number, evalCount: number): void {
  t.equal(line.done, true);
  t.equal(line.prompt_eval_count, promptEvalCount);
  t.equal(line.eval_count, evalCount);
  for (const k of ['total_duration', 'load_duration', 'prompt_eval_duration', 'eval_duration'] as const) {
    t.ok(Number.isInteger(line[k]) && line[k]! > 0, `${k} is a positive integer (ns)`);
  }
  t.ok(line.total_duration! >= line.load_duration! + line.prompt_eval_duration! + line.eval_duration!, 'total covers the parts');
}

t.test('/api/chat streams NDJSON by default', async (t) => {
  const res = await post('/api/chat', { model: 'llama3.2', messages });
  t.equal(res.status, 200);
  t.equal(res.headers.get('content-type'), 'application/x-ndjson');
  const { lines, rest } = parseNdjson(await res.text());
  t.equal(rest, '', 'every line ends with a newline');
  const all = lines as Line[];
  t.equal(all.length, 5 + 1);
  for (const l of all.slice(0, 5)) {
    t.same(Object.keys(l), ['model', 'created_at', 'message', 'done']);
    t.equal(l.model, 'llama3.2');
    t.match(l.created_at, ISO);
    t.equal(l.message!.role, 'assistant');
    t.equal(l.done, false);
  }
  t.equal(all.map((l) => l.message!.content).join(''), mockText(5));
  const last = all[5]!;
  t.same(last.message, { role: 'assistant', content: '' });
  t.equal(last.done_reason, 'stop');
  checkDoneStats(t, last, 5, 5);
});

t.test('/api/chat with stream: false gives one object', async (t) => {
  const res = await post('/api/chat', { model: 'qwen:0.5b', messages, stream: false });
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type'), /^application\/json/);
  const body = (await json(res)) as Line;
  t.equal(body.model, 'qwen:0.5b');
  t.match(body.created_at, ISO);
  t.same(body.message, { role: 'assistant', content: mockText(5) });
  t.equal(body.done_reason, 'stop');
  checkDoneStats(t, body, 5, 5);
});

t.test('options.num_predict caps the answer with done_reason "length"', async (t) => {
  const { lines } = parseNdjson(await (await post('/api/chat', { model: 'm', messages, options: { num_predict: 2, temperature: 0 } })).text());
  const all = lines as Line[];
  t.equal(all.length, 3);
  t.equal(all.map((l) => l.message!.content).join(''), 'tok0 tok1 ');
  t.equal(all[2]!.done_reason, 'length');
  t.equal(all[2]!.eval_count, 2);

  const unlimited = (await json(await post('/api/chat', { model: 'm', messages, stream: false, options: { num_predict: -1 } }))) as Line;
  t.equal(unlimited.eval_count, 5, 'num_predict -1 means no limit');
  t.equal(unlimited.done_reason, 'stop');
});

t.test('/api/generate streams "response" fields', async (t) => {
  const res = await post('/api/generate', { model: 'llama3.2', prompt: 'Why is the sky blue?', system: 'be brief' });
  t.equal(res.headers.get('content-type'), 'application/x-ndjson');
  const { lines, rest } = parseNdjson(await res.text());
  t.equal(rest, '');
  const all = lines as Line[];
  t.equal(all.length, 6);
  for (const l of all.slice(0, 5)) t.same(Object.keys(l), ['model', 'created_at', 'response', 'done']);
  t.equal(all.map((l) => l.response).join(''), mockText(5));
  const last = all[5]!;
  t.equal(last.response, '');
  t.equal(last.done_reason, 'stop');
  checkDoneStats(t, last, Math.ceil((20 + 8) / 4), 5);
});

t.test('/api/generate with stream: false and num_predict', async (t) => {
  const body = (await json(await post('/api/generate', { model: 'llama3.2', prompt: 'hi', stream: false, options: { num_predict: 3 } }))) as Line;
  t.equal(body.response, mockText(3));
  t.equal(body.done, true);
  t.equal(body.done_reason, 'length');
  t.notOk('message' in body);
  checkDoneStats(t, body, 1, 3);
});

t.test('no model falls back to the first configured model', async (t) => {
  const body = (await json(await post('/api/generate', { prompt: 'x', stream: false }))) as Line;
  t.equal(body.model, 'llama3.2');
});

t.test('GET /api/tags, /api/ps, /api/version and /', async (t) => {
  const tags = await json(await fetch(mock.url + '/api/tags'));
  t.same(tags.models.map((m: { name: string }) => m.name), ['llama3.2:latest', 'qwen:0.5b']);
  for (const m of tags.models) {
    t.equal(m.model, m.name);
    t.match(m.modified_at, ISO);
    t.type(m.size, 'number');
    t.match(m.digest, /^[0-9a-f]{64}$/);
    t.equal(m.details.format, 'gguf');
  }
  const ps = await json(await fetch(mock.url + '/api/ps'));
  t.equal(ps.models.length, 2);
  for (const m of ps.models) {
    t.ok(Date.parse(m.expires_at) > Date.now(), 'expires in the future');
    t.type(m.size_vram, 'number');
    t.type(m.details.family, 'string');
  }
  const version = await json(await fetch(mock.url + '/api/version'));
  t.type(version.version, 'string');
  t.equal(await (await fetch(mock.url + '/')).text(), 'Ollama is running');
});

t.test('request errors use the Ollama error shape', async (t) => {
  const bad = await post('/api/chat', '{"model": ');
  t.equal(bad.status, 400);
  const body = await json(bad);
  t.same(Object.keys(body), ['error']);
  t.type(body.error, 'string');

  const badMessages = await post('/api/chat', { model: 'm', messages: { role: 'user' } });
  t.equal(badMessages.status, 400);
  t.type((await json(badMessages)).error, 'string');

  const notObject = await post('/api/generate', '"hello"');
  t.equal(notObject.status, 400);
  t.type((await json(notObject)).error, 'string');
});

t.test('a chat with no messages still answers', async (t) => {
  const body = (await json(await post('/api/chat', { model: 'm', stream: false }))) as Line;
  t.equal(body.prompt_eval_count, 0);
  t.equal(body.message!.content, mockText(5));
});
