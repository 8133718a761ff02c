-- Backfill: parts whose chunks the job's kind runs itself. Mode 'copy' is a copy_to_tenant part:
-- its statement column holds the statements the kind planned (rows read on the job's database,
-- written on the tenant's, which may be another one), not one SQL statement.
ALTER TABLE fleet.backfill_parts DROP CONSTRAINT IF EXISTS backfill_parts_mode_check;
ALTER TABLE fleet.backfill_parts ADD CONSTRAINT backfill_parts_mode_check
    CHECK (mode IN ('exec', 'count', 'copy')) NOT VALID;
ALTER TABLE fleet.backfill_parts VALIDATE CONSTRAINT backfill_parts_mode_check;
