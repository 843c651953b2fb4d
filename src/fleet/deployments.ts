// The state of each upstream deployment as this thread knows it: its capacity slot,
// consecutive failures and the cool-down they trigger, and whether it drains. The
// scheduler routes over it; failures and successes come from finished attempts (this
// thread's and, relayed, the other threads').
import type { DeploymentConfig, ModelGroupConfig, RouterConfig } from '../config/broker-config.ts';
import type { CapacityCounters } from '../sched/capacity.ts';

export interface DeploymentState {
  readonly config: DeploymentConfig;
  readonly group: string;
  readonly slot: number;
  consecutiveFailures: number;
  /** Epoch ms until which the deployment is skipped after consecutive failures. */
  cooldownUntil: number;
  /** Takes no new requests; in-flight ones finish. */
  draining: boolean;
}

export class Deployments {
  private readonly byId = new Map<string, DeploymentState>();
  private readonly byGroup = new Map<ModelGroupConfig, DeploymentState[]>();

  constructor(
    private readonly capacity: CapacityCounters,
    private readonly router: RouterConfig,
    private readonly now: () => number,
  ) {}

  /** Adds (or updates) the deployments of these groups; slots and state are kept by id. */
  register(groups: Iterable<ModelGroupConfig>): DeploymentConfig[] {
    this.byGroup.clear();
    const configs: DeploymentConfig[] = [];
    for (const g of groups) {
      for (const d of g.deployments) {
        const slot = this.capacity.register(d.id, d.concurrencyLimit);
        const old = this.byId.get(d.id);
        this.byId.set(d.id, { config: d, group: g.name, slot, consecutiveFailures: old?.consecutiveFailures ?? 0, cooldownUntil: old?.cooldownUntil ?? 0, draining: old?.draining ?? false });
        configs.push(d);
      }
    }
    return configs;
  }

  get(id: string): DeploymentState | undefined {
    return this.byId.get(id);
  }

  all(): DeploymentState[] {
    return [...this.byId.values()];
  }

  /** The group's deployment states in config order, cached per group object. */
  ofGroup(group: ModelGroupConfig): readonly DeploymentState[] {
    let states = this.byGroup.get(group);
    if (states === undefined) {
      states = group.deployments.map((c) => this.byId.get(c.id)).filter((d): d is DeploymentState => d !== undefined);
      this.byGroup.set(group, states);
    }
    return states;
  }

  succeeded(d: DeploymentState): void {
    d.consecutiveFailures = 0;
    d.cooldownUntil = 0;
  }

  /** Counts a failure; past the threshold the deployment cools down. */
  failed(d: DeploymentState): void {
    d.consecutiveFailures++;
    if (d.consecutiveFailures >= this.router.failureThreshold) d.cooldownUntil = this.now() + this.router.cooldownMs;
  }
}
