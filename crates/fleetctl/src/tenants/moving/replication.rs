//! The copy and the stream: the schema's DDL on the target, a publication and replication slot
//! on the source, a subscription on the target that copies every table and then streams every
//! change, and the teardown of all three. Each step checks what exists first, so running it
//! again after a crash finishes it instead of failing on its own leftovers.
//!
//! The slot is created on the source by itself, not by `CREATE SUBSCRIPTION`: that also works
//! when both databases are on one server (where a subscription creating its own slot would wait
//! for itself), and the teardown can drop it even when the subscription is already gone.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::secret::ExposeSecret as _;
use serde_json::json;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

use super::super::ddl;
use super::record::MoveRow;
use super::report::{bytes, Report};
use super::sides::{ownership_comment, quote_literal, schema_comment, Sides};

/// Lag (source WAL not yet confirmed by the subscription) below which the copy counts as caught
/// up and the cut-over may start.
const CAUGHT_UP_BYTES: i64 = 4 * 1024 * 1024;
/// How often the copy's progress is polled.
const POLL: Duration = Duration::from_millis(200);
/// How often a progress line is printed while nothing else changes.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// The schema without rows on the target: `pg_dump --schema-only` of the source (pre-data and
/// post-data, one snapshot, with the schema's `GRANT`s, owned by the fleet's role), applied in one transaction that also marks the schema as this
/// move's. Returns whether it was created now (false: an earlier run did).
pub async fn copy_schema(s: &Sides, m: &MoveRow) -> anyhow::Result<bool> {
    match schema_comment(&s.target_pg, &s.schema).await? {
        Some(Some(c)) if c == ownership_comment(m.move_id) => return Ok(false),
        Some(_) => anyhow::bail!(
            "schema {} exists on database {} but was not created by move {}; drop or rename it there, or --abort",
            s.schema,
            s.target.name,
            m.move_id
        ),
        None => {}
    }
    let mut src = PgConnection::connect(s.source_url().expose_secret())
        .await
        .with_context(|| format!("cannot connect to database {}", s.source.name))?;
    let mut tx = src.begin().await?;
    sqlx::Executor::execute(
        &mut *tx,
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    )
    .await?;
    let snapshot: String = sqlx::query_scalar("SELECT pg_export_snapshot()")
        .fetch_one(&mut *tx)
        .await?;
    let pre = ddl::pg_dump_with(s.source_url(), &s.schema, "pre-data", &snapshot, true).await?;
    let post = ddl::pg_dump_with(s.source_url(), &s.schema, "post-data", &snapshot, true).await?;
    tx.rollback().await?;
    src.close().await.ok();

    // A connection of its own: the dump sets search_path for its session.
    let mut tgt = PgConnection::connect(s.target.url.expose_secret())
        .await
        .with_context(|| format!("cannot connect to database {}", s.target.name))?;
    let mut tx = tgt.begin().await?;
    for sql in [strip_meta(&pre), strip_meta(&post)] {
        fleet_shared::migrate::exec_simple(&mut tx, &sql)
            .await
            .with_context(|| {
                format!("Failed to create the schema on database {}", s.target.name)
            })?;
    }
    fleet_shared::migrate::exec_simple(
        &mut tx,
        &format!(
            "COMMENT ON SCHEMA {} IS {}",
            s.quoted_schema(),
            quote_literal(&ownership_comment(m.move_id))
        ),
    )
    .await?;
    tx.commit().await?;
    tgt.close().await.ok();
    Ok(true)
}

/// psql meta-commands (`\restrict`, which newer `pg_dump`s emit) are not SQL.
fn strip_meta(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `CREATE PUBLICATION … FOR TABLES IN SCHEMA` and its logical replication slot, on the source.
pub async fn publish(s: &Sides, m: &MoveRow) -> anyhow::Result<()> {
    let name = m.replication_name();
    let has_pub: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
            .bind(&name)
            .fetch_one(&s.source_pg)
            .await?;
    if !has_pub {
        sqlx::raw_sql(&format!(
            "CREATE PUBLICATION {} FOR TABLES IN SCHEMA {}",
            super::super::catalog::quote_ident(&name),
            s.quoted_schema()
        ))
        .execute(&s.source_pg)
        .await
        .with_context(|| {
            format!(
                "Failed to create the publication on database {}",
                s.source.name
            )
        })?;
    }
    let has_slot: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
    )
    .bind(&name)
    .fetch_one(&s.source_pg)
    .await?;
    if !has_slot {
        // Waits for the transactions running on the source to end (a consistent start point).
        sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
            .bind(&name)
            .execute(&s.source_pg)
            .await
            .with_context(|| {
                format!(
                    "Failed to create the replication slot on database {}",
                    s.source.name
                )
            })?;
    }
    Ok(())
}

