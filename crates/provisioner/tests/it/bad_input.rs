//! Bad input is dead-lettered at once with a one-line reason and leaves nothing behind: no
//! registry row, no schema, no configs; the worker keeps going (a good event after the bad ones
//! is provisioned).

use crate::common::*;
use fleet_testkit::TestEnv;
use serde_json::json;

#[tokio::test]
async fn every_kind_of_bad_input_is_dead_lettered_with_a_reason_and_leaves_nothing() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, &[]).await;
    let id = uuid::Uuid::new_v4();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "tenant.created",
            serde_json::to_vec(&json!({"tenant_id": id, "code": "Acme; DROP SCHEMA public", "name": "A", "plan": "basic"})).unwrap(),
            "is not a valid code",
        ),
        (
            "tenant.created",
            serde_json::to_vec(&json!({"tenant_id": id, "code": "acme", "name": "A", "plan": "gold"})).unwrap(),
            "unknown plan \"gold\"",
        ),
        (
            "tenant.created",
            serde_json::to_vec(&json!({"code": "acme", "name": "A", "plan": "basic"})).unwrap(),
            "missing field `tenant_id`",
        ),
        ("tenant.created", b"{\"tenant_id\": \"".to_vec(), "not valid JSON"),
        (
            "tenant.created",
            serde_json::to_vec(&json!({"tenant_id": id, "code": "acme", "name": "  ", "plan": "basic"})).unwrap(),
            "name is empty",
        ),
        (
            "tenant.created",
            serde_json::to_vec(&json!({"tenant_id": id, "code": "acme", "name": "A", "plan": "basic",
                "config_overrides": {"x'; DROP TABLE fleet.tenants; --": 1}})).unwrap(),
            "is not a config key",
        ),
        ("tenant.migrate", b"{\"code\": \"../etc\"}".to_vec(), "is not a valid code"),
        ("tenant.migrate", b"{}".to_vec(), "missing field `code`"),
    ];
    for (i, (subject, payload, _)) in cases.iter().enumerate() {
        publish(&js, subject, &format!("bad-{i}"), payload.clone()).await;
    }
    let letters = wait_dead_letters(&js, cases.len()).await;
    assert_eq!(letters.len(), cases.len());
    // Matched by payload: the worker handles messages concurrently, so letters may come in any
    // order.
    for (subject, payload, needle) in &cases {
        let letter = letters
            .iter()
            .find(|l| l.raw_payload.as_ref() == payload.as_slice())
            .unwrap_or_else(|| panic!("no letter for {}", String::from_utf8_lossy(payload)));
        assert_eq!(letter.subject, *subject);
        assert!(
            letter.error.contains(needle),
            "{needle:?} not in {:?}",
            letter.error
        );
        assert!(!letter.error.contains('\n'));
        assert_eq!(letter.delivery_count, Some(1), "dead-lettered at once");
    }

    // The worker is still going, and nothing of the bad events exists.
    let (_, good) = created("good", "basic");
    publish_json(&js, "tenant.created", &good).await;
    assert_provisioned_once(&pool, "good").await;
    wait_idle(&js).await;
    assert_eq!(tenant_rows(&pool).await, 1);
    assert_eq!(tenant_schemas(&pool).await, 1);
    assert!(!schema_exists(&pool, "tenant_acme").await);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM fleet.tenant_configurations").await,
        4
    );
    assert!(schema_exists(&pool, "public").await);
    worker.stop().await;
}

#[tokio::test]
async fn a_bad_plan_section_fails_start_with_one_line_naming_it() {
    let env = TestEnv::new().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fleet.toml");
    std::fs::write(&path, "[plans.basic]\n\"bad key'\" = 1\n").unwrap();
    let fleet = env.fleet(&[("FLEET_CONFIG", path.to_str().unwrap())]).await;
    let err = provisioner::run(fleet, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("FLEET_CONFIG [plans.basic]"), "{err}");
    assert!(!err.contains('\n'));

    std::fs::write(&path, "[provisioner]\nconcurency = 2\n").unwrap();
    let fleet = env.fleet(&[("FLEET_CONFIG", path.to_str().unwrap())]).await;
    let err = provisioner::run(fleet, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("[provisioner]"), "{err}");
}
