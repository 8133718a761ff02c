//! Missed, overlap and pause policies, and invalid schedules at start.

use std::time::Duration;

use crate::common::{jobs, Setup, LIMIT};
use chrono::{Timelike, Utc};
use fleet_testkit::eventually;

#[tokio::test]
async fn missed_ticks_are_skipped_or_the_latest_runs_within_its_deadline() {
    // A daily tick two to three hours ago, and a scheduler that was down for 26 hours.
    let hour = (Utc::now() - chrono::Duration::hours(2)).hour();
    let config = format!(
        r#"
[[schedules]]
name = "skipper"
cron = "0 0 {hour} * * *"
subject = "jobs.skipper.{{tenant_code}}"
missed = "skip"

[[schedules]]
name = "catcher"
cron = "0 0 {hour} * * *"
subject = "jobs.catcher.{{tenant_code}}"
missed = "run_latest"
missed_deadline = "4h"
"#
    );
    let s = Setup::new(&config).await;
    s.tenants("t", 5, "basic", "active").await;
    let down_since = Utc::now() - chrono::Duration::hours(26);
    sqlx::query("INSERT INTO fleet.schedules (name, evaluated_until) VALUES ('skipper', $1), ('catcher', $1)")
        .bind(down_since)
        .execute(&s.pg)
        .await
        .unwrap();
    let started = Utc::now();
    let replica = s.replica().await;

    let run = s.wait_run("catcher", "done").await;
    assert_eq!(run.trigger, "missed");
    assert_eq!(run.published, 5);
    assert_eq!(run.tick.hour(), hour);
    assert!(Utc::now() - run.tick < chrono::Duration::hours(4));
    // Only the latest: yesterday's tick (also in the downtime) did not run.
    assert_eq!(s.runs("catcher").await.len(), 1);

    // The skipper decided its ticks (watermark moved) and ran none of them.
    eventually(LIMIT, "skipper evaluated", || async {
        let until: chrono::DateTime<Utc> = sqlx::query_scalar(
            "SELECT evaluated_until FROM fleet.schedules WHERE name = 'skipper'",
        )
        .fetch_one(&s.pg)
        .await
        .unwrap();
        (until >= started).then_some(())
    })
    .await;
    assert!(s.runs("skipper").await.is_empty());
    replica.stop().await;
    assert!(jobs(&s.js().await, "FLEET_JOBS", "jobs.skipper.")
        .await
        .is_empty());
}

#[tokio::test]
async fn overlap_forbid_skips_ticks_while_the_previous_jobs_are_pending() {
    let s = Setup::new(
        r#"
[[schedules]]
name = "exclusive"
cron = "* * * * * *"
subject = "jobs.exclusive.{tenant_code}"
overlap = "forbid"

[[schedules]]
name = "overlapping"
cron = "* * * * * *"
subject = "jobs.overlapping.{tenant_code}"
"#,
    )
    .await;
    s.tenants("t", 5, "basic", "active").await;
    let replica = s.replica().await;

    // Nobody consumes the jobs, so after the first tick they stay pending.
    let first = s.wait_run("exclusive", "done").await;
    let skipped = s.wait_run("exclusive", "skipped").await;
    assert!(skipped.tick > first.tick);
    assert!(skipped.reason.unwrap().contains("pending"));
    // `allow` keeps publishing meanwhile.
    s.wait_done("overlapping", 2, "overlapping ticks keep running")
        .await;

    // The jobs are consumed (purged here): the next tick runs again.
    let purged_at = Utc::now();
    let js = s.js().await;
    js.get_stream("FLEET_JOBS")
        .await
        .unwrap()
        .purge()
        .filter("jobs.exclusive.*")
        .await
        .unwrap();
    let again = eventually(LIMIT, "a tick after the jobs left", || async {
        s.runs("exclusive")
            .await
            .into_iter()
            .find(|r| r.status == "done" && r.tick > purged_at)
    })
    .await;
    assert_eq!(again.published, 5);
    replica.stop().await;
}

