//! copy_to_tenant into the provisioner's own tables: a shared `sessions` table whose rows carry
//! `tenant_code` is copied into `tenant_<code>.sessions` (primary key `(tenant_code, id)`, `id`
//! an identity column) of a tenant provisioned by a real `tenant.created`, on the control
//! database and on another database the registry places the tenant on; source rows are deleted
//! only when settled; a resumed run after a crash between the two databases' commits copies
//! nothing twice; a target without a usable key is refused.

use std::time::Duration;

use crate::common::*;
use fleet_testkit::{eventually, Running, TestDb, TestEnv};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

/// The shared table: 300 sessions, every third one the tenant's, the others `other`'s; it has
/// `tenant_code` (filled earlier) but no `organization_code`.
async fn shared_sessions(pool: &PgPool, code: &str) {
    sqlx::raw_sql(&format!(
        "CREATE TABLE public.sessions (id bigserial PRIMARY KEY, tenant_code text NOT NULL, title text NOT NULL,
                                      description text, meta jsonb, created_by text);
         INSERT INTO public.sessions (tenant_code, title, meta, created_by)
           SELECT CASE WHEN g % 3 = 0 THEN '{code}' ELSE 'other' END, 'session ' || g, jsonb_build_object('g', g), 'u' || g
           FROM generate_series(1, 300) g;"
    ))
    .execute(pool)
    .await
    .unwrap();
}

/// Provisions `code` through a real `tenant.created` handled by an in-process provisioner.
async fn provision(env: &TestEnv, cfg: &tempfile::NamedTempFile, body: serde_json::Value) {
    let path = cfg.path().to_str().unwrap().to_owned();
    let fleet = env.fleet(&[("FLEET_CONFIG", &path)]).await;
    let control = fleet.pg.clone();
    let f = fleet.clone();
    let provisioner = Running::spawn(|t| provisioner::run(f, t));
    let code = body["code"].as_str().unwrap().to_owned();
    fleet_shared::publish::publish_json(
        &fleet.js,
        "tenant.created",
        &Uuid::new_v4().to_string(),
        &body,
        None,
    )
    .await
    .unwrap();
    eventually(
        Duration::from_secs(60),
        &format!("tenant {code} active"),
        || async {
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM fleet.tenants WHERE code = $1 AND status <> 'deleted'",
            )
            .bind(&code)
            .fetch_optional(&control)
            .await
            .unwrap();
            (status.as_deref() == Some("active")).then_some(())
        },
    )
    .await;
    provisioner.stop().await;
}

fn created(code: &str, org: &str, database: Option<&str>) -> serde_json::Value {
    let mut body = json!({"tenant_id": Uuid::new_v4(), "code": code, "name": format!("Tenant {code}"),
                          "plan": "basic", "org_code": org});
    if let Some(db) = database {
        body["database"] = json!(db);
    }
    body
}

/// A tenant `code` provisioned on another database (`shard_b`, `tenants = true`, with
/// `backfill_extra` after the fast `[backfill]` keys) and shared sessions on the control
/// database for it: (env, control pool, shard database, its pool, config).
async fn tenant_on_shard_b(
    backfill_extra: &str,
    code: &str,
    org: &str,
) -> (TestEnv, PgPool, TestDb, PgPool, tempfile::NamedTempFile) {
    let env = TestEnv::new().await;
    let control = env.db.pool().await;
    let shard_db = TestDb::create().await.unwrap();
    let shard = shard_db.pool().await;
    let cfg = config_file(&format!(
        "{FAST_CONFIG}{backfill_extra}\n[databases.shard_b]\nurl = \"{}\"\ntenants = true\n",
        shard_db.url
    ));
    provision(&env, &cfg, created(code, org, Some("shard_b"))).await;
    shared_sessions(&control, code).await;
    (env, control, shard_db, shard, cfg)
}

async fn submit_with(replica: &Replica, spec: serde_json::Value) -> Result<Uuid, String> {
    backfill_worker::submit_json_on(&replica.pools(), spec.to_string().as_bytes(), false, None)
        .await
        .map(|s| s.job_id)
        .map_err(|e| e.to_string())
}

