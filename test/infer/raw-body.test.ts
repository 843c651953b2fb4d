// /v1/infer with the image as the body (content-type image/png, image/jpeg, image/webp or
// application/octet-stream), top_k and img_size in the query: the same answers as the
// JSON form, the same error codes, and the JSON form unchanged whatever its content type.
import t from 'tap';
import sharp from 'sharp';
import { startTestBroker, postJson } from '../helpers/broker.ts';
import { fashionPngs } from '../helpers/images.ts';

const tb = await startTestBroker({ AB_WEIGHT_A: '1', AB_WEIGHT_B: '0' });
t.teardown(() => tb.close());
const url = `${tb.url}/v1/infer`;
const samples = (await fashionPngs(4)).map((s) => ({ ...s, png: Buffer.from(s.b64, 'base64') }));

async function postRaw(query: string, type: string, body: Uint8Array, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; body: any }> {
  const res = await fetch(`${url}${query}`, { method: 'POST', headers: { 'content-type': type, ...headers }, body });
  return { status: res.status, headers: res.headers, body: await res.json() };
}

t.test('a PNG body answers as the same image in JSON: labels, scores, arm, request id', async (t) => {
  for (const [i, s] of samples.entries()) {
    const raw = await postRaw('?top_k=3', 'image/png', s.png, { 'x-request-id': `raw-${i}` });
    const viaJson = await postJson(url, { image_b64: s.b64, top_k: 3 });
    t.equal(raw.status, 200);
    t.same(raw.body.predictions, viaJson.body.predictions, 'same predictions');
    t.equal(raw.body.arm, 'A');
    t.equal(raw.body.trace_id, `raw-${i}`);
    t.equal(raw.headers.get('x-request-id'), `raw-${i}`);
  }
});

t.test('JPEG, WebP and octet-stream bodies; a parameter on the media type; top_k defaults to 5', async (t) => {
  const img = await sharp({ create: { width: 64, height: 48, channels: 3, background: '#806040' } }).jpeg().toBuffer();
  const webp = await sharp(img).webp().toBuffer();
  for (const [type, body] of [['image/jpeg', img], ['application/octet-stream', img], ['image/webp', webp], ['Image/PNG; charset=binary', samples[0]!.png]] as const) {
    const res = await postRaw('', type, body);
    t.equal(res.status, 200, type);
    t.equal(res.body.predictions?.length, 5, `${type}: five predictions`);
  }
});

t.test('bad input gets the JSON form\'s error codes, and the broker keeps serving', async (t) => {
  const png = samples[0]!.png;
  const cases: [string, string, Uint8Array, number, string][] = [
    ['', 'image/png', new Uint8Array(0), 400, 'invalid_image'],
    ['', 'image/png', Buffer.from('this is not an image'), 415, 'unsupported_image'],
    ['', 'image/png', png.subarray(0, png.length - 30), 415, 'unsupported_image'],
    ['?top_k=0', 'image/png', png, 400, 'invalid_request'],
    ['?top_k=abc', 'image/png', png, 400, 'invalid_request'],
    ['?top_k=1e3', 'image/png', png, 400, 'invalid_request'],
    ['?top_k=1001', 'image/png', png, 400, 'invalid_request'],
    ['?img_size=27', 'image/png', png, 400, 'invalid_img_size'],
  ];
  for (const [query, type, body, status, code] of cases) {
    const res = await postRaw(query, type, body, { 'x-request-id': `bad${query}` });
    t.equal(res.status, status, `${query || 'no query'}, ${body.length} bytes: ${status}`);
    t.equal(res.body.error?.code, code, code);
    t.equal(res.body.error?.request_id ?? res.body.trace_id ?? res.headers.get('x-request-id'), `bad${query}`, 'the request id');
  }
  const ok = await postRaw('?top_k=2&img_size=28', 'image/png', png);
  t.equal(ok.status, 200, 'still serving');
  t.equal(ok.body.predictions.length, 2);
});

