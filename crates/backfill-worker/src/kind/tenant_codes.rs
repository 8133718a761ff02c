//! `tenant_codes`: add and fill `tenant_code` / `organization_code` on the tables of a
//! shared-tables application from an organization → tenant mapping, then verify that no row was
//! left without codes (docs/backfill.md#tenant_codes).
//!
//! The fill statements skip rows that already hold the right codes, so a re-run or a retry
//! writes nothing it does not have to (fewer dead tuples, less WAL).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::job::{CheckCtx, FinishCtx, Finished, JobKind, PlanCtx};
use crate::catalog;
use crate::error::SpecError;
use crate::finalize::engine::FinalizeTable;
use crate::finalize::job::FinalizePlan;
use crate::finalize::step::Selection;
use crate::ident::{literal, qualified, Ident};
use crate::mapping::{self, Mapping};
use crate::options::MappingSource;
use crate::plan::{count_statement, estimate_rows, key_range, PartMode, PartPlan, Plan};
use crate::target::{self, TargetAccess};
use crate::validate::{self, ident, refused, ValidateError};

/// A table linked to its organization by its own column (the default org-direct tables are
/// listed in docs/backfill.md#tenant_codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrgTableSpec {
    pub table: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub org_column: Option<String>,
}

/// A table linked through a user (`user_column` → `user_extensions.user_id`) or through a
/// session (`session_column` → `sessions.id` → `sessions.created_by`) (defaults: docs/backfill.md#tenant_codes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTableSpec {
    pub table: String,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub user_column: Option<String>,
    #[serde(default)]
    pub session_column: Option<String>,
}

/// The wire form of a `tenant_codes` spec's own fields (stored without the mapping, which
/// lives in `fleet.backfill_org_map`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantCodesSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_csv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mapping_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_tables: Option<Vec<OrgTableSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_tables: Option<Vec<UserTableSpec>>,
    /// Finalize after the verification: `true` or an object picking steps
    /// (docs/backfill.md#finalize).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finalize: Option<serde_json::Value>,
}