/// (rows, distinct ids, max id, rows whose organization_code is `org`) of a tenant table.
async fn target_rows(pool: &PgPool, table: &str, org: &str) -> (i64, i64, i64, i64) {
    sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT id), coalesce(max(id), 0), count(*) FILTER (WHERE organization_code = $1) FROM {table}"
    ))
    .bind(org)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// What the application inserting next into a tenant table gets as `id`.
async fn app_insert(pool: &PgPool, code: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "INSERT INTO tenant_{code}.sessions (tenant_code, organization_code, title) VALUES ('{code}', 'x', 'by the app') RETURNING id"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn left_in_source(pool: &PgPool, code: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE tenant_code = $1), count(*) FILTER (WHERE tenant_code = 'other') FROM public.sessions",
    )
    .bind(code)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn shared_rows_move_into_a_provisioned_tenant_and_its_identity_moves_past_them() {
    let env = TestEnv::new().await;
    let control = env.db.pool().await;
    let cfg = config_file(FAST_CONFIG);
    fleet_shared::db::migrate_control_plane(&control)
        .await
        .unwrap();
    // An acme deleted before this one was provisioned: codes are unique among live tenants
    // only, and the deleted row comes first in the table.
    sqlx::query(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
         VALUES ($1, 'acme', 'Old acme', 'basic', 'deleted', 'archived_acme_0')",
    )
    .bind(Uuid::new_v4())
    .execute(&control)
    .await
    .unwrap();
    provision(&env, &cfg, created("acme", "acme_org", None)).await;
    shared_sessions(&control, "acme").await;
    // The application already wrote id 6 in the tenant's table, with other data.
    sqlx::query(
        "INSERT INTO tenant_acme.sessions (id, tenant_code, organization_code, title) OVERRIDING SYSTEM VALUE
         VALUES (6, 'acme', 'acme_org', 'written by the app')",
    )
    .execute(&control)
    .await
    .unwrap();
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_with(
        &replica,
        json!({"kind": "copy_to_tenant", "table": "sessions", "tenant_code": "acme", "delete_source": true,
               "chunk_size": 50, "target_chunk": "100s"}),
    )
    .await
    .unwrap();
    let failed = finished(&control, id).await;
    assert_eq!(failed.state, "failed", "a collision must not pass silently");
    let error = failed.error.unwrap();
    assert!(
        error.contains("1 source row(s) not copied") && error.contains("keys 6)"),
        "{error}"
    );
    let kept: String = sqlx::query_scalar("SELECT title FROM public.sessions WHERE id = 6")
        .fetch_one(&control)
        .await
        .expect("the unsettled source row is kept");
    assert_eq!(kept, "session 6");

    // The operator lets the shared table's row win, and retries the failed chunk.
    sqlx::query("DELETE FROM tenant_acme.sessions WHERE id = 6")
        .execute(&control)
        .await
        .unwrap();
    let job = retry_until_finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(job.rows_done, 100);
    assert_eq!(
        target_rows(&control, "tenant_acme.sessions", "acme_org").await,
        (100, 100, 300, 100),
        "every acme row copied once, organization_code from the registry"
    );
    let same: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM tenant_acme.sessions d WHERE d.title = 'session ' || d.id AND d.meta = jsonb_build_object('g', d.id)",
    )
    .fetch_one(&control)
    .await
    .unwrap();
    assert_eq!(same, 100, "the copied rows keep their ids and data");
    assert_eq!(left_in_source(&control, "acme").await, (0, 200));
    assert!(
        app_insert(&control, "acme").await > 300,
        "the identity moved past the copied maximum"
    );
    replica.stop().await;
}

