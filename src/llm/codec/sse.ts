// Incremental Server-Sent Events parser and encoder (WHATWG HTML, "Parsing an
// event stream"): lines end with CRLF, LF or CR; `data:` lines accumulate,
// joined by LF; a line starting with `:` is a comment; a blank line ends the
// event; one space after the colon is dropped; a leading BOM is ignored.
//
// Chunks may split anywhere, inside a multi-byte UTF-8 character or between
// the CR and LF of a CRLF. The parser scans bytes for line ends and decodes
// only complete lines, so no decoder state crosses chunks. Each event comes
// with `raw`, its exact bytes, so a pass-through proxy can forward it without
// re-serialising; events wholly inside one chunk are views of that chunk (no
// copy), an event spanning chunks is copied once.

import { asBuffer, Carry } from './bytes.ts';

const LF = 0x0a;
const CR = 0x0d;
const COLON = 0x3a;
const SPACE = 0x20;

/**
 * One parsed block. The parser reuses a single object: read what you need
 * inside the callback. `raw` is a view that stays valid after the callback.
 */
export interface SseEvent {
  /** The joined `data:` lines, or null for a block without data (comments, keep-alives). */
  data: string | null;
  /** The `event:` field of this block, '' when absent. */
  event: string;
  /** The `id:` field of this block, null when absent. */
  id: string | null;
  /** The block's exact bytes, from its first line through the blank line that ended it. */
  raw: Uint8Array;
  /**
   * True when `raw` is only the LF of a CRLF whose CR ended the previous block in
   * the previous chunk; `data` is null. Forward it only if you forwarded that block.
   */
  continuation: boolean;
}

export type SseListener = (ev: SseEvent) => void;

/** Nothing pending: the CR (if any) that ended the last line was followed by a byte already. */
const SKIP_NONE = 0;
/** The previous chunk ended with a CR inside an open block: a leading LF belongs to that block. */
const SKIP_IN_BLOCK = 1;
/** The previous chunk ended with the CR of a blank line: a leading LF is a continuation. */
const SKIP_AFTER_EVENT = 2;

export class SseParser {
  private readonly listener: SseListener;
  private readonly ev: SseEvent = { data: null, event: '', id: null, raw: new Uint8Array(0), continuation: false };
  /** Bytes of the current block received in earlier chunks. */
  private readonly carry: Carry;
  /** Offset in `carry` where the unterminated line starts (== carry.len when none). */
  private lineStart = 0;
  private skipLF = SKIP_NONE;
  private started = false;
  // Fields of the block being read.
  private data = '';
  private dataLines = 0;
  private eventType = '';
  private id: string | null = null;

  /** `maxEventBytes`: an incomplete block past it throws upstream_error (bytes.ts MAX_EVENT_BYTES). */
  constructor(listener: SseListener, maxEventBytes?: number) {
    this.listener = listener;
    this.carry = new Carry(maxEventBytes);
  }

  /** Bytes held for an incomplete block. */
  get pending(): number {
    return this.carry.len;
  }

  push(chunk: Uint8Array): void {
    const buf = asBuffer(chunk);
    const n = buf.length;
    if (n === 0) return;
    let pos = 0;
    // Where the current block starts in `buf`; -1 when it started in an earlier chunk.
    let blockStart = 0;

    if (!this.started) {
      this.started = true;
      // A BOM is skipped by the field parser but stays in the first block's raw bytes.
      if (n >= 3 && buf[0] === 0xef && buf[1] === 0xbb && buf[2] === 0xbf) pos = 3;
    }
    if (this.skipLF !== SKIP_NONE) {
      const mode = this.skipLF;
      this.skipLF = SKIP_NONE;
      if (buf[0] === LF) {
        pos = blockStart = 1;
        if (mode === SKIP_AFTER_EVENT) {
          const ev = this.ev;
          ev.data = null;
          ev.event = '';
          ev.id = null;
          ev.raw = buf.subarray(0, 1);
          ev.continuation = true;
          this.listener(ev);
        }
      }
    }

    // With blockStart === -1: bytes of `buf` before this are already in the carry.
    let copyFrom = 0;
    let lf = buf.indexOf(LF, pos);
    let cr = buf.indexOf(CR, pos);

    if (this.carry.len > 0) {
      blockStart = -1;
      if (this.lineStart < this.carry.len) {
        // Finish the line that the previous chunk cut.
        const t = lf === -1 ? cr : cr === -1 || lf < cr ? lf : cr;
        if (t === -1) {
          this.carry.append(buf, 0, n);
          return;
        }
        const termLen = buf[t] === CR && t + 1 < n && buf[t + 1] === LF ? 2 : 1;
        if (buf[t] === CR && t + 1 === n) this.skipLF = SKIP_IN_BLOCK;
        this.carry.append(buf, 0, t + termLen);
        copyFrom = pos = t + termLen;
        this.line(this.carry.buf, this.lineStart, this.carry.len - termLen);
        this.lineStart = this.carry.len;
      }
    }

    while (pos < n) {
      if (lf !== -1 && lf < pos) lf = buf.indexOf(LF, pos);
      if (cr !== -1 && cr < pos) cr = buf.indexOf(CR, pos);
      const t = lf === -1 ? cr : cr === -1 || lf < cr ? lf : cr;
      if (t === -1) break;
      let next = t + 1;
      let crAtEnd = false;
      if (buf[t] === CR) {
        if (next < n) {
          if (buf[next] === LF) next++;
        } else {
          crAtEnd = true;
        }
      }
      if (t === pos) {
        // Blank line: the block is complete.
        let raw: Buffer;
        if (blockStart === -1) {
          this.carry.append(buf, copyFrom, next);
          raw = this.carry.detach();
        } else {
          raw = buf.subarray(blockStart, next);
        }
        blockStart = next;
        if (crAtEnd) this.skipLF = SKIP_AFTER_EVENT;
        this.dispatch(raw);
      } else {
        this.line(buf, pos, t);
        if (crAtEnd) this.skipLF = SKIP_IN_BLOCK;
      }
      pos = next;
    }

    // Keep the incomplete block for the next chunk.
    if (blockStart === -1) {
      this.carry.append(buf, copyFrom, n);
      this.lineStart = this.carry.len - (n - pos);
    } else if (blockStart < n) {
      this.carry.append(buf, blockStart, n);
      this.lineStart = pos - blockStart;
    }
  }

