//! Tenant lifecycle after creation: `tenant.updated`, `tenant.config.set` / `.unset`,
//! `tenant.suspended` / `.resumed` and `tenant.deleted`, plus the direct operator actions
//! (purging archived tenants, re-encrypting configs under the newest key).
//!
//! Every change is **one transaction under the tenant's advisory lock** (the lock provisioning
//! takes), with `lock_timeout` so a change never queues behind application traffic (a lock
//! timeout is retried). In the same transaction it writes its audit row (`fleet.tenant_events`:
//! actor, event id, old → new with secrets masked) and its record in `fleet.processed_events`
//! keyed by the message id. So:
//! - a redelivery finds the record, changes nothing and only re-announces the committed change
//!   (the announcement's message id is derived from the audit row, so JetStream keeps one);
//! - a refused change (unknown code, a transition that is not allowed, an unknown plan, a bad
//!   key, an encrypted value without keys) rolls back everything and is dead-lettered with one
//!   line;
//! - the announcement `tenant.lifecycle.<kind>` is published only after the commit.
//!
//! Codes are unique among tenants that are not `deleted`, so every event addresses the live
//! tenant of its code; a deleted tenant is reached only by `tenant.deleted` with its
//! `tenant_id` (to purge an archive).

pub mod announce;
pub mod audit;
pub mod config;
pub mod delete;
pub mod error;
pub mod purge;
pub mod receive;
pub mod request;
pub mod rotate;
pub mod status;
pub mod update;

use fleet_shared::events::FLEET_ACTOR;
use fleet_shared::Incoming;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

pub use audit::AuditRow;
pub use error::LifecycleError;

/// How long a lifecycle transaction waits for a lock before giving up (and being retried).
pub const LOCK_TIMEOUT: &str = "5s";

/// Who asked for a change and under which id: what the audit row records.
#[derive(Debug, Clone)]
pub struct Cause {
    /// The subject of the event (or the operator action, e.g. `fleetctl.tenants.purge`).
    pub event: String,
    /// The message id (`Nats-Msg-Id`), `seq:<stream sequence>` when the publisher set none, or a
    /// fresh id for a direct action.
    pub event_id: String,
    /// The `Fleet-Actor` header, or `unknown`.
    pub actor: String,
}

impl Cause {
    pub fn from_msg(msg: &Incoming) -> Cause {
        Cause {
            event: msg.subject.clone(),
            event_id: msg
                .msg_id()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("seq:{}", msg.stream_seq)),
            actor: msg
                .header(FLEET_ACTOR)
                .map(clean_actor)
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    /// A direct operator action (not an event).
    pub fn direct(action: &str, actor: &str) -> Cause {
        Cause {
            event: action.into(),
            event_id: format!("{action}:{}", Uuid::now_v7()),
            actor: clean_actor(actor),
        }
    }
}

fn clean_actor(s: &str) -> String {
    let one = fleet_shared::errors::one_line(s);
    one.chars().take(200).collect()
}

/// The registry row as lifecycle changes read it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub tenant_id: Uuid,
    pub code: String,
    pub name: String,
    pub plan: String,
    pub org_code: Option<String>,
    pub status: String,
    pub schema_name: String,
    /// The database holding the schema (see [`crate::placement`]).
    pub database: String,
    /// The tenant's own database on `database`'s server (`isolation = "database"`, see
    /// [`crate::own_db`]), if any.
    pub own_database: Option<String>,
}
fleet_shared::from_row!(Tenant {
    tenant_id,
    code,
    name,
    plan,
    org_code,
    status,
    schema_name,
    database,
    own_database
});

pub(crate) const TENANT_COLUMNS: &str =
    "tenant_id, code, name, plan, org_code, status, schema_name, database, own_database";

/// What a lifecycle event did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Committed now; announce it.
    Done(AuditRow),
    /// Committed by an earlier delivery of the same message; re-announce it (if its audit row
    /// still exists).
    Repeat(Option<AuditRow>),
}

impl Outcome {
    pub fn audit(&self) -> Option<&AuditRow> {
        match self {
            Outcome::Done(a) => Some(a),
            Outcome::Repeat(a) => a.as_ref(),
        }
    }
}

/// An open lifecycle transaction: lock taken, not a repeat.
pub enum Begun {
    Fresh(Transaction<'static, Postgres>),
    Repeat(Option<AuditRow>),
}

/// Begins the transaction of one change to `code`: `lock_timeout`, the tenant lock, and the
/// check whether this message was already applied.
pub async fn begin(pg: &PgPool, code: &str, cause: &Cause) -> Result<Begun, LifecycleError> {
    let mut tx = pg
        .begin()
        .await
        .map_err(LifecycleError::db("begin a transaction"))?;
    sqlx::query(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .execute(&mut *tx)
        .await
        .map_err(LifecycleError::db("set lock_timeout"))?;
    crate::tenant_lock::lock_tenant(&mut tx, code).await?;
    let seen: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM fleet.processed_events WHERE consumer = $1 AND event_key = $2)",
    )
    .bind(crate::NAME)
    .bind(&cause.event_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(LifecycleError::db("read the processed events"))?;
    if seen {
        let audit = audit::by_event_id(&mut tx, &cause.event_id).await?;
        tx.rollback()
            .await
            .map_err(LifecycleError::db("end a read-only transaction"))?;
        return Ok(Begun::Repeat(audit));
    }
    Ok(Begun::Fresh(tx))
}

/// The live (not deleted) tenant with `code`, locked for the transaction.
pub async fn live_tenant(
    con: &mut PgConnection,
    event: &str,
    code: &str,
) -> Result<Tenant, LifecycleError> {
    sqlx::query_as(&format!(
        "SELECT {TENANT_COLUMNS} FROM fleet.tenants WHERE code = $1 AND status <> 'deleted' FOR UPDATE"
    ))
    .bind(code)
    .fetch_optional(&mut *con)
    .await
    .map_err(LifecycleError::db("read the tenant registry"))?
    .ok_or_else(|| LifecycleError::UnknownTenant {
        event: event.into(),
        code: code.into(),
    })
}

/// Refuses unless the tenant's status is one of `allowed`.
pub fn require_status(
    event: &str,
    t: &Tenant,
    allowed: &[&str],
    doing: &str,
) -> Result<(), LifecycleError> {
    if allowed.contains(&t.status.as_str()) {
        Ok(())
    } else {
        Err(LifecycleError::NotAllowed(format!(
            "{event}: tenant {} is {}; only a tenant that is {} can be {doing}",
            t.code,
            t.status,
            allowed.join(" or ")
        )))
    }
}

/// Commits `tx` after recording the change: the audit row and the processed-event record.
pub async fn finish(
    mut tx: Transaction<'static, Postgres>,
    cause: &Cause,
    after: &Tenant,
    old: serde_json::Value,
    new: serde_json::Value,
) -> Result<AuditRow, LifecycleError> {
    let row = audit::record(&mut tx, cause, after, old, new).await?;
    tx.commit()
        .await
        .map_err(LifecycleError::db("commit the lifecycle change"))?;
    Ok(row)
}