/// Another database (`shard_b`, `tenants = true`) holds the tenant; the shared table is on the
/// control database. Then a crash after a chunk's commit on the tenant's database but before
/// the source's (its source rows back, one of them changed since by the application).
#[tokio::test]
async fn a_tenant_on_another_database_is_copied_there_exactly_once() {
    let (env, control, _shard_db, shard, cfg) = tenant_on_shard_b("", "bravo", "bravo_org").await;
    // The application has used ids up to 5000 already: the sequence must not go back.
    sqlx::query("SELECT setval('tenant_bravo.sessions_id_seq', 5000)")
        .execute(&shard)
        .await
        .unwrap();
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_with(
        &replica,
        json!({"kind": "copy_to_tenant", "table": "sessions", "tenant_code": "bravo", "delete_source": true,
               "chunk_size": 40, "target_chunk": "100s"}),
    )
    .await
    .unwrap();
    let job = finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(
        target_rows(&shard, "tenant_bravo.sessions", "bravo_org").await,
        (100, 100, 300, 100)
    );
    let on_control: bool =
        sqlx::query_scalar("SELECT to_regclass('tenant_bravo.sessions') IS NOT NULL")
            .fetch_one(&control)
            .await
            .unwrap();
    assert!(!on_control, "the tenant lives on shard_b only");
    assert_eq!(left_in_source(&control, "bravo").await, (0, 200));
    assert_eq!(
        marks(&shard, id).await,
        job.chunks_done,
        "one marker per chunk, on the tenant's database"
    );
    assert_eq!(app_insert(&shard, "bravo").await, 5001, "never backwards");

    // As if a replica died after the chunk's commit on shard_b, before the source's: its
    // source rows are back and its checkpoint is pending; meanwhile the application changed
    // one of those source rows.
    let (chunk, lo, hi): (i64, i64, i64) = sqlx::query_as(
        "SELECT chunk_id, lo, hi FROM fleet.backfill_chunks WHERE job_id = $1 AND rows > 1 ORDER BY lo LIMIT 1",
    )
    .bind(id)
    .fetch_one(&control)
    .await
    .unwrap();
    let back: Vec<(i64, String, serde_json::Value, String)> = sqlx::query_as(
        "SELECT id, title, meta, created_by FROM tenant_bravo.sessions WHERE id > $1 AND id <= $2 ORDER BY id",
    )
    .bind(lo)
    .bind(hi)
    .fetch_all(&shard)
    .await
    .unwrap();
    for (key, title, meta, by) in &back {
        sqlx::query("INSERT INTO public.sessions (id, tenant_code, title, meta, created_by) VALUES ($1, 'bravo', $2, $3, $4)")
            .bind(key)
            .bind(title)
            .bind(meta)
            .bind(by)
            .execute(&control)
            .await
            .unwrap();
    }
    let changed = back[0].0;
    sqlx::query("UPDATE public.sessions SET title = 'changed later' WHERE id = $1")
        .bind(changed)
        .execute(&control)
        .await
        .unwrap();
    sqlx::query("UPDATE fleet.backfill_chunks SET state = 'pending', rows = 0 WHERE chunk_id = $1")
        .bind(chunk)
        .execute(&control)
        .await
        .unwrap();
    running_again(&control, id).await;
    let job = wait_state(&control, id, &["failed"], Duration::from_secs(60)).await;
    let error = job.error.unwrap();
    assert!(
        error.contains("1 source row(s) not copied") && error.contains(&format!("keys {changed})")),
        "{error}"
    );
    assert_eq!(
        left_in_source(&control, "bravo").await.0,
        back.len() as i64,
        "no source row of the chunk deleted while one of them is unsettled"
    );
    // The operator takes the copy's version; the retry deletes exactly the settled rows.
    sqlx::query("UPDATE public.sessions SET title = $2 WHERE id = $1")
        .bind(changed)
        .bind(&back[0].1)
        .execute(&control)
        .await
        .unwrap();
    let job = retry_until_finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    assert_eq!(
        job.rows_done, 100,
        "the recovered chunk keeps its marker's rows"
    );
    assert_eq!(
        target_rows(&shard, "tenant_bravo.sessions", "bravo_org").await,
        (101, 101, 5001, 100),
        "nothing copied twice (the 101st row is the application's)"
    );
    assert_eq!(left_in_source(&control, "bravo").await, (0, 200));
    // Deleting the job removes its markers on the tenant's database too.
    backfill_worker::delete_job(&pools_of(&replica.fleet.settings, &control), id)
        .await
        .unwrap();
    assert_eq!(marks(&shard, id).await, 0, "markers forgotten with the job");
    replica.stop().await;
}

