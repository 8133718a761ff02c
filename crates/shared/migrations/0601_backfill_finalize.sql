-- Backfill finalize: the `finalize` job kind, and the per-table record of its DDL steps.
--
-- A finalize run (after a tenant_codes fill, or as its own job) moves each table through
-- not_null, primary_key, foreign_keys, indexes and citus. Each step is idempotent on the target
-- (it looks at the catalog before it acts); this table records where each table stands, so a
-- replica that takes over after a crash resumes at the step that was running, and the report
-- shows every step: done, skipped (with the reason) or failed (with the one-line error).
-- `attempts` counts the statements that gave up at lock_timeout and were retried.

CREATE TABLE IF NOT EXISTS fleet.backfill_finalize_steps (
    job_id     uuid NOT NULL REFERENCES fleet.backfill_jobs (job_id) ON DELETE CASCADE,
    table_name text NOT NULL,
    step       text NOT NULL
               CHECK (step IN ('not_null', 'primary_key', 'foreign_keys', 'indexes', 'citus')),
    -- Display order: tables in job order, steps in execution order.
    ord        integer NOT NULL,
    state      text NOT NULL DEFAULT 'pending'
               CHECK (state IN ('pending', 'running', 'done', 'skipped', 'failed')),
    detail     text,
    attempts   integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, table_name, step)
);

-- The kind check gains 'finalize' (NOT VALID + VALIDATE: the swap takes its exclusive lock only
-- for a moment, the check of the existing rows runs without blocking writers).
ALTER TABLE fleet.backfill_jobs DROP CONSTRAINT IF EXISTS backfill_jobs_kind_check;
ALTER TABLE fleet.backfill_jobs ADD CONSTRAINT backfill_jobs_kind_check
    CHECK (kind IN ('sql', 'tenant_codes', 'copy_to_tenant', 'finalize')) NOT VALID;
ALTER TABLE fleet.backfill_jobs VALIDATE CONSTRAINT backfill_jobs_kind_check;
