// OpenAI wire format: /v1/chat/completions, /v1/completions (JSON or SSE) and /v1/models.

import type { ServerResponse } from 'node:http';
import { sendBody, streamAnswer, unaryAnswer, type Exchange, type Knobs, type RawHeaders, type StreamEncoder } from './generate.ts';
import { contentChars, estimateTokens, messagesChars, mockTextJson, tokenJson } from './tokens.ts';
import { fragmentJson, fragmentsPerCall, mockToolArguments, mockToolName } from './tools.ts';

export const OPENAI_JSON = 'application/json';
const SSE_HEADERS: RawHeaders = ['content-type', 'text/event-stream', 'cache-control', 'no-cache'];
const DONE = 'data: [DONE]\n\n';
const FINGERPRINT = '"system_fingerprint":"fp_mock"';

type Body = Record<string, unknown>;

export function openaiErrorBody(message: string, type: string, code: string | null = null, param: string | null = null): string {
  return JSON.stringify({ error: { message, type, param, code } });
}

/** An error reply in OpenAI's shape; the `type` and `code` follow what api.openai.com sends for the status. */
export function openaiError(res: ServerResponse, status: number, message: string, extra?: RawHeaders): void {
  let type = 'invalid_request_error';
  let code: string | null = null;
  if (status === 429) {
    type = 'requests';
    code = 'rate_limit_exceeded';
  } else if (status >= 500) {
    type = 'server_error';
  } else if (status === 401) {
    code = 'invalid_api_key';
  }
  sendBody(res, status, OPENAI_JSON, openaiErrorBody(message, type, code), extra);
}

let lastModel = '';
let lastModelJson = '""';
/** JSON literal of the model name; the last one is cached since benchmarks send the same model every time. */
export function modelJson(model: string): string {
  if (model !== lastModel) {
    lastModel = model;
    lastModelJson = JSON.stringify(model);
  }
  return lastModelJson;
}

/** The requested model, or the mock's default when the body has none. */
export function pickModel(body: Body, fallback: string): string {
  return typeof body.model === 'string' && body.model.length > 0 ? body.model : fallback;
}

/** Output length once `cap` (max_tokens, num_predict) is applied; below `tokens` means the finish reason is "length". */
export function capTokens(tokens: number, cap: unknown): number {
  return typeof cap === 'number' && cap >= 0 && cap < tokens ? Math.floor(cap) : tokens;
}

export function usageJson(prompt: number, completion: number): string {
  return `{"prompt_tokens":${prompt},"completion_tokens":${completion},"total_tokens":${prompt + completion}}`;
}

function includeUsage(body: Body): boolean {
  const so = body.stream_options;
  return so !== null && typeof so === 'object' && (so as { include_usage?: unknown }).include_usage === true;
}

/** The fields every chunk starts with, ending inside `"choices":[`. */
function chunkHead(id: string, object: string, created: number, model: string): string {
  return `data: {"id":"${id}","object":"${object}","created":${created},"model":${modelJson(model)},${FINGERPRINT},"choices":[`;
}

class ChatStream implements StreamEncoder {
  private readonly pre: string;
  private readonly preContent: string;
  private readonly post: string;
  constructor(
    private readonly head0: string,
    private readonly usage: string | undefined,
    private readonly finish: string,
  ) {
    this.pre = head0 + '{"index":0,"delta":{';
    this.preContent = this.pre + '"content":';
    this.post = '},"logprobs":null,"finish_reason":null}]' + (usage === undefined ? '' : ',"usage":null') + '}\n\n';
  }
  head(): string {
    return this.pre + '"role":"assistant","content":""' + this.post;
  }
  tokens(from: number, to: number): string {
    let s = '';
    for (let i = from; i < to; i++) s += this.preContent + tokenJson(i) + this.post;
    return s;
  }
  tail(): string {
    let s = this.pre + `},"logprobs":null,"finish_reason":"${this.finish}"}]` + (this.usage === undefined ? '}\n\n' : ',"usage":null}\n\n');
    if (this.usage !== undefined) s += this.head0 + '],"usage":' + this.usage + '}\n\n';
    return s + DONE;
  }
}

/** A chat answer of tool calls: each streamed "token" is one argument fragment of one call. */
class ToolCallStream implements StreamEncoder {
  private readonly pre: string;
  private readonly post: string;
  constructor(
    private readonly head0: string,
    private readonly usage: string | undefined,
    private readonly body: Body,
    private readonly n: number,
    private readonly seq: number,
  ) {
    this.pre = head0 + '{"index":0,"delta":{';
    this.post = '},"logprobs":null,"finish_reason":null}]' + (usage === undefined ? '' : ',"usage":null') + '}\n\n';
  }
  head(): string {
    return this.pre + '"role":"assistant","content":null' + this.post;
  }
  tokens(from: number, to: number): string {
    const per = fragmentsPerCall(this.n);
    let s = '';
    for (let f = from; f < to; f++) {
      const c = Math.floor(f / per);
      const k = f % per;
      const call = k === 0
        ? `{"index":${c},"id":"call_mock_${this.seq}_${c}","type":"function","function":{"name":${JSON.stringify(mockToolName(this.body, c))},"arguments":${fragmentJson(c, k, this.n)}}}`
        : `{"index":${c},"function":{"arguments":${fragmentJson(c, k, this.n)}}}`;
      s += this.pre + '"tool_calls":[' + call + ']' + this.post;
    }
    return s;
  }
  tail(): string {
    let s = this.pre + '},"logprobs":null,"finish_reason":"tool_calls"}]' + (this.usage === undefined ? '}\n\n' : ',"usage":null}\n\n');
    if (this.usage !== undefined) s += this.head0 + '],"usage":' + this.usage + '}\n\n';
    return s + DONE;
  }
}

