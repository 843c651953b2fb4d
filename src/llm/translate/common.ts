// Mappings shared by the translators: finish reasons, timestamps, images,
// sampling options, and what counts as a generated token in either format.

import { BrokerError } from '../../errors.ts';
import type { OllamaChatResponse, OllamaGenerateResponse, OllamaOptions, OpenAIChunk, OpenAIUsage, Usage } from './types.ts';

// ---- finish reasons ----

/**
 * Ollama done_reason → OpenAI finish_reason. Ollama says "stop" even when the
 * model called a tool, so tool calls win; "load"/"unload" (no generation) read as "stop".
 */
export function finishFromOllama(doneReason: string | undefined, hadToolCalls: boolean): string {
  if (hadToolCalls) return 'tool_calls';
  return doneReason === 'length' ? 'length' : 'stop';
}

/** OpenAI finish_reason → Ollama done_reason: Ollama only knows "stop" and "length". */
export function doneReasonFromOpenAI(finish: string | null): string {
  return finish === 'length' ? 'length' : 'stop';
}

// ---- timestamps ----

/** Ollama's RFC 3339 created_at (nanosecond fraction, any offset) → Unix seconds; 0 if unreadable. */
export function unixFromIso(iso: unknown): number {
  if (typeof iso !== 'string') return 0;
  const ms = Date.parse(iso);
  return Number.isFinite(ms) ? Math.floor(ms / 1000) : 0;
}

/** OpenAI `created` (Unix seconds) → RFC 3339 for Ollama's created_at. */
export function isoFromUnix(seconds: unknown): string {
  const s = typeof seconds === 'number' && Number.isFinite(seconds) ? seconds : 0;
  return new Date(s * 1000).toISOString();
}

// ---- images ----

const DATA_URL = /^data:([^;,]*)(?:;[^,]*)?,/;

/** Whether an image URL is a base64 data: URL, the only kind an Ollama upstream can take (as its base64). */
export function isBase64DataUrl(url: string): boolean {
  const m = DATA_URL.exec(url);
  return m !== null && /;base64,$/i.test(m[0]);
}

/** An OpenAI image_url (at `field` of the request) → the bare base64 Ollama wants. Only data: URLs can be inlined. */
export function base64FromImageUrl(url: string, field: string): string {
  const m = DATA_URL.exec(url);
  if (m === null || !/;base64,$/i.test(m[0])) throw new BrokerError('invalid_request', `${field} must be a base64 data: URL (data:<type>;base64,...) when the model is served by Ollama`, { details: { field } });
  return url.slice(m[0].length);
}

/**
 * An Ollama client's image as an Ollama upstream decodes it (Go's padded standard base64): a
 * data: URL's prefix taken off, the padding put back. The broker takes both (request.ts), and
 * Ollama answered them 400 "illegal base64 data".
 */
export function ollamaImage(img: string): string {
  const m = DATA_URL.exec(img);
  return padBase64(m === null ? img : img.slice(m[0].length));
}

/** Base64 with its `=` padding whole (none, or partial: `ab=`), as strict decoders (Go's, Python's) take it. */
function padBase64(b64: string): string {
  const bare = b64.endsWith('=') ? b64.replace(/=+$/, '') : b64;
  const rest = bare.length % 4;
  return rest === 0 ? bare : bare + '='.repeat(4 - rest);
}

/** An image's MIME type from its first bytes (magic numbers); PNG when none is known. */
function sniffImage(b64: string): string {
  const b = Buffer.from(b64.slice(0, 16), 'base64');
  const ascii = (from: number, to: number): string => b.toString('latin1', from, to);
  if (b[0] === 0xff && b[1] === 0xd8 && b[2] === 0xff) return 'image/jpeg';
  if (ascii(0, 4) === 'GIF8') return 'image/gif';
  if (ascii(0, 4) === 'RIFF' && ascii(8, 12) === 'WEBP') return 'image/webp';
  if (ascii(0, 2) === 'BM') return 'image/bmp';
  if (ascii(0, 4) === 'II*\0' || ascii(0, 4) === 'MM\0*') return 'image/tiff';
  if (ascii(4, 8) === 'ftyp') {
    const brand = ascii(8, 12);
    if (brand === 'avif' || brand === 'avis') return 'image/avif';
    if (brand === 'heic' || brand === 'heix') return 'image/heic';
  }
  return 'image/png';
}

