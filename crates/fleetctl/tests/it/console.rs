//! The operator console as `fleetctl console` serves it, on real services: every page over HTTP
//! (security headers, escaping, refusals that change nothing), then in a real browser (headless
//! chromium over WebDriver): log in, replay a dead letter, pause a backfill, and check the lasting
//! effect in NATS and Postgres.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fleet_shared::dlq;
use fleet_testkit::http::{request, HttpResponse};
use fleet_testkit::webdriver::Browser;
use fleet_testkit::{free_port, wait_for_port, TestEnv};

use crate::run::{dead_letter, fleetctl, stderr, stdout};

const TOKEN: &str = "console-test-token-0123456789";
const XSS: &str = "<img src=x onerror=alert(1)><script>alert(2)</script>";
const CONFIG: &str = r#"
[[schedules]]
name = "followups"
cron = "0 0 1 1 *"
subject = "jobs.followups.{tenant_code}"
"#;

struct Served {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(env: &TestEnv, token: Option<&str>) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.arg("console")
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("FLEET_CONFIG", &config)
        .env("FLEET_CONSOLE_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .env_remove("FLEET_CONSOLE_TOKEN")
        .stdout(Stdio::null())
        .stderr(if std::env::var_os("TEST_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        });
    if let Some(t) = token {
        cmd.env("FLEET_CONSOLE_TOKEN", t);
    }
    let child = cmd.spawn().unwrap();
    wait_for_port(port, Duration::from_secs(60)).expect("console listens");
    Served {
        child,
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// Tenants (one named with markup), two dead letters, a running backfill job.
async fn seed(env: &TestEnv) -> fleet_shared::Fleet {
    let fleet = env.fleet(&[]).await;
    sqlx::query(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
         SELECT gen_random_uuid(), 't' || lpad(i::text, 3, '0'), 'Tenant ' || i, 'basic', 'active', 'tenant_t' || i
         FROM generate_series(1, 120) AS i",
    )
    .execute(&fleet.pg)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO fleet.tenants (tenant_id, code, name, plan, status, schema_name)
         VALUES (gen_random_uuid(), 'evil', $1, 'premium', 'active', 'tenant_evil')",
    )
    .bind(XSS)
    .execute(&fleet.pg)
    .await
    .unwrap();
    for (i, reason) in ["unknown plan \"<b>gold</b>\"", "bad code"]
        .iter()
        .enumerate()
    {
        dead_letter(
            &fleet.js,
            "provisioner",
            "tenant.migrate",
            format!(r#"{{"code":"<i>x{i}</i>"}}"#),
            i as u64 + 1,
            reason,
        )
        .await;
    }
    sqlx::query(
        "INSERT INTO fleet.backfill_jobs (job_id, submit_key, kind, spec, state, rows_estimated, rows_done)
         VALUES ('7b0c2f4e-1d2a-4c3b-9e8f-0a1b2c3d4e5f', 'k1', 'sql', '{}', 'running', 1000, 250)",
    )
    .execute(&fleet.pg)
    .await
    .unwrap();
    fleet
}

pub(crate) async fn get(addr: &str, path: &str, cookie: Option<&str>) -> HttpResponse {
    let h: Vec<(&str, &str)> = cookie.map(|c| vec![("Cookie", c)]).unwrap_or_default();
    request(addr, "GET", path, &h, b"").await.unwrap()
}

pub(crate) async fn post(addr: &str, path: &str, cookie: &str, form: &str) -> HttpResponse {
    request(
        addr,
        "POST",
        path,
        &[
            ("Cookie", cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    )
    .await
    .unwrap()
}

pub(crate) fn session_of(r: &HttpResponse) -> String {
    let c = r.header("set-cookie").expect("a session cookie");
    assert!(
        c.contains("HttpOnly") && c.contains("SameSite=Strict"),
        "{c}"
    );
    c.split(';').next().unwrap().to_owned()
}

pub(crate) fn csrf_of(html: &str) -> String {
    let i = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[i..i + 32].to_owned()
}

async fn letters(js: &async_nats::jetstream::Context) -> Vec<u64> {
    dlq::list(js, None, 100)
        .await
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect()
}

#[tokio::test]
async fn every_page_renders_escaped_under_a_strict_policy_and_refusals_change_nothing() {
    let env = TestEnv::new().await;
    let fleet = seed(&env).await;
    let s = serve(&env, Some(TOKEN));
    for path in [
        "/",
        "/tenants",
        "/tenants/evil",
        "/tenants?q=evil",
        "/rollouts",
        "/backfills",
        "/schedules",
        "/dlq",
        "/dlq/1",
    ] {
        let r = get(&s.addr, path, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let csp = r.header("content-security-policy").unwrap_or_default();
        assert!(
            csp.contains("default-src 'none'")
                && csp.contains("script-src 'self'")
                && !csp.contains("unsafe"),
            "{path}: {csp}"
        );
        assert_eq!(r.header("x-frame-options"), Some("DENY"));
        let body = r.text();
        assert!(!body.contains("<script>alert"), "{path} renders markup");
        assert!(!body.contains("<img src=x"), "{path} renders markup");
        assert!(!body.contains(TOKEN), "{path} shows the token");
        assert!(body.contains("Read-only until you log in"), "{path}");
    }
    let t = get(&s.addr, "/tenants/evil", None).await.text();
    assert!(
        t.contains("&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;"),
        "{t}"
    );
    let d = get(&s.addr, "/dlq/1", None).await.text();
    assert!(
        d.contains("&lt;b&gt;gold&lt;/b&gt;") && d.contains("&lt;i&gt;x0&lt;/i&gt;"),
        "{d}"
    );

    // Keyset pagination: 121 tenants, 50 a page; the cursor is validated.
    let p1 = get(&s.addr, "/tenants", None).await.text();
    assert!(p1.contains("t001") && !p1.contains("t051"));
    let p2 = get(
        &s.addr,
        "/tenants?after=t050,ffffffff-ffff-ffff-ffff-ffffffffffff",
        None,
    )
    .await
    .text();
    assert!(p2.contains("t051") && !p2.contains(">t050<"), "{p2}");
    for bad in [
        "/tenants?after=x%27;DROP%20TABLE%20fleet.tenants;--,1",
        "/tenants?after=t001,nope",
        "/dlq/abc",
        "/dlq?worker=%3Cscript%3E",
    ] {
        let r = get(&s.addr, bad, None).await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }
    // A hostile search is a bound LIKE parameter: it matches nothing and breaks nothing.
    let r = get(&s.addr, "/tenants?q=%27%20OR%201%3D1%20--%20%25", None).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("no tenant matches"));
    assert_eq!(get(&s.addr, "/tenants/ghost", None).await.status, 404);
    assert_eq!(get(&s.addr, "/dlq/999", None).await.status, 404);

    // Actions: no CSRF, a forged CSRF, not logged in, a wrong token: all refused, nothing changed.
    let first = get(&s.addr, "/dlq", None).await;
    let cookie = session_of(&first);
    let csrf = csrf_of(&first.text());
    let r = post(&s.addr, "/dlq/1/discard", &cookie, "").await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("CSRF"), "{}", r.text());
    let r = post(
        &s.addr,
        "/dlq/1/discard",
        &cookie,
        "csrf=00000000000000000000000000000000",
    )
    .await;
    assert_eq!(r.status, 403);
    let r = post(&s.addr, "/dlq/1/discard", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("log in"), "{}", r.text());
    let r = post(
        &s.addr,
        "/login",
        &cookie,
        &format!("csrf={csrf}&token=wrong"),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(letters(&fleet.js).await, vec![1, 2], "nothing discarded");

    // Logged in: a letter that is gone, an unknown job and a move the job cannot make are
    // refused; a discard works.
    let r = post(
        &s.addr,
        "/login",
        &cookie,
        &format!("csrf={csrf}&token={TOKEN}&back=/dlq"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = session_of(&r);
    let page = get(&s.addr, "/dlq", Some(&cookie)).await.text();
    assert!(page.contains("logged in"), "{page}");
    let csrf = csrf_of(&page);
    let r = post(&s.addr, "/dlq/99/replay", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(r.status, 404, "{}", r.text());
    let r = post(
        &s.addr,
        "/backfills/00000000-0000-0000-0000-000000000001/pause",
        &cookie,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = post(
        &s.addr,
        "/tenants/evil/resume",
        &cookie,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.text());
    let r = post(&s.addr, "/dlq/2/discard", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(letters(&fleet.js).await, vec![1]);
    let r = post(
        &s.addr,
        "/schedules/followups/pause",
        &cookie,
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 303);
    let paused: bool =
        sqlx::query_scalar("SELECT paused FROM fleet.schedules WHERE name = 'followups'")
            .fetch_one(&fleet.pg)
            .await
            .unwrap();
    assert!(paused);

    // Without FLEET_CONSOLE_TOKEN the console says it is read-only and refuses every action.
    drop(s);
    let ro = serve(&env, None);
    let first = get(&ro.addr, "/dlq", None).await;
    assert!(first.text().contains("FLEET_CONSOLE_TOKEN is not set"));
    let cookie = session_of(&first);
    let csrf = csrf_of(&first.text());
    let r = post(&ro.addr, "/dlq/1/replay", &cookie, &format!("csrf={csrf}")).await;
    assert_eq!(r.status, 403);
    assert!(r.text().contains("read-only"));
    assert_eq!(letters(&fleet.js).await, vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_browser_an_operator_replays_a_letter_and_pauses_a_backfill() {
    let env = TestEnv::new().await;
    let fleet = seed(&env).await;
    let s = serve(&env, Some(TOKEN));
    let b = Browser::start()
        .await
        .expect("chromium and chromedriver (installed by deploy/local/stack.sh deps)");
    let url = |p: &str| format!("http://{}{p}", s.addr);

    for (path, title) in [
        ("/", "Overview"),
        ("/tenants", "Tenants"),
        ("/tenants/evil", "Tenant evil"),
        ("/rollouts", "Migrations and rollouts"),
        ("/backfills", "Backfills"),
        ("/schedules", "Schedules"),
        ("/dlq", "Dead letters"),
        ("/dlq/1", "Dead letter 1"),
    ] {
        b.goto(&url(path)).await.unwrap();
        let h1 = b.find("h1").await.unwrap();
        assert_eq!(b.text(&h1).await.unwrap(), title, "{path}");
    }
    // The tenant name with markup is text: no <img> or <script> was created from it.
    b.goto(&url("/tenants/evil")).await.unwrap();
    let name = b.find("#registry td.name").await.unwrap();
    assert_eq!(b.text(&name).await.unwrap(), XSS);
    let injected = b
        .execute("return document.querySelectorAll('main img, main script').length")
        .await
        .unwrap();
    assert_eq!(injected, 0);

    // Read-only until logged in: the buttons are disabled.
    b.goto(&url("/dlq")).await.unwrap();
    let disabled = b
        .execute("return document.getElementById('replay-1').disabled")
        .await
        .unwrap();
    assert_eq!(disabled, true);
    let token = b.find("input[name=token]").await.unwrap();
    b.type_into(&token, TOKEN).await.unwrap();
    b.click_css("#login").await.unwrap();
    b.wait_text(".flash", "logged in").await.unwrap();

    // Replay a dead letter: gone from the DLQ, republished to its subject.
    b.click_css("#replay-1").await.unwrap();
    b.wait_text(".flash", "replayed dead letter 1")
        .await
        .unwrap();
    assert_eq!(letters(&fleet.js).await, vec![2]);
    let events = fleet.js.get_stream("FLEET_EVENTS").await.unwrap();
    let m = events.get_raw_message(1).await.unwrap();
    assert_eq!(m.subject.as_str(), "tenant.migrate");
    assert_eq!(&m.payload[..], br#"{"code":"<i>x0</i>"}"#);

    // Pause the running backfill: the job row says paused.
    b.goto(&url("/backfills")).await.unwrap();
    b.click_css("#pause-7b0c2f4e-1d2a-4c3b-9e8f-0a1b2c3d4e5f")
        .await
        .unwrap();
    b.wait_text(".flash", "is paused").await.unwrap();
    let state: String = sqlx::query_scalar(
        "SELECT state FROM fleet.backfill_jobs WHERE job_id = '7b0c2f4e-1d2a-4c3b-9e8f-0a1b2c3d4e5f'",
    )
    .fetch_one(&fleet.pg)
    .await
    .unwrap();
    assert_eq!(state, "paused");

    // CONSOLE_SCREENSHOT=path writes the overview (the README's picture).
    if let Ok(path) = std::env::var("CONSOLE_SCREENSHOT") {
        b.goto(&url("/")).await.unwrap();
        std::fs::write(path, b.screenshot().await.unwrap()).unwrap();
    }
}

/// Logs in on the console at `addr` with [`TOKEN`]: the session cookie and its CSRF token.
async fn login(addr: &str) -> (String, String) {
    login_with(addr, TOKEN).await
}

/// Logs in on the console at `addr` with `token` (from `/schedules`, and back there): the session
/// cookie and its CSRF token.
pub(crate) async fn login_with(addr: &str, token: &str) -> (String, String) {
    let first = get(addr, "/schedules", None).await;
    let cookie = session_of(&first);
    let csrf = csrf_of(&first.text());
    let r = post(
        addr,
        "/login",
        &cookie,
        &format!("csrf={csrf}&token={token}&back=/schedules"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let cookie = session_of(&r);
    let page = get(addr, "/schedules", Some(&cookie)).await.text();
    assert!(page.contains("logged in"), "{page}");
    let csrf = csrf_of(&page);
    (cookie, csrf)
}

const STORED: &str = r#"
[[schedules]]
name = "stored_nightly"
cron = "0 2 * * *"
timezone = "Europe/Berlin"
subject = "jobs.nightly.{tenant_code}"
"#;

#[tokio::test]
async fn stored_schedules_show_without_a_restart_and_take_trigger_pause_and_resume() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    let s = serve(&env, Some(TOKEN));
    let page = get(&s.addr, "/schedules", None).await.text();
    assert!(
        page.contains("schedule-followups") && !page.contains("stored_nightly"),
        "{page}"
    );

    // Stored the way `fleetctl schedule apply` stores it, while the console runs.
    let specs: Vec<(String, serde_json::Value)> = scheduler::config::entries_of(STORED, false)
        .unwrap()
        .iter()
        .map(|e| {
            let s = scheduler::config::parse_json(e, scheduler::config::DEFAULT_LEASE).unwrap();
            (s.name, s.spec)
        })
        .collect();
    scheduler::defs::put_all(&fleet.pg, &specs, "ops-test")
        .await
        .unwrap();
    let page = get(&s.addr, "/schedules", None).await.text();
    assert!(page.contains("id=\"schedule-stored_nightly\""), "{page}");
    assert!(
        page.contains("source: stored (version 1") && page.contains("by ops-test"),
        "{page}"
    );
    assert!(page.contains("source: FLEET_CONFIG"), "{page}");

    let (cookie, csrf) = login(&s.addr).await;
    let form = format!("csrf={csrf}");
    let act = |what: &'static str| {
        let (addr, cookie, form) = (s.addr.clone(), cookie.clone(), form.clone());
        async move {
            post(
                &addr,
                &format!("/schedules/stored_nightly/{what}"),
                &cookie,
                &form,
            )
            .await
        }
    };
    let triggers = |name: &'static str| {
        let pg = fleet.pg.clone();
        async move {
            sqlx::query_as::<_, (String, Option<chrono::DateTime<chrono::Utc>>)>(
                "SELECT requested_by, picked_at FROM fleet.schedule_triggers WHERE schedule = $1 ORDER BY trigger_id",
            )
            .bind(name)
            .fetch_all(&pg)
            .await
            .unwrap()
        }
    };
    let paused = || async {
        sqlx::query_as::<_, (bool, Option<chrono::DateTime<chrono::Utc>>)>(
            "SELECT paused, paused_at FROM fleet.schedules WHERE name = 'stored_nightly'",
        )
        .fetch_one(&fleet.pg)
        .await
        .unwrap()
    };

    // Trigger: a row the leader picks up, as `fleetctl schedule trigger` queues it.
    let r = act("trigger").await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(
        triggers("stored_nightly").await,
        vec![("console".to_owned(), None)]
    );
    // Pause: the flag and its time; a trigger of a paused schedule is refused.
    let r = act("pause").await;
    assert_eq!(r.status, 303, "{}", r.text());
    let (p, at) = paused().await;
    assert!(p && at.is_some());
    let r = act("trigger").await;
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(triggers("stored_nightly").await.len(), 1, "nothing queued");
    let page = get(&s.addr, "/schedules", Some(&cookie)).await.text();
    assert!(page.contains("id=\"resume-stored_nightly\""), "{page}");
    // Resume: the flag is cleared.
    let r = act("resume").await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(paused().await, (false, None));

    // An unknown name is refused with the names there are; nothing is written for it.
    for what in ["trigger", "pause"] {
        let r = post(&s.addr, &format!("/schedules/ghost/{what}"), &cookie, &form).await;
        assert_eq!(r.status, 404, "{}", r.text());
        let text = r.text();
        assert!(
            text.contains("no schedule named")
                && text.contains("followups, stored_nightly")
                && text.contains("nothing was changed"),
            "{text}"
        );
    }
    assert!(triggers("ghost").await.is_empty());
    let ghost: i64 =
        sqlx::query_scalar("SELECT count(*) FROM fleet.schedules WHERE name = 'ghost'")
            .fetch_one(&fleet.pg)
            .await
            .unwrap();
    assert_eq!(ghost, 0);

    // Deleted (as `fleetctl schedule delete` does): gone from the page, and an action on it says
    // when and by whom, as the CLI does.
    assert!(
        scheduler::defs::delete(&fleet.pg, "stored_nightly", "ops-test")
            .await
            .unwrap()
    );
    let page = get(&s.addr, "/schedules", None).await.text();
    assert!(!page.contains("id=\"schedule-stored_nightly\""), "{page}");
    let before = triggers("stored_nightly").await.len();
    let r = act("trigger").await;
    assert_eq!(r.status, 404, "{}", r.text());
    let text = r.text();
    assert!(
        text.contains("schedule &quot;stored_nightly&quot; was deleted at")
            && text.contains("by ops-test")
            && text.contains("nothing was changed"),
        "{text}"
    );
    assert_eq!(triggers("stored_nightly").await.len(), before);
}

const SECRET: &str = "smtp-pass-Zq81-do-not-show";

#[tokio::test]
async fn a_dead_lettered_secret_is_masked_on_the_console_and_in_dlq_show() {
    let env = TestEnv::new().await;
    let fleet = env.fleet(&[]).await;
    // What `fleetctl tenants config set acme smtp.password … --encrypted` publishes, dead-lettered
    // as a provisioner without FLEET_CONFIG_KEYS does.
    let body = fleet_shared::events::TenantConfigSet {
        code: fleet_shared::Code::parse("acme").unwrap(),
        key: "smtp.password".into(),
        value: serde_json::json!(SECRET),
        encrypted: true,
    };
    dead_letter(
        &fleet.js,
        "provisioner",
        fleet_shared::events::TENANT_CONFIG_SET,
        serde_json::to_vec(&body).unwrap(),
        1,
        "FLEET_CONFIG_KEYS is not set, so encrypted configs can be neither written nor read",
    )
    .await;
    let mask = dlq::SECRET_MASK;

    let s = serve(&env, Some(TOKEN));
    for path in ["/dlq/1", "/dlq"] {
        let page = get(&s.addr, path, None).await.text();
        assert!(!page.contains(SECRET), "{path} shows the secret: {page}");
        assert!(
            page.contains("letter-1") || page.contains("smtp.password"),
            "{page}"
        );
    }
    let page = get(&s.addr, "/dlq/1", None).await.text();
    assert!(
        page.contains(mask) && page.contains("smtp.password"),
        "{page}"
    );

    for args in [
        &["dlq", "show", "1"][..],
        &["dlq", "show", "1", "--json"],
        &["dlq", "list", "--json"],
    ] {
        let o = fleetctl(&env, args, &[]);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let out = stdout(&o);
        assert!(!out.contains(SECRET), "{args:?} prints the secret: {out}");
        assert!(out.contains(mask), "{args:?}: {out}");
    }
    let o = fleetctl(&env, &["dlq", "show", "1", "--reveal-secrets"], &[]);
    assert!(stdout(&o).contains(SECRET), "{o:?}");
    // The letter itself is untouched: a replay republishes the value as it was sent.
    let stored = dlq::get(&fleet.js, 1).await.unwrap();
    assert_eq!(stored.raw_payload, serde_json::to_vec(&body).unwrap());
}
