import t from 'tap';
import { nestsDeeper, parseJsonBody } from '../../src/front/json-depth.ts';

const b = (s: string) => Buffer.from(s);

t.test('depth is counted outside strings only, escapes included', async (t) => {
  t.equal(nestsDeeper(b('[[[]]]'), 3), false, 'exactly the limit');
  t.equal(nestsDeeper(b('[[[[]]]]'), 3), true);
  t.equal(nestsDeeper(b('{"a":{"b":[1]}}'), 3), false);
  t.equal(nestsDeeper(b('{"a":{"b":[{}]}}'), 3), true);
  t.equal(nestsDeeper(b('["[[[[[[", "{{{{"]'), 1), false, 'brackets in strings');
  t.equal(nestsDeeper(b('["a\\\\"[[[[]]]]]'), 2), true, 'an escaped backslash ends its string: the brackets after it count');
  t.equal(nestsDeeper(b('["a\\"[[[[]]]]"]'), 2), false, 'an escaped quote does not end the string');
  t.equal(nestsDeeper(b('[[[[ "unterminated'), 9), false, 'malformed: left to JSON.parse');
  t.equal(nestsDeeper(b('[[[[' + '"x"' + ']]]]' + '[[[[[['), 5, 0, 11), false, 'only the range asked (a v2 JSON header before its binary data)');
});

t.test('parseJsonBody: too deep is invalid_request; bad JSON is the parse error', async (t) => {
  t.same(parseJsonBody(b('{"a":[1,2]}')), { a: [1, 2] });
  t.throws(() => parseJsonBody(b('['.repeat(65) + ']'.repeat(65))), { code: 'invalid_request', message: /nests deeper than 64 levels/ });
  t.same(parseJsonBody(b('['.repeat(64) + ']'.repeat(64))) !== undefined, true, '64 levels parse');
  t.throws(() => parseJsonBody(b('{"a":')), SyntaxError);
  const keys = (n: number) => b(`{${Array.from({ length: n }, (_, i) => `"k${i}":[1,2]`).join(',')}}`);
  t.equal(Object.keys(parseJsonBody(keys(100_000)) as object).length, 100_000, '100,000 keys parse');
  t.throws(() => parseJsonBody(keys(100_001)), { code: 'invalid_request', message: /more than 100000 object keys/ });
  t.same(parseJsonBody(b(`{"a":"${':'.repeat(200_000)}","n":[${'1,'.repeat(200_000)}1]}`)) !== undefined, true, 'colons in strings and array values do not count');
});

t.test("a client's tool-call arguments nested past the limit are kept as text, not parsed (Ollama upstream)", async (t) => {
  const { chatRequest } = await import('../../src/llm/translate/openai_to_ollama.ts');
  const deep = '['.repeat(5000) + ']'.repeat(5000);
  const call = (args: string) => ({ model: 'g', messages: [{ role: 'assistant', content: null, tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: args } }] }] });
  // JSON.parse's time is what a deep text costs: it must not be handed one.
  const parse = JSON.parse;
  const parsed: string[] = [];
  JSON.parse = ((text: string, reviver?: Parameters<typeof JSON.parse>[1]) => (parsed.push(text), parse(text, reviver))) as typeof JSON.parse;
  let sent: { messages: { tool_calls: { function: { arguments: unknown } }[] }[] };
  try {
    sent = chatRequest(call(deep), 'm') as unknown as typeof sent;
  } finally {
    JSON.parse = parse;
  }
  t.notOk(parsed.includes(deep), 'never given to JSON.parse');
  t.same(sent.messages[0]!.tool_calls[0]!.function.arguments, { arguments: deep });
  // Keys count too, over every call of the request: many small ones add up as one large one does.
  const keys = (n: number) => `{${Array.from({ length: n }, (_, i) => `"k${i}":1`).join(',')}}`;
  const many = { model: 'g', messages: [{ role: 'assistant', content: null, tool_calls: Array.from({ length: 3 }, (_, i) => ({ id: `c${i}`, type: 'function', function: { name: 'f', arguments: keys(40_000) } })) }] };
  const split = chatRequest(many, 'm') as unknown as typeof sent;
  const args = split.messages[0]!.tool_calls.map((c) => c.function.arguments as Record<string, unknown>);
  t.equal(Object.keys(args[0]!).length, 40_000, 'within the budget: parsed');
  t.equal(Object.keys(args[1]!).length, 40_000);
  t.same(args[2], { arguments: keys(40_000) }, 'past 100,000 keys in all: kept as text');
  const ok = chatRequest(call('{"a":[1,{"b":2}]}'), 'm') as unknown as typeof sent;
  t.same(ok.messages[0]!.tool_calls[0]!.function.arguments, { a: [1, { b: 2 }] }, 'an ordinary object is parsed');
});
