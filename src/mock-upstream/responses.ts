// OpenAI Responses API: POST /v1/responses, a Response object or its SSE events
// (response.created, response.in_progress, output_item.added, content_part.added,
// one response.output_text.delta per token, the .done events, then
// response.completed with usage, or response.incomplete when max_output_tokens cut
// the answer). For the broker's pass-through to a deployment with `responses: true`.

import { streamAnswer, unaryAnswer, type Exchange, type Knobs, type RawHeaders, type StreamEncoder } from './generate.ts';
import { OPENAI_JSON, capTokens, openaiError, pickModel } from './openai.ts';
import { contentChars, estimateTokens, mockText, tokenJson } from './tokens.ts';

type Body = Record<string, unknown>;
const SSE_HEADERS: RawHeaders = ['content-type', 'text/event-stream', 'cache-control', 'no-cache'];

function inputChars(input: unknown): number {
  if (typeof input === 'string') return input.length;
  if (!Array.isArray(input)) return 0;
  let n = 0;
  for (const it of input) if (it !== null && typeof it === 'object') n += contentChars((it as { content?: unknown }).content);
  return n;
}

function responseJson(id: string, model: string, created: number, status: string, output: string, usage: string): string {
  return (
    `{"id":"${id}","object":"response","created_at":${created},"status":"${status}","error":null,` +
    `"incomplete_details":${status === 'incomplete' ? '{"reason":"max_output_tokens"}' : 'null'},"model":${JSON.stringify(model)},` +
    `"output":${output},"parallel_tool_calls":true,"tool_choice":"auto","tools":[],"usage":${usage}}`
  );
}

function usageJson(prompt: number, n: number): string {
  return `{"input_tokens":${prompt},"input_tokens_details":{"cached_tokens":0},"output_tokens":${n},"output_tokens_details":{"reasoning_tokens":0},"total_tokens":${prompt + n}}`;
}

function messageJson(msgId: string, text: string, status: string): string {
  return `{"type":"message","id":"${msgId}","status":"${status}","role":"assistant","content":[` + (status !== 'in_progress' ? `{"type":"output_text","text":${JSON.stringify(text)},"annotations":[]}` : '') + ']}';
}

class ResponsesStream implements StreamEncoder {
  private seq = 0;
  constructor(
    private readonly id: string,
    private readonly model: string,
    private readonly created: number,
    private readonly prompt: number,
    private readonly n: number,
    private readonly status: string,
  ) {}
  private ev(type: string, rest: string): string {
    return `event: ${type}\ndata: {"type":"${type}","sequence_number":${this.seq++},${rest}}\n\n`;
  }
  head(): string {
    const shell = responseJson(this.id, this.model, this.created, 'in_progress', '[]', 'null');
    const msgId = 'msg_' + this.id;
    return (
      this.ev('response.created', `"response":${shell}`) +
      this.ev('response.in_progress', `"response":${shell}`) +
      this.ev('response.output_item.added', `"output_index":0,"item":${messageJson(msgId, '', 'in_progress')}`) +
      this.ev('response.content_part.added', `"item_id":"${msgId}","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}`)
    );
  }
  tokens(from: number, to: number): string {
    let s = '';
    for (let i = from; i < to; i++) s += this.ev('response.output_text.delta', `"item_id":"msg_${this.id}","output_index":0,"content_index":0,"delta":${tokenJson(i)},"logprobs":[]`);
    return s;
  }
  tail(): string {
    const msgId = 'msg_' + this.id;
    const text = JSON.stringify(mockText(this.n));
    // Cut at max_output_tokens, the message item is incomplete too, as OpenAI's is.
    const item = messageJson(msgId, mockText(this.n), this.status);
    const done = this.status === 'incomplete' ? 'response.incomplete' : 'response.completed';
    return (
      this.ev('response.output_text.done', `"item_id":"${msgId}","output_index":0,"content_index":0,"text":${text},"logprobs":[]`) +
      this.ev('response.content_part.done', `"item_id":"${msgId}","output_index":0,"content_index":0,"part":{"type":"output_text","text":${text},"annotations":[]}`) +
      this.ev('response.output_item.done', `"output_index":0,"item":${item}`) +
      this.ev(done, `"response":${responseJson(this.id, this.model, this.created, this.status, '[' + item + ']', usageJson(this.prompt, this.n))}`)
    );
  }
}

/** POST /v1/responses */
export function responses(ex: Exchange, body: Body, knobs: Knobs, defaultModel: string): void {
  if (typeof body.input !== 'string' && !Array.isArray(body.input)) return openaiError(ex.res, 400, "Missing required parameter: 'input'.");
  const model = pickModel(body, defaultModel);
  const n = capTokens(knobs.tokens, body.max_output_tokens);
  const status = n < knobs.tokens ? 'incomplete' : 'completed';
  const prompt = estimateTokens(inputChars(body.input) + contentChars(body.instructions));
  const id = 'resp_mock_' + ex.seq;
  const created = Math.floor(Date.now() / 1000);
  if (body.stream === true) {
    streamAnswer(ex, { n, knobs }, SSE_HEADERS, new ResponsesStream(id, model, created, prompt, n, status));
    return;
  }
  unaryAnswer(ex, { n, knobs }, OPENAI_JSON, () => responseJson(id, model, created, status, '[' + messageJson('msg_' + id, mockText(n), status) + ']', usageJson(prompt, n)));
}
