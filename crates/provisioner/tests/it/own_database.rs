//! A database per tenant: `[databases.own]` with `isolation = "database"` on a private server
//! (`fleet_testkit::PgServer`, so the tenant databases it creates cannot meet anyone else's).
//! Provision → migrate → archive → purge, a crash between `CREATE DATABASE` and the registry
//! update (the steps run partially, then the redelivery; and a `kill -9` of the provisioner
//! while it fills the new database), and a database that was there first.

use crate::common::*;
use fleet_testkit::{eventually, PgServer, TestEnv};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

struct OwnServer {
    env: TestEnv,
    server: PgServer,
    base_url: String,
    _dir: tempfile::TempDir,
    cfg_path: String,
    migrations: String,
}

/// A tiny migration set (two files), so each tenant database is made in moments.
fn write_migration(dir: &std::path::Path, name: &str, sql: &str) {
    std::fs::write(dir.join("migrations").join(name), sql).unwrap();
}

impl OwnServer {
    async fn new() -> OwnServer {
        let env = TestEnv::new().await;
        let server = PgServer::start().expect("start a second Postgres");
        let base_url = server.create_database("tenants_own").await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("migrations")).unwrap();
        write_migration(
            dir.path(),
            "0001_sessions.sql",
            "CREATE TABLE sessions (id bigint PRIMARY KEY, tenant_code text NOT NULL);",
        );
        write_migration(
            dir.path(),
            "0002_forms.sql",
            "CREATE TABLE forms (id bigint PRIMARY KEY, tenant_code text NOT NULL);",
        );
        let cfg = dir.path().join("fleet.toml");
        std::fs::write(
            &cfg,
            format!(
                "[databases.own]\nurl = \"{base_url}\"\ntenants = true\nisolation = \"database\"\n\n\
                 [provisioner]\nplan_databases = {{ enterprise = \"own\" }}\n\n\
                 [tenant_pools]\nmax = 2\nidle_timeout = \"1m\"\n"
            ),
        )
        .unwrap();
        OwnServer {
            cfg_path: cfg.to_str().unwrap().to_owned(),
            migrations: dir.path().join("migrations").to_str().unwrap().to_owned(),
            env,
            server,
            base_url,
            _dir: dir,
        }
    }

    async fn worker(&self) -> Worker {
        Worker::start(
            &self.env,
            &[
                ("FLEET_CONFIG", &self.cfg_path),
                ("FLEET_TENANT_MIGRATIONS", &self.migrations),
            ],
        )
        .await
    }

    async fn admin(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.server.url("postgres"))
            .await
            .unwrap()
    }

    async fn databases(&self) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT datname::text FROM pg_database
              WHERE datname LIKE 'tenant\\_%' OR datname LIKE 'archived\\_%' OR datname LIKE 'fleet\\_new\\_%'
              ORDER BY 1",
        )
        .fetch_all(&self.admin().await)
        .await
        .unwrap()
    }

    async fn own(&self, name: &str) -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.server.url(name))
            .await
            .unwrap()
    }
}