pub const FIELDS: &[&str] = &[
    "mapping_csv",
    "mapping_path",
    "org_tables",
    "user_tables",
    "finalize",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgTable {
    pub table: Ident,
    pub key: Ident,
    pub org_column: Ident,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// `user_extensions.user_id = t.<column>`
    User(Ident),
    /// `sessions.id = t.<column>`, then the session's creator.
    Session(Ident),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTable {
    pub table: Ident,
    pub key: Ident,
    pub link: Link,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TenantCodesJob {
    /// `None` once stored: the mapping then lives in `fleet.backfill_org_map`.
    pub mapping: Option<Mapping>,
    pub org_tables: Vec<OrgTable>,
    pub user_tables: Vec<UserTable>,
    /// The finalize steps run after the verification (none by default).
    pub finalize: Selection,
}

/// The default org-direct tables of a `tenant_codes` job: the mentoring tables linked by their
/// own `organization_id` (docs/backfill.md#tenant_codes).
pub const SEED_ORG_TABLES: &[&str] = &[
    "availabilities",
    "default_rules",
    "entity_types",
    "file_uploads",
    "forms",
    "notification_templates",
    "organization_extension",
    "report_queries",
    "reports",
    "role_extensions",
];

/// The default user-linked tables: through a user column or, for `post_session_details`, a
/// session (docs/backfill.md#tenant_codes).
pub const SEED_USER_TABLES: &[(&str, &str, &str)] = &[
    ("user_extensions", "user_id", "user_id"),
    ("sessions", "id", "created_by"),
    ("session_attendees", "id", "mentee_id"),
    ("feedbacks", "id", "user_id"),
    ("connection_requests", "id", "created_by"),
    ("connections", "id", "created_by"),
    ("entities", "id", "created_by"),
    ("issues", "id", "user_id"),
    ("resources", "id", "created_by"),
    ("session_request", "id", "created_by"),
    ("question_sets", "id", "created_by"),
    ("questions", "id", "created_by"),
    ("post_session_details", "id", "session:session_id"),
];

pub fn users_table() -> Ident {
    Ident::parse("table", "user_extensions").expect("static identifier")
}

pub fn sessions_table() -> Ident {
    Ident::parse("table", "sessions").expect("static identifier")
}

/// Per-table entry of a `tenant_codes` report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableReport {
    pub table: String,
    /// `organization_id`, `user:<column>` or `session:<column>`.
    pub via: String,
    /// `filled`, `counted` (dry run), `skipped` (table missing, see `reason`), `empty`, or after
    /// verification `verified` / `nulls_left`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub rows_updated: i64,
    #[serde(default)]
    pub total_rows: i64,
    #[serde(default)]
    pub null_tenant_code: i64,
    #[serde(default)]
    pub null_organization_code: i64,
}

impl TableReport {
    fn new(table: &Ident, via: &Via, status: &str, reason: Option<String>) -> TableReport {
        TableReport {
            table: table.to_string(),
            via: via.label(),
            status: status.into(),
            reason,
            rows_updated: 0,
            total_rows: 0,
            null_tenant_code: 0,
            null_organization_code: 0,
        }
    }
}

/// How a table reaches its organization.
#[derive(Debug, Clone)]
pub enum Via {
    Org(Ident),
    User(Ident),
    Session(Ident),
}

impl Via {
    fn label(&self) -> String {
        match self {
            Via::Org(c) => c.to_string(),
            Via::User(c) => format!("user:{c}"),
            Via::Session(c) => format!("session:{c}"),
        }
    }
}

impl TenantCodesJob {
    /// Checks the wire form; at submit the mapping is taken out of `spec` (it is stored apart).
    pub fn check(
        spec: &mut TenantCodesSpec,
        source: MappingSource,
    ) -> Result<TenantCodesJob, SpecError> {
        let mapping = match source {
            MappingSource::Stored => None,
            MappingSource::Required => {
                let text = match (spec.mapping_csv.take(), spec.mapping_path.take()) {
                    (Some(_), Some(_)) => return Err(SpecError::MappingTwice),
                    (Some(t), None) => t,
                    // `crate::mapping_file::inline` turns a readable one into mapping_csv
                    // first; one left here was not allowed to be read.
                    (None, Some(p)) => {
                        return Err(SpecError::MappingFile {
                            path: fleet_shared::events::quoted(&p),
                            problem: "files are read only through the mapping_dir rules (inline the CSV as mapping_csv)".into(),
                        })
                    }
                    (None, None) => {
                        return Err(SpecError::Missing {
                            kind: "tenant_codes",
                            field: "mapping_csv or mapping_path",
                        })
                    }
                };
                Some(mapping::parse(&text)?)
            }
        };
        spec.mapping_csv = None;
        spec.mapping_path = None;
        let org_specs = spec.org_tables.clone().unwrap_or_else(|| {
            SEED_ORG_TABLES
                .iter()
                .map(|t| OrgTableSpec {
                    table: (*t).into(),
                    key: None,
                    org_column: None,
                })
                .collect()
        });
        let user_specs = spec.user_tables.clone().unwrap_or_else(|| {
            SEED_USER_TABLES
                .iter()
                .map(|(t, k, link)| {
                    let (user_column, session_column) = match link.strip_prefix("session:") {
                        Some(c) => (None, Some(c.to_string())),
                        None => (Some(link.to_string()), None),
                    };
                    UserTableSpec {
                        table: (*t).into(),
                        key: Some((*k).into()),
                        user_column,
                        session_column,
                    }
                })
                .collect()
        });
        let mut seen = std::collections::BTreeSet::new();
        let mut org_tables = Vec::new();
        for o in &org_specs {
            let t = OrgTable {
                table: Ident::parse("org_tables.table", &o.table)?,
                key: Ident::parse("org_tables.key", o.key.as_deref().unwrap_or("id"))?,
                org_column: Ident::parse(
                    "org_tables.org_column",
                    o.org_column.as_deref().unwrap_or("organization_id"),
                )?,
            };
            if !seen.insert(t.table.clone()) {
                return Err(SpecError::Tables(format!(
                    "tenant_codes job: table {} is listed twice",
                    t.table
                )));
            }
            org_tables.push(t);
        }
        let mut user_tables = Vec::new();
        for u in &user_specs {
            let link = match (&u.user_column, &u.session_column) {
                (Some(c), None) => Link::User(Ident::parse("user_tables.user_column", c)?),
                (None, Some(c)) => Link::Session(Ident::parse("user_tables.session_column", c)?),
                _ => {
                    return Err(SpecError::Tables(format!(
                        "tenant_codes job: user_tables entry {} needs exactly one of user_column, session_column",
                        fleet_shared::events::quoted(&u.table)
                    )))
                }
            };
            let t = UserTable {
                table: Ident::parse("user_tables.table", &u.table)?,
                key: Ident::parse("user_tables.key", u.key.as_deref().unwrap_or("id"))?,
                link,
            };
            if !seen.insert(t.table.clone()) {
                return Err(SpecError::Tables(format!(
                    "tenant_codes job: table {} is listed twice",
                    t.table
                )));
            }
            user_tables.push(t);
        }
        if org_tables.is_empty() && user_tables.is_empty() {
            return Err(SpecError::Tables(
                "tenant_codes job: no tables to fill".into(),
            ));
        }
        let finalize = crate::finalize::spec::selection("finalize", spec.finalize.as_ref(), false)
            .map_err(SpecError::Option)?;
        Ok(TenantCodesJob {
            mapping,
            org_tables,
            user_tables,
            finalize,
        })
    }

    /// Missing tables are not an error (they are reported as skipped when the job runs).
    async fn validate_inner(
        &self,
        con: &mut PgConnection,
        schema: &Ident,
    ) -> Result<(), ValidateError> {
        let users = users_table();
        if !self.user_tables.is_empty() {
            validate::require_table(con, schema, &users)
                .await
                .map_err(|e| {
                    refused(format!(
                        "tenant_codes job: user_tables are linked through user_extensions: {e}"
                    ))
                })?;
            validate::check_column(con, schema, &users, &ident("user_id")).await?;
            validate::check_column(con, schema, &users, &ident("organization_id")).await?;
        }
        if self
            .user_tables
            .iter()
            .any(|u| matches!(u.link, Link::Session(_)))
        {
            let sessions = sessions_table();
            validate::require_table(con, schema, &sessions).await?;
            validate::check_column(con, schema, &sessions, &ident("id")).await?;
            validate::check_column(con, schema, &sessions, &ident("created_by")).await?;
        }
        for o in &self.org_tables {
            if catalog::table_exists(con, schema, &o.table).await? {
                validate::check_key(con, schema, &o.table, &o.key).await?;
                validate::check_column(con, schema, &o.table, &o.org_column).await?;
            }
        }
        for u in &self.user_tables {
            if catalog::table_exists(con, schema, &u.table).await? {
                validate::check_key(con, schema, &u.table, &u.key).await?;
                let col = match &u.link {
                    Link::User(c) | Link::Session(c) => c,
                };
                validate::check_column(con, schema, &u.table, col).await?;
            }
        }
        Ok(())
    }

    async fn store_inner(&self, tx: &mut PgConnection, job_id: Uuid) -> sqlx::Result<()> {
        let mapping = self
            .mapping
            .as_ref()
            .ok_or_else(|| sqlx::Error::Protocol("tenant_codes job: no mapping".into()))?;
        let (ids, orgs, tenants) = target::org_map_arrays(mapping.iter().map(|(id, c)| {
            (
                id.as_str(),
                c.organization_code.as_str(),
                c.tenant_code.as_str(),
            )
        }));
        sqlx::query(
            "INSERT INTO fleet.backfill_org_map (job_id, organization_id, organization_code, tenant_code)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[])",
        )
        .bind(job_id)
        .bind(&ids)
        .bind(&orgs)
        .bind(&tenants)
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    async fn plan_inner(
        &self,
        con: &mut PgConnection,
        ctx: PlanCtx<'_>,
    ) -> Result<Plan, ValidateError> {
        self.validate_inner(con, ctx.schema).await?;
        let schema = ctx.schema;
        let mut plan = Plan::default();
        let mut reports = Vec::new();
        let mut tables: Vec<(Ident, Ident, Via)> = Vec::new();
        for OrgTable {
            table,
            key,
            org_column,
        } in &self.org_tables
        {
            tables.push((table.clone(), key.clone(), Via::Org(org_column.clone())));
        }
        for UserTable { table, key, link } in &self.user_tables {
            let via = match link {
                Link::User(c) => Via::User(c.clone()),
                Link::Session(c) => Via::Session(c.clone()),
            };
            tables.push((table.clone(), key.clone(), via));
        }
        let mut present = Vec::new();
        for (table, key, via) in tables {
            if catalog::table_exists(con, schema, &table).await? {
                present.push((table, key, via));
            } else {
                let reason = format!("table {schema}.{table} does not exist");
                reports.push(TableReport::new(&table, &via, "skipped", Some(reason)));
            }
        }
        integrity_check(
            con,
            ctx.job_id,
            schema,
            &present,
            !self.user_tables.is_empty(),
            ctx.map_table,
        )
        .await?;
        for (table, key, via) in &present {
            let t = qualified(schema, table);
            if !ctx.eff.dry_run {
                sqlx::query(&format!(
                    "ALTER TABLE {t} ADD COLUMN IF NOT EXISTS \"tenant_code\" text, ADD COLUMN IF NOT EXISTS \"organization_code\" text"
                ))
                .execute(&mut *con)
                .await?;
            }
            let range = key_range(con, &t, key).await?;
            let status = match (range.is_some(), ctx.eff.dry_run) {
                (false, _) => "empty",
                (true, true) => "counted",
                (true, false) => "filled",
            };
            reports.push(TableReport::new(table, via, status, None));
            if let Some((lo, hi)) = range {
                let (statement, mode) = if ctx.eff.dry_run {
                    (count_statement(&t, key, ""), PartMode::Count)
                } else {
                    (
                        fill_statement(schema, ctx.job_id, table, key, via, ctx.map_table),
                        PartMode::Exec,
                    )
                };
                let rows_estimate = estimate_rows(con, &t, "").await?;
                plan.parts.push(PartPlan {
                    name: table.to_string(),
                    statement,
                    then_statement: None,
                    mode,
                    lo,
                    hi,
                    rows_estimate,
                });
            }
        }
        if !reports.is_empty() {
            plan.report = Some(serde_json::json!({ "tables": reports }));
        }
        Ok(plan)
    }

    /// Rows per table from the committed chunks; unless a chunk failed or it is a dry run, the
    /// verification (no row left without codes), which fails the job naming the tables.
    async fn finish_inner(
        &self,
        target: &mut TargetAccess<'_>,
        ctx: FinishCtx<'_>,
    ) -> sqlx::Result<Finished> {
        let Some(rep) = &ctx.report else {
            return Ok(Finished {
                report: ctx.report,
                error: ctx.error,
            });
        };
        let mut tables: Vec<TableReport> =
            serde_json::from_value(rep.get("tables").cloned().unwrap_or_default())
                .unwrap_or_default();
        for t in tables.iter_mut() {
            if let Some((_, n)) = ctx.rows_per_part.iter().find(|(name, _)| *name == t.table) {
                if ctx.dry_run {
                    t.total_rows = *n;
                } else {
                    t.rows_updated = *n;
                }
            }
        }
        let mut error = ctx.error;
        if !ctx.dry_run && error.is_none() {
            verify(target.con().await?, ctx.schema, &mut tables).await?;
            let left: Vec<String> = tables
                .iter()
                .filter(|t| t.status == "nulls_left")
                .map(|t| {
                    format!(
                        "{} ({} tenant_code, {} organization_code)",
                        t.table, t.null_tenant_code, t.null_organization_code
                    )
                })
                .collect();
            if !left.is_empty() {
                error = Some(format!(
                    "verification failed: rows left without codes (their organization or user is not in the mapping or user_extensions): {}",
                    left.join(", ")
                ));
            }
        }
        Ok(Finished {
            report: Some(serde_json::json!({ "tables": tables })),
            error,
        })
    }
}

impl JobKind for TenantCodesJob {
    fn name(&self) -> &'static str {
        "tenant_codes"
    }

    fn validate<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: CheckCtx<'a>,
    ) -> BoxFuture<'a, Result<(), ValidateError>> {
        Box::pin(self.validate_inner(con, ctx.schema))
    }

    fn store<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        job_id: Uuid,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        Box::pin(self.store_inner(tx, job_id))
    }

    /// The fill statements join the mapping: a copy of it goes to the target.
    fn prepare_target<'a>(
        &'a self,
        control: &'a PgPool,
        con: &'a mut PgConnection,
        job_id: Uuid,
    ) -> BoxFuture<'a, sqlx::Result<()>> {
        target::copy_mapping(control, con, job_id)
    }

    fn plan<'a>(
        &'a self,
        con: &'a mut PgConnection,
        ctx: PlanCtx<'a>,
    ) -> BoxFuture<'a, Result<Plan, ValidateError>> {
        Box::pin(self.plan_inner(con, ctx))
    }

    fn finish<'a>(
        &'a self,
        target: &'a mut TargetAccess<'_>,
        ctx: FinishCtx<'a>,
    ) -> BoxFuture<'a, sqlx::Result<Finished>> {
        Box::pin(self.finish_inner(target, ctx))
    }

    /// The job's tables in order, each with its key, when finalize was asked for.
    fn finalize_plan(&self) -> Option<FinalizePlan> {
        if self.finalize.is_empty() {
            return None;
        }
        let tables = self
            .org_tables
            .iter()
            .map(|o| (&o.table, &o.key))
            .chain(self.user_tables.iter().map(|u| (&u.table, &u.key)))
            .map(|(table, key)| FinalizeTable {
                table: table.clone(),
                key: key.clone(),
            })
            .collect();
        Some(FinalizePlan {
            tables,
            steps: self.finalize,
        })
    }
}

