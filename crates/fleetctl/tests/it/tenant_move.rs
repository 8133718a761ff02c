//! `fleetctl tenants move` through the real binary: a tenant provisioned by the real provisioner
//! on one private Postgres (`wal_level = logical`, `fleet_testkit::PgServer`) moved to another
//! while an application keeps writing to it; an abort after the initial copy; a `kill -9` of the
//! move while its cut-over holds the source frozen, then a re-run; and every refusal. The
//! control plane is on the machine's Postgres (a fresh database per test), whose
//! `wal_level = replica` is what a move from it is refused for.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;

use fleet_testkit::{count, eventually, PgServer, Running, TestEnv};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::run::{create_tenant, exec, ok, refused, stderr, stdout};

const WAIT: Duration = Duration::from_secs(60);

/// The control plane (a [`TestEnv`]), tenant homes `shard_a` and `shard_b` on private servers
/// (two, or two databases of one), and a provisioner running in-process.
struct Homes {
    env: TestEnv,
    servers: Vec<PgServer>,
    urls: BTreeMap<&'static str, String>,
    _cfg: tempfile::NamedTempFile,
    cfg_path: String,
    provisioner: Option<Running>,
}

impl Homes {
    async fn new(two_servers: bool) -> Homes {
        let env = TestEnv::new().await;
        let a = PgServer::start().expect("start a private Postgres");
        let url_a = a.create_database("tenants_a").await.unwrap();
        let mut servers = vec![a];
        if two_servers {
            servers.push(PgServer::start().expect("start a second private Postgres"));
        }
        let url_b = servers
            .last()
            .unwrap()
            .create_database("tenants_b")
            .await
            .unwrap();
        let cfg = tempfile::NamedTempFile::new().unwrap();
        write_config(cfg.path(), &url_a, &url_b);
        let cfg_path = cfg.path().to_str().unwrap().to_owned();
        let fleet = env.fleet(&[("FLEET_CONFIG", &cfg_path)]).await;
        let provisioner = Some(Running::spawn(|t| provisioner::run(fleet, t)));
        Homes {
            env,
            servers,
            urls: BTreeMap::from([("shard_a", url_a), ("shard_b", url_b)]),
            _cfg: cfg,
            cfg_path,
            provisioner,
        }
    }

    /// Rewrites the fleet's configuration, for the fleetctl runs from now on.
    fn configure(&self, url_a: &str, url_b: &str) {
        write_config(std::path::Path::new(&self.cfg_path), url_a, url_b);
    }

    async fn pool(&self, db: &str) -> PgPool {
        let url = match db {
            "control" => &self.env.db.url,
            other => &self.urls[other],
        };
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(url)
            .await
            .unwrap()
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"));
        cmd.args(args)
            .env("NATS_URL", self.env.nats.url())
            .env("DATABASE_URL", &self.env.db.url)
            .env("REDIS_URL", &self.env.redis_url)
            .env("FLEET_CONFIG", &self.cfg_path)
            .kill_on_drop(true);
        cmd
    }

    async fn fleetctl(&self, args: &[&str]) -> Output {
        self.command(args).output().await.expect("run fleetctl")
    }

    /// Provisions `code` on `database` with the real provisioner and waits until it is active.
    async fn provision(&self, code: &str, database: &str) {
        let body = json!({"tenant_id": uuid::Uuid::new_v4(), "code": code, "name": code,
                          "plan": "basic", "database": database});
        let control = self.pool("control").await;
        create_tenant(&self.env, &control, &body, "tenant active").await;
    }

    async fn stop(mut self) {
        if let Some(p) = self.provisioner.take() {
            p.stop().await;
        }
    }
}

fn write_config(path: &std::path::Path, url_a: &str, url_b: &str) {
    std::fs::write(
        path,
        format!(
            "[databases.shard_a]\nurl = \"{url_a}\"\ntenants = true\n\n\
             [databases.shard_b]\nurl = \"{url_b}\"\ntenants = true\n\n\
             [databases.legacy]\nurl = \"{url_b}\"\n"
        ),
    )
    .unwrap();
}

async fn database_of(control: &PgPool, code: &str) -> String {
    sqlx::query_scalar("SELECT database FROM fleet.tenants WHERE code = $1 AND status <> 'deleted'")
        .bind(code)
        .fetch_one(control)
        .await
        .unwrap()
}

