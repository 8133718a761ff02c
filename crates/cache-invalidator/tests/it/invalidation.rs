//! Exactly the matching keys go: built-in and configured rules on a mentoring platform's key families across
//! orgs whose codes prefix each other; injection attempts are dead-lettered and delete nothing;
//! bad rules fail the start with one line naming the rule.

use std::time::Duration;

use crate::common::*;
use fleet_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn exactly_the_matching_keys_are_deleted() {
    let env = TestEnv::with_private_redis().await;
    let (mut con, before) = seeded(&env.redis_url).await;

    let fleet = env.fleet(&[]).await;
    let worker = fleet_testkit::Running::spawn(|t| cache_invalidator::run(fleet.clone(), t));

    let org_seq = publish(&fleet.js, "org.updated", r#"{"org_code":"acme"}"#).await;
    let ses_seq = publish(
        &fleet.js,
        "session.changed",
        r#"{"org_code":"acme_2","session_id":"s-42"}"#,
    )
    .await;
    drained(&fleet.js, "org.updated", org_seq, LIMIT).await;
    drained(&fleet.js, "session.changed", ses_seq, LIMIT).await;

    let after = snapshot(&mut con).await;
    let expected = without(&before, &["org:acme:".into(), "sessions:acme_2:".into()]);
    assert_eq!(
        after, expected,
        "exactly org:acme:* and sessions:acme_2:* are gone"
    );
    assert!(after.contains("org:acme_2:details") && after.contains("sessions:acme:upcoming"));
    assert_eq!(dead_letters(&fleet.js).await, 0);

    let text = fleet.metrics.render();
    assert_eq!(
        metric(&text, "fleet_cache_keys_deleted_total{rule=\"org\"}"),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "fleet_cache_keys_deleted_total{rule=\"sessions\"}"),
        2.0
    );

    worker.stop().await;
}

#[tokio::test]
async fn injection_attempts_are_dead_lettered_and_delete_nothing() {
    let env = TestEnv::with_private_redis().await;
    let (mut con, before) = seeded(&env.redis_url).await;

    let fleet = env.fleet(&[]).await;
    let worker = fleet_testkit::Running::spawn(|t| cache_invalidator::run(fleet.clone(), t));

    let attempts = [
        r#"{"org_code":"*"}"#,
        r#"{"org_code":"a[b]"}"#,
        r#"{"org_code":"a?"}"#,
        r#"{"org_code":"a\\b"}"#,
        r#"{"org_code":"ACME"}"#,
        r#"{"org_code":"acme:*"}"#,
        r#"{"org_code":""}"#,
        r#"{"tenant_code":"acme"}"#,
        r#"{"org_code":"acme","tenant_code":"*"}"#,
        "not json",
    ];
    let mut last = 0;
    for a in attempts {
        last = publish(&fleet.js, "org.updated", a).await;
    }
    let ses = publish(&fleet.js, "session.changed", r#"{"org_code":"*"}"#).await;
    drained(&fleet.js, "org.updated", last, LIMIT).await;
    drained(&fleet.js, "session.changed", ses, LIMIT).await;

    assert_eq!(snapshot(&mut con).await, before, "nothing was deleted");
    fleet_testkit::eventually(LIMIT, "every attempt dead-lettered", || async {
        (dead_letters(&fleet.js).await == attempts.len() as u64 + 1).then_some(())
    })
    .await;
    let letters = fleet_shared::dlq::list(&fleet.js, Some(cache_invalidator::NAME), 100)
        .await
        .unwrap();
    let reasons: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
    let code_reasons = reasons
        .iter()
        .filter(|r| r.contains("is not a valid code"))
        .count();
    // Eight bad org codes on org.updated, one on session.changed.
    assert_eq!(code_reasons, 9, "{reasons:#?}");
    assert!(letters.iter().all(|l| !l.error.contains('\n')));

    worker.stop().await;
}

#[tokio::test]
async fn configured_rules_add_subjects_and_patterns() {
    let env = TestEnv::with_private_redis().await;
    let (mut con, before) = seeded(&env.redis_url).await;

    let cfg = config_file(
        r#"
[invalidation]
[[invalidation.rules]]
name = "profiles"
subject = "profile.updated"
patterns = ["mentors:{org_code}:*", "mentees:{org_code}:*"]

[[invalidation.rules]]
name = "forms"
subject = "org.updated"
patterns = ["forms:{org_code}:*"]
"#,
    );
    let path = cfg.path().to_str().unwrap().to_owned();
    let fleet = env.fleet(&[("FLEET_CONFIG", &path)]).await;
    let worker = fleet_testkit::Running::spawn(|t| cache_invalidator::run(fleet.clone(), t));

    // The subject is outside FLEET_EVENTS' defaults: the worker must have added it.
    fleet_testkit::eventually(LIMIT, "profile.updated captured", || async {
        let mut s = fleet.js.get_stream("FLEET_EVENTS").await.ok()?;
        let info = s.info().await.ok()?;
        info.config
            .subjects
            .contains(&"profile.updated".to_string())
            .then_some(())
    })
    .await;
    let p = publish(&fleet.js, "profile.updated", r#"{"org_code":"acme_2"}"#).await;
    let o = publish(&fleet.js, "org.updated", r#"{"org_code":"beta"}"#).await;
    drained(&fleet.js, "profile.updated", p, LIMIT).await;
    drained(&fleet.js, "org.updated", o, LIMIT).await;

    let expected = without(
        &before,
        &[
            "mentors:acme_2:".into(),
            "mentees:acme_2:".into(),
            "org:beta:".into(),
            "forms:beta:".into(),
        ],
    );
    assert_eq!(snapshot(&mut con).await, expected);
    assert_eq!(dead_letters(&fleet.js).await, 0);

    worker.stop().await;
}

#[tokio::test]
async fn a_rule_naming_a_missing_placeholder_fails_the_start_in_one_line() {
    let env = TestEnv::new().await;
    let cfg = config_file(
        r#"
[[invalidation.rules]]
name = "profiles"
subject = "profile.updated"
patterns = ["mentors:{org_id}:*"]
"#,
    );
    let path = cfg.path().to_str().unwrap().to_owned();
    let fleet = env.fleet(&[("FLEET_CONFIG", &path)]).await;
    let err = tokio::time::timeout(
        LIMIT,
        cache_invalidator::run(fleet, CancellationToken::new()),
    )
    .await
    .expect("fails at once")
    .unwrap_err();
    let line = format!("{err:#}");
    assert!(line.contains("rule \"profiles\""), "{line}");
    assert!(line.contains("{org_id}"), "{line}");
    assert!(!line.contains('\n'), "{line}");

    let bad = config_file("[invalidation]\nscan_cuont = 5\n");
    let path = bad.path().to_str().unwrap().to_owned();
    let fleet = env.fleet(&[("FLEET_CONFIG", &path)]).await;
    let err = cache_invalidator::run(fleet, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("[invalidation]"), "{err:#}");
}
