// HTTP routes of the inference path: POST /v1/infer and the readiness probe.
import { RequestAbort } from '../abort.ts';
import { BrokerError } from '../errors.ts';
import type { Route } from '../front/http/router.ts';
import { requestPriority, type PriorityCeiling } from './admission.ts';
import { readCookie } from './arms.ts';
import { sniff } from './sniff.ts';
import type { InferInput, InferReply } from './service.ts';
import type { RequestFacts } from '../track/facts.ts';
import type { InferResponse } from './v2/types.ts';

/** Where /v1/infer sends its work: the service itself, or the control plane that owns it. */
export interface InferBackend {
  infer(input: InferInput): Promise<InferReply>;
}

/** With INFER_ENABLED=false: no pool, a clear 503. */
export const disabledInference: InferBackend = {
  infer: () => Promise.reject(new BrokerError('inference_disabled', 'inference is turned off on this broker (INFER_ENABLED=false)')),
};

const JSON_HEADERS = { 'content-type': 'application/json' };
/**
 * Bodies that are the image itself (`curl --data-binary @cat.jpg -H 'content-type: image/jpeg'`),
 * with top_k and img_size in the query: no base64 (a third fewer bytes) and no JSON to parse.
 * Any other content type is read as the JSON body, as before.
 */
export const RAW_IMAGE_TYPES: ReadonlySet<string> = new Set(['image/png', 'image/jpeg', 'image/webp', 'application/octet-stream', 'image/jpg', 'image/pjpeg', 'image/x-png']);
/**
 * An image sent raw in another media type (`curl --data-binary @cat.jpg` sends it as a form;
 * the names above are what browsers and old clients say for the same formats): it is raw all
 * the same, since no JSON body starts with an image's magic bytes.
 */
const RAW_SNIFF = {
  raw: (body: Uint8Array): boolean => sniff(body) !== undefined,
  multipart: 'multipart/form-data is not taken: send the image itself (content-type image/jpeg, image/png, image/webp or application/octet-stream: curl --data-binary @cat.jpg -H "content-type: image/jpeg"), or JSON {"image_b64": "..."}',
};
// RFC 2397: scheme and media type in any case, parameters (charset=...) before ;base64.
const DATA_URL = /^data:(?:[a-z0-9.+-]+\/[a-z0-9.+-]+)?(?:;[a-z0-9.+-]+=[^;,]*)*;base64,/i;
const BASE64 = /^[A-Za-z0-9+/_-]+={0,2}$/;

/** `ceiling`: what a caller's API key allows it (x-broker-priority may only lower it); none in bare tests. */
export function inferRoutes(service: InferBackend, stickyCookie: string, ceiling?: PriorityCeiling): Route[] {
  return [
    {
      method: 'POST',
      path: '/v1/infer',
      body: 'json',
      rawTypes: RAW_IMAGE_TYPES,
      rawSniff: RAW_SNIFF,
      rateLimited: true,
      track: 'infer',
      async handle({ req, body, sink }) {
        const { image, imgSize, topK } = Buffer.isBuffer(body) ? rawInput(body, req.query) : jsonInput(body as Record<string, unknown>);
        const cookieArm = readCookie(req.headers['cookie'], stickyCookie);
        const priority = requestPriority(req, ceiling);
        // A client gone while its image waits: the image leaves the queue, nobody computes it for nothing.
        const signal = new RequestAbort();
        sink.onAbort(() => signal.abort());
        const { pinned, ...reply } = await service.infer({ image, imgSize, topK, cookieArm, priority, trace: req.span?.context(), signal });
        noteInference(req.facts, reply);
        // An arm chosen for its size, not by the split, does not pin the client.
        const cookie: Record<string, string> = pinned === true ? {} : { 'set-cookie': `${stickyCookie}=${reply.arm}; Path=/; Max-Age=2592000; SameSite=Lax; HttpOnly` };
        sink.send(200, { ...JSON_HEADERS, ...cookie }, JSON.stringify({ ...reply, trace_id: req.id }));
      },
    },
  ];
}

const JSON_FIELDS = ['image_b64', 'img_size', 'top_k'] as const;
/** The fields as a typo may spell them: case, '_' and '-' aside (topK, top-k, imgSize, imageB64). */
const NEAR_MISSES = new Map(JSON_FIELDS.map((f) => [f.replace(/[_-]/g, ''), f]));

function jsonInput(b: Record<string, unknown>): { image: Buffer; imgSize: number | undefined; topK: number | undefined } {
  // A misspelt field is refused, not ignored: `topk` would answer 5 predictions as if the
  // client had asked for them. Other extra fields (a client's own request id, metadata) pass.
  for (const k in b) {
    const meant = NEAR_MISSES.get(k.toLowerCase().replace(/[_-]/g, ''));
    if (meant !== undefined && meant !== k) throw new BrokerError('invalid_request', `unknown field ${JSON.stringify(k)}: did you mean ${meant}? (the fields are image_b64, img_size and top_k)`, { details: { field: k } });
  }
  return { image: decodeImage(b.image_b64), imgSize: optionalInt(b.img_size, 'img_size', 1, 100_000), topK: optionalInt(b.top_k, 'top_k', 1, 1000) };
}

