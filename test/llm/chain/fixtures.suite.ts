// Shared fixtures for the chain tests (tap lists this file as "no tests found").
// Upstream streams are shaped like the real ones: OpenAI chat.completion.chunk
// and text_completion SSE with the include_usage chunk, Ollama /api/chat and
// /api/generate NDJSON with the done line and its counters.

import { compileChain, type ChainContext, type ChainSpec, type ChainStream } from '../../../src/llm/chain/compile.ts';
import type { Api, Kind } from '../../../src/llm/translate/types.ts';

/** Seeded PRNG (the project's mulberry32): small, good enough to pick split points. */
export { mulberry32 as prng } from '../../../scripts/train/prng.ts';

export const TOKENS = ['héllo', ' 世界', ' 🎉', ' say "hi"', '\n', ' back\\slash', ' tab\t', ' ok', '', ' naïve', ' 日本語', ' 👩‍👩‍👧'];

export interface StreamShape {
  tokens: string[];
  /** SSE line ending. */
  eol?: '\n' | '\r\n' | '\r';
  /** Insert `: keep-alive` comment blocks. */
  comments?: boolean;
  finish?: 'stop' | 'length';
  /** OpenAI: send the include_usage chunk; Ollama: put counters on the done line. */
  usage?: boolean;
  /** Leave out the terminal event ([DONE] / the done line) and what follows the last token. */
  truncate?: boolean;
  /** OpenAI: skip `data: [DONE]` but keep finish and usage. */
  noDone?: boolean;
  promptTokens?: number;
  /** Chat only: two reasoning/thinking tokens first and a tool call last (finish tool_calls on OpenAI). */
  extras?: boolean;
  /** `n` events that are not JSON objects, before token `at` (or at the end of the tokens). */
  garbage?: { at: number; n: number };
}

/** Upstream garbage: data that is not a JSON object (a cut object, text, an array). */
export const GARBAGE = ['{"id":"chatcmpl-9xYz","choices":[', 'upstream hiccup', '[1,2]', '<html>502 Bad Gateway</html>'];

function garbageAt(s: StreamShape, i: number, frame: (data: string) => string): string {
  if (s.garbage === undefined || s.garbage.at !== i) return '';
  let out = '';
  for (let k = 0; k < s.garbage.n; k++) out += frame(GARBAGE[k % GARBAGE.length]!);
  return out;
}

/** Token events the upstream stream carries (what the chain counts without usage). */
export function tokenEvents(provider: Api, kind: Kind, s: StreamShape): number {
  const n = s.tokens.filter((x) => x !== '').length;
  if (kind !== 'chat' || s.extras !== true) return n;
  return n + 2 + (provider === 'openai' ? 2 : 1);
}

const CREATED = 1_722_000_000;

function oaChat(delta: Record<string, unknown>, finish: string | null): string {
  return JSON.stringify({
    id: 'chatcmpl-9xYz',
    object: 'chat.completion.chunk',
    created: CREATED,
    model: 'gpt-4o-mini-2024-07-18',
    system_fingerprint: 'fp_0ba0d124f1',
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
    usage: null,
  });
}

function oaText(text: string, finish: string | null): string {
  return JSON.stringify({
    id: 'cmpl-9xYz',
    object: 'text_completion',
    created: CREATED,
    choices: [{ text, index: 0, logprobs: null, finish_reason: finish }],
    model: 'gpt-3.5-turbo-instruct',
  });
}

function oaUsage(kind: Kind, prompt: number, completion: number): string {
  return JSON.stringify({
    id: kind === 'chat' ? 'chatcmpl-9xYz' : 'cmpl-9xYz',
    object: kind === 'chat' ? 'chat.completion.chunk' : 'text_completion',
    created: CREATED,
    model: kind === 'chat' ? 'gpt-4o-mini-2024-07-18' : 'gpt-3.5-turbo-instruct',
    choices: [],
    usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion },
  });
}

/** An OpenAI-compatible upstream stream (what we get after asking include_usage). */
export function openaiStream(kind: Kind, s: StreamShape): string {
  const eol = s.eol ?? '\n';
  const ev = (data: string): string => 'data: ' + data + eol + eol;
  const extras = kind === 'chat' && s.extras === true;
  let out = '';
  if (kind === 'chat') out += ev(oaChat({ role: 'assistant', content: '', refusal: null }, null));
  if (extras) out += ev(oaChat({ reasoning_content: 'Let me think' }, null)) + ev(oaChat({ reasoning_content: ' about 世界.' }, null));
  s.tokens.forEach((t, i) => {
    out += garbageAt(s, i, ev);
    out += ev(kind === 'chat' ? oaChat({ content: t }, null) : oaText(t, null));
    if (s.comments === true && i % 3 === 1) out += ': keep-alive' + eol + eol;
  });
  out += garbageAt(s, s.tokens.length, ev);
  if (extras) {
    out += ev(oaChat({ tool_calls: [{ index: 0, id: 'call_Qx1', type: 'function', function: { name: 'get_weather', arguments: '' } }] }, null));
    out += ev(oaChat({ tool_calls: [{ index: 0, function: { arguments: '{"city":' } }] }, null));
    out += ev(oaChat({ tool_calls: [{ index: 0, function: { arguments: '"Zürich"}' } }] }, null));
  }
  if (s.truncate === true) return out;
  const finish = extras ? 'tool_calls' : (s.finish ?? 'stop');
  out += ev(kind === 'chat' ? oaChat({}, finish) : oaText('', finish));
  if (s.usage !== false) out += ev(oaUsage(kind, s.promptTokens ?? 11, tokenEvents('openai', kind, s)));
  if (s.noDone !== true) out += ev('[DONE]');
  return out;
}