/// The application's own tables in the tenant's schema: one written by the application during
/// the move (a `bigserial` key, so the sequence must follow the tenant) and one with rows
/// planted before (an identity column).
async fn application_tables(pool: &PgPool, schema: &str, rows: i64) {
    exec(
        pool,
        &format!(
            "CREATE TABLE {schema}.app_writes (id bigserial PRIMARY KEY, n bigint NOT NULL UNIQUE, at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE {schema}.notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text NOT NULL);
             INSERT INTO {schema}.notes (body) SELECT 'note ' || i FROM generate_series(1, {rows}) i;"
        ),
    )
    .await;
}

/// Rows per table of a schema.
async fn counts(pool: &PgPool, schema: &str) -> BTreeMap<String, i64> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        out.insert(
            t.clone(),
            count(pool, &format!("SELECT count(*) FROM \"{schema}\".\"{t}\"")).await,
        );
    }
    out
}

/// What a move leaves behind on the servers: publications and slots (source side), and
/// subscriptions (target side).
async fn replication_leftovers(source: &PgPool, target: &PgPool) -> (i64, i64, i64) {
    (
        count(source, "SELECT count(*) FROM pg_publication").await,
        count(source, "SELECT count(*) FROM pg_replication_slots").await,
        count(target, "SELECT count(*) FROM pg_subscription").await,
    )
}

async fn move_row(control: &PgPool, code: &str) -> Value {
    sqlx::query_scalar("SELECT to_jsonb(m) FROM fleet.tenant_moves m WHERE code = $1 ORDER BY started_at DESC LIMIT 1")
        .bind(code)
        .fetch_one(control)
        .await
        .unwrap()
}

