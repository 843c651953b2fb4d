// The model groups the proxy serves, from a BrokerConfig. Replaced whole when local
// Ollama discovery finds a different set of models; deployment state lives in the
// scheduler and connection pools in the executor, both keyed by deployment id.
import type { BrokerConfig, ModelGroupConfig } from '../config/broker-config.ts';
import type { Logger } from '../obs/logger.ts';
import { discoverOllama } from './discovery.ts';

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

/** Local Ollama discovery, retried at most every `retryMs` while nothing answers. */
export function ollamaFleet(url: string, logger: Logger, onFound: (config: BrokerConfig) => void, retryMs = 10_000): FleetSource {
  let fleet: Fleet | undefined;
  let checkedAt = -Infinity;
  let pending: Promise<Fleet | undefined> | undefined;
  const refresh = async (): Promise<Fleet | undefined> => {
    checkedAt = Date.now();
    const config = await discoverOllama(url);
    if (config !== undefined) {
      onFound(config);
      fleet = buildFleet(config);
      logger.info({ models: [...config.modelGroups.keys()], url }, 'serving the models of the local Ollama');
    }
    return fleet;
  };
  return {
    current() {
      if (fleet !== undefined || Date.now() - checkedAt < retryMs) return fleet;
      pending ??= refresh().finally(() => (pending = undefined));
      return pending;
    },
  };
}
