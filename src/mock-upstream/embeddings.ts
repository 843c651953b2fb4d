// Embeddings: OpenAI POST /v1/embeddings and Ollama POST /api/embed. Each input gets a
// deterministic vector (mockEmbedding), so a test can check that a batch came back
// whole and in order through any translation. Values are multiples of 1/1024 in
// [-1, 1): exact in float32, so the base64 encoding loses nothing.

import { unaryAnswer, type Exchange, type Knobs } from './generate.ts';
import { OLLAMA_JSON, ollamaError } from './ollama.ts';
import { OPENAI_JSON, modelJson, openaiError, pickModel } from './openai.ts';
import { estimateTokens } from './tokens.ts';

type Body = Record<string, unknown>;

export const DEFAULT_DIMENSIONS = 8;

/** The vector of `text`: FNV-1a of the text and the coordinate, scaled to k/1024. */
export function mockEmbedding(text: string, dimensions = DEFAULT_DIMENSIONS): number[] {
  const out: number[] = [];
  for (let j = 0; j < dimensions; j++) {
    let h = 0x811c9dc5 ^ j;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
    out.push(((h >>> 0) % 2048) / 1024 - 1);
  }
  return out;
}

/** The inputs as texts, or an error message. Token arrays (OpenAI) are read as their ids joined. */
function inputs(input: unknown): string[] | string {
  if (typeof input === 'string') return [input];
  if (!Array.isArray(input) || input.length === 0) return 'input must be a string or a non-empty array';
  if (input.every((x) => typeof x === 'number')) return [input.join(' ')];
  const out: string[] = [];
  for (const x of input) {
    if (typeof x === 'string') out.push(x);
    else if (Array.isArray(x) && x.every((y) => typeof y === 'number')) out.push(x.join(' '));
    else return 'input must be strings or token arrays';
  }
  return out;
}

/** Most dimensions the mock's "model" has (OpenAI's text-embedding-3-large: 3072). */
export const MAX_DIMENSIONS = 4096;

/** The vector length asked for, or an error message (a real server refuses what its model cannot give). */
function dims(body: Body): number | string {
  const d = body.dimensions;
  if (d === undefined || d === null) return DEFAULT_DIMENSIONS;
  return typeof d === 'number' && Number.isInteger(d) && d > 0 && d <= MAX_DIMENSIONS ? d : `dimensions must be an integer from 1 to ${MAX_DIMENSIONS}`;
}

/** Tokens of the input: a token array's ids, else the text's estimate. */
function promptTokens(input: unknown): number {
  const one = (x: unknown): number => (typeof x === 'string' ? estimateTokens(x.length) : Array.isArray(x) ? x.length : 0);
  if (Array.isArray(input) && input.length > 0 && input.every((x) => typeof x === 'number')) return input.length;
  return Array.isArray(input) ? input.reduce((n: number, x) => n + one(x), 0) : one(input);
}

function base64(vec: number[]): string {
  const f = new Float32Array(vec);
  return Buffer.from(f.buffer).toString('base64');
}

/** POST /v1/embeddings: floats, or base64 float32s with encoding_format "base64". */
export function openaiEmbeddings(ex: Exchange, body: Body, knobs: Knobs, defaultModel: string): void {
  const texts = inputs(body.input);
  if (typeof texts === 'string') return openaiError(ex.res, 400, texts);
  const model = pickModel(body, defaultModel);
  const b64 = body.encoding_format === 'base64' && !knobs.embedFloats;
  const d = dims(body);
  if (typeof d === 'string') return openaiError(ex.res, 400, d);
  const prompt = promptTokens(body.input);
  unaryAnswer(ex, { n: 0, knobs }, OPENAI_JSON, () =>
    `{"object":"list","data":[` +
    texts.map((t, index) => `{"object":"embedding","index":${index},"embedding":${b64 ? JSON.stringify(base64(mockEmbedding(t, d))) : JSON.stringify(mockEmbedding(t, d))}}`).join(',') +
    `],"model":${modelJson(model)},"usage":{"prompt_tokens":${prompt},"total_tokens":${prompt}}}`,
  );
}

/** POST /api/embed */
export function ollamaEmbed(ex: Exchange, body: Body, knobs: Knobs, defaultModel: string): void {
  const texts = inputs(body.input);
  if (typeof texts === 'string') return ollamaError(ex.res, 400, texts);
  const model = pickModel(body, defaultModel);
  const d = dims(body);
  if (typeof d === 'string') return ollamaError(ex.res, 400, d);
  unaryAnswer(ex, { n: 0, knobs }, OLLAMA_JSON, (_first, endedAt) =>
    `{"model":${modelJson(model)},"embeddings":${JSON.stringify(texts.map((t) => mockEmbedding(t, d)))},` +
    `"total_duration":${Math.max(1, Math.round((endedAt - ex.startedAt) * 1e6))},"load_duration":1000,"prompt_eval_count":${promptTokens(body.input)}}`,
  );
}
