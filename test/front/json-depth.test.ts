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
});
