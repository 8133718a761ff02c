-- Mentoring service, reports: report definitions and the queries behind them (seed 000).

CREATE TABLE reports (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    code                    text NOT NULL,
    title                   text NOT NULL,
    description             text,
    report_type_title       text,
    config                  jsonb,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE UNIQUE INDEX reports_code_idx ON reports (tenant_code, organization_code, code)
    WHERE deleted_at IS NULL;

CREATE TABLE report_queries (
    id                      bigint GENERATED ALWAYS AS IDENTITY,
    tenant_code             text NOT NULL,
    organization_code       text NOT NULL,
    report_code             text NOT NULL,
    query                   text NOT NULL,
    status                  text NOT NULL DEFAULT 'ACTIVE',
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    deleted_at              timestamptz,
    PRIMARY KEY (tenant_code, id)
);
CREATE INDEX report_queries_report_idx ON report_queries (tenant_code, organization_code, report_code);
