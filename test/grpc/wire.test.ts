// The gRPC encoder at the end of the compiled chain, and the hand-written protobuf
// messages, decoded with the .proto files (what a client does): every provider and
// kind, upstream bytes split anywhere (inside UTF-8 too), truncation and errors.
import t from 'tap';
import fc from 'fast-check';
import * as protoLoader from '@grpc/proto-loader';
import { compileChain, type ChainSpec } from '../../src/llm/chain/compile.ts';
import { deltaMessage, finalMessage, forEachDelimited, statusDetails } from '../../src/front/grpc/wire.ts';
import { PROTO_FILES, PROTO_ROOT } from '../../src/front/grpc/protos.ts';
import type { Api, Kind } from '../../src/llm/translate/types.ts';
import { TOKENS, ctxFor, splitRandom, prng, upstreamStream } from '../llm/chain/fixtures.suite.ts';
import { statusDetailsOf } from '../helpers/grpc.ts';
import { Metadata } from '@grpc/grpc-js';

const def = protoLoader.loadSync([...PROTO_FILES], { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_ROOT] });
const decode = (def['edge_broker.v1.ChatService'] as any).Chat.responseDeserialize as (b: Buffer) => any;

function messagesOf(out: Uint8Array[]): any[] {
  const all: any[] = [];
  for (const b of out) forEachDelimited(b, (m) => all.push(decode(Buffer.from(m))));
  return all;
}

function run(provider: Api, kind: Kind, chunks: Iterable<Uint8Array>): { messages: any[]; error: { code: string; message: string } | null } {
  const spec: ChainSpec = { client: 'openai', provider, kind, instrument: true, countTokens: true, encoder: 'grpc' };
  const s = compileChain(spec).open(ctxFor());
  const out: Uint8Array[] = [];
  for (const c of chunks) {
    const o = s.push(c);
    if (o !== null) out.push(o as Uint8Array);
  }
  const tail = s.end();
  if (tail !== null) out.push(tail as Uint8Array);
  return { messages: messagesOf(out), error: s.stats.error };
}

const text = (ms: any[]) => ms.filter((m) => m.event === 'delta').map((m) => m.delta.content).join('');

t.test('hand-encoded messages decode with chat.proto, multi-byte lengths and UTF-8 included', async (t) => {
  const long = '日本語 👩‍👩‍👧 '.repeat(2000);
  t.same(messagesOf([deltaMessage('assistant', long)]), [{ event: 'delta', delta: { role: 'assistant', content: long } }]);
  t.same(messagesOf([deltaMessage('', 'x')]), [{ event: 'delta', delta: { role: '', content: 'x' } }]);
  t.same(messagesOf([Buffer.concat([deltaMessage('', 'a'), finalMessage('length', 300, 70_000)])]), [
    { event: 'delta', delta: { role: '', content: 'a' } },
    { event: 'final', final: { finish_reason: 'length', usage: { prompt_tokens: 300, completion_tokens: 70_000, total_tokens: 70_300 } } },
  ]);
  t.same(messagesOf([finalMessage('', 0, 0)]), [{ event: 'final', final: { finish_reason: '', usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 } } }]);
});

t.test('google.rpc.Status details: ErrorInfo always, RetryInfo with fractions of a second', async (t) => {
  const md = new Metadata();
  md.set('grpc-status-details-bin', statusDetails(8, 'slow down ✋', 'capacity_exhausted', 1.5));
  t.same(statusDetailsOf(md), { code: 8, message: 'slow down ✋', reason: 'capacity_exhausted', retryDelayS: 1.5 });
  md.set('grpc-status-details-bin', statusDetails(3, 'bad', 'invalid_request', undefined));
  t.same(statusDetailsOf(md), { code: 3, message: 'bad', reason: 'invalid_request', retryDelayS: undefined });
});

