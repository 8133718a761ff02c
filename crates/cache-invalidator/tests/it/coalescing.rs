//! Coalescing: a burst is served by far fewer passes than events, and every request returns
//! (so every message is acked) only after the keys that existed when it arrived are gone.

use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use cache_invalidator::keyspace::Keyspace;
use cache_invalidator::metrics::{CacheMetrics, OutcomeLabels};
use cache_invalidator::pass::Passes;
use cache_invalidator::rules::Pattern;
use fleet_shared::metrics::Metrics;
use fleet_shared::redis_target::RedisTarget;
use fleet_shared::secret::SecretUrl;
use fleet_testkit::TestEnv;
use rand::Rng;
use redis::AsyncCommands;

#[tokio::test]
async fn each_request_returns_only_after_the_keys_present_at_its_arrival_are_gone() {
    let env = TestEnv::with_private_redis().await;
    let mut con = connect(&env.redis_url).await;
    set_filler(&mut con, 20_000).await;

    // A small SCAN COUNT makes each pass long, so requests keep arriving mid-pass.
    let keyspace = Keyspace::new(
        RedisTarget::Single(SecretUrl::new(env.redis_url.clone())),
        200,
        1000,
    );
    let metrics = CacheMetrics::register(&Metrics::new());
    let (passes, pass_loop) = Passes::start(keyspace, vec!["org".into()], metrics.clone(), None);

    let tasks = 60;
    let rounds = 3;
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (passes, url) = (passes.clone(), env.redis_url.clone());
        set.spawn(async move {
            let mut con = connect(&url).await;
            for round in 0..rounds {
                // Stagger arrivals (not an assertion): some land mid-pass, some between.
                let pause = rand::rng().random_range(0..40);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let keys: Vec<String> = (0..5).map(|n| format!("org:t{t}:r{round}:{n}")).collect();
                set_keys(&mut con, &keys).await;
                passes
                    .invalidate(vec![Pattern {
                        rule: 0,
                        glob: format!("org:t{t}:*"),
                    }])
                    .await
                    .expect("pass succeeds");
                let left: usize = con.exists(&keys).await.unwrap();
                assert_eq!(left, 0, "task {t} round {round}: keys left after its pass");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }

    let ok = metrics
        .passes
        .get_or_create(&OutcomeLabels {
            outcome: "ok".into(),
        })
        .get();
    assert!(
        ok > 0 && ok < (tasks * rounds) as u64,
        "{ok} passes for {} requests",
        tasks * rounds
    );
    assert_eq!(
        snapshot(&mut con).await.len(),
        0,
        "every org:t* key is gone"
    );
    drop(passes);
    pass_loop.await.unwrap();
}

#[tokio::test]
async fn a_burst_of_events_is_acked_after_its_keys_are_gone_with_fewer_passes_than_events() {
    let env = TestEnv::with_private_redis().await;
    let mut con = connect(&env.redis_url).await;
    let orgs: Vec<String> = (0..40).map(|i| format!("o{i}")).collect();
    let org_refs: Vec<&str> = orgs.iter().map(String::as_str).collect();
    set_keys(&mut con, &all_keys(&org_refs)).await;
    set_filler(&mut con, 20_000).await;
    let before = snapshot(&mut con).await;

    let fleet = env.fleet(&[]).await;
    let worker = fleet_testkit::Running::spawn(|t| cache_invalidator::run(fleet.clone(), t));

    let events = 200;
    let (mut last_org, mut last_ses) = (0, 0);
    let js = Arc::new(fleet.js.clone());
    for i in 0..events {
        let org = &orgs[i % orgs.len()];
        let body = format!(r#"{{"org_code":"{org}"}}"#);
        if i % 2 == 0 {
            last_org = publish(&js, "org.updated", &body).await;
        } else {
            last_ses = publish(&js, "session.changed", &body).await;
        }
    }
    drained(&fleet.js, "org.updated", last_org, Duration::from_secs(60)).await;
    drained(
        &fleet.js,
        "session.changed",
        last_ses,
        Duration::from_secs(60),
    )
    .await;

    // Every key that existed before the events were published is gone once the consumers
    // show nothing pending and nothing awaiting an ack.
    let mut gone: Vec<String> = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        if i % 2 == 0 {
            gone.push(format!("org:{org}:"));
        } else {
            gone.push(format!("sessions:{org}:"));
        }
    }
    assert_eq!(snapshot(&mut con).await, without(&before, &gone));
    assert_eq!(dead_letters(&fleet.js).await, 0);

    let text = fleet.metrics.render();
    let passes = metric(&text, "fleet_cache_passes_total{outcome=\"ok\"}");
    assert!(
        passes >= 1.0 && passes < events as f64,
        "{passes} passes for {events} events"
    );

    worker.stop().await;
}
