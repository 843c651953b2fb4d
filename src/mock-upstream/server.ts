// An LLM upstream simulator speaking the OpenAI and Ollama wire formats, for
// tests, benchmarks and the demo. It is the baseline in benchmarks, so the hot
// path does no logging and builds replies from precomputed strings.
//
//   const mock = await createMockUpstream({ tokens: 8 });
//   await fetch(mock.url + '/v1/chat/completions', { method: 'POST', body: ... });
//   mock.stats.requests['/v1/chat/completions'] // 1
//   await mock.close();

import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { ERROR_CASES, Exchange, resetConnection, sendBody, type ErrorCase, type FailMode, type Knobs, type RawHeaders } from './generate.ts';
import { OLLAMA_JSON, VERSION_BODY, ollamaChat, ollamaError, ollamaGenerate, ollamaShow, psBody, tagsBody } from './ollama.ts';
import { OPENAI_JSON, chatCompletions, completions, modelsListBody, openaiError } from './openai.ts';
import { ollamaEmbed, openaiEmbeddings } from './embeddings.ts';
import { responses } from './responses.ts';

export type { FailMode, Knobs } from './generate.ts';
export { mockText } from './tokens.ts';
export { mockToolArguments, mockToolName } from './tools.ts';
export { mockEmbedding } from './embeddings.ts';

export interface MockUpstreamOptions {
  /** 0 (default) picks a free port. */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Delay before the first token, ms. Default 0. Header: x-mock-ttft-ms. */
  ttftMs?: number;
  /** Tokens per second after the first; 0 (default) = as fast as possible. Header: x-mock-tps. */
  tps?: number;
  /** Output length in tokens. Default 16. Header: x-mock-tokens. */
  tokens?: number;
  /** Make every request fail: an HTTP status (500, 429, ...), 'reset', 'stall' or 'none' (default). Header: x-mock-fail. */
  fail?: FailMode | string;
  /** For 'reset' and 'stall': content tokens written before the cut. Default 0. Header: x-mock-fail-after. */
  failAfter?: number;
  /** Chat answers are this many tool calls instead of text, in each API's wire format. Default 0. Header: x-mock-tool-calls. */
  toolCalls?: number;
  /** Whose error bodies the OpenAI routes send for context/ratelimit/overloaded/badrequest: 'openai' (default) or 'vllm'. Header: x-mock-flavor. */
  flavor?: 'openai' | 'vllm';
  /** /v1/embeddings answers floats even to encoding_format "base64", as some OpenAI-compatible servers (SGLang, Infinity) have. Default false. */
  embedFloats?: boolean;
  /** Models listed by /v1/models, /api/tags and /api/ps; the first is used when a request names none. Default ['mock-model']. */
  models?: readonly string[];
  /** Models /api/ps reports as loaded now (warm). Default: all of `models`. Changeable with setKnobs. */
  loaded?: readonly string[];
  /** Keep-alive timeout of idle connections, ms. Default 65000. */
  keepAliveTimeoutMs?: number;
  /** Largest accepted request body, bytes. Default 8 MiB. */
  maxBodyBytes?: number;
}

export interface MockUpstreamStats {
  /** Requests received since start (or resetStats). */
  total: number;
  /** Requests per path (no query string), unknown paths included. */
  requests: Record<string, number>;
  /** Requests whose response has not closed yet. */
  open: number;
  /** Responses that ended normally (error replies included). */
  completed: number;
  /** Requests whose client went away before the response ended. Cuts made by the mock (`reset`) are not counted. */
  clientClosed: number;
  lastMethod: string | undefined;
  lastPath: string | undefined;
  lastHeaders: IncomingHttpHeaders | undefined;
  /** Parsed JSON body of the last request; undefined for GET or when the body was not valid JSON. */
  lastBody: unknown;
}

