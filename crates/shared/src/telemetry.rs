//! Logging, set up once per process.
//!
//! Binaries call [`init`]; tests call [`init_for_tests`], which is silent unless `TEST_LOG` is set
//! so a failing test's output is not buried in worker chatter.
//!
//! Every line goes through [`RedactingStderr`], which masks each value registered with
//! [`redact_secret`] (NATS passwords, tokens and seeds, database and Redis passwords) as `***`.
//! Redacting at the writer rather than filtering targets covers every log level and every
//! library, including the NATS client's trace of its `CONNECT` line, which carries the password.

use std::io::Write;
use std::sync::{Arc, RwLock};

use tracing_subscriber::{fmt, EnvFilter};

static SECRETS: RwLock<Vec<Arc<str>>> = RwLock::new(Vec::new());

/// Registers a secret: from now on no log line shows it (nor its JSON- or Debug-escaped form).
/// Values shorter than 3 characters are ignored (masking them would garble every line).
pub fn redact_secret(secret: &str) {
    if secret.len() < 3 {
        return;
    }
    let debug = format!("{secret:?}");
    let debug = debug[1..debug.len() - 1].to_owned();
    let json = serde_json::to_string(secret).unwrap_or_default();
    let json = json
        .get(1..json.len().saturating_sub(1))
        .unwrap_or("")
        .to_owned();
    let json_of_debug = serde_json::to_string(&debug).unwrap_or_default();
    let json_of_debug = json_of_debug
        .get(1..json_of_debug.len().saturating_sub(1))
        .unwrap_or("")
        .to_owned();
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for v in [secret.to_owned(), debug, json, json_of_debug] {
        if v.len() >= 3 && !all.iter().any(|s| **s == *v) {
            all.push(v.into());
        }
    }
    // Longest first, so a secret containing another is masked whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Masks every registered secret in `line`.
pub fn redact(line: &str) -> std::borrow::Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| line.contains(&**s)) {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = line.to_owned();
    for s in secrets.iter() {
        if out.contains(&**s) {
            out = out.replace(&**s, "***");
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A `MakeWriter` for stderr that buffers each event and writes it redacted.
#[derive(Clone, Copy, Default)]
pub struct RedactingStderr;

/// One event's output, written (redacted) to stderr when dropped.
pub struct RedactingLine(Vec<u8>);

impl Write for RedactingLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        let _ = std::io::stderr().lock().write_all(redact(&text).as_bytes());
    }
}

impl<'a> fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingLine;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingLine(Vec::with_capacity(256))
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Installs the global subscriber (`RUST_LOG`, default `info`). Calling it twice is harmless.
pub fn init(format: LogFormat) {
    init_with_default(format, "info");
}

/// As [`init`], with another default filter when `RUST_LOG` is unset (tools that print their
/// own report, like `fleet-bench`, want only warnings from the libraries underneath).
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    let filter = quiet_notices(
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)),
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    let builder = fmt().with_env_filter(filter).with_writer(RedactingStderr);
    let _ = match format {
        LogFormat::Pretty => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// Postgres NOTICEs (`column … already exists, skipping` from idempotent DDL) are debug
/// detail: sqlx emits them at INFO, so below DEBUG they are filtered out; `RUST_LOG=debug` (or
/// a directive naming `sqlx::postgres::notice`) shows them.
fn quiet_notices(filter: EnvFilter, rust_log: Option<&str>) -> EnvFilter {
    let verbose = filter
        .max_level_hint()
        .is_some_and(|l| l >= tracing_subscriber::filter::LevelFilter::DEBUG);
    let named = rust_log.is_some_and(|v| v.contains("sqlx::postgres::notice"));
    if verbose || named {
        return filter;
    }
    match "sqlx::postgres::notice=warn".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    }
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

#[cfg(test)]
mod notice_tests {
    use super::quiet_notices;
    use tracing_subscriber::EnvFilter;

    #[test]
    fn postgres_notices_show_only_at_debug() {
        let quiet = |f: &str| quiet_notices(EnvFilter::new(f), Some(f)).to_string();
        assert!(quiet("info").contains("sqlx::postgres::notice=warn"));
        assert!(quiet("warn,fleet=info").contains("sqlx::postgres::notice=warn"));
        assert!(!quiet("debug").contains("sqlx::postgres::notice"));
        assert!(!quiet("info,fleet_shared=debug").contains("sqlx::postgres::notice=warn"));
        assert_eq!(
            quiet("info,sqlx::postgres::notice=info"),
            EnvFilter::new("info,sqlx::postgres::notice=info").to_string()
        );
    }
}
