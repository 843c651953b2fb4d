// Without BROKER_CONFIG the broker serves the models of a local Ollama: one model
// group per model listed by its /api/tags, each with that one deployment.
import { request } from 'undici';
import { DEFAULT_GOVERNANCE, DEFAULT_ROUTER, DEFAULT_TIMEOUTS, type BrokerConfig, type ModelGroupConfig } from '../config/broker-config.ts';

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
  const groups = new Map<string, ModelGroupConfig>();
  for (const m of models) {
    const name = typeof m.name === 'string' ? m.name : typeof m.model === 'string' ? m.model : undefined;
    if (name === undefined || groups.has(name)) continue;
    const group: ModelGroupConfig = {
      name,
      deployments: [
        { id: `ollama-local/${name}`.replace(/[^A-Za-z0-9._:-]/g, '_'), provider: 'ollama', url: url.replace(/\/$/, ''), model: name, concurrencyLimit: 4, weight: 1, apiKeyEnv: undefined, apiKey: undefined, rpm: undefined, tpm: undefined, ...DEFAULT_TIMEOUTS },
      ],
    };
    groups.set(name, group);
    // Ollama itself answers `llama3.2` for `llama3.2:latest`; so do we.
    if (name.endsWith(':latest')) groups.set(name.slice(0, -':latest'.length), group);
  }
  if (groups.size === 0) return undefined;
  return { modelGroups: groups, router: DEFAULT_ROUTER, ...DEFAULT_GOVERNANCE, source: `ollama discovery at ${url}` };
}
