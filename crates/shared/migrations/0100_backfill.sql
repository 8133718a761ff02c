-- Backfill jobs: the durable queue of the backfill-worker.
--
-- A job is split into parts (one per table it touches), each with a key range (lo, hi] and a
-- carving cursor; chunks are carved from the cursor on demand (so their size can adapt) and each
-- chunk row is the checkpoint of one chunk transaction: the chunk's statement and the row's move
-- to 'done' commit together.

CREATE TABLE IF NOT EXISTS fleet.backfill_jobs (
    job_id        uuid PRIMARY KEY,
    -- What identifies a submission (Nats-Msg-Id, or the job id): a redelivered submit finds it.
    submit_key    text NOT NULL UNIQUE,
    kind          text NOT NULL CHECK (kind IN ('sql', 'tenant_codes', 'copy_to_tenant')),
    spec          jsonb NOT NULL,
    state         text NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'running', 'paused', 'succeeded', 'failed', 'cancelled')),
    -- The state a paused job returns to on resume.
    resume_state  text,
    error         text,
    report        jsonb,
    dry_run       boolean NOT NULL DEFAULT false,
    rows_done     bigint NOT NULL DEFAULT 0,
    chunks_done   bigint NOT NULL DEFAULT 0,
    chunks_failed bigint NOT NULL DEFAULT 0,
    chunks_total  bigint NOT NULL DEFAULT 0,
    keys_done     double precision NOT NULL DEFAULT 0,
    keys_total    double precision NOT NULL DEFAULT 0,
    rows_per_sec  double precision NOT NULL DEFAULT 0,
    eta_seconds   double precision,
    chunk_size    bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS backfill_jobs_active_idx ON fleet.backfill_jobs (state, created_at)
    WHERE state IN ('pending', 'running');

-- The organization mapping of a tenant_codes job (data_codes.csv), loaded at submit.
CREATE TABLE IF NOT EXISTS fleet.backfill_org_map (
    job_id            uuid NOT NULL REFERENCES fleet.backfill_jobs (job_id) ON DELETE CASCADE,
    organization_id   text NOT NULL,
    organization_code text NOT NULL,
    tenant_code       text NOT NULL,
    PRIMARY KEY (job_id, organization_id)
);

CREATE TABLE IF NOT EXISTS fleet.backfill_parts (
    job_id     uuid NOT NULL REFERENCES fleet.backfill_jobs (job_id) ON DELETE CASCADE,
    part       integer NOT NULL,
    name       text NOT NULL,
    -- The per-chunk statement, built at planning from checked, quoted identifiers; $1/$2 are
    -- the chunk's bounds.
    statement  text NOT NULL,
    -- Run after `statement` in the same chunk transaction (copy_to_tenant's delete_source).
    then_statement text,
    -- 'exec' (rows affected) or 'count' (a SELECT count(*), for dry runs).
    mode       text NOT NULL CHECK (mode IN ('exec', 'count')),
    lo         bigint NOT NULL,
    hi         bigint NOT NULL,
    next_lo    bigint NOT NULL,
    PRIMARY KEY (job_id, part)
);

CREATE TABLE IF NOT EXISTS fleet.backfill_chunks (
    chunk_id    bigserial PRIMARY KEY,
    job_id      uuid NOT NULL REFERENCES fleet.backfill_jobs (job_id) ON DELETE CASCADE,
    part        integer NOT NULL,
    lo          bigint NOT NULL,
    hi          bigint NOT NULL,
    state       text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    rows        bigint NOT NULL DEFAULT 0,
    attempts    integer NOT NULL DEFAULT 0,
    error       text,
    duration_ms double precision,
    worker      text,
    finished_at timestamptz,
    CHECK (hi > lo)
);
CREATE INDEX IF NOT EXISTS backfill_chunks_job_state_idx ON fleet.backfill_chunks (job_id, state, part, lo);
