// How deep a JSON body nests, found before JSON.parse runs. JSON.parse's time grows with the
// depth: an 8 MB body of 4M `[` then 4M `]`, well under MAX_BODY_BYTES, held a thread for
// 2.5 s before the depth checks that run on the parsed value could refuse it. This scan stops
// at the first level past the limit, and skips strings with indexOf (a base64 image in a
// 1.3 MB body costs it well under a millisecond).
import { BrokerError } from '../errors.ts';

/** No route takes a body nested deeper (the LLM routes allow 32 levels, llm/request.ts MAX_DEPTH). */
export const JSON_MAX_DEPTH = 64;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;

/** Whether the JSON text in `b` from `start` to `end` opens more than `max` arrays or objects at once. Malformed text is left to JSON.parse. */
export function nestsDeeper(b: Buffer, max: number, start = 0, end = b.length): boolean {
  let depth = 0;
  for (let i = start; i < end; i++) {
    const c = b[i]!;
    if (c === QUOTE) {
      let close = i;
      do close = b.indexOf(QUOTE, close + 1);
      while (close !== -1 && escaped(b, close));
      if (close === -1 || close >= end) return false;
      i = close;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}

/** A quote preceded by an odd run of backslashes is inside its string. */
function escaped(b: Buffer, at: number): boolean {
  let n = 0;
  for (let k = at - 1; k >= 0 && b[k] === BACKSLASH; k--) n++;
  return n % 2 === 1;
}

/** JSON.parse of `b` from `start` to `end`, refusing first a body nested deeper than JSON_MAX_DEPTH. Throws the parse's own error for bad JSON. */
export function parseJsonBody(b: Buffer, start = 0, end = b.length): unknown {
  if (nestsDeeper(b, JSON_MAX_DEPTH, start, end)) throw new BrokerError('invalid_request', `request body nests deeper than ${JSON_MAX_DEPTH} levels`);
  return JSON.parse(b.toString('utf8', start, end));
}
