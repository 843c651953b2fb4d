// A scripted LLM upstream for tests whose every case says what the upstream answers: a real
// HTTP server on 127.0.0.1 that parses each request's JSON body, records it in `seen`, and
// hands it to the current `handler` (a 500 until a test sets one).
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export type ScriptedHandler = (path: string, body: any, res: ServerResponse) => void;

export interface ScriptedUpstream {
  url: string;
  /** Every request received, in order. */
  seen: Array<{ path: string; body: any }>;
  /** What the upstream answers next; tests replace it. */
  handler: ScriptedHandler;
  close(): Promise<void>;
}

/** `answers`: requests answered before the handler sees them (it returns true when it answered). */
export async function startScriptedUpstream(answers?: (body: any, res: ServerResponse) => boolean): Promise<ScriptedUpstream> {
  const up = {
    seen: [] as ScriptedUpstream['seen'],
    handler: ((_p, _b, res) => void res.writeHead(500).end()) as ScriptedHandler,
  } as ScriptedUpstream;
  const server = createServer((req, res) => {
    let text = '';
    req.on('data', (c: Buffer) => (text += c.toString('utf8')));
    req.on('end', () => {
      const body = text === '' ? {} : JSON.parse(text);
      up.seen.push({ path: req.url ?? '', body });
      if (answers?.(body, res) === true) return;
      up.handler(req.url ?? '', body, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  up.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  up.close = () =>
    new Promise<void>((r) => {
      server.closeAllConnections();
      server.close(() => r());
    });
  return up;
}
