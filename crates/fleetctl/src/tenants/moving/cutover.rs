//! The cut-over: the short moment in which the tenant's writes wait while the target becomes
//! the one copy, then the announcements and the archive of the old copy.
//!
//! One attempt, on a connection of its own to the source (`T`) and one to the control plane
//! (`C`):
//!
//! 1. `T`: `LOCK TABLE … IN EXCLUSIVE MODE` on every table of the schema, and
//!    `ALTER SEQUENCE … INCREMENT BY <its own increment>` on every sequence (a no-op change
//!    whose lock blocks `nextval` until `T` ends), the whole acquisition capped by
//!    `statement_timeout` (not only each lock wait by `lock_timeout`): reads go on, writes and
//!    new ids queue behind the locks, and writes already in flight have committed;
//! 2. the source's WAL insert position then covers every committed write; wait until the
//!    subscription confirmed it (`confirmed_flush_lsn` of the move's slot): lag 0;
//! 3. count the rows of every table on both copies at the same time (the source cannot change
//!    now) and refuse to switch unless they are equal;
//! 4. set the target's sequences past the source's values (logical replication does not carry
//!    sequences): `last_value + increment × (max(cache, 1) + SEQUENCE_GAP)`, so no id handed out
//!    on the source, cached by a session there included, is handed out again on the target;
//! 5. `T`: the guard (a trigger on every table that raises `25006 read_only_sql_transaction`,
//!    "tenant … has moved to database …"), so a late write to the old copy fails loudly instead
//!    of being lost;
//! 6. `C`, under the tenant's advisory lock: the registry names the target, the move records
//!    `switched` (only if it is still running at step `cutover`: an `--abort` that got in first
//!    wins) and an audit row is written; the run checks that its driver lock is still held; then
//!    `T` commits (the queued writes now fail on the guard) and `C` commits.
//!
//! Any failure before the commits rolls both back: the source is writable again and nothing
//! changed (a lock or lag timeout is retried, a count mismatch stops the move). A crash between
//! the two commits leaves the source read-only with the registry still naming it: the tenant is
//! served from that one database (reads only) until a re-run repeats the cut-over (every part of
//! it is idempotent) or `--abort` lifts the guard. The registry is the single switch, so there is
//! never a moment in which two copies take writes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_shared::events::{TenantMoved, TenantMoving, TENANT_MOVED, TENANT_MOVING};
use fleet_shared::secret::ExposeSecret as _;
use serde_json::json;
use sqlx::{Connection as _, PgConnection, PgPool};

use super::super::catalog::quote_ident;
use super::driver::Driver;
use super::record::{MoveRow, Step};
use super::sides::{quote_literal, tables, Sides};

/// The guard function (in the tenant's schema on the source) and its triggers.
pub const GUARD: &str = "fleet_moved_guard";
const GUARD_TRUNCATE: &str = "fleet_moved_guard_truncate";
/// How long the freeze waits for the tenant's in-flight writes before giving up (and retrying):
/// for each lock (`lock_timeout`) and for all of them together (`statement_timeout`).
const FREEZE_LOCK_TIMEOUT: &str = "2s";
/// Ids (in units of a sequence's increment, on top of its cache) the target's sequences skip
/// past the source's: a gap is harmless, an id handed out twice is not.
pub const SEQUENCE_GAP: i64 = 1000;

/// Why an attempt gave up in a way a later attempt can get past.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Retry(pub String);

/// What a committed cut-over measured.
#[derive(Debug, Clone)]
pub struct Cutover {
    pub took: Duration,
    pub counts: BTreeMap<String, i64>,
    pub sequences: usize,
    pub lsn: String,
}

/// `DROP FUNCTION … CASCADE` of the guard drops its triggers too.
pub fn lift_guard_sql(s: &Sides) -> String {
    format!(
        "DROP FUNCTION IF EXISTS {}.{}() CASCADE",
        s.quoted_schema(),
        quote_ident(GUARD)
    )
}

fn guard_sql(s: &Sides, tables: &[String]) -> String {
    let f = format!("{}.{}", s.quoted_schema(), quote_ident(GUARD));
    let args = format!(
        "{}, {}",
        quote_literal(s.code.as_str()),
        quote_literal(s.target.name.as_str())
    );
    let mut sql = format!(
        "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $fleet$
         BEGIN
           RAISE EXCEPTION 'tenant % has moved to database %; write there (fleet.tenants.database names it)',
             TG_ARGV[0], TG_ARGV[1] USING ERRCODE = 'read_only_sql_transaction';
         END $fleet$;\n"
    );
    for t in tables {
        let table = s.table(t);
        sql.push_str(&format!(
            "CREATE OR REPLACE TRIGGER {g} BEFORE INSERT OR UPDATE OR DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION {f}({args});
             CREATE OR REPLACE TRIGGER {gt} BEFORE TRUNCATE ON {table} FOR EACH STATEMENT EXECUTE FUNCTION {f}({args});\n",
            g = quote_ident(GUARD),
            gt = quote_ident(GUARD_TRUNCATE),
        ));
    }
    sql
}

