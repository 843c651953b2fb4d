// The Response a /v1/responses client got, read off its reply as it leaves: a whole reply's
// JSON, or a stream's terminal event (response.completed or response.incomplete carries the
// whole Response). The same for every way a reply is made (a chat upstream's translated, a
// Responses upstream's passed through, a cache hit's replay), so none of them needs to know.
import type { ReplySink } from '../../front/reply.ts';

/** Bytes of a stream kept to find its terminal event in; a longer reply is not stored. */
const MAX_CAPTURE_BYTES = 16 * 1024 * 1024;

const TERMINAL = new Set(['response.completed', 'response.incomplete']);

function text(chunk: string | Uint8Array): string {
  return typeof chunk === 'string' ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('utf8');
}

function parseObject(s: string): Record<string, unknown> | undefined {
  try {
    const v = JSON.parse(s) as unknown;
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

/** The Response of a stream: its last data line, when that is a terminal event. A failed stream (response.failed, error) has none. */
export function streamedResponse(body: string): Record<string, unknown> | undefined {
  const at = body.lastIndexOf('\ndata: ');
  const start = at === -1 ? (body.startsWith('data: ') ? 6 : -1) : at + 7;
  if (start === -1) return undefined;
  const end = body.indexOf('\n', start);
  const event = parseObject(body.slice(start, end === -1 ? undefined : end));
  if (event === undefined || !TERMINAL.has(event['type'] as string)) return undefined;
  const r = event['response'];
  return r !== null && typeof r === 'object' ? (r as Record<string, unknown>) : undefined;
}

/** A Response that may be continued: one with an id, finished (completed or incomplete). */
function keepable(r: Record<string, unknown> | undefined): r is Record<string, unknown> & { id: string } {
  return r !== undefined && typeof r['id'] === 'string' && r['id'] !== '' && (r['status'] === 'completed' || r['status'] === 'incomplete');
}

/** `sink`, with `keep` called once with the Response a 200 reply carried when it ended cleanly. */
export function capturing(sink: ReplySink, keep: (response: Record<string, unknown> & { id: string }) => void): ReplySink {
  let parts: string[] | null = [];
  let bytes = 0;
  let status = 0;
  return new Proxy(sink, {
    get(target, prop) {
      switch (prop) {
        case 'send':
          // Kept before the reply leaves: the client's next turn, on another replica too, finds it.
          return (s: number, headers: Readonly<Record<string, string>>, body: string | Uint8Array) => {
            if (s === 200 && !target.aborted) {
              const r = parseObject(text(body));
              if (keepable(r)) keep(r);
            }
            target.send(s, headers, body);
          };
        case 'start':
          return (s: number, headers: Readonly<Record<string, string>>) => {
            status = s;
            target.start(s, headers);
          };
        case 'write':
          return (chunk: string | Uint8Array) => {
            if (parts !== null) {
              bytes += chunk.length;
              if (bytes > MAX_CAPTURE_BYTES) parts = null;
              else parts.push(text(chunk));
            }
            return target.write(chunk);
          };
        case 'end':
          return (chunk?: string | Uint8Array) => {
            if (chunk !== undefined && parts !== null) parts.push(text(chunk));
            if (status === 200 && parts !== null && !target.aborted) {
              const r = streamedResponse(parts.join(''));
              if (keepable(r)) keep(r);
            }
            parts = null;
            target.end(chunk);
          };
      }
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
    set(target, prop, value) {
      return Reflect.set(target, prop, value, target);
    },
  });
}
