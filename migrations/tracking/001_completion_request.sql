-- Request tracking (docs/tracking.md): one row per request, partitioned by UTC day.
-- Applied once by src/track/migrate.ts, under an advisory lock, in a transaction.
CREATE TABLE brk_tracking.completion_request (
  id                bigserial,
  broker_request_id text        NOT NULL,
  created_at        timestamptz NOT NULL,
  finished_at       timestamptz NOT NULL,
  replica           text        NOT NULL,
  protocol          text        NOT NULL,
  api               text        NOT NULL,
  route             text        NOT NULL,
  model             text,
  arm               text,
  deployment        text,
  api_key_id        text,
  subject           text,
  tier              text,
  semantic_label    text,
  priority          smallint,
  outcome           text        NOT NULL,
  status            integer     NOT NULL,
  error_code        text,
  prompt_tokens     integer,
  completion_tokens integer,
  predicted_tokens  integer,
  queue_ms          real,
  ttft_ms           real,
  total_ms          real        NOT NULL,
  upstream_ms       real,
  retries           smallint    NOT NULL DEFAULT 0,
  cost              double precision
) PARTITION BY RANGE (created_at);

-- The runbook's indexes (created_at, broker_request_id, semantic_label), and the
-- ones the admin API's filters and the budgets' sums need.
CREATE INDEX completion_request_created_at ON brk_tracking.completion_request (created_at, id);
CREATE INDEX completion_request_request_id ON brk_tracking.completion_request (broker_request_id);
CREATE INDEX completion_request_label ON brk_tracking.completion_request (semantic_label, created_at);
CREATE INDEX completion_request_key ON brk_tracking.completion_request (api_key_id, created_at);

-- Rows whose day has no partition yet (a clock far off) land here instead of failing a batch.
CREATE TABLE brk_tracking.completion_request_default PARTITION OF brk_tracking.completion_request DEFAULT;
