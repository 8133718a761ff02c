//! Tenants over several Postgres servers: a second, private server (`fleet_testkit::PgServer`)
//! configured as `[databases.shard_b]` with `tenants = true`. Placement by capacity, by the
//! event's `database` and by plan; the registry records each tenant's database; the schema and
//! its ledger live there and nowhere else; `tenant.migrate` goes there; a server that is down
//! stalls only its own tenants and `/readyz` names it.

use crate::common::*;
use fleet_testkit::{eventually, PgServer, TestEnv};
use serde_json::json;
use sqlx::PgPool;

struct TwoServers {
    env: TestEnv,
    shard: PgServer,
    shard_url: String,
    _cfg: tempfile::NamedTempFile,
    cfg_path: String,
}

impl TwoServers {
    async fn new(extra_toml: &str) -> TwoServers {
        let env = TestEnv::new().await;
        let shard = PgServer::start().expect("start a second Postgres");
        let shard_url = shard.create_database("tenants_b").await.unwrap();
        let cfg = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            cfg.path(),
            format!(
                "[databases.control]\ncapacity = 1\n\n[databases.shard_b]\nurl = \"{shard_url}\"\ntenants = true\ncapacity = 3\n\n{extra_toml}"
            ),
        )
        .unwrap();
        let cfg_path = cfg.path().to_str().unwrap().to_owned();
        TwoServers {
            env,
            shard,
            shard_url,
            _cfg: cfg,
            cfg_path,
        }
    }

    async fn worker(&self) -> Worker {
        Worker::start(&self.env, &[("FLEET_CONFIG", &self.cfg_path)]).await
    }

    async fn shard_pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.shard_url)
            .await
            .unwrap()
    }
}

async fn database_of(pool: &PgPool, code: &str) -> String {
    sqlx::query_scalar("SELECT database FROM fleet.tenants WHERE code = $1")
        .bind(code)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn tenants_are_placed_by_capacity_by_name_and_by_plan_and_live_where_recorded() {
    let s = TwoServers::new("[provisioner]\nplan_databases = { enterprise = \"control\" }\n").await;
    let pool = s.env.db.pool().await;
    let shard = s.shard_pool().await;
    let js = js(&s.env).await;
    let worker = s.worker().await;

    // One at a time, so each placement sees the previous ones: capacity 1 against 3.
    let codes: Vec<String> = (1..=8).map(|i| format!("p{i}")).collect();
    for code in &codes {
        publish_json(&js, "tenant.created", &created(code, "basic").1).await;
        wait_active(&pool, code).await;
    }
    let mut on_control = 0;
    for code in &codes {
        let db = database_of(&pool, code).await;
        let schema = format!("tenant_{code}");
        let (here, there) = if db == "control" {
            on_control += 1;
            (&pool, &shard)
        } else {
            assert_eq!(db, "shard_b");
            (&shard, &pool)
        };
        assert!(schema_exists(here, &schema).await, "{schema} on {db}");
        assert!(
            !schema_exists(there, &schema).await,
            "{schema} only on {db}"
        );
        assert_eq!(
            tables(here, &schema).await.len() as i64,
            BUILT_IN_TABLES + 1
        );
        assert_eq!(ledger(here, &schema).await.len() as i64, BUILT_IN_VERSION);
    }
    // Fewest tenants relative to capacity (ties by name): control 1 of 1, then shard_b.
    assert_eq!(
        on_control, 2,
        "2 of 8 on control (capacity 1), 6 on shard_b (capacity 3)"
    );

    // By plan, and by the event's own `database` (which wins over the plan).
    publish_json(&js, "tenant.created", &created("big", "enterprise").1).await;
    let (_, mut named) = created("named", "enterprise");
    named["database"] = json!("shard_b");
    publish_json(&js, "tenant.created", &named).await;
    wait_active(&pool, "big").await;
    wait_active(&pool, "named").await;
    assert_eq!(database_of(&pool, "big").await, "control");
    assert_eq!(database_of(&pool, "named").await, "shard_b");
    assert!(schema_exists(&shard, "tenant_named").await);

    // A database that is not configured: dead-lettered with one line naming the configured ones.
    let (_, mut bad) = created("lost", "basic");
    bad["database"] = json!("nowhere");
    publish_json(&js, "tenant.created", &bad).await;
    let letters = wait_dead_letters(&js, 1).await;
    assert_eq!(letters.len(), 1);
    assert!(
        letters[0].error.contains("unknown database")
            && letters[0].error.contains("control, shard_b")
            && !letters[0].error.contains('\n'),
        "{}",
        letters[0].error
    );
    assert!(tenant(&pool, "lost").await.is_none(), "nothing half-done");

    // tenant.migrate of a tenant on shard_b goes there (nothing to apply: it is current) and
    // finds it; its announcements carry the database.
    publish_json(&js, "tenant.migrate", &json!({"code": "named"})).await;
    wait_idle(&js).await;
    worker.stop().await;
    assert_eq!(
        dead_letters(&js).await.len(),
        1,
        "tenant.migrate was not refused"
    );
    assert!(
        !schema_exists(&pool, "tenant_named").await,
        "tenant.migrate worked on shard_b, not on the control database"
    );
    let mut stream = js.get_stream("FLEET_EVENTS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut databases = std::collections::BTreeMap::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        if m.subject.as_str() == "tenant.provisioned" {
            let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            databases.insert(
                body["code"].as_str().unwrap().to_owned(),
                body["database"].as_str().unwrap().to_owned(),
            );
        }
    }
    assert_eq!(databases["named"], "shard_b");
    assert_eq!(databases["big"], "control");
    assert_eq!(databases.len(), 10);
}

