//! Tenant lifecycle after creation, through the real worker on real services: plan changes
//! (re-merge, overrides kept, audited), config set/unset with encryption, a wrong key and
//! rotation, suspend/resume, archive then re-create of the same code, purge, every refusal
//! dead-lettered with one line and nothing changed, and redelivery of every event harmless.

use std::time::Duration;

use crate::common::*;
use async_nats::jetstream;
use async_nats::HeaderMap;
use fleet_shared::config_keys::{ConfigKeys, Sealed};
use fleet_shared::{Handler, Incoming};
use fleet_testkit::{eventually, TestEnv};
use provisioner::lifecycle::{purge, rotate, AuditRow};
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

const K1: &str = "k1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const K2: &str = "k2:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const K1_WRONG: &str = "k1:0000000000000000000000000000000000000000000000000000000000000000";

async fn audit_row(pool: &PgPool, event_id: &str) -> Option<AuditRow> {
    sqlx::query_as(
        "SELECT id, tenant_id, code, org_code, event, event_id, actor, status, old, new, at
           FROM fleet.tenant_events WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Publishes an event under a fresh id (with an actor) and waits for its audit row.
async fn apply(pool: &PgPool, js: &jetstream::Context, subject: &str, body: Value) -> AuditRow {
    let id = Uuid::new_v4().to_string();
    let mut h = HeaderMap::new();
    h.insert("Fleet-Actor", "test:alice");
    publish_with(js, subject, &id, serde_json::to_vec(&body).unwrap(), h).await;
    eventually(WAIT, &format!("{subject} applied"), || audit_row(pool, &id)).await
}

/// Everything a lifecycle change could touch, to prove a refusal changed nothing.
async fn snapshot(pool: &PgPool) -> Value {
    sqlx::query_scalar(
        "SELECT json_build_object(
            'tenants', (SELECT json_agg(t ORDER BY tenant_id) FROM fleet.tenants t),
            'configs', (SELECT json_agg(c ORDER BY tenant_id, config_key) FROM fleet.tenant_configurations c),
            'audit', (SELECT count(*) FROM fleet.tenant_events),
            'schemas', (SELECT json_agg(nspname ORDER BY nspname) FROM pg_namespace
                         WHERE nspname LIKE 'tenant\\_%' OR nspname LIKE 'archived\\_%'))",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Publishes an event that must be refused: waits for its dead letter, checks the reason is
/// one line containing `needle`, and that nothing changed.
async fn refuse(pool: &PgPool, js: &jetstream::Context, subject: &str, body: Value, needle: &str) {
    let before = snapshot(pool).await;
    let id = Uuid::new_v4().to_string();
    publish(js, subject, &id, serde_json::to_vec(&body).unwrap()).await;
    let letter = eventually(WAIT, &format!("{subject} dead-lettered"), || async {
        dead_letters(js).await.into_iter().find(|l| {
            fleet_shared::publish::header_value(&l.headers, "Fleet-Original-Msg-Id")
                == Some(id.as_str())
        })
    })
    .await;
    assert!(letter.error.contains(needle), "{subject}: {}", letter.error);
    assert!(!letter.error.contains('\n'));
    assert_eq!(
        snapshot(pool).await,
        before,
        "{subject} refused but changed something"
    );
}

/// The row of config `key` among `rows` (of [`config_rows`]), which must be there.
fn row_of<'a>(
    rows: &'a [(String, Value, bool, String)],
    key: &str,
) -> &'a (String, Value, bool, String) {
    rows.iter()
        .find(|r| r.0 == key)
        .unwrap_or_else(|| panic!("no {key} in {rows:?}"))
}

/// The (value, source) of config `key` among `rows` (of [`config_rows`]), if it is there.
fn source_of(rows: &[(String, Value, bool, String)], key: &str) -> Option<(Value, String)> {
    rows.iter()
        .find(|r| r.0 == key)
        .map(|r| (r.1.clone(), r.3.clone()))
}

/// Asserts that each `(key, value, source)` of `want` stands so among `rows`.
fn assert_sources(rows: &[(String, Value, bool, String)], want: &[(&str, Value, &str)]) {
    for (key, value, source) in want {
        assert_eq!(
            source_of(rows, key),
            Some((value.clone(), source.to_string())),
            "{key}"
        );
    }
}

async fn config_rows(pool: &PgPool, tenant_id: Uuid) -> Vec<(String, Value, bool, String)> {
    sqlx::query_as(
        "SELECT config_key, config_value, is_encrypted, source FROM fleet.tenant_configurations
          WHERE tenant_id = $1 ORDER BY config_key",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn status(pool: &PgPool, tenant_id: Uuid) -> String {
    sqlx::query_scalar("SELECT status FROM fleet.tenants WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn create(pool: &PgPool, js: &jetstream::Context, body: Value) -> Uuid {
    let code = body["code"].as_str().unwrap().to_owned();
    publish_json(js, "tenant.created", &body).await;
    eventually(WAIT, &format!("{code} active"), || async {
        tenant(pool, &code)
            .await
            .filter(|t| t.status == "active")
            .map(|t| t.tenant_id)
    })
    .await
}

/// Creates a fresh tenant `code` on `plan` and waits until it is active; its id.
async fn create_new(pool: &PgPool, js: &jetstream::Context, code: &str, plan: &str) -> Uuid {
    let (id, body) = created(code, plan);
    create(pool, js, body).await;
    id
}

/// A fresh environment, its pool and JetStream, and a provisioner started with `extra`.
async fn started(extra: &[(&str, &str)]) -> (TestEnv, PgPool, jetstream::Context, Worker) {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let js = js(&env).await;
    let worker = Worker::start(&env, extra).await;
    (env, pool, js, worker)
}

#[tokio::test]
async fn plan_change_up_and_down_keeps_overrides_and_is_audited() {
    let (_env, pool, js, worker) = started(&[]).await;
    let (id, mut body) = created("acme", "basic");
    body["config_overrides"] = json!({"api.rate_limit": 5, "custom.flag": "on"});
    create(&pool, &js, body).await;

    let rows = config_rows(&pool, id).await;
    assert_sources(
        &rows,
        &[
            ("api.rate_limit", json!(5), "override"),
            ("session.timeout", json!(3600), "plan:basic"),
        ],
    );

    // Up: enterprise's values and keys arrive; the overrides stay.
    let a = apply(
        &pool,
        &js,
        "tenant.updated",
        json!({"code": "acme", "plan": "enterprise", "name": "Acme Inc"}),
    )
    .await;
    assert_eq!(a.actor, "test:alice");
    assert_eq!(a.old["plan"], json!("basic"));
    assert_eq!(a.new["plan"], json!("enterprise"));
    assert_eq!(a.new["name"], json!("Acme Inc"));
    assert_eq!(a.old["configs"]["session.timeout"], json!(3600));
    assert_eq!(a.new["configs"]["session.timeout"], json!(14400));
    assert_eq!(a.old["configs"]["features.ai_verification"], Value::Null);
    let rows = config_rows(&pool, id).await;
    assert_eq!(rows.len(), 8, "7 enterprise keys + custom.flag: {rows:?}");
    assert_sources(
        &rows,
        &[
            ("api.rate_limit", json!(5), "override"),
            ("custom.flag", json!("on"), "override"),
            ("session.timeout", json!(14400), "plan:enterprise"),
            (
                "features.advanced_analytics",
                json!(true),
                "plan:enterprise",
            ),
        ],
    );
    let t = tenant(&pool, "acme").await.unwrap();
    assert_eq!(
        (t.plan.as_str(), t.name.as_str()),
        ("enterprise", "Acme Inc")
    );

    // Down: keys basic lacks are removed, basic's values return, overrides still kept.
    let a = apply(
        &pool,
        &js,
        "tenant.updated",
        json!({"code": "acme", "plan": "basic"}),
    )
    .await;
    assert_eq!(a.new["configs"]["features.biometric_auth"], Value::Null);
    let rows = config_rows(&pool, id).await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(source_of(&rows, "features.biometric_auth").is_none());
    assert_sources(
        &rows,
        &[
            ("api.rate_limit", json!(5), "override"),
            ("session.timeout", json!(3600), "plan:basic"),
        ],
    );

    let trail: Vec<(String, Value, Value)> = sqlx::query_as(
        "SELECT event, old, new FROM fleet.tenant_events WHERE tenant_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(trail.len(), 3);
    assert_eq!(trail[0].0, "tenant.created");
    assert_eq!(trail[0].2["plan"], json!("basic"));
    assert_eq!(
        trail[0].2["overrides"],
        json!(["api.rate_limit", "custom.flag"])
    );
    assert!(trail[1..].iter().all(|(e, _, _)| e == "tenant.updated"));

    for (body, needle) in [
        (
            json!({"code": "acme", "plan": "gold"}),
            "unknown plan \"gold\"",
        ),
        (
            json!({"code": "ghost", "plan": "basic"}),
            "no tenant with code ghost",
        ),
        (json!({"code": "acme"}), "nothing to change"),
        (
            json!({"code": "ACME!", "plan": "basic"}),
            "not a valid code",
        ),
    ] {
        refuse(&pool, &js, "tenant.updated", body, needle).await;
    }
    worker.stop().await;
}

#[tokio::test]
async fn config_set_unset_with_encryption_a_wrong_key_and_rotation() {
    let (env, pool, js, worker) = started(&[("FLEET_CONFIG_KEYS", K1)]).await;
    let id = create_new(&pool, &js, "acme", "premium").await;

    // A plain override, then unset: back to premium's default with its plan source.
    let a = apply(
        &pool,
        &js,
        "tenant.config.set",
        json!({"code": "acme", "key": "session.timeout", "value": 60}),
    )
    .await;
    assert_eq!(a.old["value"], json!(7200));
    assert_eq!(a.new["value"], json!(60));
    let a = apply(
        &pool,
        &js,
        "tenant.config.unset",
        json!({"code": "acme", "key": "session.timeout"}),
    )
    .await;
    assert_eq!(a.new["source"], json!("plan:premium"));
    let rows = config_rows(&pool, id).await;
    assert_eq!(row_of(&rows, "session.timeout").1, json!(7200));
    assert_eq!(row_of(&rows, "session.timeout").3, "plan:premium");

    // An encrypted override: no plaintext in the row or the audit trail.
    let a = apply(
        &pool,
        &js,
        "tenant.config.set",
        json!({"code": "acme", "key": "smtp.password", "value": "hunter2", "encrypted": true}),
    )
    .await;
    assert!(!a.new.to_string().contains("hunter2"), "{}", a.new);
    assert_eq!(a.new["value"]["encrypted"], json!("<encrypted>"));
    let rows = config_rows(&pool, id).await;
    let secret = row_of(&rows, "smtp.password");
    assert!(secret.2, "is_encrypted");
    assert!(!secret.1.to_string().contains("hunter2"));
    let sealed = Sealed::from_value(&secret.1).unwrap();
    assert_eq!(sealed.kid, "k1");
    let k1 = ConfigKeys::parse(K1).unwrap();
    assert_eq!(k1.open("smtp.password", &sealed).unwrap(), json!("hunter2"));
    // A wrong key under the same id does not open it (and yields no plaintext).
    let wrong = ConfigKeys::parse(K1_WRONG).unwrap();
    assert!(wrong
        .open("smtp.password", &sealed)
        .unwrap_err()
        .to_string()
        .contains("does not open with key \"k1\""));

    // Rotation with a wrong k1 refuses and changes nothing; with the right keys moves to k2.
    let before = snapshot(&pool).await;
    let bad = ConfigKeys::parse(&format!("{K1_WRONG},{K2}")).unwrap();
    let e = rotate::rotate_keys(&pool, &bad, "test", |_, _| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("smtp.password"), "{e}");
    assert_eq!(snapshot(&pool).await, before);
    let only_k2 = ConfigKeys::parse(K2).unwrap();
    let e = rotate::rotate_keys(&pool, &only_k2, "test", |_, _| {})
        .await
        .unwrap_err();
    assert!(e.to_string().contains("[\"k1\"]"), "{e}");
    let both = ConfigKeys::parse(&format!("{K1},{K2}")).unwrap();
    let report = rotate::rotate_keys(&pool, &both, "test", |_, _| {})
        .await
        .unwrap();
    assert_eq!((report.tenants, report.values), (1, 1));
    let rows = config_rows(&pool, id).await;
    let secret = row_of(&rows, "smtp.password");
    let sealed = Sealed::from_value(&secret.1).unwrap();
    assert_eq!(sealed.kid, "k2");
    assert_eq!(
        only_k2.open("smtp.password", &sealed).unwrap(),
        json!("hunter2")
    );
    let again = rotate::rotate_keys(&pool, &both, "test", |_, _| {})
        .await
        .unwrap();
    assert_eq!(again.values, 0, "nothing left under an older key");
    let kids: Value = sqlx::query_scalar("SELECT new FROM fleet.tenant_events WHERE event = $1")
        .bind(rotate::ACTION)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kids, json!({"kids": {"smtp.password": "k2"}}));

    // Unset of an encrypted override without a plan default removes it.
    apply(
        &pool,
        &js,
        "tenant.config.unset",
        json!({"code": "acme", "key": "smtp.password"}),
    )
    .await;
    assert!(config_rows(&pool, id)
        .await
        .iter()
        .all(|r| r.0 != "smtp.password"));

    for (subject, body, needle) in [
        (
            "tenant.config.unset",
            json!({"code": "acme", "key": "api.rate_limit"}),
            "is not overridden",
        ),
        (
            "tenant.config.unset",
            json!({"code": "acme", "key": "nope"}),
            "has no config nope",
        ),
        (
            "tenant.config.set",
            json!({"code": "acme", "key": "bad key'", "value": 1}),
            "is not a config key",
        ),
        (
            "tenant.config.set",
            json!({"code": "acme", "key": "a", "value": 1, "encrypt": true}),
            "unknown field `encrypt`",
        ),
        (
            "tenant.config.set",
            json!({"code": "ghost", "key": "a", "value": 1}),
            "no tenant with code ghost",
        ),
    ] {
        refuse(&pool, &js, subject, body, needle).await;
    }
    worker.stop().await;

    // A provisioner without keys refuses an encrypted value and stores nothing.
    let worker = Worker::start(&env, &[]).await;
    refuse(
        &pool,
        &js,
        "tenant.config.set",
        json!({"code": "acme", "key": "smtp.password", "value": "x", "encrypted": true}),
        "FLEET_CONFIG_KEYS is not set",
    )
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn suspend_and_resume_and_their_refusals() {
    let (_env, pool, js, worker) = started(&[]).await;
    let id = create_new(&pool, &js, "acme", "basic").await;

    refuse(
        &pool,
        &js,
        "tenant.resumed",
        json!({"code": "acme"}),
        "tenant acme is active; only a tenant that is suspended can be resumed",
    )
    .await;
    let a = apply(
        &pool,
        &js,
        "tenant.suspended",
        json!({"code": "acme", "reason": "unpaid\ninvoice"}),
    )
    .await;
    assert_eq!(a.status, "suspended");
    assert_eq!(a.new["reason"], json!("unpaid invoice"));
    assert_eq!(status(&pool, id).await, "suspended");
    for (subject, body, needle) in [
        (
            "tenant.suspended",
            json!({"code": "acme"}),
            "is suspended; only a tenant that is active",
        ),
        (
            "tenant.migrate",
            json!({"code": "acme"}),
            "tenant acme is suspended",
        ),
    ] {
        refuse(&pool, &js, subject, body, needle).await;
    }
    // Configs and updates still work while suspended.
    apply(
        &pool,
        &js,
        "tenant.config.set",
        json!({"code": "acme", "key": "x", "value": 1}),
    )
    .await;
    let a = apply(&pool, &js, "tenant.resumed", json!({"code": "acme"})).await;
    assert_eq!(a.status, "active");
    assert_eq!(status(&pool, id).await, "active");
    let reason: Option<String> =
        sqlx::query_scalar("SELECT suspend_reason FROM fleet.tenants WHERE tenant_id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(reason.is_none());
    for (body, needle) in [
        (json!({"code": "ghost"}), "no tenant with code ghost"),
        (json!({"code": 5}), "does not match the contract"),
    ] {
        refuse(&pool, &js, "tenant.suspended", body, needle).await;
    }
    worker.stop().await;
}

#[tokio::test]
async fn archive_recreate_the_same_code_and_purge() {
    let (_env, pool, js, worker) = started(&[]).await;
    let old_id = create_new(&pool, &js, "acme", "basic").await;

    let a = apply(&pool, &js, "tenant.deleted", json!({"code": "acme"})).await;
    assert_eq!(a.status, "deleted");
    let archived = a.new["schema"].as_str().unwrap().to_owned();
    assert!(
        archived.starts_with("archived_acme_") && archived.len() == "archived_acme_".len() + 14,
        "{archived}"
    );
    assert!(schema_exists(&pool, &archived).await);
    assert!(!schema_exists(&pool, "tenant_acme").await);
    assert_eq!(status(&pool, old_id).await, "deleted");
    assert_eq!(
        tables(&pool, &archived).await.len() as i64,
        BUILT_IN_TABLES + 1,
        "data kept"
    );

    // A deleted tenant cannot be changed; the code is free.
    for (subject, body, needle) in [
        (
            "tenant.suspended",
            json!({"code": "acme"}),
            "no tenant with code acme (deleted tenants cannot be changed)",
        ),
        (
            "tenant.deleted",
            json!({"code": "acme", "tenant_id": old_id}),
            "already archived",
        ),
        (
            "tenant.migrate",
            json!({"code": "acme"}),
            "no tenant with code acme",
        ),
    ] {
        refuse(&pool, &js, subject, body, needle).await;
    }

    let new_id = create_new(&pool, &js, "acme", "premium").await;
    assert_provisioned_once(&pool, "acme").await;
    assert!(
        schema_exists(&pool, &archived).await,
        "the archive is untouched"
    );
    assert_eq!(status(&pool, old_id).await, "deleted");
    assert_eq!(configs(&pool, new_id).await.len(), 5);

    // Purge the archive by tenant_id: its schema and rows go, the new acme stays.
    refuse(
        &pool,
        &js,
        "tenant.deleted",
        json!({"code": "other", "tenant_id": old_id, "mode": "purge"}),
        "has code acme, not other",
    )
    .await;
    let a = apply(
        &pool,
        &js,
        "tenant.deleted",
        json!({"code": "acme", "tenant_id": old_id, "mode": "purge"}),
    )
    .await;
    assert_eq!(a.status, "purged");
    assert!(!schema_exists(&pool, &archived).await);
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(*) FROM fleet.tenants WHERE tenant_id = '{old_id}'")
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            &format!(
                "SELECT count(*) FROM fleet.tenant_configurations WHERE tenant_id = '{old_id}'"
            )
        )
        .await,
        0
    );
    assert!(schema_exists(&pool, "tenant_acme").await);
    assert_eq!(status(&pool, new_id).await, "active");

    // Purge the live one directly.
    apply(
        &pool,
        &js,
        "tenant.deleted",
        json!({"code": "acme", "mode": "purge"}),
    )
    .await;
    assert!(!schema_exists(&pool, "tenant_acme").await);
    assert_eq!(tenant_rows(&pool).await, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM fleet.tenant_configurations").await,
        0
    );
    let trail = count(
        &pool,
        "SELECT count(*) FROM fleet.tenant_events WHERE code = 'acme'",
    )
    .await;
    assert_eq!(
        trail, 5,
        "two creations, archive, two purges: the trail outlives the purge"
    );
    for (body, needle) in [
        (
            json!({"code": "acme", "mode": "scrub"}),
            "unknown variant `scrub`",
        ),
        (json!({"code": "acme"}), "no tenant with code acme"),
    ] {
        refuse(&pool, &js, "tenant.deleted", body, needle).await;
    }
    worker.stop().await;
}

#[tokio::test]
async fn purge_older_than_drops_only_old_archives() {
    let (_env, pool, js, worker) = started(&[]).await;
    for code in ["old1", "young"] {
        let (_, body) = created(code, "basic");
        create(&pool, &js, body).await;
        apply(&pool, &js, "tenant.deleted", json!({"code": code})).await;
    }
    sqlx::query(
        "UPDATE fleet.tenants SET deleted_at = now() - interval '31 days' WHERE code = 'old1'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let month = Duration::from_secs(30 * 86400);
    let due = purge::due(&pool, month).await.unwrap();
    assert_eq!(due.len(), 1);
    let old_schema = due[0].schema_name.clone();
    let mut seen = Vec::new();
    let rows = purge::purge_older_than(
        &fleet_shared::databases::DatabasePools::control_only(pool.clone()),
        "test",
        month,
        |a, _| seen.push(a.code.clone()),
    )
    .await
    .unwrap();
    assert_eq!((rows.len(), seen), (1, vec!["old1".to_string()]));
    assert!(!schema_exists(&pool, &old_schema).await);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM fleet.tenants WHERE code = 'old1'"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM fleet.tenants WHERE code = 'young' AND status = 'deleted'"
        )
        .await,
        1
    );
    assert!(purge::purge_older_than(
        &fleet_shared::databases::DatabasePools::control_only(pool.clone()),
        "test",
        month,
        |_, _| {}
    )
    .await
    .unwrap()
    .is_empty());
    worker.stop().await;
}

/// Drives the handler directly: every lifecycle event delivered a second time (same message
/// id, as after a crash between commit and ack) changes nothing and is acked.
#[tokio::test]
async fn redelivery_of_every_lifecycle_event_is_harmless() {
    let (env, pool, js, worker) = started(&[]).await;
    let id = create_new(&pool, &js, "acme", "basic").await;
    create_new(&pool, &js, "beta", "basic").await;
    worker.stop().await;

    let fleet = env.fleet(&[("FLEET_CONFIG_KEYS", K1)]).await;
    let handler = provisioner::context::Provisioner {
        pg: fleet.pg.clone(),
        placement: provisioner::placement::Placement::control_only(
            fleet_shared::databases::DatabasePools::control_only(fleet.pg.clone()),
        ),
        js: fleet.js.clone(),
        plans: provisioner::plans::Plans::from_settings(&fleet.settings).unwrap(),
        migrations: std::sync::Arc::new(provisioner::migrations::load(&fleet.settings).unwrap()),
        metrics: provisioner::metrics::ProvisionerMetrics::register(&fleet.metrics),
        config_keys: fleet.settings.config_keys.clone(),
    };
    let events = [
        ("tenant.updated", json!({"code": "acme", "plan": "premium"})),
        (
            "tenant.config.set",
            json!({"code": "acme", "key": "s", "value": "v", "encrypted": true}),
        ),
        (
            "tenant.config.set",
            json!({"code": "acme", "key": "p", "value": 1}),
        ),
        ("tenant.config.unset", json!({"code": "acme", "key": "p"})),
        ("tenant.suspended", json!({"code": "acme"})),
        ("tenant.resumed", json!({"code": "acme"})),
        ("tenant.deleted", json!({"code": "acme"})),
        ("tenant.deleted", json!({"code": "beta", "mode": "purge"})),
    ];
    let mut delivered = Vec::new();
    for (i, (subject, body)) in events.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("m-{i}").as_str());
        let msg = Incoming {
            subject: subject.to_string(),
            payload: serde_json::to_vec(body).unwrap().into(),
            headers: Some(headers),
            stream_seq: 1000 + i as u64,
            delivered: 1,
        };
        handler
            .handle(&msg)
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        delivered.push(msg);
    }
    assert_eq!(status(&pool, id).await, "deleted");
    let before = snapshot(&pool).await;
    for mut msg in delivered {
        msg.delivered = 2;
        handler
            .handle(&msg)
            .await
            .unwrap_or_else(|e| panic!("redelivered {}: {e}", msg.subject));
    }
    assert_eq!(
        snapshot(&pool).await,
        before,
        "a redelivery changed something"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM fleet.tenant_events WHERE event <> 'tenant.created'"
        )
        .await,
        events.len() as i64
    );
    // Each change was announced once: re-announcements share the message id.
    let stream = js.get_stream("FLEET_EVENTS").await.unwrap();
    let mut n = 0;
    let mut subjects = stream
        .info_with_subjects("tenant.lifecycle.>")
        .await
        .unwrap();
    use futures::StreamExt;
    while let Some(s) = subjects.next().await {
        n += s.unwrap().1;
    }
    assert_eq!(n, events.len());
}