t.test('JSON bodies are read as before, whatever their content type', async (t) => {
  for (const type of ['application/json', 'text/plain', 'application/x-www-form-urlencoded']) {
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': type }, body: JSON.stringify({ image_b64: samples[1]!.b64, top_k: 2 }) });
    t.equal(res.status, 200, type);
    t.equal(((await res.json()) as { predictions: unknown[] }).predictions.length, 2);
  }
  // A JSON body sent as an image is taken as the image: not one.
  const res = await postRaw('', 'application/octet-stream', Buffer.from(JSON.stringify({ image_b64: samples[1]!.b64 })));
  t.equal(res.status, 415);
});

t.test('an image type the route does not take (image/gif, image/bmp) is 415 unsupported_image naming the types, not bad JSON', async (t) => {
  const gif = Buffer.from('R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7', 'base64');
  for (const type of ['image/gif', 'IMAGE/BMP; x=1']) {
    const res = await postRaw('', type, gif, { 'x-request-id': 'gif' });
    t.equal(res.status, 415, type);
    t.equal(res.body.error.code, 'unsupported_image');
    t.match(res.body.error.message, /image\/png, image\/jpeg, image\/webp/);
    t.equal(res.headers.get('x-request-id'), 'gif');
  }
  t.equal((await postRaw('', 'image/png', samples[0]!.png)).status, 200, 'still serving');
});

t.test("the image's other names (image/jpg, image/pjpeg, image/x-png) and a raw image in curl's default form type are taken", async (t) => {
  const jpeg = await sharp({ create: { width: 32, height: 32, channels: 3, background: '#406080' } }).jpeg().toBuffer();
  for (const [type, body] of [['image/jpg', jpeg], ['image/pjpeg', jpeg], ['image/x-png', samples[0]!.png]] as const) {
    const res = await postRaw('?top_k=1', type, body);
    t.equal(res.status, 200, type);
    t.equal(res.body.predictions?.length, 1);
  }
  // curl --data-binary @cat.png (no -H): application/x-www-form-urlencoded, the bytes an image.
  const form = await postRaw('?top_k=2', 'application/x-www-form-urlencoded', samples[0]!.png);
  t.equal(form.status, 200, 'an image under the form type is the image');
  t.same(form.body.predictions, (await postRaw('?top_k=2', 'image/png', samples[0]!.png)).body.predictions, 'the same answer');
  const bare = await fetch(url, { method: 'POST', body: samples[0]!.png });
  t.equal(bare.status, 200, 'and with no content type at all');
});

t.test('a multipart upload is 415 saying how to send the image, not "bad JSON"', async (t) => {
  const form = new FormData();
  form.append('file', new Blob([samples[0]!.png], { type: 'image/png' }), 'cat.png');
  const res = await fetch(url, { method: 'POST', body: form, headers: { 'x-request-id': 'multi' } });
  t.equal(res.status, 415);
  const body = (await res.json()) as { error: { code: string; message: string; request_id: string } };
  t.equal(body.error.code, 'unsupported_image');
  t.match(body.error.message, /multipart\/form-data is not taken: send the image itself/);
  t.equal(body.error.request_id, 'multi');
});

t.test('a misspelt JSON field (topk, imgSize) is 400 naming it, not ignored; other extra fields pass', async (t) => {
  const res = await postJson(url, { image_b64: samples[0]!.b64, topk: 1 }, { 'x-request-id': 'typo' });
  t.equal(res.status, 400);
  t.equal(res.body.error.code, 'invalid_request');
  t.match(res.body.error.message, /unknown field "topk": did you mean top_k\?/);
  t.equal((await postJson(url, { image_b64: samples[0]!.b64, imgSize: 28 })).body.error?.param, 'imgSize');
  t.equal((await postJson(url, { image_b64: samples[0]!.b64, top_k: 1, request_id: 'mine', metadata: { a: 1 } })).status, 200, "a client's own fields");
  t.equal(res.body.error.param, 'topk');
  t.equal(res.body.error.request_id, 'typo');
  t.equal((await postJson(url, { image_b64: samples[0]!.b64, top_k: 1 })).body.predictions.length, 1, 'the right name still works');
});