async fn registry(pool: &PgPool, code: &str) -> (String, String, Option<String>, i64) {
    sqlx::query_as(
        "SELECT status, database, own_database, schema_version FROM fleet.tenants
          WHERE code = $1 ORDER BY status = 'deleted' LIMIT 1",
    )
    .bind(code)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn marker(pool: &PgPool) -> Vec<(Uuid, String)> {
    sqlx::query_as("SELECT tenant_id, code FROM public.fleet_tenant")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenant_with_a_database_of_its_own_is_provisioned_migrated_archived_and_purged() {
    let s = OwnServer::new().await;
    let pool = s.env.db.pool().await;
    let js = js(&s.env).await;
    let worker = s.worker().await;

    // By the event's database, and by the plan's.
    let (solo_id, mut solo) = created("solo", "basic");
    solo["database"] = json!("own");
    publish_json(&js, "tenant.created", &solo).await;
    let (big_id, big) = created("big", "enterprise");
    publish_json(&js, "tenant.created", &big).await;
    wait_active(&pool, "solo").await;
    wait_active(&pool, "big").await;
    assert_eq!(
        registry(&pool, "solo").await,
        ("active".into(), "own".into(), Some("tenant_solo".into()), 2)
    );
    assert_eq!(
        registry(&pool, "big").await.2.as_deref(),
        Some("tenant_big")
    );
    assert_eq!(s.databases().await, ["tenant_big", "tenant_solo"]);
    let solo_db = s.own("tenant_solo").await;
    assert_eq!(marker(&solo_db).await, [(solo_id, "solo".to_owned())]);
    assert_eq!(
        marker(&s.own("tenant_big").await).await,
        [(big_id, "big".to_owned())]
    );
    // The tables are in the schema tenant_<code> of the tenant's database, and nowhere else.
    assert_eq!(
        tables(&solo_db, "tenant_solo").await,
        ["forms", "schema_migrations", "sessions"]
    );
    let base = sqlx::PgPool::connect(&s.base_url).await.unwrap();
    assert!(!schema_exists(&base, "tenant_solo").await);
    assert!(!schema_exists(&pool, "tenant_solo").await);
    solo_db.close().await;
    worker.stop().await;

    // A new release adds a migration; tenant.migrate applies it in the tenant's database.
    write_migration(
        std::path::Path::new(&s.migrations).parent().unwrap(),
        "0003_title.sql",
        "ALTER TABLE sessions ADD COLUMN title text;",
    );
    let worker = s.worker().await;
    publish_json(&js, "tenant.migrate", &json!({"code": "solo"})).await;
    eventually(WAIT, "solo at version 3", || async {
        (registry(&pool, "solo").await.3 == 3).then_some(())
    })
    .await;
    let solo_db = s.own("tenant_solo").await;
    assert_eq!(ledger(&solo_db, "tenant_solo").await.len(), 3);
    let titled = count(
        &solo_db,
        "SELECT count(*) FROM information_schema.columns
          WHERE table_schema = 'tenant_solo' AND table_name = 'sessions' AND column_name = 'title'",
    )
    .await;
    assert_eq!(titled, 1);
    // An application session stays connected: the archive ends it (a rename needs none).
    let mut app = solo_db.acquire().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *app).await.unwrap();

    // Archive: the database is renamed to the tenant's archive name, the code is free again.
    publish_json(
        &js,
        "tenant.deleted",
        &json!({"code": "solo", "mode": "archive"}),
    )
    .await;
    let archived = provisioner::lifecycle::delete::remote_archive_name("solo", solo_id);
    eventually(WAIT, "solo archived", || async {
        (registry(&pool, "solo").await.0 == "deleted").then_some(())
    })
    .await;
    assert_eq!(
        registry(&pool, "solo").await.2.as_deref(),
        Some(archived.as_str())
    );
    assert_eq!(s.databases().await, [archived.clone(), "tenant_big".into()]);
    drop(app);
    solo_db.close().await;

    // The code is reused by a new tenant, which gets a fresh database of the same name.
    let (solo2_id, mut solo2) = created("solo", "basic");
    solo2["database"] = json!("own");
    publish_json(&js, "tenant.created", &solo2).await;
    wait_active(&pool, "solo").await;
    assert_eq!(
        marker(&s.own("tenant_solo").await).await,
        [(solo2_id, "solo".to_owned())]
    );

    // Purge of the archived tenant (by tenant_id) and of a live one: the databases are dropped.
    publish_json(
        &js,
        "tenant.deleted",
        &json!({"code": "solo", "tenant_id": solo_id, "mode": "purge"}),
    )
    .await;
    publish_json(
        &js,
        "tenant.deleted",
        &json!({"code": "big", "mode": "purge"}),
    )
    .await;
    eventually(WAIT, "both purged", || async {
        (tenant_rows(&pool).await == 1).then_some(())
    })
    .await;
    assert_eq!(s.databases().await, ["tenant_solo"]);
    wait_idle(&js).await;
    assert!(dead_letters(&js).await.is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn a_crash_between_create_database_and_the_registry_is_finished_by_the_redelivery() {
    let s = OwnServer::new().await;
    let pool = s.env.db.pool().await;
    let admin = s.admin().await;
    let js = js(&s.env).await;
    // A first start migrates the control plane, so the crashed attempt's row can be written.
    s.worker().await.stop().await;

    // Crash 1: the registration committed and CREATE DATABASE ran, then the process died before
    // anything was migrated (the staging database is empty).
    let (early_id, mut early) = created("early", "basic");
    early["database"] = json!("own");
    register(&pool, early_id, "early").await;
    sqlx::raw_sql(&format!(
        "CREATE DATABASE \"{}\"",
        provisioner::own_db::staging_name(early_id)
    ))
    .execute(&admin)
    .await
    .unwrap();

    // Crash 2: the database was made, migrated and renamed (step 2 complete), then the process
    // died before the registry was updated.
    let (late_id, mut late) = created("late", "basic");
    late["database"] = json!("own");
    register(&pool, late_id, "late").await;
    let fleet = s
        .env
        .fleet(&[
            ("FLEET_CONFIG", &s.cfg_path),
            ("FLEET_TENANT_MIGRATIONS", &s.migrations),
        ])
        .await;
    let pools = fleet_shared::databases::DatabasePools::new(
        fleet.settings.databases.clone(),
        fleet.pg.clone(),
        2,
    );
    let set = provisioner::migrations::load(&fleet.settings).unwrap();
    provisioner::own_db::prepare(
        &pools,
        "own",
        "tenant_late",
        "tenant_late",
        late_id,
        "late",
        &set,
    )
    .await
    .unwrap();
    assert_eq!(
        s.databases().await,
        [
            provisioner::own_db::staging_name(early_id),
            "tenant_late".to_owned()
        ]
    );

    // The redeliveries finish both, each with exactly one database, and nothing is dead-lettered.
    let worker = s.worker().await;
    publish_json(&js, "tenant.created", &early).await;
    publish_json(&js, "tenant.created", &late).await;
    wait_active(&pool, "early").await;
    wait_active(&pool, "late").await;
    assert_eq!(s.databases().await, ["tenant_early", "tenant_late"]);
    for (code, id) in [("early", early_id), ("late", late_id)] {
        let db = s.own(&format!("tenant_{code}")).await;
        assert_eq!(marker(&db).await, [(id, code.to_owned())]);
        assert_eq!(ledger(&db, &format!("tenant_{code}")).await.len(), 2);
        assert_eq!(
            registry(&pool, code).await,
            (
                "active".into(),
                "own".into(),
                Some(format!("tenant_{code}")),
                2
            )
        );
    }
    wait_idle(&js).await;
    assert!(dead_letters(&js).await.is_empty());
    worker.stop().await;
}

#[tokio::test]
async fn a_provisioner_killed_while_it_fills_the_new_database_is_finished_by_the_redelivery() {
    let s = OwnServer::new().await;
    // A migration that takes a while, so the kill lands while the staging database is being
    // filled; a short ack wait, so the redelivery comes soon.
    write_migration(
        std::path::Path::new(&s.migrations).parent().unwrap(),
        "0003_slow.sql",
        "SELECT pg_sleep(2);",
    );
    std::fs::write(
        &s.cfg_path,
        format!(
            "[databases.own]\nurl = \"{}\"\ntenants = true\nisolation = \"database\"\n\n\
             [provisioner]\nack_wait = \"2s\"\n",
            s.base_url
        ),
    )
    .unwrap();
    let pool = s.env.db.pool().await;
    let js = js(&s.env).await;
    let bin = LoggedBinary::start(
        &s.env.nats.url(),
        &s.env.db.url,
        "info",
        &[
            ("FLEET_CONFIG", &s.cfg_path),
            ("FLEET_TENANT_MIGRATIONS", &s.migrations),
        ],
    );
    let (id, mut body) = created("killed", "basic");
    body["database"] = json!("own");
    publish_json(&js, "tenant.created", &body).await;
    let staging = provisioner::own_db::staging_name(id);
    eventually(WAIT, "the staging database exists", || async {
        s.databases().await.contains(&staging).then_some(())
    })
    .await;
    bin.kill9();
    assert_eq!(registry(&pool, "killed").await.0, "provisioning");

    let worker = s.worker().await;
    wait_active(&pool, "killed").await;
    assert_eq!(
        s.databases().await,
        ["tenant_killed"],
        "exactly one database"
    );
    let db = s.own("tenant_killed").await;
    assert_eq!(marker(&db).await, [(id, "killed".to_owned())]);
    assert_eq!(ledger(&db, "tenant_killed").await.len(), 3);
    wait_idle(&js).await;
    assert!(dead_letters(&js).await.is_empty());
    worker.stop().await;
}

/// What step 1 of a `tenant.created` commits: the `provisioning` row naming its database.
async fn register(pool: &PgPool, id: Uuid, code: &str) {
    sqlx::query(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name, database, own_database)
         VALUES ($1, $2, $2, 'basic', 'provisioning', 'tenant_' || $2, 'own', 'tenant_' || $2)",
    )
    .bind(id)
    .bind(code)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_database_that_was_there_first_is_refused_and_left_alone() {
    let s = OwnServer::new().await;
    let pool = s.env.db.pool().await;
    let admin = s.admin().await;
    let js = js(&s.env).await;
    sqlx::raw_sql("CREATE DATABASE tenant_taken")
        .execute(&admin)
        .await
        .unwrap();
    let theirs = s.own("tenant_taken").await;
    sqlx::raw_sql("CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)")
        .execute(&theirs)
        .await
        .unwrap();
    theirs.close().await;

    let worker = s.worker().await;
    let (_, mut body) = created("taken", "basic");
    body["database"] = json!("own");
    publish_json(&js, "tenant.created", &body).await;
    let letters = wait_dead_letters(&js, 1).await;
    assert!(
        letters[0]
            .error
            .contains("database tenant_taken (on database server own) already exists")
            && !letters[0].error.contains('\n'),
        "{}",
        letters[0].error
    );
    assert!(
        tenant(&pool, "taken").await.is_none(),
        "registration removed"
    );
    assert_eq!(
        s.databases().await,
        ["tenant_taken"],
        "no staging left behind"
    );
    let n = count(
        &s.own("tenant_taken").await,
        "SELECT count(*) FROM precious",
    )
    .await;
    assert_eq!(n, 1, "their data untouched");
    worker.stop().await;
}
