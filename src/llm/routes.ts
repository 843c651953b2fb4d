// Client-facing LLM routes: OpenAI-compatible under /v1 (chat, completions, embeddings,
// the Responses API), Anthropic's Messages API at /v1/messages, Ollama-native under /api.
// Errors follow each client API's own shape. Every one goes through the same reading,
// admission, scheduling and proxy: only the translators and the chain differ.
import { createHash } from 'node:crypto';
import { BrokerError, toBrokerError } from '../errors.ts';
import { anthropicErrorShape, ollamaErrorShape, openaiErrorShape } from '../front/error-body.ts';
import type { Route } from '../front/http/router.ts';
import type { ModelGroupConfig } from '../config/broker-config.ts';
import type { Fleet, FleetSource } from '../fleet/fleet.ts';
import { HOW_TO_CONFIGURE } from '../config/broker-config.ts';
import type { LlmProxy } from './proxy.ts';
import { readLlmRequest, tokensOfChars, type LlmRequest, type PromptLimits } from './request.ts';
import type { Admitted } from '../sched/admission.ts';
import type { ClientApi, Kind } from './translate/index.ts';
import type { BrokerRequest, Caller, ReplySink } from '../front/reply.ts';
import { apiKeyOf } from '../guard/api-key.ts';
import { ollamaLoadReply } from './ollama-load.ts';
import { LISTED_SINCE, showModel } from './ollama-show.ts';
import type { ResponseStore } from './stored/responses.ts';
import { continuing, expand, storedRoutes } from './stored/routes.ts';
import { RESPONSE_STATE, type ResponseState } from './translate/responses_to_chat.ts';
import { readTruncated } from './truncation.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };
/**
 * The Ollama API release whose routes and fields the broker serves (thinking, tools, /api/embed,
 * and the OpenAI Responses API beside them): `codex --oss` refuses a server older than 0.13.4.
 */
const OLLAMA_VERSION_BODY = JSON.stringify({ version: '0.13.5' });

/** Groups once each (discovered Ollama models are also reachable without their `:latest` tag). */
function uniqueGroups(fleet: Fleet | undefined): ModelGroupConfig[] {
  return [...new Set(fleet?.groups.values() ?? [])];
}

/** Whether the caller may use the group (its QoS tier: Admission.mayUse), every group when nothing says. */
function mayUse(admission: Admission, req: BrokerRequest, g: ModelGroupConfig): boolean {
  return admission.mayUse?.(apiKeyOf(req.headers), req.caller, req.headers['x-broker-qos'], g) ?? true;
}

/** The groups the caller may use, once each: what its model lists show (QoS tiers, docs/governance.md). */
function usableGroups(fleet: Fleet | undefined, admission: Admission, req: BrokerRequest): ModelGroupConfig[] {
  return uniqueGroups(fleet).filter((g) => mayUse(admission, req, g));
}

/** The group a listing route names, if the caller may use it (a group it may not is not there for it, as OpenAI's models.retrieve says). */
function usableGroup(fleet: Fleet | undefined, admission: Admission, req: BrokerRequest, name: string): ModelGroupConfig | undefined {
  const g = fleet?.groups.get(name);
  return g !== undefined && mayUse(admission, req, g) ? g : undefined;
}

/**
 * A model no group serves (or none the caller may use): 404 naming those it may; on Ollama's
 * routes, Ollama's own words (clients match "not found"). `usable`: the caller's groups
 * (usableGroups): naming every group told a tier what its lists hide.
 */
function notServed(usable: readonly ModelGroupConfig[], model: string, api?: ClientApi): BrokerError {
  if (api === 'ollama') return new BrokerError('model_not_found', `model "${model}" not found, try pulling it first`, { details: { field: 'model' } });
  return new BrokerError('model_not_found', `model ${model} is not served here; available: ${usable.map((g) => g.name).join(', ') || 'none'}`, { details: { field: 'model' } });
}

/** A limit on `input` that the stored conversation a previous_response_id put there passed: said, since the client sent only this turn. */
function withStoredConversation(err: BrokerError, body: Record<string, unknown>): BrokerError {
  const previous = (body as { [RESPONSE_STATE]?: ResponseState })[RESPONSE_STATE]?.previousResponseId;
  if (previous === undefined || previous === null || (err.code !== 'invalid_request' && err.code !== 'context_length_exceeded') || err.details?.['field'] !== 'input') return err;
  return new BrokerError(err.code, `${err.message}, counting the stored conversation of previous_response_id ${previous} (send truncation: "auto" to drop its oldest turns, or start a new conversation)`, { details: err.details });
}

