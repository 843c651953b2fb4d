// The x-broker-priority header, read the same on every path (LLM, /v1/infer, gRPC):
// a digit 0-9 or a name. 9 is served first.

const NAMES: ReadonlyMap<string, number> = new Map([
  ['low', 1],
  ['normal', 5],
  ['high', 8],
  ['critical', 9],
]);

/** The priority a header asks for, or undefined (absent or not understood: the caller's default). */
export function headerPriority(header: string | undefined): number | undefined {
  if (header === undefined) return undefined;
  if (/^[0-9]$/.test(header)) return Number(header);
  // A Map, not an object literal: `constructor` or `__proto__` would read Object's and sort as NaN, ahead of any cap.
  return NAMES.get(header.toLowerCase());
}