/// Session settings that keep a statement's text out of the server's log (`log_statement`, an
/// error's `STATEMENT:` line, slow-statement lines), out of `pg_stat_activity` and out of
/// `pg_stat_statements` (when loaded): the statement that carries the source's password.
/// Settings a server does not have are skipped (`pg_settings` lists the ones it has).
const QUIET: [(&str, &str); 6] = [
    ("log_statement", "none"),
    ("log_min_error_statement", "panic"),
    ("log_min_duration_statement", "-1"),
    ("log_min_duration_sample", "-1"),
    ("track_activities", "off"),
    ("pg_stat_statements.track_utility", "off"),
];

async fn quiet(con: &mut PgConnection) -> Result<(), sqlx::Error> {
    let (names, values): (Vec<&str>, Vec<&str>) = QUIET.iter().copied().unzip();
    sqlx::query(
        "SELECT set_config(w.name, w.value, false)
           FROM unnest($1::text[], $2::text[]) AS w(name, value) JOIN pg_settings p ON p.name = w.name",
    )
    .bind(names)
    .bind(values)
    .fetch_all(&mut *con)
    .await?;
    Ok(())
}

/// The subscription on the target (initial copy, then streaming); returns its oid.
pub async fn subscribe(s: &Sides, m: &MoveRow) -> anyhow::Result<i64> {
    let name = m.replication_name();
    if let Some(oid) = subscription_oid(s, &name).await? {
        return Ok(oid);
    }
    // `synchronous_commit = on`: each applied transaction is flushed when it commits, so the
    // subscription confirms the source's position at once instead of after the target's WAL
    // writer gets to it (which would add up to a few hundred milliseconds to the cut-over).
    // The subscription connects to the source with the URL the fleet uses for it: the target
    // server must be able to reach that address. The target keeps it in pg_subscription
    // (readable by superusers only); it is never printed, and the session that creates it keeps
    // the statement (password included) out of the target's log and statistics (QUIET).
    let sql = format!(
        "CREATE SUBSCRIPTION {q} CONNECTION {conn} PUBLICATION {q}
           WITH (create_slot = false, slot_name = {lit}, copy_data = true, enabled = true,
                 synchronous_commit = on)",
        q = super::super::catalog::quote_ident(&name),
        conn = quote_literal(s.source_url().expose_secret()),
        lit = quote_literal(&name),
    );
    // sqlx logs statements (at trace) and slow ones (at warn) with their text: not on this
    // connection, whose one statement carries the password.
    let opts = s
        .target
        .url
        .expose_secret()
        .parse::<sqlx::postgres::PgConnectOptions>()
        .with_context(|| format!("database {}: not a Postgres URL", s.target.name))?
        .log_statements(tracing::log::LevelFilter::Off)
        .log_slow_statements(tracing::log::LevelFilter::Off, Duration::MAX);
    let mut con = opts
        .connect()
        .await
        .with_context(|| format!("cannot connect to database {}", s.target.name))?;
    quiet(&mut con).await.with_context(|| {
        format!(
            "Failed to keep the subscription's connection string out of database {}'s log (the fleet must be a superuser there)",
            s.target.name
        )
    })?;
    let created = sqlx::raw_sql(&sql).execute(&mut con).await;
    con.close().await.ok();
    created.map_err(|e| {
        anyhow::anyhow!(
            "Failed to create the subscription on database {}: {}",
            s.target.name,
            fleet_shared::telemetry::redact(&e.to_string())
        )
    })?;
    subscription_oid(s, &name)
        .await?
        .context("the subscription vanished right after it was created")
}

