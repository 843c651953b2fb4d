// POST /api/show for a group served by an Ollama: asked of that server at the deployment's own
// base path (an Ollama behind a gateway's /ollama prefix), with the deployment's key; an
// Ollama that does not answer leaves the broker's own description.
import t from 'tap';
import { createServer } from 'node:http';
import type { ModelGroupConfig } from '../../src/config/broker-config.ts';
import { showModel } from '../../src/llm/ollama-show.ts';

const seen: Array<{ path: string; auth: string | undefined; body: string }> = [];
const server = createServer((req, res) => {
  let body = '';
  req.on('data', (c: Buffer) => (body += c.toString()));
  req.on('end', () => {
    seen.push({ path: req.url!, auth: req.headers.authorization, body });
    if (req.url === '/odd/api/show') {
      // A gateway's shapes: the window as a string, no model_info, num_ctx in the parameters.
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ parameters: 'stop "<end>"\nnum_ctx 32768', modelfile: 'FROM x\nPARAMETER num_ctx 32768\n' }));
      return;
    }
    if (req.url === '/str/api/show') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ model_info: { 'qwen2.context_length': '131072' } }));
      return;
    }
    if (req.url !== '/gw/api/show') {
      res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"404 page not found"}');
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ template: '{{ .Prompt }}<end>', model_info: { 'llama.context_length': 8192 } }));
  });
});
await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
t.teardown(() => new Promise<void>((r) => server.close(() => r())));
const port = (server.address() as { port: number }).port;

const group = (url: string): ModelGroupConfig =>
  ({ name: 'g', deployments: [{ id: 'd', server: 'd', provider: 'ollama', url, model: 'llama3:8b', apiKey: 'sk-ollama-gw', apiKeyEnv: 'K', concurrencyLimit: 4, weight: 1 }], maxContextTokens: 4096 }) as unknown as ModelGroupConfig;

t.test("the Ollama's own description, asked at the deployment's base path with its key", async (t) => {
  const shown = await showModel(group(`http://127.0.0.1:${port}/gw`), 'g');
  // The group lets 4,096 tokens through: a client that sizes its prompts by the window
  // (Continue) must not be told the model's 8,192.
  t.match(shown, { template: '{{ .Prompt }}<end>', model_info: { 'llama.context_length': 4096 } });
  t.same(seen.at(-1), { path: '/gw/api/show', auth: 'Bearer sk-ollama-gw', body: JSON.stringify({ model: 'llama3:8b' }) }, "the upstream's own model name, under the prefix");
  const wide = await showModel({ ...group(`http://127.0.0.1:${port}/gw`), maxContextTokens: 32_768 } as ModelGroupConfig, 'g');
  t.match(wide, { model_info: { 'llama.context_length': 8192 } }, "a group window above the model's: the model's");
  const odd = await showModel(group(`http://127.0.0.1:${port}/odd`), 'g');
  t.same(odd.model_info, { 'edge-broker.context_length': 4096 }, 'no model_info: the group window said');
  t.equal(odd.parameters, 'stop "<end>"\nnum_ctx 4096', 'num_ctx, which Continue reads first');
  t.equal(odd.modelfile, 'FROM x\nPARAMETER num_ctx 4096\n');
  const str = await showModel(group(`http://127.0.0.1:${port}/str`), 'g');
  t.same(str.model_info, { 'qwen2.context_length': 4096 }, 'a window sent as a string');
});

t.test('an Ollama that does not know the path: the description made from the fleet file', async (t) => {
  const shown = await showModel(group(`http://127.0.0.1:${port}/elsewhere`), 'g');
  t.equal(seen.at(-1)?.path, '/elsewhere/api/show');
  t.match(shown, { model_info: { 'general.architecture': 'edge-broker', 'edge-broker.context_length': 4096 }, capabilities: ['completion', 'tools'] });
});