/// With a consumer on the job runtime, `forbid` waits for the previous tick's jobs to be
/// finished (their outcomes), not for the stream to be empty: a stray job of the same subject
/// that keeps failing does not hold the schedule back.
#[tokio::test]
async fn overlap_forbid_waits_for_the_previous_ticks_outcomes() {
    let s = Setup::new(
        r#"
[[schedules]]
name = "excl"
cron = "* * * * * *"
subject = "jobs.excl.{tenant_code}"
overlap = "forbid"
"#,
    )
    .await;
    s.tenants("t", 3, "basic", "active").await;
    let js = s.js().await;
    js.publish("jobs.excl.stray", "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    struct FailStray;
    impl fleet_jobs::JobHandler for FailStray {
        async fn handle(&self, job: &fleet_jobs::Job) -> Result<(), fleet_jobs::HandleError> {
            if job.tenant_code.as_str() == "stray" {
                return Err(fleet_jobs::HandleError::Transient(anyhow::anyhow!(
                    "not yet"
                )));
            }
            Ok(())
        }
    }
    let fleet = s.fleet().await;
    let mut spec = fleet_jobs::RuntimeSpec::for_fleet(&fleet, "excl-consumer", "excl").unwrap();
    spec.worker.retry_base = Duration::from_secs(60);
    spec.worker.retry_max = Duration::from_secs(60);
    let consumer = fleet_testkit::Running::spawn(move |t| async move {
        fleet_jobs::run_fleet(&fleet, spec, std::sync::Arc::new(FailStray), t).await
    });
    let replica = s.replica().await;
    s.wait_done("excl", 3, "three ticks done while the stray job stays")
        .await;
    replica.stop().await;
    consumer.stop().await;
    let outcomes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet.job_outcomes WHERE schedule = 'excl' AND status = 'done'",
    )
    .fetch_one(&s.pg)
    .await
    .unwrap();
    assert!(outcomes >= 9, "{outcomes}");
    let stray = jobs(&js, "FLEET_JOBS", "jobs.excl.stray").await;
    assert_eq!(stray.len(), 1, "the stray job is still there");
}

#[tokio::test]
async fn a_paused_schedule_skips_its_ticks_and_triggers_until_resumed() {
    let s = Setup::new(
        r#"
[[schedules]]
name = "pausable"
cron = "* * * * * *"
subject = "jobs.pausable.{tenant_code}"
"#,
    )
    .await;
    s.tenants("t", 3, "basic", "active").await;
    scheduler::store::set_paused(&s.pg, "pausable", true)
        .await
        .unwrap();
    let replica = s.replica().await;
    let trigger_id = s.trigger("pausable").await;
    let outcome: String = eventually(LIMIT, "the trigger picked up", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT outcome FROM fleet.schedule_triggers WHERE trigger_id = $1",
        )
        .bind(trigger_id)
        .fetch_one(&s.pg)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(outcome, "schedule is paused");
    // Ticks pass while paused (the watermark moves) without runs.
    let paused_at = Utc::now();
    eventually(LIMIT, "ticks evaluated while paused", || async {
        let until: chrono::DateTime<Utc> = sqlx::query_scalar(
            "SELECT evaluated_until FROM fleet.schedules WHERE name = 'pausable'",
        )
        .fetch_one(&s.pg)
        .await
        .unwrap();
        (until > paused_at + chrono::Duration::seconds(2)).then_some(())
    })
    .await;
    assert!(s.runs("pausable").await.is_empty());

    scheduler::store::set_paused(&s.pg, "pausable", false)
        .await
        .unwrap();
    let run = s.wait_run("pausable", "done").await;
    assert_eq!(run.published, 3);
    replica.stop().await;
}

#[tokio::test]
async fn an_invalid_schedule_stops_the_scheduler_at_start_naming_it() {
    let s = Setup::new(
        r#"
[[schedules]]
name = "broken"
cron = "0 2 * * *"
timezone = "Europe/Atlantis"
subject = "jobs.broken.{tenant_code}"
"#,
    )
    .await;
    let fleet = s.fleet().await;
    let token = tokio_util::sync::CancellationToken::new();
    let err = tokio::time::timeout(Duration::from_secs(10), scheduler::run(fleet, token))
        .await
        .expect("fails at once")
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"broken\""), "{err}");
    assert!(err.contains("Europe/Atlantis"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}