function olTime(i: number): string {
  return `2024-08-07T03:57:${String(33 + (i % 20)).padStart(2, '0')}.0${String(365888 + i).padStart(6, '0')}Z`;
}

/** An Ollama upstream stream. */
export function ollamaStream(kind: Kind, s: StreamShape): string {
  const extras = kind === 'chat' && s.extras === true;
  let out = '';
  if (extras) {
    for (const [i, th] of ['Let me think', ' about 世界.'].entries()) {
      out += JSON.stringify({ model: 'llama3.2:3b', created_at: olTime(50 + i), message: { role: 'assistant', content: '', thinking: th }, done: false }) + '\n';
    }
  }
  s.tokens.forEach((t, i) => {
    out += garbageAt(s, i, (d) => d + '\n');
    const line =
      kind === 'chat'
        ? { model: 'llama3.2:3b', created_at: olTime(i), message: { role: 'assistant', content: t }, done: false }
        : { model: 'llama3.2:3b', created_at: olTime(i), response: t, done: false };
    out += JSON.stringify(line) + '\n';
  });
  out += garbageAt(s, s.tokens.length, (d) => d + '\n');
  if (extras) {
    // Sometimes with a nested "content" key in the arguments, which a text probe must not mistake for message content.
    const args = s.tokens.length % 2 === 1 ? { city: 'Zürich', content: 'nested "content" key' } : { city: 'Zürich' };
    const call = { function: { name: 'get_weather', arguments: args } };
    out += JSON.stringify({ model: 'llama3.2:3b', created_at: olTime(60), message: { role: 'assistant', content: '', tool_calls: [call] }, done: false }) + '\n';
  }
  if (s.truncate === true) return out;
  const counters =
    s.usage === false
      ? {}
      : {
          total_duration: 4353619900,
          load_duration: 63915300,
          prompt_eval_count: s.promptTokens ?? 11,
          prompt_eval_duration: 246847000,
          eval_count: tokenEvents('ollama', kind, s),
          eval_duration: 4032296000,
        };
  const done =
    kind === 'chat'
      ? { model: 'llama3.2:3b', created_at: olTime(99), message: { role: 'assistant', content: '' }, done_reason: s.finish ?? 'stop', done: true, ...counters }
      : { model: 'llama3.2:3b', created_at: olTime(99), response: '', done: true, done_reason: s.finish ?? 'stop', context: [1, 2, 3], ...counters };
  return out + JSON.stringify(done) + '\n';
}

export function upstreamStream(provider: Api, kind: Kind, s: StreamShape): Buffer {
  return Buffer.from(provider === 'openai' ? openaiStream(kind, s) : ollamaStream(kind, s));
}

/** Split `buf` at `pieces - 1` random points (pieces may be empty). */
export function splitRandom(buf: Uint8Array, rnd: () => number, pieces: number): Uint8Array[] {
  const cuts: number[] = [];
  for (let i = 0; i < pieces - 1; i++) cuts.push(Math.floor(rnd() * (buf.length + 1)));
  cuts.sort((a, b) => a - b);
  const out: Uint8Array[] = [];
  let prev = 0;
  for (const c of cuts) {
    out.push(buf.subarray(prev, c));
    prev = c;
  }
  out.push(buf.subarray(prev));
  return out;
}

export function toBytes(x: Uint8Array | string | null): Buffer {
  if (x === null) return Buffer.alloc(0);
  return typeof x === 'string' ? Buffer.from(x) : Buffer.from(x.buffer, x.byteOffset, x.byteLength);
}

export const ROUTES: Array<{ client: Api; provider: Api; kind: Kind }> = [];
for (const client of ['openai', 'ollama'] as const)
  for (const provider of ['openai', 'ollama'] as const) for (const kind of ['chat', 'completion'] as const) ROUTES.push({ client, provider, kind });

export function ctxFor(overrides: Partial<ChainContext> = {}): ChainContext {
  let t = 0;
  return { model: 'my-model', id: 'req-42', includeUsage: false, now: () => (t += 10), ...overrides };
}

/** Run a compiled chain over `chunks` and end it; the client bytes and the stream. */
export function runChain(spec: ChainSpec, ctx: ChainContext, chunks: Iterable<Uint8Array>): { bytes: Buffer; stream: ChainStream } {
  const stream = compileChain(spec).open(ctx);
  const parts: Buffer[] = [];
  for (const c of chunks) parts.push(toBytes(stream.push(c)));
  parts.push(toBytes(stream.end()));
  return { bytes: Buffer.concat(parts), stream };
}

/** The data payloads of an SSE body, split naively on blank lines (client-side check, independent of the parser). */
export function sseData(body: string): string[] {
  return body
    .split(/\r\n\r\n|\n\n|\r\r/)
    .map((b) =>
      b
        .split(/\r\n|\n|\r/)
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n'),
    )
    .filter((d) => d !== '');
}

/** What a client would show: the generated text in its stream, whatever the API. */
export function clientText(client: Api, kind: Kind, body: Buffer): string {
  const text = body.toString('utf8');
  if (client === 'openai') {
    let s = '';
    for (const d of sseData(text)) {
      if (d === '[DONE]') continue;
      const j = JSON.parse(d) as { choices?: Array<{ text?: string; delta?: { content?: string | null } }> };
      for (const c of j.choices ?? []) s += kind === 'chat' ? (c.delta?.content ?? '') : (c.text ?? '');
    }
    return s;
  }
  let s = '';
  for (const l of text.split('\n')) {
    if (l.trim() === '') continue;
    const j = JSON.parse(l) as { message?: { content?: string }; response?: string };
    s += kind === 'chat' ? (j.message?.content ?? '') : (j.response ?? '');
  }
  return s;
}
