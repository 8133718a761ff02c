-- A database per tenant (`isolation = "database"`): the name of the tenant's own database on the
-- server its `database` names (`tenant_<code>`; after an archive, its archive name). NULL: the
-- tenant's schema lives in that server's configured database, as before. Nullable without a
-- default: a catalog-only change.
ALTER TABLE fleet.tenants ADD COLUMN IF NOT EXISTS own_database text;
