//! The console's actions against what the CLI does, on real services: the tenant lifecycle
//! actions publish the very event `fleetctl tenants …` publishes (and nothing on bad input), a
//! bulk replay replays each letter once within its cap, backfill resume/cancel/retry leave a job
//! as `fleetctl backfill` leaves its twin, and `fleetctl up` serves the console.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet_shared::dlq;
use fleet_testkit::http::{request, HttpResponse};
use fleet_testkit::{eventually, free_port, wait_for_port, TestEnv};
use serde_json::{json, Value};

use crate::console;
use crate::run::{dead_letter, fleetctl, ok};

const TOKEN: &str = "console-actions-token-0123456789";
const SECRET: &str = "s3cret-never-shown-9f2c";

/// `fleetctl console` with the token; its log goes to a file the test can read.
struct Console {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Console {
    fn start(env: &TestEnv) -> Console {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("console.log")).unwrap();
        let port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .arg("console")
            .env("NATS_URL", env.nats.url())
            .env("DATABASE_URL", &env.db.url)
            .env("REDIS_URL", &env.redis_url)
            .env("FLEET_CONSOLE_ADDR", format!("127.0.0.1:{port}"))
            .env("FLEET_CONSOLE_TOKEN", TOKEN)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "debug")
            .env_remove("FLEET_CONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for_port(port, Duration::from_secs(60)).expect("console listens");
        Console {
            child,
            addr: format!("127.0.0.1:{port}"),
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap()
    }

    async fn get(&self, path: &str, cookie: &str) -> HttpResponse {
        console::get(&self.addr, path, Some(cookie)).await
    }

    async fn post(&self, path: &str, cookie: &str, form: &str) -> HttpResponse {
        console::post(&self.addr, path, cookie, form).await
    }

    /// A logged-in session: its cookie and CSRF token.
    async fn login(&self) -> (String, String) {
        console::login_with(&self.addr, TOKEN).await
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message in `FLEET_EVENTS`: subject, JSON body, `Fleet-Actor`.
async fn events(js: &async_nats::jetstream::Context) -> Vec<(String, Value, String)> {
    let mut stream = js.get_stream("FLEET_EVENTS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let actor = m
            .headers
            .get("Fleet-Actor")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push((
            m.subject.to_string(),
            serde_json::from_slice(&m.payload).unwrap(),
            actor,
        ));
    }
    out
}

async fn seed_tenant(pg: &sqlx::PgPool, code: &str) {
    sqlx::query(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
         VALUES (gen_random_uuid(), $1, 'Acme', 'basic', 'active', 'tenant_' || $1)",
    )
    .bind(code)
    .execute(pg)
    .await
    .unwrap();
}

#[tokio::test]
async fn tenant_actions_publish_the_clis_events_and_bad_input_publishes_nothing() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    seed_tenant(&fleet.pg, "acme").await;
    let c = Console::start(&env);
    let (cookie, csrf) = c.login().await;

    // The forms are there, with the known plans and an empty value field.
    let page = c.get("/tenants/acme", &cookie).await.text();
    for needle in [
        "id=\"change-plan\"",
        "<option value=\"premium\">",
        "<option value=\"basic\" selected>",
        "id=\"config-set\"",
        "id=\"config-unset\"",
        "id=\"delete\"",
    ] {
        assert!(page.contains(needle), "{needle}: {page}");
    }

    // Each action publishes exactly one event, the one the CLI publishes for the same change.
    let actions: [(&str, String, &[&str], &str); 4] = [
        (
            "plan",
            "plan=premium".into(),
            &["tenants", "update", "acme", "--plan", "premium"],
            "tenant.updated",
        ),
        (
            "config-set",
            "key=api.rate_limit&value=5000".into(),
            &["tenants", "config", "set", "acme", "api.rate_limit", "5000"],
            "tenant.config.set",
        ),
        (
            "config-set",
            format!("key=sso.secret&value={SECRET}&encrypted=on"),
            &[
                "tenants",
                "config",
                "set",
                "acme",
                "sso.secret",
                SECRET,
                "--encrypted",
            ],
            "tenant.config.set",
        ),
        (
            "config-unset",
            "key=api.rate_limit".into(),
            &["tenants", "config", "unset", "acme", "api.rate_limit"],
            "tenant.config.unset",
        ),
    ];
    for (action, form, cli, subject) in actions {
        let before = events(&fleet.js).await.len();
        let r = c
            .post(
                &format!("/tenants/acme/{action}"),
                &cookie,
                &format!("csrf={csrf}&{form}"),
            )
            .await;
        assert_eq!(r.status, 303, "{action}: {}", r.text());
        let shown = c.get("/tenants/acme", &cookie).await.text();
        assert!(
            shown.contains(&format!("published {subject}")),
            "{action}: {shown}"
        );
        assert!(!shown.contains(SECRET), "{action} shows the value");
        let mut cli = cli.to_vec();
        cli.push("--no-wait");
        ok(&fleetctl(&env, &cli, &[]));
        let after = events(&fleet.js).await;
        assert_eq!(after.len(), before + 2, "{action}: one event each");
        let (ref s1, ref console_body, ref actor) = after[before];
        let (ref s2, ref cli_body, _) = after[before + 1];
        assert_eq!((s1.as_str(), s2.as_str()), (subject, subject), "{action}");
        assert_eq!(console_body, cli_body, "{action}: the CLI's event");
        assert_eq!(actor, "console");
    }
    let last_set = events(&fleet.js).await;
    assert_eq!(
        last_set[4].1,
        json!({"code": "acme", "key": "sso.secret", "value": SECRET, "encrypted": true})
    );

    // Bad input: the reason on the page, nothing published, the value not echoed.
    let before = events(&fleet.js).await.len();
    for (path, form, status, reason) in [
        (
            "/tenants/acme/plan",
            format!("csrf={csrf}&plan=gold"),
            400,
            "unknown plan &quot;gold&quot; (known plans: basic, custom, enterprise, premium)",
        ),
        (
            "/tenants/acme/config-set",
            format!("csrf={csrf}&key=bad+key%27&value={SECRET}&encrypted=on"),
            400,
            "is not a config key",
        ),
        (
            "/tenants/acme/config-set",
            format!("csrf={csrf}&key=sso.secret&value=&encrypted=on"),
            400,
            "the value is empty",
        ),
        (
            "/tenants/acme/config-unset",
            format!("csrf={csrf}&key="),
            400,
            "is not a config key",
        ),
        (
            "/tenants/acme/delete",
            format!("csrf={csrf}&confirm=acm"),
            400,
            "type the tenant's code to confirm",
        ),
        (
            "/tenants/acme/delete",
            format!("csrf={csrf}&confirm=acme&mode=shred"),
            400,
            "a delete is archive or purge",
        ),
        (
            "/tenants/ghost/plan",
            format!("csrf={csrf}&plan=premium"),
            404,
            "no tenant with code ghost",
        ),
        (
            "/tenants/acme/resume",
            format!("csrf={csrf}"),
            409,
            "only a tenant that is suspended can be resumed",
        ),
        ("/tenants/acme/delete", "confirm=acme".into(), 403, "CSRF"),
        (
            "/tenants/acme/config-set",
            format!("key=sso.secret&value={SECRET}"),
            403,
            "CSRF",
        ),
    ] {
        let r = c.post(path, &cookie, &form).await;
        let text = r.text();
        assert_eq!(r.status, status, "{path} {form}: {text}");
        assert!(text.contains(reason), "{path} {form}: {text}");
        assert!(!text.contains(SECRET), "{path} echoes the value");
    }
    assert_eq!(events(&fleet.js).await.len(), before, "nothing published");

    // Delete with the code typed: the CLI's tenant.deleted.
    let r = c
        .post(
            "/tenants/acme/delete",
            &cookie,
            &format!("csrf={csrf}&mode=archive&confirm=acme"),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    ok(&fleetctl(
        &env,
        &["tenants", "delete", "acme", "--no-wait"],
        &[],
    ));
    let after = events(&fleet.js).await;
    assert_eq!(after.len(), before + 2);
    assert_eq!(after[before].0, "tenant.deleted");
    assert_eq!(after[before].1, json!({"code": "acme", "mode": "archive"}));
    assert_eq!(after[before].1, after[before + 1].1);

    assert!(!c.log().contains(SECRET), "the console logs the value");
}

#[tokio::test]
async fn a_bulk_replay_from_the_console_replays_each_letter_once_within_its_cap() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    for i in 0..5u64 {
        let payload = format!(r#"{{"code":"t{i}"}}"#);
        dead_letter(
            &fleet.js,
            "provisioner",
            "tenant.migrate",
            payload,
            i + 1,
            "refused",
        )
        .await;
    }
    dead_letter(
        &fleet.js,
        "scheduler",
        "tenant.migrate",
        r#"{"code":"other"}"#,
        9,
        "refused",
    )
    .await;
    let c = Console::start(&env);
    let (cookie, csrf) = c.login().await;
    let left = |w: &'static str| {
        let js = fleet.js.clone();
        async move { dlq::list(&js, Some(w), 100).await.unwrap().len() }
    };

    // At most 3: three replayed, two left, the other worker's letter untouched.
    let r = c
        .post(
            "/dlq/replay-all",
            &cookie,
            &format!("csrf={csrf}&worker=provisioner&max=3"),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let shown = c.get("/dlq", &cookie).await.text();
    assert!(shown.contains("replayed 3 dead letter(s)"), "{shown}");
    assert_eq!(left("provisioner").await, 2);
    assert_eq!(left("scheduler").await, 1);
    assert_eq!(events(&fleet.js).await.len(), 3);

    // A bad cap is refused and replays nothing.
    let r = c
        .post(
            "/dlq/replay-all",
            &cookie,
            &format!("csrf={csrf}&worker=provisioner&max=0"),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(left("provisioner").await, 2);

    // The rest: every letter of the worker replayed exactly once.
    let r = c
        .post(
            "/dlq/replay-all",
            &cookie,
            &format!("csrf={csrf}&worker=provisioner"),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(left("provisioner").await, 0);
    assert_eq!(left("scheduler").await, 1);
    let mut codes: Vec<String> = events(&fleet.js)
        .await
        .into_iter()
        .map(|(subject, body, _)| {
            assert_eq!(subject, "tenant.migrate");
            body["code"].as_str().unwrap().to_owned()
        })
        .collect();
    codes.sort();
    assert_eq!(codes, ["t0", "t1", "t2", "t3", "t4"]);
}

/// A job in `state` with one failed and one done chunk, as the twin of another.
async fn seed_job(pg: &sqlx::PgPool, key: &str, state: &str, resume: Option<&str>) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO fleet.backfill_jobs (job_id, submit_key, kind, spec, state, resume_state, started_at,
                                          chunks_failed, chunks_done, chunks_total)
         VALUES ($1, $2, 'sql', '{}', $3, $4, now(), 1, 1, 2)",
    )
    .bind(id)
    .bind(key)
    .bind(state)
    .bind(resume)
    .execute(pg)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO fleet.backfill_parts (job_id, part, name, statement, mode, lo, hi, next_lo)
         VALUES ($1, 0, 'p', 'SELECT 1', 'exec', 0, 200, 200)",
    )
    .bind(id)
    .execute(pg)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO fleet.backfill_chunks (job_id, part, lo, hi, state, error)
         VALUES ($1, 0, 0, 100, 'done', NULL), ($1, 0, 100, 200, 'failed', 'boom')",
    )
    .bind(id)
    .execute(pg)
    .await
    .unwrap();
    id
}

/// What an action changes: the job's state, resume state, whether it finished, and its chunks.
async fn job_after(
    pg: &sqlx::PgPool,
    id: uuid::Uuid,
) -> (String, Option<String>, bool, Vec<String>) {
    let (state, resume, finished): (String, Option<String>, bool) = sqlx::query_as(
        "SELECT state, resume_state, finished_at IS NOT NULL FROM fleet.backfill_jobs WHERE job_id = $1",
    )
    .bind(id)
    .fetch_one(pg)
    .await
    .unwrap();
    let chunks: Vec<String> =
        sqlx::query_scalar("SELECT state FROM fleet.backfill_chunks WHERE job_id = $1 ORDER BY lo")
            .bind(id)
            .fetch_all(pg)
            .await
            .unwrap();
    (state, resume, finished, chunks)
}

#[tokio::test]
async fn backfill_resume_cancel_and_retry_from_the_console_move_a_job_as_the_cli_does() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let c = Console::start(&env);
    let (cookie, csrf) = c.login().await;
    for (action, state, resume, expected) in [
        ("resume", "paused", Some("running"), "running"),
        ("cancel", "running", None, "cancelled"),
        ("cancel", "paused", Some("running"), "cancelled"),
        ("retry", "failed", None, "running"),
    ] {
        let mine = seed_job(
            &fleet.pg,
            &format!("{action}-{state}-console"),
            state,
            resume,
        )
        .await;
        let twin = seed_job(&fleet.pg, &format!("{action}-{state}-cli"), state, resume).await;
        let r = c
            .post(
                &format!("/backfills/{mine}/{action}"),
                &cookie,
                &format!("csrf={csrf}"),
            )
            .await;
        assert_eq!(r.status, 303, "{action} {state}: {}", r.text());
        let shown = c.get("/backfills", &cookie).await.text();
        assert!(
            shown.contains(&format!("{action}: job {mine} is {expected}")),
            "{action} {state}: {shown}"
        );
        ok(&fleetctl(
            &env,
            &["backfill", action, &twin.to_string()],
            &[],
        ));
        let after = job_after(&fleet.pg, mine).await;
        assert_eq!(after.0, expected, "{action} {state}");
        assert_eq!(after, job_after(&fleet.pg, twin).await, "{action} {state}");
    }
    // Retry sets the failed chunk going again.
    let retried: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fleet.backfill_chunks c JOIN fleet.backfill_jobs j USING (job_id)
          WHERE j.submit_key = 'retry-failed-console' AND c.state = 'failed'",
    )
    .fetch_one(&fleet.pg)
    .await
    .unwrap();
    assert_eq!(retried, 0);
    // A move the job cannot make is refused and changes nothing.
    let over = seed_job(&fleet.pg, "cancelled-resume-console", "cancelled", None).await;
    let r = c
        .post(
            &format!("/backfills/{over}/resume"),
            &cookie,
            &format!("csrf={csrf}"),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(job_after(&fleet.pg, over).await.0, "cancelled");
}

#[tokio::test]
async fn fleetctl_up_serves_the_console_on_fleet_console_addr() {
    let env = TestEnv::with_private_redis().await;
    let (http, console) = (free_port(), free_port());
    let _up = crate::up::start_with(
        &env,
        http,
        None,
        &[("FLEET_CONSOLE_ADDR", format!("127.0.0.1:{console}"))],
    );
    wait_for_port(console, Duration::from_secs(60)).expect("fleetctl up serves the console");
    let addr = format!("127.0.0.1:{console}");
    let r = eventually(Duration::from_secs(30), "the overview", || async {
        let r = request(&addr, "GET", "/", &[], b"").await.ok()?;
        (r.status == 200).then_some(r)
    })
    .await;
    let body = r.text();
    assert!(body.contains("<h1>Overview</h1>"), "{body}");
    assert!(body.contains("FLEET_CONSOLE_TOKEN is not set"), "{body}");
}