function toolCallsJson(body: Body, calls: number, n: number, seq: number): string {
  const list = [];
  for (let c = 0; c < calls; c++) list.push({ id: `call_mock_${seq}_${c}`, type: 'function', function: { name: mockToolName(body, c), arguments: mockToolArguments(c, n) } });
  return JSON.stringify(list);
}

class CompletionStream implements StreamEncoder {
  private readonly pre: string;
  private readonly post: string;
  constructor(
    private readonly head0: string,
    private readonly usage: string | undefined,
    private readonly finish: string,
  ) {
    this.pre = head0 + '{"text":';
    this.post = ',"index":0,"logprobs":null,"finish_reason":null}]' + (usage === undefined ? '' : ',"usage":null') + '}\n\n';
  }
  head(): string {
    return '';
  }
  tokens(from: number, to: number): string {
    let s = '';
    for (let i = from; i < to; i++) s += this.pre + tokenJson(i) + this.post;
    return s;
  }
  tail(): string {
    let s = this.pre + `"","index":0,"logprobs":null,"finish_reason":"${this.finish}"}]` + (this.usage === undefined ? '}\n\n' : ',"usage":null}\n\n');
    if (this.usage !== undefined) s += this.head0 + '],"usage":' + this.usage + '}\n\n';
    return s + DONE;
  }
}

/** POST /v1/chat/completions */
export function chatCompletions(ex: Exchange, body: Body, knobs: Knobs, defaultModel: string): void {
  const messages = body.messages;
  if (!Array.isArray(messages)) {
    openaiError(ex.res, 400, "Missing required parameter: 'messages'.");
    return;
  }
  const model = pickModel(body, defaultModel);
  const n = capTokens(knobs.tokens, body.max_tokens ?? body.max_completion_tokens);
  const finish = n < knobs.tokens ? 'length' : 'stop';
  const prompt = estimateTokens(messagesChars(messages));
  const id = 'chatcmpl-mock-' + ex.seq;
  const created = Math.floor(Date.now() / 1000);
  const plan = { n, knobs };

  const calls = knobs.toolCalls;
  if (calls > 0) {
    if (body.stream === true) {
      const usage = includeUsage(body) ? usageJson(prompt, n) : undefined;
      // One paced "token" per argument fragment; failAfter counts fragments.
      streamAnswer(ex, { n: calls * fragmentsPerCall(n), knobs }, SSE_HEADERS, new ToolCallStream(chunkHead(id, 'chat.completion.chunk', created, model), usage, body, n, ex.seq));
      return;
    }
    unaryAnswer(ex, plan, OPENAI_JSON, () =>
      `{"id":"${id}","object":"chat.completion","created":${created},"model":${modelJson(model)},${FINGERPRINT},` +
      `"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,"annotations":[],"tool_calls":${toolCallsJson(body, calls, n, ex.seq)}},"logprobs":null,"finish_reason":"tool_calls"}],` +
      `"usage":${usageJson(prompt, n)}}`,
    );
    return;
  }

  if (body.stream === true) {
    const usage = includeUsage(body) ? usageJson(prompt, n) : undefined;
    streamAnswer(ex, plan, SSE_HEADERS, new ChatStream(chunkHead(id, 'chat.completion.chunk', created, model), usage, finish));
    return;
  }
  unaryAnswer(ex, plan, OPENAI_JSON, () =>
    `{"id":"${id}","object":"chat.completion","created":${created},"model":${modelJson(model)},${FINGERPRINT},` +
    `"choices":[{"index":0,"message":{"role":"assistant","content":${mockTextJson(n)},"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"${finish}"}],` +
    `"usage":${usageJson(prompt, n)}}`,
  );
}

/** POST /v1/completions */
export function completions(ex: Exchange, body: Body, knobs: Knobs, defaultModel: string): void {
  const model = pickModel(body, defaultModel);
  const n = capTokens(knobs.tokens, body.max_tokens);
  const finish = n < knobs.tokens ? 'length' : 'stop';
  const prompt = estimateTokens(contentChars(body.prompt));
  const id = 'cmpl-mock-' + ex.seq;
  const created = Math.floor(Date.now() / 1000);
  const plan = { n, knobs };

  if (body.stream === true) {
    const usage = includeUsage(body) ? usageJson(prompt, n) : undefined;
    streamAnswer(ex, plan, SSE_HEADERS, new CompletionStream(chunkHead(id, 'text_completion', created, model), usage, finish));
    return;
  }
  unaryAnswer(ex, plan, OPENAI_JSON, () =>
    `{"id":"${id}","object":"text_completion","created":${created},"model":${modelJson(model)},${FINGERPRINT},` +
    `"choices":[{"text":${mockTextJson(n)},"index":0,"logprobs":null,"finish_reason":"${finish}"}],` +
    `"usage":${usageJson(prompt, n)}}`,
  );
}

/** The body of GET /v1/models, built once per mock instance. */
export function modelsListBody(models: readonly string[], created: number): string {
  return JSON.stringify({
    object: 'list',
    data: models.map((id) => ({ id, object: 'model', created, owned_by: 'mock-upstream' })),
  });
}
