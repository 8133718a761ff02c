-- A schedule's tenant selector can name databases (`tenants.database`): the run keeps the
-- selector it started with, like its statuses and plans, so a resumed fan-out selects the same
-- tenants. NULL: every database. Nullable without a default: a catalog-only change.
ALTER TABLE fleet.schedule_runs ADD COLUMN IF NOT EXISTS databases text[];
