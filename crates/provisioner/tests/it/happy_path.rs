//! `tenant.created` for every plan: the registry row, the schema with the 23 mentoring tables and
//! its ledger, the plan's configs (built-in defaults, FLEET_CONFIG overrides, per-tenant overrides), and
//! the `tenant.provisioned` announcement with its deterministic id and child traceparent.

use std::io::Write as _;

use crate::common::*;
use async_nats::HeaderMap;
use fleet_testkit::TestEnv;
use futures::StreamExt;
use serde_json::json;

#[tokio::test]
async fn every_built_in_plan_gets_its_seed_004_defaults() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, &[]).await;

    let plans = [
        ("basic", 4, json!(1000), json!(8)),
        ("premium", 5, json!(10000), json!(10)),
        ("enterprise", 7, json!(100000), json!(12)),
        ("custom", 7, json!(100000), json!(12)),
    ];
    let mut ids = Vec::new();
    for (plan, ..) in &plans {
        let (id, body) = created(&format!("t_{plan}"), plan);
        publish_json(&js, "tenant.created", &body).await;
        ids.push(id);
    }
    for ((plan, keys, rate, min_len), id) in plans.iter().zip(&ids) {
        let t = assert_provisioned_once(&pool, &format!("t_{plan}")).await;
        assert_eq!(t.tenant_id, *id);
        assert_eq!(t.plan, *plan);
        assert_eq!(t.name, format!("Tenant t_{plan}"));
        let c = configs(&pool, *id).await;
        assert_eq!(c.len(), *keys, "{plan}: {c:?}");
        assert_eq!(c["api.rate_limit"], *rate, "{plan}");
        assert_eq!(c["security.password_policy"]["minLength"], *min_len);
    }
    let enterprise = configs(&pool, ids[2]).await;
    assert_eq!(
        configs(&pool, ids[3]).await,
        enterprise,
        "custom = enterprise"
    );
    assert_eq!(enterprise["file_upload.max_size"], json!(1073741824000u64));
    assert_eq!(enterprise["features.advanced_analytics"], json!(true));
    let premium = configs(&pool, ids[1]).await;
    assert_eq!(premium["features.biometric_auth"], json!(true));
    assert!(!premium.contains_key("features.ai_verification"));

    // Every mentoring table carries tenant_code and organization_code.
    let missing = count(
        &pool,
        "SELECT count(*) FROM information_schema.tables t
          WHERE t.table_schema = 'tenant_t_basic' AND t.table_name <> 'schema_migrations'
            AND (SELECT count(*) FROM information_schema.columns c
                  WHERE c.table_schema = t.table_schema AND c.table_name = t.table_name
                    AND c.column_name IN ('tenant_code', 'organization_code')) <> 2",
    )
    .await;
    assert_eq!(missing, 0);
    assert_eq!(tenant_rows(&pool).await, 4);
    assert_eq!(tenant_schemas(&pool).await, 4);
    worker.stop().await;
}

#[tokio::test]
async fn config_file_and_tenant_overrides_merge_in_order() {
    let env = TestEnv::new().await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(
        file,
        "[plans.basic]\n\"api.rate_limit\" = 2000\n\"features.sso\" = true\n\
         [plans.startup]\n\"session.timeout\" = 900\n\"api.rate_limit\" = 50\n\
         [provisioner]\nconcurrency = 2"
    )
    .unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, &[("FLEET_CONFIG", &path)]).await;

    let (basic_id, mut basic) = created("acme", "basic");
    basic["org_code"] = json!("acme_org");
    basic["config_overrides"] = json!({
        "api.rate_limit": 3000,
        "security.password_policy": {"minLength": 16},
        "branding.color": "#ff0000"
    });
    publish_json(&js, "tenant.created", &basic).await;
    let (startup_id, startup) = created("tiny", "startup");
    publish_json(&js, "tenant.created", &startup).await;

    let t = assert_provisioned_once(&pool, "acme").await;
    assert_eq!(t.org_code.as_deref(), Some("acme_org"));
    let c = configs(&pool, basic_id).await;
    assert_eq!(c["api.rate_limit"], json!(3000), "tenant override wins");
    assert_eq!(c["features.sso"], json!(true), "file override adds a key");
    assert_eq!(c["session.timeout"], json!(3600), "untouched default stays");
    assert_eq!(
        c["security.password_policy"],
        json!({"minLength": 16}),
        "an override replaces the whole value"
    );
    assert_eq!(c["branding.color"], json!("#ff0000"));
    assert_eq!(c.len(), 6);

    assert_provisioned_once(&pool, "tiny").await;
    let c = configs(&pool, startup_id).await;
    assert_eq!(c.len(), 2);
    assert_eq!(c["session.timeout"], json!(900));
    worker.stop().await;
}

#[tokio::test]
async fn tenant_provisioned_is_announced_with_a_deterministic_id_and_child_trace() {
    let env = TestEnv::new().await;
    let js = js(&env).await;
    let client = async_nats::connect(env.nats.url()).await.unwrap();
    let mut announced = client.subscribe("tenant.provisioned").await.unwrap();
    let worker = Worker::start(&env, &[]).await;

    let (id, body) = created("acme", "premium");
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", parent);
    publish_with(
        &js,
        "tenant.created",
        "m-1",
        serde_json::to_vec(&body).unwrap(),
        headers,
    )
    .await;

    let msg = tokio::time::timeout(WAIT, announced.next())
        .await
        .expect("tenant.provisioned within the wait")
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(
        v,
        json!({"tenant_id": id, "code": "acme", "schema": "tenant_acme", "schema_version": 5, "plan": "premium", "database": "control"})
    );
    let h = msg.headers.unwrap();
    assert_eq!(
        h.get(async_nats::header::NATS_MESSAGE_ID).unwrap().as_str(),
        format!("tenant.provisioned:{id}:5")
    );
    let tp = h.get("traceparent").unwrap().as_str();
    assert_eq!(&tp[3..35], &parent[3..35], "same trace id");
    assert_ne!(&tp[36..52], &parent[36..52], "new span id");
    wait_idle(&js).await;
    assert_eq!(announcements(&js).await, 1);
    worker.stop().await;
}
