// Ollama wire format: /api/chat, /api/generate (NDJSON stream by default, one
// JSON object with "stream": false), /api/tags, /api/ps, /api/version.

import type { ServerResponse } from 'node:http';
import { sendBody, streamAnswer, unaryAnswer, type Exchange, type Knobs, type RawHeaders, type StreamEncoder } from './generate.ts';
import { capTokens, modelJson, pickModel } from './openai.ts';
import { contentChars, estimateTokens, messagesChars, mockTextJson, tokenJson } from './tokens.ts';
import { mockToolArguments, mockToolName } from './tools.ts';

export const OLLAMA_JSON = 'application/json; charset=utf-8';
const NDJSON_HEADERS: RawHeaders = ['content-type', 'application/x-ndjson'];
const DIGEST = 'f'.repeat(64);
const MODEL_DETAILS = {
  parent_model: '',
  format: 'gguf',
  family: 'mock',
  families: ['mock'],
  parameter_size: '1B',
  quantization_level: 'Q4_K_M',
};
const MODEL_SIZE = 1_000_000_000;

type Body = Record<string, unknown>;

/** Ollama's error shape: `{"error": "..."}`. */
export function ollamaError(res: ServerResponse, status: number, message: string, extra?: RawHeaders): void {
  sendBody(res, status, OLLAMA_JSON, JSON.stringify({ error: message }), extra);
}

const NS_PER_MS = 1e6;

/**
 * The statistics of the done line, in ns. Time before the first token is
 * prompt evaluation, the rest is eval; the model is always loaded, so
 * load_duration is a token 1 µs. Durations are at least 1 ns so clients can divide by them.
 */
function doneStats(startedAt: number, firstTokenAt: number, endedAt: number, prompt: number, n: number): string {
  const promptEval = Math.max(1, Math.round((firstTokenAt - startedAt) * NS_PER_MS));
  const evalNs = Math.max(1, Math.round((endedAt - firstTokenAt) * NS_PER_MS));
  const load = 1000;
  const total = Math.max(load + promptEval + evalNs, Math.round((endedAt - startedAt) * NS_PER_MS));
  return (
    `"total_duration":${total},"load_duration":${load},"prompt_eval_count":${prompt},` +
    `"prompt_eval_duration":${promptEval},"eval_count":${n},"eval_duration":${evalNs}}`
  );
}

/** Shared by /api/chat and /api/generate: they differ in how a token is wrapped. */
class OllamaStream implements StreamEncoder {
  private readonly model: string;
  constructor(
    model: string,
    /** `"message":{"role":"assistant","content":` or `"response":` */
    private readonly open: string,
    /** `}` closing the message object, or '' */
    private readonly close: string,
    private readonly startedAt: number,
    private readonly prompt: number,
    private readonly n: number,
    private readonly reason: string,
  ) {
    this.model = '{"model":' + modelJson(model) + ',"created_at":"';
  }
  head(): string {
    return '';
  }
  tokens(from: number, to: number): string {
    const pre = this.model + new Date().toISOString() + '",' + this.open;
    const post = this.close + ',"done":false}\n';
    let s = '';
    for (let i = from; i < to; i++) s += pre + tokenJson(i) + post;
    return s;
  }
  tail(firstTokenAt: number, endedAt: number): string {
    return (
      this.model + new Date().toISOString() + '",' + this.open + '""' + this.close +
      `,"done_reason":"${this.reason}","done":true,` +
      doneStats(this.startedAt, firstTokenAt, endedAt, this.prompt, this.n) + '\n'
    );
  }
}

/** A chat answer of tool calls: each streamed "token" is one whole call, as Ollama sends them. */
class ToolCallStream implements StreamEncoder {
  private readonly model: string;
  constructor(
    model: string,
    private readonly body: Body,
    private readonly startedAt: number,
    private readonly prompt: number,
    private readonly n: number,
  ) {
    this.model = '{"model":' + modelJson(model) + ',"created_at":"';
  }
  head(): string {
    return '';
  }
  tokens(from: number, to: number): string {
    let s = '';
    for (let c = from; c < to; c++) {
      s += this.model + new Date().toISOString() + '","message":{"role":"assistant","content":"","tool_calls":[' + toolCallJson(this.body, c, this.n) + ']},"done":false}\n';
    }
    return s;
  }
  tail(firstTokenAt: number, endedAt: number): string {
    return this.model + new Date().toISOString() + '","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,' + doneStats(this.startedAt, firstTokenAt, endedAt, this.prompt, this.n) + '\n';
  }
}

function toolCallJson(body: Body, c: number, n: number): string {
  return '{"function":{"index":' + c + ',"name":' + JSON.stringify(mockToolName(body, c)) + ',"arguments":' + mockToolArguments(c, n) + '}}';
}

