//! Tenant lifecycle across workers: archiving a tenant clears its org's cache through the
//! cache-invalidator (real Redis on a private server), and the scheduler's built-in purge task
//! purges a tenant archived longer than `[provisioner] purge_after` through the provisioner.

use std::time::Duration;

use fleet_testkit::{eventually, Running, TestEnv};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(90);

async fn js(env: &TestEnv) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap())
}

async fn publish(js: &async_nats::jetstream::Context, subject: &str, body: serde_json::Value) {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", Uuid::new_v4().to_string().as_str());
    js.publish_with_headers(
        subject.to_owned(),
        h,
        serde_json::to_vec(&body).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn status(pool: &PgPool, id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM fleet.tenants WHERE tenant_id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn create(env: &TestEnv, pool: &PgPool, code: &str, org: &str) -> Uuid {
    let js = js(env).await;
    let id = Uuid::new_v4();
    publish(
        &js,
        "tenant.created",
        json!({"tenant_id": id, "code": code, "name": code, "plan": "basic", "org_code": org}),
    )
    .await;
    eventually(WAIT, "tenant active", || async {
        (status(pool, id).await.as_deref() == Some("active")).then_some(())
    })
    .await;
    id
}

async fn keys(con: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut k: Vec<String> = redis::cmd("KEYS").arg("*").query_async(con).await.unwrap();
    k.sort();
    k
}

#[tokio::test]
async fn archiving_a_tenant_clears_its_org_cache() {
    let env = TestEnv::with_private_redis().await;
    let pool = env.db.pool().await;
    let prov = {
        let f = env.fleet(&[]).await;
        Running::spawn(|t| provisioner::run(f, t))
    };
    let cache = {
        let f = env.fleet(&[]).await;
        Running::spawn(|t| cache_invalidator::run(f, t))
    };
    let id = create(&env, &pool, "acme", "acme_org").await;

    let mut con = redis::Client::open(env.redis_url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    for k in [
        "org:acme_org:profile",
        "org:acme_org:members:1",
        "sessions:acme_org:s1",
        "org:acme_org2:profile",
        "org:other:profile",
        "sessions:other:s1",
    ] {
        pipe.set(k, "v").ignore();
    }
    pipe.query_async::<()>(&mut con).await.unwrap();

    publish(&js(&env).await, "tenant.deleted", json!({"code": "acme"})).await;
    eventually(WAIT, "acme_org's keys cleared", || {
        let mut con = con.clone();
        async move {
            let k = keys(&mut con).await;
            (!k.iter().any(|k| k.contains(":acme_org:"))).then_some(())
        }
    })
    .await;
    assert_eq!(status(&pool, id).await.as_deref(), Some("deleted"));
    assert_eq!(
        keys(&mut con).await,
        vec![
            "org:acme_org2:profile",
            "org:other:profile",
            "sessions:other:s1"
        ],
        "only the archived tenant's org lost keys"
    );
    // The invalidator's durable for the announcement has nothing left to do.
    let stream = js(&env).await.get_stream("FLEET_EVENTS").await.unwrap();
    eventually(WAIT, "cache-invalidator acked the announcement", || async {
        let mut c: async_nats::jetstream::consumer::PullConsumer = stream
            .get_consumer("cache-invalidator-tenant_lifecycle_deleted")
            .await
            .ok()?;
        let i = c.info().await.ok()?;
        (i.num_pending == 0 && i.num_ack_pending == 0 && i.delivered.stream_sequence > 0)
            .then_some(())
    })
    .await;
    prov.stop().await;
    cache.stop().await;
}

#[tokio::test]
async fn the_scheduler_purges_tenants_archived_longer_than_purge_after() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fleet.toml");
    std::fs::write(&cfg, "[provisioner]\npurge_after = \"1h\"\n").unwrap();
    let cfg = cfg.to_str().unwrap().to_owned();
    let extra = [("FLEET_CONFIG", cfg.as_str())];
    let prov = {
        let f = env.fleet(&extra).await;
        Running::spawn(|t| provisioner::run(f, t))
    };
    let old = create(&env, &pool, "old", "old_org").await;
    let young = create(&env, &pool, "young", "young_org").await;
    let js = js(&env).await;
    publish(&js, "tenant.deleted", json!({"code": "old"})).await;
    publish(&js, "tenant.deleted", json!({"code": "young"})).await;
    eventually(WAIT, "both archived", || async {
        (status(&pool, old).await.as_deref() == Some("deleted")
            && status(&pool, young).await.as_deref() == Some("deleted"))
        .then_some(())
    })
    .await;
    let archive: String =
        sqlx::query_scalar("SELECT schema_name FROM fleet.tenants WHERE tenant_id = $1")
            .bind(old)
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query(
        "UPDATE fleet.tenants SET deleted_at = now() - interval '2 hours' WHERE tenant_id = $1",
    )
    .bind(old)
    .execute(&pool)
    .await
    .unwrap();

    let sched = {
        let f = env.fleet(&extra).await;
        Running::spawn(|t| scheduler::run(f, t))
    };
    eventually(WAIT, "the old archive purged", || async {
        status(&pool, old).await.is_none().then_some(())
    })
    .await;
    let schema_left: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(&archive)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!schema_left, "{archive} dropped");
    assert_eq!(status(&pool, young).await.as_deref(), Some("deleted"));
    let purged_by: String = sqlx::query_scalar(
        "SELECT event_id FROM fleet.tenant_events WHERE tenant_id = $1 AND status = 'purged'",
    )
    .bind(old)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(purged_by, format!("purge:{old}"));
    sched.stop().await;
    prov.stop().await;
}
