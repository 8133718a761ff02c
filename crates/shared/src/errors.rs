//! Error helpers every module uses, kept at the bottom of the crate so nothing here depends on
//! the rest: the settings error, reading a boolean setting, folding messages into one line,
//! quoting rejected input, and whether a Postgres error is worth retrying.

/// A setting that is missing or malformed. `Display` is one line naming the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {problem} (accepted: {accepts})")]
    Invalid {
        var: &'static str,
        problem: String,
        accepts: &'static str,
    },
    /// `problem` already says what is accepted (e.g. an invalid duration).
    #[error("{var}: {problem}")]
    Value { var: &'static str, problem: String },
    #[error("FLEET_CONFIG: {path}: {problem}")]
    File { path: String, problem: String },
}

impl ConfigError {
    pub fn invalid(var: &'static str, problem: impl Into<String>, accepts: &'static str) -> Self {
        ConfigError::Invalid {
            var,
            problem: problem.into(),
            accepts,
        }
    }
}

/// Folds a multi-line error message into one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// Whether retrying later can succeed: the connection, the pool or the server's state failed,
/// not the statement. Serialization failures and deadlocks are transient too.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(_) => {
            let code = sqlstate(e).unwrap_or_default();
            code.starts_with("08") // connection exception
                || code.starts_with("53") // insufficient resources
                || code.starts_with("57P") // admin shutdown, crash shutdown, cannot connect now
                || code == "40001" // serialization failure
                || code == "40P01" // deadlock
                || code == "55P03" // lock not available (lock_timeout)
        }
        _ => false,
    }
}

/// A boolean setting: unset, empty, `0`, `false` or `no` is false; `1`, `true` or `yes` is true;
/// anything else is a [`ConfigError`] naming `var`.
pub(crate) fn parse_bool(var: &'static str, v: Option<String>) -> Result<bool, ConfigError> {
    match v.as_deref().map(str::trim) {
        None | Some("") | Some("0") | Some("false") | Some("no") => Ok(false),
        Some("1") | Some("true") | Some("yes") => Ok(true),
        Some(other) => Err(ConfigError::invalid(
            var,
            format!("{other:?} is not a boolean"),
            "1/true/yes or 0/false/no",
        )),
    }
}

/// Longest piece of input a reason quotes, in bytes.
pub const QUOTE_BYTES: usize = 64;

/// `s` Debug-quoted for a reason, cut to [`QUOTE_BYTES`] with a marker naming its full size:
/// `"aaaa…" (70000 bytes)`. Every reason that echoes input quotes it through here, so a hostile
/// value can never make a reason (a dead-letter header, a log line) large.
pub fn quoted(s: &str) -> String {
    if s.len() <= QUOTE_BYTES {
        return format!("{s:?}");
    }
    let mut end = QUOTE_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &s[..end], s.len())
}
