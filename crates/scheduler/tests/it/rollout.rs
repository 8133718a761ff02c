//! The `tenant.rollout` target: one rollout request per tick (not per tenant), its body from the
//! schedule's payload and tenant selector, and a Msg-Id fixed by schedule and tick, so a second
//! replica or a second leader publishing the same tick stores nothing more.

use std::time::Duration;

use fleet_testkit::eventually;
use tokio_util::sync::CancellationToken;

use crate::common::{jobs, Setup, LIMIT};

const CONFIG: &str = r#"
[scheduler]
lease = "2s"

[[schedules]]
name = "nightly-rollout"
cron = "0 0 0 1 1 *"
subject = "tenant.rollout"
tenants = { plans = "premium", codes = ["prem1", "prem2"] }
payload = { canary = "1", waves = "1,100%", concurrency = 4, max_failures = "1", lock_timeout = "3s" }

[[schedules]]
name = "rollout-all"
cron = "0 0 0 1 1 *"
subject = "tenant.rollout"
"#;

#[tokio::test]
async fn a_tick_publishes_one_rollout_request_and_a_second_replica_or_leader_does_not_double_it() {
    let s = Setup::new(CONFIG).await;
    s.tenants("prem", 5, "premium", "active").await;
    s.tenants("bas", 7, "basic", "active").await;
    // Two replicas: only the leader publishes; the other must not add a second request.
    let a = s.replica().await;
    let b = s.replica().await;
    let js = s.js().await;

    s.trigger("nightly-rollout").await;
    let run = s.wait_run("nightly-rollout", "done").await;
    assert_eq!(run.published, 1, "{run:?}");
    let got = jobs(&js, "FLEET_EVENTS", "tenant.rollout").await;
    assert_eq!(got.len(), 1, "{got:?}");
    let req = &got[0];
    assert_eq!(req.subject, "tenant.rollout");
    assert_eq!(
        req.msg_id,
        format!("nightly-rollout:{}:rollout", run.tick.timestamp())
    );
    assert_eq!(
        req.body,
        serde_json::json!({
            "plan": "premium", "codes": ["prem1", "prem2"], "canary": "1", "waves": "1,100%",
            "concurrency": 4, "max_failures": "1", "lock_timeout": "3s"
        })
    );
    // No per-tenant message went anywhere.
    assert!(jobs(&js, "FLEET_EVENTS", "tenant.migrate").await.is_empty());

    // A second leader (a stalled one waking up, or a resumed run) publishing the same tick again:
    // the stream keeps one request.
    let fleet = s.fleet().await;
    let config = scheduler::config::SchedulerConfig::from_file(&fleet.settings.file).unwrap();
    let schedule = config.get("nightly-rollout").unwrap();
    let metrics = scheduler::metrics::SchedulerMetrics::register(&fleet.metrics);
    let end = scheduler::fanout::fan_out(
        &fleet.js,
        &s.pg,
        schedule,
        &run,
        Duration::from_secs(90),
        &CancellationToken::new(),
        &metrics,
    )
    .await
    .unwrap();
    assert_eq!(end, scheduler::fanout::End::Done);
    assert_eq!(jobs(&js, "FLEET_EVENTS", "tenant.rollout").await.len(), 1);
    let runs = s.runs("nightly-rollout").await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "done");
    assert_eq!(runs[0].published, 1);

    // A schedule without selector or payload asks for `{}`: every tenant, the provisioner's
    // defaults; a later tick is a new request with its own id.
    s.trigger("rollout-all").await;
    let all = s.wait_run("rollout-all", "done").await;
    let got = eventually(LIMIT, "the second request", || async {
        let got = jobs(&js, "FLEET_EVENTS", "tenant.rollout").await;
        (got.len() == 2).then_some(got)
    })
    .await;
    assert_eq!(got[1].body, serde_json::json!({}));
    assert_eq!(
        got[1].msg_id,
        format!("rollout-all:{}:rollout", all.tick.timestamp())
    );
    a.stop().await;
    b.stop().await;
}
