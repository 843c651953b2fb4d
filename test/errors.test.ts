// The error table and the one module that turns errors into bodies for every client API.
import t from 'tap';
import { BrokerError, ERROR_TABLE, MAX_ERROR_MESSAGE_CHARS, type ErrorCode } from '../src/errors.ts';
import {
  brokerErrorBody,
  brokerErrorShape,
  errorReply,
  ollamaErrorBody,
  ollamaErrorShape,
  ollamaStreamErrorEvent,
  openaiErrorBody,
  openaiErrorShape,
  openaiErrorType,
  openaiStreamErrorEvent,
  streamErrorEvent,
} from '../src/front/error-body.ts';

const CODES = Object.keys(ERROR_TABLE) as ErrorCode[];

const GRPC = new Set([
  'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED',
]);
const OPENAI_TYPES = new Set(['invalid_request_error', 'authentication_error', 'permission_error', 'rate_limit_error', 'insufficient_quota', 'server_error']);

t.test('every code has an HTTP status, a gRPC status, an OpenAI type and a message', async (t) => {
  t.ok(CODES.length > 0);
  for (const code of CODES) {
    const e = ERROR_TABLE[code];
    t.ok(Number.isInteger(e.http) && e.http >= 400 && e.http < 600, `${code} http ${e.http}`);
    t.ok(GRPC.has(e.grpc), `${code} grpc ${e.grpc}`);
    t.ok(OPENAI_TYPES.has(e.openai), `${code} openai ${e.openai}`);
    t.ok(typeof e.message === 'string' && e.message.length > 0, `${code} message`);
    t.equal(new BrokerError(code).status, e.http);
    t.equal(openaiErrorType(code), e.openai);
  }
});

t.test('the OpenAI types follow OpenAI: auth 401, permission 403, rate 429 (a spent budget: insufficient_quota), other 4xx, 5xx', async (t) => {
  for (const code of CODES) {
    const { http, openai } = ERROR_TABLE[code];
    const expected =
      code === 'budget_exceeded'
        ? 'insufficient_quota'
        : http === 401
          ? 'authentication_error'
          : http === 403
            ? 'permission_error'
            : http === 429
              ? 'rate_limit_error'
              : http < 500
                ? 'invalid_request_error'
                : 'server_error';
    t.equal(openai, expected, code);
  }
  t.equal(openaiErrorType('not_a_code'), 'server_error', 'unknown codes are server errors');
  t.equal(openaiErrorType('hasOwnProperty'), 'server_error', 'no prototype lookups');
});

t.test('broker shape', async (t) => {
  t.equal(
    JSON.stringify(brokerErrorBody('not_found', 'no route for /x', 'req-1')),
    '{"error":{"code":"not_found","message":"no route for /x","type":"not_found","param":null,"request_id":"req-1"}}',
  );
  t.same(brokerErrorShape('rate_limited', 'slow down', 'r', 429), brokerErrorBody('rate_limited', 'slow down', 'r'));
});

t.test('OpenAI shape', async (t) => {
  const cases: [ErrorCode, string][] = [
    ['invalid_request', 'invalid_request_error'],
    ['unauthorized', 'authentication_error'],
    ['forbidden', 'permission_error'],
    ['model_not_found', 'invalid_request_error'],
    ['rate_limited', 'rate_limit_error'],
    ['quota_exceeded', 'rate_limit_error'],
    ['budget_exceeded', 'insufficient_quota'],
    ['upstream_timeout', 'server_error'],
  ];
  for (const [code, type] of cases) {
    t.equal(
      JSON.stringify(openaiErrorBody(code, 'm', 'req-2')),
      `{"error":{"message":"m","type":"${type}","code":"${code}","param":null,"request_id":"req-2"}}`,
      code,
    );
    t.same(openaiErrorShape(code, 'm', 'req-2', ERROR_TABLE[code].http), openaiErrorBody(code, 'm', 'req-2'));
  }
});

t.test('Ollama shape: `error` is the message string', async (t) => {
  t.equal(JSON.stringify(ollamaErrorBody('model_not_found', "model 'x' not found", 'req-3')), '{"error":"model \'x\' not found","code":"model_not_found","request_id":"req-3"}');
  const b = ollamaErrorShape('overloaded', 'busy', 'req-3', 503) as { error: unknown };
  t.equal(typeof b.error, 'string');
  t.same(b, ollamaErrorBody('overloaded', 'busy', 'req-3'));
});

