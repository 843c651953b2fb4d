import t from 'tap';
import { NdjsonParser, encodeNdjson, parseNdjson, type NdjsonLine } from '../../../src/llm/codec/ndjson.ts';

interface Seen {
  text: string;
  raw: string;
  terminated: boolean;
}

function collect(chunks: Array<string | Uint8Array>): { lines: Seen[]; flushed: number } {
  const lines: Seen[] = [];
  const p = new NdjsonParser((l: NdjsonLine) => lines.push({ text: l.text, raw: Buffer.from(l.raw).toString('utf8'), terminated: l.terminated }));
  for (const c of chunks) p.push(typeof c === 'string' ? Buffer.from(c) : c);
  return { lines, flushed: p.end() };
}

t.test('one line per LF, raw keeps the LF, CR before LF is dropped from text', async (t) => {
  const { lines } = collect(['{"a":1}\n{"b":2}\r\n\n']);
  t.same(lines, [
    { text: '{"a":1}', raw: '{"a":1}\n', terminated: true },
    { text: '{"b":2}', raw: '{"b":2}\r\n', terminated: true },
    { text: '', raw: '\n', terminated: true },
  ]);
});

t.test('a last line without LF is delivered by end()', async (t) => {
  const { lines, flushed } = collect(['{"a":1}\n{"done":tr', 'ue}']);
  t.same(lines.at(-1), { text: '{"done":true}', raw: '{"done":true}', terminated: false });
  t.equal(flushed, 13);
  t.equal(collect(['{"a":1}\n']).flushed, 0);
});

t.test('every split point, including inside multi-byte characters', async (t) => {
  const body = Buffer.from(
    [
      { model: 'llama3.2', created_at: '2024-08-07T03:57:33.0365888Z', message: { role: 'assistant', content: 'héllo 世界 🎉' }, done: false },
      { model: 'llama3.2', created_at: '2024-08-07T03:57:33.1Z', message: { role: 'assistant', content: ' "q"\n' }, done: false },
      { model: 'llama3.2', created_at: '2024-08-07T03:57:33.2Z', message: { role: 'assistant', content: '' }, done_reason: 'stop', done: true, eval_count: 2 },
    ]
      .map((o) => JSON.stringify(o) + '\n')
      .join(''),
  );
  const want = collect([body]).lines;
  t.equal(want.length, 3);
  for (let i = 0; i <= body.length; i++) {
    const got = collect([body.subarray(0, i), body.subarray(i)]).lines;
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      t.fail(`split at ${i}`, { got, want });
      return;
    }
  }
  t.pass('all split points agree');
  const bytes: Uint8Array[] = [];
  for (let i = 0; i < body.length; i++) bytes.push(body.subarray(i, i + 1));
  t.same(collect(bytes).lines, want, 'one byte at a time');
});

t.test('raw is a view of the pushed chunk when the line fits in it', async (t) => {
  const raws: Uint8Array[] = [];
  const p = new NdjsonParser((l) => raws.push(l.raw));
  const chunk = Buffer.from('{"a":1}\n{"b"');
  p.push(chunk);
  t.equal(raws[0]!.buffer, chunk.buffer);
  p.push(Buffer.from(':2}\n'));
  t.same(
    raws.map((r) => Buffer.from(r).toString()),
    ['{"a":1}\n', '{"b":2}\n'],
  );
  t.equal(p.pending, 0);
});

t.test('parseNdjson and encodeNdjson', async (t) => {
  t.equal(encodeNdjson({ error: 'boom' }), '{"error":"boom"}\n');
  t.same(parseNdjson(encodeNdjson({ a: 'é' }) + '\n  \n' + encodeNdjson([1])), [{ a: 'é' }, [1]]);
});

t.test('a line that never ends is refused past the bound, whatever the chunking', async (t) => {
  const lines: string[] = [];
  const p = new NdjsonParser((l) => void lines.push(l.text), 64);
  p.push(Buffer.from('{"a":1}\n'));
  t.same(lines, ['{"a":1}']);
  p.push(Buffer.from('{"b":"' + 'x'.repeat(40)));
  t.throws(() => p.push(Buffer.from('x'.repeat(40))), { code: 'upstream_error', message: /more than 64 bytes/ });
  t.equal(p.pending, 0);
  t.throws(() => new NdjsonParser(() => undefined, 64).push(Buffer.from('y'.repeat(100))), { code: 'upstream_error' }, 'in one chunk');
});
