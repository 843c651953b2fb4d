// An Ollama client served by an Ollama provider: pass-through. The request
// changes only `model` (the deployment's upstream name); replies are forwarded
// as the upstream sent them.

import { BrokerError } from '../../errors.ts';
import { requireArray, requireObject } from './common.ts';
import type { OllamaChatRequest, OllamaGenerateRequest } from './types.ts';

/** /api/chat body for `upstreamModel`; every other field is kept as sent. */
export function chatRequest(body: unknown, upstreamModel: string): OllamaChatRequest {
  const b = requireObject(body);
  requireArray(b, 'messages');
  return { ...b, model: upstreamModel } as OllamaChatRequest;
}

/** /api/generate body for `upstreamModel`; every other field is kept as sent. */
export function completionRequest(body: unknown, upstreamModel: string): OllamaGenerateRequest {
  const b = requireObject(body);
  if (b['prompt'] !== undefined && typeof b['prompt'] !== 'string') throw new BrokerError('invalid_request', 'prompt must be a string', { details: { field: 'prompt' } });
  return { ...b, model: upstreamModel } as OllamaGenerateRequest;
}
