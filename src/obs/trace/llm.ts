// Spans of the LLM path, under the request's server span:
//
//   llm.admission     reading the request and the admission policies (tier, priority, quota)
//   llm.queue_wait    waiting for a lease on a deployment (capacity, the wait queue), once per attempt
//   llm.upstream      one upstream attempt (a CLIENT span): deployment, server, status, TTFT,
//                     retry index; its id is the parent in the `traceparent` sent upstream
import type { DeploymentConfig } from '../../config/broker-config.ts';
import { SpanKind, type Span } from './span.ts';

const servers = new Map<string, { host: string; port: number }>();

/** Host and port of a deployment's URL, parsed once per URL. */
function serverOf(url: string): { host: string; port: number } {
  let s = servers.get(url);
  if (s === undefined) {
    const u = new URL(url);
    s = { host: u.hostname, port: u.port !== '' ? Number(u.port) : u.protocol === 'https:' ? 443 : 80 };
    if (servers.size > 1000) servers.clear();
    servers.set(url, s);
  }
  return s;
}

export function queueWaitSpan(parent: Span, group: string, retry: number): Span {
  return parent.child('llm.queue_wait', SpanKind.INTERNAL, undefined, { 'llm.model_group': group, 'llm.retry_index': retry });
}

/** GenAI's operation name for a request kind (chat, completion, embed, responses). */
function operationOf(kind: string): string {
  return kind === 'completion' ? 'text_completion' : kind === 'embed' ? 'embeddings' : 'chat';
}

export function attemptSpan(parent: Span, dep: DeploymentConfig, group: string, retry: number, stream: boolean, kind: string): Span {
  const { host, port } = serverOf(dep.url);
  return parent.child('llm.upstream', SpanKind.CLIENT, undefined, {
    'http.request.method': 'POST',
    'gen_ai.operation.name': operationOf(kind),
    'gen_ai.provider.name': dep.provider,
    'server.address': host,
    'server.port': port,
    'llm.deployment': dep.id,
    'llm.provider': dep.provider,
    'llm.model_group': group,
    'gen_ai.request.model': dep.model,
    'llm.retry_index': retry,
    'llm.stream': stream,
  });
}
