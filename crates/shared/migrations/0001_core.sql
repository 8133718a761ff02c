-- Control plane, core: the tenant registry, tenant configurations (seed 004) and the record of
-- processed events that makes handlers' effects happen once under at-least-once delivery.

CREATE TABLE IF NOT EXISTS fleet.tenants (
    tenant_id      uuid PRIMARY KEY,
    code           text NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9][a-z0-9_]{0,47}$'),
    name           text NOT NULL,
    plan           text NOT NULL,
    org_code       text CHECK (org_code ~ '^[a-z0-9][a-z0-9_]{0,47}$'),
    status         text NOT NULL DEFAULT 'provisioning'
                   CHECK (status IN ('provisioning', 'active', 'failed', 'deleted')),
    schema_name    text NOT NULL,
    schema_version bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    provisioned_at timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tenants_status_plan_idx ON fleet.tenants (status, plan);

CREATE TABLE IF NOT EXISTS fleet.tenant_configurations (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES fleet.tenants (tenant_id) ON DELETE CASCADE,
    config_key   varchar(255) NOT NULL,
    config_value jsonb NOT NULL,
    is_encrypted boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, config_key)
);

-- One row per event whose effect committed, keyed by what identifies the event (its message id
-- or a natural key). Written in the same transaction as the effect.
CREATE TABLE IF NOT EXISTS fleet.processed_events (
    consumer     text NOT NULL,
    event_key    text NOT NULL,
    subject      text NOT NULL,
    stream_seq   bigint,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_key)
);
CREATE INDEX IF NOT EXISTS processed_events_time_idx ON fleet.processed_events (processed_at);
