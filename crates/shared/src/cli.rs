//! The command line of a worker binary. Workers are configured by the environment (see
//! README's settings table), so the only arguments are `--help` and `--version`; anything else
//! fails with one line on stderr and exit code 2, before any connection is tried.

/// Each worker binary's name and what it does, for `--help`.
const WORKERS: &[(&str, &str)] = &[
    (
        "provisioner",
        "Creates and migrates tenant schemas (tenant.created, tenant.migrate)",
    ),
    (
        "cache-invalidator",
        "Clears tenant cache keys on org.updated and session.changed",
    ),
    (
        "backfill-worker",
        "Runs chunked, resumable backfill jobs (backfill.submit, backfill.control)",
    ),
    (
        "scheduler",
        "Fans scheduled per-tenant jobs out to jobs.<task>.<tenant>",
    ),
];

const AFTER_HELP: &str = "\
Configured by environment variables (README, \"Settings\"), among them:
  NATS_URL         NATS server(s), comma-separated [default: nats://127.0.0.1:4222]
  NATS_USER, NATS_PASSWORD, NATS_TOKEN, NATS_NKEY, NATS_CREDS   NATS credentials
  NATS_CA, NATS_CERT, NATS_KEY, NATS_REQUIRE_TLS                 NATS TLS
  DATABASE_URL     Postgres [default: postgres://postgres@127.0.0.1:5432/fleet]
  REDIS_URL        Redis [default: redis://127.0.0.1:6379]
  FLEET_CONFIG     optional TOML file
  FLEET_HTTP_ADDR  /healthz, /readyz, /metrics [default: 0.0.0.0:9090]
  RUST_LOG, LOG_FORMAT   logging";

/// Parses `std::env::args()`: prints help or version and exits 0, or fails with one line and
/// exit code 2 on anything else. Returns when there is nothing to do but run.
pub fn parse_worker_args() {
    let mut args = std::env::args_os();
    let bin = args
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "worker".into());
    let (name, about) = WORKERS
        .iter()
        .copied()
        .find(|(n, _)| *n == bin)
        .unwrap_or(("worker", "A worker of the tenant fleet"));
    let cmd = clap::Command::new(name)
        .version(env!("CARGO_PKG_VERSION"))
        .about(about)
        .after_help(AFTER_HELP);
    match cmd.try_get_matches_from(std::iter::once(bin.into()).chain(args)) {
        Ok(_) => {}
        Err(e) => match e.kind() {
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                e.exit()
            }
            _ => {
                let text = e.render().to_string();
                let line = text.lines().next().unwrap_or("error: bad arguments");
                eprintln!("{line} (try --help)");
                std::process::exit(2);
            }
        },
    }
}
