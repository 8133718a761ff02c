//! Schedules managed at run time: created, changed and deleted in the control plane while a
//! replica leads, picked up without a restart, with every tick fired exactly once around each
//! change.

use std::collections::HashSet;

use chrono::Utc;
use fleet_testkit::eventually;
use scheduler::config::{parse_json, DEFAULT_LEASE};
use scheduler::defs;

use crate::common::{jobs, per_tenant_tick, Setup, LIMIT};

async fn put(s: &Setup, spec: serde_json::Value) {
    let schedule = parse_json(&spec, DEFAULT_LEASE).unwrap();
    defs::put_all(&s.pg, &[(schedule.name.clone(), schedule.spec)], "test")
        .await
        .unwrap();
}

#[tokio::test]
async fn apply_change_and_delete_are_picked_up_without_a_restart() {
    let s = Setup::new("").await;
    s.tenants("d", 2, "basic", "active").await;
    let replica = s.replica().await;

    put(
        &s,
        serde_json::json!({"name": "dyn", "cron": "* * * * * *", "subject": "jobs.dyn.{tenant_code}"}),
    )
    .await;
    s.wait_done("dyn", 2, "two ticks of the new schedule").await;

    let changed_at = Utc::now();
    put(
        &s,
        serde_json::json!({"name": "dyn", "cron": "*/2 * * * * *", "subject": "jobs.dyn.{tenant_code}", "payload": {"v": 2}}),
    )
    .await;
    eventually(LIMIT, "two ticks of the changed schedule", || async {
        let js = s.js().await;
        let v2 = jobs(&js, "FLEET_JOBS", "jobs.dyn.")
            .await
            .into_iter()
            .filter(|j| j.body["v"] == 2)
            .count();
        (v2 >= 4).then_some(())
    })
    .await;

    assert!(defs::delete(&s.pg, "dyn", "test").await.unwrap());
    // The leader has reloaded once it answers a trigger for the deleted name.
    let trigger = s.trigger("dyn").await;
    let outcome: String = eventually(LIMIT, "the trigger answered", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT outcome FROM fleet.schedule_triggers WHERE trigger_id = $1",
        )
        .bind(trigger)
        .fetch_one(&s.pg)
        .await
        .unwrap()
    })
    .await;
    assert!(outcome.contains("no such schedule"), "{outcome}");
    let runs_at_delete = s.runs("dyn").await.len();
    // A trigger of another (file-less, unknown) name round-trips one more pass of the loop.
    let again = s.trigger("dyn").await;
    eventually(LIMIT, "a second pass after the delete", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT outcome FROM fleet.schedule_triggers WHERE trigger_id = $1",
        )
        .bind(again)
        .fetch_one(&s.pg)
        .await
        .unwrap()
    })
    .await;
    replica.stop().await;

    let runs = s.runs("dyn").await;
    assert_eq!(runs.len(), runs_at_delete, "no tick after the delete");
    let ticks: HashSet<_> = runs.iter().map(|r| r.tick).collect();
    assert_eq!(ticks.len(), runs.len(), "each tick decided once");
    let all = jobs(&s.js().await, "FLEET_JOBS", "jobs.dyn.").await;
    assert!(
        per_tenant_tick(&all).values().all(|n| *n == 1),
        "no job twice"
    );
    for j in &all {
        let tick = chrono::DateTime::parse_from_rfc3339(j.body["tick"].as_str().unwrap()).unwrap();
        if j.body["v"] == 2 {
            assert!(tick.timestamp() % 2 == 0, "changed cron: even seconds only");
            assert!(tick > changed_at - chrono::Duration::seconds(1));
        }
    }
    assert_eq!(
        defs::changes(&s.pg, "dyn", 10)
            .await
            .unwrap()
            .iter()
            .map(|c| c.action.as_str())
            .collect::<Vec<_>>(),
        ["delete", "update", "create"]
    );
}
