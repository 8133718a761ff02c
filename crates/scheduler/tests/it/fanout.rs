//! Fan-out: plan/status filters, the payload and Msg-Id contract, the built-in tenant.migrate
//! target, spread, and a restart in the middle of a fan-out.

use std::collections::HashSet;

use crate::common::{jobs, per_tenant_tick, Setup, LIMIT};
use fleet_testkit::eventually;

const CONFIG: &str = r#"
[scheduler]
lease = "3s"

[[schedules]]
name = "followups"
cron = "0 0 0 1 1 *"
subject = "jobs.followups.{tenant_code}"
payload = { kind = "followup", limit = 50 }
tenants = { plans = ["premium", "enterprise"] }

[[schedules]]
name = "migrate"
cron = "0 0 0 1 1 *"
subject = "tenant.migrate"
tenants = { status = ["active", "failed"] }

[[schedules]]
name = "spread"
cron = "0 0 0 1 1 *"
subject = "jobs.spread.{tenant_code}"
tenants = { plans = "basic" }
spread = "2s"

[[schedules]]
name = "slow"
cron = "0 0 0 1 1 *"
subject = "jobs.slow.{tenant_code}"
tenants = { plans = "custom" }
spread = "4s"
"#;

#[tokio::test]
async fn fan_out_reaches_every_matching_tenant_once_with_plan_filters() {
    let s = Setup::new(CONFIG).await;
    s.tenants("p", 40, "premium", "active").await;
    s.tenants("e", 5, "enterprise", "active").await;
    s.tenants("b", 30, "basic", "active").await;
    s.tenants("f", 10, "premium", "failed").await;
    let replica = s.replica().await;

    s.trigger("followups").await;
    let run = s.wait_run("followups", "done").await;
    assert_eq!(run.trigger, "manual");
    assert_eq!((run.tenants_matched, run.published), (45, 45));

    let js = s.js().await;
    let got = jobs(&js, "FLEET_JOBS", "jobs.followups.").await;
    assert_eq!(got.len(), 45);
    let codes: HashSet<String> = got
        .iter()
        .map(|j| j.body["tenant_code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(codes.len(), 45);
    assert!(codes
        .iter()
        .all(|c| c.starts_with('p') || c.starts_with('e')));
    for j in &got {
        let code = j.body["tenant_code"].as_str().unwrap();
        assert_eq!(j.subject, format!("jobs.followups.{code}"));
        assert_eq!(j.body["kind"], "followup");
        assert_eq!(j.body["limit"], 50);
        assert_eq!(j.body["schedule"], "followups");
        let tenant_id = j.body["tenant_id"].as_str().unwrap();
        assert_eq!(
            j.msg_id,
            format!("followups:{}:{tenant_id}", run.tick.timestamp())
        );
        assert_eq!(
            j.body["tick"],
            run.tick.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    assert!(per_tenant_tick(&got).values().all(|n| *n == 1));

    // The built-in target: {"code"} to tenant.migrate, active and failed tenants of every plan.
    s.trigger("migrate").await;
    let run = s.wait_run("migrate", "done").await;
    assert_eq!(run.published, 85);
    let got = jobs(&js, "FLEET_EVENTS", "tenant.migrate").await;
    assert_eq!(got.len(), 85);
    for j in &got {
        let obj = j.body.as_object().unwrap();
        assert_eq!(obj.len(), 1, "{obj:?}");
        fleet_shared::Code::parse(obj["code"].as_str().unwrap()).unwrap();
    }
    replica.stop().await;
}

#[tokio::test]
async fn spread_delivers_a_ticks_jobs_evenly_over_the_window() {
    let s = Setup::new(CONFIG).await;
    s.tenants("b", 20, "basic", "active").await;
    let replica = s.replica().await;
    s.trigger("spread").await;
    let run = s.wait_run("spread", "done").await;
    let got = jobs(&s.js().await, "FLEET_JOBS", "jobs.spread.").await;
    assert_eq!(got.len(), 20);
    let tick_ms = run.tick.timestamp_millis();
    // Job i of n is stored no earlier than tick + spread * i / n (a little slack for the clock
    // resolution), so the tick's jobs cover the whole window instead of arriving at once.
    for (i, j) in got.iter().enumerate() {
        let slot = tick_ms + 2000 * i as i64 / 20;
        assert!(
            j.stored_ms >= slot - 5,
            "job {i} stored at +{} ms, before its slot +{} ms",
            j.stored_ms - tick_ms,
            slot - tick_ms
        );
    }
    assert!(got.last().unwrap().stored_ms - tick_ms >= 1900 - 5);
    replica.stop().await;
}

#[tokio::test]
async fn a_restart_mid_fan_out_resumes_without_skipping_or_doubling_a_tenant() {
    let s = Setup::new(CONFIG).await;
    s.tenants("c", 300, "custom", "active").await;
    let first = s.replica().await;
    s.trigger("slow").await;
    // Stop the scheduler once part of the fan-out is committed.
    let partial = eventually(LIMIT, "part of the fan-out committed", || async {
        s.runs("slow")
            .await
            .into_iter()
            .find(|r| r.status == "running" && r.published >= 30)
    })
    .await;
    first.stop().await;
    let stopped = s.runs("slow").await.remove(0);
    assert_eq!(
        stopped.status, "running",
        "an interrupted run stays running"
    );
    assert!(stopped.published >= partial.published && stopped.published < 300);
    let stored_before = jobs(&s.js().await, "FLEET_JOBS", "jobs.slow.").await.len();
    assert_eq!(stored_before as i64, stopped.published);

    let second = s.replica().await;
    let run = s.wait_run("slow", "done").await;
    assert_eq!(run.run_id, stopped.run_id);
    assert_eq!(run.published, 300);
    assert!(
        stopped.clean_stop,
        "a graceful stop leaves nothing in doubt"
    );
    assert_eq!(run.reason, None);
    let got = jobs(&s.js().await, "FLEET_JOBS", "jobs.slow.").await;
    assert_eq!(got.len(), 300);
    let counts = per_tenant_tick(&got);
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|n| *n == 1));
    second.stop().await;
}

/// Inserts a `running` run of `schedule` as a stopped fan-out left it: `published` jobs up to the
/// `published`-th tenant (in tenant_id order) committed, last progress an hour ago.
async fn interrupted_run(s: &Setup, schedule: &str, plan: &str, published: i64, clean: bool) {
    sqlx::query(
        "INSERT INTO fleet.schedule_runs (schedule, tick, trigger, status, statuses, plans, tenants_matched, published, cursor, leader, started_at, updated_at, clean_stop)
         SELECT $1, '2026-01-01T00:00:00Z', 'manual', 'running', '{active}', ARRAY[$2],
                (SELECT count(*) FROM fleet.tenants WHERE plan = $2), $3,
                (SELECT tenant_id FROM fleet.tenants WHERE plan = $2 ORDER BY tenant_id OFFSET $3 - 1 LIMIT 1),
                'a-dead-replica', now() - interval '61 minutes', now() - interval '1 hour', $4",
    )
    .bind(schedule)
    .bind(plan)
    .bind(published)
    .bind(clean)
    .execute(&s.pg)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_fan_out_resumed_after_the_duplicate_window_says_which_jobs_may_be_doubled() {
    let s = Setup::new(CONFIG).await;
    s.tenants("p", 20, "premium", "active").await;
    s.tenants("b", 10, "basic", "active").await;
    // A crash an hour ago, longer than the default 10-minute dedupe window: the jobs published
    // after its cursor are in doubt. And a clean stop an hour ago: nothing is in doubt.
    interrupted_run(&s, "followups", "premium", 8, false).await;
    interrupted_run(&s, "spread", "basic", 4, true).await;
    let after_cursor = |plan: &'static str, skip: i64| {
        let pg = s.pg.clone();
        async move {
            let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
                "SELECT tenant_id FROM fleet.tenants WHERE plan = $1 ORDER BY tenant_id OFFSET $2",
            )
            .bind(plan)
            .bind(skip)
            .fetch_all(&pg)
            .await
            .unwrap();
            ids.into_iter()
                .map(|i| i.to_string())
                .collect::<HashSet<_>>()
        }
    };
    let replica = s.replica().await;
    let crashed = s.wait_run("followups", "done").await;
    let clean = s.wait_run("spread", "done").await;
    replica.stop().await;

    // Both resumed after their cursor: no tenant skipped, none before the cursor re-sent.
    assert_eq!((crashed.published, clean.published), (20, 10));
    let js = s.js().await;
    let tenants = |jobs: &[crate::common::Job]| -> HashSet<String> {
        jobs.iter()
            .map(|j| j.body["tenant_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let followups = jobs(&js, "FLEET_JOBS", "jobs.followups.").await;
    assert_eq!(followups.len(), 12);
    assert_eq!(tenants(&followups), after_cursor("premium", 8).await);
    let spread = jobs(&js, "FLEET_JOBS", "jobs.spread.").await;
    assert_eq!(spread.len(), 6);
    assert_eq!(tenants(&spread), after_cursor("basic", 4).await);

    // The crashed run's record says that the tenants right after its cursor may have had their
    // job twice; the cleanly stopped one has nothing to say.
    let reason = crashed.reason.expect("a note on the late resume");
    assert!(reason.contains("may have been sent twice"), "{reason}");
    assert!(reason.contains("beyond the 570s"), "{reason}");
    assert_eq!(clean.reason, None);
}

#[tokio::test]
async fn a_database_selector_fans_out_only_to_the_tenants_on_those_databases() {
    // The scheduler reads the registry only; the shard's URL is never connected to.
    let s = Setup::new(
        r#"
[databases.shard_b]
url = "postgres://postgres@127.0.0.1:1/unused"
tenants = true

[[schedules]]
name = "on-shard"
cron = "0 0 0 1 1 *"
subject = "jobs.onshard.{tenant_code}"
tenants = { database = "shard_b", plans = ["premium", "basic"] }

[[schedules]]
name = "on-control"
cron = "0 0 0 1 1 *"
subject = "jobs.oncontrol.{tenant_code}"
tenants = { database = ["control"] }
"#,
    )
    .await;
    s.tenants("p", 12, "premium", "active").await;
    s.tenants("e", 4, "enterprise", "active").await;
    sqlx::query(
        "UPDATE fleet.tenants SET database = 'shard_b'
          WHERE code IN ('p1', 'p2', 'p3', 'p4', 'p5', 'e1', 'e2')",
    )
    .execute(&s.pg)
    .await
    .unwrap();
    let replica = s.replica().await;

    s.trigger("on-shard").await;
    let run = s.wait_run("on-shard", "done").await;
    assert_eq!(run.databases.as_deref(), Some(&["shard_b".to_owned()][..]));
    assert_eq!((run.tenants_matched, run.published), (5, 5));
    let js = s.js().await;
    let codes: HashSet<String> = jobs(&js, "FLEET_JOBS", "jobs.onshard.")
        .await
        .iter()
        .map(|j| j.body["tenant_code"].as_str().unwrap().to_owned())
        .collect();
    let want: HashSet<String> = (1..=5).map(|i| format!("p{i}")).collect();
    assert_eq!(codes, want, "premium tenants on shard_b only");

    s.trigger("on-control").await;
    let run = s.wait_run("on-control", "done").await;
    assert_eq!((run.tenants_matched, run.published), (9, 9));
    let got = jobs(&js, "FLEET_JOBS", "jobs.oncontrol.").await;
    assert!(got.iter().all(|j| {
        let c = j.body["tenant_code"].as_str().unwrap();
        !["p1", "p2", "p3", "p4", "p5", "e1", "e2"].contains(&c)
    }));
    replica.stop().await;
}
