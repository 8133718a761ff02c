-- Mentoring service, content: question sets and questions (feedback forms), resources, uploaded
-- files, notification templates and reported issues (seed 000).

CREATE TABLE question_sets (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    code                    text NOT NULL,
    questions               bigint[] NOT NULL DEFAULT '{}',
    status                  text NOT NULL DEFAULT 'ACTIVE',
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE UNIQUE INDEX question_sets_code_idx ON question_sets (tenant_code, organization_code, code)
    WHERE deleted_at IS NULL;

CREATE TABLE questions (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    name                    text,
    question                text NOT NULL,
    type                    text NOT NULL DEFAULT 'rating',
    options                 jsonb,
    no_of_stars             integer,
    rendering_data          jsonb,
    category                jsonb,
    meta                    jsonb,
    status                  text NOT NULL DEFAULT 'ACTIVE',
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE INDEX questions_org_idx ON questions (tenant_code, organization_code);

CREATE TABLE resources (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    session_id              bigint,
    name                    text NOT NULL,
    link                    text NOT NULL,
    type                    text NOT NULL,
    status                  text NOT NULL DEFAULT 'ACTIVE',
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE INDEX resources_session_idx ON resources (tenant_code, session_id);

CREATE TABLE file_uploads (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    name                    text NOT NULL,
    input_path              text NOT NULL,
    result_path             text,
    type                    text NOT NULL,
    status                  text NOT NULL DEFAULT 'REQUESTED',
    size_bytes              bigint,
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE INDEX file_uploads_org_status_idx ON file_uploads (tenant_code, organization_code, status);

CREATE TABLE notification_templates (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    code                    text NOT NULL,
    type                    text NOT NULL DEFAULT 'email',
    subject                 text,
    body                    text NOT NULL,
    email_header            text,
    email_footer            text,
    status                  text NOT NULL DEFAULT 'ACTIVE',
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE UNIQUE INDEX notification_templates_code_idx
    ON notification_templates (tenant_code, organization_code, code, type) WHERE deleted_at IS NULL;

CREATE TABLE issues (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    user_id                 text NOT NULL,
    description             text NOT NULL,
    is_email_triggered      boolean NOT NULL DEFAULT false,
    meta_data               jsonb,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE INDEX issues_user_idx ON issues (tenant_code, user_id);
