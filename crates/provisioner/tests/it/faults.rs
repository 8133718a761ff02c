//! Faults in-process: the worker stopped in the middle of a burst and replaced, and Postgres
//! unreachable for a while. Either way every tenant ends up provisioned exactly once (one row,
//! one schema, one set of configs, one announcement) and nothing is dead-lettered.

use std::io::Write as _;
use std::time::Duration;

use crate::common::*;
use fleet_testkit::{eventually, TcpProxy, TestEnv};

async fn assert_all_provisioned_once(
    pool: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    codes: &[String],
) {
    for code in codes {
        assert_provisioned_once(pool, code).await;
    }
    wait_idle(js).await;
    let n = codes.len() as i64;
    assert_eq!(tenant_rows(pool).await, n);
    assert_eq!(tenant_schemas(pool).await, n);
    assert_eq!(
        count(pool, "SELECT count(*) FROM fleet.tenant_configurations").await,
        4 * n,
        "one set of basic-plan configs per tenant"
    );
    assert!(dead_letters(js).await.is_empty());
    assert_eq!(announcements(js).await, codes.len());
}

#[tokio::test]
async fn a_worker_stopped_mid_burst_is_replaced_without_loss_or_doubling() {
    let env = TestEnv::new().await;
    let mut cfg = tempfile::NamedTempFile::new().unwrap();
    // A short ack wait: messages a pull had in flight to the stopped worker come back after it.
    writeln!(cfg, "[provisioner]\nconcurrency = 2\nack_wait = \"3s\"").unwrap();
    let cfg = cfg.path().to_str().unwrap().to_owned();
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let first = Worker::start(&env, &[("FLEET_CONFIG", &cfg)]).await;

    let codes: Vec<String> = (0..40).map(|i| format!("burst_{i}")).collect();
    for code in &codes {
        publish_json(&js, "tenant.created", &created(code, "basic").1).await;
    }
    eventually(WAIT, "a few tenants provisioned", || async {
        let active = count(
            &pool,
            "SELECT count(*) FROM fleet.tenants WHERE status = 'active'",
        )
        .await;
        (active >= 3).then_some(())
    })
    .await;
    first.stop().await;

    let second = Worker::start(&env, &[("FLEET_CONFIG", &cfg)]).await;
    assert_all_provisioned_once(&pool, &js, &codes).await;
    second.stop().await;
}

#[tokio::test]
async fn postgres_unreachable_for_a_while_is_retried_then_processed() {
    let env = TestEnv::new().await;
    let proxy = TcpProxy::start(&fleet_testkit::db::server_addr())
        .await
        .unwrap();
    let url = format!("postgres://postgres@{}/{}", proxy.addr(), env.db.name);
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, &[("DATABASE_URL", &url)]).await;

    publish_json(&js, "tenant.created", &created("before", "basic").1).await;
    wait_active(&pool, "before").await;

    proxy.cut();
    let mut codes = vec!["before".to_string()];
    for i in 0..5 {
        let code = format!("during_{i}");
        publish_json(&js, "tenant.created", &created(&code, "basic").1).await;
        codes.push(code);
    }
    eventually(WAIT, "the worker retrying", || async {
        (worker.retried() >= 2).then_some(())
    })
    .await;
    assert_eq!(tenant_rows(&pool).await, 1, "nothing written while cut");
    tokio::time::sleep(Duration::from_millis(500)).await; // stay down a little longer
    proxy.restore();

    assert_all_provisioned_once(&pool, &js, &codes).await;
    worker.stop().await;
}
