//! Helpers shared by the provisioner's integration tests: start the worker in-process on a
//! [`TestEnv`], publish events, and read the lasting state (registry rows, schemas, ledgers,
//! configs, dead letters, announcements) the assertions are made on.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use fleet_shared::dlq::{self, DeadLetter};
use fleet_shared::topology::EVENTS_STREAM;
use fleet_testkit::{eventually, Running, TestEnv};
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(60);
/// Tables of the built-in set plus the ledger.
pub const BUILT_IN_TABLES: i64 = 23;
pub const BUILT_IN_VERSION: i64 = 5;

/// A worker running in-process until [`Worker::stop`].
pub struct Worker {
    pub running: Running,
    pub fleet: fleet_shared::Fleet,
}

impl Worker {
    pub async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Worker {
        let fleet = env.fleet(extra).await;
        let f = fleet.clone();
        let running = Running::spawn(|t| provisioner::run(f, t));
        Worker { running, fleet }
    }

    /// Cancels the worker and waits for its graceful shutdown.
    pub async fn stop(self) {
        self.running.stop().await;
    }

    /// Messages NAKed for a retry so far.
    pub fn retried(&self) -> u64 {
        let m = &self.fleet.metrics.worker;
        m.retried
            .get_or_create(&fleet_shared::metrics::EventLabels {
                worker: provisioner::NAME.into(),
                event: "tenant.created".into(),
            })
            .get()
    }
}

pub async fn js(env: &TestEnv) -> jetstream::Context {
    let client = async_nats::connect(env.nats.url())
        .await
        .expect("connect to test NATS");
    jetstream::new(client)
}

/// A `tenant.created` body for a fresh tenant.
pub fn created(code: &str, plan: &str) -> (Uuid, Value) {
    let id = Uuid::new_v4();
    let body =
        json!({"tenant_id": id, "code": code, "name": format!("Tenant {code}"), "plan": plan});
    (id, body)
}

pub async fn publish(js: &jetstream::Context, subject: &str, msg_id: &str, payload: Vec<u8>) {
    publish_with(js, subject, msg_id, payload, HeaderMap::new()).await;
}

pub async fn publish_with(
    js: &jetstream::Context,
    subject: &str,
    msg_id: &str,
    payload: Vec<u8>,
    mut headers: HeaderMap,
) {
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
}

pub async fn publish_json(js: &jetstream::Context, subject: &str, body: &Value) {
    publish(
        js,
        subject,
        &Uuid::new_v4().to_string(),
        serde_json::to_vec(body).unwrap(),
    )
    .await;
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub tenant_id: Uuid,
    pub code: String,
    pub name: String,
    pub plan: String,
    pub org_code: Option<String>,
    pub status: String,
    pub schema_name: String,
    pub schema_version: i64,
    pub provisioned_at: Option<chrono::DateTime<chrono::Utc>>,
}
fleet_shared::from_row!(Tenant {
    tenant_id,
    code,
    name,
    plan,
    org_code,
    status,
    schema_name,
    schema_version,
    provisioned_at
});

/// The live tenant with `code`, else an archived one.
pub async fn tenant(pool: &PgPool, code: &str) -> Option<Tenant> {
    sqlx::query_as(
        "SELECT tenant_id, code, name, plan, org_code, status, schema_name, schema_version,
                provisioned_at
           FROM fleet.tenants WHERE code = $1 ORDER BY status = 'deleted' LIMIT 1",
    )
    .bind(code)
    .fetch_optional(pool)
    .await
    .expect("read tenant")
}

/// Waits until `code` is active and returns its row.
pub async fn wait_active(pool: &PgPool, code: &str) -> Tenant {
    eventually(WAIT, &format!("tenant {code} active"), || async {
        tenant(pool, code).await.filter(|t| t.status == "active")
    })
    .await
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub async fn tenant_rows(pool: &PgPool) -> i64 {
    count(pool, "SELECT count(*) FROM fleet.tenants").await
}

/// Schemas named `tenant_%` (what provisioning creates).
pub async fn tenant_schemas(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'",
    )
    .await
}

