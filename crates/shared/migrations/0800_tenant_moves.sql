-- Online tenant moves (`fleetctl tenants move CODE --to DB`): one row per move, the record that
-- makes a move resumable and abortable. `step` is the last step completed; `state` is `running`
-- until the move is done or aborted. While a tenant has a running move, tenant.migrate waits,
-- rollouts skip it, tenant.deleted and another move are refused (checked under the tenant lock).
CREATE TABLE IF NOT EXISTS fleet.tenant_moves (
    move_id      uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL,
    code         text NOT NULL,
    source       text NOT NULL,
    target       text NOT NULL,
    step         text NOT NULL,
    state        text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'aborted')),
    -- The subscription's oid on the target (its table-sync slots on the source carry it).
    sub_oid      bigint,
    -- Rows per table, counted on both copies while the source was frozen.
    row_counts   jsonb,
    cutover_ms   bigint,
    archive_name text,
    last_error   text,
    actor        text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    step_at      timestamptz NOT NULL DEFAULT now(),
    switched_at  timestamptz,
    finished_at  timestamptz
);
-- At most one running move per tenant.
CREATE UNIQUE INDEX IF NOT EXISTS tenant_moves_running_idx
    ON fleet.tenant_moves (tenant_id) WHERE state = 'running';
