//! `fleetctl tenants update | config set | config unset | suspend | resume | delete | purge |
//! history | rotate-keys | show --reveal` through the real binary, against the real provisioner
//! running in-process: each command's happy path and at least one refusal (exit 1, one line).

use std::process::Output;

use fleet_testkit::{Running, TestEnv};
use serde_json::json;

use crate::run::{ok, refused, stderr, wait_active};

const K1: &str = "k1:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const K2: &str = "k2:ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const K1_WRONG: &str = "k1:0000000000000000000000000000000000000000000000000000000000000000";

/// Runs the binary without blocking the runtime the in-process provisioner runs on.
async fn fleetctl(env: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.args(args)
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env("USER", "alice")
        .env_remove("FLEET_CONFIG")
        .env_remove("FLEET_CONFIG_KEYS");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run fleetctl")
}

#[tokio::test]
async fn lifecycle_commands_through_the_binary() {
    let env = TestEnv::new().await;
    let pool = env.db.pool().await;
    let fleet = env.fleet(&[("FLEET_CONFIG_KEYS", K1)]).await;
    let prov = Running::spawn(|t| provisioner::run(fleet, t));
    let o = fleetctl(
        &env,
        &["publish", "tenant.created", &json!({"tenant_id": uuid::Uuid::new_v4(), "code": "acme", "name": "Acme", "plan": "basic"}).to_string()],
        &[],
    )
    .await;
    ok(&o);
    wait_active(&pool, "acme", "acme active").await;
    let e = &env;

    // update
    let s = ok(&fleetctl(
        e,
        &["tenants", "update", "acme", "--plan", "enterprise"],
        &[],
    )
    .await);
    assert!(s.contains("tenant.updated: tenant acme is active"), "{s}");
    refused(
        &fleetctl(e, &["tenants", "update", "acme", "--plan", "gold"], &[]).await,
        "unknown plan \"gold\"",
    );
    refused(
        &fleetctl(e, &["tenants", "update", "ghost", "--plan", "basic"], &[]).await,
        "no tenant with code ghost",
    );

    // config set / unset, encrypted, show --reveal
    ok(&fleetctl(
        e,
        &["tenants", "config", "set", "acme", "api.rate_limit", "5"],
        &[],
    )
    .await);
    ok(&fleetctl(
        e,
        &[
            "tenants",
            "config",
            "set",
            "acme",
            "smtp.password",
            "hunter2",
            "--encrypted",
        ],
        &[],
    )
    .await);
    refused(
        &fleetctl(
            e,
            &["tenants", "config", "set", "acme", "bad key'", "1"],
            &[],
        )
        .await,
        "is not a config key",
    );
    let shown = ok(&fleetctl(e, &["tenants", "show", "acme"], &[]).await);
    assert!(
        shown.contains("<encrypted>") && !shown.contains("hunter2"),
        "{shown}"
    );
    assert!(
        shown.contains("override") && shown.contains("plan:enterprise"),
        "{shown}"
    );
    let json: serde_json::Value = serde_json::from_str(&ok(&fleetctl(
        e,
        &["tenants", "show", "acme", "--json", "--reveal"],
        &[("FLEET_CONFIG_KEYS", K1)],
    )
    .await))
    .unwrap();
    let secret = json["configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["key"] == "smtp.password")
        .unwrap()
        .clone();
    assert_eq!(secret["value"], json!("hunter2"));
    refused(
        &fleetctl(e, &["tenants", "show", "acme", "--reveal"], &[]).await,
        "--reveal needs FLEET_CONFIG_KEYS",
    );
    refused(
        &fleetctl(
            e,
            &["tenants", "show", "acme", "--reveal"],
            &[("FLEET_CONFIG_KEYS", K1_WRONG)],
        )
        .await,
        "does not open with key \"k1\"",
    );
    refused(
        &fleetctl(
            e,
            &["tenants", "show", "acme"],
            &[("FLEET_CONFIG_KEYS", "k1:short")],
        )
        .await,
        "FLEET_CONFIG_KEYS",
    );
    ok(&fleetctl(
        e,
        &["tenants", "config", "unset", "acme", "api.rate_limit"],
        &[],
    )
    .await);
    // Refused by the provisioner (not the CLI's pre-check): the dead letter's reason, exit 1.
    refused(
        &fleetctl(
            e,
            &["tenants", "config", "unset", "acme", "api.rate_limit"],
            &[],
        )
        .await,
        "refused: tenant.config.unset: config api.rate_limit of tenant acme is not overridden",
    );

    // rotate-keys
    refused(
        &fleetctl(e, &["tenants", "rotate-keys"], &[]).await,
        "FLEET_CONFIG_KEYS is not set",
    );
    refused(
        &fleetctl(e, &["tenants", "rotate-keys"], &[("FLEET_CONFIG_KEYS", K2)]).await,
        "which FLEET_CONFIG_KEYS does not hold",
    );
    let s = ok(&fleetctl(
        e,
        &["tenants", "rotate-keys"],
        &[("FLEET_CONFIG_KEYS", &format!("{K1},{K2}"))],
    )
    .await);
    assert!(s.contains("1 value(s) of 1 tenant(s) re-encrypted"), "{s}");
    let json: serde_json::Value = serde_json::from_str(&ok(&fleetctl(
        e,
        &["tenants", "show", "acme", "--json", "--reveal"],
        &[("FLEET_CONFIG_KEYS", K2)],
    )
    .await))
    .unwrap();
    assert!(json["configs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["value"] == json!("hunter2")));

    // suspend / resume
    ok(&fleetctl(
        e,
        &["tenants", "suspend", "acme", "--reason", "unpaid"],
        &[],
    )
    .await);
    refused(
        &fleetctl(e, &["tenants", "suspend", "acme"], &[]).await,
        "tenant acme is suspended; only a tenant that is active can be suspended",
    );
    let shown = ok(&fleetctl(e, &["tenants", "list", "--status", "suspended"], &[]).await);
    assert!(shown.contains("acme"), "{shown}");
    ok(&fleetctl(e, &["tenants", "resume", "acme"], &[]).await);
    refused(
        &fleetctl(e, &["tenants", "resume", "acme"], &[]).await,
        "tenant acme is active; only a tenant that is suspended can be resumed",
    );

    // history
    let h = ok(&fleetctl(e, &["tenants", "history", "acme"], &[]).await);
    for ev in [
        "tenant.updated",
        "tenant.config.set",
        "tenant.config.unset",
        "tenant.suspended",
        "tenant.resumed",
        "fleetctl.tenants.rotate-keys",
    ] {
        assert!(h.contains(ev), "{ev} missing from\n{h}");
    }
    assert!(
        h.contains("fleetctl:alice@") && !h.contains("hunter2"),
        "{h}"
    );
    refused(
        &fleetctl(e, &["tenants", "history", "Bad!"], &[]).await,
        "is not a valid code",
    );

    // delete (archive) and purge
    let s = ok(&fleetctl(e, &["tenants", "delete", "acme"], &[]).await);
    assert!(s.contains("tenant acme is deleted"), "{s}");
    refused(
        &fleetctl(e, &["tenants", "delete", "acme"], &[]).await,
        "no tenant with code acme",
    );
    refused(
        &fleetctl(e, &["tenants", "purge"], &[]).await,
        "give --older-than",
    );
    let s = ok(&fleetctl(
        e,
        &["tenants", "purge", "--older-than", "30d", "--dry-run"],
        &[],
    )
    .await);
    assert!(s.starts_with("0 archived tenant(s)"), "{s}");
    sqlx::query(
        "UPDATE fleet.tenants SET deleted_at = now() - interval '31 days' WHERE code = 'acme'",
    )
    .execute(&pool)
    .await
    .unwrap();
    let s = ok(&fleetctl(e, &["tenants", "purge", "--older-than", "30d"], &[]).await);
    assert!(
        s.contains("purged acme") && s.contains("1 tenant(s) purged"),
        "{s}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM fleet.tenants")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    // A malformed flag is a usage error: one line, exit 1, like every other bad input.
    let o = fleetctl(e, &["tenants", "purge", "--older-than", "30"], &[]).await;
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("\"30\" is not a duration"),
        "{}",
        stderr(&o)
    );
    prov.stop().await;
}
