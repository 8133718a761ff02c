//! `/tenants` (search, keyset pagination) and `/tenants/<code>` (registry row, configs with their
//! source, applied migrations, and the lifecycle actions of `tenant_actions`).
//!
//! Pagination is by `(code, tenant_id)` after the last row shown, on an index, so page 200 of
//! 10,000 tenants costs what page 1 does. The search text is at most 64 characters and only ever
//! a bound `LIKE` parameter with `%`, `_` and `\` escaped; the cursor must parse as a code and a
//! UUID, anything else is refused before a query runs.

use axum::extract::{Path, Query, State};
use axum::Extension;
use fleet_shared::Code;
use maud::html;
use serde::Deserialize;
use uuid::Uuid;

use crate::{layout, tenant_actions, Page, Refusal, Shared, Visitor};

pub const PAGE: i64 = 50;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    after: String,
}

struct Row {
    tenant_id: Uuid,
    code: String,
    name: String,
    plan: String,
    org_code: Option<String>,
    status: String,
    schema_version: i64,
    created_at: chrono::DateTime<chrono::Utc>,
}
fleet_shared::from_row!(Row {
    tenant_id,
    code,
    name,
    plan,
    org_code,
    status,
    schema_version,
    created_at
});

/// `a%b_c\` as a `LIKE` literal.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

fn cursor(raw: &str) -> Result<Option<(String, Uuid)>, Refusal> {
    if raw.is_empty() {
        return Ok(None);
    }
    let bad = || Refusal::bad("refused: the page cursor is not one this console made");
    let (code, id) = raw.split_once(',').ok_or_else(bad)?;
    let code = Code::parse(code).map_err(|_| bad())?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(Some((code.as_str().to_owned(), id)))
}

pub async fn list(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Query(q): Query<ListQuery>,
) -> Page {
    let search = q.q.trim();
    if search.chars().count() > 64 {
        return Err(Refusal::bad("refused: a search is at most 64 characters"));
    }
    if search.chars().any(char::is_control) {
        return Err(Refusal::bad("refused: a search has no control characters"));
    }
    let after = cursor(&q.after)?;
    let (ac, ai) = after
        .clone()
        .unwrap_or_else(|| (String::new(), Uuid::nil()));
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT tenant_id, code, name, plan, org_code, status, schema_version, created_at
           FROM fleet.tenants
          WHERE ($1 = '' OR code LIKE $2 ESCAPE '\\' OR name ILIKE $3 ESCAPE '\\' OR org_code LIKE $2 ESCAPE '\\')
            AND ($4 = '' OR (code, tenant_id) > ($4, $5))
          ORDER BY code, tenant_id
          LIMIT $6",
    )
    .bind(search)
    .bind(format!("{}%", like_escape(&search.to_lowercase())))
    .bind(format!("%{}%", like_escape(search)))
    .bind(&ac)
    .bind(ai)
    .bind(PAGE + 1)
    .fetch_all(&c.pg)
    .await
    .map_err(anyhow::Error::from)?;
    let more = rows.len() as i64 > PAGE;
    let rows = &rows[..rows.len().min(PAGE as usize)];
    let next = more
        .then(|| rows.last().map(|r| format!("{},{}", r.code, r.tenant_id)))
        .flatten();
    let body = html! {
        form.search method="get" action="/tenants" {
            input type="search" name="q" value=(search) maxlength="64" placeholder="code, name or org" id="q";
            button type="submit" { "Search" }
        }
        @if rows.is_empty() {
            p id="no-tenants" { @if search.is_empty() { "no tenants" } @else { "no tenant matches" } }
        } @else {
            table id="tenants" {
                thead { tr { th { "code" } th { "name" } th { "plan" } th { "org" } th { "status" } th { "version" } th { "created" } } }
                tbody {
                    @for r in rows {
                        tr {
                            td { a href={ "/tenants/" (r.code) } { (r.code) } }
                            td.name { (r.name) }
                            td { (r.plan) }
                            td { (r.org_code.clone().unwrap_or_default()) }
                            td { span class={ "status " (r.status) } { (r.status) } }
                            td.num { (r.schema_version) }
                            td { (layout::when(&r.created_at)) }
                        }
                    }
                }
            }
        }
        p.pager {
            @if after.is_some() { a href={ "/tenants?q=" (urlencode(search)) } { "first page" } " " }
            @if let Some(n) = next { a id="next" href={ "/tenants?q=" (urlencode(search)) "&after=" (n) } { "next page" } }
        }
    };
    Ok(layout::page(&v, "/tenants", "Tenants", body))
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn code_of(raw: &str) -> Result<Code, Refusal> {
    Code::parse(raw).map_err(|e| Refusal::bad(format!("refused: {e}")))
}

