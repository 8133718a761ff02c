-- Placement: the database (a [databases.<name>] of FLEET_CONFIG, `control` = DATABASE_URL) that
-- holds each tenant's schema. Every tenant registered before this column existed lives in the
-- control plane's database, which is what the default says. A constant default makes the ALTER a
-- catalog-only change, whatever the registry's size.
ALTER TABLE fleet.tenants ADD COLUMN IF NOT EXISTS database text NOT NULL DEFAULT 'control';
-- Placement counts the live tenants of each database.
CREATE INDEX IF NOT EXISTS tenants_database_idx ON fleet.tenants (database) WHERE status <> 'deleted';
