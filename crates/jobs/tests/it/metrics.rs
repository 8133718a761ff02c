//! The runtime's metrics count what happened: `fleet_jobs_buffered` and
//! `fleet_jobs_tenants_waiting` while jobs wait for a held one, `fleet_job_outcomes_total` per
//! outcome (a retry counts as `failed`, then its redelivery as `done`), and nothing left
//! unrecorded at the end.

use std::time::Duration;

use fleet_jobs::RuntimeSpec;
use fleet_testkit::{eventually, TestEnv};

use fleet_testkit::metric;

use crate::common::{outcomes, publish_all, scheduled, start, Gated};

#[tokio::test]
async fn the_job_metrics_count_buffered_jobs_and_each_outcome() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let tick = "2026-03-29T01:00:00Z";
    let jobs = ["good", "bad", "flaky", "fine"]
        .iter()
        .map(|code| scheduled("metr", "metr", tick, code))
        .collect();
    publish_all(&fleet.js, jobs).await;

    let gated = Gated::new();
    let mut spec = RuntimeSpec::for_fleet(&fleet, "metr-test", "metr").unwrap();
    spec.worker.concurrency = 1;
    spec.worker.retry_base = Duration::from_millis(100);
    spec.worker.retry_max = Duration::from_millis(200);
    let running = start(&fleet, spec, gated.clone());
    let worker = r#"worker="metr-test""#;

    // One job held, three buffered, each of its own tenant.
    eventually(Duration::from_secs(30), "three jobs buffered", || async {
        let text = fleet.metrics.render();
        (gated.started().len() == 1
            && metric(&text, &format!("fleet_jobs_buffered{{{worker}}}")) == 3.0
            && metric(&text, &format!("fleet_jobs_tenants_waiting{{{worker}}}")) == 3.0)
            .then_some(())
    })
    .await;

    gated.open();
    eventually(Duration::from_secs(30), "four final outcomes", || async {
        let rows = outcomes(&fleet.pg, "metr").await;
        (rows.len() == 4 && rows.iter().all(|r| r.1 != "failed")).then_some(())
    })
    .await;
    let text = fleet.metrics.render();
    let outcome = |o: &str| {
        metric(
            &text,
            &format!(r#"fleet_job_outcomes_total{{{worker},task="metr",outcome="{o}"}}"#),
        )
    };
    assert_eq!(outcome("done"), 3.0, "{text}");
    assert_eq!(outcome("failed"), 1.0, "{text}");
    assert_eq!(outcome("dead_lettered"), 1.0, "{text}");
    let rows = outcomes(&fleet.pg, "metr").await;
    assert_eq!(
        rows,
        [
            ("bad".to_owned(), "dead_lettered".to_owned(), 1),
            ("fine".to_owned(), "done".to_owned(), 1),
            ("flaky".to_owned(), "done".to_owned(), 2),
            ("good".to_owned(), "done".to_owned(), 1),
        ]
    );
    running.stop().await;
    let text = fleet.metrics.render();
    assert_eq!(
        metric(&text, &format!("fleet_jobs_buffered{{{worker}}}")),
        0.0
    );
    assert_eq!(
        metric(&text, &format!("fleet_jobs_unrecorded{{{worker}}}")),
        0.0
    );
}
