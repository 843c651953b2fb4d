// What clients send beside text, and the formats they ask for, as each upstream reads them:
// images inside documents, an Ollama client's images in the forms it may send them, files,
// and the output formats and sampling fields a translation must not drop.
import t from 'tap';
import { translateRequest } from '../../../src/llm/translate/index.ts';
import { imageUrlFromBase64 } from '../../../src/llm/translate/common.ts';

const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';

function sent(client: 'openai' | 'ollama' | 'anthropic' | 'responses', provider: 'openai' | 'ollama', body: Record<string, unknown>, kind: 'chat' | 'completion' = 'chat'): Record<string, unknown> {
  return JSON.parse(translateRequest({ client, provider, kind }, body, 'up').body) as Record<string, unknown>;
}

t.test("an Anthropic document's content source: its images go on as images (they were dropped, the reply 200 without them)", async (t) => {
  const doc = {
    type: 'document',
    title: 'Report',
    source: { type: 'content', content: [{ type: 'text', text: 'chunk1' }, { type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG } }] },
  };
  const body = { model: 'm', max_tokens: 64, messages: [{ role: 'user', content: [doc, { type: 'text', text: 'what' }] }] };
  const chat = sent('anthropic', 'openai', body);
  t.same((chat['messages'] as unknown[])[0], {
    role: 'user',
    content: [
      { type: 'text', text: 'Report\nchunk1' },
      { type: 'image_url', image_url: { url: `data:image/png;base64,${PNG}` } },
      { type: 'text', text: 'what' },
    ],
  });
  const ollama = sent('anthropic', 'ollama', body);
  t.match((ollama['messages'] as unknown[])[0], { role: 'user', content: 'Report\nchunk1\nwhat', images: [PNG] });
  // In a tool result: the image follows in the user turn, as a tool_result's own images do.
  const tool = sent('anthropic', 'openai', {
    model: 'm',
    max_tokens: 64,
    messages: [
      { role: 'assistant', content: [{ type: 'tool_use', id: 't1', name: 'fetch', input: {} }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 't1', content: [doc] }] },
    ],
  });
  t.match(tool['messages'], [{ role: 'assistant' }, { role: 'tool', content: 'Report\nchunk1' }, { role: 'user', content: [{ type: 'image_url' }] }]);
  // Anything else in a content source is named.
  t.throws(() => sent('anthropic', 'openai', { ...body, messages: [{ role: 'user', content: [{ ...doc, source: { type: 'content', content: [{ type: 'audio' }] } }] }] }), {
    code: 'invalid_request',
    details: { field: 'messages[0].content[0].source.content[0]' },
  });
});

t.test("an Ollama client's images reach an Ollama upstream as it decodes them: a data: URL's prefix off, padding on", async (t) => {
  const chat = sent('ollama', 'ollama', { model: 'm', messages: [{ role: 'user', content: 'what', images: [`data:image/png;base64,${PNG}`, 'iVBORw0KGgo'] }, { role: 'user', content: 'plain' }] });
  t.same((chat['messages'] as Array<Record<string, unknown>>)[0]!['images'], [PNG, 'iVBORw0KGgo=']);
  t.same((chat['messages'] as Array<Record<string, unknown>>)[1], { role: 'user', content: 'plain' }, 'a message without images as sent');
  const gen = sent('ollama', 'ollama', { model: 'm', prompt: 'what', images: [`data:image/jpeg;base64,/9j/4AAQ`, 'iVBORw0KGgoAAA='] }, 'completion');
  t.same(gen['images'], ['/9j/4AAQ', 'iVBORw0KGgoAAA=='], 'partial padding made whole');
  // And to an OpenAI-compatible deployment (Python decoders refuse unpadded base64 too).
  const toOpenai = sent('ollama', 'openai', { model: 'm', messages: [{ role: 'user', content: 'what', images: ['iVBORw0KGgo'] }] });
  t.match((toOpenai['messages'] as Array<{ content: unknown }>)[0]!.content, [{ type: 'text' }, { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } }]);
});

t.test('an image URL that is a data: URL but not base64 is refused for an Ollama upstream, naming the client\'s field', async (t) => {
  const svg = 'data:image/svg+xml,<svg/>';
  t.throws(() => sent('anthropic', 'ollama', { model: 'm', max_tokens: 8, messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'url', url: svg } }] }] }), {
    code: 'invalid_request',
    details: { field: 'messages[0].content[0].source.url' },
  });
  t.throws(() => sent('responses', 'ollama', { model: 'm', input: [{ role: 'user', content: [{ type: 'input_image', image_url: svg }] }] }), {
    code: 'invalid_request',
    details: { field: 'input[0].content[0].image_url' },
  });
});

t.test("an Ollama client's image is labelled with its type for an OpenAI-compatible upstream (BMP, TIFF, AVIF were labelled PNG)", async (t) => {
  const b64 = (bytes: number[] | string): string => Buffer.from(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : Buffer.from(bytes)).toString('base64');
  const type = (b: string): string => /^data:([^;]+);/.exec(imageUrlFromBase64(b))![1]!;
  t.equal(type(b64('BM\x36\x00\x00\x00\x00\x00\x00\x00')), 'image/bmp');
  t.equal(type(b64('II*\x00\x08\x00\x00\x00')), 'image/tiff');
  t.equal(type(b64('MM\x00*\x00\x00\x00\x08')), 'image/tiff');
  t.equal(type(b64('\x00\x00\x00\x1cftypavif\x00\x00')), 'image/avif');
  t.equal(type(b64('\x00\x00\x00\x18ftypheic\x00\x00')), 'image/heic');
  t.equal(type(b64('RIFF\x24\x00\x00\x00WEBPVP8 ')), 'image/webp');
  t.equal(type(b64('GIF89a\x01\x00')), 'image/gif');
  t.equal(type('/9j/4AAQ'), 'image/jpeg');
  t.equal(type(PNG), 'image/png');
});