t.test('errorReply: status, JSON content type, extra headers, retry-after, route shape', async (t) => {
  const limited = errorReply(new BrokerError('rate_limited', 'slow down', { retryAfter: 2 }), 'req-4');
  t.equal(limited.status, 429);
  t.same(limited.headers, { 'content-type': 'application/json', 'retry-after': '2' });
  t.equal(limited.body, JSON.stringify(brokerErrorBody('rate_limited', 'slow down', 'req-4')));

  const zero = errorReply(new BrokerError('overloaded', undefined, { retryAfter: 0 }), 'req-4');
  t.equal(zero.headers['retry-after'], '0', 'retry-after 0 is still sent');

  const plain = errorReply(new BrokerError('internal'), 'req-5');
  t.equal(plain.status, 500);
  t.same(plain.headers, { 'content-type': 'application/json' }, 'no retry-after when unset');
  t.equal(JSON.parse(plain.body).error.message, 'internal error');

  const notAllowed = errorReply(new BrokerError('method_not_allowed'), 'req-6', openaiErrorShape, { allow: 'GET, POST' });
  t.equal(notAllowed.status, 405);
  t.same(notAllowed.headers, { 'content-type': 'application/json', allow: 'GET, POST' });
  t.equal(notAllowed.body, JSON.stringify(openaiErrorBody('method_not_allowed', ERROR_TABLE.method_not_allowed.message, 'req-6')));

  const ollama = errorReply(new BrokerError('capacity_exhausted', 'full', { retryAfter: 1 }), 'req-7', ollamaErrorShape);
  t.equal(ollama.headers['retry-after'], '1');
  t.same(JSON.parse(ollama.body), { error: 'full', code: 'capacity_exhausted', request_id: 'req-7' });
});

t.test('OpenAI stream terminal event parses as the official SDKs do', async (t) => {
  const ev = openaiStreamErrorEvent('upstream_timeout', 'upstream timed out', 'req-9');
  t.equal(ev, streamErrorEvent('openai', 'upstream timed out', 'upstream_timeout', 'req-9'));
  t.equal(
    ev,
    'data: {"error":{"message":"upstream timed out","type":"server_error","code":"upstream_timeout","param":null,"request_id":"req-9"}}\n\n',
  );
  // openai-node / openai-python: one SSE event per blank-line-terminated block,
  // `data: ` payload that is not [DONE] is JSON; an `error` member raises APIError(error.message).
  t.ok(ev.endsWith('\n\n'));
  const blocks = ev.split('\n\n').filter((b) => b !== '');
  t.equal(blocks.length, 1, 'one event');
  const lines = blocks[0]!.split('\n');
  t.equal(lines.length, 1);
  t.ok(lines[0]!.startsWith('data: '));
  const data = lines[0]!.slice('data: '.length);
  t.not(data, '[DONE]');
  const parsed = JSON.parse(data) as { error?: { message?: unknown; type?: unknown } };
  t.equal(parsed.error?.message, 'upstream timed out');
  t.equal(parsed.error?.type, 'server_error');
});

t.test('Ollama stream terminal event is one NDJSON line with an `error` string, the code and the request id', async (t) => {
  const msg = 'upstream\nfailed "mid-way"';
  const ev = ollamaStreamErrorEvent(msg, 'upstream_error', 'req-9');
  t.equal(ev, streamErrorEvent('ollama', msg, 'upstream_error', 'req-9'));
  t.equal(streamErrorEvent('ollama', 'upstream timed out', 'upstream_timeout', 'req-9'), '{"error":"upstream timed out","code":"upstream_timeout","request_id":"req-9"}\n');
  // ollama-python / ollama-js: split on '\n', JSON.parse each line, raise on `error`.
  t.ok(ev.endsWith('\n'));
  const lines = ev.split('\n').filter((l) => l !== '');
  t.equal(lines.length, 1, 'newlines in the message stay escaped');
  const part = JSON.parse(lines[0]!) as { error?: unknown };
  t.equal(typeof part.error, 'string');
  t.equal(part.error, msg);
});

t.test('a message is clipped at MAX_ERROR_MESSAGE_CHARS: it may quote a client value of any size', async (t) => {
  const e = new BrokerError('model_not_found', `model ${'x'.repeat(5000)} is not served`);
  t.equal(e.message.length, MAX_ERROR_MESSAGE_CHARS);
  t.ok(e.message.endsWith('…'));
  t.equal(new BrokerError('invalid_request', 'short').message, 'short');
});