/// Whether the guard is on the source (a crash came between the two commits of a cut-over).
pub async fn guarded(s: &Sides) -> anyhow::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                         WHERE n.nspname = $1 AND p.proname = $2)",
    )
    .bind(&s.schema)
    .bind(GUARD)
    .fetch_one(&s.source_pg)
    .await
    .context("Failed to look for the move's guard")
}

/// Publishes `tenant.moving` (message id `tenant.moving:<move_id>`, so a repeat is one message).
pub async fn announce_moving(
    js: &async_nats::jetstream::Context,
    s: &Sides,
    m: &MoveRow,
) -> anyhow::Result<()> {
    let body = TenantMoving {
        tenant_id: m.tenant_id,
        code: s.code.clone(),
        from: m.source.clone(),
        to: m.target.clone(),
        move_id: m.move_id,
    };
    let id = format!("{TENANT_MOVING}:{}", m.move_id);
    fleet_shared::publish::publish_json(js, TENANT_MOVING, &id, &body, None).await?;
    Ok(())
}

/// Publishes `tenant.moved` (message id `tenant.moved:<move_id>`).
pub async fn announce_moved(
    js: &async_nats::jetstream::Context,
    s: &Sides,
    m: &MoveRow,
) -> anyhow::Result<()> {
    let body = TenantMoved {
        tenant_id: m.tenant_id,
        code: s.code.clone(),
        database: m.target.clone(),
        schema: s.schema.clone(),
        from: m.source.clone(),
        move_id: m.move_id,
    };
    let id = format!("{TENANT_MOVED}:{}", m.move_id);
    fleet_shared::publish::publish_json(js, TENANT_MOVED, &id, &body, None).await?;
    Ok(())
}

async fn count_rows(
    con: &mut PgConnection,
    s: &Sides,
    tables: &[String],
) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let mut out = BTreeMap::new();
    for t in tables {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", s.table(t)))
            .fetch_one(&mut *con)
            .await?;
        out.insert(t.clone(), n);
    }
    Ok(out)
}

async fn count_on(
    pg: &PgPool,
    s: &Sides,
    tables: &[String],
) -> anyhow::Result<BTreeMap<String, i64>> {
    let mut con = pg.acquire().await?;
    Ok(count_rows(&mut con, s, tables).await?)
}

/// Waits until the move's slot has confirmed `lsn`.
async fn wait_flushed(s: &Sides, slot: &str, lsn: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let done: Option<bool> = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn >= $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .bind(lsn)
        .fetch_optional(&s.source_pg)
        .await?
        .flatten();
        match done {
            Some(true) => return Ok(()),
            None => anyhow::bail!("the move's replication slot {slot} is gone from database {}", s.source.name),
            Some(false) if Instant::now() >= deadline => {
                return Err(Retry(format!(
                    "the subscription did not confirm the source's position {lsn} within {} (is it running on database {}?)",
                    fleet_shared::duration::format(limit),
                    s.target.name
                ))
                .into())
            }
            Some(false) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// A sequence of the tenant's schema as the freeze read it.
struct Sequence {
    name: String,
    increment: i64,
    cache: i64,
    min: i64,
    max: i64,
    last: Option<i64>,
}
fleet_shared::from_row!(Sequence {
    name,
    increment,
    cache,
    min,
    max,
    last
});

impl Sequence {
    /// The value the target's sequence is set to (as if handed out), past every value the
    /// source has handed out or cached, within the sequence's bounds.
    fn target_value(&self) -> Option<i64> {
        let last = self.last?;
        let step = self
            .increment
            .checked_mul(self.cache.max(1).saturating_add(SEQUENCE_GAP))?;
        Some(last.saturating_add(step).clamp(self.min, self.max))
    }
}

/// The freeze of `T`: every table locked and every sequence's `nextval` blocked, all within
/// `FREEZE_LOCK_TIMEOUT`. Returns the source's WAL position once the tables are locked (it
/// covers every committed write; it is read before the sequences are altered, because `T`'s
/// own WAL is not flushed, so never streamed, until `T` commits), then the sequences as they
/// are final.
async fn freeze(
    t: &mut PgConnection,
    s: &Sides,
    tables: &[String],
) -> anyhow::Result<(String, Vec<Sequence>)> {
    sqlx::raw_sql(&format!(
        "SET LOCAL lock_timeout = '{FREEZE_LOCK_TIMEOUT}'; SET LOCAL statement_timeout = '{FREEZE_LOCK_TIMEOUT}'"
    ))
    .execute(&mut *t)
    .await?;
    let names: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sequencename::text, increment_by FROM pg_sequences WHERE schemaname = $1 ORDER BY 1",
    )
    .bind(&s.schema)
    .fetch_all(&mut *t)
    .await?;
    if !tables.is_empty() {
        let list: Vec<String> = tables.iter().map(|x| s.table(x)).collect();
        locking(
            sqlx::raw_sql(&format!("LOCK TABLE {} IN EXCLUSIVE MODE", list.join(", ")))
                .execute(&mut *t)
                .await,
        )?;
    }
    let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut *t)
        .await?;
    let alter: String = names
        .iter()
        .map(|(seq, increment)| {
            format!("ALTER SEQUENCE {} INCREMENT BY {increment};", s.table(seq))
        })
        .collect();
    if !alter.is_empty() {
        locking(sqlx::raw_sql(&alter).execute(&mut *t).await)?;
    }
    sqlx::raw_sql("SET LOCAL statement_timeout = 0")
        .execute(&mut *t)
        .await?;
    let sequences = sqlx::query_as(
        "SELECT sequencename::text AS name, increment_by AS increment, cache_size AS cache,
                min_value AS min, max_value AS max, last_value AS last
           FROM pg_sequences WHERE schemaname = $1 ORDER BY 1",
    )
    .bind(&s.schema)
    .fetch_all(&mut *t)
    .await?;
    Ok((lsn, sequences))
}

