// Liveness under load: GET /healthz at a fixed arrival rate for a fixed time.
// Measures the HTTP front alone (no body, no model, no upstream).
//
//   k6 run load/k6/healthz.js
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e RATE=500 -e DURATION=30s load/k6/healthz.js
import http from 'k6/http';
import { check } from 'k6';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const RATE = Number(__ENV.RATE || 200);

export const options = {
  scenarios: {
    healthz: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 20,
      maxVUs: 200,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<50'],
    checks: ['rate>0.999'],
    // Fewer requests than planned: the VUs could not keep up (the broker or the load generator).
    dropped_iterations: ['count<' + Math.ceil(RATE)],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const res = http.get(`${BASE_URL}/healthz`, { tags: { name: 'GET /healthz' } });
  check(res, {
    'status is 200': (r) => r.status === 200,
    'body is {"ok":true}': (r) => r.body === '{"ok":true}',
    'has Trace-Id': (r) => Boolean(r.headers['Trace-Id']),
  });
}
