//! The validated code newtype.
//!
//! Tenant and organisation codes become Postgres schema names (`tenant_<code>`) and parts of Redis
//! key patterns, so they are the one input that must never reach SQL or a glob unchecked. A
//! [`Code`] can only be built by [`Code::parse`], which accepts `^[a-z0-9][a-z0-9_]{0,47}$` and
//! nothing else: no quoting, no glob metacharacters, no upper case, at most 48 bytes (so
//! `tenant_<code>` stays under Postgres' 63-byte identifier limit).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest code accepted (bytes).
pub const MAX_CODE_LEN: usize = 48;

/// A tenant, organisation or other code: `^[a-z0-9][a-z0-9_]{0,47}$`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Code(String);

/// Why a string is not a code. Its `Display` is the one-line reason that goes to the dead-letter
/// stream or to stderr.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a valid code: {why} (codes match ^[a-z0-9][a-z0-9_]{{0,47}}$)")]
pub struct InvalidCode {
    shown: String,
    why: &'static str,
}

impl Code {
    /// Parses and validates a code.
    pub fn parse(s: &str) -> Result<Self, InvalidCode> {
        let fail = |why| {
            Err(InvalidCode {
                shown: crate::errors::quoted(s),
                why,
            })
        };
        let bytes = s.as_bytes();
        if bytes.is_empty() {
            return fail("it is empty");
        }
        if bytes.len() > MAX_CODE_LEN {
            return fail("it is longer than 48 characters");
        }
        if !(bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit()) {
            return fail("it must start with a-z or 0-9");
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
        {
            return fail("use only a-z, 0-9 and _");
        }
        Ok(Code(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tenant's schema name, `tenant_<code>`; safe to splice into SQL as an identifier
    /// because a code holds only `[a-z0-9_]`. Still quoted by callers for clarity.
    pub fn schema_name(&self) -> String {
        format!("tenant_{}", self.0)
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Code({})", self.0)
    }
}

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Code {
    type Err = InvalidCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Code::parse(s)
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Code::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_codes() {
        for ok in ["acme", "a", "0", "acme_org", "acme_2", &"a".repeat(48)] {
            assert_eq!(Code::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else_with_a_reason() {
        for bad in [
            "",
            "Acme",
            "_acme",
            "acme-org",
            "acme org",
            "Acme; DROP SCHEMA public",
            "*",
            "a[b]",
            "a?",
            "a\\b",
            "ünï",
            &"a".repeat(49),
        ] {
            let err = Code::parse(bad).unwrap_err().to_string();
            assert!(err.contains("is not a valid code"), "{bad}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn error_escapes_control_characters() {
        let err = Code::parse("a\nb").unwrap_err().to_string();
        assert!(err.contains("a\\nb"), "{err}");
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<Code>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<Code>("\"ACME*\"").is_err());
    }
}
