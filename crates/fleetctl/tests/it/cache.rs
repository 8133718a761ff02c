//! `fleetctl cache` against a running invalidator: configured rules fired from the CLI, the
//! `cache.invalidated` receipts and their counts against the keys actually deleted, and a
//! preview that refuses to run without the fleet's rules, naming each rule it lacks.

use std::time::Duration;

use fleet_testkit::{eventually, Running, TestEnv};
use futures::StreamExt as _;
use redis::AsyncCommands;

use crate::run::{assert_one_line_error, fleetctl, stderr, stdout};

const CONFIG: &str = r#"
[[invalidation.rules]]
name = "profiles"
subject = "profile.updated"
patterns = ["mentors:{org_code}:*", "mentees:{org_code}:*"]
"#;

async fn dbsize(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    redis::cmd("DBSIZE").query_async(con).await.unwrap()
}

/// Runs the invalidator in-process and waits until its consumers for both subjects exist, the
/// `org.updated` one with its description (the rules it lists); returns it and that description.
async fn start_invalidator(fleet: &fleet_shared::Fleet) -> (Running, String) {
    let worker = {
        let f = fleet.clone();
        Running::spawn(move |t| cache_invalidator::run(f, t))
    };
    let js = fleet.js.clone();
    let description = eventually(
        Duration::from_secs(30),
        "the invalidator's consumers",
        || {
            let js = js.clone();
            async move {
                let s = js.get_stream("FLEET_EVENTS").await.ok()?;
                s.consumer_info("cache-invalidator-profile_updated")
                    .await
                    .ok()?;
                let info = s
                    .consumer_info("cache-invalidator-org_updated")
                    .await
                    .ok()?;
                info.config.description.clone()
            }
        },
    )
    .await;
    (worker, description)
}

// Multi-threaded: the invalidator runs in-process while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_fire_from_the_cli_and_receipts_count_the_deleted_keys() {
    let env = TestEnv::with_private_redis().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let fleet = env.fleet(&[("FLEET_CONFIG", &config)]).await;
    let (worker, _) = start_invalidator(&fleet).await;
    let client = redis::Client::open(env.redis_url.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    for i in 0..7 {
        let _: () = con.set(format!("mentors:acme:{i}"), "v").await.unwrap();
    }
    for i in 0..3 {
        let _: () = con.set(format!("mentees:acme:{i}"), "v").await.unwrap();
    }
    for k in ["mentors:acme_2:x", "org:acme:details", "org:acme:more"] {
        let _: () = con.set(k, "v").await.unwrap();
    }

    // Without FLEET_CONFIG the CLI knows only the built-in rules, and says so.
    let acme_profiles = [
        "cache",
        "invalidate",
        "--rule",
        "profiles",
        "--set",
        "org_code=acme",
    ];
    let o = fleetctl(&env, &acme_profiles, &[]);
    assert_one_line_error(&o, "FLEET_CONFIG is not set");
    let o = fleetctl(&env, &["cache", "preview", "--org", "acme"], &[]);
    assert_one_line_error(
        &o,
        "has rules that this preview lacks: profiles (profile.updated) (FLEET_CONFIG is not set)",
    );
    let cfg = [("FLEET_CONFIG", config.as_str())];
    for (set, needle) in [
        ("org_code=*", "--set org_code"),
        ("tenant=x", "takes org_code"),
    ] {
        let args = ["cache", "invalidate", "--rule", "profiles", "--set", set];
        assert_one_line_error(&fleetctl(&env, &args, &cfg), needle);
    }
    let o = fleetctl(&env, &["cache", "invalidate", "--rule", "profiles"], &cfg);
    assert_one_line_error(&o, "needs --set for org_code");
    assert_eq!(
        dbsize(&mut con).await,
        13,
        "nothing deleted by refused commands"
    );

    let o = fleetctl(&env, &["cache", "preview", "--org", "acme", "--json"], &cfg);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = fleetctl(
        &env,
        &[&acme_profiles[..], &["--wait", "--json"]].concat(),
        &cfg,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["subject"], "profile.updated", "{v}");
    let r = &v[0]["receipts"][0];
    assert_eq!(r["rule"], "profiles", "{v}");
    assert_eq!(r["keys_deleted"], 10, "{v}");
    assert_eq!(r["nodes"], 1, "{v}");
    assert_eq!(
        r["patterns"],
        serde_json::json!(["mentors:acme:*", "mentees:acme:*"])
    );
    assert!(r["pass_ms"].is_u64());
    assert_eq!(
        dbsize(&mut con).await,
        3,
        "the receipt came after the keys were gone"
    );

    // Plain text, the built-in rule through --org; and a receipt seen by any listener.
    let mut sub = fleet.nats.subscribe("cache.invalidated").await.unwrap();
    fleet.nats.flush().await.unwrap();
    let o = fleetctl(
        &env,
        &["cache", "invalidate", "--org", "acme", "--wait"],
        &cfg,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o)
            .contains("cache.invalidated rule org: 2 key(s) deleted for org:acme:* on 1 node(s)"),
        "{}",
        stdout(&o)
    );
    let m = sub.next().await.unwrap();
    let r: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(r["keys_deleted"], 2);
    let left: Vec<String> = con.keys("*").await.unwrap();
    assert_eq!(left, vec!["mentors:acme_2:x".to_owned()]);
    worker.stop().await;
}

