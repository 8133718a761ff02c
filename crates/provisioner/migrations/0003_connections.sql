-- Mentoring service, connections between mentors and mentees and the requests that create them
-- (seed 000).

CREATE TABLE connection_requests (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    user_id                 text NOT NULL,
    friend_id               text NOT NULL,
    status                  text NOT NULL DEFAULT 'REQUESTED',
    message                 text,
    meta                    jsonb,
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE UNIQUE INDEX connection_requests_pair_idx ON connection_requests (tenant_code, user_id, friend_id)
    WHERE deleted_at IS NULL;
CREATE INDEX connection_requests_friend_idx ON connection_requests (tenant_code, friend_id, status);

CREATE TABLE connections (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    user_id                 text NOT NULL,
    friend_id               text NOT NULL,
    status                  text NOT NULL DEFAULT 'ACCEPTED',
    meta                    jsonb,
    created_by              text,
    updated_by              text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE UNIQUE INDEX connections_pair_idx ON connections (tenant_code, user_id, friend_id)
    WHERE deleted_at IS NULL;
CREATE INDEX connections_org_idx ON connections (tenant_code, organization_code);
