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
///
/// Postgres NOTICEs (`column … already exists, skipping` from idempotent DDL) are debug detail,
/// but sqlx logs them at INFO: [`ReLevelNotices`] logs each again at DEBUG, and the output never
/// shows sqlx's INFO original. So they appear, labelled DEBUG, when `RUST_LOG` enables DEBUG
/// for their target (`debug`, or `sqlx::postgres::notice=debug`), and not at the default level.
pub fn init_with_default(format: LogFormat, default_filter: &str) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // The hint keeps `RUST_LOG`'s most verbose level the global one, so events above it are
    // skipped at their call site instead of reaching the filters.
    let shown = tracing_subscriber::filter::FilterExt::and(
        filter,
        tracing_subscriber::filter::filter_fn(|m| !is_sqlx_notice(m))
            .with_max_level_hint(tracing::Level::TRACE),
    );
    let layer = fmt::layer().with_writer(RedactingStderr);
    let output = match format {
        LogFormat::Pretty => layer.with_target(false).with_filter(shown).boxed(),
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(shown)
            .boxed(),
    };
    let relevel = ReLevelNotices.with_filter(
        tracing_subscriber::filter::filter_fn(is_sqlx_notice)
            .with_max_level_hint(tracing::Level::INFO),
    );
    let _ = tracing_subscriber::registry()
        .with(output)
        .with(relevel)
        .try_init();
}

/// sqlx's target for a Postgres NOTICE (`sqlx-postgres` `connection/stream.rs`).
pub const NOTICE_TARGET: &str = "sqlx::postgres::notice";

/// sqlx's own event (or `enabled!` check) for a Postgres NOTICE: INFO, logged from sqlx's code.
/// (Postgres WARNING and above keep their levels, DEBUG/LOG are already below INFO.)
fn is_sqlx_notice(m: &tracing::Metadata<'_>) -> bool {
    m.target() == NOTICE_TARGET
        && *m.level() == tracing::Level::INFO
        && m.module_path() != Some(module_path!())
}

/// Logs each of sqlx's INFO NOTICE events again, at DEBUG, with the same target and message
/// (under the current span, like the original). The output layer filters out the originals.
/// The new event goes through the global dispatcher from inside this callback, which tracing
/// allows for the global default (the only way [`init`] installs it).
pub struct ReLevelNotices;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ReLevelNotices {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_str(&mut self, f: &tracing::field::Field, v: &str) {
                if f.name() == "message" {
                    v.clone_into(&mut self.0);
                }
            }
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        tracing::debug!(target: NOTICE_TARGET, "{}", message.0);
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