/** Admission, done before the proxy sees the request. */
export interface Admission {
  /** A promise only while a key's quota lease is being topped up. */
  admit(r: LlmRequest, group: ModelGroupConfig): Admitted | Promise<Admitted>;
  /** The output limit the request's QoS tier will put on it, if any. */
  outputCap?(r: LlmRequest, group: ModelGroupConfig): number | undefined;
  /** Whether a server of the group has its model in memory now (Ollama's /api/ps). */
  readonly scheduler?: { loaded(group: ModelGroupConfig): boolean };
  /** Whether the caller's tier may use the group (model lists show only those). */
  mayUse?(apiKey: string | undefined, caller: Caller | undefined, headerTier: string | undefined, group: ModelGroupConfig): boolean;
}

/** How long Ollama keeps a model loaded by default: /api/ps's expires_at is this far ahead. */
const OLLAMA_KEEP_ALIVE_MS = 5 * 60_000;

/**
 * A model group as Ollama's /api/tags and /api/ps describe a model (size unknown here). The
 * digest is the name's SHA-256, 64 hex digits as Ollama's: `ollama list` and `ollama ps` print
 * its first 12 and panic on an empty one. An untagged group is listed under its `:latest`
 * alias, as Ollama lists every model with its tag: Open WebUI adds `:latest` to a bare name and
 * looks it up in this list, and answered "model not found" for every such group.
 */
function ollamaModel(fleet: Fleet | undefined, group: ModelGroupConfig): Record<string, unknown> {
  const tagged = `${group.name}:latest`;
  const name = !group.name.includes(':') && fleet?.groups.get(tagged) === group ? tagged : group.name;
  return { name, model: name, modified_at: LISTED_SINCE, size: 0, digest: createHash('sha256').update(name).digest('hex'), details: { format: '', family: '', families: null, parameter_size: '', quantization_level: '' } };
}

/** A route's own shape around a standard one (Ollama's legacy /api/embeddings around /api/embed). */
interface Legacy {
  readonly track: string;
  /** The client's body → the standard route's. */
  request(body: Record<string, unknown>): Record<string, unknown>;
  /** The standard route's 200 body → the client's. */
  reply(body: string | Uint8Array): string;
}

/** Ollama's legacy /api/embeddings: `prompt` in, one `embedding` out (ollama-js `embeddings()`, older clients). */
const LEGACY_EMBEDDINGS: Legacy = {
  track: 'ollama.embeddings',
  request(body) {
    const { prompt, ...rest } = body;
    // None is Ollama's empty prompt: "load the model".
    if (prompt !== undefined && prompt !== null && typeof prompt !== 'string') throw new BrokerError('invalid_request', 'prompt must be a string', { details: { field: 'prompt' } });
    return { ...rest, input: prompt ?? '' };
  },
  reply(body) {
    const text = typeof body === 'string' ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8');
    const r = JSON.parse(text) as { embeddings?: unknown[] };
    return JSON.stringify({ embedding: Array.isArray(r.embeddings) ? (r.embeddings[0] ?? []) : [] });
  },
};

