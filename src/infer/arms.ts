// Which arm serves a request: a valid sticky cookie keeps its arm while that arm
// still gets traffic; otherwise a weighted draw, where the canary (when enabled)
// sets B's share instead of the A/B weights. Pure: the random number is passed in.

export type Arm = 'A' | 'B';

export interface SplitState {
  readonly abWeightA: number;
  readonly abWeightB: number;
  readonly canaryEnabled: boolean;
  readonly canaryPercent: number;
}

export function shareOfB(s: SplitState): number {
  if (s.canaryEnabled) return s.canaryPercent / 100;
  const total = s.abWeightA + s.abWeightB;
  return total > 0 ? s.abWeightB / total : 0;
}

export function chooseArm(s: SplitState, cookieArm: string | undefined, random: number): { arm: Arm; reason: 'sticky' | 'canary' | 'weighted' } {
  const b = shareOfB(s);
  if (cookieArm === 'A' && b < 1) return { arm: 'A', reason: 'sticky' };
  if (cookieArm === 'B' && b > 0) return { arm: 'B', reason: 'sticky' };
  return { arm: random < b ? 'B' : 'A', reason: s.canaryEnabled ? 'canary' : 'weighted' };
}

/** The value of cookie `name` in a Cookie header. */
export function readCookie(header: string | undefined, name: string): string | undefined {
  if (header === undefined) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}
