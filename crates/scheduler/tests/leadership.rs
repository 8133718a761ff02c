//! Leader election: two replicas publish every (tenant, tick) exactly once, and a follower takes
//! over when the leader dies without releasing its lease.

mod common;

use std::collections::HashSet;

use common::{jobs, per_tenant_tick, Setup, LIMIT};
use fleet_testkit::eventually;

const CONFIG: &str = r#"
[scheduler]
lease = "LEASE"

[[schedules]]
name = "every-second"
cron = "* * * * * *"
subject = "jobs.tick.{tenant_code}"
"#;

#[tokio::test]
async fn two_replicas_publish_every_tenant_tick_exactly_once() {
    // A long lease, so a slow CI machine does not make the leader flap during the test.
    let s = Setup::new(&CONFIG.replace("LEASE", "6s")).await;
    s.tenants("t", 25, "basic", "active").await;
    let a = s.replica().await;
    let b = s.replica().await;
    eventually(LIMIT, "three finished ticks", || async {
        let done = s
            .runs("every-second")
            .await
            .into_iter()
            .filter(|r| r.status == "done")
            .count();
        (done >= 3).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;

    let runs = s.runs("every-second").await;
    let got = jobs(&s.js().await, "FLEET_JOBS", "jobs.tick.").await;
    let counts = per_tenant_tick(&got);
    assert!(
        counts.values().all(|n| *n == 1),
        "a (tenant, tick) was stored twice"
    );
    for run in runs.iter().filter(|r| r.status == "done") {
        let tick = run.tick.timestamp().to_string();
        let n = counts.keys().filter(|(_, t)| *t == tick).count();
        assert_eq!(n, 25, "tick {tick}: every tenant once");
    }
    // One leader: every run was started by the same replica (neither lost its lease here).
    let leaders: HashSet<_> = runs.iter().filter_map(|r| r.leader.clone()).collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
}

#[tokio::test]
async fn a_follower_takes_over_when_the_leader_dies() {
    let s = Setup::new(&CONFIG.replace("LEASE", "2s")).await;
    s.tenants("t", 10, "basic", "active").await;
    let leader = s.replica().await;
    let first = s.wait_run("every-second", "done").await;
    let leader_id = first.leader.clone().unwrap();
    let follower = s.replica().await;

    // A crash: the task is aborted, nothing is released; the lease must age out.
    leader.handle.abort();
    let _ = leader.handle.await;
    let died_at = chrono::Utc::now();

    let taken = eventually(LIMIT, "a tick run by the follower", || async {
        s.runs("every-second").await.into_iter().find(|r| {
            r.status == "done" && r.tick > died_at && r.leader.as_deref() != Some(&leader_id)
        })
    })
    .await;
    assert_ne!(taken.leader.as_deref(), Some(leader_id.as_str()));
    follower.stop().await;

    // Whatever the dead leader left half-published was resumed: nothing is still running and
    // no (tenant, tick) is stored twice.
    let got = jobs(&s.js().await, "FLEET_JOBS", "jobs.tick.").await;
    assert!(per_tenant_tick(&got).values().all(|n| *n == 1));
}
