import t from 'tap';
import { SSE_DONE, SseParser, encodeSseComment, encodeSseEvent, encodeSseJson, parseSse, type SseEvent } from '../../../src/llm/codec/sse.ts';

interface Seen {
  data: string | null;
  event: string;
  id: string | null;
  raw: string;
  continuation: boolean;
}

function collect(chunks: Array<string | Uint8Array>): { events: Seen[]; dropped: number } {
  const events: Seen[] = [];
  const p = new SseParser((ev: SseEvent) => {
    events.push({ data: ev.data, event: ev.event, id: ev.id, raw: Buffer.from(ev.raw).toString('utf8'), continuation: ev.continuation });
  });
  for (const c of chunks) p.push(typeof c === 'string' ? Buffer.from(c) : c);
  return { events, dropped: p.end() };
}

function datas(chunks: Array<string | Uint8Array>): Array<string | null> {
  return collect(chunks)
    .events.filter((e) => !e.continuation)
    .map((e) => e.data);
}

t.test('line endings: LF, CRLF, CR and mixes', async (t) => {
  t.same(datas(['data: a\n\ndata: b\n\n']), ['a', 'b']);
  t.same(datas(['data: a\r\n\r\ndata: b\r\n\r\n']), ['a', 'b']);
  t.same(datas(['data: a\r\rdata: b\r\r']), ['a', 'b']);
  t.same(datas(['data: a\r\n\ndata: b\n\r\n']), ['a', 'b']);
});

t.test('multi-line data is joined with LF', async (t) => {
  t.same(datas(['data: line one\ndata: line two\ndata:\ndata: four\n\n']), ['line one\nline two\n\nfour']);
});

t.test('one space after the colon is dropped, not more', async (t) => {
  t.same(datas(['data:a\n\ndata:  a\n\ndata: \n\n']), ['a', ' a', '']);
});

t.test('a field name without colon has an empty value', async (t) => {
  t.same(datas(['data\n\n']), ['']);
});

t.test('comments are skipped; a comment-only block has no data', async (t) => {
  const { events } = collect([': keep-alive\n\ndata: x\n: inside\ndata: y\n\n']);
  t.same(
    events.map((e) => [e.data, e.raw]),
    [
      [null, ': keep-alive\n\n'],
      ['x\ny', 'data: x\n: inside\ndata: y\n\n'],
    ],
  );
});

t.test('event and id fields belong to their block; retry and unknown fields are ignored', async (t) => {
  const { events } = collect(['event: error\nid: 7\nretry: 100\nfoo: bar\ndata: {"a":1}\n\ndata: plain\n\nevent: only\n\n']);
  t.same(
    events.map((e) => [e.event, e.id, e.data]),
    [
      ['error', '7', '{"a":1}'],
      ['', null, 'plain'],
      ['only', null, null],
    ],
  );
});

t.test('an incomplete block at the end is discarded and counted', async (t) => {
  const { events, dropped } = collect(['data: ok\n\ndata: {"cut":']);
  t.same(
    events.map((e) => e.data),
    ['ok'],
  );
  t.equal(dropped, Buffer.byteLength('data: {"cut":'));
  t.equal(collect(['data: x\n']).dropped, 8, 'a data line without its blank line is not an event');
});

t.test('a leading BOM is ignored by the fields but kept in raw', async (t) => {
  const { events } = collect([Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from('data: x\n\n')])]);
  t.equal(events[0]!.data, 'x');
  t.equal(Buffer.from(events[0]!.raw).length, 3 + 9);
});

t.test('multi-byte UTF-8 split inside a character', async (t) => {
  const body = Buffer.from('data: héllo 世界 🎉\n\n');
  for (let i = 1; i < body.length; i++) {
    t.same(datas([body.subarray(0, i), body.subarray(i)]), ['héllo 世界 🎉'], `split at ${i}`);
  }
});

t.test('CRLF split between CR and LF', async (t) => {
  // Inside a block: the LF just completes the line ending.
  t.same(collect(['data: a\r', '\n\r\n']).events.map((e) => e.data), ['a']);
  // After the blank line: the event is dispatched at the CR, the LF arrives as a continuation.
  const { events } = collect(['data: a\r\n\r', '\ndata: b\r\n\r\n']);
  t.same(
    events.map((e) => [e.data, e.continuation, e.raw]),
    [
      ['a', false, 'data: a\r\n\r'],
      [null, true, '\n'],
      ['b', false, 'data: b\r\n\r\n'],
    ],
  );
  // A chunk that does not start with LF after a trailing CR: nothing skipped.
  t.same(collect(['data: a\r\r', 'data: b\r\r']).events.map((e) => e.data), ['a', 'b']);
});

