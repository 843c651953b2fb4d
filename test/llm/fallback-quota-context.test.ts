// Fallbacks that governance used to short-circuit: a group whose deployments' own quotas are
// spent is "none available" and falls back (it was the client's 429, hiding an upstream 500),
// and maxContextTokens is checked against the output limit a QoS tier capped, not the client's.
import t from 'tap';
import { mockText } from '../../src/mock-upstream/server.ts';
import { metricValue, postJson } from '../helpers/broker.ts';
import { startFleetBroker, startMock } from '../helpers/fleet.ts';

const big = await startMock(t);
const spentUp = await startMock(t);
const down = await startMock(t, { fail: 500 });
const mixedUp = await startMock(t);
const keyedUp = await startMock(t);
const ctxUp = await startMock(t);
const ctxSmallUp = await startMock(t);
const loopUp = await startMock(t);

const dep = (id: string, m: { url: string }, extra: Record<string, unknown> = {}) => ({ id, provider: 'openai', url: m.url, model: `${id}-up`, ...extra });
const tb = await startFleetBroker(
  t,
  {
    apiKeys: { 'sk-capped': { rpm: 1 }, 'sk-rt': { tier: 'realtime' } },
    modelGroups: {
      big: { deployments: [dep('big-1', big)] },
      // Two deployments, one request a minute each: the third request finds both spent.
      spent: { deployments: [dep('spent-1', spentUp, { rpm: 1 }), dep('spent-2', spentUp, { rpm: 1 })], fallbacks: ['big'] },
      // One deployment fails, the other's quota is spent: nothing of the group can serve.
      mixed: { deployments: [dep('mixed-500', down), dep('mixed-rpm', mixedUp, { rpm: 1 })], fallbacks: ['big'] },
      keyed: { deployments: [dep('keyed-1', keyedUp)], fallbacks: ['big'] },
      // Each the other's fallback, one request a minute each: once both are spent, nothing serves.
      'loop-a': { deployments: [dep('loop-a-1', loopUp, { rpm: 1 })], fallbacks: ['loop-b'] },
      'loop-b': { deployments: [dep('loop-b-1', loopUp, { rpm: 1 })], fallbacks: ['loop-a'] },
      // The realtime tier caps output at 2,048 tokens: 2,048 + a short prompt fits 4,096, not 1,000.
      ctx: { deployments: [dep('ctx-1', ctxUp)], maxContextTokens: 4096, contextFallbacks: ['big'] },
      'ctx-alone': { deployments: [dep('ctx-alone-1', ctxUp)], maxContextTokens: 4096 },
      'ctx-small': { deployments: [dep('ctx-small-1', ctxSmallUp)], maxContextTokens: 1000, contextFallbacks: ['big'] },
    },
  },
  { BROKER_FF_QUOTA_ENFORCEMENT: 'true', BROKER_FF_QOS_SWITCHING: 'true', INFER_ENABLED: 'false' },
);

const messages = [{ role: 'user', content: 'hi' }];
const chat = (model: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}) => postJson(`${tb.url}/v1/chat/completions`, { model, messages, ...extra }, headers);

t.test("a group whose deployments' quotas are all spent falls back, not a 429", async (t) => {
  for (let i = 0; i < 2; i++) {
    const r = await chat('spent');
    t.equal(r.status, 200, `request ${i + 1}: within a deployment's rpm`);
    t.equal(r.headers.get('x-broker-fallback'), null, `request ${i + 1}: served by the group itself`);
  }
  t.equal(spentUp.stats.total, 2, 'one request on each deployment');
  const before = big.stats.total;
  const r = await chat('spent');
  t.equal(r.status, 200, 'served, not quota_exceeded');
  t.equal(r.headers.get('x-broker-fallback'), 'big');
  t.match(r.body, { choices: [{ message: { content: mockText(4) } }] }, "big's reply");
  t.equal(big.stats.total, before + 1, "big's upstream answered");
  t.equal(spentUp.stats.total, 2, 'no call to a deployment over its rpm');
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'spent', to: 'big', reason: 'failure' }), 1, 'counted as a fallback for failure');
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'spent', reason: 'quota_exceeded' }), 0, "no client's quota refusal counted");
  t.equal(await metricValue(tb.url, 'broker_quota_rejections_total', { subject: 'deployment' }), 0, 'nor a quota rejection: the request was served');
});

t.test('quotas spent in the group and in its fallbacks: 429 quota_exceeded, counted as such', async (t) => {
  t.equal((await chat('loop-a')).status, 200);
  t.equal((await chat('loop-b')).status, 200);
  const r = await chat('loop-a');
  t.equal(r.status, 429);
  t.equal(r.body.error.code, 'quota_exceeded');
  t.ok(Number(r.headers.get('retry-after')) > 0, 'with Retry-After');
  t.equal(loopUp.stats.total, 2, 'no call over an rpm');
  t.equal(await metricValue(tb.url, 'llm_requests_total', { reason: 'quota_exceeded', outcome: 'client_error' }), 1, "a quota refusal, not the broker's failure");
  t.equal(await metricValue(tb.url, 'llm_requests_total', { reason: 'no_deployment' }), 0);
  t.equal(await metricValue(tb.url, 'broker_quota_rejections_total', { subject: 'deployment' }), 1, 'one quota rejection');
});