/// The `tenant_codes` fill statement of one table (rows that already hold the right codes
/// are skipped, see the module docs).
pub fn fill_statement(
    schema: &Ident,
    job_id: Uuid,
    table: &Ident,
    key: &Ident,
    via: &Via,
    map_table: &str,
) -> String {
    let t = qualified(schema, table);
    let k = key.quoted();
    let map = format!(
        "{map_table} AS m ON m.job_id = {}::uuid",
        literal(&job_id.to_string())
    );
    let set = "SET \"tenant_code\" = m.tenant_code, \"organization_code\" = m.organization_code";
    let changed = "(t.\"tenant_code\" IS DISTINCT FROM m.tenant_code OR t.\"organization_code\" IS DISTINCT FROM m.organization_code)";
    let users = qualified(schema, &users_table());
    match via {
        Via::Org(col) => format!(
            "UPDATE {t} AS t {set} FROM {map_table} AS m WHERE m.job_id = {}::uuid \
             AND m.organization_id = t.{}::text AND t.{k} > $1 AND t.{k} <= $2 AND {changed}",
            literal(&job_id.to_string()),
            col.quoted()
        ),
        Via::User(col) => format!(
            "UPDATE {t} AS t {set} FROM {users} AS u JOIN {map} AND m.organization_id = u.\"organization_id\"::text \
             WHERE u.\"user_id\" = t.{} AND t.{k} > $1 AND t.{k} <= $2 AND {changed}",
            col.quoted()
        ),
        Via::Session(col) => format!(
            "UPDATE {t} AS t {set} FROM {} AS s JOIN {users} AS u ON u.\"user_id\" = s.\"created_by\" \
             JOIN {map} AND m.organization_id = u.\"organization_id\"::text \
             WHERE s.\"id\" = t.{} AND t.{k} > $1 AND t.{k} <= $2 AND {changed}",
            qualified(schema, &sessions_table()),
            col.quoted()
        ),
    }
}