#[tokio::test]
async fn a_tenant_server_that_is_down_stalls_only_its_tenants_and_readyz_names_it() {
    let mut s = TwoServers::new("").await;
    let pool = s.env.db.pool().await;
    let js = js(&s.env).await;
    let worker = s.worker().await;
    let (addr, _http) = fleet_shared::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        worker.fleet.http_state(false),
        worker.running.token.clone(),
    )
    .await
    .unwrap();

    s.shard.stop();
    let (_, mut stalled) = created("stalled", "basic");
    stalled["database"] = json!("shard_b");
    publish_json(&js, "tenant.created", &stalled).await;
    let (_, mut fine) = created("fine", "basic");
    fine["database"] = json!("control");
    publish_json(&js, "tenant.created", &fine).await;
    wait_active(&pool, "fine").await;

    let readyz = eventually(WAIT, "/readyz names shard_b", || async {
        let body = http_get(addr, "/readyz").await;
        body.contains("database shard_b unavailable")
            .then_some(body)
    })
    .await;
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(readyz.contains("postgres ok"), "{readyz}");
    eventually(WAIT, "the stalled tenant retried", || async {
        (worker.retried() >= 1).then_some(())
    })
    .await;
    assert_eq!(
        tenant(&pool, "stalled").await.unwrap().status,
        "provisioning"
    );

    // Back up: the retry completes the tenant, exactly once, nothing dead-lettered.
    s.shard.restart().unwrap();
    wait_active(&pool, "stalled").await;
    let shard = s.shard_pool().await;
    assert_eq!(
        ledger(&shard, "tenant_stalled").await.len() as i64,
        BUILT_IN_VERSION
    );
    wait_idle(&js).await;
    assert!(dead_letters(&js).await.is_empty());
    assert_eq!(tenant_rows(&pool).await, 2);
    worker.stop().await;
}

/// A bare HTTP/1.1 GET; returns the status line, headers and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn archive_and_purge_of_tenants_on_another_server_including_a_redelivery_after_a_crash() {
    let s = TwoServers::new("").await;
    let pool = s.env.db.pool().await;
    let shard = s.shard_pool().await;
    let js = js(&s.env).await;
    let worker = s.worker().await;
    for code in ["arc", "gone"] {
        let (_, mut body) = created(code, "basic");
        body["database"] = json!("shard_b");
        publish_json(&js, "tenant.created", &body).await;
        wait_active(&pool, code).await;
    }
    let arc = tenant(&pool, "arc").await.unwrap();
    let archived = provisioner::lifecycle::delete::remote_archive_name("arc", arc.tenant_id);

    // A crash after the rename on shard_b, before the registry changed: the schema is already
    // renamed there when the (re)delivery comes; it finishes the archive without renaming again.
    sqlx::raw_sql(&format!("ALTER SCHEMA tenant_arc RENAME TO \"{archived}\""))
        .execute(&shard)
        .await
        .unwrap();
    publish_json(
        &js,
        "tenant.deleted",
        &json!({"code": "arc", "mode": "archive"}),
    )
    .await;
    eventually(WAIT, "arc archived", || async {
        let t = tenant(&pool, "arc").await?;
        (t.status == "deleted").then_some(())
    })
    .await;
    let t = tenant(&pool, "arc").await.unwrap();
    assert_eq!(t.schema_name, archived);
    assert!(schema_exists(&shard, &archived).await);
    assert!(!schema_exists(&shard, "tenant_arc").await);
    assert!(
        !schema_exists(&pool, &archived).await,
        "nothing on the control database"
    );

    // Purge of the archived tenant, and of a live one: dropped on shard_b, rows gone.
    publish_json(
        &js,
        "tenant.deleted",
        &json!({"code": "arc", "tenant_id": arc.tenant_id, "mode": "purge"}),
    )
    .await;
    publish_json(
        &js,
        "tenant.deleted",
        &json!({"code": "gone", "mode": "purge"}),
    )
    .await;
    eventually(WAIT, "both purged", || async {
        (tenant_rows(&pool).await == 0).then_some(())
    })
    .await;
    assert!(!schema_exists(&shard, &archived).await);
    assert!(!schema_exists(&shard, "tenant_gone").await);
    wait_idle(&js).await;
    assert!(dead_letters(&js).await.is_empty());
    worker.stop().await;
}
