// Incremental newline-delimited JSON framing (the Ollama streaming format):
// one JSON value per LF-terminated line; a CR before the LF is tolerated.
//
// Like the SSE parser it scans bytes for LF and decodes only complete lines,
// so chunks may split anywhere, including inside a multi-byte character. Each
// line comes with `raw`, its exact bytes including the LF, for pass-through.

import { asBuffer, Carry } from './bytes.ts';

const LF = 0x0a;
const CR = 0x0d;

/**
 * One line. The parser reuses a single object: read what you need inside the
 * callback. `raw` is a view that stays valid after the callback.
 */
export interface NdjsonLine {
  /** The line without its LF (and without a CR before it); '' for a blank line. */
  text: string;
  /** The line's exact bytes, including the LF when `terminated`. */
  raw: Uint8Array;
  /** False only for a last line without LF, delivered by end(). */
  terminated: boolean;
}

export type NdjsonListener = (line: NdjsonLine) => void;

export class NdjsonParser {
  private readonly listener: NdjsonListener;
  private readonly line: NdjsonLine = { text: '', raw: new Uint8Array(0), terminated: true };
  private readonly carry: Carry;

  /** `maxLineBytes`: an incomplete line past it throws upstream_error (bytes.ts MAX_EVENT_BYTES). */
  constructor(listener: NdjsonListener, maxLineBytes?: number) {
    this.listener = listener;
    this.carry = new Carry(maxLineBytes);
  }

  /** Bytes held for an incomplete line. */
  get pending(): number {
    return this.carry.len;
  }

  push(chunk: Uint8Array): void {
    const buf = asBuffer(chunk);
    const n = buf.length;
    if (n === 0) return;
    let pos = 0;
    let t = buf.indexOf(LF);
    if (this.carry.len > 0) {
      if (t === -1) {
        this.carry.append(buf, 0, n);
        return;
      }
      this.carry.append(buf, 0, t + 1);
      const raw = this.carry.detach();
      this.emit(raw, 0, raw.length, true);
      pos = t + 1;
      t = buf.indexOf(LF, pos);
    }
    while (t !== -1) {
      this.emit(buf, pos, t + 1, true);
      pos = t + 1;
      t = buf.indexOf(LF, pos);
    }
    if (pos < n) this.carry.append(buf, pos, n);
  }

  /**
   * The upstream ended. A last line without LF is delivered with
   * `terminated: false`; returns its byte length, 0 if there was none.
   */
  end(): number {
    const len = this.carry.len;
    if (len === 0) return 0;
    const raw = this.carry.detach();
    this.emit(raw, 0, len, false);
    return len;
  }

  private emit(buf: Buffer, start: number, end: number, terminated: boolean): void {
    let textEnd = terminated ? end - 1 : end;
    if (textEnd > start && buf[textEnd - 1] === CR) textEnd--;
    const line = this.line;
    line.text = textEnd > start ? buf.toString('utf8', start, textEnd) : '';
    line.raw = buf.subarray(start, end);
    line.terminated = terminated;
    this.listener(line);
  }
}

/** Parse a whole NDJSON body at once (tests, non-streaming use); blank lines are skipped. */
export function parseNdjson(body: Uint8Array | string): unknown[] {
  const out: unknown[] = [];
  const p = new NdjsonParser((l) => {
    if (l.text.trim() !== '') out.push(JSON.parse(l.text));
  });
  p.push(typeof body === 'string' ? Buffer.from(body) : body);
  p.end();
  return out;
}

/** One NDJSON line. */
export function encodeNdjson(value: unknown): string {
  return JSON.stringify(value) + '\n';
}
