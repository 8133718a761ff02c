//! The one duration syntax of the fleet: a number with a unit, `"500ms"`, `"2s"`, `"5m"`,
//! `"1h"`, `"30d"` (several parts add up: `"1h 30m"`), in environment variables, `FLEET_CONFIG`,
//! job specs, schedules and CLI flags alike.
//!
//! Parsing is [`humantime`]'s; this module adds the one rule it lacks: a bare number is refused,
//! because the same `30` used to mean seconds in one place and milliseconds in another. The error
//! shows the accepted form. Use [`parse`] for text, [`serde`] (or [`serde::option`]) for a
//! `Duration` field of a deserialized struct, and [`format`] to print one the same way.

use std::time::Duration;

/// What every duration setting accepts; the tail of each error message.
pub const ACCEPTED: &str = "a number with a unit, e.g. 500ms, 2s, 5m, 1h, 30d";

/// Why a text is not a duration. `Display` is one line and shows the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{shown} is not a duration: {why} (accepted: {ACCEPTED})")]
pub struct InvalidDuration {
    shown: String,
    why: String,
}

/// Parses `"500ms"`, `"2s"`, `"5m"`, `"1h"`, `"30d"`, `"1h 30m"`; refuses a bare number.
pub fn parse(text: &str) -> Result<Duration, InvalidDuration> {
    let t = text.trim();
    let fail = |why: String| InvalidDuration {
        shown: format!("{:?}", crate::errors::one_line(text)),
        why,
    };
    if t.is_empty() {
        return Err(fail("it is empty".into()));
    }
    if t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(fail(format!(
            "a bare number has no unit; write e.g. {t}s or {t}ms"
        )));
    }
    humantime::parse_duration(t).map_err(|e| fail(e.to_string()))
}

/// Prints a duration in the syntax [`parse`] reads back (`"1m 30s"`, `"500ms"`).
pub fn format(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Resolves a setting renamed from an integer key with the unit in its name (`ack_wait_secs`,
/// `lock_timeout_ms`) to a duration key (`ack_wait`, `lock_timeout`). The old key keeps working
/// for one release with a warning naming the new key; setting both is an error.
pub fn renamed(
    place: &str,
    new_key: &str,
    new: Option<Duration>,
    old_key: &str,
    old: Option<u64>,
    old_unit: Duration,
) -> Result<Option<Duration>, String> {
    match (new, old) {
        (Some(_), Some(_)) => Err(format!(
            "{place}: {old_key} and {new_key} are the same setting; keep only {new_key}"
        )),
        (None, Some(n)) => {
            let d = old_unit.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
            tracing::warn!(
                "{place}: {old_key} is deprecated and will be removed; write {new_key} = \"{}\"",
                format(d)
            );
            Ok(Some(d))
        }
        (new, None) => Ok(new),
    }
}

/// `#[serde(with = "fleet_shared::duration::serde")]` for a `Duration` field written as a
/// string; an integer is refused with the accepted form.
pub mod serde {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a duration string ({})", super::ACCEPTED)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            self.visit_str(&v.to_string())
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            self.visit_str(&v.to_string())
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            self.visit_str(&v.to_string())
        }
    }

    /// The same for an `Option<Duration>` field (use with `#[serde(default)]`).
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] Duration);
            Option::<Wrap>::deserialize(d).map(|w| w.map(|Wrap(d)| d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_syntax() {
        for (text, want) in [
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("5m", Duration::from_secs(300)),
            ("5min", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("30d", Duration::from_secs(30 * 86_400)),
            ("1h 30m", Duration::from_secs(5400)),
            (" 10s ", Duration::from_secs(10)),
        ] {
            assert_eq!(parse(text).unwrap(), want, "{text}");
            assert_eq!(parse(&format(want)).unwrap(), want, "{text} round trip");
        }
    }

    #[test]
    fn a_bare_number_is_refused_with_the_accepted_form() {
        for bad in ["30", "0", "1.5", "", "s", "5 parsecs", "-1s"] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("500ms, 2s, 5m, 1h, 30d"), "{bad}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!(parse("30").unwrap_err().to_string().contains("30s"));
    }

    #[test]
    fn a_renamed_key_keeps_working_and_both_keys_are_refused() {
        let ms = Duration::from_millis(1);
        assert_eq!(
            renamed(
                "[t]",
                "lock_timeout",
                None,
                "lock_timeout_ms",
                Some(2500),
                ms
            ),
            Ok(Some(Duration::from_millis(2500)))
        );
        let new = Some(Duration::from_secs(1));
        assert_eq!(renamed("[t]", "a", new, "a_ms", None, ms), Ok(new));
        assert_eq!(renamed("[t]", "a", None, "a_ms", None, ms), Ok(None));
        let err = renamed("[t]", "a", new, "a_ms", Some(1), ms).unwrap_err();
        assert!(err.contains("keep only a"), "{err}");
    }

    #[test]
    fn serde_fields_take_strings_and_refuse_integers() {
        #[derive(::serde::Deserialize, Debug)]
        struct T {
            #[serde(with = "crate::duration::serde")]
            a: Duration,
            #[serde(default, with = "crate::duration::serde::option")]
            b: Option<Duration>,
        }
        let t: T = toml::from_str("a = \"5m\"\nb = \"500ms\"").unwrap();
        assert_eq!(
            (t.a, t.b),
            (Duration::from_secs(300), Some(Duration::from_millis(500)))
        );
        let t: T = toml::from_str("a = \"1s\"").unwrap();
        assert_eq!(t.b, None);
        let err = toml::from_str::<T>("a = 30").unwrap_err().to_string();
        assert!(err.contains("write e.g. 30s"), "{err}");
        let err = serde_json::from_str::<T>(r#"{"a": "1s", "b": 5}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("500ms, 2s"), "{err}");
    }
}
