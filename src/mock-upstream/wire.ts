// Strict readers for the two streaming framings, for tests that check what the
// mock (or the broker in front of it) really sent.

export interface SseParse {
  /** JSON payloads of the `data:` events before `[DONE]`, in order. */
  events: unknown[];
  /** True when the stream ended with `data: [DONE]` as its last event. */
  done: boolean;
  /** Bytes after the last complete event (an event cut in the middle); '' for a clean stream. */
  rest: string;
}

/**
 * Parses an OpenAI SSE body: events separated by a blank line, each a single
 * `data: <json>` line. Throws on anything else, so framing mistakes fail tests.
 */
export function parseSse(text: string): SseParse {
  const events: unknown[] = [];
  let done = false;
  let pos = 0;
  for (;;) {
    const end = text.indexOf('\n\n', pos);
    if (end === -1) break;
    const block = text.slice(pos, end);
    pos = end + 2;
    if (done) throw new Error(`SSE event after [DONE]: ${block}`);
    if (!block.startsWith('data: ') || block.includes('\n')) throw new Error(`not a single-line SSE data event: ${JSON.stringify(block)}`);
    const data = block.slice(6);
    if (data === '[DONE]') done = true;
    else events.push(JSON.parse(data));
  }
  return { events, done, rest: text.slice(pos) };
}

export interface NdjsonParse {
  /** One parsed object per complete line. */
  lines: unknown[];
  /** Bytes after the last newline (a line cut in the middle); '' for a clean stream. */
  rest: string;
}

/** Parses an Ollama NDJSON body: one JSON object per `\n`-terminated line. Throws on a bad line. */
export function parseNdjson(text: string): NdjsonParse {
  const lines: unknown[] = [];
  let pos = 0;
  for (;;) {
    const end = text.indexOf('\n', pos);
    if (end === -1) break;
    lines.push(JSON.parse(text.slice(pos, end)));
    pos = end + 1;
  }
  return { lines, rest: text.slice(pos) };
}
