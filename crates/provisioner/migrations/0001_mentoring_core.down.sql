-- Reverts 0001_mentoring_core.sql: drops its tables (and their indexes) in reverse order.
DROP TABLE default_rules, forms, entities, entity_types, role_extensions, user_extensions, organization_extension;
