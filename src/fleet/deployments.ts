// The deployments this thread routes over, by id and by group: each with its capacity
// slot and, when it shares a server with other deployments, the server's slot. Whether
// one may take requests (health, bans, breaker, drain, maintenance) is not kept here:
// it is in the shared route bits of its slot, written by the control plane's fleet
// manager (src/fleet/manager.ts) and read by every thread's scheduler.
import type { DeploymentConfig, ModelGroupConfig, ServerConfig } from '../config/broker-config.ts';
import type { CapacityCounters } from '../sched/capacity.ts';

export interface DeploymentState {
  readonly config: DeploymentConfig;
  readonly group: string;
  readonly slot: number;
  /** The capacity slot of its server (maxConcurrency over all its models); -1 when the deployment is its own server. */
  readonly serverSlot: number;
}

/** The capacity id of a server's own slot. */
export function serverSlotId(server: string): string {
  return `server:${server}`;
}

export class Deployments {
  private readonly byId = new Map<string, DeploymentState>();
  private readonly byGroup = new Map<ModelGroupConfig, DeploymentState[]>();
  /** The ids in the config as of the last register(): the others were removed (kept while their requests finish). */
  private current = new Set<string>();
  /** The groups as of the last register(), by name: a request admitted under an older config routes over these. */
  private groups = new Map<string, ModelGroupConfig>();

  constructor(private readonly capacity: CapacityCounters) {}

  /** Adds (or updates) the deployments of these groups; slots are kept by id. */
  register(groups: Iterable<ModelGroupConfig>, servers?: ReadonlyMap<string, ServerConfig>): DeploymentConfig[] {
    this.byGroup.clear();
    this.current = new Set();
    this.groups = new Map();
    const configs: DeploymentConfig[] = [];
    for (const g of groups) {
      this.groups.set(g.name, g);
      for (const d of g.deployments) {
        const slot = this.capacity.register(d.id, d.concurrencyLimit);
        const server = servers?.get(d.server);
        // A server with models of its own caps them together; a deployment that is its own server is capped by its slot.
        const serverSlot = server !== undefined && server.declared ? this.capacity.register(serverSlotId(server.id), server.maxConcurrency) : -1;
        this.byId.set(d.id, { config: d, group: g.name, slot, serverSlot });
        this.current.add(d.id);
        configs.push(d);
      }
    }
    return configs;
  }

  get(id: string): DeploymentState | undefined {
    return this.byId.get(id);
  }

  /** A deployment removed from the config (by a reload, a server's removal): routed to no more. */
  removed(id: string): boolean {
    return this.byId.has(id) && !this.current.has(id);
  }

  all(): DeploymentState[] {
    return [...this.byId.values()];
  }

  /**
   * The group's deployment states in config order, as the current config has the group (a
   * request queued before a change waits for the deployments it added, not for those it
   * removed), cached per group object.
   */
  ofGroup(asked: ModelGroupConfig): readonly DeploymentState[] {
    const group = this.groups.get(asked.name) ?? asked;
    let states = this.byGroup.get(group);
    if (states === undefined) {
      states = group.deployments.map((c) => this.byId.get(c.id)).filter((d): d is DeploymentState => d !== undefined);
      this.byGroup.set(group, states);
    }
    return states;
  }
}
