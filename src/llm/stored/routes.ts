// The Responses API's stored state, over HTTP: a request that continues a stored response
// (previous_response_id) and keeps its own (store), and the routes that read and delete
// them: GET /v1/responses/{id}, GET /v1/responses/{id}/input_items, DELETE /v1/responses/{id}.
import { BrokerError } from '../../errors.ts';
import { openaiErrorShape } from '../../front/error-body.ts';
import type { Route } from '../../front/http/router.ts';
import type { BrokerRequest, ReplySink } from '../../front/reply.ts';
import { apiKeyOf } from '../../guard/api-key.ts';
import { ownerOf } from '../cache/cache.ts';
import { RESPONSE_STATE, type ResponseState } from '../translate/responses_to_chat.ts';
import { capturing } from './capture.ts';
import { inputItems, type ResponseStore } from './responses.ts';

const JSON_HEADERS = { 'content-type': 'application/json' };

/** Whose stored responses a request reads and writes: the caller's API key or token subject (keyless callers share theirs). */
function ownerOfRequest(req: BrokerRequest): string {
  return ownerOf({ apiKey: apiKeyOf(req.headers), caller: req.caller });
}

/** What a Responses request continues, once its previous_response_id was put into its input. */
interface Expanded {
  readonly owner: string;
  readonly previousId: string | null;
  /** The stored turns before this one, oldest first. */
  readonly chain: string[];
  /** This turn's own input, as items (references resolved). */
  readonly own: unknown[];
}

/**
 * A previous_response_id becomes the conversation it names, put before this turn's input (the
 * prompt limits, the token count and the cache key then see the whole of it); item_reference
 * items become the stored items they name. An item of this turn's input already in the
 * conversation (the AI SDK sends both an id and references to what it holds) is there once.
 */
export async function expand(store: ResponseStore, req: BrokerRequest, body: Record<string, unknown>): Promise<Expanded> {
  const owner = ownerOfRequest(req);
  const previous = body['previous_response_id'];
  let input = body['input'];
  if (Array.isArray(input)) body['input'] = input = await referenced(store, input, owner);
  // Only with an input the request's own checks accept; they name what is wrong with one that is not.
  if (previous === undefined || previous === null || (typeof input !== 'string' && !Array.isArray(input))) return { owner, previousId: null, chain: [], own: inputItems(input) };
  if (typeof previous !== 'string' || previous === '') throw new BrokerError('invalid_request', 'previous_response_id must be a response id (a string)', { details: { field: 'previous_response_id' } });
  if (body['conversation'] !== undefined && body['conversation'] !== null) throw new BrokerError('invalid_request', 'previous_response_id and conversation cannot both be set', { details: { field: 'previous_response_id' } });
  const context = await store.context(previous, owner, 'previous_response_id');
  const held = new Set(context.items.map(idOf).filter((id) => id !== undefined));
  const own = inputItems(input).filter((it) => {
    const id = idOf(it);
    return id === undefined || !held.has(id);
  });
  body['input'] = [...context.items, ...own];
  delete body['previous_response_id'];
  return { owner, previousId: previous, chain: context.chain, own };
}

function idOf(item: unknown): string | undefined {
  const id = (item as Record<string, unknown> | null)?.['id'];
  return typeof id === 'string' && id !== '' ? id : undefined;
}

/**
 * Before the request is read: its input expanded (expand), and the reply's sink keeps the
 * Response it carries unless the client sent `store: false`.
 */
export async function continuing(store: ResponseStore, req: BrokerRequest, body: Record<string, unknown>, sink: ReplySink): Promise<ReplySink> {
  const { owner, previousId, chain, own } = await expand(store, req, body);
  const stored = body['store'] !== false;
  const state: ResponseState = { previousResponseId: previousId, stored };
  (body as { [RESPONSE_STATE]?: ResponseState })[RESPONSE_STATE] = state;
  if (!stored && previousId === null) return sink;
  return capturing(sink, stored ? (response) => store.put(response.id, { owner, previous: previousId, chain, input: own, response }) : null, previousId);
}

/** The id of the Response an item of one of the broker's own Responses belongs to (msg_<id>, fc_<id>_0, rs_<id>, ctc_<id>_0, tsc_<id>_0). */
const OWN_ITEM = /^(?:msg|fc|rs|ctc|tsc)_([0-9a-f]{32})(?:_|$)/;

/**
 * item_reference items → the items they name, from the stored Responses of the broker's own
 * that hold them (the AI SDK's OpenAI provider sends every earlier assistant turn so while
 * `store` is on). One that names nothing stored here is left as it is (translation leaves it out).
 */
async function referenced(store: ResponseStore, input: unknown[], owner: string): Promise<unknown[]> {
  const responseOf = (it: unknown): string | undefined => {
    const o = it as Record<string, unknown> | null;
    if (o === null || typeof o !== 'object' || o['type'] !== 'item_reference' || typeof o['id'] !== 'string') return undefined;
    const m = OWN_ITEM.exec(o['id']);
    return m === null ? undefined : `resp_${m[1]!}`;
  };
  const ids = [...new Set(input.map(responseOf).filter((id): id is string => id !== undefined))];
  if (ids.length === 0) return input;
  const records = await store.records(ids, owner);
  const items = new Map<string, unknown>();
  for (const r of records) for (const it of (r?.response['output'] as unknown[] | undefined) ?? []) {
    const id = (it as Record<string, unknown> | null)?.['id'];
    if (typeof id === 'string') items.set(id, it);
  }
  return input.map((it) => (responseOf(it) === undefined ? it : (items.get((it as { id: string }).id) ?? it)));
}

