//! SQL identifiers and literals taken from job specs.
//!
//! Every table, column and schema name in a spec becomes an [`Ident`] first: lower-case ASCII,
//! digits and `_`, at most 63 bytes (Postgres' limit), not starting with a digit. Only an `Ident`
//! is ever spliced into SQL, and always double-quoted, so a spec can name a table but never
//! inject SQL. Whether the table or column exists is checked separately against the catalog.

use std::fmt;

/// A spec value that is not an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value} is not an identifier (use a-z, 0-9 and _, starting with a letter or _, at most 63 characters)")]
pub struct BadIdent {
    pub what: String,
    /// Quoted and bounded.
    pub value: String,
}

/// A checked identifier (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ident(String);

impl Ident {
    pub fn parse(what: &str, s: &str) -> Result<Self, BadIdent> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(Ident(s.to_owned()))
        } else {
            Err(BadIdent {
                what: what.to_owned(),
                value: fleet_shared::events::quoted(s),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `"name"`: safe to splice because the constructor admits no quote.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `"schema"."table"`.
pub fn qualified(schema: &Ident, table: &Ident) -> String {
    format!("{}.{}", schema.quoted(), table.quoted())
}

/// A SQL string literal: single quotes doubled (standard_conforming_strings is on by default
/// since Postgres 9.1, so backslashes are literal). Used only for values already validated
/// (codes, UUIDs), as a second line of defence.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked_and_quoted() {
        assert_eq!(
            Ident::parse("table", "sessions").unwrap().quoted(),
            "\"sessions\""
        );
        assert!(Ident::parse("table", "_x1").is_ok());
        for bad in [
            "",
            "1abc",
            "Sessions",
            "a-b",
            "a\"b",
            "x; drop table y",
            &"a".repeat(64),
        ] {
            let e = Ident::parse("table", bad).unwrap_err();
            assert!(e.to_string().contains("is not an identifier"), "{e}");
        }
        assert_eq!(literal("o'k"), "'o''k'");
    }
}
