-- Control plane, scheduler: per-schedule state (pause flag and the evaluation watermark), the run
-- history with fan-out progress (what a restarted or new leader resumes from), and the queue of
-- manual triggers written by `fleetctl schedule trigger`.

-- One row per schedule the scheduler has seen. `evaluated_until` is the watermark: every cron
-- tick at or before it has been decided (run, skipped or counted as missed), so a new leader
-- knows exactly which ticks fell into a downtime.
CREATE TABLE IF NOT EXISTS fleet.schedules (
    name            text PRIMARY KEY,
    paused          boolean NOT NULL DEFAULT false,
    paused_at       timestamptz,
    evaluated_until timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per tick decided (cron, missed or manual). A running fan-out commits `published` and
-- `cursor` (the last tenant_id, in tenant_id order, whose job the stream has acknowledged) as it
-- goes, so a resumed fan-out starts after the cursor: no tenant skipped, none published twice
-- beyond what the stream's Nats-Msg-Id window drops. The tenant selector is stored with the run so
-- a resume selects the same tenants even if the configuration changed meanwhile.
CREATE TABLE IF NOT EXISTS fleet.schedule_runs (
    run_id          bigserial PRIMARY KEY,
    schedule        text NOT NULL,
    tick            timestamptz NOT NULL,
    trigger         text NOT NULL CHECK (trigger IN ('cron', 'missed', 'manual')),
    status          text NOT NULL CHECK (status IN ('running', 'done', 'skipped', 'failed')),
    reason          text,
    statuses        text[] NOT NULL,
    plans           text[],
    tenants_matched bigint NOT NULL DEFAULT 0,
    published       bigint NOT NULL DEFAULT 0,
    cursor          uuid,
    spread_ms       bigint NOT NULL DEFAULT 0,
    leader          text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (schedule, tick)
);
CREATE INDEX IF NOT EXISTS schedule_runs_history_idx ON fleet.schedule_runs (schedule, tick DESC);
CREATE INDEX IF NOT EXISTS schedule_runs_running_idx ON fleet.schedule_runs (run_id)
    WHERE status = 'running';

-- Manual triggers: `fleetctl schedule trigger` inserts a row (and nudges the leader on core
-- NATS); the leader picks it up, starts a run with tick = the pick-up second and records it here.
CREATE TABLE IF NOT EXISTS fleet.schedule_triggers (
    trigger_id   bigserial PRIMARY KEY,
    schedule     text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    requested_by text,
    picked_at    timestamptz,
    run_id       bigint REFERENCES fleet.schedule_runs (run_id),
    outcome      text
);
CREATE INDEX IF NOT EXISTS schedule_triggers_pending_idx ON fleet.schedule_triggers (trigger_id)
    WHERE picked_at IS NULL;