t.test('every provider and kind: deltas then one final, whatever the chunking', async (t) => {
  for (const provider of ['openai', 'ollama'] as const) {
    for (const kind of ['chat', 'completion'] as const) {
      const up = upstreamStream(provider, kind, { tokens: TOKENS, promptTokens: 9, finish: 'length' });
      const whole = run(provider, kind, [up]);
      const name = `${provider} ${kind}`;
      t.equal(text(whole.messages), TOKENS.join(''), `${name}: the text`);
      t.equal(whole.messages.filter((m) => m.event === 'final').length, 1, `${name}: one final`);
      t.equal(whole.messages.at(-1).event, 'final', `${name}: last`);
      t.equal(whole.messages.at(-1).final.finish_reason, 'length', `${name}: finish reason`);
      t.equal(whole.messages.at(-1).final.usage.prompt_tokens, 9, `${name}: usage`);
      t.equal(whole.messages[0].delta.role, kind === 'chat' ? 'assistant' : '', `${name}: role on the first delta of a chat`);
      t.equal(whole.error, null);
      // Split anywhere: the same text and final.
      fc.assert(
        fc.property(fc.integer({ min: 1, max: 2 ** 31 - 1 }), fc.integer({ min: 2, max: 60 }), (seed, pieces) => {
          const r = run(provider, kind, splitRandom(up, prng(seed), pieces));
          return text(r.messages) === TOKENS.join('') && JSON.stringify(r.messages.at(-1)) === JSON.stringify(whole.messages.at(-1));
        }),
        { numRuns: 60 },
      );
      // Byte by byte.
      const bytes = [...up].map((b) => Uint8Array.of(b));
      t.equal(text(run(provider, kind, bytes).messages), TOKENS.join(''), `${name}: byte by byte`);
    }
  }
});

t.test('a truncated stream: no final, the error in stats (the front ends the call UNAVAILABLE)', async (t) => {
  for (const provider of ['openai', 'ollama'] as const) {
    const up = upstreamStream(provider, 'chat', { tokens: TOKENS.slice(0, 3), truncate: true });
    const r = run(provider, 'chat', [up]);
    t.equal(text(r.messages), TOKENS.slice(0, 3).join(''), `${provider}: the tokens before the cut`);
    t.notOk(r.messages.some((m) => m.event === 'final'), `${provider}: no final`);
    t.equal(r.error?.code, 'upstream_error', `${provider}: the error is reported out of band`);
  }
  const s = compileChain({ client: 'openai', provider: 'openai', kind: 'chat', instrument: false, countTokens: true, encoder: 'grpc' }).open(ctxFor());
  t.equal(s.fail('gone', 'upstream_timeout'), '', 'fail() writes nothing into a gRPC stream');
  t.same(s.stats.error, { code: 'upstream_timeout', message: 'gone' });
});

t.test('an OpenAI answer of tool calls ends with finish_reason tool_calls, whether the upstream said none or stop', async (t) => {
  const chunk = (delta: Record<string, unknown>, finish: string | null = null) => `data: ${JSON.stringify({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
  const call = chunk({ role: 'assistant', tool_calls: [{ index: 0, id: 'c1', type: 'function', function: { name: 'f', arguments: '{"a":1}' } }] });
  for (const [said, ending] of [['none', 'data: [DONE]\n\n'], ['stop', chunk({}, 'stop') + 'data: [DONE]\n\n']] as const) {
    const r = run('openai', 'chat', [Buffer.from(call + ending)]);
    t.equal(r.error, null, `${said}: no error`);
    t.equal(r.messages.find((m) => m.event === 'final')?.final.finish_reason, 'tool_calls', `upstream said ${said}`);
  }
  const textOnly = run('openai', 'chat', [Buffer.from(chunk({ role: 'assistant', content: 'hi' }) + chunk({}, 'stop') + 'data: [DONE]\n\n')]);
  t.equal(textOnly.messages.find((m) => m.event === 'final')?.final.finish_reason, 'stop', 'text: the upstream\'s own');
});