t.test('every split point of a mixed stream gives the same events and raw bytes', async (t) => {
  const body = Buffer.from(
    ': hi\r\n\r\nevent: x\ndata: héllo\r\ndata: 世界\r\r' + 'data: {"a":"🎉"}\n\n' + 'id: 1\rdata: a\r\n\r\n' + 'data: tail\n\n' + 'data: cut',
  );
  const want = collect([body]);
  const rawAll = (evs: Seen[]): string => evs.map((e) => e.raw).join('');
  t.equal(rawAll(want.events), body.toString('utf8').slice(0, -'data: cut'.length), 'raw covers every byte up to the last event');
  for (let i = 0; i <= body.length; i++) {
    for (const j of [i, Math.min(body.length, i + 1), Math.min(body.length, i + 7)]) {
      const got = collect([body.subarray(0, i), body.subarray(i, j), body.subarray(j)]);
      const norm = (evs: Seen[]): unknown[] => evs.filter((e) => !e.continuation).map((e) => [e.data, e.event, e.id]);
      if (
        JSON.stringify(norm(got.events)) !== JSON.stringify(norm(want.events)) ||
        rawAll(got.events) !== rawAll(want.events) ||
        got.dropped !== want.dropped
      ) {
        t.fail(`split at ${i},${j}`, { got: got.events, want: want.events });
        return;
      }
    }
  }
  t.pass('all split points agree');
});

t.test('raw is a view of the pushed chunk when the event fits in it, and stays valid', async (t) => {
  const raws: Uint8Array[] = [];
  const p = new SseParser((ev) => raws.push(ev.raw));
  const chunk = Buffer.from('data: a\n\ndata: b');
  p.push(chunk);
  t.equal(raws[0]!.buffer, chunk.buffer, 'no copy');
  p.push(Buffer.from('b\n\ndata: c'));
  p.push(Buffer.from('\n\n'));
  t.same(
    raws.map((r) => Buffer.from(r).toString()),
    ['data: a\n\n', 'data: bb\n\n', 'data: c\n\n'],
    'views handed out earlier are not overwritten by later chunks',
  );
  t.equal(p.pending, 0);
});

t.test('one byte at a time', async (t) => {
  const body = Buffer.from('data: {"x":"日本"}\r\n\r\n: c\n\ndata: [DONE]\n\n');
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < body.length; i++) chunks.push(body.subarray(i, i + 1));
  t.same(datas(chunks), ['{"x":"日本"}', null, '[DONE]']);
});

t.test('encoders', async (t) => {
  t.equal(SSE_DONE, 'data: [DONE]\n\n');
  t.equal(encodeSseJson({ a: 'x\ny' }), 'data: {"a":"x\\ny"}\n\n');
  t.equal(encodeSseEvent('a\nb\r\nc', { event: 'e', id: '1' }), 'event: e\nid: 1\ndata: a\ndata: b\ndata: c\n\n');
  t.equal(encodeSseComment('ping'), ': ping\n\n');
  t.equal(encodeSseComment(), ':\n\n');
  t.same(parseSse(encodeSseEvent('a\nb', { event: 'e' }) + encodeSseComment('x') + SSE_DONE), [
    { data: 'a\nb', event: 'e', id: null },
    { data: null, event: '', id: null },
    { data: '[DONE]', event: '', id: null },
  ]);
});

t.test('an event that never ends is refused past the bound, whatever the chunking', async (t) => {
  const events: string[] = [];
  const p = new SseParser((ev) => void (ev.data !== null && events.push(ev.data)), 64);
  p.push(Buffer.from('data: ok\n\n'));
  t.same(events, ['ok'], 'a normal event passes');
  p.push(Buffer.from('data: ' + 'x'.repeat(40)));
  t.throws(() => p.push(Buffer.from('x'.repeat(40))), { code: 'upstream_error', message: /more than 64 bytes/ }, 'cut across chunks');
  t.equal(p.pending, 0, 'and nothing is held after');
  const q = new SseParser(() => undefined, 64);
  t.throws(() => q.push(Buffer.from('data: ' + 'y'.repeat(100))), { code: 'upstream_error' }, 'in one chunk');
  const lines = new SseParser(() => undefined, 64);
  t.throws(() => { for (let i = 0; i < 20; i++) lines.push(Buffer.from('data: z\n')); }, { code: 'upstream_error' }, 'a block of many lines without its blank line');
});
