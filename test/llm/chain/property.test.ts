// Property: the client bytes and the stats do not depend on where the upstream
// stream was split, for every client × provider × kind, and the compiled chain
// and the Transform pipeline agree. Seeded, so a failure names its iteration.

import t from 'tap';
import type { ChainSpec } from '../../../src/llm/chain/compile.ts';
import { runPipeline } from '../../../src/llm/chain/staged-baseline.ts';
import { NdjsonParser } from '../../../src/llm/codec/ndjson.ts';
import { SseParser } from '../../../src/llm/codec/sse.ts';
import type { Api } from '../../../src/llm/translate/types.ts';
import { MALFORMED_RUN_LIMIT, MALFORMED_RUN_MESSAGE } from '../../../src/llm/chain/probe.ts';
import { GARBAGE, ROUTES, TOKENS, clientText, ctxFor, prng, runChain, splitRandom, tokenEvents, upstreamStream, type StreamShape } from './fixtures.suite.ts';

const SEED = 0x5eed;
const ITERATIONS = 400;

function parserEvents(provider: Api, chunks: Uint8Array[]): string[] {
  const out: string[] = [];
  const p =
    provider === 'openai'
      ? new SseParser((ev) => {
          if (!ev.continuation) out.push(`${ev.event}|${ev.data}`);
        })
      : new NdjsonParser((l) => out.push(`${l.terminated}|${l.text}`));
  for (const c of chunks) p.push(c);
  p.end();
  return out;
}

t.test(`random splits, ${ITERATIONS} iterations (seed ${SEED})`, async (t) => {
  const rnd = prng(SEED);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  let checked = 0;
  for (let it = 0; it < ITERATIONS; it++) {
    const route = ROUTES[it % ROUTES.length]!;
    const spec: ChainSpec = { ...route, instrument: rnd() < 0.8, countTokens: rnd() < 0.8 };
    const tokens = Array.from({ length: Math.floor(rnd() * 24) }, () => pick(TOKENS));
    const shape: StreamShape = {
      tokens,
      eol: pick(['\n', '\n', '\r\n', '\r'] as const),
      comments: rnd() < 0.3,
      finish: pick(['stop', 'length'] as const),
      usage: rnd() < 0.8,
      noDone: rnd() < 0.1,
      promptTokens: Math.floor(rnd() * 500),
      extras: rnd() < 0.3,
      // Sometimes garbage frames: a few are dropped, a run of 8 or more ends the stream.
      garbage: rnd() < 0.25 ? { at: Math.floor(rnd() * (tokens.length + 1)), n: 1 + Math.floor(rnd() * 9) } : undefined,
    };
    let up = upstreamStream(route.provider, route.kind, shape);
    const cut = rnd() < 0.2;
    if (cut) up = up.subarray(0, Math.floor(rnd() * up.length));
    const includeUsage = rnd() < 0.5;

    const whole = runChain(spec, ctxFor({ includeUsage }), [up]);
    const pieces = rnd() < 0.05 ? up.length : 1 + Math.floor(rnd() * 16);
    const chunks = splitRandom(up, rnd, pieces);
    const split = runChain(spec, ctxFor({ includeUsage }), chunks);
    const label = `#${it} ${route.client}<-${route.provider}/${route.kind} pieces=${pieces} cut=${cut}`;

    if (!split.bytes.equals(whole.bytes)) {
      t.fail(`${label}: output depends on the split`, { whole: whole.bytes.toString(), split: split.bytes.toString() });
      return;
    }
    t.same(split.stream.stats, whole.stream.stats, `${label}: stats`);
    t.same(parserEvents(route.provider, chunks), parserEvents(route.provider, [up]), `${label}: parser events`);

    const piped = await runPipeline(spec, ctxFor({ includeUsage }), chunks);
    if (!piped.output.equals(whole.bytes)) {
      t.fail(`${label}: pipeline output differs`, { compiled: whole.bytes.toString(), pipeline: piped.output.toString() });
      return;
    }
    t.same(piped.stats, whole.stream.stats, `${label}: pipeline stats`);
    t.equal(piped.truncated, whole.stream.truncated, `${label}: pipeline truncated`);

    for (const g of GARBAGE) t.notOk(whole.bytes.includes(g), `${label}: garbage never reaches the client`);
    const gaveUp = shape.garbage !== undefined && shape.garbage.n >= MALFORMED_RUN_LIMIT;
    if (!cut && gaveUp) {
      t.equal(whole.stream.stats.error?.message, MALFORMED_RUN_MESSAGE, `${label}: a run of garbage ends the stream`);
      t.equal(whole.stream.stats.malformed, MALFORMED_RUN_LIMIT);
      t.equal(clientText(route.client, route.kind, Buffer.from(whole.bytes.toString().replace(/(data: )?\{"error".*\n\n?$/, ''))), tokens.slice(0, shape.garbage!.at).join(''), `${label}: the text before it`);
    }
    if (!cut && !gaveUp) {
      t.equal(whole.stream.stats.malformed, shape.garbage?.n ?? 0, `${label}: garbage counted`);
      t.equal(clientText(route.client, route.kind, whole.bytes), tokens.join(''), `${label}: the client sees the generated text`);
      t.equal(whole.stream.truncated, false, `${label}: not truncated`);
      if (spec.countTokens) t.equal(whole.stream.stats.completionTokens, tokenEvents(route.provider, route.kind, shape), `${label}: tokens`);
    }
    checked++;
  }
  t.equal(checked, ITERATIONS);
});
