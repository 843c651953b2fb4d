// The benches' knobs, read once and checked: a typo or a value that is not a number stops
// the bench with a message, rather than run it on NaN (tables of NaN, and the committed
// results file overwritten with nulls) or on the default unsaid.

/** `--name value` from the command line: a number >= `min` (an integer if `integer`), or `dflt` when absent. */
export function numberFlag(name: string, dflt: number, o: { min?: number; integer?: boolean } = {}): number {
  const i = process.argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  return checked(`--${name}`, process.argv[i + 1], o);
}

/** An env knob: a number >= `min` (an integer if `integer`), or `dflt` when unset or empty. */
export function envNumber(name: string, dflt: number, o: { min?: number; integer?: boolean } = {}): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  return checked(name, raw, o);
}

function checked(name: string, raw: string | undefined, o: { min?: number; integer?: boolean }): number {
  const n = raw === undefined || raw.trim() === '' ? Number.NaN : Number(raw);
  const min = o.min ?? 0;
  if (!Number.isFinite(n) || n < min || (o.integer === true && !Number.isInteger(n))) {
    throw new Error(`${name} must be ${o.integer === true ? 'an integer' : 'a number'} >= ${min}, got ${raw === undefined ? 'nothing' : JSON.stringify(raw)}`);
  }
  return n;
}

/** Stops on a `--flag` the bench does not know (`known`: its number flags and its switches). */
export function knownFlags(known: readonly string[]): void {
  for (const a of process.argv.slice(2)) {
    if (a.startsWith('--') && !known.includes(a.slice(2))) throw new Error(`unknown flag ${a}: this bench takes ${known.map((k) => `--${k}`).join(', ')}`);
  }
}
