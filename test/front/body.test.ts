// readBody against a stand-in for uWS's response (only onData is used): chunks are copied
// out of uWS's buffers, the limit holds, and the whole body is handed on after the data
// callback has returned, so that a reply written by its handler is not held in uWS's cork
// until the bookkeeping after it has run.
import t from 'tap';
import type { HttpResponse } from 'uWebSockets.js';
import { readBody } from '../../src/front/http/body.ts';
import type { BrokerError } from '../../src/errors.ts';

type OnData = (chunk: ArrayBuffer, isLast: boolean) => void;

function fakeResponse(): { res: HttpResponse; feed: (bytes: string, isLast: boolean) => void } {
  let onData: OnData | undefined;
  const res = { onData: (cb: OnData) => void (onData = cb) } as unknown as HttpResponse;
  return {
    res,
    feed(bytes, isLast) {
      const chunk = new Uint8Array(Buffer.from(bytes)).buffer;
      onData!(chunk, isLast);
      new Uint8Array(chunk).fill(0x21); // uWS reuses its buffer once the callback returns
    },
  };
}

const nextTurn = (): Promise<void> => new Promise((r) => setImmediate(r));

t.test('the body is handed on after the last chunk’s callback has returned, not inside it', async (t) => {
  for (const declared of [undefined, 11]) {
    const { res, feed } = fakeResponse();
    const got: { err: BrokerError | undefined; body: string | undefined }[] = [];
    readBody(res, 1024, declared, (err, body) => got.push({ err, body: body?.toString() }));
    feed('hello ', false);
    feed('world', true);
    t.equal(got.length, 0, `not yet, inside the data callback (content-length ${String(declared)})`);
    await nextTurn();
    t.same(got, [{ err: undefined, body: 'hello world' }], 'then the whole body, copied out of the reused buffer');
  }
});

t.test('past the limit: payload_too_large, once', async (t) => {
  const { res, feed } = fakeResponse();
  const errs: string[] = [];
  readBody(res, 8, 12, (err) => errs.push(err?.code ?? 'none'));
  feed('0123456789ab', true);
  await nextTurn();
  t.same(errs, ['payload_too_large']);
});
