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
const COLON = 0x3a;

/** Whether the JSON text in `b` from `start` to `end` opens more than `max` arrays or objects at once. Malformed text is left to JSON.parse. */
export function nestsDeeper(b: Buffer, max: number, start = 0, end = b.length): boolean {
  return pastLimits(b, max, Infinity, start, end) === 'depth';
}

/**
 * No route takes a body with more object keys: JSON.parse builds a hash table per object and
 * the request is written again for the upstream, so 650,000 one-letter keys in a 7.7 MB body
 * held a data-plane thread for 2 s. A chat request with 128 tools of large schemas has a few
 * thousand; arrays of numbers (token ids, v2 tensors) are not counted.
 */
export const JSON_MAX_KEYS = 100_000;

/**
 * The object keys of the JSON text in `b` (a `:` outside strings), or undefined when it nests
 * deeper than JSON_MAX_DEPTH or holds more than `maxKeys`: for JSON a client sends inside a
 * string (tool-call arguments), which the front's scan of the body does not see.
 */
export function keysWithin(b: Buffer, maxKeys: number): number | undefined {
  let n = 0;
  return pastLimits(b, JSON_MAX_DEPTH, maxKeys, 0, b.length, (k) => (n = k)) === undefined ? n : undefined;
}

/** The first limit the JSON text passes: nesting deeper than `maxDepth`, or more than `maxKeys` object keys (a `:` outside strings). */
function pastLimits(b: Buffer, maxDepth: number, maxKeys: number, start: number, end: number, counted?: (keys: number) => void): 'depth' | 'keys' | undefined {
  let depth = 0;
  let keys = 0;
  for (let i = start; i < end; i++) {
    const c = b[i]!;
    if (c === QUOTE) {
      let close = i;
      do close = b.indexOf(QUOTE, close + 1);
      while (close !== -1 && escaped(b, close));
      if (close === -1 || close >= end) return undefined;
      i = close;
    } else if (c === COLON) {
      if (++keys > maxKeys) return 'keys';
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > maxDepth) return 'depth';
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  counted?.(keys);
  return undefined;
}

/** A quote preceded by an odd run of backslashes is inside its string. */
function escaped(b: Buffer, at: number): boolean {
  let n = 0;
  for (let k = at - 1; k >= 0 && b[k] === BACKSLASH; k--) n++;
  return n % 2 === 1;
}

/** JSON.parse of `b` from `start` to `end`, refusing first a body nested deeper than JSON_MAX_DEPTH or with more than JSON_MAX_KEYS keys. Throws the parse's own error for bad JSON. */
export function parseJsonBody(b: Buffer, start = 0, end = b.length): unknown {
  const past = pastLimits(b, JSON_MAX_DEPTH, JSON_MAX_KEYS, start, end);
  if (past === 'depth') throw new BrokerError('invalid_request', `request body nests deeper than ${JSON_MAX_DEPTH} levels`);
  if (past === 'keys') throw new BrokerError('invalid_request', `request body has more than ${JSON_MAX_KEYS} object keys`);
  return JSON.parse(b.toString('utf8', start, end));
}