/// A lock or timeout error of the freeze becomes [`Retry`]: 55P03 (`lock_timeout`), 57014
/// (`statement_timeout`), 40P01 (a deadlock with a writer that held a sequence and waited for a
/// table).
fn locking<T>(res: Result<T, sqlx::Error>) -> anyhow::Result<T> {
    match res {
        Ok(v) => Ok(v),
        Err(e)
            if matches!(
                fleet_shared::errors::sqlstate(&e).as_deref(),
                Some("55P03") | Some("57014") | Some("40P01")
            ) =>
        {
            Err(Retry(format!(
                "the tenant's writes held its tables or sequences longer than {FREEZE_LOCK_TIMEOUT}"
            ))
            .into())
        }
        Err(e) => Err(anyhow::Error::new(e).context("Failed to freeze the source's tables")),
    }
}

/// One attempt at the cut-over (see the module docs).
pub async fn freeze_and_switch(
    control: &PgPool,
    driver: &mut Driver,
    s: &Sides,
    m: &MoveRow,
    actor: &str,
    lag_limit: Duration,
) -> anyhow::Result<Cutover> {
    let tables = tables(&s.source_pg, &s.schema).await?;
    let mut src = PgConnection::connect(s.source_url().expose_secret())
        .await
        .with_context(|| format!("cannot connect to database {}", s.source.name))?;
    let started = Instant::now();
    let mut t = src.begin().await?;
    let (lsn, sequences) = freeze(&mut t, s, &tables).await?;
    wait_flushed(s, &m.replication_name(), &lsn, lag_limit).await?;

    // Both sides at once: counting is most of the frozen time on a big tenant.
    let (source_counts, target_counts) = tokio::join!(
        count_rows(&mut t, s, &tables),
        count_on(&s.target_pg, s, &tables)
    );
    let (source_counts, mut target_counts) = (source_counts?, target_counts?);
    // The target has applied everything up to lsn; a difference would mean a lost change.
    for _ in 0..10 {
        if target_counts == source_counts {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        target_counts = count_on(&s.target_pg, s, &tables).await?;
    }
    if target_counts != source_counts {
        let diff: Vec<String> = source_counts
            .iter()
            .filter(|(k, v)| target_counts.get(*k) != Some(v))
            .map(|(k, v)| {
                format!(
                    "{k}: {v} on {}, {} on {}",
                    s.source.name,
                    target_counts.get(k).copied().unwrap_or(0),
                    s.target.name
                )
            })
            .collect();
        anyhow::bail!(
            "row counts differ after the subscription caught up ({}); the registry was not switched and the source is writable again: investigate, then re-run or --abort",
            diff.join("; ")
        );
    }

    for seq in &sequences {
        let Some(value) = seq.target_value() else {
            continue;
        };
        // Only ever forward: a re-run after a crash finds the target set already.
        sqlx::query("SELECT setval($1::regclass, $2, true) FROM pg_sequences WHERE schemaname = $3 AND sequencename = $4 AND (last_value IS NULL OR last_value < $2)")
            .bind(s.table(&seq.name))
            .bind(value)
            .bind(&s.schema)
            .bind(&seq.name)
            .execute(&s.target_pg)
            .await
            .with_context(|| {
                format!(
                    "Failed to move sequence {} on database {}",
                    seq.name, s.target.name
                )
            })?;
    }

    sqlx::raw_sql(&guard_sql(s, &tables))
        .execute(&mut *t)
        .await
        .context("Failed to make the source copy read-only")?;

    let mut c = control.begin().await?;
    sqlx::raw_sql("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *c)
        .await?;
    provisioner::tenant_lock::lock_tenant(&mut c, s.code.as_str()).await?;
    let tenant: provisioner::lifecycle::Tenant = sqlx::query_as(
        "SELECT tenant_id, code, name, plan, org_code, status, schema_name, database, own_database
           FROM fleet.tenants WHERE tenant_id = $1 FOR UPDATE",
    )
    .bind(m.tenant_id)
    .fetch_optional(&mut *c)
    .await?
    .with_context(|| format!("tenant {} is no longer registered", s.code))?;
    anyhow::ensure!(
        tenant.status != "deleted" && tenant.database == m.source,
        "tenant {} is {} on database {}, not live on {}: the move cannot switch it",
        s.code,
        tenant.status,
        tenant.database,
        m.source
    );
    sqlx::query("UPDATE fleet.tenants SET database = $2, updated_at = now() WHERE tenant_id = $1")
        .bind(m.tenant_id)
        .bind(&m.target)
        .execute(&mut *c)
        .await?;
    let took = started.elapsed();
    let switched = sqlx::query(
        "UPDATE fleet.tenant_moves
            SET step = $2, switched_at = now(), step_at = now(), row_counts = $3, cutover_ms = $4, last_error = NULL
          WHERE move_id = $1 AND state = 'running' AND step = $5",
    )
    .bind(m.move_id)
    .bind(Step::Switched.as_str())
    .bind(json!(source_counts))
    .bind(took.as_millis() as i64)
    .bind(Step::Cutover.as_str())
    .execute(&mut *c)
    .await?;
    anyhow::ensure!(
        switched.rows_affected() == 1,
        "move {} is no longer running at step cutover (an --abort or another run got to it first); nothing was switched and the source is writable again",
        m.move_id
    );
    let cause = provisioner::lifecycle::Cause::direct("fleetctl.tenants.move", actor);
    let after = provisioner::lifecycle::Tenant {
        database: m.target.clone(),
        ..tenant
    };
    provisioner::lifecycle::audit::record(
        &mut c,
        &cause,
        &after,
        json!({"database": m.source}),
        json!({"database": m.target, "move_id": m.move_id, "rows": source_counts}),
    )
    .await?;
    driver.check().await?;
    t.commit()
        .await
        .context("Failed to commit the freeze of the source (nothing was switched)")?;
    c.commit().await.context(
        "the source copy is read-only but the registry switch did not commit: re-run the move to finish the cut-over, or --abort to lift the guard",
    )?;
    src.close().await.ok();
    Ok(Cutover {
        took: started.elapsed(),
        counts: source_counts,
        sequences: sequences.len(),
        lsn,
    })
}

/// The name the old copy is archived under: `moved_<code>_<16 hex of move_id>`, a namespace of
/// its own, so that it never takes the name a lifecycle archive of the tenant on that database
/// would get (a later `tenant.deleted` there would be refused), and a move back and forth
/// leaves one archive per move.
pub fn archive_name(s: &Sides, m: &MoveRow) -> String {
    if let Some(n) = &m.archive_name {
        return n.clone();
    }
    let short: String = s.code.as_str().chars().take(30).collect();
    format!("moved_{short}_{}", &m.move_id.simple().to_string()[..16])
}

/// Renames the old copy (still guarded, so it stays read-only) to `name`; idempotent.
pub async fn archive(s: &Sides, name: &str) -> anyhow::Result<()> {
    if !super::sides::schema_exists(&s.source_pg, &s.schema).await? {
        anyhow::ensure!(
            super::sides::schema_exists(&s.source_pg, name).await?,
            "neither {} nor {name} exists on database {}",
            s.schema,
            s.source.name
        );
        return Ok(());
    }
    let mut con = s.source_pg.acquire().await?;
    let mut tx = con.begin().await?;
    sqlx::raw_sql("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::raw_sql(&format!(
        "ALTER SCHEMA {} RENAME TO {}",
        s.quoted_schema(),
        quote_ident(name)
    ))
    .execute(&mut *tx)
    .await
    .with_context(|| {
        format!(
            "Failed to archive the old copy on database {}",
            s.source.name
        )
    })?;
    tx.commit().await?;
    Ok(())
}

/// Whether a step's error is worth another attempt.
pub fn is_retry(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Retry>())
        || e.chain().any(|c| {
            c.downcast_ref::<sqlx::Error>().is_some_and(|e| {
                // 55P03: lock_timeout (the control plane's tenant lock was busy).
                fleet_shared::errors::is_transient(e)
                    || fleet_shared::errors::sqlstate(e).as_deref() == Some("55P03")
            })
        })
}
