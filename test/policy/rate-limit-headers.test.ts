import t from 'tap';
import { openaiDuration, rateLimitHeaders } from '../../src/policy/rate-limit-headers.ts';

t.test("durations as OpenAI writes its resets", async (t) => {
  t.equal(openaiDuration(0), '0s');
  t.equal(openaiDuration(0.2), '1ms', 'rounded up: never says "now" while something is left');
  t.equal(openaiDuration(120), '120ms');
  t.equal(openaiDuration(2_500), '2.5s');
  t.equal(openaiDuration(59_999), '59.999s');
  t.equal(openaiDuration(60_000), '1m0s');
  t.equal(openaiDuration(61_250), '1m1.25s');
});

t.test('OpenAI names everywhere; Anthropic names, with an instant, on the Messages API', async (t) => {
  const h = { requests: { limit: 10, remaining: 7, resetMs: 30_500 }, tokens: { limit: 5000, remaining: 4200, resetMs: 1_200 } };
  const now = Date.parse('2026-12-05T10:00:00.000Z');
  t.same(rateLimitHeaders(h, now, false), {
    'x-ratelimit-limit-requests': '10',
    'x-ratelimit-remaining-requests': '7',
    'x-ratelimit-reset-requests': '30.5s',
    'x-ratelimit-limit-tokens': '5000',
    'x-ratelimit-remaining-tokens': '4200',
    'x-ratelimit-reset-tokens': '1.2s',
  });
  const a = rateLimitHeaders(h, now, true);
  t.equal(a['x-ratelimit-remaining-tokens'], '4200');
  t.equal(a['anthropic-ratelimit-requests-limit'], '10');
  t.equal(a['anthropic-ratelimit-requests-remaining'], '7');
  t.equal(a['anthropic-ratelimit-requests-reset'], '2026-12-05T10:00:31Z', 'rounded up to the second');
  t.equal(a['anthropic-ratelimit-tokens-reset'], '2026-12-05T10:00:02Z');
  t.same(rateLimitHeaders({ tokens: { limit: 1, remaining: 0, resetMs: 0 } }, now, false), { 'x-ratelimit-limit-tokens': '1', 'x-ratelimit-remaining-tokens': '0', 'x-ratelimit-reset-tokens': '0s' }, 'only the limited field');
});
