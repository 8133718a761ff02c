-- The console pages tenants by (code, tenant_id) after the last row shown (keyset pagination);
-- codes repeat across archived tenants, so the id breaks ties. The table is the control plane's
-- small registry, so a plain CREATE INDEX is brief.
CREATE INDEX IF NOT EXISTS tenants_code_id_idx ON fleet.tenants (code, tenant_id);
