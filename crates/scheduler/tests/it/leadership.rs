//! Leader election: two replicas publish every (tenant, tick) exactly once; a follower takes
//! over when the leader dies without releasing its lease, and the ticks stay contiguous across the
//! takeover (none skipped as "missed", none doubled); a leader cut off from NATS steps down before
//! its lease entry ages out.

use std::collections::HashSet;

use std::time::Duration;

use crate::common::{jobs, per_tenant_tick, Setup, LIMIT};
use fleet_testkit::{eventually, TcpProxy};
use scheduler::elector::{Elector, BUCKET, KEY};
use tokio_util::sync::CancellationToken;

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
    s.wait_done("every-second", 3, "three finished ticks").await;
    a.stop().await;
    b.stop().await;

    let runs = s.runs("every-second").await;
    each_tick_reached_every_tenant_once(&s, &runs, 25).await;
    // One leader: every run was started by the same replica (neither lost its lease here).
    let leaders: HashSet<_> = runs.iter().filter_map(|r| r.leader.clone()).collect();
    assert_eq!(leaders.len(), 1, "{leaders:?}");
}

#[tokio::test]
async fn a_follower_takes_over_when_the_leader_dies_with_contiguous_ticks() {
    let s = Setup::new(&CONFIG.replace("LEASE", "2s")).await;
    s.tenants("t", 10, "basic", "active").await;
    let leader = s.replica().await;
    let first = s.wait_run("every-second", "done").await;
    let leader_id = first.leader.clone().unwrap();
    let follower = s.replica().await;

    // A crash: the task is aborted, nothing is released; the lease must age out.
    leader.running.kill().await;
    let died_at = chrono::Utc::now();

    // The follower has run a few ticks of its own after the takeover.
    eventually(LIMIT, "three ticks run by the follower", || async {
        let n = s
            .runs("every-second")
            .await
            .into_iter()
            .filter(|r| {
                r.status == "done" && r.tick > died_at && r.leader.as_deref() != Some(&leader_id)
            })
            .count();
        (n >= 3).then_some(())
    })
    .await;
    follower.stop().await;

    // Every tick from the leader's first to the follower's last has exactly one run: the ticks
    // that fell into the takeover (up to two leases late) ran as on time, none was skipped as
    // missed, none was decided twice. The runs' ticks are the cron's seconds, so contiguity is
    // "consecutive ticks are one second apart", whatever the machine's speed.
    let runs = s.runs("every-second").await;
    assert!(
        runs.iter()
            .all(|r| r.status != "skipped" && r.trigger == "cron"),
        "{runs:?}"
    );
    let ticks: Vec<i64> = runs.iter().map(|r| r.tick.timestamp()).collect();
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            1,
            "a tick was skipped or doubled: {ticks:?}"
        );
    }
    let followers: Vec<_> = runs
        .iter()
        .filter(|r| r.leader.as_deref() != Some(&leader_id))
        .collect();
    assert!(followers.len() >= 3);
    assert!(followers.iter().all(|r| r.tick > first.tick));

    // Whatever the dead leader left half-published was resumed, and the follower finishes it:
    // no (tenant, tick) is stored twice, and every finished tick reached every tenant.
    each_tick_reached_every_tenant_once(&s, &runs, 10).await;
}

#[tokio::test]
async fn a_leader_cut_off_from_nats_steps_down_before_its_lease_ages_out() {
    let s = Setup::new(&CONFIG.replace("LEASE", "4s")).await;
    let lease = Duration::from_secs(4);
    // The candidate talks to NATS through a proxy that the test cuts; the test's own client
    // reads the bucket directly.
    let proxy = TcpProxy::start(&format!("127.0.0.1:{}", s.env.nats.port))
        .await
        .unwrap();
    let client = async_nats::connect(format!("nats://{}", proxy.addr()))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client);
    let elector = Elector::open(&js, "cut-off".into(), lease, 1)
        .await
        .unwrap();
    let held = elector.acquire(&CancellationToken::new()).await.unwrap();
    let lost = CancellationToken::new();
    let stop = CancellationToken::new();
    let holding = tokio::spawn({
        let (lost, stop) = (lost.clone(), stop.clone());
        async move { elector.hold(held, &lost, &stop).await }
    });

    // Let it renew a couple of times, then cut it off: renewals now hang.
    let direct = s.js().await;
    let kv = direct.get_key_value(BUCKET).await.unwrap();
    eventually(LIMIT, "a renewal", || async {
        let entry = kv.entry(KEY).await.unwrap()?;
        (entry.revision > held.revision).then_some(())
    })
    .await;
    proxy.cut();

    // It steps down while its entry still exists: nobody else could have acquired the lease yet,
    // so the old leader and a new one never act at the same time.
    lost.cancelled().await;
    let entry = kv.get(KEY).await.unwrap();
    assert_eq!(
        entry.as_deref(),
        Some(&b"cut-off"[..]),
        "the leader stepped down only after its lease entry aged out"
    );
    assert_eq!(holding.await.unwrap(), None);

    // And the entry does age out, so a follower can take over.
    eventually(LIMIT, "the entry aged out", || async {
        kv.get(KEY).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// No (tenant, tick) is stored twice, and every finished run's tick reached `tenants` tenants.
async fn each_tick_reached_every_tenant_once(
    s: &Setup,
    runs: &[scheduler::store::RunRow],
    tenants: usize,
) {
    let got = jobs(&s.js().await, "FLEET_JOBS", "jobs.tick.").await;
    let counts = per_tenant_tick(&got);
    assert!(
        counts.values().all(|n| *n == 1),
        "a (tenant, tick) was stored twice"
    );
    for run in runs.iter().filter(|r| r.status == "done") {
        let tick = run.tick.timestamp().to_string();
        let n = counts.keys().filter(|(_, t)| *t == tick).count();
        assert_eq!(n, tenants, "tick {tick}: every tenant once");
    }
}