#[tokio::test]
async fn a_tenant_with_a_database_of_its_own_is_copied_into_it() {
    let env = TestEnv::new().await;
    let control = env.db.pool().await;
    // A private server: the tenant database it gets cannot meet anyone else's.
    let server = fleet_testkit::PgServer::start().unwrap();
    let base = server.create_database("tenants_own").await.unwrap();
    let cfg = config_file(&format!(
        "{FAST_CONFIG}\n[databases.own]\nurl = \"{base}\"\ntenants = true\nisolation = \"database\"\n"
    ));
    provision(&env, &cfg, created("iso", "iso_org", Some("own"))).await;
    shared_sessions(&control, "iso").await;
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_with(
        &replica,
        json!({"kind": "copy_to_tenant", "table": "sessions", "tenant_code": "iso", "delete_source": true,
               "chunk_size": 40}),
    )
    .await
    .unwrap();
    let job = finished(&control, id).await;
    assert_eq!(job.state, "succeeded", "{:?}", job.error);
    let own = sqlx::PgPool::connect(&server.url("tenant_iso"))
        .await
        .unwrap();
    assert_eq!(
        target_rows(&own, "tenant_iso.sessions", "iso_org").await,
        (100, 100, 300, 100)
    );
    let base_pool = sqlx::PgPool::connect(&base).await.unwrap();
    let in_base: bool = sqlx::query_scalar("SELECT to_regclass('tenant_iso.sessions') IS NOT NULL")
        .fetch_one(&base_pool)
        .await
        .unwrap();
    assert!(!in_base, "the rows went to the tenant's own database");
    assert_eq!(left_in_source(&control, "iso").await, (0, 200));
    assert_eq!(app_insert(&own, "iso").await, 301);
    replica.stop().await;
}

/// The throttle reads the tenant's database too (the writes go there): an application session
/// queued for a lock on the tenant's table holds the job; it goes on once the queue is gone.
#[tokio::test]
async fn a_copy_waits_while_the_tenant_database_has_lock_waiters() {
    let (env, control, _shard_db, shard, cfg) =
        tenant_on_shard_b("health_interval = \"100ms\"\n", "carol", "carol_org").await;
    // One session holds the table, an application session queues behind it.
    let mut holder = shard.begin().await.unwrap();
    sqlx::query("LOCK TABLE tenant_carol.sessions IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let waiter_pool = shard.clone();
    let waiter = tokio::spawn(async move {
        let mut tx = waiter_pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE tenant_carol.sessions IN EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    });
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_with(
        &replica,
        json!({"kind": "copy_to_tenant", "table": "sessions", "tenant_code": "carol", "chunk_size": 50}),
    )
    .await
    .unwrap();
    let shown = eventually(Duration::from_secs(30), "job throttled", || async {
        job(&control, id).await.throttled
    })
    .await;
    assert!(shown.contains("lock waiter(s) on"), "{shown}");
    assert_eq!(
        chunks_done(&control, id).await,
        0,
        "no chunk while throttled"
    );
    holder.commit().await.unwrap();
    waiter.await.unwrap();
    let done = finished(&control, id).await;
    assert_eq!(done.state, "succeeded", "{:?}", done.error);
    assert_eq!(done.rows_done, 100);
    replica.stop().await;
}

#[tokio::test]
async fn a_target_without_a_usable_key_or_a_value_it_needs_is_refused() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let _fleet = env.fleet(&[]).await;
    sqlx::raw_sql(
        "CREATE TABLE notes (id bigserial PRIMARY KEY, tenant_code text NOT NULL, body text);
         INSERT INTO notes (tenant_code, body) VALUES ('keyless', 'a'), ('strict', 'b');
         CREATE SCHEMA tenant_keyless;
         CREATE TABLE tenant_keyless.notes (id bigint, tenant_code text, body text);
         CREATE SCHEMA tenant_strict;
         CREATE TABLE tenant_strict.notes (id bigint, tenant_code text, organization_code text NOT NULL, body text,
                                           PRIMARY KEY (tenant_code, id));",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (code, needle) in [
        (
            "keyless",
            "copy_to_tenant job: tenant_keyless.notes has no primary key or unique index on the copied columns (it has none)",
        ),
        (
            "strict",
            "tenant_strict.notes.organization_code must be set, and neither the source nor the tenant's registry entry (org_code) has it",
        ),
    ] {
        let spec = json!({"kind": "copy_to_tenant", "table": "notes", "tenant_code": code});
        let err = backfill_worker::submit_json(&pool, spec.to_string().as_bytes(), false, None)
            .await
            .unwrap_err();
        let backfill_worker::SubmitError::Refused(reason) = err else {
            panic!("{code}: not refused: {err}")
        };
        assert!(reason.contains(needle), "{reason}");
        assert!(!reason.contains('\n'));
    }
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet.backfill_jobs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "nothing created");
}

