// A real OTLP/HTTP receiver for tests: a node:http server taking POST /v1/traces with
// JSON ExportTraceServiceRequest bodies, flattening what arrives into spans that tests
// wait for and check.
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';

export interface ReceivedSpan {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId: string | undefined;
  readonly name: string;
  readonly kind: number;
  readonly startTimeUnixNano: string;
  readonly endTimeUnixNano: string;
  /** Attribute values decoded: intValue as a number. */
  readonly attributes: Record<string, string | number | boolean>;
  readonly status: { code?: number; message?: string };
  readonly resource: Record<string, string | number | boolean>;
  readonly scope: { name: string; version?: string };
}

export interface OtlpReceiver {
  readonly url: string;
  readonly spans: ReceivedSpan[];
  /** Raw request bodies, parsed, in arrival order. */
  readonly requests: unknown[];
  /** Requests refused (wrong path, method or content type). */
  readonly refused: number;
  /** The headers of every POST, in arrival order. */
  readonly headers: IncomingHttpHeaders[];
  /** What the receiver answers from now on (default 200 `{}`); the spans are recorded either way. */
  reply: { status: number; headers?: Record<string, string>; body?: string };
  /** Waits until `match` holds over the spans received (default 8 s), then returns them. */
  waitFor(match: (spans: ReceivedSpan[]) => boolean, ms?: number): Promise<ReceivedSpan[]>;
  close(): Promise<void>;
}

type AnyValue = { stringValue?: string; intValue?: string | number; doubleValue?: number; boolValue?: boolean };

function decode(attrs: { key: string; value: AnyValue }[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const { key, value } of attrs ?? []) {
    if (value.stringValue !== undefined) out[key] = value.stringValue;
    else if (value.intValue !== undefined) out[key] = Number(value.intValue);
    else if (value.doubleValue !== undefined) out[key] = value.doubleValue;
    else if (value.boolValue !== undefined) out[key] = value.boolValue;
  }
  return out;
}

export async function startOtlpReceiver(): Promise<OtlpReceiver> {
  const spans: ReceivedSpan[] = [];
  const requests: unknown[] = [];
  const headers: IncomingHttpHeaders[] = [];
  let refused = 0;
  const state = { reply: { status: 200, body: '{}' } as OtlpReceiver['reply'] };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (req.method !== 'POST' || req.url !== '/v1/traces' || !String(req.headers['content-type']).startsWith('application/json')) {
        refused++;
        res.writeHead(404).end();
        return;
      }
      // eslint-disable-next-line @typescript-eslint/no-explicit-any -- the OTLP JSON as received, checked by the tests
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as any;
      requests.push(body);
      headers.push(req.headers);
      for (const rs of body.resourceSpans ?? []) {
        const resource = decode(rs.resource?.attributes);
        for (const ss of rs.scopeSpans ?? []) {
          for (const s of ss.spans ?? []) spans.push({ ...s, attributes: decode(s.attributes), resource, scope: ss.scope });
        }
      }
      res.writeHead(state.reply.status, { 'content-type': 'application/json', ...state.reply.headers }).end(state.reply.body ?? '{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as { port: number }).port;
  return {
    url: `http://127.0.0.1:${port}`,
    spans,
    requests,
    headers,
    get refused() {
      return refused;
    },
    get reply() {
      return state.reply;
    },
    set reply(r) {
      state.reply = r;
    },
    async waitFor(match, ms = 8000) {
      for (const deadline = Date.now() + ms; ; ) {
        if (match(spans)) return spans;
        if (Date.now() > deadline) throw new Error(`spans not received in ${ms} ms; have: ${spans.map((s) => `${s.name}@${s.traceId.slice(0, 8)}`).join(', ')}`);
        await new Promise((r) => setTimeout(r, 25));
      }
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}
