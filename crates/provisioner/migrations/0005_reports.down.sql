-- Reverts 0005_reports.sql: drops its tables (and their indexes) in reverse order.
DROP TABLE report_queries, reports;
