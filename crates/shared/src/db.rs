//! Postgres: the pool and the control-plane migrations.
//!
//! Control-plane migrations (the `fleet` schema) are numbered SQL files under
//! `crates/shared/migrations`, embedded in every binary and applied at start by
//! [`migrate_control_plane`] under an advisory lock, so several processes starting at once apply
//! each migration once. Version ranges: 0001-0099 core, 0100s backfill, 0200s scheduler,
//! 0300s rollouts, 0400s tenant lifecycle.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::errors::sqlstate;
use crate::migrate::{self, Migration, MigrationError};
use crate::secret::{ExposeSecret, SecretUrl};

/// The control-plane migrations, in the order written. Add a line per new file.
pub const CONTROL_PLANE: &[(&str, &str)] = &[
    ("0001_core.sql", include_str!("../migrations/0001_core.sql")),
    (
        "0100_backfill.sql",
        include_str!("../migrations/0100_backfill.sql"),
    ),
    (
        "0200_scheduler.sql",
        include_str!("../migrations/0200_scheduler.sql"),
    ),
    (
        "0201_scheduler_clean_stop.sql",
        include_str!("../migrations/0201_scheduler_clean_stop.sql"),
    ),
    (
        "0300_rollouts.sql",
        include_str!("../migrations/0300_rollouts.sql"),
    ),
    (
        "0400_tenant_lifecycle.sql",
        include_str!("../migrations/0400_tenant_lifecycle.sql"),
    ),
    (
        "0450_warm_pool.sql",
        include_str!("../migrations/0450_warm_pool.sql"),
    ),
    (
        "0600_backfill_reports.sql",
        include_str!("../migrations/0600_backfill_reports.sql"),
    ),
    (
        "0601_backfill_finalize.sql",
        include_str!("../migrations/0601_backfill_finalize.sql"),
    ),
    (
        "0620_backfill_copy_parts.sql",
        include_str!("../migrations/0620_backfill_copy_parts.sql"),
    ),
    (
        "0650_job_outcomes.sql",
        include_str!("../migrations/0650_job_outcomes.sql"),
    ),
    (
        "0651_dynamic_schedules.sql",
        include_str!("../migrations/0651_dynamic_schedules.sql"),
    ),
    (
        "0700_console.sql",
        include_str!("../migrations/0700_console.sql"),
    ),
    (
        "0750_tenant_placement.sql",
        include_str!("../migrations/0750_tenant_placement.sql"),
    ),
    (
        "0800_tenant_moves.sql",
        include_str!("../migrations/0800_tenant_moves.sql"),
    ),
    (
        "0820_schedule_run_databases.sql",
        include_str!("../migrations/0820_schedule_run_databases.sql"),
    ),
    (
        "0821_tenant_own_database.sql",
        include_str!("../migrations/0821_tenant_own_database.sql"),
    ),
];

/// Advisory-lock key serializing control-plane migrations across processes.
const CONTROL_PLANE_LOCK: i64 = 0x666c_6565_7401;

pub fn control_plane_migrations() -> Result<Vec<Migration>, MigrationError> {
    migrate::from_files(
        CONTROL_PLANE
            .iter()
            .map(|(f, s)| (f.to_string(), s.to_string())),
    )
}

/// Builds a pool without connecting: connections are made on demand and remade after Postgres
/// restarts, so a worker rides out an outage instead of dying.
pub fn lazy_pool(url: &SecretUrl, max_connections: u32) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::from_str(url.expose_secret())
        .map_err(|e| anyhow::anyhow!("DATABASE_URL {url}: {e}"))?
        .application_name("tenant-fleet")
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5));
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(5))
        .idle_timeout(Duration::from_secs(300))
        .connect_lazy_with(opts))
}

/// Creates the database named in `url` if it does not exist (first run of `make run`).
pub async fn ensure_database(url: &SecretUrl) -> anyhow::Result<()> {
    let opts = PgConnectOptions::from_str(url.expose_secret())?;
    let Some(db) = opts.get_database().map(str::to_owned) else {
        return Ok(());
    };
    // Try the database itself first: the common case needs no admin connection.
    if opts.clone().connect().await.is_ok() {
        return Ok(());
    }
    let admin = opts.database("postgres");
    let mut con = admin.connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut con)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", db.replace('"', "\"\""));
        let create = format!("CREATE DATABASE {quoted}");
        match crate::migrate::exec_simple(&mut con, &create).await {
            Ok(_) => tracing::info!(database = %db, "created database"),
            // Another process won the race (duplicate_database, or the catalog's unique index).
            Err(e) if matches!(sqlstate(&e).as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Applies pending control-plane migrations, once across concurrent starters.
pub async fn migrate_control_plane(pool: &PgPool) -> anyhow::Result<Vec<i64>> {
    let migrations = control_plane_migrations()?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CONTROL_PLANE_LOCK)
        .execute(&mut *tx)
        .await?;
    let report = migrate::apply(&mut tx, "fleet", &migrations).await?;
    tx.commit().await?;
    if !report.applied.is_empty() {
        tracing::info!(versions = ?report.applied, "applied control-plane migrations");
    }
    Ok(report.applied)
}

/// Implements [`sqlx::FromRow`] for a struct from the columns named like its fields (or the
/// column given as `field = "column"`): what `#[derive(sqlx::FromRow)]` does, without sqlx's
/// proc-macro crate, which builds a second copy of the Postgres driver for the build host on
/// the critical path of every build. A field left out of the list is a compile error.
///
/// ```ignore
/// fleet_shared::from_row!(ConfigRow { key = "config_key", value = "config_value", source });
/// ```
#[macro_export]
macro_rules! from_row {
    ($name:ident { $($field:ident $(= $column:literal)?),+ $(,)? }) => {
        impl<'r> ::sqlx::FromRow<'r, ::sqlx::postgres::PgRow> for $name {
            fn from_row(row: &'r ::sqlx::postgres::PgRow) -> ::sqlx::Result<Self> {
                use ::sqlx::Row as _;
                Ok($name {
                    $($field: row.try_get($crate::from_row!(@column $field $($column)?))?,)+
                })
            }
        }
    };
    (@column $field:ident) => { stringify!($field) };
    (@column $field:ident $column:literal) => { $column };
}