/**
 * Ollama's bare base64 image → a data: URL, the MIME type sniffed from the first bytes. One
 * that is a data: URL already is taken as it is; a web URL is refused (Ollama takes base64 only).
 */
export function imageUrlFromBase64(b64: string): string {
  if (DATA_URL.test(b64)) return b64;
  if (/^https?:\/\//i.test(b64)) throw new BrokerError('invalid_request', 'images must be base64-encoded image bytes, not URLs', { details: { field: 'images' } });
  const padded = padBase64(b64);
  return `data:${sniffImage(padded)};base64,${padded}`;
}

// ---- sampling options ----

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/** OpenAI sampling fields → Ollama `options` (max_tokens ↔ num_predict, stop as an array). */
export function ollamaOptionsFromOpenAI(body: Record<string, unknown>): OllamaOptions | undefined {
  const o: OllamaOptions = {};
  const temperature = num(body['temperature']);
  if (temperature !== undefined) o.temperature = temperature;
  const topP = num(body['top_p']);
  if (topP !== undefined) o.top_p = topP;
  // vLLM's extension of the chat body (and what an Anthropic client's top_k becomes).
  const topK = num(body['top_k']);
  if (topK !== undefined) o.top_k = topK;
  const max = num(body['max_completion_tokens']) ?? num(body['max_tokens']);
  if (max !== undefined) o.num_predict = max;
  const stop = body['stop'];
  if (typeof stop === 'string') o.stop = [stop];
  else if (Array.isArray(stop)) o.stop = stop.filter((s): s is string => typeof s === 'string');
  const seed = num(body['seed']);
  if (seed !== undefined) o.seed = seed;
  const fp = num(body['frequency_penalty']);
  if (fp !== undefined) o.frequency_penalty = fp;
  const pp = num(body['presence_penalty']);
  if (pp !== undefined) o.presence_penalty = pp;
  return Object.keys(o).length > 0 ? o : undefined;
}

/** Ollama `options` → OpenAI sampling fields. num_predict ≤ 0 (0 and -1 unlimited, -2 fill context) means no max_tokens. */
export function openaiSamplingFromOllama(options: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (options === null || typeof options !== 'object') return out;
  const o = options as Record<string, unknown>;
  const temperature = num(o['temperature']);
  if (temperature !== undefined) out['temperature'] = temperature;
  const topP = num(o['top_p']);
  if (topP !== undefined) out['top_p'] = topP;
  const max = num(o['num_predict']);
  if (max !== undefined && max > 0) out['max_tokens'] = max;
  const stop = o['stop'];
  if (typeof stop === 'string') out['stop'] = [stop];
  else if (Array.isArray(stop) && stop.length > 0) out['stop'] = stop.filter((s): s is string => typeof s === 'string');
  const seed = num(o['seed']);
  if (seed !== undefined) out['seed'] = seed;
  const fp = num(o['frequency_penalty']);
  if (fp !== undefined) out['frequency_penalty'] = fp;
  const pp = num(o['presence_penalty']);
  if (pp !== undefined) out['presence_penalty'] = pp;
  return out;
}

// ---- what counts as a token ----
//
// A "token event" is an upstream event carrying generated text: content,
// completion text, reasoning/thinking, a refusal, or tool-call arguments. TTFT
// is measured at the first one, and without upstream usage the completion is
// counted as the number of them. chain/probe.ts answers the same question from
// the raw JSON text for pass-through streams; the property test holds the two
// to the same answers.

/**
 * Choice 0 of a reply or a chunk: the reply, for client APIs without `n`. With n > 1 a chunk
 * may carry another choice's delta only: then none (its text is not choice 0's).
 */
export function choiceZero<T extends { index?: unknown }>(choices: readonly T[] | null | undefined): T | undefined {
  if (!Array.isArray(choices) || choices.length === 0) return undefined;
  const first = choices[0];
  if (first !== undefined && first !== null && (first.index === undefined || first.index === 0)) return first;
  return choices.find((c) => c !== null && c !== undefined && c.index === 0);
}

function nonEmpty(v: unknown): boolean {
  return typeof v === 'string' && v.length > 0;
}

export function openaiChunkHasToken(chunk: OpenAIChunk): boolean {
  const choices = chunk.choices;
  if (!Array.isArray(choices)) return false;
  for (const c of choices) {
    if (nonEmpty(c.text)) return true;
    const d = c.delta;
    if (d === undefined || d === null) continue;
    if (nonEmpty(d.content) || nonEmpty(d.reasoning_content) || nonEmpty(d.reasoning) || nonEmpty(d.refusal)) return true;
    if (Array.isArray(d.tool_calls)) {
      for (const tc of d.tool_calls) if (nonEmpty(tc?.function?.arguments)) return true;
    }
  }
  return false;
}

/**
 * A finish that says the server cut the generation (vLLM's and SGLang's `abort`: a request
 * aborted or preempted there): no reply to take for a finished one. Passed on as it is to an
 * OpenAI client (its own word), a failure for a translated one (which had `end_turn`,
 * `completed`, `stop`), and never cached.
 */
export function abortedFinish(finish: string | null): boolean {
  return finish === 'abort';
}

export const ABORTED_MESSAGE = 'the upstream aborted the generation (finish_reason "abort")';

/** The first non-null finish_reason among the choices, or null. */
export function openaiChunkFinish(chunk: OpenAIChunk): string | null {
  const choices = chunk.choices;
  if (!Array.isArray(choices)) return null;
  for (const c of choices) if (typeof c.finish_reason === 'string') return c.finish_reason;
  return null;
}

export function ollamaHasToken(line: OllamaChatResponse | OllamaGenerateResponse): boolean {
  if (nonEmpty(line['response']) || nonEmpty(line['thinking'])) return true;
  const m = (line as OllamaChatResponse).message;
  if (m === undefined || m === null) return false;
  return nonEmpty(m.content) || nonEmpty(m.thinking) || (Array.isArray(m.tool_calls) && m.tool_calls.length > 0);
}

// ---- usage ----

export function usageFromOpenAI(u: OpenAIUsage | null | undefined): Usage | null {
  if (u === null || u === undefined || typeof u !== 'object') return null;
  const out: Usage = { promptTokens: num(u.prompt_tokens) ?? 0, completionTokens: num(u.completion_tokens) ?? 0 };
  // The details other APIs have fields for: Responses' cached and reasoning tokens, Messages' cache reads.
  const cached = num((u.prompt_tokens_details as { cached_tokens?: unknown } | null | undefined)?.cached_tokens);
  const reasoning = num((u.completion_tokens_details as { reasoning_tokens?: unknown } | null | undefined)?.reasoning_tokens);
  if (cached !== undefined && cached > 0) out.cachedTokens = Math.min(cached, out.promptTokens);
  if (reasoning !== undefined && reasoning > 0) out.reasoningTokens = reasoning;
  return out;
}

/** Ollama's counters from a done object; null when it has none (e.g. a model load). */
export function usageFromOllama(r: { prompt_eval_count?: number; eval_count?: number }): Usage | null {
  const p = num(r.prompt_eval_count);
  const c = num(r.eval_count);
  if (p === undefined && c === undefined) return null;
  return { promptTokens: p ?? 0, completionTokens: c ?? 0 };
}

export function openaiUsage(u: Usage): OpenAIUsage {
  return { prompt_tokens: u.promptTokens, completion_tokens: u.completionTokens, total_tokens: u.promptTokens + u.completionTokens };
}

// ---- request body checks ----

export function requireObject(body: unknown): Record<string, unknown> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new BrokerError('invalid_request', 'request body must be a JSON object');
  }
  return body as Record<string, unknown>;
}