/// An application writing to the tenant until `stop`: each write goes to the database the
/// registry names; a write refused by the old copy (the move's read-only guard, or its schema
/// renamed away) is not acknowledged, and is tried again after re-reading the registry.
/// Returns the acknowledged writes (n → database) and how many attempts were refused.
async fn application(
    control: PgPool,
    homes: BTreeMap<String, PgPool>,
    stop: CancellationToken,
) -> (BTreeMap<i64, String>, u64) {
    let mut acked = BTreeMap::new();
    let mut refused = 0u64;
    let mut db = database_of(&control, "acme").await;
    let mut n = 0i64;
    while !stop.is_cancelled() {
        n += 1;
        loop {
            let res = sqlx::query("INSERT INTO tenant_acme.app_writes (n) VALUES ($1)")
                .bind(n)
                .execute(&homes[&db])
                .await;
            match res {
                Ok(_) => {
                    acked.insert(n, db.clone());
                    break;
                }
                Err(e) => {
                    let code = fleet_shared::errors::sqlstate(&e).unwrap_or_default();
                    assert!(
                        code == "25006" || code == "42P01",
                        "write {n} to {db} failed unexpectedly: {e}"
                    );
                    if code == "25006" {
                        assert!(
                            e.to_string().contains("has moved to database shard_b"),
                            "{e}"
                        );
                    }
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    db = database_of(&control, "acme").await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    (acked, refused)
}

/// [`Homes`] with `acme` provisioned on shard_a and its application tables holding `rows` rows;
/// with the control, shard_a and shard_b pools.
async fn acme_on_shard_a(two_servers: bool, rows: i64) -> (Homes, PgPool, PgPool, PgPool) {
    let h = Homes::new(two_servers).await;
    h.provision("acme", "shard_a").await;
    let control = h.pool("control").await;
    let a = h.pool("shard_a").await;
    let b = h.pool("shard_b").await;
    application_tables(&a, "tenant_acme", rows).await;
    (h, control, a, b)
}

/// Stops the target's subscription confirming (a cut-over then waits for lag 0 with the source
/// frozen); returns the subscription's name.
async fn disable_subscription(b: &PgPool) -> String {
    let sub: String = sqlx::query_scalar("SELECT subname::text FROM pg_subscription")
        .fetch_one(b)
        .await
        .unwrap();
    exec(b, &format!("ALTER SUBSCRIPTION {sub} DISABLE")).await;
    sub
}

/// `tenants move acme --to shard_b --cutover-timeout 5m` in the background, both output streams
/// going to `stdio()`.
fn start_cutover(h: &Homes, stdio: fn() -> std::process::Stdio) -> tokio::process::Child {
    h.command(&[
        "tenants",
        "move",
        "acme",
        "--to",
        "shard_b",
        "--cutover-timeout",
        "5m",
    ])
    .stdout(stdio())
    .stderr(stdio())
    .spawn()
    .unwrap()
}

/// `fleetctl tenants move acme --to shard_b --until copied`, which must succeed.
async fn move_until_copied(h: &Homes) {
    ok(&h
        .fleetctl(&[
            "tenants", "move", "acme", "--to", "shard_b", "--until", "copied",
        ])
        .await);
}

/// What the application wrote to `tenant_acme.app_writes` on `pool`'s database, in order.
async fn app_writes(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT n FROM tenant_acme.app_writes ORDER BY n")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// How many schemas named `tenant_acme` `pool`'s database has (0 or 1).
async fn acme_schemas(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_acme'",
    )
    .await
}

/// Waits until the `locks` query (a count of locks on the source) finds one: the cut-over froze
/// the source.
async fn wait_frozen(a: &PgPool, locks: &str) {
    eventually(WAIT, "the cut-over froze the source", || async {
        (count(a, locks).await > 0).then_some(())
    })
    .await;
}

async fn events(env: &TestEnv, subject: &str) -> Vec<Value> {
    let js = async_nats::jetstream::new(async_nats::connect(env.nats.url()).await.unwrap());
    let mut stream = js.get_stream("FLEET_EVENTS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        if let Ok(m) = stream.get_raw_message(seq).await {
            if m.subject.as_str() == subject {
                out.push(serde_json::from_slice(&m.payload).unwrap());
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_moves_between_servers_while_the_application_writes() {
    let (h, control, a, b) = acme_on_shard_a(true, 5000).await;
    let before = counts(&a, "tenant_acme").await;
    // The application's read-only role, on both servers; its grants travel with the schema.
    exec(&b, "CREATE ROLE app_reader").await;
    exec(
        &a,
        "CREATE ROLE app_reader; GRANT USAGE ON SCHEMA tenant_acme TO app_reader;
         GRANT SELECT ON tenant_acme.notes TO app_reader;",
    )
    .await;

    let stop = CancellationToken::new();
    let app = tokio::spawn(application(
        control.clone(),
        BTreeMap::from([
            ("shard_a".to_owned(), a.clone()),
            ("shard_b".to_owned(), b.clone()),
        ]),
        stop.clone(),
    ));
    // Some writes before the move starts.
    eventually(WAIT, "the application writes", || async {
        (count(&a, "SELECT count(*) FROM tenant_acme.app_writes").await >= 20).then_some(())
    })
    .await;

    let o = h
        .fleetctl(&["tenants", "move", "acme", "--to", "shard_b"])
        .await;
    let printed = ok(&o);
    for step in [
        "move ",
        "max_slot_wal_keep_size = -1",
        "schema tenant_acme created on shard_b",
        "publication and replication slot",
        "subscription",
        "initial copy done",
        "tenant.moving announced",
        "cut-over took",
        "tenant.moved announced",
        "dropped",
        "archived as moved_acme_",
        "moved acme from shard_a to shard_b",
    ] {
        assert!(printed.contains(step), "{step:?} missing from:\n{printed}");
    }
    // Writes after the cut-over, on the new database.
    let n_after = count(&b, "SELECT count(*) FROM tenant_acme.app_writes").await;
    eventually(WAIT, "the application writes to shard_b", || async {
        (count(&b, "SELECT count(*) FROM tenant_acme.app_writes").await >= n_after + 20)
            .then_some(())
    })
    .await;
    stop.cancel();
    let (acked, refused_writes) = app.await.unwrap();

    assert_eq!(database_of(&control, "acme").await, "shard_b");
    let m = move_row(&control, "acme").await;
    assert_eq!(
        (m["state"].as_str(), m["step"].as_str()),
        (Some("done"), Some("done")),
        "{m}"
    );
    let archive = m["archive_name"].as_str().unwrap().to_owned();
    // Its own namespace, with the move's id: never the name a lifecycle archive would take.
    let move_id = m["move_id"].as_str().unwrap().replace('-', "");
    assert_eq!(archive, format!("moved_acme_{}", &move_id[..16]));

    // Every acknowledged write is on the new copy, once; the old copy holds exactly the writes
    // acknowledged by it, none after the cut-over.
    let on_b: BTreeSet<i64> = sqlx::query_scalar("SELECT n FROM tenant_acme.app_writes")
        .fetch_all(&b)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let on_old: BTreeSet<i64> =
        sqlx::query_scalar(&format!("SELECT n FROM \"{archive}\".app_writes"))
            .fetch_all(&a)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let acked_a: BTreeSet<i64> = acked
        .iter()
        .filter(|(_, d)| *d == "shard_a")
        .map(|(n, _)| *n)
        .collect();
    let acked_b: BTreeSet<i64> = acked
        .iter()
        .filter(|(_, d)| *d == "shard_b")
        .map(|(n, _)| *n)
        .collect();
    assert!(
        !acked_a.is_empty() && !acked_b.is_empty(),
        "writes on both sides of the cut-over"
    );
    let all: BTreeSet<i64> = acked.keys().copied().collect();
    assert_eq!(
        on_b, all,
        "every acknowledged write is on shard_b, nothing else"
    );
    assert_eq!(
        on_old, acked_a,
        "the old copy has only what it acknowledged"
    );
    assert!(
        acked_a.iter().max() < acked_b.iter().min(),
        "no write on the old copy after the cut-over"
    );
    eprintln!(
        "{printed}{} writes acknowledged ({} before the cut-over), {refused_writes} refused by the old copy and retried",
        acked.len(),
        acked_a.len()
    );

    // Row counts per table: the ones the move verified while the source was frozen are the old
    // copy's; the new copy has those plus the writes after the cut-over.
    let frozen: BTreeMap<String, i64> = serde_json::from_value(m["row_counts"].clone()).unwrap();
    assert_eq!(counts(&a, &archive).await, frozen);
    let now_b = counts(&b, "tenant_acme").await;
    assert_eq!(
        frozen.keys().collect::<Vec<_>>(),
        now_b.keys().collect::<Vec<_>>()
    );
    for (t, n) in &frozen {
        let expected = if t == "app_writes" {
            n + acked_b.len() as i64
        } else {
            *n
        };
        assert_eq!(now_b[t], expected, "{t}");
        if t != "app_writes" {
            assert_eq!(before[t], *n, "{t} unchanged by the move");
        }
    }
    // The sequence followed: new rows on shard_b got fresh ids (no duplicate key above), and
    // the identity column continues past the copied rows, with the safety gap
    // (last 5000 + increment 1 × (cache 1 + 1000), then the next value).
    exec(&b, "INSERT INTO tenant_acme.notes (body) VALUES ('after')").await;
    assert_eq!(
        count(&b, "SELECT max(id) FROM tenant_acme.notes").await,
        5000 + 1001 + 1
    );

    assert_eq!(
        count(
            &b,
            "SELECT count(*) FROM (SELECT 1 WHERE has_schema_privilege('app_reader', 'tenant_acme', 'USAGE')
                AND has_table_privilege('app_reader', 'tenant_acme.notes', 'SELECT')) x"
        )
        .await,
        1,
        "the grants moved too"
    );

    // The old copy is archived read-only; replication is gone from both servers.
    assert!(acme_schemas(&a).await == 0);
    let e = sqlx::raw_sql(&format!(
        "INSERT INTO \"{archive}\".notes (body) VALUES ('late')"
    ))
    .execute(&a)
    .await
    .unwrap_err();
    assert_eq!(
        fleet_shared::errors::sqlstate(&e).as_deref(),
        Some("25006"),
        "{e}"
    );
    assert_eq!(replication_leftovers(&a, &b).await, (0, 0, 0));

    // The announcements, each once, with the contract's fields.
    let moving = events(&h.env, "tenant.moving").await;
    let moved = events(&h.env, "tenant.moved").await;
    assert_eq!(moving.len(), 1, "{moving:?}");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(
        (
            moving[0]["code"].as_str(),
            moving[0]["from"].as_str(),
            moving[0]["to"].as_str()
        ),
        (Some("acme"), Some("shard_a"), Some("shard_b"))
    );
    assert_eq!(
        (moved[0]["code"].as_str(), moved[0]["database"].as_str()),
        (Some("acme"), Some("shard_b"))
    );
    // The audit trail records the switch; `tenants show` reads the ledger on shard_b.
    let history = ok(&h.fleetctl(&["tenants", "history", "acme"]).await);
    assert!(history.contains("fleetctl.tenants.move"), "{history}");
    let show = ok(&h.fleetctl(&["tenants", "show", "acme", "--json"]).await);
    let show: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["tenant"]["database"], "shard_b");
    assert!(!show["migrations"].as_array().unwrap().is_empty(), "{show}");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_aborted_after_its_initial_copy_leaves_no_trace_and_refuses_meanwhile() {
    let (h, control, a, b) = acme_on_shard_a(false, 300).await;

    let o = h
        .fleetctl(&[
            "tenants", "move", "acme", "--to", "shard_b", "--until", "copied", "--json",
        ])
        .await;
    let lines: Vec<Value> = ok(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<&str> = lines.iter().map(|l| l["step"].as_str().unwrap()).collect();
    assert_eq!(steps.first(), Some(&"started"), "{steps:?}");
    assert!(
        steps.contains(&"copied") && steps.last() == Some(&"stopped"),
        "{steps:?}"
    );
    // Streaming now: a write on the source arrives on the target's copy.
    exec(&a, "INSERT INTO tenant_acme.app_writes (n) VALUES (1)").await;
    eventually(WAIT, "the write streamed to shard_b", || async {
        (count(&b, "SELECT count(*) FROM tenant_acme.app_writes").await == 1).then_some(())
    })
    .await;
    assert_eq!(
        count(&b, "SELECT count(*) FROM tenant_acme.notes").await,
        300
    );
    assert_eq!(replication_leftovers(&a, &b).await, (1, 1, 1));

    // While it is in flight: another move, and an archive, are refused.
    refused(
        &h.fleetctl(&["tenants", "move", "acme", "--to", "control"])
            .await,
        "tenant acme is being moved from shard_a to shard_b",
    );
    refused(
        &h.fleetctl(&["tenants", "delete", "acme"]).await,
        "being moved from shard_a to shard_b",
    );

    let o = h.fleetctl(&["tenants", "move", "acme", "--abort"]).await;
    assert!(
        ok(&o).contains("aborted after step copied"),
        "{}",
        stdout(&o)
    );
    let m = move_row(&control, "acme").await;
    assert_eq!(m["state"], "aborted", "{m}");
    assert_eq!(database_of(&control, "acme").await, "shard_a");
    assert_eq!(replication_leftovers(&a, &b).await, (0, 0, 0));
    assert_eq!(acme_schemas(&b).await, 0, "the target's copy is dropped");
    // The source is as it was, and writable.
    exec(&a, "INSERT INTO tenant_acme.app_writes (n) VALUES (2)").await;
    assert_eq!(
        count(&a, "SELECT count(*) FROM tenant_acme.app_writes").await,
        2
    );
    refused(
        &h.fleetctl(&["tenants", "move", "acme", "--abort"]).await,
        "tenant acme has no move in flight",
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_killed_during_its_cut_over_leaves_the_source_serving_and_a_rerun_finishes() {
    let (h, control, a, b) = acme_on_shard_a(false, 300).await;
    move_until_copied(&h).await;
    // The subscription stops confirming, so the cut-over waits for lag 0 with the source frozen.
    let sub = disable_subscription(&b).await;
    exec(&a, "INSERT INTO tenant_acme.app_writes (n) VALUES (1)").await;

    let mut child = start_cutover(&h, std::process::Stdio::null);
    wait_frozen(
        &a,
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'tenant_acme' AND l.mode = 'ExclusiveLock' AND l.granted",
    )
    .await;
    // An application write now waits behind the freeze.
    let waiting = tokio::spawn({
        let a = a.clone();
        async move {
            sqlx::query("INSERT INTO tenant_acme.app_writes (n) VALUES (2)")
                .execute(&a)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the write waits while the source is frozen"
    );
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();

    // The freeze died with the process: the waiting write lands on the source, which still
    // serves the tenant alone.
    waiting
        .await
        .unwrap()
        .expect("the write commits on the source");
    assert_eq!(database_of(&control, "acme").await, "shard_a");
    assert_eq!(move_row(&control, "acme").await["step"], "cutover");
    assert_eq!(
        count(
            &a,
            "SELECT count(*) FROM pg_proc WHERE proname = 'fleet_moved_guard'"
        )
        .await,
        0,
        "no guard: the freeze was rolled back"
    );

    exec(&b, &format!("ALTER SUBSCRIPTION {sub} ENABLE")).await;
    let printed = ok(&h
        .fleetctl(&["tenants", "move", "acme", "--to", "shard_b"])
        .await);
    assert!(
        printed.contains("resuming move") && printed.contains("after step cutover"),
        "{printed}"
    );
    assert!(
        printed.contains("moved acme from shard_a to shard_b"),
        "{printed}"
    );
    assert_eq!(database_of(&control, "acme").await, "shard_b");
    let on_b = app_writes(&b).await;
    assert_eq!(
        on_b,
        [1, 2],
        "both writes, the one made during the killed freeze too"
    );
    assert_eq!(move_row(&control, "acme").await["state"], "done");
    assert_eq!(replication_leftovers(&a, &b).await, (0, 0, 0));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_moves_are_refused_in_one_line_and_change_nothing() {
    let h = Homes::new(false).await;
    let control = h.pool("control").await;
    let shared_wal: String = sqlx::query_scalar("SHOW wal_level")
        .fetch_one(&control)
        .await
        .unwrap();
    assert_eq!(
        shared_wal, "replica",
        "this test expects the machine's Postgres without wal_level = logical"
    );
    h.provision("acme", "control").await;
    h.provision("bravo", "shard_a").await;
    h.provision("carol", "shard_a").await;
    h.provision("dave", "shard_a").await;
    h.provision("erin", "shard_a").await;
    let a = h.pool("shard_a").await;
    exec(&a, "CREATE TABLE tenant_carol.no_key (a int)").await;
    exec(
        &a,
        "CREATE UNLOGGED TABLE tenant_dave.scratch (id int PRIMARY KEY)",
    )
    .await;
    // A copy_to_tenant backfill job of erin's, not started yet.
    exec(
        &control,
        "INSERT INTO fleet.backfill_jobs (job_id, submit_key, kind, spec)
         VALUES ('5e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b', 'erin-copy', 'copy_to_tenant',
                 '{\"kind\": \"copy_to_tenant\", \"table\": \"sessions\", \"tenant_code\": \"erin\"}')",
    )
    .await;
    exec(
        &control,
        "UPDATE fleet.tenants SET status = 'suspended' WHERE code = 'bravo'",
    )
    .await;

    for (args, needle) in [
        ("acme --to nowhere", "unknown database \"nowhere\""),
        ("acme --to control", "tenant acme is already on database control"),
        ("acme --to legacy", "database legacy is not a tenant home"),
        ("acme --to shard_b", "has wal_level = replica"),
        ("bravo --to shard_b", "tenant bravo is suspended; only an active tenant can be moved"),
        ("carol --to shard_b", "no_key of tenant_carol have no primary key or replica identity"),
        ("dave --to shard_b", "scratch of tenant_dave are unlogged"),
        (
            "erin --to shard_b",
            "tenant erin has copy_to_tenant backfill job 5e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b pending",
        ),
        ("ghost --to shard_b", "no tenant with code ghost"),
        ("Bad! --to shard_b", "is not a valid code"),
        ("acme --abort", "tenant acme has no move in flight"),
        ("acme", "required arguments were not provided"),
    ] {
        let mut full = vec!["tenants", "move"];
        full.extend(args.split_whitespace());
        refused(&h.fleetctl(&full).await, needle);
    }
    assert_eq!(
        count(&control, "SELECT count(*) FROM fleet.tenant_moves").await,
        0
    );
    let b = h.pool("shard_b").await;
    assert_eq!(
        count(
            &b,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant_%'"
        )
        .await,
        0
    );
    assert_eq!(replication_leftovers(&a, &b).await, (0, 0, 0));
    h.stop().await;
}

/// The state a crash between the cut-over's two commits leaves (the source guarded read-only,
/// the registry still naming it, the move at step `cutover`), made by hand with the guard's
/// shape: `--abort` lifts the guard, and a re-run of a new move in the same state finishes.
async fn as_if_crashed_between_the_commits(control: &PgPool, a: &PgPool) {
    sqlx::query(
        "UPDATE fleet.tenant_moves SET step = 'cutover' WHERE code = 'acme' AND state = 'running'",
    )
    .execute(control)
    .await
    .unwrap();
    exec(
        a,
        "CREATE FUNCTION tenant_acme.fleet_moved_guard() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'tenant % has moved to database %', TG_ARGV[0], TG_ARGV[1] USING ERRCODE = '25006'; END $$;
         CREATE TRIGGER fleet_moved_guard BEFORE INSERT OR UPDATE OR DELETE ON tenant_acme.app_writes
           FOR EACH ROW EXECUTE FUNCTION tenant_acme.fleet_moved_guard('acme', 'shard_b');",
    )
    .await;
    let e = sqlx::raw_sql("INSERT INTO tenant_acme.app_writes (n) VALUES (99)")
        .execute(a)
        .await
        .unwrap_err();
    assert_eq!(fleet_shared::errors::sqlstate(&e).as_deref(), Some("25006"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_left_read_only_by_a_crash_is_lifted_by_abort_or_finished_by_a_rerun() {
    let (h, control, a, b) = acme_on_shard_a(false, 100).await;
    exec(&a, "INSERT INTO tenant_acme.app_writes (n) VALUES (1)").await;

    move_until_copied(&h).await;
    as_if_crashed_between_the_commits(&control, &a).await;
    ok(&h.fleetctl(&["tenants", "move", "acme", "--abort"]).await);
    exec(&a, "INSERT INTO tenant_acme.app_writes (n) VALUES (2)").await;
    assert_eq!(database_of(&control, "acme").await, "shard_a");
    assert_eq!(replication_leftovers(&a, &b).await, (0, 0, 0));

    move_until_copied(&h).await;
    as_if_crashed_between_the_commits(&control, &a).await;
    let printed = ok(&h
        .fleetctl(&["tenants", "move", "acme", "--to", "shard_b"])
        .await);
    assert!(
        printed.contains("read-only since an earlier attempt"),
        "{printed}"
    );
    assert_eq!(database_of(&control, "acme").await, "shard_b");
    let on_b = app_writes(&b).await;
    assert_eq!(on_b, [1, 2]);
    exec(&b, "INSERT INTO tenant_acme.app_writes (n) VALUES (3)").await;
    h.stop().await;
}

/// Terminates the backend holding the move's driver lock (as an idle timeout on the way to the
/// control plane would cut it); returns how many it ended.
async fn cut_driver_connection(control: &PgPool) -> i64 {
    count(
        control,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_locks
          WHERE locktype = 'advisory' AND classid = x'6d6f7665'::int::oid AND granted
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_lost_its_lock_does_not_switch_and_an_abort_after_a_switch_is_refused() {
    let (h, control, a, b) = acme_on_shard_a(false, 50).await;
    exec(&a, "INSERT INTO tenant_acme.app_writes (n) VALUES (1)").await;
    move_until_copied(&h).await;
    // The subscription stops confirming, so the cut-over waits with the source frozen.
    let sub = disable_subscription(&b).await;
    exec(&a, "INSERT INTO tenant_acme.app_writes (n) VALUES (2)").await;
    let child = start_cutover(&h, std::process::Stdio::piped);
    wait_frozen(
        &a,
        "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'tenant_acme' AND c.relkind = 'S' AND l.granted
                AND l.mode = 'ShareRowExclusiveLock'",
    )
    .await;
    // The freeze blocks new ids too: nextval waits for the sequence's lock.
    let id = tokio::spawn({
        let a = a.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT nextval('tenant_acme.app_writes_id_seq')")
                .fetch_one(&a)
                .await
        }
    });
    eventually(WAIT, "nextval waits behind the freeze", || async {
        (count(
            &a,
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
              WHERE c.relname = 'app_writes_id_seq' AND NOT l.granted",
        )
        .await
            > 0)
        .then_some(())
    })
    .await;

    // The driver's connection is cut while it waits; the subscription then catches up.
    assert_eq!(cut_driver_connection(&control).await, 1);
    exec(&b, &format!("ALTER SUBSCRIPTION {sub} ENABLE")).await;
    let o = child.wait_with_output().await.unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains("lost its lock on the move of tenant acme"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    // Nothing switched: the source serves, writable, and the id read during the freeze was not
    // handed out twice.
    assert_eq!(database_of(&control, "acme").await, "shard_a");
    assert_eq!(move_row(&control, "acme").await["step"], "cutover");
    let frozen_id = id.await.unwrap().unwrap();
    exec(&a, "INSERT INTO tenant_acme.app_writes (n) VALUES (3)").await;

    // A re-run finishes; the target's sequence starts past every id the source handed out.
    let printed = ok(&h
        .fleetctl(&["tenants", "move", "acme", "--to", "shard_b"])
        .await);
    assert!(printed.contains("resuming move"), "{printed}");
    assert_eq!(database_of(&control, "acme").await, "shard_b");
    let source_last = count(
        &a,
        "SELECT last_value FROM pg_sequences WHERE sequencename = 'app_writes_id_seq'",
    )
    .await;
    assert!(source_last > frozen_id, "{source_last} {frozen_id}");
    let next = count(&b, "SELECT nextval('tenant_acme.app_writes_id_seq')").await;
    assert!(next > source_last + 1000, "{next} after {source_last}");

    // A move whose switch committed is not aborted, even if its record still said cutover
    // (as when a run that lost its lock committed the switch).
    exec(
        &control,
        "UPDATE fleet.tenant_moves SET state = 'running', step = 'cutover', finished_at = NULL WHERE code = 'acme'",
    )
    .await;
    refused(
        &h.fleetctl(&["tenants", "move", "acme", "--abort"]).await,
        "the cut-over of move",
    );
    assert_eq!(database_of(&control, "acme").await, "shard_b");
    assert_eq!(
        count(&b, "SELECT count(*) FROM tenant_acme.app_writes").await,
        3,
        "the tenant's copy on shard_b is untouched"
    );
    h.stop().await;
}

/// The statement carrying the source's password is kept out of the target's log; an abort with
/// the target down cleans the source and names what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_source_password_stays_out_of_the_target_log_and_abort_cleans_the_source_with_the_target_down(
) {
    let mut h = Homes::new(true).await;
    h.provision("acme", "shard_a").await;
    let a = h.pool("shard_a").await;
    let b = h.pool("shard_b").await;
    application_tables(&a, "tenant_acme", 50).await;
    // The target server logs every statement; the source's URL carries a password (trust
    // authentication ignores it, but the subscription's connection string holds it).
    exec(&b, "ALTER SYSTEM SET log_statement = 'all'").await;
    exec(&b, "SELECT pg_reload_conf()").await;
    let secret = "s3cret-pw-9f1c";
    let url_a = h.urls["shard_a"].replace("postgres@", &format!("postgres:{secret}@"));
    let url_b = h.urls["shard_b"].clone();
    h.configure(&url_a, &url_b);
    ok(&h
        .fleetctl(&[
            "tenants",
            "move",
            "acme",
            "--to",
            "shard_b",
            "--until",
            "subscribed",
        ])
        .await);
    let log = h.servers[1].log();
    assert!(
        log.contains("pg_subscription"),
        "the target logs statements:\n{log}"
    );
    assert!(!log.contains(secret), "{log}");
    assert!(!log.contains("CREATE SUBSCRIPTION"), "{log}");

    // The target goes down: --abort still drops the slot and publication on the source, and
    // says what is left on the target.
    h.servers[1].stop();
    let o = h.fleetctl(&["tenants", "move", "acme", "--abort"]).await;
    refused(&o, "is left on database shard_b");
    assert_eq!(count(&a, "SELECT count(*) FROM pg_publication").await, 0);
    assert_eq!(
        count(&a, "SELECT count(*) FROM pg_replication_slots").await,
        0
    );
    let control = h.pool("control").await;
    assert_eq!(move_row(&control, "acme").await["state"], "running");

    // Back up: a second --abort finishes the target's side.
    h.servers[1].restart().unwrap();
    ok(&h.fleetctl(&["tenants", "move", "acme", "--abort"]).await);
    let b = h.pool("shard_b").await;
    assert_eq!(replication_leftovers(&a, &b).await, (0, 0, 0));
    assert_eq!(acme_schemas(&b).await, 0);
    assert_eq!(move_row(&control, "acme").await["state"], "aborted");
    assert_eq!(database_of(&control, "acme").await, "shard_a");
    h.stop().await;
}
