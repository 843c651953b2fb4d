// The model groups the proxy serves, from a BrokerConfig. Replaced whole when local
// Ollama discovery finds a different set of models; deployment state lives in the
// scheduler and connection pools in the executor, both keyed by deployment id.
import type { BrokerConfig, ModelGroupConfig } from '../config/broker-config.ts';

export interface Fleet {
  readonly source: string;
  readonly groups: ReadonlyMap<string, ModelGroupConfig>;
}

export function buildFleet(config: BrokerConfig): Fleet {
  return { source: config.source, groups: config.modelGroups };
}
