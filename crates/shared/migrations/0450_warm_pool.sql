-- Warm pool: tenant schemas migrated ahead of time and owned by nobody, claimed (renamed to
-- tenant_<code>) by tenant.created. A row exists exactly while its schema is unowned: the claim
-- deletes it in the transaction that renames the schema and registers the tenant.
CREATE TABLE IF NOT EXISTS fleet.warm_pool (
    schema_name    text PRIMARY KEY CHECK (schema_name ~ '^fleet_pool_[0-9a-f]{32}$'),
    schema_version bigint NOT NULL,
    -- SHA-256 over the (version, checksum) pairs of the migration set the schema was built with:
    -- a schema is claimed only by a provisioner whose set has the same fingerprint.
    fingerprint    text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS warm_pool_fingerprint_idx ON fleet.warm_pool (fingerprint, created_at);
