// Deterministic output for the mock upstream: token i is the text `tok<i> `.
// Every string a response needs per token is built once and cached, so a
// response is only string concatenation of precomputed pieces.

const PRECOMPUTED = 1024;

/** Token texts, grown on demand. */
const texts: string[] = [];
/** The same tokens as JSON string literals (quotes included). */
const jsons: string[] = [];

function grow(to: number): void {
  for (let i = texts.length; i < to; i++) {
    const text = `tok${i} `;
    texts.push(text);
    jsons.push(JSON.stringify(text));
  }
}
grow(PRECOMPUTED);

/** The text of token `i` (`tok<i> `). */
export function tokenText(i: number): string {
  if (i >= texts.length) grow(i + 1);
  return texts[i]!;
}

/** Token `i` as a JSON string literal, ready to splice into a body. */
export function tokenJson(i: number): string {
  if (i >= jsons.length) grow(i + 1);
  return jsons[i]!;
}

const TEXT_CACHE_MAX = 64;
const textCache = new Map<number, string>();

/** The whole output for `n` tokens: what a client sees once it concatenates the content. */
export function mockText(n: number): string {
  let s = textCache.get(n);
  if (s !== undefined) return s;
  if (n > 0) grow(n);
  s = texts.slice(0, n).join('');
  if (textCache.size >= TEXT_CACHE_MAX) textCache.clear();
  textCache.set(n, s);
  return s;
}

/** `mockText(n)` as a JSON string literal. Token texts need no escaping. */
export function mockTextJson(n: number): string {
  return '"' + mockText(n) + '"';
}

/** Prompt token estimate used everywhere: ceil(chars / 4). */
export function estimateTokens(chars: number): number {
  return Math.ceil(chars / 4);
}

/**
 * Characters of prompt text in an OpenAI/Ollama `content`: a string, or an
 * array of parts where text parts are `{ type: 'text', text }`.
 */
export function contentChars(content: unknown): number {
  if (typeof content === 'string') return content.length;
  if (!Array.isArray(content)) return 0;
  let n = 0;
  for (const part of content) {
    if (typeof part === 'string') n += part.length;
    else if (part !== null && typeof part === 'object' && typeof (part as { text?: unknown }).text === 'string') {
      n += (part as { text: string }).text.length;
    }
  }
  return n;
}

/** Characters of all `messages[].content`. */
export function messagesChars(messages: unknown): number {
  if (!Array.isArray(messages)) return 0;
  let n = 0;
  for (const m of messages) {
    if (m !== null && typeof m === 'object') n += contentChars((m as { content?: unknown }).content);
  }
  return n;
}