/// The integrity check before any row is touched: every `organization_id` in the org-direct tables and in
/// `user_extensions` must be in the mapping. Fails listing (up to 20 of) the unmapped ids.
async fn integrity_check(
    con: &mut PgConnection,
    job_id: Uuid,
    schema: &Ident,
    present: &[(Ident, Ident, Via)],
    via_users: bool,
    map_table: &str,
) -> Result<(), ValidateError> {
    let mut sources: Vec<(Ident, Ident)> = present
        .iter()
        .filter_map(|(t, _, via)| match via {
            Via::Org(c) => Some((t.clone(), c.clone())),
            _ => None,
        })
        .collect();
    if via_users {
        sources.push((users_table(), ident("organization_id")));
    }
    let mut unmapped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (table, col) in sources {
        let ids: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT t.{c}::text FROM {t} AS t WHERE t.{c} IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM {map_table} m WHERE m.job_id = $1 AND m.organization_id = t.{c}::text) LIMIT 1000",
            c = col.quoted(),
            t = qualified(schema, &table)
        ))
        .bind(job_id)
        .fetch_all(&mut *con)
        .await?;
        for id in ids {
            unmapped.entry(id).or_default().push(table.to_string());
        }
    }
    if unmapped.is_empty() {
        return Ok(());
    }
    let mut ids: Vec<&String> = unmapped.keys().collect();
    ids.sort_by_key(|s| (s.len(), s.to_string()));
    let shown: Vec<String> = ids
        .iter()
        .take(20)
        .map(|id| format!("{id} ({})", unmapped[*id].join(", ")))
        .collect();
    Err(refused(format!(
        "integrity check failed before any row was changed: {} organization_id(s) in the data are not in the mapping: {}{}",
        unmapped.len(),
        shown.join("; "),
        if unmapped.len() > 20 { "; ..." } else { "" }
    )))
}

/// The verification after the fill, per filled table: rows left without codes.
async fn verify(
    con: &mut PgConnection,
    schema: &Ident,
    tables: &mut [TableReport],
) -> sqlx::Result<()> {
    for r in tables
        .iter_mut()
        .filter(|r| r.status == "filled" || r.status == "empty")
    {
        let Ok(table) = Ident::parse("table", &r.table) else {
            continue;
        };
        let (total, nt, no): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), count(*) - count(\"tenant_code\"), count(*) - count(\"organization_code\") FROM {}",
            qualified(schema, &table)
        ))
        .fetch_one(&mut *con)
        .await?;
        r.total_rows = total;
        r.null_tenant_code = nt;
        r.null_organization_code = no;
        r.status = if nt == 0 && no == 0 {
            "verified"
        } else {
            "nulls_left"
        }
        .into();
    }
    Ok(())
}
