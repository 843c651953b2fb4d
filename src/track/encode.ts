// Rows into PostgreSQL: COPY's text format (pg-copy-streams) or one multi-row INSERT
// over unnest() of one array per column. bench/tracking.ts measures both; COPY is the
// default (docs/tracking.md has the figures).
import type { TrackRow } from './facts.ts';

/** A row as the writer holds it: what the thread sent, and its cost from the price table. */
export interface StoredRow extends TrackRow {
  readonly cost: number | null;
  readonly replica: string;
}

type Col = readonly [column: string, pgType: string, get: (r: StoredRow) => string | number | null];

const ms = (t: number): string => new Date(t).toISOString();

export const COLUMNS: readonly Col[] = [
  ['broker_request_id', 'text', (r) => r.id],
  ['created_at', 'timestamptz', (r) => ms(r.createdAt)],
  ['finished_at', 'timestamptz', (r) => ms(r.finishedAt)],
  ['replica', 'text', (r) => r.replica],
  ['protocol', 'text', (r) => r.protocol],
  ['api', 'text', (r) => r.api],
  ['route', 'text', (r) => r.route],
  ['model', 'text', (r) => r.model],
  ['arm', 'text', (r) => r.arm],
  ['deployment', 'text', (r) => r.deployment],
  ['api_key_id', 'text', (r) => r.keyId],
  ['subject', 'text', (r) => r.subject],
  ['tier', 'text', (r) => r.tier],
  ['semantic_label', 'text', (r) => r.label],
  ['priority', 'smallint', (r) => r.priority],
  ['outcome', 'text', (r) => r.outcome],
  ['status', 'integer', (r) => r.status],
  ['error_code', 'text', (r) => r.errorCode],
  ['prompt_tokens', 'integer', (r) => r.promptTokens],
  ['completion_tokens', 'integer', (r) => r.completionTokens],
  ['predicted_tokens', 'integer', (r) => r.predictedTokens],
  ['queue_ms', 'real', (r) => r.queueMs],
  ['ttft_ms', 'real', (r) => r.ttftMs],
  ['total_ms', 'real', (r) => r.totalMs],
  ['upstream_ms', 'real', (r) => r.upstreamMs],
  ['retries', 'smallint', (r) => r.retries],
  ['cost', 'double precision', (r) => r.cost],
  ['served_group', 'text', (r) => r.servedGroup],
];

const NAMES = COLUMNS.map((c) => c.at(0)).join(', ');

export const COPY_SQL = `COPY brk_tracking.completion_request (${NAMES}) FROM STDIN`;

// COPY text format: \N is NULL; backslash, tab, newline and carriage return are escaped.
// NUL, which no PostgreSQL text holds, is U+FFFD (storable: a model name a client sent with a
// NUL in it failed every batch it was in, and the writer retried that batch for ever).
const SPECIAL = /[\\\t\n\r\0]/;
function copyText(v: string): string {
  if (!SPECIAL.test(v)) return v;
  return storable(v).replace(/\\/g, '\\\\').replace(/\t/g, '\\t').replace(/\n/g, '\\n').replace(/\r/g, '\\r');
}

/** A string PostgreSQL text can hold: NUL as U+FFFD. */
function storable(v: string): string {
  return v.includes('\0') ? v.replace(/\0/g, '\uFFFD') : v;
}

/** The rows as COPY text: one line per row, tab-separated. */
export function copyLines(rows: readonly StoredRow[]): string {
  let out = '';
  for (const r of rows) {
    for (let i = 0; i < COLUMNS.length; i++) {
      const v = COLUMNS[i]![2](r);
      if (i > 0) out += '\t';
      out += v === null ? '\\N' : typeof v === 'number' ? (Number.isFinite(v) ? String(v) : '\\N') : copyText(v);
    }
    out += '\n';
  }
  return out;
}

export const INSERT_SQL = `INSERT INTO brk_tracking.completion_request (${NAMES}) SELECT * FROM unnest(${COLUMNS.map((c, i) => `$${i + 1}::${c[1]}[]`).join(', ')})`;

/** One array per column, for INSERT_SQL. */
export function insertParams(rows: readonly StoredRow[]): unknown[][] {
  return COLUMNS.map((c) =>
    rows.map((r) => {
      const v = c[2](r);
      return typeof v === 'string' ? storable(v) : v;
    }),
  );
}