async fn subscription_oid(s: &Sides, name: &str) -> anyhow::Result<Option<i64>> {
    sqlx::query_scalar("SELECT oid::bigint FROM pg_subscription WHERE subname = $1")
        .bind(name)
        .fetch_optional(&s.target_pg)
        .await
        .context("Failed to read pg_subscription")
}

/// Bytes of source WAL the subscription has not confirmed yet (`None`: no slot).
pub async fn lag_bytes(s: &Sides, slot: &str) -> anyhow::Result<Option<i64>> {
    let lag: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
           FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(&s.source_pg)
    .await
    .context("Failed to read the replication slot")?;
    Ok(lag.flatten())
}

/// Waits until every table is copied (`ready` in `pg_subscription_rel`) and the stream has
/// caught up, printing the copy's progress.
pub async fn wait_copied(s: &Sides, m: &MoveRow, oid: i64, report: Report) -> anyhow::Result<()> {
    let name = m.replication_name();
    let estimate: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(n_live_tup), 0)::bigint FROM pg_stat_user_tables WHERE schemaname = $1",
    )
    .bind(&s.schema)
    .fetch_one(&s.source_pg)
    .await?;
    let errors_at_start = sub_errors(s, oid).await?;
    let mut last_line = String::new();
    let mut printed = Instant::now() - PROGRESS_EVERY;
    loop {
        let (ready, total): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE srsubstate = 'r'), count(*) FROM pg_subscription_rel WHERE srsubid = $1::oid",
        )
        .bind(oid)
        .fetch_one(&s.target_pg)
        .await
        .context("Failed to read the subscription's tables")?;
        let copying: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(p.tuples_processed), 0)::bigint FROM pg_stat_progress_copy p
              WHERE p.datname = current_database()
                AND p.relid IN (SELECT srrelid FROM pg_subscription_rel WHERE srsubid = $1::oid)",
        )
        .bind(oid)
        .fetch_one(&s.target_pg)
        .await
        .unwrap_or(0);
        let lag = lag_bytes(s, &name).await?.with_context(|| {
            format!(
                "the move's replication slot {name} is gone from database {}; --abort and start again",
                s.source.name
            )
        })?;
        if ready == total && lag <= CAUGHT_UP_BYTES {
            report.line(
                "copied",
                &format!(
                    "initial copy done: {total} tables ready, streaming, lag {}",
                    bytes(lag)
                ),
                json!({"tables": total, "lag_bytes": lag}),
            )?;
            return Ok(());
        }
        let line = if ready < total {
            format!(
                "initial copy: {ready}/{total} tables ready, {copying} rows being copied (source has ~{estimate} rows)"
            )
        } else {
            format!("catching up: lag {}", bytes(lag))
        };
        if line != last_line || printed.elapsed() >= PROGRESS_EVERY {
            report.line(
                "copying",
                &line,
                json!({"tables_ready": ready, "tables": total, "rows_copying": copying,
                       "rows_estimate": estimate, "lag_bytes": lag}),
            )?;
            last_line = line;
            printed = Instant::now();
        }
        let errors = sub_errors(s, oid).await?;
        anyhow::ensure!(
            errors <= errors_at_start,
            "the subscription on database {} reported {} copy/apply error(s) (its server log says why); fix the cause and re-run, or --abort",
            s.target.name,
            errors - errors_at_start
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Copy and apply errors the subscription has counted.
async fn sub_errors(s: &Sides, oid: i64) -> anyhow::Result<i64> {
    let n: Option<i64> = sqlx::query_scalar(
        "SELECT (apply_error_count + sync_error_count)::bigint FROM pg_stat_subscription_stats WHERE subid = $1::oid",
    )
    .bind(oid)
    .fetch_optional(&s.target_pg)
    .await
    .context("Failed to read pg_stat_subscription_stats")?;
    Ok(n.unwrap_or(0))
}

/// Drops the subscription (on the target), every replication slot of the move (its own and the
/// table-sync slots of the subscription) and the publication (on the source). Each side is
/// cleaned on its own, and each part is skipped when already gone: with the target unreachable
/// the source's slots and publication are still dropped (a slot left behind keeps WAL on the
/// source server without limit), and the error says what is left on the target.
pub async fn teardown(s: &Sides, m: &MoveRow) -> anyhow::Result<()> {
    let name = m.replication_name();
    let on_target = drop_subscription(s, &name).await;
    let oid = match &on_target {
        Ok(oid) => oid.or(m.sub_oid),
        Err(_) => m.sub_oid,
    };
    let on_source = drop_slots_and_publication(s, m, oid).await;
    match (on_target, on_source) {
        (Ok(_), Ok(())) => Ok(()),
        (Err(t), Ok(())) => Err(t.context(format!(
            "the replication slots and publication of move {} on database {} are dropped, but subscription {name} is left on database {}",
            m.move_id, s.source.name, s.target.name
        ))),
        (Ok(_), Err(e)) => Err(e),
        (Err(t), Err(e)) => Err(e.context(format!(
            "subscription {name} is left on database {} too ({})",
            s.target.name,
            fleet_shared::errors::one_line(&format!("{t:#}"))
        ))),
    }
}

/// Drops the move's subscription on the target, if there; returns its oid.
async fn drop_subscription(s: &Sides, name: &str) -> anyhow::Result<Option<i64>> {
    let q = super::super::catalog::quote_ident(name);
    let oid = subscription_oid(s, name)
        .await
        .with_context(|| format!("cannot reach database {} (the target)", s.target.name))?;
    if oid.is_some() {
        // Detached from its slot first, so dropping it never needs the source.
        for sql in [
            format!("ALTER SUBSCRIPTION {q} DISABLE"),
            format!("ALTER SUBSCRIPTION {q} SET (slot_name = NONE)"),
            format!("DROP SUBSCRIPTION {q}"),
        ] {
            sqlx::raw_sql(&sql)
                .execute(&s.target_pg)
                .await
                .with_context(|| {
                    format!(
                        "Failed to drop the subscription on database {}",
                        s.target.name
                    )
                })?;
        }
    }
    Ok(oid)
}

/// Drops the move's replication slots and publication on the source.
async fn drop_slots_and_publication(
    s: &Sides,
    m: &MoveRow,
    oid: Option<i64>,
) -> anyhow::Result<()> {
    let name = m.replication_name();
    let q = super::super::catalog::quote_ident(&name);
    let sync_prefix = oid.map(|o| format!("pg_{o}_sync_"));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let slots: Vec<(String, Option<i32>)> = sqlx::query_as(
            "SELECT slot_name::text, active_pid FROM pg_replication_slots
              WHERE slot_name = $1 OR ($2::text IS NOT NULL AND starts_with(slot_name::text, $2))",
        )
        .bind(&name)
        .bind(&sync_prefix)
        .fetch_all(&s.source_pg)
        .await
        .context("Failed to read the replication slots")?;
        if slots.is_empty() {
            break;
        }
        for (slot, pid) in slots {
            match pid {
                // The subscription's sender has not noticed yet; after a while, end it.
                Some(_) if started.elapsed() < Duration::from_secs(3) => {}
                Some(pid) => {
                    sqlx::query("SELECT pg_terminate_backend($1)")
                        .bind(pid)
                        .execute(&s.source_pg)
                        .await?;
                }
                None => {
                    sqlx::query("SELECT pg_drop_replication_slot($1)")
                        .bind(&slot)
                        .execute(&s.source_pg)
                        .await
                        .or_else(|e| {
                            // Dropped by someone else meanwhile, or became active again.
                            if matches!(
                                fleet_shared::errors::sqlstate(&e).as_deref(),
                                Some("42704") | Some("55006")
                            ) {
                                Ok(Default::default())
                            } else {
                                Err(e)
                            }
                        })
                        .with_context(|| format!("Failed to drop replication slot {slot}"))?;
                }
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "replication slot(s) of move {} on database {} stay active; drop them with pg_drop_replication_slot",
            m.move_id,
            s.source.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::raw_sql(&format!("DROP PUBLICATION IF EXISTS {q}"))
        .execute(&s.source_pg)
        .await
        .with_context(|| {
            format!(
                "Failed to drop the publication on database {}",
                s.source.name
            )
        })?;
    Ok(())
}
