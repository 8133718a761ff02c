-- Reverts 0002_sessions.sql: drops its tables (and their indexes) in reverse order.
DROP TABLE post_session_details, feedbacks, availabilities, session_request, session_attendees, sessions;
