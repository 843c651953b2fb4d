// Provisioned-throughput (PTU) advice: compares each deployment's capacity
// with the weekly TPM profile of the traffic it serves.
import type { UsageProfiles } from './usage.ts';

export interface PtuDeployment {
  name: string;
  capacityTpm: number;
  /** Usage label it serves; undefined = all traffic. */
  label?: string;
}

export interface PtuAdvisorOptions {
  /** Peak utilisation a recommended capacity is sized for. Default 0.7. */
  targetUtilisation?: number;
  /** Peak utilisation at or above which to scale up; also the headroom warning level. Default 0.85. */
  scaleUpAt?: number;
  /** Peak utilisation below which to scale down. Default 0.3. */
  scaleDownBelow?: number;
  /** Current utilisation at or above which headroom is critical. Default 0.95. */
  criticalAt?: number;
  /** Recommendations are rounded up to a multiple of this. Default 1000. */
  capacityStepTpm?: number;
  /** Hours between the first and last record of the served traffic before advising. Default 24. */
  minObservedHours?: number;
}

export type PtuAction = 'scale_up' | 'scale_down' | 'keep' | 'insufficient_data';

export interface PtuRecommendation {
  name: string;
  capacityTpm: number;
  peakTpm: number;
  averageTpm: number;
  peakUtilisation: number;
  action: PtuAction;
  recommendedCapacityTpm: number;
  reason: string;
}

export interface PtuHeadroom {
  name: string;
  capacityTpm: number;
  currentTpm: number;
  /** capacityTpm - currentTpm; negative when over capacity. */
  headroomTpm: number;
  utilisation: number;
  status: 'ok' | 'warning' | 'critical';
}

const HOUR_MS = 3_600_000;

// Division by a decimal fraction can land a hair above an integer (e.g. 700 / 0.7 = 1000.0000000000001); don't round that up a whole step.
function ceilTolerant(v: number): number {
  return Math.ceil(v - Math.abs(v) * 1e-12);
}

function pct(v: number): string {
  return `${Math.round(v * 100)}%`;
}

export class PtuAdvisor {
  readonly #usage: UsageProfiles;
  readonly #target: number;
  readonly #scaleUpAt: number;
  readonly #scaleDownBelow: number;
  readonly #criticalAt: number;
  readonly #step: number;
  readonly #minObservedMs: number;
  readonly #deployments = new Map<string, PtuDeployment>();