export interface MockUpstream {
  readonly port: number;
  /** e.g. http://127.0.0.1:34567 (no trailing slash). */
  readonly url: string;
  /** Live counters: read them any time, they are updated in place. */
  readonly stats: Readonly<MockUpstreamStats>;
  /** The process-level knobs in effect. */
  readonly knobs: Knobs;
  /** Changes the process-level knobs of a running mock (a deployment that slows down or recovers). */
  setKnobs(change: Partial<Pick<MockUpstreamOptions, 'ttftMs' | 'tps' | 'tokens' | 'fail' | 'failAfter' | 'toolCalls' | 'loaded' | 'flavor'>>): void;
  /** Zero the counters (except `open`) and forget the last request. */
  resetStats(): void;
  /** Resolves once no request is open, e.g. after a client abort has reached the mock. Rejects after timeoutMs (default 5000). */
  idle(timeoutMs?: number): Promise<void>;
  /** Stops listening and destroys every connection, stalled ones included. */
  close(): Promise<void>;
}

const MAX_TOKENS = 1_000_000;
const MAX_TOOL_CALLS = 64;
const RETRY_AFTER: RawHeaders = ['retry-after', '1'];
const CONNECTION_CLOSE: RawHeaders = ['connection', 'close'];

type Api = 'openai' | 'ollama';
type Generate = (ex: Exchange, body: Record<string, unknown>, knobs: Knobs, defaultModel: string) => void;
interface Route {
  readonly method: 'GET' | 'POST';
  readonly api: Api;
  readonly generate?: Generate;
  readonly get?: () => { contentType: string; body: string };
}

/** Parses a fail mode; undefined when it is not one. */
export function parseFail(v: string | number): FailMode | undefined {
  if (typeof v === 'number') return Number.isInteger(v) && v >= 400 && v <= 599 ? v : undefined;
  const s = v.trim().toLowerCase();
  if (s === '' || s === 'none') return 'none';
  if (s === 'reset' || s === 'stall' || s === 'garbage') return s;
  if (ERROR_CASES.includes(s)) return s as ErrorCase;
  return /^[45]\d\d$/.test(s) ? Number(s) : undefined;
}

/** A knob value: a finite number >= 0 (an integer for counts). NaN when invalid. */
function knobNumber(v: string | number, integer: boolean, max = Infinity): number {
  const n = typeof v === 'number' ? v : v.trim() === '' ? NaN : Number(v);
  if (!Number.isFinite(n) || n < 0 || n > max || (integer && !Number.isInteger(n))) return NaN;
  return n;
}

function knobsFromOptions(o: MockUpstreamOptions): Knobs {
  const check = (name: string, v: number | undefined, dflt: number, integer: boolean, max?: number): number => {
    if (v === undefined) return dflt;
    const n = knobNumber(v, integer, max);
    if (Number.isNaN(n)) throw new RangeError(`mock-upstream: ${name} must be a ${integer ? 'whole ' : ''}number >= 0${max === undefined ? '' : ` and <= ${max}`}, got ${v}`);
    return n;
  };
  const fail = o.fail === undefined ? 'none' : parseFail(o.fail);
  if (fail === undefined) throw new RangeError(`mock-upstream: fail must be none, reset, stall, garbage, context, ratelimit, overloaded, badrequest or an HTTP status 400-599, got ${String(o.fail)}`);
  if (o.flavor !== undefined && o.flavor !== 'openai' && o.flavor !== 'vllm') throw new RangeError(`mock-upstream: flavor must be openai or vllm, got ${String(o.flavor)}`);
  return {
    ttftMs: check('ttftMs', o.ttftMs, 0, false),
    tps: check('tps', o.tps, 0, false),
    tokens: check('tokens', o.tokens, 16, true, MAX_TOKENS),
    fail,
    failAfter: check('failAfter', o.failAfter, 0, true),
    toolCalls: check('toolCalls', o.toolCalls, 0, true, MAX_TOOL_CALLS),
    flavor: o.flavor ?? 'openai',
    embedFloats: o.embedFloats === true,
  };
}

