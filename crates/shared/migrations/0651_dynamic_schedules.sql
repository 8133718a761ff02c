-- Control plane, scheduler: schedules managed at run time, their change log, and what runs need
-- for per-tenant time zones, catch-up and backfill.
--
-- `fleet.schedule_definitions` holds the schedules written by `fleetctl schedule apply|set`
-- (the same fields as a `[[schedules]]` entry, as JSON, validated before they are stored); the
-- leader reloads them within a second. `fleet.schedule_changes` records every change: who, when,
-- the old and the new definition (NULL for a creation or a deletion).
--
-- `fleet.schedule_runs` is written by the leader on every tick, so its DDL waits at most a few
-- seconds for its lock; the widened checks are added NOT VALID and validated separately.
SET LOCAL lock_timeout = '5s';

CREATE TABLE IF NOT EXISTS fleet.schedule_definitions (
    name       text PRIMARY KEY,
    spec       jsonb NOT NULL,
    version    bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    updated_by text
);

CREATE TABLE IF NOT EXISTS fleet.schedule_changes (
    change_id  bigserial PRIMARY KEY,
    name       text NOT NULL,
    action     text NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    old        jsonb,
    new        jsonb,
    changed_by text,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS schedule_changes_name_idx ON fleet.schedule_changes (name, change_id DESC);

-- `queued`: a catch-up or backfill tick waiting for its turn (one run of a schedule at a time,
-- oldest first). Triggers `catch_up` (missed = "catch_up") and `backfill` (fleetctl schedule
-- backfill).
ALTER TABLE fleet.schedule_runs DROP CONSTRAINT IF EXISTS schedule_runs_status_check;
ALTER TABLE fleet.schedule_runs ADD CONSTRAINT schedule_runs_status_check
    CHECK (status IN ('queued', 'running', 'done', 'skipped', 'failed')) NOT VALID;
ALTER TABLE fleet.schedule_runs VALIDATE CONSTRAINT schedule_runs_status_check;
ALTER TABLE fleet.schedule_runs DROP CONSTRAINT IF EXISTS schedule_runs_trigger_check;
ALTER TABLE fleet.schedule_runs ADD CONSTRAINT schedule_runs_trigger_check
    CHECK (trigger IN ('cron', 'missed', 'manual', 'catch_up', 'backfill')) NOT VALID;
ALTER TABLE fleet.schedule_runs VALIDATE CONSTRAINT schedule_runs_trigger_check;

-- `zones`: for a timezone = "tenant" schedule, the zones whose local tick this instant is (the
-- run fans out to tenants in those zones only; NULL: every matching tenant). `default_zone` is
-- the zone of tenants without one. `paced_from`: the spread of a catch-up or backfill run is
-- counted from when it started, not from its (past) tick.
ALTER TABLE fleet.schedule_runs
    ADD COLUMN IF NOT EXISTS zones        text[],
    ADD COLUMN IF NOT EXISTS default_zone text,
    ADD COLUMN IF NOT EXISTS paced_from   timestamptz;
CREATE INDEX IF NOT EXISTS schedule_runs_queued_idx ON fleet.schedule_runs (schedule, tick)
    WHERE status = 'queued';
