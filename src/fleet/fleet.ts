// The model groups the proxy serves, from a BrokerConfig (local Ollama discovery, which
// replaces it whole when it finds another set of models, is discovery.ts's). Deployment
// state lives in the scheduler and connection pools in the executor, both keyed by
// deployment id.
import type { BrokerConfig, ModelGroupConfig } from '../config/broker-config.ts';

export interface Fleet {
  readonly source: string;
  readonly groups: ReadonlyMap<string, ModelGroupConfig>;
}

export function buildFleet(config: BrokerConfig): Fleet {
  return { source: config.source, groups: config.modelGroups };
}

export interface FleetSource {
  /** The fleet to use now; undefined when no upstream is configured or discovered. A known fleet comes back at once, not as a promise: a cache hit's path stays in one turn. */
  current(): Fleet | undefined | Promise<Fleet | undefined>;
}

/** A fixed fleet from BROKER_CONFIG. */
export function staticFleet(config: BrokerConfig): FleetSource {
  const fleet = buildFleet(config);
  return { current: () => fleet };
}