/// A move of the tenant starts while the copy runs: its chunks wait (`throttled: tenant is
/// being moved`) and write nothing; once the move has switched the tenant to another database
/// the job fails with one line saying to plan it again, every source row still in one place.
/// A job planned while the move runs is refused.
#[tokio::test]
async fn a_move_in_flight_holds_the_copy_and_a_new_home_fails_it_for_a_re_plan() {
    let env = TestEnv::new().await;
    let control = env.db.pool().await;
    let cfg = config_file(FAST_CONFIG);
    provision(&env, &cfg, created("acme", "acme_org", None)).await;
    shared_sessions(&control, "acme").await;
    let replica = Replica::start(&env, &cfg).await;
    let id = submit_with(
        &replica,
        json!({"kind": "copy_to_tenant", "table": "sessions", "tenant_code": "acme", "delete_source": true,
               "chunk_size": 30, "max_rows_per_sec": 30}),
    )
    .await
    .unwrap();
    wait_state(&control, id, &["running"], Duration::from_secs(60)).await;
    sqlx::query(
        "INSERT INTO fleet.tenant_moves (move_id, tenant_id, code, source, target, step, actor)
         SELECT $1, tenant_id, code, 'control', 'shard_b', 'copied', 'test' FROM fleet.tenants WHERE code = 'acme' AND status = 'active'",
    )
    .bind(Uuid::new_v4())
    .execute(&control)
    .await
    .unwrap();
    let held = eventually(Duration::from_secs(60), "the copy is held", || async {
        job(&control, id).await.throttled
    })
    .await;
    assert_eq!(
        held,
        "tenant is being moved (from control to shard_b, step copied)"
    );
    let copied = target_rows(&control, "tenant_acme.sessions", "acme_org")
        .await
        .0;
    assert!(copied < 100, "held before the end: {copied}");
    assert_eq!(
        left_in_source(&control, "acme").await.0 + copied,
        100,
        "every row in one place"
    );

    // Planned meanwhile: refused, nothing written.
    let other = submit_with(
        &replica,
        json!({"kind": "copy_to_tenant", "table": "sessions", "tenant_code": "acme", "create_target": true}),
    )
    .await
    .unwrap();
    let refused = finished(&control, other).await;
    assert_eq!(refused.state, "failed");
    assert_eq!(
        refused.error.as_deref(),
        Some("copy_to_tenant job: tenant acme is being moved (from control to shard_b, step copied); submit the job again once the move is done")
    );

    // The move switches the tenant to shard_b and ends.
    sqlx::query(
        "UPDATE fleet.tenants SET database = 'shard_b' WHERE code = 'acme' AND status = 'active'",
    )
    .execute(&control)
    .await
    .unwrap();
    sqlx::query("UPDATE fleet.tenant_moves SET state = 'done', step = 'archived'")
        .execute(&control)
        .await
        .unwrap();
    let failed = finished(&control, id).await;
    assert_eq!(failed.state, "failed");
    assert_eq!(
        failed.error.as_deref(),
        Some("copy_to_tenant job: tenant acme now lives in shard_b but the job was planned for control; re-plan: submit the job again")
    );
    assert_eq!(
        target_rows(&control, "tenant_acme.sessions", "acme_org")
            .await
            .0,
        copied,
        "nothing written after the hold"
    );
    replica.stop().await;
}