t.test("one deployment answers 500, the other's quota is spent: the fallback group answers", async (t) => {
  // Spend mixed-rpm's one request (whichever deployment goes first, it serves this one).
  const first = await chat('mixed');
  t.equal(first.status, 200);
  t.equal(mixedUp.stats.total, 1, "mixed-rpm's rpm is spent");
  const downBefore = down.stats.total;
  const bigBefore = big.stats.total;
  const r = await chat('mixed');
  t.equal(down.stats.total, downBefore + 1, 'mixed-500 was tried (the only one with quota left)');
  t.equal(r.status, 200, 'not the 429 that hid the upstream 500');
  t.equal(r.headers.get('x-broker-fallback'), 'big');
  t.equal(big.stats.total, bigBefore + 1);
  t.equal(mixedUp.stats.total, 1, 'no call over the rpm');
  // The upstream's 500 is no client error: neither outcome client_error nor reason quota_exceeded.
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'mixed', outcome: 'client_error' }), 0, 'no client_error counted for mixed');
  t.equal(await metricValue(tb.url, 'llm_requests_total', { group: 'mixed', reason: 'quota_exceeded' }), 0, 'no quota_exceeded counted for mixed');
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'mixed', to: 'big', reason: 'failure' }), 1);
});

t.test("an API key's own quota is the client's 429: no fallback takes it", async (t) => {
  const key = { authorization: 'Bearer sk-capped' };
  t.equal((await chat('keyed', {}, key)).status, 200);
  const bigBefore = big.stats.total;
  const r = await chat('keyed', {}, key);
  t.equal(r.status, 429);
  t.equal(r.body.error.code, 'quota_exceeded');
  t.ok(Number(r.headers.get('retry-after')) > 0, 'Retry-After says when');
  t.equal(r.headers.get('x-broker-fallback'), null, 'not sent on to big');
  t.equal(big.stats.total, bigBefore, "big's upstream was not asked");
  t.equal(keyedUp.stats.total, 1);
});

t.test('maxContextTokens is checked against the output limit the QoS tier capped', async (t) => {
  const rt = { authorization: 'Bearer sk-rt' };
  const bigBefore = big.stats.total;
  // max_tokens 100,000 on a 4,096-token group: the realtime tier sends 2,048 upstream, which fits.
  const r = await chat('ctx', { max_tokens: 100_000 }, rt);
  t.equal(r.status, 200);
  t.equal(r.headers.get('x-broker-fallback'), null, 'served by ctx, not its contextFallbacks');
  t.equal(ctxUp.stats.total, 1, "ctx's upstream answered");
  t.match(ctxUp.stats.lastBody, { max_tokens: 2048 }, 'with the capped limit');
  t.equal(big.stats.total, bigBefore);
  // Without contextFallbacks the same request was refused 400 context_length_exceeded.
  const alone = await chat('ctx-alone', { max_tokens: 100_000 }, rt);
  t.equal(alone.status, 200, 'no context_length_exceeded');
  t.equal(ctxUp.stats.total, 2);
  // Anthropic's Messages: its required max_tokens, capped alike.
  const msg = await postJson(`${tb.url}/v1/messages`, { model: 'ctx-alone', max_tokens: 100_000, messages }, rt);
  t.equal(msg.status, 200, 'Messages: no context_length_exceeded');
  t.equal(ctxUp.stats.total, 3);
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'ctx', reason: 'context_window' }), 0);

  // Even capped, 2,048 does not fit 1,000: contextFallbacks, without a call to the small group.
  const small = await chat('ctx-small', { max_tokens: 100_000 }, rt);
  t.equal(small.status, 200);
  t.equal(small.headers.get('x-broker-fallback'), 'big');
  t.equal(ctxSmallUp.stats.total, 0);
  // A standard-tier client (no cap) asking 100,000 does not fit ctx either: its fallback serves it.
  const uncapped = await chat('ctx', { max_tokens: 100_000 });
  t.equal(uncapped.headers.get('x-broker-fallback'), 'big', 'uncapped: the client limit counts');
  t.equal(big.stats.total, bigBefore + 2);
  t.equal(await metricValue(tb.url, 'llm_fallbacks_total', { from: 'ctx', to: 'big', reason: 'context_window' }), 1);
});

t.test('Responses truncation "auto" keeps the turns that fit with the capped output limit', async (t) => {
  const rt = { authorization: 'Bearer sk-rt' };
  // Three turns of about 250 tokens each, 100,000 output tokens asked: uncapped nothing fits
  // 4,096 but the last turn; with the realtime tier's 2,048 the whole conversation does.
  const turn = (i: number) => [
    { role: 'user', content: `${i} `.repeat(500) },
    { role: 'assistant', content: `answer ${i}` },
  ];
  const input = [...turn(1), ...turn(2), { role: 'user', content: 'last '.repeat(200) }];
  const before = ctxUp.stats.total;
  const r = await postJson(`${tb.url}/v1/responses`, { model: 'ctx-alone', input, max_output_tokens: 100_000, truncation: 'auto' }, rt);
  t.equal(r.status, 200);
  t.equal(ctxUp.stats.total, before + 1);
  const sent = ctxUp.stats.lastBody as { messages: unknown[]; max_tokens?: number; max_completion_tokens?: number };
  t.equal(sent.messages.length, 5, 'no turn dropped');
  t.equal(sent.max_tokens ?? sent.max_completion_tokens, 2048, 'the capped limit went upstream');
});
