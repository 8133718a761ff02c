-- Reverts 0004_content.sql: drops its tables (and their indexes) in reverse order.
DROP TABLE issues, notification_templates, file_uploads, resources, questions, question_sets;
