//! The example `FLEET_CONFIG` that `make run` uses (deploy/local/fleet.toml) is accepted by the
//! provisioner: its `[plans]` and `[provisioner]` sections parse and validate.

use provisioner::config::ProvisionerConfig;
use provisioner::plans::Plans;

#[test]
fn the_local_example_config_is_valid_for_the_provisioner() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/local/fleet.toml");
    let settings = fleet_testkit::settings(
        "nats://127.0.0.1:4222",
        "postgres://postgres@127.0.0.1:5432/fleet",
        "redis://127.0.0.1:6379",
        &[("FLEET_CONFIG", path)],
    );
    let config = ProvisionerConfig::from_settings(&settings).expect("[provisioner]");
    assert!(config.concurrency >= 1);
    let plans = Plans::from_settings(&settings).expect("[plans]");
    for plan in ["basic", "premium", "enterprise", "custom"] {
        assert!(plans.resolve(plan, None).is_some(), "{plan}");
    }
}
