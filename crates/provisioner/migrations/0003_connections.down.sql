-- Reverts 0003_connections.sql: drops its tables (and their indexes) in reverse order.
DROP TABLE connections, connection_requests;