  constructor(usage: UsageProfiles, opts: PtuAdvisorOptions = {}) {
    this.#usage = usage;
    this.#target = opts.targetUtilisation ?? 0.7;
    this.#scaleUpAt = opts.scaleUpAt ?? 0.85;
    this.#scaleDownBelow = opts.scaleDownBelow ?? 0.3;
    this.#criticalAt = opts.criticalAt ?? 0.95;
    this.#step = opts.capacityStepTpm ?? 1000;
    this.#minObservedMs = (opts.minObservedHours ?? 24) * HOUR_MS;
    if (!(this.#target > 0 && this.#target <= 1)) throw new RangeError('targetUtilisation must be in (0, 1]');
    // A target outside [scaleDownBelow, scaleUpAt) would recommend a capacity the next review reverses.
    if (!(this.#scaleDownBelow >= 0 && this.#scaleDownBelow <= this.#target && this.#target < this.#scaleUpAt)) {
      throw new RangeError('need 0 <= scaleDownBelow <= targetUtilisation < scaleUpAt');
    }
    if (!(this.#criticalAt >= this.#scaleUpAt)) throw new RangeError('criticalAt must be >= scaleUpAt');
    if (!(this.#step > 0)) throw new RangeError('capacityStepTpm must be > 0');
    if (!(this.#minObservedMs >= 0)) throw new RangeError('minObservedHours must be >= 0');
  }

  /** Adds or replaces (by name) a deployment. */
  register(d: PtuDeployment): void {
    if (!(Number.isFinite(d.capacityTpm) && d.capacityTpm > 0)) throw new RangeError(`capacityTpm of ${d.name} must be > 0`);
    this.#deployments.set(d.name, { ...d });
  }

  unregister(name: string): boolean {
    return this.#deployments.delete(name);
  }

  list(): PtuDeployment[] {
    return [...this.#deployments.values()].map((d) => ({ ...d }));
  }

  /**
   * Peak and average come from the served label's weekly TPM profile: peak is
   * the busiest hour-of-week, average is over all 168 hours (idle hours
   * count as 0, as they do for the cost of provisioned capacity).
   * recommendedCapacityTpm = ceil(peakTpm / targetUtilisation), rounded up
   * to a multiple of capacityStepTpm (1000): capacity is bought in PTU
   * units whose TPM depends on the model, so the advice stays coarse.
   */
  recommendations(): PtuRecommendation[] {
    return [...this.#deployments.values()].map((d) => this.#recommend(d));
  }

  /** Live check of a deployment against its capacity; undefined for an unknown name. */
  headroom(name: string, currentTpm: number): PtuHeadroom | undefined {
    const d = this.#deployments.get(name);
    if (d === undefined) return undefined;
    const current = Number.isFinite(currentTpm) ? Math.max(0, currentTpm) : 0;
    const utilisation = current / d.capacityTpm;
    const status = utilisation >= this.#criticalAt ? 'critical' : utilisation >= this.#scaleUpAt ? 'warning' : 'ok';
    return { name, capacityTpm: d.capacityTpm, currentTpm: current, headroomTpm: d.capacityTpm - current, utilisation, status };
  }

  #recommend(d: PtuDeployment): PtuRecommendation {
    const tpm = this.#usage.tpmProfile(d.label);
    let peakTpm = 0;
    let sum = 0;
    for (const v of tpm) {
      sum += v;
      if (v > peakTpm) peakTpm = v;
    }
    const averageTpm = sum / tpm.length;
    const peakUtilisation = peakTpm / d.capacityTpm;
    const base = { name: d.name, capacityTpm: d.capacityTpm, peakTpm, averageTpm, peakUtilisation };
    const served = d.label === undefined ? 'all traffic' : `label ${d.label}`;

    const cov = this.#usage.coverage(d.label);
    const observedMs = cov === undefined ? 0 : cov.lastSeenAt - cov.firstSeenAt;
    if (peakTpm === 0 || observedMs < this.#minObservedMs) {
      return {
        ...base,
        action: 'insufficient_data',
        recommendedCapacityTpm: d.capacityTpm,
        reason: `${served}: ${(observedMs / HOUR_MS).toFixed(1)} h of traffic observed, need ${this.#minObservedMs / HOUR_MS} h`,
      };
    }
    const recommendedCapacityTpm = ceilTolerant(ceilTolerant(peakTpm / this.#target) / this.#step) * this.#step;
    const sizing = `${recommendedCapacityTpm} TPM puts the peak of ${Math.round(peakTpm)} TPM at ${pct(peakTpm / recommendedCapacityTpm)} (target ${pct(this.#target)})`;
    if (peakUtilisation >= this.#scaleUpAt) {
      return { ...base, action: 'scale_up', recommendedCapacityTpm, reason: `peak utilisation ${pct(peakUtilisation)} >= ${pct(this.#scaleUpAt)}; ${sizing}` };
    }
    if (peakUtilisation < this.#scaleDownBelow) {
      return { ...base, action: 'scale_down', recommendedCapacityTpm, reason: `peak utilisation ${pct(peakUtilisation)} < ${pct(this.#scaleDownBelow)}; ${sizing}` };
    }
    return {
      ...base,
      action: 'keep',
      recommendedCapacityTpm,
      reason: `peak utilisation ${pct(peakUtilisation)} is within [${pct(this.#scaleDownBelow)}, ${pct(this.#scaleUpAt)}); ${sizing}`,
    };
  }
}
