// Streaming LLM chat under load: a fixed number of VUs, each sending one streamed chat
// request after the other, for a fixed time. Checks that every stream ends properly
// (OpenAI: `data: [DONE]`; Ollama: a `done: true` line) and never with an error event.
//
//   k6 run load/k6/llm-stream.js                              # OpenAI API, model chat-small
//   k6 run -e API=ollama -e MODEL=chat-ollama load/k6/llm-stream.js
//   k6 run -e VUS=50 -e DURATION=2m -e MAX_TOKENS=128 load/k6/llm-stream.js
//
// k6 reads a response whole, so it cannot time single tokens. llm_time_to_first_byte is
// the wait for the response headers; the broker sends them with the first streamed chunk,
// so it approximates the time to first token as the client sees it. The broker's own
// llm_ttft_seconds and llm_inter_token_seconds (Grafana, LLM dashboard) are exact.
import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const API = __ENV.API || 'openai';
const MODEL = __ENV.MODEL || 'chat-small';
const MAX_TOKENS = Number(__ENV.MAX_TOKENS || 64);

const complete = new Rate('llm_stream_complete');
const errorEvents = new Counter('llm_stream_error_events');
const ttfb = new Trend('llm_time_to_first_byte', true);
const chunks = new Trend('llm_stream_chunks');

export const options = {
  scenarios: {
    stream: {
      executor: 'constant-vus',
      vus: Number(__ENV.VUS || 10),
      duration: __ENV.DURATION || '60s',
      gracefulStop: '30s',
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    llm_stream_complete: ['rate>0.99'],
    llm_stream_error_events: ['count<1'],
    llm_time_to_first_byte: ['p(99)<2000'],
  },
  summaryTrendStats: ['avg', 'med', 'p(90)', 'p(99)', 'max'],
};

const messages = [
  { role: 'system', content: 'You are a terse assistant.' },
  { role: 'user', content: 'Name three things an edge gateway for AI traffic must do well.' },
];

/** SSE body -> { done, error, chunks }. */
function readSse(text) {
  let done = false;
  let error = false;
  let n = 0;
  for (const event of text.split('\n\n')) {
    const data = event
      .split('\n')
      .filter((l) => l.startsWith('data:'))
      .map((l) => l.slice(5).trim())
      .join('\n');
    if (data === '') continue;
    if (data === '[DONE]') {
      done = true;
      continue;
    }
    n++;
    try {
      if (JSON.parse(data).error !== undefined) error = true;
    } catch (_) {
      error = true;
    }
  }
  return { done, error, chunks: n };
}

/** NDJSON body -> { done, error, chunks }. */
function readNdjson(text) {
  let done = false;
  let error = false;
  let n = 0;
  for (const line of text.split('\n')) {
    if (line.trim() === '') continue;
    n++;
    try {
      const obj = JSON.parse(line);
      if (obj.error !== undefined) error = true;
      if (obj.done === true) done = true;
    } catch (_) {
      error = true;
    }
  }
  return { done, error, chunks: n };
}

export default function () {
  const openai = API !== 'ollama';
  const url = openai ? `${BASE_URL}/v1/chat/completions` : `${BASE_URL}/api/chat`;
  const body = openai
    ? { model: MODEL, stream: true, stream_options: { include_usage: true }, max_tokens: MAX_TOKENS, messages }
    : { model: MODEL, stream: true, options: { num_predict: MAX_TOKENS }, messages };
  const res = http.post(url, JSON.stringify(body), {
    headers: { 'content-type': 'application/json', accept: openai ? 'text/event-stream' : 'application/x-ndjson' },
    tags: { name: openai ? 'POST /v1/chat/completions stream' : 'POST /api/chat stream' },
    timeout: '120s',
  });
  ttfb.add(res.timings.waiting);
  const stream = res.status === 200 ? (openai ? readSse(res.body) : readNdjson(res.body)) : { done: false, error: false, chunks: 0 };
  chunks.add(stream.chunks);
  if (stream.error) errorEvents.add(1);
  complete.add(stream.done && !stream.error);
  check(res, {
    'status is 200': (r) => r.status === 200,
    'streamed content type': (r) => String(r.headers['Content-Type'] || '').startsWith(openai ? 'text/event-stream' : 'application/x-ndjson'),
    'has x-broker-deployment': (r) => Boolean(r.headers['X-Broker-Deployment']),
    'stream ended properly': () => stream.done && !stream.error,
  });
}
