// Questions a pass-through stream asks of each event, answered from the JSON
// text without JSON.parse. Same-API streams are forwarded byte for byte, so the
// chain only needs to know: is this an error, the finish, the usage chunk, a
// token? Measured on a 220-byte chat.completion.chunk (Node 20): JSON.parse
// 1.35 us, the token probe 0.10 us, the finish probe 0.03 us.
//
// Why a key match is safe: inside a JSON string every `"` is escaped, so the
// text `"finish_reason":"` can only be a real key followed by a string value,
// never part of generated content. Where a key can also occur nested (Ollama
// tool-call arguments are objects, so `"done": true` could be an argument),
// the probe only pre-filters and JSON.parse confirms. test/llm/chain holds
// these answers equal to the parsed ones (translate/common.ts) on every
// fixture and random stream.

/** An error object instead of a chunk: `{"error": ...}`, or vLLM's `{"object": "error", ...}` (its first key; confirm with JSON.parse). */
export const ERROR_PROBE = /^\s*\{\s*"(?:error"\s*:|object"\s*:\s*"error")/;

/** OpenAI: a non-null finish_reason; group 1 is its value. */
export const OPENAI_FINISH_PROBE = /"finish_reason"\s*:\s*"([^"\\]*)"/;

/** OpenAI: a usage object (not `"usage":null`); confirm with JSON.parse. */
export const OPENAI_USAGE_PROBE = /"usage"\s*:\s*\{/;

/** OpenAI: generated text in content, text, reasoning, refusal or tool-call arguments (cf. openaiChunkHasToken). */
export const OPENAI_TOKEN_PROBE = /"(?:content|text|reasoning_content|reasoning|refusal|arguments)"\s*:\s*"[^"]/;

/** Ollama: maybe the done line (confirm with JSON.parse). */
export const OLLAMA_DONE_PROBE = /"done"\s*:\s*true/;

/** Ollama: generated text in content, response or thinking, or a tool call (cf. ollamaHasToken). */
export const OLLAMA_TOKEN_PROBE = /"(?:content|response|thinking)"\s*:\s*"[^"]|"tool_calls"\s*:\s*\[\s*\{/;

/** Ollama: maybe a line with tool calls (a probe, as the stats' finish reason needs no more). */
export const OLLAMA_TOOLS_PROBE = /"tool_calls"\s*:\s*\[\s*\{/;

/** JSON.parse that answers null instead of throwing. */
export function tryParse(text: string): Record<string, unknown> | null {
  try {
    const v: unknown = JSON.parse(text);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/**
 * Upstream events in a row that are not JSON objects before the stream is given up: one
 * stray frame is dropped and the stream goes on; a run of them means nothing good follows.
 */
export const MALFORMED_RUN_LIMIT = 8;
export const MALFORMED_RUN_MESSAGE = `upstream sent ${MALFORMED_RUN_LIMIT} events in a row that are not JSON objects`;

/**
 * Pass-through's garbage test, O(1): the event starts with `{` and ends with `}` (spaces
 * around allowed). It catches text, HTML, arrays and cut objects without a JSON.parse per
 * event, which would cost pass-through 2-3x its time per chunk (bench:chain); translated
 * routes parse every event anyway and drop whatever does not parse.
 */
export function looksLikeObject(text: string): boolean {
  let i = 0;
  let j = text.length - 1;
  while (i <= j && text.charCodeAt(i) <= 32) i++;
  while (j > i && text.charCodeAt(j) <= 32) j--;
  return i < j && text.charCodeAt(i) === 0x7b && text.charCodeAt(j) === 0x7d;
}
