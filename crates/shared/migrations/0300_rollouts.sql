-- Rollouts: fleet-wide tenant migrations as durable, resumable operations (docs/migrations.md).
-- One row per rollout; one row per tenant it selected, with the tenant's own target, its wave
-- (0 = canary) and its outcome. Provisioner replicas claim pending tenants with
-- FOR UPDATE SKIP LOCKED and finish each in the same transaction as its DDL and ledger, so a
-- crash returns the tenant to the queue and nothing is applied twice.

CREATE TABLE IF NOT EXISTS fleet.rollouts (
    rollout_id      uuid PRIMARY KEY,
    direction       text NOT NULL CHECK (direction IN ('up', 'down')),
    target_version  bigint NOT NULL,
    state           text NOT NULL
                    CHECK (state IN ('running', 'paused', 'halted', 'cancelled', 'succeeded', 'failed')),
    spec            jsonb NOT NULL,
    concurrency     integer NOT NULL CHECK (concurrency > 0),
    max_failures    bigint NOT NULL CHECK (max_failures >= 0),
    lock_timeout_ms bigint NOT NULL CHECK (lock_timeout_ms > 0),
    waves           integer NOT NULL,
    current_wave    integer NOT NULL DEFAULT 0,
    set_digest      text NOT NULL,
    undo_of         uuid REFERENCES fleet.rollouts (rollout_id),
    request_key     text UNIQUE,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);
-- At most one rollout moves tenants at a time.
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_active ON fleet.rollouts ((true))
    WHERE state IN ('running', 'paused');
CREATE INDEX IF NOT EXISTS rollouts_created_idx ON fleet.rollouts (created_at DESC);

CREATE TABLE IF NOT EXISTS fleet.rollout_tenants (
    rollout_id     uuid NOT NULL REFERENCES fleet.rollouts (rollout_id) ON DELETE CASCADE,
    tenant_id      uuid NOT NULL,
    code           text NOT NULL,
    wave           integer NOT NULL,
    target_version bigint NOT NULL,
    state          text NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'skipped')),
    version_before bigint NOT NULL,
    version_after  bigint,
    attempts       integer NOT NULL DEFAULT 0,
    error          text,
    duration_ms    bigint,
    finished_at    timestamptz,
    PRIMARY KEY (rollout_id, tenant_id)
);
CREATE INDEX IF NOT EXISTS rollout_tenants_pending_idx
    ON fleet.rollout_tenants (rollout_id, wave, code) WHERE state = 'pending';

-- The deployed tenant migration files a rollout last saw: a file whose checksum changed since is
-- refused at the start of the next rollout, before any tenant is touched.
CREATE TABLE IF NOT EXISTS fleet.tenant_migration_files (
    version     bigint PRIMARY KEY,
    file        text NOT NULL,
    checksum    text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- What the last `fleetctl migrate verify` found per tenant (reported, never repaired), so that
-- `migrate status` can show drift without reading every schema.
CREATE TABLE IF NOT EXISTS fleet.tenant_drift (
    tenant_id  uuid PRIMARY KEY,
    code       text NOT NULL,
    problems   text NOT NULL,
    checked_at timestamptz NOT NULL DEFAULT now()
);
