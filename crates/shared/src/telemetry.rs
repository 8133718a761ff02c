//! Logging, set up once per process.
//!
//! Binaries call [`init`]; tests call [`init_for_tests`], which is silent unless `TEST_LOG` is set
//! so a failing test's output is not buried in worker chatter.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global subscriber (`RUST_LOG`, default `info`). Calling it twice is harmless.
pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// As [`init`], with another default filter when `RUST_LOG` is unset (tools that print their
/// own report, like `fleet-bench`, want only warnings from the libraries underneath).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Logs to the test output only when `TEST_LOG` is set (`TEST_LOG=1 make test`).
pub fn init_for_tests() {
    if std::env::var_os("TEST_LOG").is_some() {
        let filter =
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
        let _ = fmt().with_env_filter(filter).with_test_writer().try_init();
    }
}

/// Renders an error with its whole cause chain on one line (`a: b: c`).
pub fn cause_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(e) = src {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        src = e.source();
    }
    crate::errors::one_line(&out)
}