export function requireArray(body: Record<string, unknown>, field: string): unknown[] {
  const v = body[field];
  if (!Array.isArray(v)) throw new BrokerError('invalid_request', `${field} must be an array`, { details: { field } });
  return v;
}

/** Whether a tool call's arguments text is one whole JSON object (a streamed call may end now). */
export function isWholeJsonObject(json: string): boolean {
  if (json === '' || json.charCodeAt(json.length - 1) !== 125) return false; // '}'
  try {
    const v: unknown = JSON.parse(json);
    return v !== null && typeof v === 'object' && !Array.isArray(v);
  } catch {
    return false;
  }
}

/**
 * An Ollama tool call's arguments as JSON text. Ollama sends an object; some compatible
 * servers (and clients, in a history) send the JSON text itself, which is kept as it is
 * rather than encoded a second time.
 */
export function argumentsJsonFromOllama(v: unknown): string {
  if (typeof v === 'string') return v.trim() === '' ? '{}' : v;
  return JSON.stringify(v ?? {});
}

/**
 * A streamed call's name with the next piece of it. OpenAI sends the name whole in the call's
 * first fragment; some compatible servers split it, others repeat it in every fragment. So a
 * piece is appended until the arguments begin, unless it repeats the name so far (a name split
 * into two equal halves, `to` + `to`, is then taken for a repeat: the two cannot be told apart).
 */
