// Client-facing LLM routes: OpenAI-compatible under /v1, Ollama-native under /api.
// Errors follow each client API's own shape.
import { BrokerError } from '../errors.ts';
import type { ErrorShape, Route } from '../front/http/router.ts';
import type { BrokerConfig, ModelGroupConfig } from '../config/broker-config.ts';
import type { Logger } from '../obs/logger.ts';
import { buildFleet, type Fleet } from './fleet.ts';
import { discoverOllama, HOW_TO_CONFIGURE } from './discovery.ts';
import type { LlmProxy } from './proxy.ts';
import type { Api, Kind } from './translate/index.ts';
import { ollamaError, openaiError } from './translate/errors.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };

/** The OpenAI error object, with OpenAI's error `type` for our code. */
export const openaiErrorShape: ErrorShape = (code, message, requestId) => openaiError(message, code, requestId);

/** Ollama clients read `error` as a string; the code and request id ride along. */
export const ollamaErrorShape: ErrorShape = (code, message, requestId) => ({ ...ollamaError(message), code, request_id: requestId });

export interface FleetSource {
  /** The fleet to use now; undefined when no upstream is configured or discovered. */
  current(): Promise<Fleet | undefined>;
}

/** A fixed fleet from BROKER_CONFIG. */
export function staticFleet(config: BrokerConfig): FleetSource {
  const fleet = buildFleet(config);
  return { current: async () => fleet };
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
    async current() {
      if (fleet !== undefined || Date.now() - checkedAt < retryMs) return fleet;
      pending ??= refresh().finally(() => (pending = undefined));
      return pending;
    },
  };
}

/** Groups once each (discovered Ollama models are also reachable without their `:latest` tag). */
function uniqueGroups(fleet: Fleet | undefined): ModelGroupConfig[] {
  return [...new Set(fleet?.groups.values() ?? [])];
}

export function llmRoutes(source: FleetSource, proxy: LlmProxy): Route[] {
  const completion = (api: Api, kind: Kind, path: string): Route => ({
    method: 'POST',
    path,
    body: 'json',
    rateLimited: true,
    errorShape: api === 'ollama' ? ollamaErrorShape : openaiErrorShape,
    async handle({ req, body, sink }) {
      const fleet = await source.current();
      if (fleet === undefined) throw new BrokerError('upstream_unavailable', HOW_TO_CONFIGURE);
      await proxy.handle(fleet, api, kind, req, body as Record<string, unknown>, sink);
    },
  });

  return [
    completion('openai', 'chat', '/v1/chat/completions'),
    completion('openai', 'completion', '/v1/completions'),
    completion('ollama', 'chat', '/api/chat'),
    completion('ollama', 'completion', '/api/generate'),
    {
      method: 'GET',
      path: '/v1/models',
      async handle({ sink }) {
        const fleet = await source.current();
        const data = uniqueGroups(fleet).map((g) => ({ id: g.name, object: 'model', created: 0, owned_by: 'edge-broker' }));
        sink.send(200, JSON_HEADERS, JSON.stringify({ object: 'list', data }));
      },
    },
    {
      method: 'GET',
      path: '/api/tags',
      errorShape: ollamaErrorShape,
      async handle({ sink }) {
        const fleet = await source.current();
        const models = uniqueGroups(fleet).map((g) => ({
          name: g.name,
          model: g.name,
          modified_at: new Date(0).toISOString(),
          size: 0,
          digest: '',
          details: { format: '', family: '', families: null, parameter_size: '', quantization_level: '' },
        }));
        sink.send(200, JSON_HEADERS, JSON.stringify({ models }));
      },
    },
  ];
}