/** An image body: the bytes as they came, top_k and img_size from the query string. */
function rawInput(body: Buffer, query: string): { image: Buffer; imgSize: number | undefined; topK: number | undefined } {
  if (body.length === 0) throw new BrokerError('invalid_image', 'the request body is empty: send the image bytes (or JSON with image_b64)');
  const q = new URLSearchParams(query);
  return { image: body, imgSize: queryInt(q.get('img_size'), 'img_size', 1, 100_000), topK: queryInt(q.get('top_k'), 'top_k', 1, 1000) };
}

/** A query parameter as optionalInt reads a JSON field: a decimal integer in range, or absent. */
function queryInt(value: string | null, field: string, min: number, max: number): number | undefined {
  if (value === null) return undefined;
  return optionalInt(/^[0-9]{1,9}$/.test(value) ? Number(value) : value, field, min, max);
}

/**
 * Readiness: the models are loaded (always, when inference is turned off) and every other
 * front listens (`fronts`: the gRPC port, which starts after the HTTP one).
 */
export function readyRoute(service: { readonly ready: boolean; readonly modelProblems?: Readonly<Record<string, string>> } | undefined, fronts: () => boolean = () => true): Route {
  return {
    method: 'GET',
    path: '/ready',
    handle({ sink }) {
      if (!fronts()) return sink.send(503, JSON_HEADERS, JSON.stringify({ ready: false, fronts_listening: false }));
      if (service === undefined) return sink.send(200, JSON_HEADERS, JSON.stringify({ ready: true, models_loaded: false, inference: 'disabled' }));
      const ready = service.ready;
      // A model that does not fit its manifest says why (B's keeps the broker ready: A serves).
      const problems = service.modelProblems;
      const said = problems !== undefined && Object.keys(problems).length > 0 ? { model_problems: problems } : {};
      sink.send(ready ? 200 : 503, JSON_HEADERS, JSON.stringify({ ready, models_loaded: ready, ...said }));
    },
  };
}

/**
 * Base64 (standard or URL-safe, `data:` URL prefix allowed) to bytes; anything else is invalid_image.
 * One pass over the string: Buffer.from skips characters that are not base64 and stops at
 * padding, so a string that decodes to exactly the bytes its length promises had none of
 * those. Only a string that fails this (line-wrapped base64, or garbage) pays for a
 * second, strict look. Before: a regex test and then the decode, two passes: 16–28 µs
 * for the heavy bench image's 28 KB of base64, now 2.3 µs (docs/benchmarks.md, issue 11).
 */
export function decodeImage(value: unknown): Buffer {
  if (typeof value !== 'string' || value.length === 0) throw new BrokerError('invalid_image', 'image_b64 is required and must be a base64 string', { details: { field: 'image_b64' } });
  let start = 0;
  if ((value.charCodeAt(0) | 32) === 100 /* d or D */) {
    const prefix = DATA_URL.exec(value);
    if (prefix !== null) start = prefix[0].length;
  }
  const bytes = start === 0 ? Buffer.from(value, 'base64') : Buffer.from(value.slice(start), 'base64');
  if (bytes.length === expectedBytes(value, start)) return bytes;
  // Whitespace (line-wrapped base64) is allowed, and only then costs more passes.
  const s = value.slice(start).replace(/\s+/g, '');
  if (!BASE64.test(s) || expectedBytes(s, 0) < 0) throw new BrokerError('invalid_image', 'image_b64 is not valid base64', { details: { field: 'image_b64' } });
  return Buffer.from(s, 'base64');
}

/** Bytes that value[start..] decodes to if every character is base64 (-1: a length no base64 has). */
function expectedBytes(value: string, start: number): number {
  let end = value.length;
  let pad = 0;
  while (pad < 2 && end > start && value.charCodeAt(end - 1) === 61 /* = */) {
    end--;
    pad++;
  }
  const chars = end - start;
  if (chars % 4 === 1 || chars === 0) return -1;
  // Padding must complete the last quantum exactly: "QQ=" and "QUFB=" are refused.
  if (pad > 0 && (chars + pad) % 4 !== 0) return -1;
  return Math.floor((chars * 6) / 8);
}

function optionalInt(value: unknown, field: string, min: number, max: number): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new BrokerError(field === 'img_size' ? 'invalid_img_size' : 'invalid_request', `${field} must be an integer between ${min} and ${max}`, { details: { field } });
  }
  return value;
}

/** What request tracking records of an inference: model and arm, the queue time. */
export function noteInference(facts: RequestFacts | undefined, reply: InferReply): void {
  if (facts === undefined) return;
  facts.model = reply.model;
  facts.arm = reply.arm;
  facts.queueMs = reply.timings.queue_ms;
}

/** The same of an Open Inference Protocol reply (REST and gRPC): its arm, the queue time of its slowest item. */
export function noteV2Inference(facts: RequestFacts | undefined, reply: InferResponse): void {
  if (facts === undefined) return;
  facts.arm = reply.arm;
  facts.queueMs = reply.parameters.queue_us / 1000;
}