/** `sink` with its 200 replies reshaped; everything else (state, aborts, errors) is the sink's own. */
function reshaped(sink: ReplySink, reply: (body: string | Uint8Array) => string): ReplySink {
  return new Proxy(sink, {
    get(target, prop) {
      if (prop === 'send') {
        return (status: number, headers: Readonly<Record<string, string>>, body: string | Uint8Array) => target.send(status, headers, status === 200 ? reply(body) : body);
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
    set(target, prop, value) {
      return Reflect.set(target, prop, value, target);
    },
  });
}

export function llmRoutes(source: FleetSource, admission: Admission, proxy: LlmProxy, limits?: PromptLimits, store?: ResponseStore): Route[] {
  /** Counted in the group's requests, and its tracking row names the group as any other does. */
  const answeredHere = (req: BrokerRequest, group: string): void => {
    proxy.answeredHere(group);
    if (req.facts !== undefined) req.facts.model = group;
  };

  const completion = (api: ClientApi, kind: Kind, path: string, legacy?: Legacy): Route => ({
    method: 'POST',
    path,
    body: 'json',
    rateLimited: true,
    // Ollama's words for its routes: /api/chat, /api/generate, /api/embed.
    track: legacy?.track ?? `${api}.${api === 'ollama' && kind === 'completion' ? 'generate' : kind}`,
    errorShape: api === 'ollama' ? ollamaErrorShape : api === 'anthropic' ? anthropicErrorShape : openaiErrorShape,
    async handle({ req, body: clientBody, sink: clientSink }) {
      const body = legacy === undefined ? clientBody : legacy.request(clientBody as Record<string, unknown>);
      let sink = legacy === undefined ? clientSink : reshaped(clientSink, legacy.reply);
      const known = source.current();
      const fleet = known instanceof Promise ? await known : known;
      if (fleet === undefined) throw new BrokerError('upstream_unavailable', HOW_TO_CONFIGURE);
      // A Responses request continues a stored conversation, and its Response is kept (stored/).
      if (api === 'responses' && store?.enabled === true) {
        try {
          sink = await continuing(store, req, body as Record<string, unknown>, sink);
        } catch (err) {
          // Refused (an unknown previous response, Redis away): one outcome in the group's requests too.
          const named = (body as Record<string, unknown>).model;
          const g = typeof named === 'string' ? fleet.groups.get(named) : undefined;
          if (g !== undefined) proxy.refused(g.name, toBrokerError(err));
          throw err;
        }
      }
      if (api === 'ollama' && (kind === 'chat' || kind === 'completion') && legacy === undefined) {
        // A load or unload (no prompt, no messages): answered as Ollama does, for a model served here.
        const b = body as Record<string, unknown>;
        const loaded = typeof b.model === 'string' && fleet.groups.has(b.model) ? ollamaLoadReply(kind, b, new Date()) : undefined;
        if (loaded !== undefined) {
          answeredHere(req, fleet.groups.get(b.model as string)!.name);
          return sink.send(200, JSON_HEADERS, loaded);
        }
      }
      if (api === 'ollama' && kind === 'embed') {
        // No input (none, "", []): Ollama's "load the model", answered with no embeddings (the
        // legacy route's empty prompt: {"embedding": []}), without an upstream call.
        const b = body as Record<string, unknown>;
        const input = b.input;
        if (typeof b.model === 'string' && (input === undefined || input === null || input === '' || (Array.isArray(input) && input.length === 0))) {
          // A model not served: Ollama's 404, which clients probing a model with a load expect (not "input is required").
          if (!fleet.groups.has(b.model)) throw notServed(usableGroups(fleet, admission, req), b.model, api);
          answeredHere(req, fleet.groups.get(b.model)!.name);
          return sink.send(200, JSON_HEADERS, JSON.stringify({ model: b.model, embeddings: [] }));
        }
      }
      const span = req.span;
      const admitSpan = span?.child('llm.admission');
      let admitted: Admitted;
      let group: ModelGroupConfig | undefined;
      try {
        // Read once, admitted, then proxied: the body is not parsed again past this point.
        let r: ReturnType<typeof readLlmRequest>;
        const b = body as Record<string, unknown>;
        // The group the body names, if served here: truncation fits it, a refusal counts in it.
        const named = typeof b['model'] === 'string' ? fleet.groups.get(b['model']) : undefined;
        try {
          const read = (): LlmRequest => readLlmRequest(req, api, kind, b, limits);
          const capOf = named === undefined ? undefined : (x: LlmRequest) => admission.outputCap?.(x, named);
          if (api === 'responses' && b['truncation'] === 'auto') r = readTruncated(read, b, named, capOf);
          // An Ollama chat keeps its latest turns that fit the group's window, as Ollama does,
          // unless a larger group is there to take it whole (contextFallbacks) or the client said
          // `truncate: false`; past the broker's own limits (LLM_MAX_*) it is refused, as before.
          else if (api === 'ollama' && kind === 'chat' && b['truncate'] !== false && (named?.contextFallbacks ?? []).length === 0) r = readTruncated(read, b, named, capOf, 'messages', false);
          else r = read();
        } catch (err) {
          // Refused for its form: still one outcome in the group's requests, when it names a group served here.
          const e = api === 'responses' ? withStoredConversation(toBrokerError(err), b) : err;
          if (named !== undefined) proxy.refused(named.name, toBrokerError(e));
          throw e;
        }
        group = fleet.groups.get(r.model);
        if (group === undefined) throw notServed(usableGroups(fleet, admission, req), r.model, api);
        // Under the group's own name, not the alias asked (`llama3:latest`): priced, budgeted and
        // grouped as the group is (an alias's rows had no price, so budgets never saw them).
        if (req.facts !== undefined) req.facts.model = group.name;
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
      if (api !== 'responses') return proxy.run(admitted, group, sink, span, fleet.groups);
      await proxy.run(admitted, group, sink, span, fleet.groups).catch((err: unknown) => {
        throw err instanceof BrokerError ? withStoredConversation(err, body as Record<string, unknown>) : err;
      });
    },
  });

  /** A counting route's model: a group served here, else the 404 a completion would answer. */
  const servedGroup = async (req: BrokerRequest, model: string): Promise<void> => {
    const known = source.current();
    const fleet = known instanceof Promise ? await known : known;
    if (fleet === undefined) throw new BrokerError('upstream_unavailable', HOW_TO_CONFIGURE);
    if (!fleet.groups.has(model)) throw notServed(usableGroups(fleet, admission, req), model);
  };

  return [
    completion('openai', 'chat', '/v1/chat/completions'),
    completion('openai', 'completion', '/v1/completions'),
    completion('ollama', 'chat', '/api/chat'),
    completion('ollama', 'completion', '/api/generate'),
    completion('responses', 'chat', '/v1/responses'),
    completion('anthropic', 'chat', '/v1/messages'),
    {
      // Anthropic's token count: Claude Code asks it every turn to manage its context window.
      // Answered here with the estimate the broker's own window checks and quotas use (no
      // upstream tokenises a Messages request); the request is checked as /v1/messages checks
      // it, but max_tokens, which counting does not need.
      method: 'POST',
      path: '/v1/messages/count_tokens',
      body: 'json',
      rateLimited: true,
      errorShape: anthropicErrorShape,
      async handle({ req, body, sink }) {
        const b = body as Record<string, unknown>;
        const r = readLlmRequest(req, 'anthropic', 'chat', b.max_tokens === undefined ? { ...b, max_tokens: 1 } : b, limits);
        await servedGroup(req, r.model);
        sink.send(200, JSON_HEADERS, JSON.stringify({ input_tokens: tokensOfChars(r.promptChars) }));
      },
    },
    {
      // The Responses API's count (`responses.inputTokens.count()`): the same estimate, checked as
      // /v1/responses checks its body; nothing sent upstream.
      method: 'POST',
      path: '/v1/responses/input_tokens',
      body: 'json',
      rateLimited: true,
      errorShape: openaiErrorShape,
      async handle({ req, body, sink }) {
        // A continuation counts its stored conversation, as the request would send it.
        if (store?.enabled === true) await expand(store, req, body as Record<string, unknown>);
        const r = readLlmRequest(req, 'responses', 'chat', body as Record<string, unknown>, limits);
        await servedGroup(req, r.model);
        sink.send(200, JSON_HEADERS, JSON.stringify({ object: 'response.input_tokens', input_tokens: tokensOfChars(r.promptChars) }));
      },
    },
    ...storedRoutes(store),
    completion('openai', 'embed', '/v1/embeddings'),
    completion('ollama', 'embed', '/api/embed'),
    completion('ollama', 'embed', '/api/embeddings', LEGACY_EMBEDDINGS),
    {
      // Ollama's root answers this: the `ollama` CLI and clients that check a server is an
      // Ollama (Continue, Page Assist) ask it before anything else.
      method: 'GET',
      path: '/',
      errorShape: ollamaErrorShape,
      handle({ sink }) {
        sink.send(200, { 'content-type': 'text/plain; charset=utf-8' }, 'Ollama is running');
      },
    },
    {
      // What a model is (ollama-show.ts): the `ollama` CLI asks before it runs one.
      method: 'POST',
      path: '/api/show',
      body: 'json',
      // A client route: it calls an upstream with the deployment's key, so it takes the
      // client's credentials (AUTH_MODE) and spends its rate limit, as a chat does.
      rateLimited: true,
      errorShape: ollamaErrorShape,
      async handle({ req, body, sink }) {
        const b = body as Record<string, unknown>;
        // `name` is the older field (ollama-js before 0.5 and older CLIs send it); the Go client
        // sends both, `model` empty (`ollama run` and `ollama show`), and Ollama then reads `name`.
        const name = typeof b['model'] === 'string' && b['model'] !== '' ? b['model'] : b['name'];
        if (typeof name !== 'string' || name === '') throw new BrokerError('invalid_request', 'model is required', { details: { field: 'model' } });
        const fleet = await source.current();
        const group = usableGroup(fleet, admission, req, name);
        // Ollama's own words for a model it does not have.
        if (group === undefined) throw new BrokerError('model_not_found', `model '${name}' not found`, { details: { field: 'model' } });
        sink.send(200, JSON_HEADERS, JSON.stringify(await showModel(group, name)));
      },
    },
    {
      // What Ollama clients ask first (Open WebUI, ollama-js): the Ollama API version spoken here.
      method: 'GET',
      path: '/api/version',
      errorShape: ollamaErrorShape,
      handle({ sink }) {
        sink.send(200, JSON_HEADERS, OLLAMA_VERSION_BODY);
      },
    },
    {
      // OpenAI's list, or Anthropic's to a client that says `anthropic-version` (its SDKs
      // always do): both APIs list models at this path.
      method: 'GET',
      path: '/v1/models',
      lists: true,
      async handle({ req, sink }) {
        const anthropic = req.headers['anthropic-version'] !== undefined;
        const fleet = await source.current();
        const groups = usableGroups(fleet, admission, req);
        if (anthropic) {
          const data = groups.map((g) => anthropicModel(g.name));
          sink.send(200, JSON_HEADERS, JSON.stringify({ data, has_more: false, first_id: data[0]?.id ?? null, last_id: data.at(-1)?.id ?? null }));
          return;
        }
        const data = groups.map((g) => ({ id: g.name, object: 'model', created: 0, owned_by: 'edge-broker' }));
        sink.send(200, JSON_HEADERS, JSON.stringify({ object: 'list', data }));
      },
    },
    {
      // openai's models.retrieve() (Anthropic's models.retrieve() with anthropic-version): one
      // group, by its name or alias (openai-node v4 sends `org/name` unencoded).
      method: 'GET',
      path: '/v1/models/:model*',
      lists: true,
      errorShape: openaiErrorShape,
      async handle({ req, sink, params }) {
        const anthropic = req.headers['anthropic-version'] !== undefined;
        const fleet = await source.current();
        const name = params['model']!;
        const group = usableGroup(fleet, admission, req, name);
        if (group === undefined) {
          const err = notServed(usableGroups(fleet, admission, req), name);
          if (!anthropic) throw err;
          sink.send(404, JSON_HEADERS, JSON.stringify(anthropicErrorShape(err.code, err.message, req.id, 404, 'model')));
          return;
        }
        sink.send(200, JSON_HEADERS, JSON.stringify(anthropic ? anthropicModel(group.name) : { id: group.name, object: 'model', created: 0, owned_by: 'edge-broker' }));
      },
    },
    {
      method: 'GET',
      path: '/api/tags',
      lists: true,
      errorShape: ollamaErrorShape,
      async handle({ req, sink }) {
        const fleet = await source.current();
        const models = usableGroups(fleet, admission, req).map((g) => ollamaModel(fleet, g));
        sink.send(200, JSON_HEADERS, JSON.stringify({ models }));
      },
    },
    {
      // What is loaded now (`ollama ps`, Open WebUI): the groups a server has in memory
      // (warm-first routing's view: an Ollama's /api/ps, read by the health checks).
      method: 'GET',
      path: '/api/ps',
      lists: true,
      errorShape: ollamaErrorShape,
      async handle({ req, sink }) {
        const fleet = await source.current();
        const expires = new Date(Date.now() + OLLAMA_KEEP_ALIVE_MS).toISOString();
        const models = usableGroups(fleet, admission, req)
          .filter((g) => admission.scheduler?.loaded(g) ?? true)
          .map((g) => {
            const { modified_at: _m, ...m } = ollamaModel(fleet, g);
            return { ...m, expires_at: expires, size_vram: 0 };
          });
        sink.send(200, JSON_HEADERS, JSON.stringify({ models }));
      },
    },
  ];
}

/** A model group as Anthropic's models API lists a model. */
function anthropicModel(name: string): Record<string, unknown> {
  return { type: 'model', id: name, display_name: name, created_at: new Date(0).toISOString() };
}