struct Registry {
    tenant_id: Uuid,
    name: String,
    plan: String,
    org_code: Option<String>,
    status: String,
    schema_name: String,
    schema_version: i64,
    suspend_reason: Option<String>,
    created_at: chrono::DateTime<chrono::Utc>,
    provisioned_at: Option<chrono::DateTime<chrono::Utc>>,
    database: String,
    own_database: Option<String>,
}
fleet_shared::from_row!(Registry {
    tenant_id,
    name,
    plan,
    org_code,
    status,
    schema_name,
    schema_version,
    suspend_reason,
    created_at,
    provisioned_at,
    database,
    own_database
});

struct Config {
    config_key: String,
    config_value: serde_json::Value,
    is_encrypted: bool,
    source: String,
    updated_at: chrono::DateTime<chrono::Utc>,
}
fleet_shared::from_row!(Config {
    config_key,
    config_value,
    is_encrypted,
    source,
    updated_at
});

pub async fn show(
    State(c): State<Shared>,
    Extension(v): Extension<Visitor>,
    Path(code): Path<String>,
) -> Page {
    let code = code_of(&code)?;
    let row: Option<Registry> = sqlx::query_as(
        "SELECT tenant_id, name, plan, org_code, status, schema_name, schema_version, suspend_reason, created_at, provisioned_at,
                database, own_database
           FROM fleet.tenants WHERE code = $1 ORDER BY (status = 'deleted'), created_at DESC LIMIT 1",
    )
    .bind(code.as_str())
    .fetch_optional(&c.pg)
    .await
    .map_err(anyhow::Error::from)?;
    let Some(Registry {
        tenant_id: id,
        name,
        plan,
        org_code: org,
        status,
        schema_name: schema,
        schema_version: version,
        suspend_reason: reason,
        created_at: created,
        provisioned_at: provisioned,
        database,
        own_database,
    }) = row
    else {
        return Err(Refusal::not_found(format!("no tenant with code {code}")));
    };
    let configs: Vec<Config> = sqlx::query_as(
        "SELECT config_key, config_value, is_encrypted, source, updated_at
           FROM fleet.tenant_configurations WHERE tenant_id = $1 ORDER BY config_key",
    )
    .bind(id)
    .fetch_all(&c.pg)
    .await
    .map_err(anyhow::Error::from)?;
    let ledger = format!("\"{}\".schema_migrations", schema.replace('"', "\"\""));
    // The ledger is in the tenant's schema, on the database the registry names.
    let tenant_pg = c
        .pools
        .tenant(&database, own_database.as_deref())
        .map_err(|e| anyhow::anyhow!("tenant {code}: {e}"))?;
    let migrations: Result<Vec<(i64, String, chrono::DateTime<chrono::Utc>)>, _> = sqlx::query_as(
        &format!("SELECT version, name, applied_at FROM {ledger} ORDER BY version"),
    )
    .fetch_all(&tenant_pg)
    .await;
    let base = format!("/tenants/{code}");
    let body = html! {
        table.kv id="registry" {
            tr { th { "tenant id" } td { (id) } }
            tr { th { "name" } td.name { (name) } }
            tr { th { "plan" } td { (plan) } }
            tr { th { "org" } td { (org.unwrap_or_default()) } }
            tr { th { "status" } td { span class={ "status " (status) } id="status" { (status) } @if let Some(r) = &reason { " — " (r) } } }
            tr { th { "schema" } td { (schema) " (version " (version) ")" } }
            tr { th { "database" } td { (database) @if let Some(o) = &own_database { " (its own database " (o) ")" } } }
            tr { th { "created" } td { (layout::when(&created)) } }
            tr { th { "provisioned" } td { (layout::opt_when(&provisioned)) } }
        }
        (tenant_actions::forms(&c, &v, &base, &status, &plan))
        h2 { "Configuration" }
        @if configs.is_empty() { p { "no configuration" } } @else {
            table id="configs" {
                thead { tr { th { "key" } th { "value" } th { "source" } th { "updated" } } }
                tbody {
                    @for k in &configs {
                        tr {
                            td { (k.config_key) }
                            td { code { @if k.is_encrypted { "•••• (encrypted)" } @else { (k.config_value.to_string()) } } }
                            td { (k.source) }
                            td { (layout::when(&k.updated_at)) }
                        }
                    }
                }
            }
        }
        h2 { "Applied migrations" }
        @match &migrations {
            Ok(m) if m.is_empty() => p { "none" },
            Ok(m) => table id="migrations" {
                thead { tr { th { "version" } th { "name" } th { "applied" } } }
                tbody { @for (ver, n, at) in m { tr { td.num { (ver) } td { (n) } td { (layout::when(at)) } } } }
            },
            Err(_) => p.hint { "the tenant's schema has no migration ledger here (not provisioned, archived, or in another database)" },
        }
    };
    Ok(layout::page(
        &v,
        "/tenants",
        &format!("Tenant {code}"),
        body,
    ))
}