pub async fn schema_exists(pool: &PgPool, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Base tables of a schema, sorted (the ledger included).
pub use fleet_testkit::db::base_tables as tables;

/// `(version, name, checksum)` rows of a schema's ledger.
pub async fn ledger(pool: &PgPool, schema: &str) -> Vec<(i64, String, String)> {
    sqlx::query_as(&format!(
        "SELECT version, name, checksum FROM \"{schema}\".schema_migrations ORDER BY version"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

pub async fn configs(pool: &PgPool, tenant_id: Uuid) -> BTreeMap<String, Value> {
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT config_key, config_value FROM fleet.tenant_configurations WHERE tenant_id = $1",
    )
    .bind(tenant_id)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Waits until the provisioner's dead letters number at least `n`.
pub async fn wait_dead_letters(js: &jetstream::Context, n: usize) -> Vec<DeadLetter> {
    eventually(WAIT, &format!("{n} dead letters"), || async {
        let letters = dlq::list(js, Some(provisioner::NAME), 1000)
            .await
            .unwrap_or_default();
        (letters.len() >= n).then_some(letters)
    })
    .await
}

pub async fn dead_letters(js: &jetstream::Context) -> Vec<DeadLetter> {
    dlq::list(js, Some(provisioner::NAME), 1000)
        .await
        .unwrap_or_default()
}

/// `tenant.provisioned` messages stored in the events stream.
pub async fn announcements(js: &jetstream::Context) -> usize {
    let stream = js.get_stream(EVENTS_STREAM).await.unwrap();
    let mut subjects = stream
        .info_with_subjects("tenant.provisioned")
        .await
        .unwrap();
    let mut n = 0;
    while let Some(s) = subjects.next().await {
        n += s.unwrap().1;
    }
    n
}

/// Waits until the provisioner's durable has nothing pending or unacknowledged: every message
/// published so far has been decided on.
pub async fn wait_idle(js: &jetstream::Context) {
    eventually(WAIT, "provisioner consumer idle", || async {
        let stream = js.get_stream(EVENTS_STREAM).await.ok()?;
        let mut c: jetstream::consumer::PullConsumer =
            stream.get_consumer(provisioner::DURABLE).await.ok()?;
        let info = c.info().await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await
}

/// Asserts that `code`'s tenant exists once, fully provisioned with the built-in set.
pub async fn assert_provisioned_once(pool: &PgPool, code: &str) -> Tenant {
    let t = wait_active(pool, code).await;
    assert_eq!(t.code, code);
    let schema = format!("tenant_{code}");
    assert_eq!(t.schema_name, schema);
    assert_eq!(t.schema_version, BUILT_IN_VERSION);
    assert!(t.provisioned_at.is_some());
    assert_eq!(
        tables(pool, &schema).await.len() as i64,
        BUILT_IN_TABLES + 1,
        "23 mentoring tables + ledger in {schema}"
    );
    assert_eq!(ledger(pool, &schema).await.len() as i64, BUILT_IN_VERSION);
    t
}

/// The real `provisioner` binary on a free HTTP port, logging JSON at `rust_log` into a temporary
/// file; [`LoggedBinary::start`] returns once the port answers.
pub struct LoggedBinary {
    child: std::process::Child,
    log: tempfile::NamedTempFile,
    pub port: u16,
}

impl LoggedBinary {
    pub fn start(
        nats_url: &str,
        database_url: &str,
        rust_log: &str,
        extra: &[(&str, &str)],
    ) -> LoggedBinary {
        let log = tempfile::NamedTempFile::new().unwrap();
        let port = fleet_testkit::free_port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
            .env("NATS_URL", nats_url)
            .env("DATABASE_URL", database_url)
            .env("FLEET_HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", rust_log)
            .envs(extra.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        fleet_testkit::wait_for_port(port, WAIT).expect("provisioner up");
        LoggedBinary { child, log, port }
    }

    /// What the binary has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// `kill -9`: the process dies at once, mid-whatever it was doing.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM, waits for the exit and returns everything the binary logged.
    pub async fn terminate(mut self) -> String {
        std::process::Command::new("kill")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        eventually(WAIT, "the binary to exit", || {
            let s = self.child.try_wait().unwrap();
            async move { s }
        })
        .await;
        self.logs()
    }
}

/// The real `provisioner` binary as a child process (stdout dropped, logs on stderr at `warn`,
/// `info` with `TEST_LOG`), up once its HTTP port answers; for tests that signal or kill it.
pub fn spawn_binary(env: &TestEnv, config: &str) -> std::process::Child {
    let port = fleet_testkit::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_provisioner"))
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("FLEET_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("FLEET_CONFIG", config)
        .env("FLEET_SHUTDOWN_TIMEOUT", "20s")
        .env("LOG_FORMAT", "json")
        .env(
            "RUST_LOG",
            std::env::var("TEST_LOG").map_or("warn".into(), |_| "info".to_string()),
        )
        .env_remove("FLEET_TENANT_MIGRATIONS")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn the provisioner binary");
    fleet_testkit::wait_for_port(port, Duration::from_secs(60)).expect("provisioner binary up");
    child
}
