//! The spec side of finalize: the `finalize` field of a `tenant_codes` job and the standalone
//! `finalize` job (`tables`, `steps`), checked into a [`FinalizePlan`].

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use super::engine::{refusal, FinalizeTable};
use super::job::FinalizePlan;
use super::step::Selection;
use crate::ident::{BadIdent, Ident};

/// One entry of a `finalize` job's `tables`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    pub table: String,
    /// The primary key's column when the table has no primary key (default `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A step selection as the spec writes it (`true`, `false` or an object of steps).
pub fn selection(
    field: &str,
    v: Option<&serde_json::Value>,
    default: bool,
) -> Result<Selection, String> {
    match v {
        None if default => Ok(Selection::ALL),
        None => Ok(Selection::NONE),
        Some(v) => Selection::from_json(v).map_err(|e| match e.strip_prefix("finalize: ") {
            Some(rest) => format!("{field}: {rest}"),
            None => e,
        }),
    }
}

/// The tables of a standalone `finalize` job: as listed, or `defaults` (table, key).
pub fn tables(
    listed: Option<&[TableSpec]>,
    defaults: &[(&str, &str)],
) -> Result<Vec<FinalizeTable>, BadIdent> {
    let mut out: Vec<FinalizeTable> = Vec::new();
    match listed {
        Some(list) => {
            for t in list {
                out.push(FinalizeTable {
                    table: Ident::parse("tables.table", &t.table)?,
                    key: Ident::parse("tables.key", t.key.as_deref().unwrap_or("id"))?,
                });
            }
        }
        None => {
            for (t, k) in defaults {
                out.push(FinalizeTable {
                    table: Ident::parse("tables.table", t)?,
                    key: Ident::parse("tables.key", k)?,
                });
            }
        }
    }
    Ok(out)
}

/// The tables listed twice, if any (one line).
pub fn duplicate(tables: &[FinalizeTable]) -> Option<String> {
    let mut seen = std::collections::BTreeSet::new();
    tables
        .iter()
        .find(|t| !seen.insert(t.table.as_str()))
        .map(|t| format!("finalize job: table {} is listed twice", t.table))
}

/// At submit and at planning of a standalone job: refused (one line) when finalize would refuse
/// the tables as they are now (see [`refusal`]).
pub async fn check(
    con: &mut PgConnection,
    schema: &Ident,
    plan: &FinalizePlan,
) -> sqlx::Result<Option<String>> {
    refusal(con, schema, plan.steps, &plan.tables).await
}
