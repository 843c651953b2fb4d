-- The fallback group a request ended in, answered or failed there (null: it never left the
-- group asked for, in `model`): llm_requests_total counts a request under it, and usage grouped
-- by `served` (coalesce(served_group, model)) adds up as the metrics do.
ALTER TABLE brk_tracking.completion_request ADD COLUMN served_group text;
