// Upstream providers as data: where each kind of request goes and how it is
// authenticated. Adding a provider is filling this table, not writing a handler.
import type { DeploymentConfig, Provider } from '../config/broker-config.ts';

function bearer(d: Pick<DeploymentConfig, 'apiKey'>): Record<string, string> {
  return d.apiKey !== undefined ? { authorization: `Bearer ${d.apiKey}` } : {};
}

export type RequestKind = 'chat' | 'completion' | 'embed' | 'responses';

interface ProviderSpec {
  readonly paths: Readonly<Record<RequestKind | 'models', string>>;
  headers(d: Pick<DeploymentConfig, 'apiKey'>): Record<string, string>;
}

export const PROVIDERS: Readonly<Record<Provider, ProviderSpec>> = {
  openai: {
    paths: { chat: '/v1/chat/completions', completion: '/v1/completions', embed: '/v1/embeddings', responses: '/v1/responses', models: '/v1/models' },
    headers: bearer,
  },
  ollama: {
    // Ollama serves no Responses API: upstreamRoute never asks it for one.
    paths: { chat: '/api/chat', completion: '/api/generate', embed: '/api/embed', responses: '/v1/responses', models: '/api/tags' },
    headers: bearer,
  },
};

/** Origin and path for a request: an OpenAI base URL may already end in /v1. */
export function upstreamTarget(d: Pick<DeploymentConfig, 'url' | 'provider'>, kind: RequestKind | 'models'): { origin: string; path: string } {
  const u = new URL(d.url);
  let base = u.pathname.replace(/\/$/, '');
  const path = PROVIDERS[d.provider].paths[kind];
  if (d.provider === 'openai' && base.endsWith('/v1')) base = base.slice(0, -3);
  return { origin: u.origin, path: base + path };
}
