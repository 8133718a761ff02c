//! Names an operator gives things (invalidation rules, schedules, plans) and config keys: one
//! rule each, checked in one place, with one message.
//!
//! A [`Name`] matches `^[a-z0-9][a-z0-9_-]{0,63}$`: it appears in metrics labels, log lines and
//! message ids (a schedule's is part of every `Nats-Msg-Id`, `<schedule>:<tick>:<tenant>`), so it
//! holds no separator, space or upper case. A config key ([`check_config_key`]) is 1-255 of
//! `a-z A-Z 0-9 . _ -`: keys such as `features.SSO` are in use, so upper case is accepted, and the
//! message says so.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The longest name accepted (bytes).
pub const MAX_NAME_LEN: usize = 64;
/// The longest config key accepted (bytes).
pub const MAX_CONFIG_KEY_LEN: usize = 255;

/// A rule, schedule or plan name: `^[a-z0-9][a-z0-9_-]{0,63}$`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// Why a string is not a name; `Display` is one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a valid name (names match ^[a-z0-9][a-z0-9_-]{{0,63}}$)")]
pub struct InvalidName {
    shown: String,
}

impl Name {
    pub fn parse(s: &str) -> Result<Self, InvalidName> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_NAME_LEN
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'));
        if ok {
            Ok(Name(s.to_owned()))
        } else {
            Err(InvalidName {
                shown: crate::errors::quoted(s),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Name({})", self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Why a string is not a config key; `Display` is one line and states exactly what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a config key (use a-z, A-Z, 0-9, . _ -, at most 255)")]
pub struct InvalidConfigKey {
    shown: String,
}

/// Checks a config key: 1-255 of `a-z A-Z 0-9 . _ -` (the rule of `[plans]`, a tenant's
/// `config_overrides` and `tenant.config.set`).
pub fn check_config_key(key: &str) -> Result<(), InvalidConfigKey> {
    let ok = !key.is_empty()
        && key.len() <= MAX_CONFIG_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidConfigKey {
            shown: crate::errors::quoted(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
            "followups",
            "migrate-nightly",
            "p_1",
            "0day",
            &"a".repeat(64),
        ] {
            assert_eq!(Name::parse(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a:b",
            "a b",
            "a.b",
            "ü",
            &"a".repeat(65),
        ] {
            let e = Name::parse(bad).unwrap_err().to_string();
            assert!(e.contains("^[a-z0-9][a-z0-9_-]{0,63}$"), "{bad}: {e}");
        }
        assert!(serde_json::from_str::<Name>("\"x:y\"").is_err());
    }

    #[test]
    fn config_keys_accept_what_the_message_says() {
        for ok in ["features.SSO", "api.rate_limit", "a-b_c.D9"] {
            assert!(check_config_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a'b", "a/b", "ü", &"a".repeat(256)] {
            let e = check_config_key(bad).unwrap_err().to_string();
            assert!(e.contains("use a-z, A-Z, 0-9, . _ -"), "{bad}: {e}");
            assert!(!e.contains('\n'));
        }
    }
}