function header(h: IncomingHttpHeaders, name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

/** The knobs for one request: process defaults overridden by x-mock-* headers. A string is the error to reply with. */
function requestKnobs(h: IncomingHttpHeaders, d: Knobs): Knobs | string {
  const ttft = header(h, 'x-mock-ttft-ms');
  const tps = header(h, 'x-mock-tps');
  const tokens = header(h, 'x-mock-tokens');
  const fail = header(h, 'x-mock-fail');
  const failAfter = header(h, 'x-mock-fail-after');
  const toolCalls = header(h, 'x-mock-tool-calls');
  const flavor = header(h, 'x-mock-flavor');
  if (ttft === undefined && tps === undefined && tokens === undefined && fail === undefined && failAfter === undefined && toolCalls === undefined && flavor === undefined) return d;
  const k = { ...d } as { -readonly [P in keyof Knobs]: Knobs[P] };
  if (ttft !== undefined && Number.isNaN((k.ttftMs = knobNumber(ttft, false)))) return `invalid x-mock-ttft-ms header: ${ttft}`;
  if (tps !== undefined && Number.isNaN((k.tps = knobNumber(tps, false)))) return `invalid x-mock-tps header: ${tps}`;
  if (tokens !== undefined && Number.isNaN((k.tokens = knobNumber(tokens, true, MAX_TOKENS)))) return `invalid x-mock-tokens header: ${tokens}`;
  if (failAfter !== undefined && Number.isNaN((k.failAfter = knobNumber(failAfter, true)))) return `invalid x-mock-fail-after header: ${failAfter}`;
  if (toolCalls !== undefined && Number.isNaN((k.toolCalls = knobNumber(toolCalls, true, MAX_TOOL_CALLS)))) return `invalid x-mock-tool-calls header: ${toolCalls}`;
  if (flavor !== undefined) {
    if (flavor !== 'openai' && flavor !== 'vllm') return `invalid x-mock-flavor header: ${flavor}`;
    k.flavor = flavor;
  }
  if (fail !== undefined) {
    const f = parseFail(fail);
    if (f === undefined) return `invalid x-mock-fail header: ${fail}`;
    k.fail = f;
  }
  return k;
}

function apiError(api: Api, res: ServerResponse, status: number, message: string, extra?: RawHeaders): void {
  if (api === 'openai') openaiError(res, status, message, extra);
  else ollamaError(res, status, message, extra);
}

/** The reply to an injected HTTP failure, with the messages the real services send. */
function injectedFailure(api: Api, res: ServerResponse, status: number): void {
  let message: string;
  if (status === 429) {
    message = api === 'openai'
      ? 'Rate limit reached for requests (mock-upstream). Please try again in 1s.'
      : 'server busy, please try again. maximum pending requests exceeded';
  } else if (status === 503) {
    message = api === 'openai' ? 'The engine is currently overloaded, please try again later.' : 'server overloaded, please try again later';
  } else if (status >= 500) {
    message = api === 'openai' ? 'The server had an error while processing your request. Sorry about that!' : 'llama runner process has terminated';
  } else {
    message = `mock-upstream: injected failure ${status}`;
  }
  apiError(api, res, status, message, status === 429 || status === 503 ? RETRY_AFTER : undefined);
}

/** What the real servers answer in each error case (the broker classifies these bodies: src/llm/upstream-class.ts). */
function errorCase(api: Api, flavor: 'openai' | 'vllm', res: ServerResponse, c: ErrorCase): void {
  const json = (status: number, body: unknown, extra?: RawHeaders): void => sendBody(res, status, api === 'openai' ? OPENAI_JSON : OLLAMA_JSON, JSON.stringify(body), extra);
  if (api === 'ollama') {
    if (c === 'context') return json(400, { error: 'the input length exceeds the context length' });
    if (c === 'ratelimit') return json(429, { error: 'rate limit exceeded, please try again later' }, RETRY_AFTER);
    if (c === 'overloaded') return json(503, { error: 'server busy, please try again.  maximum pending requests exceeded' });
    return json(400, { error: 'json: cannot unmarshal string into Go struct field ChatRequest.messages of type []api.Message' });
  }
  if (flavor === 'vllm') {
    // vLLM's ErrorResponse: top-level object "error" (0.10+ nests the same under "error"; the broker reads both).
    const err = (status: number, type: string, message: string): void => json(status, { object: 'error', message, type, param: null, code: status });
    if (c === 'context') return err(400, 'BadRequestError', "This model's maximum context length is 4096 tokens. However, you requested 5120 tokens (4096 in the messages, 1024 in the completion). Please reduce the length of the messages or completion.");
    if (c === 'ratelimit') return err(429, 'TooManyRequestsError', 'Too many requests, please retry later.');
    if (c === 'overloaded') return err(503, 'ServiceUnavailableError', 'The server is overloaded and cannot take more requests now.');
    return err(400, 'BadRequestError', "[{'type': 'missing', 'loc': ('body', 'messages'), 'msg': 'Field required'}]");
  }
  const err = (status: number, message: string, type: string, code: string | null, param: string | null = null, extra?: RawHeaders): void => json(status, { error: { message, type, param, code } }, extra);
  if (c === 'context') return err(400, "This model's maximum context length is 8192 tokens. However, your messages resulted in 9013 tokens. Please reduce the length of the messages.", 'invalid_request_error', 'context_length_exceeded', 'messages');
  if (c === 'ratelimit') return err(429, 'Rate limit reached for gpt-4o in organization org-mock on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 20s.', 'requests', 'rate_limit_exceeded', null, RETRY_AFTER);
  if (c === 'overloaded') return err(503, 'The engine is currently overloaded, please try again later.', 'server_error', null);
  return err(400, "Invalid value for 'temperature': must be a number between 0 and 2.", 'invalid_request_error', 'invalid_value', 'temperature');
}

export async function createMockUpstream(opts: MockUpstreamOptions = {}): Promise<MockUpstream> {
  let defaults = knobsFromOptions(opts);
  const models = opts.models !== undefined && opts.models.length > 0 ? [...opts.models] : ['mock-model'];
  const defaultModel = models[0]!;
  let loaded: readonly string[] = opts.loaded ?? models;
  const maxBody = opts.maxBodyBytes ?? 8 * 1024 * 1024;
  const bootedAt = new Date();

  const modelsBody = modelsListBody(models, Math.floor(bootedAt.getTime() / 1000));
  const tags = tagsBody(models, bootedAt.toISOString());
  const routes = new Map<string, Route>([
    ['/v1/chat/completions', { method: 'POST', api: 'openai', generate: chatCompletions }],
    ['/v1/completions', { method: 'POST', api: 'openai', generate: completions }],
    ['/v1/embeddings', { method: 'POST', api: 'openai', generate: openaiEmbeddings }],
    ['/v1/responses', { method: 'POST', api: 'openai', generate: responses }],
    ['/v1/models', { method: 'GET', api: 'openai', get: () => ({ contentType: OPENAI_JSON, body: modelsBody }) }],
    ['/api/chat', { method: 'POST', api: 'ollama', generate: ollamaChat }],
    ['/api/generate', { method: 'POST', api: 'ollama', generate: ollamaGenerate }],
    ['/api/embed', { method: 'POST', api: 'ollama', generate: ollamaEmbed }],
    ['/api/tags', { method: 'GET', api: 'ollama', get: () => ({ contentType: OLLAMA_JSON, body: tags }) }],
    ['/api/ps', { method: 'GET', api: 'ollama', get: () => ({ contentType: OLLAMA_JSON, body: psBody(loaded) }) }],
    ['/api/show', { method: 'POST', api: 'ollama', generate: ollamaShow }],
    ['/api/version', { method: 'GET', api: 'ollama', get: () => ({ contentType: OLLAMA_JSON, body: VERSION_BODY }) }],
    ['/', { method: 'GET', api: 'ollama', get: () => ({ contentType: 'text/plain; charset=utf-8', body: 'Ollama is running' }) }],
  ]);

  const stats: MockUpstreamStats = {
    total: 0,
    requests: Object.create(null) as Record<string, number>,
    open: 0,
    completed: 0,
    clientClosed: 0,
    lastMethod: undefined,
    lastPath: undefined,
    lastHeaders: undefined,
    lastBody: undefined,
  };
  for (const path of routes.keys()) stats.requests[path] = 0;

  let idleWaiters: Array<() => void> = [];
  let seq = 0;

  const onRequest = (req: IncomingMessage, res: ServerResponse): void => {
    const startedAt = performance.now();
    const url = req.url ?? '/';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const method = req.method ?? 'GET';
    stats.total++;
    stats.requests[path] = (stats.requests[path] ?? 0) + 1;
    stats.open++;
    stats.lastMethod = method;
    stats.lastPath = path;
    stats.lastHeaders = req.headers;
    stats.lastBody = undefined;

    const ex = new Exchange(res, startedAt, ++seq);
    res.once('close', () => {
      ex.closed = true;
      if (ex.timer !== undefined) clearTimeout(ex.timer);
      stats.open--;
      if (res.writableEnded) stats.completed++;
      else if (!ex.selfDestroyed) stats.clientClosed++;
      if (stats.open === 0 && idleWaiters.length > 0) {
        const waiters = idleWaiters;
        idleWaiters = [];
        for (const w of waiters) w();
      }
    });

    const route = routes.get(path);
    const api: Api = path.startsWith('/api/') ? 'ollama' : 'openai';
    if (route === undefined) {
      apiError(api, res, 404, api === 'openai' ? `Invalid URL (${method} ${path})` : '404 page not found');
      return;
    }
    if (method !== route.method) {
      apiError(route.api, res, 405, `Method ${method} not allowed on ${path}`, ['allow', route.method]);
      return;
    }
    const knobs = requestKnobs(req.headers, defaults);
    if (typeof knobs === 'string') {
      apiError(route.api, res, 400, knobs);
      return;
    }

    if (route.get !== undefined) {
      // The error cases are a generation's (a prompt too long, a rate limit on tokens): the
      // server still lists its models, and a health check against it passes, as a real one's does.
      if (typeof knobs.fail === 'number') injectedFailure(route.api, res, knobs.fail);
      else if (knobs.fail === 'reset') resetConnection(ex);
      else if (knobs.fail !== 'stall') {
        const r = route.get();
        sendBody(res, 200, r.contentType, r.body);
      }
      return;
    }

    const generate = route.generate!;
    req.setEncoding('utf8');
    let text = '';
    let tooLarge = false;
    req.on('data', (chunk: string) => {
      if (tooLarge) return;
      text += chunk;
      if (text.length > maxBody) {
        tooLarge = true;
        apiError(route.api, res, 413, `request body is larger than ${maxBody} bytes`, CONNECTION_CLOSE);
      }
    });
    req.on('end', () => {
      if (tooLarge || ex.closed) return;
      let body: unknown;
      let parseError: string | undefined;
      try {
        body = JSON.parse(text);
        stats.lastBody = body;
      } catch (err) {
        parseError = (err as Error).message;
      }
      if (typeof knobs.fail === 'number') {
        injectedFailure(route.api, res, knobs.fail);
      } else if (ERROR_CASES.includes(knobs.fail)) {
        errorCase(route.api, knobs.flavor, res, knobs.fail as ErrorCase);
      } else if (parseError !== undefined) {
        apiError(route.api, res, 400,
          route.api === 'openai'
            ? `We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)`
            : `invalid JSON body: ${parseError}`);
      } else if (body === null || typeof body !== 'object' || Array.isArray(body)) {
        apiError(route.api, res, 400, 'request body must be a JSON object');
      } else {
        generate(ex, body as Record<string, unknown>, knobs, defaultModel);
      }
    });
  };

  const server = createServer({ noDelay: true }, onRequest);
  server.keepAliveTimeout = opts.keepAliveTimeoutMs ?? 65_000;
  server.headersTimeout = server.keepAliveTimeout + 1_000;
  server.requestTimeout = Math.max(server.requestTimeout, server.headersTimeout);
  server.on('connection', (socket: Socket) => socket.setNoDelay(true));

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;

  return {
    port: addr.port,
    url: `http://${host}:${addr.port}`,
    stats,
    get knobs() {
      return defaults;
    },
    setKnobs(change) {
      if (change.loaded !== undefined) loaded = change.loaded;
      defaults = knobsFromOptions({ ...opts, ...defaults, ...change });
    },
    resetStats() {
      stats.total = 0;
      for (const k of Object.keys(stats.requests)) stats.requests[k] = 0;
      stats.completed = 0;
      stats.clientClosed = 0;
      stats.lastMethod = undefined;
      stats.lastPath = undefined;
      stats.lastHeaders = undefined;
      stats.lastBody = undefined;
    },
    idle(timeoutMs = 5000) {
      if (stats.open === 0) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          idleWaiters = idleWaiters.filter((w) => w !== done);
          reject(new Error(`mock-upstream: ${stats.open} request(s) still open after ${timeoutMs} ms`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          resolve();
        };
        idleWaiters.push(done);
      });
    },
    close() {
      return new Promise<void>((resolve, reject) => {
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
    },
  };
}