export function appendToolName(name: string, piece: unknown, args: string): string {
  return typeof piece !== 'string' || args !== '' || piece === name ? name : name + piece;
}

/**
 * Ollama's durations (nanoseconds) for a reply translated from an upstream that gives none:
 * the whole reply, the wait for its first token (prompt evaluation) and the rest (generation),
 * as the broker saw them. Ollama clients compute tokens/s as eval_count / eval_duration, so
 * none is 0. Without a first token (a whole reply), 1 ns of prompt evaluation, the rest eval.
 */
export function ollamaDurations(totalMs: number, firstTokenMs: number | null): { total_duration: number; load_duration: number; prompt_eval_duration: number; eval_duration: number } {
  const total = Math.max(2, Math.round(totalMs * 1e6));
  const prompt = firstTokenMs === null ? 1 : Math.min(total - 1, Math.max(1, Math.round(firstTokenMs * 1e6)));
  return { total_duration: total, load_duration: 0, prompt_eval_duration: prompt, eval_duration: total - prompt };
}

// ---- custom (free-form) tools, Responses' and chat's, for chat upstreams that have functions only ----

function invalidField(field: string, what: string): BrokerError {
  return new BrokerError('invalid_request', `${field} ${what}`, { details: { field } });
}

/** A call's arguments as the JSON object the model was asked for; undefined when they are not one. */
export function argumentsObject(args: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(args) as unknown;
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A custom tool's call → its free-form input: the `input` argument it was offered, else the
 * one string argument the model named otherwise, else the arguments as written (a model that
 * ignored the schema).
 */
export function customInput(args: string): string {
  const o = argumentsObject(args);
  if (o === undefined) return args;
  if (typeof o['input'] === 'string') return o['input'];
  const values = Object.values(o);
  if (values.length === 0) return '';
  return values.length === 1 && typeof values[0] === 'string' ? values[0] : args;
}

/**
 * A custom tool (Responses', or chat's `custom` object) → a chat function of one string
 * argument, `input`: Ollama's and most servers' chat have no free-form tools. A grammar (Lark or a regex) cannot bind
 * a chat server's output, so the model is shown it in the argument's description.
 */
export function customTool(o: Record<string, unknown>, name: string, field: string): unknown {
  const format = o['format'] as Record<string, unknown> | null | undefined;
  if (format !== undefined && format !== null && (typeof format !== 'object' || (format['type'] !== 'text' && format['type'] !== 'grammar'))) {
    throw invalidField(`${field}.format`, 'must be {"type": "text"} or a grammar format ({"type": "grammar", ...} with its syntax and definition)');
  }
  let what = 'The input, as free-form text (not JSON).';
  if (format?.['type'] === 'grammar') {
    // Responses says syntax and definition in the format; chat in its `grammar` object.
    const chat = format['grammar'] !== null && typeof format['grammar'] === 'object';
    const g = (chat ? format['grammar'] : format) as Record<string, unknown>;
    if (typeof g['definition'] !== 'string') throw invalidField(`${field}.format${chat ? '.grammar' : ''}.definition`, 'is required in a grammar format: a string');
    const syntax = g['syntax'] === 'regex' ? 'this regular expression' : 'this Lark grammar';
    what = `The input, as free-form text (not JSON) matching ${syntax}:\n${g['definition']}`;
  }
  const fn: Record<string, unknown> = { name };
  if (typeof o['description'] === 'string') fn['description'] = o['description'];
  fn['parameters'] = { type: 'object', properties: { input: { type: 'string', description: what } }, required: ['input'], additionalProperties: false };
  return { type: 'function', function: fn };
}
