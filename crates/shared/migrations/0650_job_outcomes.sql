-- Control plane, job runtime: the outcome of every scheduled job a consumer built on the job
-- runtime (crate fleet-jobs) handled, keyed like the job's Nats-Msg-Id (schedule, tick,
-- tenant_id). `failed` is a transient failure that will be retried (it is overwritten by the
-- retry's outcome); `done` and `dead_lettered` are final and never overwritten by a late
-- `failed`. The scheduler's `overlap = "forbid"` counts a tick finished when every job it
-- published has a final outcome; `fleetctl schedule history NAME --tenant CODE` shows them.
CREATE TABLE IF NOT EXISTS fleet.job_outcomes (
    schedule      text NOT NULL,
    tick          timestamptz NOT NULL,
    tenant_id     uuid NOT NULL,
    tenant_code   text NOT NULL,
    task          text NOT NULL,
    subject       text NOT NULL,
    status        text NOT NULL CHECK (status IN ('done', 'failed', 'dead_lettered')),
    attempts      integer NOT NULL,
    reason        text,
    worker        text,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, tick, tenant_id)
);
CREATE INDEX IF NOT EXISTS job_outcomes_tenant_idx
    ON fleet.job_outcomes (schedule, tenant_code, tick DESC);
