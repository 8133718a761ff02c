-- Backfill: honest progress, named databases, throttling.
--
-- rows_estimate (per part, at planning) and the job's rows_estimated/rows_covered make percent
-- "rows done / rows estimated", where a failed chunk's rows are not done. `database` names the
-- [databases.<name>] entry a job runs on. `throttled` says why the job's lanes wait
-- (e.g. "replica lag 12s > 5s"); NULL while they run freely. The rate bucket is the per-job
-- token bucket of max_rows_per_sec, shared by every replica.

ALTER TABLE fleet.backfill_parts ADD COLUMN IF NOT EXISTS rows_estimate bigint;
ALTER TABLE fleet.backfill_jobs ADD COLUMN IF NOT EXISTS rows_estimated bigint NOT NULL DEFAULT 0;
ALTER TABLE fleet.backfill_jobs ADD COLUMN IF NOT EXISTS rows_covered double precision NOT NULL DEFAULT 0;
ALTER TABLE fleet.backfill_jobs ADD COLUMN IF NOT EXISTS database text NOT NULL DEFAULT 'control';
ALTER TABLE fleet.backfill_jobs ADD COLUMN IF NOT EXISTS throttled text;

CREATE TABLE IF NOT EXISTS fleet.backfill_rate (
    job_id     uuid PRIMARY KEY REFERENCES fleet.backfill_jobs (job_id) ON DELETE CASCADE,
    tokens     double precision NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
