// uWS takes the whole status line; keep the reason phrases in one table.
import { STATUS_CODES } from 'node:http';

const lines = new Map<number, string>();
/** Phrases Node does not know: Anthropic's 529, which the Messages API answers for overloaded_error. */
const EXTRA: Readonly<Record<number, string>> = { 499: 'Client Closed Request', 529: 'Overloaded' };

export function statusLine(status: number): string {
  let line = lines.get(status);
  if (line === undefined) {
    line = `${status} ${STATUS_CODES[status] ?? EXTRA[status] ?? 'Unknown'}`;
    lines.set(status, line);
  }
  return line;
}