  /**
   * The upstream ended. A block without its closing blank line is discarded, as
   * the spec says; returns how many bytes were discarded (0 for a clean end).
   */
  end(): number {
    const dropped = this.carry.len;
    this.carry.clear();
    this.lineStart = 0;
    this.skipLF = SKIP_NONE;
    this.resetBlock();
    return dropped;
  }

  private line(buf: Buffer, start: number, end: number): void {
    if (buf[start] === COLON) return; // comment
    let c = start;
    while (c < end && buf[c] !== COLON) c++;
    let vs = c < end ? c + 1 : end;
    if (vs < end && buf[vs] === SPACE) vs++;
    const nameLen = c - start;
    if (nameLen === 4) {
      // "data"
      if (buf[start] === 0x64 && buf[start + 1] === 0x61 && buf[start + 2] === 0x74 && buf[start + 3] === 0x61) {
        const v = buf.toString('utf8', vs, end);
        this.data = this.dataLines++ === 0 ? v : this.data + '\n' + v;
      }
    } else if (nameLen === 5) {
      if (buf.toString('latin1', start, c) === 'event') this.eventType = buf.toString('utf8', vs, end);
    } else if (nameLen === 2) {
      if (buf[start] === 0x69 && buf[start + 1] === 0x64) {
        const v = buf.toString('utf8', vs, end);
        if (!v.includes('\0')) this.id = v;
      }
    }
    // `retry:` and unknown fields are ignored.
  }

  private dispatch(raw: Buffer): void {
    const ev = this.ev;
    ev.data = this.dataLines > 0 ? this.data : null;
    ev.event = this.eventType;
    ev.id = this.id;
    ev.raw = raw;
    ev.continuation = false;
    this.resetBlock();
    this.listener(ev);
  }

  private resetBlock(): void {
    this.data = '';
    this.dataLines = 0;
    this.eventType = '';
    this.id = null;
  }
}

/** Parse a whole SSE body at once (tests, non-streaming use). */
export function parseSse(body: Uint8Array | string): Array<{ data: string | null; event: string; id: string | null }> {
  const out: Array<{ data: string | null; event: string; id: string | null }> = [];
  const p = new SseParser((ev) => {
    if (!ev.continuation) out.push({ data: ev.data, event: ev.event, id: ev.id });
  });
  p.push(typeof body === 'string' ? Buffer.from(body) : body);
  p.end();
  return out;
}

/** The OpenAI end-of-stream sentinel event. */
export const SSE_DONE = 'data: [DONE]\n\n';

/** One `data:` event carrying a JSON value; JSON.stringify never emits a raw newline, so one line is enough. */
export function encodeSseJson(value: unknown): string {
  return 'data: ' + JSON.stringify(value) + '\n\n';
}

/** An event with arbitrary text data: each line of `data` becomes its own `data:` line. */
export function encodeSseEvent(data: string, opts: { event?: string; id?: string } = {}): string {
  let out = '';
  if (opts.event !== undefined) out += 'event: ' + opts.event + '\n';
  if (opts.id !== undefined) out += 'id: ' + opts.id + '\n';
  const lines = data.split(/\r\n|\r|\n/);
  for (const l of lines) out += 'data: ' + l + '\n';
  return out + '\n';
}

/** A comment line, e.g. a keep-alive that clients ignore. */
export function encodeSseComment(text = ''): string {
  return ':' + (text === '' ? '' : ' ' + text.replace(/\r\n|\r|\n/g, ' ')) + '\n\n';
}

// A block a pass-through may forward without data: blank lines, comments (`:` keep-alives)
// and the event/id/retry fields. Anything else (text, HTML, binary) is upstream garbage.
const PLAIN_BLOCK = /^(?:(?::[^\r\n]*|(?:event|id|retry)(?:[: ][^\r\n]*)?)?(?:\r\n|\r|\n))*(?:\r\n|\r|\n)?$/;

/** True when a data-less block's bytes are only comments, blank lines and event/id/retry fields. */
export function isPlainBlock(raw: Uint8Array): boolean {
  return PLAIN_BLOCK.test(Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('latin1'));
}
