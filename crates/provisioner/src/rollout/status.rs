//! Read side of rollouts: the fleet at a glance, the rollout list, one rollout in detail.
//!
//! [`fleet_status`] is one statement over the registry and the rollout tables, never a tenant
//! schema: `fleet.tenants.schema_version` is kept equal to each ledger by every path that moves
//! a tenant, so the histogram is true without reading 10,000 ledgers. Drift (ledgers that
//! disagree with the files) is what the last `migrate verify` recorded.

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use sqlx::PgPool;
use uuid::Uuid;

/// `to_char` of a timestamptz column as RFC 3339 UTC (the provisioner does not link chrono).
macro_rules! ts {
    ($col:literal) => {
        concat!(
            "to_char(",
            $col,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        )
    };
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionCount {
    pub version: i64,
    pub tenants: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedTenant {
    pub code: String,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drift {
    pub tenants: i64,
    pub checked_at: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetStatus {
    /// The deployed set's latest version (of the process asking).
    #[serde(default)]
    pub latest_version: i64,
    /// Tenants per schema version (all but deleted).
    pub histogram: Vec<VersionCount>,
    /// Tenants per status.
    pub statuses: serde_json::Map<String, serde_json::Value>,
    /// Active tenants below the latest version.
    pub behind: i64,
    /// Tenants that are not active (suspended, failed, provisioning) and below the latest.
    pub behind_inactive: i64,
    /// Tenants above the deployed set's latest version (migrated by newer code).
    pub ahead: i64,
    pub last_rollout: Option<RolloutSummary>,
    /// Failed tenants of the last rollout (the first 20 by code), with the reason.
    pub last_failed: Vec<FailedTenant>,
    pub drift: Drift,
}

/// One rollout with its per-state counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub rollout_id: Uuid,
    pub direction: String,
    pub target_version: i64,
    pub state: String,
    pub current_wave: i32,
    pub waves: i32,
    pub concurrency: i32,
    pub max_failures: i64,
    pub lock_timeout_ms: i64,
    pub undo_of: Option<Uuid>,
    pub reason: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub total: i64,
    pub pending: i64,
    pub done: i64,
    pub failed: i64,
    pub skipped: i64,
}
fleet_shared::from_row!(RolloutSummary {
    rollout_id,
    direction,
    target_version,
    state,
    current_wave,
    waves,
    concurrency,
    max_failures,
    lock_timeout_ms,
    undo_of,
    reason,
    created_at,
    finished_at,
    total,
    pending,
    done,
    failed,
    skipped
});

impl RolloutSummary {
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

const SUMMARY: &str = concat!(
    "SELECT r.rollout_id, r.direction, r.target_version, r.state, r.current_wave, r.waves,
            r.concurrency, r.max_failures, r.lock_timeout_ms, r.undo_of, r.reason, ",
    ts!("r.created_at"),
    " AS created_at, ",
    ts!("r.finished_at"),
    " AS finished_at,
            coalesce(c.total, 0) AS total, coalesce(c.pending, 0) AS pending,
            coalesce(c.done, 0) AS done, coalesce(c.failed, 0) AS failed,
            coalesce(c.skipped, 0) AS skipped
       FROM fleet.rollouts r
       LEFT JOIN LATERAL (
            SELECT count(*) AS total,
                   count(*) FILTER (WHERE state = 'pending') AS pending,
                   count(*) FILTER (WHERE state = 'done') AS done,
                   count(*) FILTER (WHERE state = 'failed') AS failed,
                   count(*) FILTER (WHERE state = 'skipped') AS skipped
              FROM fleet.rollout_tenants rt WHERE rt.rollout_id = r.rollout_id) c ON true"
);

/// The fleet at a glance, in one statement (see the module docs).
pub async fn fleet_status(pg: &PgPool, latest: i64) -> Result<FleetStatus, sqlx::Error> {
    let sql = format!(
        "WITH t AS MATERIALIZED (SELECT status, schema_version FROM fleet.tenants),
              last AS ({SUMMARY} ORDER BY r.created_at DESC, r.rollout_id DESC LIMIT 1),
              hist AS (SELECT schema_version AS version, count(*) AS tenants
                         FROM t WHERE status <> 'deleted' GROUP BY 1),
              byst AS (SELECT status, count(*) AS n FROM t GROUP BY 1),
              lastf AS (SELECT code, error FROM fleet.rollout_tenants
                         WHERE rollout_id = (SELECT rollout_id FROM last) AND state = 'failed'
                         ORDER BY code LIMIT 20)
         SELECT json_build_object(
            'histogram', (SELECT coalesce(json_agg(json_build_object('version', version,
                              'tenants', tenants) ORDER BY version), '[]') FROM hist),
            'statuses', (SELECT coalesce(json_object_agg(status, n), '{{}}') FROM byst),
            'behind', (SELECT count(*) FROM t WHERE status = 'active' AND schema_version < $1),
            'behind_inactive', (SELECT count(*) FROM t
                                 WHERE status NOT IN ('active', 'deleted') AND schema_version < $1),
            'ahead', (SELECT count(*) FROM t WHERE status <> 'deleted' AND schema_version > $1),
            'last_rollout', (SELECT row_to_json(last) FROM last),
            'last_failed', (SELECT coalesce(json_agg(lastf), '[]') FROM lastf),
            'drift', (SELECT json_build_object('tenants', count(*), 'checked_at',
                              {}) FROM fleet.tenant_drift))",
        ts!("max(checked_at)")
    );
    let Json(mut s): Json<FleetStatus> =
        sqlx::query_scalar(&sql).bind(latest).fetch_one(pg).await?;
    s.latest_version = latest;
    Ok(s)
}

/// The most recent rollouts, newest first.
pub async fn list(pg: &PgPool, limit: i64) -> Result<Vec<RolloutSummary>, sqlx::Error> {
    sqlx::query_as(&format!(
        "{SUMMARY} ORDER BY r.created_at DESC, r.rollout_id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pg)
    .await
}

pub async fn summary(pg: &PgPool, id: Uuid) -> Result<Option<RolloutSummary>, sqlx::Error> {
    sqlx::query_as(&format!("{SUMMARY} WHERE r.rollout_id = $1"))
        .bind(id)
        .fetch_optional(pg)
        .await
}

/// One tenant of a rollout: where it started, where it ended, how long, why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TenantOutcome {
    pub code: String,
    pub wave: i32,
    pub state: String,
    pub version_before: i64,
    pub target_version: i64,
    pub version_after: Option<i64>,
    pub attempts: i32,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    pub finished_at: Option<String>,
}
fleet_shared::from_row!(TenantOutcome {
    code,
    wave,
    state,
    version_before,
    target_version,
    version_after,
    attempts,
    duration_ms,
    error,
    finished_at
});

pub async fn tenants(
    pg: &PgPool,
    id: Uuid,
    state: Option<&str>,
) -> Result<Vec<TenantOutcome>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT code, wave, state, version_before, target_version, version_after, attempts,
                duration_ms, error, ",
        ts!("finished_at"),
        " AS finished_at
           FROM fleet.rollout_tenants
          WHERE rollout_id = $1 AND ($2::text IS NULL OR state = $2)
          ORDER BY wave, code"
    ))
    .bind(id)
    .bind(state)
    .fetch_all(pg)
    .await
}