t.test('a Responses input_file goes on as chat\'s file part to an OpenAI-compatible upstream; an Ollama one refuses it', async (t) => {
  const file = { type: 'input_file', file_data: 'data:application/pdf;base64,JVBERi0=', filename: 'a.pdf' };
  const chat = sent('responses', 'openai', { model: 'm', input: [{ role: 'user', content: [{ type: 'input_text', text: 'sum up' }, file] }] });
  t.same((chat['messages'] as unknown[])[0], { role: 'user', content: [{ type: 'text', text: 'sum up' }, { type: 'file', file: { file_data: 'data:application/pdf;base64,JVBERi0=', filename: 'a.pdf' } }] });
  const byId = sent('responses', 'openai', { model: 'm', input: [{ role: 'user', content: [{ type: 'input_file', file_id: 'file-1' }] }] });
  t.same((byId['messages'] as Array<{ content: unknown }>)[0]!.content, [{ type: 'file', file: { file_id: 'file-1' } }]);
  t.throws(() => sent('responses', 'openai', { model: 'm', input: [{ role: 'user', content: [{ type: 'input_file', file_url: 'https://x/a.pdf' }] }] }), { code: 'invalid_request', details: { field: 'input[0].content[0]' } });
  t.throws(() => sent('responses', 'ollama', { model: 'm', input: [{ role: 'user', content: [file] }] }), { code: 'invalid_request' });
});

t.test('output formats: what OpenAI refuses is refused, not dropped or downgraded', async (t) => {
  // Responses text.format of an unknown type: dropped, the reply was free text.
  for (const provider of ['openai', 'ollama'] as const) {
    t.throws(() => sent('responses', provider, { model: 'm', input: 'hi', text: { format: { type: 'xml' } } }), { code: 'invalid_request', details: { field: 'text.format.type' } }, provider);
    t.throws(() => sent('responses', provider, { model: 'm', input: 'hi', text: { format: { type: 'json_schema', name: 'x' } } }), { code: 'invalid_request', details: { field: 'text.format.schema' } }, provider);
  }
  const schema = { type: 'object', properties: { a: { type: 'string' } } };
  const withDescription = sent('responses', 'openai', { model: 'm', input: 'hi', text: { format: { type: 'json_schema', name: 'x', description: 'An answer', schema, strict: true } } });
  t.same(withDescription['response_format'], { type: 'json_schema', json_schema: { name: 'x', schema, strict: true, description: 'An answer' } }, 'the description the model reads is kept');
  t.same(sent('responses', 'ollama', { model: 'm', input: 'hi', text: { format: { type: 'text' } } })['format'], undefined, 'text: no format');
  // Chat json_schema without its json_schema: OpenAI's 400; it was Ollama's JSON mode.
  t.throws(() => sent('openai', 'ollama', { model: 'm', messages: [{ role: 'user', content: 'hi' }], response_format: { type: 'json_schema' } }), { code: 'invalid_request', details: { field: 'response_format.json_schema' } });
  t.same(sent('openai', 'ollama', { model: 'm', messages: [{ role: 'user', content: 'hi' }], response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } })['format'], schema);
});

t.test('a completion\'s best_of > 1 is refused for an Ollama upstream (it answered one sample)', async (t) => {
  t.throws(() => sent('openai', 'ollama', { model: 'm', prompt: 'hi', best_of: 3 }, 'completion'), { code: 'invalid_request', details: { field: 'best_of' } });
  t.doesNotThrow(() => sent('openai', 'ollama', { model: 'm', prompt: 'hi', best_of: 1 }, 'completion'));
  t.equal(sent('openai', 'openai', { model: 'm', prompt: 'hi', best_of: 3 }, 'completion')['best_of'], 3, 'passed on to an OpenAI-compatible upstream');
});

t.test("an Ollama client's logprobs are refused for an OpenAI-compatible upstream (they were dropped, the reply 200 without them)", async (t) => {
  const chat = { model: 'm', messages: [{ role: 'user', content: 'hi' }] };
  t.throws(() => sent('ollama', 'openai', { ...chat, logprobs: true }), { code: 'invalid_request', details: { field: 'logprobs' } });
  t.throws(() => sent('ollama', 'openai', { ...chat, top_logprobs: 2 }), { code: 'invalid_request', details: { field: 'top_logprobs' } });
  t.throws(() => sent('ollama', 'openai', { model: 'm', prompt: 'hi', logprobs: true }, 'completion'), { code: 'invalid_request', details: { field: 'logprobs' } }, 'generate');
  t.throws(() => sent('ollama', 'openai', { model: 'm', prompt: 'hi', raw: true, logprobs: true }, 'completion'), { code: 'invalid_request', details: { field: 'logprobs' } }, 'raw generate');
  t.doesNotThrow(() => sent('ollama', 'openai', { ...chat, logprobs: false, top_logprobs: 0 }), 'false asks for nothing');
  t.equal(sent('ollama', 'ollama', { ...chat, logprobs: true })['logprobs'], true, 'passed on to Ollama');
});
