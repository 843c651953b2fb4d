// Client-facing LLM routes: OpenAI-compatible under /v1 (chat, completions, embeddings,
// the Responses API), Anthropic's Messages API at /v1/messages, Ollama-native under /api.
// Errors follow each client API's own shape. Every one goes through the same reading,
// admission, scheduling and proxy: only the translators and the chain differ.
import { BrokerError, toBrokerError } from '../errors.ts';
import { anthropicErrorShape, ollamaErrorShape, openaiErrorShape } from '../front/error-body.ts';
import type { Route } from '../front/http/router.ts';
import type { ModelGroupConfig } from '../config/broker-config.ts';
import type { Fleet, FleetSource } from '../fleet/fleet.ts';
import { HOW_TO_CONFIGURE } from '../fleet/discovery.ts';
import type { LlmProxy } from './proxy.ts';
import { readLlmRequest, type LlmRequest, type PromptLimits } from './request.ts';
import type { Admitted } from '../sched/admission.ts';
import type { ClientApi, Kind } from './translate/index.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };

/** Groups once each (discovered Ollama models are also reachable without their `:latest` tag). */
function uniqueGroups(fleet: Fleet | undefined): ModelGroupConfig[] {
  return [...new Set(fleet?.groups.values() ?? [])];
}

/** Admission, done before the proxy sees the request. */
export interface Admission {
  /** A promise only while a key's quota lease is being topped up. */
  admit(r: LlmRequest, group: ModelGroupConfig): Admitted | Promise<Admitted>;
}

export function llmRoutes(source: FleetSource, admission: Admission, proxy: LlmProxy, limits?: PromptLimits): Route[] {
  const completion = (api: ClientApi, kind: Kind, path: string): Route => ({
    method: 'POST',
    path,
    body: 'json',
    rateLimited: true,
    // Ollama's words for its routes: /api/chat, /api/generate, /api/embed.
    track: `${api}.${api === 'ollama' && kind === 'completion' ? 'generate' : kind}`,
    errorShape: api === 'ollama' ? ollamaErrorShape : api === 'anthropic' ? anthropicErrorShape : openaiErrorShape,
    async handle({ req, body, sink }) {
      const known = source.current();
      const fleet = known instanceof Promise ? await known : known;
      if (fleet === undefined) throw new BrokerError('upstream_unavailable', HOW_TO_CONFIGURE);
      const span = req.span;
      const admitSpan = span?.child('llm.admission');
      let admitted: Admitted;
      let group: ModelGroupConfig | undefined;
      try {
        // Read once, admitted, then proxied: the body is not parsed again past this point.
        const r = readLlmRequest(req, api, kind, body as Record<string, unknown>, limits);
        group = fleet.groups.get(r.model);
        if (group === undefined) throw new BrokerError('model_not_found', `model ${r.model} is not served here; available: ${[...fleet.groups.keys()].join(', ') || 'none'}`);
        try {
          const a = admission.admit(r, group);
          admitted = a instanceof Promise ? await a : a;
        } catch (err) {
          // Refused by admission (the key's quota or budget, its tier): counted with the group's requests.
          proxy.refused(group.name, toBrokerError(err));
          throw err;
        }
      } catch (err) {
        if (admitSpan !== undefined) {
          const e = toBrokerError(err);
          admitSpan.fail(e.code, e.message).end();
        }
        throw err;
      }
      admitSpan?.set('llm.model_group', group.name).set('llm.priority', admitted.priority).set('llm.qos_tier', admitted.tier?.name).end();
      await proxy.run(admitted, group, sink, span, fleet.groups);
    },
  });

  return [
    completion('openai', 'chat', '/v1/chat/completions'),
    completion('openai', 'completion', '/v1/completions'),
    completion('ollama', 'chat', '/api/chat'),
    completion('ollama', 'completion', '/api/generate'),
    completion('responses', 'chat', '/v1/responses'),
    completion('anthropic', 'chat', '/v1/messages'),
    completion('openai', 'embed', '/v1/embeddings'),
    completion('ollama', 'embed', '/api/embed'),
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
