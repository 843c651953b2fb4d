// Without BROKER_CONFIG the broker serves the models of a local Ollama: one model
// group per model listed by its /api/tags, each with that one deployment.
import { request } from 'undici';
import type { BrokerConfig } from '../config/broker-config.ts';
import type { Logger } from '../obs/logger.ts';
import { buildFleet, type Fleet, type FleetSource } from './fleet.ts';
import { parseBrokerConfig } from '../config/fleet-file.ts';

export async function discoverOllama(url: string, timeoutMs = 1000): Promise<BrokerConfig | undefined> {
  let tags: unknown;
  try {
    const res = await request(new URL('/api/tags', url), { method: 'GET', headersTimeout: timeoutMs, bodyTimeout: timeoutMs, signal: AbortSignal.timeout(timeoutMs) });
    if (res.statusCode !== 200) {
      await res.body.dump();
      return undefined;
    }
    tags = await res.body.json();
  } catch {
    return undefined;
  }
  const models = (tags as { models?: { name?: unknown; model?: unknown }[] }).models;
  if (!Array.isArray(models)) return undefined;
  const names: string[] = [];
  for (const m of models) {
    const name = typeof m.name === 'string' ? m.name : typeof m.model === 'string' ? m.model : undefined;
    if (name !== undefined && !names.includes(name)) names.push(name);
  }
  if (names.length === 0) return undefined;
  return discoveredFleet(url, names);
}

/**
 * The fleet of one local Ollama: a declared server `ollama-local` whose models (from
 * /api/tags, refreshed by its health checks) each get a group of their own name.
 */
export function discoveredFleet(url: string, models: readonly string[]): BrokerConfig {
  const doc = { servers: [{ id: 'ollama-local', provider: 'ollama' as const, url, maxConcurrency: 4 }] };
  return parseBrokerConfig(doc, `ollama discovery at ${url}`, {}, new Map([['ollama-local', models]]));
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
