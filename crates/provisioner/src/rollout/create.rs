//! Creating a rollout: every check first, then one transaction that writes the rollout and one
//! row per selected tenant.
//!
//! Refused at start, with one line and nothing written: a bad flag, an unknown target version,
//! a rollback over a migration without a down file (named), a deployed file whose checksum
//! changed since the last rollout recorded it, unknown `--codes` or `--canary` codes, an unknown
//! plan, and a second rollout while one is running or paused (named). Creation is serialized by
//! an advisory lock and backed by a unique index, so two creators cannot both win.
//!
//! Tenants are split here, once, into the canary (wave 0) and the waves; each row carries the
//! tenant's own target (an undo sends each tenant back to the version it had), so the replicas
//! only ever claim rows. Tenants that are not `active` but would need moving are recorded as
//! `skipped` with the reason (suspended, deleted, provisioning, failed), as are tenants ahead of
//! the target; tenants already at the target are counted, not recorded.

use std::collections::{BTreeMap, BTreeSet};

use fleet_shared::migrate::{self, Migration};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::spec::{Canary, Direction, Parsed, RolloutRequest, Size};

/// Advisory-lock key serializing rollout creation, retry and resume.
const CREATE_LOCK: i64 = 0x726f_6c6c_6f75;

/// A transaction holding the rollout lock ([`CREATE_LOCK`]): creating and controlling rollouts
/// take it so that two of them never decide on the same tenants at once.
pub async fn locked_tx(
    pg: &PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, CreateError> {
    let mut tx = pg
        .begin()
        .await
        .map_err(CreateError::db("begin a transaction"))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CREATE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(CreateError::db("take the rollout lock"))?;
    Ok(tx)
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The request cannot run as given; nothing was written.
    #[error("{0}")]
    Refused(String),
    /// A request delivered again (same request key): its first delivery created this rollout.
    #[error("this request already created rollout {0}")]
    AlreadyCreated(Uuid),
    #[error("Failed to {what}: {source}")]
    Db {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

impl CreateError {
    pub fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> CreateError {
        move |source| CreateError::Db { what, source }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, CreateError::Db { source, .. } if fleet_shared::errors::is_transient(source))
    }
}

fn refused(msg: impl Into<String>) -> CreateError {
    CreateError::Refused(fleet_shared::errors::one_line(&msg.into()))
}

/// One tenant of a rollout as planned.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub tenant_id: Uuid,
    pub code: String,
    pub wave: i32,
    pub version_before: i64,
    pub target_version: i64,
    /// Versions that will run, in order (downs in reverse).
    pub versions: Vec<i64>,
    /// Why the tenant is not moved (then it is recorded as `skipped`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A checked rollout, written (or, for a dry run, only shown).
#[derive(Debug, Clone, Serialize)]
pub struct Prepared {
    pub rollout_id: Uuid,
    pub direction: Direction,
    pub target_version: i64,
    pub latest_version: i64,
    pub concurrency: u32,
    pub max_failures: i64,
    pub lock_timeout_ms: u64,
    /// Waves including the canary (wave 0).
    pub waves: i32,
    pub items: Vec<Item>,
    /// Selected tenants already at the target (not recorded).
    pub up_to_date: usize,
    pub set_digest: String,
    pub undo_of: Option<Uuid>,
    /// The state it starts in: `running`, or `succeeded` when nothing needs moving.
    pub state: String,
    /// The deployed files checked (name, checksum prefix).
    pub files: Vec<String>,
}

impl Prepared {
    pub fn pending(&self) -> usize {
        self.items.iter().filter(|i| i.skipped.is_none()).count()
    }
}

#[derive(Debug, Default, Clone)]
pub struct Options {
    pub dry_run: bool,
    /// Identifies the request (an event's message id): a repeat returns the first rollout.
    pub request_key: Option<String>,
    /// Plans `--plan` may name (`None`: not checked).
    pub known_plans: Option<Vec<String>>,
}

struct TenantRow {
    tenant_id: Uuid,
    code: String,
    status: String,
    schema_version: i64,
}
fleet_shared::from_row!(TenantRow {
    tenant_id,
    code,
    status,
    schema_version
});

/// Checks `req` against the deployed `set` and the registry and, unless a dry run, writes it.
pub async fn create(
    pg: &PgPool,
    set: &[Migration],
    req: &RolloutRequest,
    opts: &Options,
) -> Result<Prepared, CreateError> {
    let parsed = req.parse().map_err(refused)?;
    if let (Some(plan), Some(known)) = (&parsed.plan, &opts.known_plans) {
        if !known.contains(plan) {
            return Err(refused(format!(
                "--plan: unknown plan {plan:?} (known plans: {})",
                known.join(", ")
            )));
        }
    }
    let mut tx = locked_tx(pg).await?;
    if let Some(key) = &opts.request_key {
        let id: Option<Uuid> =
            sqlx::query_scalar("SELECT rollout_id FROM fleet.rollouts WHERE request_key = $1")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(CreateError::db("look up the request"))?;
        if let Some(id) = id {
            return Err(CreateError::AlreadyCreated(id));
        }
    }
    if !opts.dry_run {
        refuse_if_active(&mut tx).await?;
    }
    let id = Uuid::now_v7();
    let p = prepare(&mut tx, set, &parsed, id).await?;
    if opts.dry_run {
        tx.rollback()
            .await
            .map_err(CreateError::db("end the dry run"))?;
        return Ok(p);
    }
    insert(&mut tx, set, req, &p, opts.request_key.as_deref()).await?;
    tx.commit()
        .await
        .map_err(CreateError::db("commit the rollout"))?;
    Ok(p)
}

/// Refuses when a rollout is running or paused, naming it.
pub async fn refuse_if_active(con: &mut PgConnection) -> Result<(), CreateError> {
    let active: Option<(Uuid, String, String)> = sqlx::query_as(
        "SELECT rollout_id, state, date_trunc('second', created_at)::text
           FROM fleet.rollouts WHERE state IN ('running', 'paused')",
    )
    .fetch_optional(&mut *con)
    .await
    .map_err(CreateError::db("look for a running rollout"))?;
    if let Some((id, state, at)) = active {
        return Err(refused(format!(
            "rollout {id} is {state} (created {at}); wait for it to finish, or pause/cancel it first (fleetctl migrate show {id})"
        )));
    }
    Ok(())
}

async fn prepare(
    con: &mut PgConnection,
    set: &[Migration],
    parsed: &Parsed,
    rollout_id: Uuid,
) -> Result<Prepared, CreateError> {
    migrate::check_contiguous(set).map_err(|e| refused(e.to_string()))?;
    let latest = migrate::latest_version(set);
    let by_version: BTreeMap<i64, &Migration> = set.iter().map(|m| (m.version, m)).collect();
    check_recorded_files(con, set).await?;

    // (tenant, version before, target) for every candidate, and the rollout's direction.
    let mut candidates: Vec<(TenantRow, i64)> = Vec::new();
    let direction;
    let target;
    if let Some(undo) = parsed.undo {
        let orig: Option<(String, String)> =
            sqlx::query_as("SELECT direction, state FROM fleet.rollouts WHERE rollout_id = $1")
                .bind(undo)
                .fetch_optional(&mut *con)
                .await
                .map_err(CreateError::db("read the rollout to undo"))?;
        let Some((dir, state)) = orig else {
            return Err(refused(format!("no rollout {undo}")));
        };
        if state == "running" || state == "paused" {
            return Err(refused(format!(
                "rollout {undo} is {state}; cancel it before undoing it"
            )));
        }
        direction = if dir == "up" {
            Direction::Down
        } else {
            Direction::Up
        };
        let rows: Vec<(Uuid, String, String, i64, i64, i64)> = sqlx::query_as(
            "SELECT t.tenant_id, t.code, t.status, t.schema_version, rt.version_before,
                    rt.version_after
               FROM fleet.rollout_tenants rt JOIN fleet.tenants t USING (tenant_id)
              WHERE rt.rollout_id = $1 AND rt.state = 'done' ORDER BY t.code",
        )
        .bind(undo)
        .fetch_all(&mut *con)
        .await
        .map_err(CreateError::db("read the tenants the rollout moved"))?;
        target = rows.iter().map(|r| r.4).min().unwrap_or(0);
        for (tenant_id, code, status, version, before, after) in rows {
            let t = TenantRow {
                tenant_id,
                code,
                status: if version == after {
                    status
                } else {
                    format!(
                        "moved since (now at version {version}, the rollout left it at {after})"
                    )
                },
                schema_version: version,
            };
            candidates.push((t, before));
        }
    } else {
        direction = parsed.direction;
        target = match direction {
            Direction::Up => parsed.to.unwrap_or(latest),
            Direction::Down => parsed.to.unwrap_or(0),
        };
        let known = target == 0 || by_version.contains_key(&target);
        if !known || (direction == Direction::Up && target == 0) {
            return Err(refused(format!(
                "unknown target version {target}: the deployed set has versions {}..{latest}",
                set.first().map(|m| m.version).unwrap_or(0)
            )));
        }
        if direction == Direction::Down && target >= latest {
            return Err(refused(format!(
                "--to {target} is not below the deployed set's latest version {latest}: nothing to roll back"
            )));
        }
        let codes: Option<Vec<String>> = parsed
            .codes
            .as_ref()
            .map(|c| c.iter().map(|c| c.to_string()).collect());
        let rows: Vec<TenantRow> = sqlx::query_as(
            "SELECT tenant_id, code, status, schema_version FROM fleet.tenants
              WHERE ($1::text IS NULL OR plan = $1) AND ($2::text[] IS NULL OR code = ANY($2))
              ORDER BY code",
        )
        .bind(&parsed.plan)
        .bind(&codes)
        .fetch_all(&mut *con)
        .await
        .map_err(CreateError::db("read the tenant registry"))?;
        if let Some(codes) = &codes {
            let found: BTreeSet<&str> = rows.iter().map(|r| r.code.as_str()).collect();
            let missing: Vec<&str> = codes
                .iter()
                .map(String::as_str)
                .filter(|c| !found.contains(c))
                .collect();
            if !missing.is_empty() {
                return Err(refused(format!(
                    "--codes: no tenant with code {}",
                    missing.join(", ")
                )));
            }
        }
        candidates = rows.into_iter().map(|r| (r, target)).collect();
    }

    // Every down file above the target must ship (named if not), checked before any tenant:
    // a rollback is refused whole rather than stopping half-way at the first irreversible file.
    if direction == Direction::Down {
        let lowest = candidates.iter().map(|(_, to)| *to).min().unwrap_or(target);
        for m in set.iter().filter(|m| m.version > lowest) {
            if m.down.is_none() {
                return Err(refused(format!(
                    "cannot roll back to version {lowest}: {} has no down file {}",
                    m.file,
                    m.down_file()
                )));
            }
        }
    }

    let mut items = Vec::new();
    let mut up_to_date = 0;
    for (t, to) in candidates {
        let v = t.schema_version;
        let needs = match direction {
            Direction::Up => v < to,
            Direction::Down => v > to,
        };
        let skipped = if direction == Direction::Up && v > to {
            Some(if v > latest {
                format!("ahead of the deployed set (version {v}, set ends at {latest})")
            } else {
                format!("ahead of the target (version {v})")
            })
        } else if !needs {
            up_to_date += 1;
            continue;
        } else if t.status != "active" {
            Some(if t.status.starts_with("moved since") {
                t.status.clone()
            } else {
                format!("tenant is {}", t.status)
            })
        } else if v > latest {
            Some(format!(
                "at version {v}, which the deployed set (ending at {latest}) cannot roll back"
            ))
        } else {
            None
        };
        let versions = if skipped.is_some() {
            Vec::new()
        } else if direction == Direction::Up {
            set.iter()
                .map(|m| m.version)
                .filter(|x| *x > v && *x <= to)
                .collect()
        } else {
            set.iter()
                .rev()
                .map(|m| m.version)
                .filter(|x| *x <= v && *x > to)
                .collect()
        };
        items.push(Item {
            tenant_id: t.tenant_id,
            code: t.code,
            wave: 0,
            version_before: v,
            target_version: to,
            versions,
            skipped,
        });
    }

    let waves = assign_waves(&mut items, &parsed.canary, &parsed.waves)?;
    let pending = items.iter().filter(|i| i.skipped.is_none()).count();
    let max_failures = match parsed.max_failures {
        Size::Count(n) => n as i64,
        // A share of the tenants moved, rounded down: 2% of 10 tolerates none.
        Size::Percent(p) => (p / 100.0 * pending as f64).floor() as i64,
    };
    let state = if pending == 0 { "succeeded" } else { "running" };
    Ok(Prepared {
        rollout_id,
        direction,
        target_version: target,
        latest_version: latest,
        concurrency: parsed.concurrency,
        max_failures,
        lock_timeout_ms: parsed.lock_timeout.as_millis() as u64,
        waves,
        items,
        up_to_date,
        set_digest: migrate::set_digest(set, latest),
        undo_of: parsed.undo,
        state: state.into(),
        files: set
            .iter()
            .map(|m| {
                let down = if m.down.is_some() { " (+down)" } else { "" };
                format!("{} {}{down}", m.file, &m.checksum[..12])
            })
            .collect(),
    })
}

/// Canary (wave 0) first, then the waves' cumulative boundaries over the rest, in code order.
/// Empty waves are dropped; returns the number of waves including the canary.
fn assign_waves(items: &mut [Item], canary: &Canary, waves: &[Size]) -> Result<i32, CreateError> {
    let mut in_canary = vec![false; items.len()];
    match canary {
        Canary::Count(n) => {
            let mut left = *n;
            for (i, item) in items.iter().enumerate() {
                if left == 0 {
                    break;
                }
                if item.skipped.is_none() {
                    in_canary[i] = true;
                    left -= 1;
                }
            }
        }
        Canary::Codes(codes) => {
            for c in codes {
                let pos = items
                    .iter()
                    .position(|i| i.code == c.as_str() && i.skipped.is_none())
                    .ok_or_else(|| {
                        refused(format!(
                            "--canary: {c} is not among the tenants this rollout moves"
                        ))
                    })?;
                in_canary[pos] = true;
            }
        }
    }
    let rest: Vec<usize> = (0..items.len())
        .filter(|i| !in_canary[*i] && items[*i].skipped.is_none())
        .collect();
    let mut bounds = Vec::with_capacity(waves.len());
    let mut prev = 0;
    for w in waves {
        prev = w.of(rest.len()).max(prev);
        bounds.push(prev);
    }
    let mut wave_of = vec![0i32; items.len()];
    for (j, &i) in rest.iter().enumerate() {
        wave_of[i] = 1 + bounds
            .iter()
            .position(|b| j < *b)
            .unwrap_or(bounds.len() - 1) as i32;
    }
    // Renumber without empty waves.
    let used: BTreeSet<i32> = rest.iter().map(|&i| wave_of[i]).collect();
    let renumber: BTreeMap<i32, i32> = used
        .iter()
        .enumerate()
        .map(|(n, w)| (*w, n as i32 + 1))
        .collect();
    for (i, item) in items.iter_mut().enumerate() {
        item.wave = if in_canary[i] || item.skipped.is_some() {
            0
        } else {
            renumber[&wave_of[i]]
        };
    }
    Ok(1 + used.len() as i32)
}

/// Refuses a deployed file whose checksum differs from the one the last rollout recorded.
async fn check_recorded_files(
    con: &mut PgConnection,
    set: &[Migration],
) -> Result<(), CreateError> {
    let recorded: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT version, file, checksum FROM fleet.tenant_migration_files")
            .fetch_all(&mut *con)
            .await
            .map_err(CreateError::db("read the recorded migration files"))?;
    for (version, file, sum) in recorded {
        if let Some(m) = set.iter().find(|m| m.version == version) {
            if m.checksum != sum {
                return Err(refused(format!(
                    "migration {} changed its checksum since a rollout applied it as {file} ({} then, {} now); restore the file or add a new migration",
                    m.file,
                    &sum[..12.min(sum.len())],
                    &m.checksum[..12]
                )));
            }
        }
    }
    Ok(())
}

async fn insert(
    con: &mut PgConnection,
    set: &[Migration],
    req: &RolloutRequest,
    p: &Prepared,
    request_key: Option<&str>,
) -> Result<(), CreateError> {
    let spec = serde_json::to_value(req).unwrap_or_default();
    let res = sqlx::query(
        "INSERT INTO fleet.rollouts (rollout_id, direction, target_version, state, spec, concurrency,
                max_failures, lock_timeout_ms, waves, set_digest, undo_of, request_key, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                 CASE WHEN $4 = 'succeeded' THEN now() END)",
    )
    .bind(p.rollout_id)
    .bind(p.direction.as_str())
    .bind(p.target_version)
    .bind(&p.state)
    .bind(&spec)
    .bind(p.concurrency as i32)
    .bind(p.max_failures)
    .bind(p.lock_timeout_ms as i64)
    .bind(p.waves)
    .bind(&p.set_digest)
    .bind(p.undo_of)
    .bind(request_key)
    .execute(&mut *con)
    .await;
    if let Err(e) = res {
        if fleet_shared::errors::sqlstate(&e).as_deref() == Some("23505") {
            refuse_if_active(con).await?;
        }
        return Err(CreateError::db("insert the rollout")(e));
    }
    let n = p.items.len();
    let mut ids = Vec::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    let mut waves = Vec::with_capacity(n);
    let mut targets = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut befores = Vec::with_capacity(n);
    let mut errors: Vec<Option<String>> = Vec::with_capacity(n);
    for i in &p.items {
        ids.push(i.tenant_id);
        codes.push(i.code.clone());
        waves.push(i.wave);
        targets.push(i.target_version);
        states.push(
            if i.skipped.is_some() {
                "skipped"
            } else {
                "pending"
            }
            .to_owned(),
        );
        befores.push(i.version_before);
        errors.push(i.skipped.clone());
    }
    sqlx::query(
        "INSERT INTO fleet.rollout_tenants
                (rollout_id, tenant_id, code, wave, target_version, state, version_before, error,
                 finished_at)
         SELECT $1, t.id, t.code, t.wave, t.target, t.state, t.before, t.error,
                CASE WHEN t.state = 'skipped' THEN now() END
           FROM UNNEST($2::uuid[], $3::text[], $4::int[], $5::bigint[], $6::text[], $7::bigint[],
                       $8::text[]) AS t(id, code, wave, target, state, before, error)",
    )
    .bind(p.rollout_id)
    .bind(&ids)
    .bind(&codes)
    .bind(&waves)
    .bind(&targets)
    .bind(&states)
    .bind(&befores)
    .bind(&errors)
    .execute(&mut *con)
    .await
    .map_err(CreateError::db("insert the rollout's tenants"))?;
    let versions: Vec<i64> = set.iter().map(|m| m.version).collect();
    let files: Vec<String> = set.iter().map(|m| m.file.clone()).collect();
    let sums: Vec<String> = set.iter().map(|m| m.checksum.clone()).collect();
    sqlx::query(
        "INSERT INTO fleet.tenant_migration_files (version, file, checksum)
         SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[])
         ON CONFLICT (version) DO UPDATE SET file = EXCLUDED.file, checksum = EXCLUDED.checksum,
                recorded_at = now()",
    )
    .bind(&versions)
    .bind(&files)
    .bind(&sums)
    .execute(&mut *con)
    .await
    .map_err(CreateError::db("record the deployed migration files"))?;
    Ok(())
}
