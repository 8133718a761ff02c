//! Redis glob patterns: escaping values before they enter a pattern, and matching keys
//! client-side exactly as Redis' `stringmatchlen` would for the subset the fleet produces.
//!
//! Patterns the fleet builds contain only literal bytes, `\`-escaped bytes, `*` and `?`:
//! templates may not hold `[`, `]` or `\` (see `rules`), and every placeholder value is escaped
//! with [`escape`]. So the matcher needs no character classes, and a pattern's *literal prefix*
//! (the bytes before its first wildcard) is well defined, which is what lets one pass check a key
//! against hundreds of patterns with a few hash lookups (see `matcher`).

/// Escapes the Redis glob metacharacters `* ? [ ] \` so `value` matches only itself.
///
/// Values are validated as codes before this (so nothing here fires for a valid code); escaping
/// is the second lock on the door, so a future change to code validation cannot open a glob.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Byte(u8),
    Any,
    Star,
}

/// A parsed glob: its literal prefix and the tokens after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    /// The bytes every matching key starts with.
    pub prefix: Vec<u8>,
    rest: Vec<Tok>,
}

impl Glob {
    /// Parses a pattern made of literal bytes, `\x`, `*` and `?` (the fleet never produces `[`).
    pub fn parse(pattern: &str) -> Glob {
        let bytes = pattern.as_bytes();
        let mut toks = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if i + 1 < bytes.len() => {
                    toks.push(Tok::Byte(bytes[i + 1]));
                    i += 2;
                    continue;
                }
                b'*' => {
                    // `**` is the same as `*`.
                    if toks.last() != Some(&Tok::Star) {
                        toks.push(Tok::Star);
                    }
                }
                b'?' => toks.push(Tok::Any),
                b => toks.push(Tok::Byte(b)),
            }
            i += 1;
        }
        let split = toks
            .iter()
            .position(|t| !matches!(t, Tok::Byte(_)))
            .unwrap_or(toks.len());
        let prefix = toks[..split]
            .iter()
            .map(|t| match t {
                Tok::Byte(b) => *b,
                _ => 0,
            })
            .collect();
        Glob {
            prefix,
            rest: toks[split..].to_vec(),
        }
    }

    /// True when the pattern is `<literal>*`: a key matches iff it starts with the prefix.
    pub fn is_prefix_only(&self) -> bool {
        self.rest == [Tok::Star]
    }

    /// Does `key` match? (`key` is whole; the prefix is checked here too.)
    pub fn matches(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix) && self.matches_rest(&key[self.prefix.len()..])
    }

    /// Matches the part of a key after the prefix (the caller has checked the prefix).
    pub fn matches_rest(&self, s: &[u8]) -> bool {
        if self.is_prefix_only() {
            return true;
        }
        // Iterative wildcard matching with single backtrack point: linear for patterns with
        // one `*`, and never exponential.
        let p = &self.rest;
        let (mut pi, mut si) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            match p.get(pi) {
                Some(Tok::Star) => {
                    star = Some((pi, si));
                    pi += 1;
                }
                Some(Tok::Any) => {
                    pi += 1;
                    si += 1;
                }
                Some(Tok::Byte(b)) if *b == s[si] => {
                    pi += 1;
                    si += 1;
                }
                _ => match star {
                    Some((sp, ss)) => {
                        pi = sp + 1;
                        si = ss + 1;
                        star = Some((sp, ss + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|t| *t == Tok::Star)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_every_metacharacter() {
        assert_eq!(escape("acme_org"), "acme_org");
        assert_eq!(escape("*"), "\\*");
        assert_eq!(escape("a[b]"), "a\\[b\\]");
        assert_eq!(escape("a?"), "a\\?");
        assert_eq!(escape("a\\b"), "a\\\\b");
        let g = Glob::parse(&format!("org:{}:*", escape("a*")));
        assert!(g.matches(b"org:a*:x"));
        assert!(!g.matches(b"org:ab:x"));
    }

    #[test]
    fn prefix_and_matching() {
        let g = Glob::parse("org:acme:*");
        assert_eq!(g.prefix, b"org:acme:");
        assert!(g.is_prefix_only());
        assert!(g.matches(b"org:acme:details"));
        assert!(g.matches(b"org:acme:"));
        assert!(!g.matches(b"org:acme_2:details"));
        assert!(!g.matches(b"org:acm"));

        let g = Glob::parse("user:?:*:profile");
        assert_eq!(g.prefix, b"user:");
        assert!(g.matches(b"user:7:a:b:profile"));
        assert!(!g.matches(b"user:77:a:profile"));
        assert!(!g.matches(b"user:7:a:profilex"));

        let exact = Glob::parse("orgcache:acme");
        assert!(exact.matches(b"orgcache:acme"));
        assert!(!exact.matches(b"orgcache:acme2"));
    }
}
