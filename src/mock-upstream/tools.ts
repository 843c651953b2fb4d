// Tool calls for the mock's chat answers (the toolCalls knob): call c names the
// request's tool c (cycling; `mock_tool` when it declares none) and its arguments are
// the JSON object {"call": c, "text": <the n-token text>}. OpenAI streams each call
// as indexed fragments (id, type and name on the first, then argument pieces: the
// opening, one per token, the closing), as api.openai.com does; Ollama sends each
// call whole, its arguments an object, as Ollama does. Either way a client that
// assembles the calls reads the same arguments text, mockToolArguments(c, n).

import { tokenText, mockText } from './tokens.ts';

/** The name of call `c`: the request's tool c (cycling over its `tools`), or `mock_tool`. */
export function mockToolName(body: Record<string, unknown>, c: number): string {
  const tools = body.tools;
  if (!Array.isArray(tools) || tools.length === 0) return 'mock_tool';
  const t = tools[c % tools.length] as { function?: { name?: unknown }; name?: unknown } | null;
  const name = t?.function?.name ?? t?.name;
  return typeof name === 'string' && name !== '' ? name : 'mock_tool';
}

/** The arguments text of call `c` in an n-token answer. */
export function mockToolArguments(c: number, n: number): string {
  return JSON.stringify({ call: c, text: mockText(n) });
}

/** OpenAI argument fragments per call: the opening, one per token, the closing. */
export function fragmentsPerCall(n: number): number {
  return n + 2;
}

/** Fragment k of call c (k < fragmentsPerCall(n)), as a JSON string literal. */
export function fragmentJson(c: number, k: number, n: number): string {
  if (k === 0) return JSON.stringify(`{"call":${c},"text":"`);
  if (k === n + 1) return JSON.stringify('"}');
  return JSON.stringify(tokenText(k - 1));
}
