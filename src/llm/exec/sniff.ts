// A streamed reply's first bytes tell a stream from one JSON body (an OpenAI-compatible
// server that ignored `stream: true`): the body is then read whole and handed on as the
// event stream it stands for (codec/whole-reply.ts). The stream case costs one function
// call per chunk: the chunks read to look are given back first, then the body's own.
import { tooLarge } from '../codec/bytes.ts';
import { wholeReplyAsSse } from '../codec/whole-reply.ts';

type Body = AsyncIterable<Uint8Array> & { destroy(err?: Error): unknown };

/** The first byte that is not white space, or -1. */
export function firstByte(b: Uint8Array): number {
  for (const c of b) if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return c;
  return -1;
}

/**
 * `body` as the chain should read it: the look happens at the chain's first read (its clock
 * starts before). `onChunk` is called for each chunk read to look (the attempt's deadline and
 * timing); `onWhole` once when the body was one JSON reply.
 */
export function streamOfReply(body: Body, maxWholeBytes: number, onChunk: () => void, onWhole: () => void): Body {
  let inner: AsyncIterator<Uint8Array> | null = null;
  const iterator: AsyncIterator<Uint8Array> = {
    next: () => (inner !== null ? inner.next() : look(body, maxWholeBytes, onChunk, onWhole).then((i) => (inner = i).next())),
    return: (v?: unknown) => (inner?.return !== undefined ? inner.return(v) : (body.destroy(), Promise.resolve({ done: true, value: undefined }))),
  };
  return { [Symbol.asyncIterator]: () => iterator, destroy: (err?: Error) => body.destroy(err) };
}

async function look(body: Body, maxWholeBytes: number, onChunk: () => void, onWhole: () => void): Promise<AsyncIterator<Uint8Array>> {
  const it = body[Symbol.asyncIterator]();
  const seen: Uint8Array[] = [];
  let first = -1;
  let r = await it.next();
  for (; !r.done; r = await it.next()) {
    onChunk();
    seen.push(r.value);
    first = firstByte(r.value);
    if (first !== -1) break;
  }
  if (first !== 0x7b) return replay(seen, r.done === true ? null : it);
  let size = 0;
  for (const c of seen) size += c.byteLength;
  for (r = await it.next(); !r.done; r = await it.next()) {
    onChunk();
    size += r.value.byteLength;
    if (size > maxWholeBytes) {
      body.destroy();
      throw tooLarge(maxWholeBytes);
    }
    seen.push(r.value);
  }
  const sse = wholeReplyAsSse(Buffer.concat(seen).toString('utf8'));
  if (sse === null) return replay(seen, null);
  onWhole();
  return replay([Buffer.from(sse)], null);
}

/** The chunks already read, then the rest of `it` (null: none). */
function replay(head: Uint8Array[], it: AsyncIterator<Uint8Array> | null): AsyncIterator<Uint8Array> {
  let i = 0;
  const done: IteratorResult<Uint8Array> = { done: true, value: undefined };
  return {
    next: () => (i < head.length ? Promise.resolve({ done: false, value: head[i++]! }) : it === null ? Promise.resolve(done) : it.next()),
    return: (v?: unknown) => (it?.return !== undefined ? it.return(v) : Promise.resolve(done)),
  };
}
