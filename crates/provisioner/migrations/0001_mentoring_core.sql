-- Mentoring service, core: organisations, user profiles, roles, entities and forms (seed 000).
-- Every table carries tenant_code and organization_code; primary keys lead with tenant_code so
-- the tables can be distributed by tenant (Citus) and joins stay tenant-local.

CREATE TABLE organization_extension (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    organization_id         text NOT NULL,
    name                    text,
    status                  text NOT NULL DEFAULT 'ACTIVE',
    session_visibility_policy text,
    mentor_visibility_policy  text,
    external_session_visibility_policy text,
    external_mentor_visibility_policy  text,
    approval_required_for   text[] NOT NULL DEFAULT '{}',
    allow_mentor_override   boolean NOT NULL DEFAULT false,
    uploads                 jsonb,
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id),
    UNIQUE (tenant_code, organization_code)
);

CREATE TABLE user_extensions (
    user_id                 text NOT NULL,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    name                    text,
    email                   text,
    phone                   text,
    designation             text[],
    area_of_expertise       text[],
    education_qualification text,
    experience              text,
    about                   text,
    location                text,
    languages               text[],
    image                   text,
    is_mentor               boolean NOT NULL DEFAULT false,
    mentor_visibility       text,
    mentee_visibility       text,
    external_session_visibility text,
    external_mentor_visibility  text,
    custom_entity_text      jsonb,
    meta                    jsonb,
    settings                jsonb,
    rating                  jsonb,
    stats                   jsonb,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, user_id)
);
CREATE INDEX user_extensions_org_idx ON user_extensions (tenant_code, organization_code);
CREATE INDEX user_extensions_mentor_idx ON user_extensions (tenant_code, is_mentor) WHERE deleted_at IS NULL;

CREATE TABLE role_extensions (
    title                   text NOT NULL,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    label                   text,
    status                  text NOT NULL DEFAULT 'ACTIVE',
    scope                   text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, title)
);
CREATE INDEX role_extensions_org_idx ON role_extensions (tenant_code, organization_code);

CREATE TABLE entity_types (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    value                   text NOT NULL,
    label                   text NOT NULL,
    status                  text NOT NULL DEFAULT 'ACTIVE',
    data_type               text NOT NULL DEFAULT 'STRING',
    model_names             text[] NOT NULL DEFAULT '{}',
    allow_filtering         boolean NOT NULL DEFAULT false,
    allow_custom_entities   boolean NOT NULL DEFAULT false,
    has_entities            boolean NOT NULL DEFAULT true,
    required                boolean NOT NULL DEFAULT false,
    regex                   text,
    meta                    jsonb,
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE UNIQUE INDEX entity_types_value_idx ON entity_types (tenant_code, organization_code, value)
    WHERE deleted_at IS NULL;

CREATE TABLE entities (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    entity_type_id          bigint NOT NULL,
    value                   text NOT NULL,
    label                   text NOT NULL,
    status                  text NOT NULL DEFAULT 'ACTIVE',
    type                    text,
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id),
    FOREIGN KEY (tenant_code, entity_type_id) REFERENCES entity_types (tenant_code, id)
);
CREATE INDEX entities_type_idx ON entities (tenant_code, entity_type_id);
CREATE INDEX entities_org_idx ON entities (tenant_code, organization_code);

CREATE TABLE forms (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    type                    text NOT NULL,
    sub_type                text,
    data                    jsonb NOT NULL DEFAULT '{}',
    version                 integer NOT NULL DEFAULT 0,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE UNIQUE INDEX forms_type_idx ON forms (tenant_code, organization_code, type, sub_type)
    WHERE deleted_at IS NULL;

CREATE TABLE default_rules (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    type                    text NOT NULL,
    target_field            text NOT NULL,
    is_target_from_sessions_mentor boolean NOT NULL DEFAULT false,
    requester_field         text NOT NULL,
    field_configs           jsonb,
    matching_operator       text NOT NULL DEFAULT 'equals',
    requester_roles         text[] NOT NULL DEFAULT '{ALL}',
    role_config             jsonb,
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE INDEX default_rules_org_type_idx ON default_rules (tenant_code, organization_code, type);
