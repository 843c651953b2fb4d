// Without BROKER_CONFIG the broker serves the models of a local Ollama: one model
// group per model listed by its /api/tags, each with that one deployment.
import { request } from 'undici';
import { parseBrokerConfig, type BrokerConfig } from '../config/broker-config.ts';

export const HOW_TO_CONFIGURE =
  'no LLM upstream is available: no local Ollama answered at OLLAMA_URL, and BROKER_CONFIG is not set. ' +
  'Start Ollama, or set BROKER_CONFIG to a JSON or YAML file listing modelGroups and their deployments (see config/broker.example.yaml).';

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