/** A listed input item, as OpenAI lists them: each with an id, a message's text as content parts. */
function listed(item: unknown, id: string): Record<string, unknown> {
  const o = (item !== null && typeof item === 'object' ? item : {}) as Record<string, unknown>;
  const out: Record<string, unknown> = { ...o, id };
  if ((o['type'] ?? 'message') === 'message') {
    out['type'] = 'message';
    if (typeof o['content'] === 'string') out['content'] = [{ type: o['role'] === 'assistant' ? 'output_text' : 'input_text', text: o['content'] }];
    out['status'] ??= 'completed';
  }
  return out;
}

function query(req: BrokerRequest): URLSearchParams {
  return new URLSearchParams(req.query);
}

/** GET, DELETE and POST under /v1/responses/{id}: the stored response, its input items, a delete; cancel and the rest are not served; nor are conversations. */
export function storedRoutes(store: ResponseStore | undefined): Route[] {
  const off = (): never => {
    throw new BrokerError('not_found', 'responses are not stored here (RESPONSES_STORE_MB=0): send the whole conversation as input');
  };
  const on = store !== undefined && store.enabled ? store : undefined;
  return [
    {
      method: 'GET',
      path: '/v1/responses/:id*',
      rateLimited: true,
      errorShape: openaiErrorShape,
      async handle({ req, params, sink }) {
        if (on === undefined) return off();
        const [id, sub, ...more] = params['id']!.split('/');
        const q = query(req);
        if (sub === undefined) {
          if (q.get('stream') === 'true') throw new BrokerError('invalid_request', 'stream=true resumes a background response: responses here are answered at once, read this one whole', { details: { field: 'stream' } });
          const r = await on.require(id!, ownerOfRequest(req));
          return sink.send(200, JSON_HEADERS, JSON.stringify(r.response));
        }
        if (sub !== 'input_items' || more.length > 0) throw new BrokerError('not_found', `no such route: GET /v1/responses/${params['id']}`);
        const owner = ownerOfRequest(req);
        const r = await on.require(id!, owner);
        // What the model was given: the conversation before it, then its own input.
        let before: unknown[] = [];
        if (r.previous !== null) {
          before = await on.context(r.previous, owner, 'id').then(
            (c) => c.items,
            (err: BrokerError) => {
              if (err.code !== 'previous_response_not_found') throw err;
              throw new BrokerError('not_found', `the input items of ${id!} cannot be listed: an earlier turn of its conversation is no longer stored`);
            },
          );
        }
        const base = id!.startsWith('resp_') ? id!.slice(5) : id!;
        // Each listed once by its id (a cursor names one): one that repeats an id gets its own.
        const seen = new Set<string>();
        const all = [...before, ...r.input].map((it, i) => {
          const own = idOf(it);
          const unique = own !== undefined && !seen.has(own) ? own : `item_${base}_${i}`;
          seen.add(unique);
          return listed(it, unique);
        });
        const order = q.get('order') ?? 'desc';
        if (order !== 'asc' && order !== 'desc') throw new BrokerError('invalid_request', 'order must be asc or desc', { details: { field: 'order' } });
        if (order === 'desc') all.reverse();
        const limitText = q.get('limit') ?? '20';
        const limit = Number(limitText);
        if (!/^\d+$/.test(limitText) || limit < 1 || limit > 100) throw new BrokerError('invalid_request', 'limit must be an integer from 1 to 100', { details: { field: 'limit' } });
        const after = q.get('after');
        let from = 0;
        if (after !== null) {
          const at = all.findIndex((it) => it['id'] === after);
          if (at === -1) throw new BrokerError('invalid_request', `after names no input item of ${id}`, { details: { field: 'after' } });
          from = at + 1;
        }
        const data = all.slice(from, from + limit);
        sink.send(200, JSON_HEADERS, JSON.stringify({ object: 'list', data, first_id: data[0]?.['id'] ?? null, last_id: data.at(-1)?.['id'] ?? null, has_more: from + limit < all.length }));
      },
    },
    {
      method: 'DELETE',
      path: '/v1/responses/:id*',
      rateLimited: true,
      errorShape: openaiErrorShape,
      async handle({ req, params, sink }) {
        if (on === undefined) return off();
        const id = params['id']!;
        if (id.includes('/')) throw new BrokerError('not_found', `no such route: DELETE /v1/responses/${id}`);
        if (!(await on.delete(id, ownerOfRequest(req)))) throw new BrokerError('not_found', `Response with id '${id}' not found.`);
        sink.send(200, JSON_HEADERS, JSON.stringify({ id, object: 'response', deleted: true }));
      },
    },
    {
      method: 'POST',
      path: '/v1/responses/:id*',
      rateLimited: true,
      errorShape: openaiErrorShape,
      async handle({ req, params }) {
        const [id, sub, ...more] = params['id']!.split('/');
        if (on !== undefined && sub === 'cancel' && more.length === 0) {
          await on.require(id!, ownerOfRequest(req));
          throw new BrokerError('invalid_request', 'only a background response can be cancelled: responses here are answered at once', { details: { field: 'id' } });
        }
        throw new BrokerError('not_found', `no such route: POST /v1/responses/${params['id']} (background responses and compaction are not served here)`);
      },
    },
    // The Conversations API (the Agents SDK's OpenAIConversationsSession): not served, said so.
    ...(['GET', 'POST', 'DELETE'] as const).flatMap((method) =>
      ['/v1/conversations', '/v1/conversations/:rest*'].map(
        (path): Route => ({
          method,
          path,
          errorShape: openaiErrorShape,
          handle() {
            throw new BrokerError('not_found', 'conversations are not served here: continue a conversation with previous_response_id (stored responses), or send it whole as input');
          },
        }),
      ),
    ),
  ];
}
