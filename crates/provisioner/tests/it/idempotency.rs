//! At-least-once delivery, effect exactly once: the same event twice (same message id, which
//! JetStream drops, and different ids, which reach the worker) leaves one row, one schema, one
//! set of configs and one announcement; a conflicting event is dead-lettered and the existing
//! tenant is untouched.

use crate::common::*;
use fleet_testkit::TestEnv;
use serde_json::json;

#[tokio::test]
async fn duplicates_under_the_same_or_different_message_ids_provision_once() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, &[]).await;

    let (id, body) = created("acme", "premium");
    let payload = serde_json::to_vec(&body).unwrap();
    publish(&js, "tenant.created", "same", payload.clone()).await;
    publish(&js, "tenant.created", "same", payload.clone()).await;
    assert_provisioned_once(&pool, "acme").await;
    // Copies under new ids, one of them while the first may still be in flight.
    publish(&js, "tenant.created", "other-1", payload.clone()).await;
    publish(&js, "tenant.created", "other-2", payload.clone()).await;
    wait_idle(&js).await;

    let t = assert_provisioned_once(&pool, "acme").await;
    assert_eq!(t.tenant_id, id);
    assert_eq!(tenant_rows(&pool).await, 1);
    assert_eq!(tenant_schemas(&pool).await, 1);
    assert_eq!(configs(&pool, id).await.len(), 5);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM fleet.tenant_configurations").await,
        5
    );
    assert!(dead_letters(&js).await.is_empty());
    assert_eq!(announcements(&js).await, 1, "re-announcements deduplicated");
    worker.stop().await;
}

#[tokio::test]
async fn concurrent_copies_race_for_one_tenant() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, &[]).await;
    let (_, body) = created("racer", "basic");
    for i in 0..6 {
        publish(
            &js,
            "tenant.created",
            &format!("copy-{i}"),
            serde_json::to_vec(&body).unwrap(),
        )
        .await;
    }
    wait_idle(&js).await;
    assert_provisioned_once(&pool, "racer").await;
    assert_eq!(tenant_rows(&pool).await, 1);
    assert_eq!(tenant_schemas(&pool).await, 1);
    assert!(dead_letters(&js).await.is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn conflicting_tenant_id_or_code_is_dead_lettered_and_leaves_the_tenant_untouched() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, &[]).await;

    let (id, body) = created("acme", "basic");
    publish_json(&js, "tenant.created", &body).await;
    let before = assert_provisioned_once(&pool, "acme").await;
    let configs_before = configs(&pool, id).await;

    // Same code, another tenant_id.
    let (other_id, mut clash) = created("acme", "enterprise");
    clash["name"] = json!("Impostor");
    publish_json(&js, "tenant.created", &clash).await;
    // Same tenant_id, another code.
    let (_, mut renamed) = created("acme2", "basic");
    renamed["tenant_id"] = json!(id);
    publish_json(&js, "tenant.created", &renamed).await;

    // Both are dead-lettered (in either order: the worker handles messages concurrently).
    let letters = wait_dead_letters(&js, 2).await;
    let code_clash = letters
        .iter()
        .find(|l| l.error.contains(&other_id.to_string()))
        .expect("a letter for the code clash");
    assert!(
        code_clash.error.contains("conflict") && code_clash.error.contains(&id.to_string()),
        "{}",
        code_clash.error
    );
    let id_clash = letters
        .iter()
        .find(|l| l.error.contains("acme2"))
        .expect("a letter for the tenant_id clash");
    assert!(id_clash.error.contains("conflict"), "{}", id_clash.error);
    let after = tenant(&pool, "acme").await.unwrap();
    assert_eq!(after.tenant_id, id);
    assert_eq!(after.name, before.name);
    assert_eq!(after.plan, "basic");
    assert_eq!(after.provisioned_at, before.provisioned_at);
    assert_eq!(configs(&pool, id).await, configs_before);
    assert!(configs(&pool, other_id).await.is_empty());
    assert!(!schema_exists(&pool, "tenant_acme2").await);
    assert_eq!(tenant_rows(&pool).await, 1);
    worker.stop().await;
}
