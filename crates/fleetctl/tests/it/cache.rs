//! `fleetctl cache` against a running invalidator: configured rules fired from the CLI, the
//! `cache.invalidated` receipts and their counts against the keys actually deleted, and a
//! preview that refuses to run without the fleet's rules.

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

// Multi-threaded: the invalidator runs in-process while the test blocks on the CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_fire_from_the_cli_and_receipts_count_the_deleted_keys() {
    let env = TestEnv::with_private_redis().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("fleet.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.to_str().unwrap().to_owned();
    let fleet = env.fleet(&[("FLEET_CONFIG", &config)]).await;
    let worker = {
        let f = fleet.clone();
        Running::spawn(move |t| cache_invalidator::run(f, t))
    };
    let js = fleet.js.clone();
    eventually(
        Duration::from_secs(30),
        "the invalidator's consumers",
        || {
            let js = js.clone();
            async move {
                let s = js.get_stream("FLEET_EVENTS").await.ok()?;
                s.consumer_info("cache-invalidator-profile_updated")
                    .await
                    .ok()?;
                s.consumer_info("cache-invalidator-org_updated")
                    .await
                    .ok()
                    .map(|_| ())
            }
        },
    )
    .await;
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
    assert_one_line_error(&o, "has rules for profile.updated that this preview lacks");
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
