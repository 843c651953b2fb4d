// The deployments the proxy can use, built from a BrokerConfig: groups by name,
// router state and upstream connection pools. Replaced whole when local Ollama
// discovery finds a different set of models.
import type { BrokerConfig, ModelGroupConfig } from '../config/broker-config.ts';
import { FleetState } from './router.ts';
import { Upstreams } from './upstream.ts';

export interface Fleet {
  readonly source: string;
  readonly groups: ReadonlyMap<string, ModelGroupConfig>;
  readonly state: FleetState;
  readonly upstreams: Upstreams;
}

export function buildFleet(config: BrokerConfig): Fleet {
  const deployments = [...config.modelGroups.values()].flatMap((g) => g.deployments);
  return {
    source: config.source,
    groups: config.modelGroups,
    state: new FleetState(config.modelGroups.values(), config.router),
    upstreams: new Upstreams(deployments),
  };
}
