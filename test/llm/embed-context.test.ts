// An embeddings batch against a group's maxContextTokens: each input is embedded on its own, so
// each must fit, not their sum (Open WebUI's and LangChain's batch ingestion was refused on any
// group that set maxContextTokens); an Ollama client's inputs are truncated by Ollama unless
// it says truncate: false.
import t from 'tap';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';
import { metricValue, postJson } from '../helpers/broker.ts';

t.test('embeddings: the longest input must fit the context window, not the batch', async (t) => {
  const oa = await startMock(t, {});
  const ol = await startMock(t, {});
  const tb = await startFleetBroker(t, {
    modelGroups: {
      emb: { deployments: [{ id: 'emb-oa', provider: 'openai', url: oa.url, model: 'e' }], maxContextTokens: 100 },
      oemb: { deployments: [{ id: 'emb-ol', provider: 'ollama', url: ol.url, model: 'e' }], maxContextTokens: 100 },
    },
  }, { INFER_ENABLED: 'false' });
  const chunk = 'x'.repeat(300); // about 75 tokens
  const batch = await postJson(`${tb.url}/v1/embeddings`, { model: 'emb', input: [chunk, chunk, chunk, chunk] });
  t.equal(batch.status, 200, `four inputs of ~75 tokens under a 100-token window: ${JSON.stringify(batch.body).slice(0, 200)}`);
  t.equal(batch.body.data.length, 4);
  const long = await postJson(`${tb.url}/v1/embeddings`, { model: 'emb', input: [chunk, 'y'.repeat(1000)] });
  t.equal(long.status, 400, 'one input of ~250 tokens does not fit');
  t.match(long.body.error, { code: 'context_length_exceeded', message: /an input \(about 250 tokens\) does not fit/ });
  const ollamaBatch = await postJson(`${tb.url}/api/embed`, { model: 'oemb', input: [chunk, chunk, chunk] });
  t.equal(ollamaBatch.status, 200, 'an Ollama batch too');
  t.equal(ollamaBatch.body.embeddings.length, 3);
  const truncated = await postJson(`${tb.url}/api/embed`, { model: 'oemb', input: ['y'.repeat(1000)] });
  t.equal(truncated.status, 200, "an Ollama client's long input: Ollama truncates it (its default)");
  const strict = await postJson(`${tb.url}/api/embed`, { model: 'oemb', input: ['y'.repeat(1000)], truncate: false });
  t.equal(strict.status, 400, 'with truncate: false it must fit');
  // An Ollama client on an OpenAI-compatible group: its upstream would refuse what Ollama truncates.
  const cut = await postJson(`${tb.url}/api/embed`, { model: 'emb', input: ['short', 'y'.repeat(1000), `${'z'.repeat(399)}😀 tail`] });
  t.equal(cut.status, 200, "an Ollama client's long input on an OpenAI-compatible upstream: cut to the window, as Ollama would");
  t.equal(cut.body.embeddings.length, 3);
  t.same(oa.stats.lastBody, { model: 'e', input: ['short', 'y'.repeat(400), 'z'.repeat(399)], encoding_format: 'float' }, '100 tokens of 4 characters each; never half an emoji');
  const strictOa = await postJson(`${tb.url}/api/embed`, { model: 'emb', input: ['y'.repeat(1000)], truncate: false });
  t.equal(strictOa.status, 400, 'truncate: false: it must fit there too');
  const emptyOne = await postJson(`${tb.url}/api/embed`, { model: 'emb', input: ['a', ''] });
  t.match([emptyOne.status, emptyOne.body.error], [400, /input\[1\] must not be empty/], 'the empty input named by its place');
});

// Ollama's "load the model" for embeddings: no input answers no embeddings, not a 400.
t.test('/api/embed with no input, "" or []: 200 with no embeddings and no upstream call; the legacy route\'s empty prompt too', async (t) => {
  const ol = await startMock(t, {});
  const oa = await startMock(t, {});
  const tb = await startFleetBroker(t, {
    modelGroups: {
      oemb: { deployments: [{ id: 'emb-ol', provider: 'ollama', url: ol.url, model: 'e' }] },
      aemb: { deployments: [{ id: 'emb-oa', provider: 'openai', url: oa.url, model: 'e' }] },
    },
  }, { INFER_ENABLED: 'false' });
  for (const model of ['oemb', 'aemb']) {
    for (const input of [undefined, '', []]) {
      const r = await postJson(`${tb.url}/api/embed`, input === undefined ? { model } : { model, input });
      t.same([r.status, r.body], [200, { model, embeddings: [] }], `${model}, input ${JSON.stringify(input)}`);
    }
    const legacy = await postJson(`${tb.url}/api/embeddings`, { model, prompt: '' });
    t.same([legacy.status, legacy.body], [200, { embedding: [] }], `${model}: /api/embeddings with an empty prompt`);
  }
  t.equal((ol.stats.requests['/api/embed'] ?? 0) + (oa.stats.requests['/v1/embeddings'] ?? 0), 0, 'no upstream call');
  // One outcome each in the group's requests, as every LLM request has.
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'oemb', reason: 'answered_here' }), 4, 'counted in llm_requests_total');
  for (const body of [{ model: 'nope' }, { model: 'nope', input: [] }, { model: 'nope', input: '' }]) {
    const missing = await postJson(`${tb.url}/api/embed`, body);
    t.same([missing.status, missing.body.error], [404, 'model "nope" not found, try pulling it first'], `Ollama's 404 for a model not served, not "input is required": ${JSON.stringify(body)}`);
  }
  const noPrompt = await postJson(`${tb.url}/api/embeddings`, { model: 'oemb' });
  t.same([noPrompt.status, noPrompt.body], [200, { embedding: [] }], 'the legacy route without a prompt: a load, as Ollama takes it');
  t.equal((await postJson(`${tb.url}/api/embeddings`, { model: 'oemb', prompt: 5 })).status, 400, 'a prompt that is not a string is still refused');
});
