// An Ollama client served by an Ollama provider: pass-through. The request
// changes only `model` (the deployment's upstream name) and images the broker
// takes in more forms than Ollama decodes; replies are forwarded as the upstream
// sent them.

import { BrokerError } from '../../errors.ts';
import { ollamaImage, requireArray, requireObject } from './common.ts';
import type { OllamaChatRequest, OllamaGenerateRequest } from './types.ts';

/** Images as the upstream decodes them (a data: URL's prefix off, padding on); the array itself when nothing changes. */
function images(v: unknown): unknown {
  if (!Array.isArray(v)) return v;
  const out = v.map((x) => (typeof x === 'string' ? ollamaImage(x) : x));
  return out.every((x, i) => x === v[i]) ? v : out;
}

/** /api/chat body for `upstreamModel`; every other field is kept as sent but images, made what Ollama decodes. */
export function chatRequest(body: unknown, upstreamModel: string): OllamaChatRequest {
  const b = requireObject(body);
  const messages = requireArray(b, 'messages');
  const out = { ...b, model: upstreamModel } as Record<string, unknown>;
  if (messages.some((m) => Array.isArray((m as { images?: unknown } | null)?.images))) {
    out['messages'] = messages.map((m) => {
      const o = m as Record<string, unknown>;
      const imgs = images(o['images']);
      return imgs === o['images'] ? m : { ...o, images: imgs };
    });
  }
  return out as OllamaChatRequest;
}

/** /api/generate body for `upstreamModel`; every other field is kept as sent but images. */
export function completionRequest(body: unknown, upstreamModel: string): OllamaGenerateRequest {
  const b = requireObject(body);
  if (b['prompt'] !== undefined && typeof b['prompt'] !== 'string') throw new BrokerError('invalid_request', 'prompt must be a string', { details: { field: 'prompt' } });
  const out = { ...b, model: upstreamModel } as Record<string, unknown>;
  if (Array.isArray(b['images'])) out['images'] = images(b['images']);
  return out as OllamaGenerateRequest;
}