const PROFILES_ONLY: &str = r#"
[[invalidation.rules]]
name = "profiles"
subject = "profile.updated"
patterns = ["mentors:{org_code}:*"]
"#;

const ORG_MORE: &str = r#"
[[invalidation.rules]]
name = "org_more"
subject = "org.updated"
patterns = ["org_more:{org_code}:*"]
"#;

/// The running invalidator has a second rule on `org.updated`, whose built-in rule every preview
/// knows: a preview without that rule names it (it used to check subjects only, and counted
/// without it), as it names every rule of a subject it has none for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_names_each_rule_of_the_running_invalidator_that_it_lacks() {
    let env = TestEnv::with_private_redis().await;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    let full = write("fleet.toml", &format!("{PROFILES_ONLY}{ORG_MORE}"));
    // The fleet's file without org_more: the same subjects, one rule fewer.
    let partial = write("partial.toml", PROFILES_ONLY);
    let fleet = env.fleet(&[("FLEET_CONFIG", &full)]).await;
    let (worker, listed) = start_invalidator(&fleet).await;
    assert_eq!(
        cache_invalidator::rules_in_description(&listed),
        Some(vec!["org".to_owned(), "org_more".to_owned()]),
        "{listed}"
    );

    let o = fleetctl(&env, &["cache", "preview", "--org", "acme"], &[]);
    assert_one_line_error(
        &o,
        "has rules that this preview lacks: org_more (org.updated), profiles (profile.updated) (FLEET_CONFIG is not set)",
    );
    let o = fleetctl(
        &env,
        &["cache", "preview", "--org", "acme"],
        &[("FLEET_CONFIG", &partial)],
    );
    assert_one_line_error(
        &o,
        "has rules that this preview lacks: org_more (org.updated) (this FLEET_CONFIG differs from the fleet's)",
    );
    assert!(
        stdout(&o).is_empty(),
        "nothing half-printed: {}",
        stdout(&o)
    );

    let o = fleetctl(
        &env,
        &["cache", "preview", "--org", "acme", "--json"],
        &[("FLEET_CONFIG", &full)],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["org", "org_more", "profiles", "sessions"], "{v}");

    // A consumer from an invalidator that did not list its rules: the subject as a whole.
    let stream = fleet.js.get_stream("FLEET_EVENTS").await.unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("cache-invalidator-org_archived".into()),
            filter_subject: "org.archived".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let o = fleetctl(
        &env,
        &["cache", "preview", "--org", "acme"],
        &[("FLEET_CONFIG", &full)],
    );
    assert_one_line_error(
        &o,
        "lacks: every rule for org.archived (this FLEET_CONFIG differs",
    );
    worker.stop().await;
}
