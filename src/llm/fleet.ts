// The deployments the proxy can use, built from a BrokerConfig: groups by name and
// router state. Replaced whole when local Ollama discovery finds a different set of
// models; connection pools live in the executor, keyed by deployment.
import type { BrokerConfig, ModelGroupConfig } from '../config/broker-config.ts';
import { FleetState } from './router.ts';

export interface Fleet {
  readonly source: string;
  readonly groups: ReadonlyMap<string, ModelGroupConfig>;
  readonly state: FleetState;
}

export function buildFleet(config: BrokerConfig): Fleet {
  return {
    source: config.source,
    groups: config.modelGroups,
    state: new FleetState(config.modelGroups.values(), config.router),
  };
}
