-- Control plane, tenant lifecycle: the `suspended` status, the time a tenant was suspended or
-- deleted, where each config value came from, and the audit trail of lifecycle changes.
--
-- `fleet.tenants` is read by every worker, so the DDL waits at most a few seconds for its lock
-- (the migration fails and is retried at the next start rather than queueing application
-- traffic behind it); the new status check is added NOT VALID and validated separately.
SET LOCAL lock_timeout = '5s';

ALTER TABLE fleet.tenants DROP CONSTRAINT IF EXISTS tenants_status_check;
ALTER TABLE fleet.tenants ADD CONSTRAINT tenants_status_check
    CHECK (status IN ('provisioning', 'active', 'suspended', 'failed', 'deleted')) NOT VALID;
ALTER TABLE fleet.tenants VALIDATE CONSTRAINT tenants_status_check;

ALTER TABLE fleet.tenants
    ADD COLUMN IF NOT EXISTS suspended_at   timestamptz,
    ADD COLUMN IF NOT EXISTS suspend_reason text,
    ADD COLUMN IF NOT EXISTS deleted_at     timestamptz;

-- A code is unique among tenants that are not deleted: archiving frees it for a new tenant while
-- the archived row (with its archived schema) stays until it is purged.
CREATE UNIQUE INDEX IF NOT EXISTS tenants_live_code_key
    ON fleet.tenants (code) WHERE status <> 'deleted';
ALTER TABLE fleet.tenants DROP CONSTRAINT IF EXISTS tenants_code_key;
CREATE INDEX IF NOT EXISTS tenants_deleted_at_idx
    ON fleet.tenants (deleted_at) WHERE status = 'deleted';

-- `plan:<name>` (a plan default, replaced on a plan change) or `override` (set explicitly, kept).
-- Rows written before sources were recorded count as overrides, so a plan change never replaces
-- a value it cannot prove came from the old plan.
ALTER TABLE fleet.tenant_configurations
    ADD COLUMN IF NOT EXISTS source text NOT NULL DEFAULT 'override'
    CHECK (source = 'override' OR source ~ '^plan:[a-z0-9_-]{1,64}$');

-- One row per committed lifecycle change. No foreign key: the trail outlives a purged tenant.
-- `old`/`new` hold what changed, with encrypted values masked.
CREATE TABLE IF NOT EXISTS fleet.tenant_events (
    id        bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL,
    code      text NOT NULL,
    org_code  text,
    event     text NOT NULL,
    event_id  text NOT NULL,
    actor     text NOT NULL,
    status    text NOT NULL,
    old       jsonb NOT NULL DEFAULT '{}',
    new       jsonb NOT NULL DEFAULT '{}',
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tenant_events_code_idx ON fleet.tenant_events (code, id);
CREATE INDEX IF NOT EXISTS tenant_events_tenant_idx ON fleet.tenant_events (tenant_id, id);
CREATE INDEX IF NOT EXISTS tenant_events_event_id_idx ON fleet.tenant_events (event_id);
