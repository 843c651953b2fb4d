// Basic deployment choice: among the group's deployments that are not cooling down
// after consecutive failures and not tried yet for this request, the one with the
// least in-flight requests per unit of weight. Pure apart from the state it is given;
// the clock is passed in.
import type { DeploymentConfig, ModelGroupConfig, RouterConfig } from '../config/broker-config.ts';

export interface DeploymentState {
  readonly config: DeploymentConfig;
  inFlight: number;
  consecutiveFailures: number;
  /** Epoch ms until which the deployment is skipped. */
  cooldownUntil: number;
}

export class FleetState {
  readonly byId = new Map<string, DeploymentState>();

  constructor(groups: Iterable<ModelGroupConfig>, private readonly cfg: RouterConfig) {
    for (const g of groups) for (const d of g.deployments) this.byId.set(d.id, { config: d, inFlight: 0, consecutiveFailures: 0, cooldownUntil: 0 });
  }

  /** The deployment to try next, or undefined when none is left. */
  choose(group: ModelGroupConfig, tried: ReadonlySet<string>, now: number): DeploymentState | undefined {
    let best: DeploymentState | undefined;
    let bestScore = Infinity;
    let fallback: DeploymentState | undefined;
    for (const d of group.deployments) {
      if (tried.has(d.id)) continue;
      const s = this.byId.get(d.id)!;
      // A cooling-down deployment is only a last resort: better a likely failure than none at all.
      if (s.cooldownUntil > now) {
        fallback ??= s;
        continue;
      }
      const score = (s.inFlight + 1) / d.weight;
      if (score < bestScore) {
        bestScore = score;
        best = s;
      }
    }
    return best ?? (tried.size === 0 ? fallback : undefined);
  }

  succeeded(s: DeploymentState): void {
    s.consecutiveFailures = 0;
    s.cooldownUntil = 0;
  }

  failed(s: DeploymentState, now: number): void {
    s.consecutiveFailures++;
    if (s.consecutiveFailures >= this.cfg.failureThreshold) s.cooldownUntil = now + this.cfg.cooldownMs;
  }
}
