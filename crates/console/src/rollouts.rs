//! `/rollouts`: tenants per schema version, recent rollouts with their progress, and the tenants
//! that failed with their reasons. Acting on rollouts stays in `fleetctl migrate`.

use axum::extract::State;
use axum::Extension;
use maud::html;
use uuid::Uuid;

use crate::{layout, Page, Shared, Visitor};

struct Rollout {
    rollout_id: Uuid,
    direction: String,
    target_version: i64,
    state: String,
    waves: i32,
    current_wave: i32,
    created_at: chrono::DateTime<chrono::Utc>,
    total: i64,
    done: i64,
    failed: i64,
}
fleet_shared::from_row!(Rollout {
    rollout_id,
    direction,
    target_version,
    state,
    waves,
    current_wave,
    created_at,
    total,
    done,
    failed
});

pub async fn page(State(c): State<Shared>, Extension(v): Extension<Visitor>) -> Page {
    let versions: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT schema_version, count(*) FROM fleet.tenants
          WHERE status IN ('active', 'suspended') GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&c.pg)
    .await
    .map_err(anyhow::Error::from)?;
    let rollouts: Vec<Rollout> = sqlx::query_as(
        "SELECT r.rollout_id, r.direction, r.target_version, r.state, r.waves, r.current_wave, r.created_at,
                count(t.tenant_id) AS total,
                count(t.tenant_id) FILTER (WHERE t.state IN ('done', 'skipped')) AS done,
                count(t.tenant_id) FILTER (WHERE t.state = 'failed') AS failed
           FROM (SELECT * FROM fleet.rollouts ORDER BY created_at DESC LIMIT 20) r
           LEFT JOIN fleet.rollout_tenants t USING (rollout_id)
          GROUP BY r.rollout_id, r.direction, r.target_version, r.state, r.waves, r.current_wave, r.created_at
          ORDER BY r.created_at DESC",
    )
    .fetch_all(&c.pg)
    .await
    .map_err(anyhow::Error::from)?;
    let failed: Vec<(Uuid, String, i32, Option<String>)> = sqlx::query_as(
        "SELECT rollout_id, code, attempts, error FROM fleet.rollout_tenants
          WHERE state = 'failed' ORDER BY finished_at DESC NULLS LAST LIMIT 50",
    )
    .fetch_all(&c.pg)
    .await
    .map_err(anyhow::Error::from)?;
    let max = versions.iter().map(|v| v.1).max().unwrap_or(1).max(1);
    let body = html! {
        h2 { "Tenants per schema version" }
        @if versions.is_empty() { p { "no live tenants" } } @else {
            table id="versions" {
                thead { tr { th { "version" } th { "tenants" } th {} } }
                tbody {
                    @for (ver, n) in &versions {
                        tr { td.num { (ver) } td.num { (n) } td { meter min="0" max=(max) value=(n) {} } }
                    }
                }
            }
        }
        h2 { "Rollouts" }
        @if rollouts.is_empty() { p { "no rollouts yet (" code { "fleetctl migrate rollout" } ")" } } @else {
            table id="rollouts" {
                thead { tr { th { "rollout" } th { "direction" } th { "target" } th { "state" } th { "wave" } th { "progress" } th { "failed" } th { "created" } } }
                tbody {
                    @for r in &rollouts {
                        tr {
                            td { code { (r.rollout_id) } }
                            td { (r.direction) } td.num { (r.target_version) }
                            td { span class={ "status " (r.state) } { (r.state) } }
                            td { (r.current_wave) " / " (r.waves) }
                            td { progress max=(r.total.max(1)) value=(r.done) {} " " (r.done) " / " (r.total) }
                            td.num { (r.failed) }
                            td { (layout::when(&r.created_at)) }
                        }
                    }
                }
            }
        }
        h2 { "Failed tenants" }
        @if failed.is_empty() { p { "none" } } @else {
            table id="failed" {
                thead { tr { th { "rollout" } th { "tenant" } th { "attempts" } th { "reason" } } }
                tbody { @for (id, code, attempts, err) in &failed {
                    tr { td { code { (id) } } td { a href={ "/tenants/" (code) } { (code) } } td.num { (attempts) } td { (err.clone().unwrap_or_default()) } }
                } }
            }
        }
    };
    Ok(layout::page(
        &v,
        "/rollouts",
        "Migrations and rollouts",
        body,
    ))
}
