-- Mentoring service, sessions: sessions, their attendees, requests, availability, feedback and
-- post-session details (seed 000). Child tables reference their session through
-- (tenant_code, session_id), so a foreign key never crosses tenants.

CREATE TABLE sessions (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    title                   text NOT NULL,
    description             text,
    recommended_for         text[],
    categories              text[],
    medium                  text[],
    image                   text[],
    mentor_id               text,
    mentor_name             text,
    status                  text NOT NULL DEFAULT 'PUBLISHED',
    type                    text NOT NULL DEFAULT 'PUBLIC',
    time_zone               text,
    start_date              bigint,
    end_date                bigint,
    started_at              timestamptz,
    completed_at            timestamptz,
    share_link              text,
    meeting_info            jsonb,
    seats_remaining         integer NOT NULL DEFAULT 0,
    seats_limit             integer NOT NULL DEFAULT 0,
    visibility              text,
    visible_to_organizations text[],
    mentee_feedback_question_set text,
    mentor_feedback_question_set text,
    is_feedback_skipped     boolean NOT NULL DEFAULT false,
    custom_entity_text      jsonb,
    meta                    jsonb,
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE INDEX sessions_org_status_idx ON sessions (tenant_code, organization_code, status);
CREATE INDEX sessions_mentor_idx ON sessions (tenant_code, mentor_id);
CREATE INDEX sessions_start_idx ON sessions (tenant_code, start_date) WHERE deleted_at IS NULL;

CREATE TABLE session_attendees (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    session_id              bigint NOT NULL,
    mentee_id               text NOT NULL,
    status                  text NOT NULL DEFAULT 'ENROLLED',
    type                    text,
    time_zone               text,
    joined_at               timestamptz,
    left_at                 timestamptz,
    is_feedback_skipped     boolean NOT NULL DEFAULT false,
    meeting_info            jsonb,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id),
    FOREIGN KEY (tenant_code, session_id) REFERENCES sessions (tenant_code, id)
);
CREATE UNIQUE INDEX session_attendees_unique_idx ON session_attendees (tenant_code, session_id, mentee_id)
    WHERE deleted_at IS NULL;
CREATE INDEX session_attendees_mentee_idx ON session_attendees (tenant_code, mentee_id);

CREATE TABLE session_request (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    requestor_id            text NOT NULL,
    requestee_id            text NOT NULL,
    title                   text,
    agenda                  text,
    start_date              bigint,
    end_date                bigint,
    time_zone               text,
    status                  text NOT NULL DEFAULT 'REQUESTED',
    session_id              bigint,
    reject_reason           text,
    meta                    jsonb,
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE INDEX session_request_requestee_idx ON session_request (tenant_code, requestee_id, status);
CREATE INDEX session_request_requestor_idx ON session_request (tenant_code, requestor_id);

CREATE TABLE availabilities (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    user_id                 text NOT NULL,
    event_name              text NOT NULL,
    start_time              bigint NOT NULL,
    end_time                bigint NOT NULL,
    expiration_date         bigint,
    repeat_on               text[],
    repeat_unit             text,
    occurrence_in_month     integer,
    repeat_increment        integer,
    status                  text NOT NULL DEFAULT 'ACTIVE',
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE INDEX availabilities_user_idx ON availabilities (tenant_code, user_id, start_time);

CREATE TABLE feedbacks (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    session_id              bigint NOT NULL,
    user_id                 text NOT NULL,
    question_id             bigint NOT NULL,
    response                text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id),
    FOREIGN KEY (tenant_code, session_id) REFERENCES sessions (tenant_code, id)
);
CREATE INDEX feedbacks_session_idx ON feedbacks (tenant_code, session_id, user_id);

CREATE TABLE post_session_details (
    session_id              bigint NOT NULL,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    recording_url           text,
    recording               jsonb,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, session_id),
    FOREIGN KEY (tenant_code, session_id) REFERENCES sessions (tenant_code, id)
);
CREATE INDEX post_session_details_org_idx ON post_session_details (tenant_code, organization_code);