function toolAnswer(ex: Exchange, body: Body, knobs: Knobs, model: string, prompt: number): void {
  const n = capTokens(knobs.tokens, numPredict(body));
  const calls = knobs.toolCalls;
  if (body.stream !== false) {
    // One paced "token" per call; failAfter counts calls.
    streamAnswer(ex, { n: calls, knobs }, NDJSON_HEADERS, new ToolCallStream(model, body, ex.startedAt, prompt, n));
    return;
  }
  const list: string[] = [];
  for (let c = 0; c < calls; c++) list.push(toolCallJson(body, c, n));
  const startedAt = ex.startedAt;
  unaryAnswer(ex, { n, knobs }, OLLAMA_JSON, (firstTokenAt, endedAt) =>
    `{"model":${modelJson(model)},"created_at":"${new Date().toISOString()}","message":{"role":"assistant","content":"","tool_calls":[${list.join(',')}]},` +
    `"done_reason":"stop","done":true,` + doneStats(startedAt, firstTokenAt, endedAt, prompt, n),
  );
}

const CHAT_OPEN = '"message":{"role":"assistant","content":';
const GENERATE_OPEN = '"response":';

function numPredict(body: Body): unknown {
  const o = body.options;
  return o !== null && typeof o === 'object' ? (o as { num_predict?: unknown }).num_predict : undefined;
}

function answer(ex: Exchange, body: Body, knobs: Knobs, model: string, prompt: number, open: string, close: string): void {
  const n = capTokens(knobs.tokens, numPredict(body));
  const reason = n < knobs.tokens ? 'length' : 'stop';
  const plan = { n, knobs };
  if (body.stream !== false) {
    streamAnswer(ex, plan, NDJSON_HEADERS, new OllamaStream(model, open, close, ex.startedAt, prompt, n, reason));
    return;
  }
  const startedAt = ex.startedAt;
  unaryAnswer(ex, plan, OLLAMA_JSON, (firstTokenAt, endedAt) =>
    `{"model":${modelJson(model)},"created_at":"${new Date().toISOString()}",${open}${mockTextJson(n)}${close},` +
    `"done_reason":"${reason}","done":true,` + doneStats(startedAt, firstTokenAt, endedAt, prompt, n),
  );
}

/** POST /api/chat */
export function ollamaChat(ex: Exchange, body: Body, knobs: Knobs, defaultModel: string): void {
  const messages = body.messages ?? [];
  if (!Array.isArray(messages)) {
    ollamaError(ex.res, 400, 'messages must be an array');
    return;
  }
  const prompt = estimateTokens(messagesChars(messages));
  if (knobs.toolCalls > 0) return toolAnswer(ex, body, knobs, pickModel(body, defaultModel), prompt);
  answer(ex, body, knobs, pickModel(body, defaultModel), prompt, CHAT_OPEN, '}');
}

/** POST /api/generate */
export function ollamaGenerate(ex: Exchange, body: Body, knobs: Knobs, defaultModel: string): void {
  const chars = contentChars(body.prompt) + contentChars(body.system);
  answer(ex, body, knobs, pickModel(body, defaultModel), estimateTokens(chars), GENERATE_OPEN, '');
}

/** Ollama names carry a tag; a bare name means `:latest`. */
function tagged(name: string): string {
  return name.includes(':') ? name : name + ':latest';
}

/** The body of GET /api/tags, built once per mock instance. */
export function tagsBody(models: readonly string[], modifiedAt: string): string {
  return JSON.stringify({
    models: models.map((m) => ({
      name: tagged(m),
      model: tagged(m),
      modified_at: modifiedAt,
      size: MODEL_SIZE,
      digest: DIGEST,
      details: MODEL_DETAILS,
    })),
  });
}

/** The body of GET /api/ps: every model is loaded and expires 5 minutes from now. */
export function psBody(models: readonly string[]): string {
  const expiresAt = new Date(Date.now() + 5 * 60_000).toISOString();
  return JSON.stringify({
    models: models.map((m) => ({
      name: tagged(m),
      model: tagged(m),
      size: MODEL_SIZE,
      digest: DIGEST,
      details: MODEL_DETAILS,
      expires_at: expiresAt,
      size_vram: MODEL_SIZE,
      context_length: 4096,
    })),
  });
}

export const VERSION_BODY = '{"version":"0.0.0-mock"}';

/**
 * POST /api/show: Ollama's description of a model (its template, a context length in
 * model_info). Any name, as the mock's generation routes take any; none is Ollama's 400.
 */
export function ollamaShow(ex: Exchange, body: Body): void {
  const known = typeof body['model'] === 'string' ? body['model'] : body['name'];
  if (typeof known !== 'string' || known === '') return ollamaError(ex.res, 400, 'model is required');
  sendBody(ex.res, 200, OLLAMA_JSON, JSON.stringify({
    license: '',
    modelfile: `FROM ${tagged(known)}\n`,
    parameters: 'stop "<|end|>"',
    template: '{{ .System }}<|user|>{{ .Prompt }}<|end|><|assistant|>',
    details: MODEL_DETAILS,
    model_info: { 'general.architecture': 'mock', 'mock.context_length': 4096 },
    capabilities: ['completion', 'tools'],
    modified_at: new Date(0).toISOString(),
  }));
}
