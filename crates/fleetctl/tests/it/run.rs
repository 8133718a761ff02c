//! Running the real `fleetctl` binary against a test environment, and reading what it printed.

use std::process::{Command, Output};

use fleet_testkit::TestEnv;

/// `fleetctl ARGS` with the environment's NATS, Postgres and Redis, no `FLEET_CONFIG`, and `extra`
/// variables set last (so a test can override any of them).
pub fn fleetctl(env: &TestEnv, args: &[&str], extra: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetctl"));
    cmd.args(args)
        .env("NATS_URL", env.nats.url())
        .env("DATABASE_URL", &env.db.url)
        .env("REDIS_URL", &env.redis_url)
        .env_remove("FLEET_CONFIG");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("run fleetctl")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with exit code 1 and exactly one line on stderr that contains `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "stdout: {}", stdout(o));
    let err = stderr(o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains(needle), "{err}");
}
