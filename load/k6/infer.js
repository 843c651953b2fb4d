// Image inference under load: POST /v1/infer with one image, base64 in JSON (or, with
// BODY=raw, the image itself as the body), at a fixed arrival rate for a fixed time.
//
//   k6 run load/k6/infer.js
//   k6 run -e IMAGE=/path/to/shirt.png -e RATE=100 -e DURATION=2m load/k6/infer.js
//   k6 run -e BODY=raw load/k6/infer.js
//
// IMAGE is read relative to this script (default: the Fashion-MNIST ankle boot in
// fixtures/). Each VU keeps its cookies, so the sticky arm cookie pins a VU to the arm
// it was first given, like a real client; STICKY=0 sends every request without cookies
// so that the A/B weights apply to each one.
import http from 'k6/http';
import encoding from 'k6/encoding';
import { check } from 'k6';
import { Counter } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const RATE = Number(__ENV.RATE || 50);
const STICKY = __ENV.STICKY !== '0';
const IMAGE = __ENV.IMAGE || './fixtures/ankle-boot-28x28.png';

const RAW = __ENV.BODY === 'raw';
const TOP_K = Number(__ENV.TOP_K || 3);
const image = open(IMAGE, 'b');

const payload = { image_b64: encoding.b64encode(image), top_k: TOP_K };
if (__ENV.IMG_SIZE) payload.img_size = Number(__ENV.IMG_SIZE);
// The raw form: the bytes with their media type, top_k and img_size in the query.
const query = `top_k=${TOP_K}${__ENV.IMG_SIZE ? `&img_size=${Number(__ENV.IMG_SIZE)}` : ''}`;
const INFER_URL = RAW ? `${BASE_URL}/v1/infer?${query}` : `${BASE_URL}/v1/infer`;
const MEDIA = { png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', webp: 'image/webp' };
const contentType = RAW ? MEDIA[IMAGE.split('.').pop().toLowerCase()] || 'application/octet-stream' : 'application/json';
const body = RAW ? image : JSON.stringify(payload);

const armA = new Counter('infer_arm_a');
const armB = new Counter('infer_arm_b');

export const options = {
  scenarios: {
    infer: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '60s',
      preAllocatedVUs: 20,
      maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    'http_req_duration{name:POST /v1/infer}': ['p(99)<250'],
    checks: ['rate>0.99'],
    dropped_iterations: ['count<' + Math.ceil(RATE)],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const params = {
    headers: { 'content-type': contentType },
    tags: { name: 'POST /v1/infer' },
  };
  if (!STICKY) params.jar = new http.CookieJar();
  const res = http.post(INFER_URL, body, params);
  const ok = check(res, {
    'status is 200': (r) => r.status === 200,
    'has predictions': (r) => r.status === 200 && Array.isArray(r.json('predictions')) && r.json('predictions').length > 0,
  });
  if (ok) {
    if (res.json('arm') === 'B') armB.add(1);
    else armA.add(1);
  }
}
