//! One compiled set of every pattern a pass serves.
//!
//! A pass reads every key once and must decide, per key, whether any queued pattern matches.
//! Checking N globs per key would make a pass cost keys × patterns. Instead patterns are grouped
//! by their literal prefix (`org:acme:` for `org:acme:*`) in one hash map per distinct prefix
//! length; a key is checked with one hash lookup per distinct length (a handful: codes differ in
//! length, families share them), and only patterns whose prefix matched run the rest of their
//! glob, which for `prefix*` patterns is nothing. Patterns are deduplicated, so a burst of events
//! for the same org costs the same as one.

use std::collections::HashMap;

use crate::glob::Glob;
use crate::rules::Pattern;

/// Patterns sharing one prefix length: prefix → indexes into `MatchSet::globs`.
type PrefixMap = HashMap<Vec<u8>, Vec<usize>>;

pub struct MatchSet {
    /// (prefix length, prefix → indexes into `globs`), ascending by length.
    by_len: Vec<(usize, PrefixMap)>,
    globs: Vec<(Glob, usize)>,
    /// The one distinct pattern, when there is exactly one (then `SCAN MATCH` is used).
    single: Option<String>,
}

impl MatchSet {
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> MatchSet {
        let mut seen: HashMap<&str, ()> = HashMap::new();
        let mut globs = Vec::new();
        let mut sources = Vec::new();
        for p in patterns {
            if seen.insert(p.glob.as_str(), ()).is_none() {
                globs.push((Glob::parse(&p.glob), p.rule));
                sources.push(p.glob.clone());
            }
        }
        let mut by_len: Vec<(usize, PrefixMap)> = Vec::new();
        for (i, (g, _)) in globs.iter().enumerate() {
            let len = g.prefix.len();
            let slot = match by_len.iter().position(|(l, _)| *l == len) {
                Some(s) => s,
                None => {
                    by_len.push((len, HashMap::new()));
                    by_len.len() - 1
                }
            };
            by_len[slot].1.entry(g.prefix.clone()).or_default().push(i);
        }
        by_len.sort_by_key(|(l, _)| *l);
        let single = (sources.len() == 1).then(|| sources.remove(0));
        MatchSet {
            by_len,
            globs,
            single,
        }
    }

    /// How many distinct patterns the set holds.
    pub fn len(&self) -> usize {
        self.globs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.globs.is_empty()
    }

    /// The pattern to pass to `SCAN MATCH` (only when there is exactly one).
    pub fn single_pattern(&self) -> Option<&str> {
        self.single.as_deref()
    }

    /// The rule of the first pattern `key` matches, if any.
    pub fn rule_of(&self, key: &[u8]) -> Option<usize> {
        for (len, map) in &self.by_len {
            if key.len() < *len {
                break;
            }
            if let Some(ids) = map.get(&key[..*len]) {
                for &i in ids {
                    let (g, rule) = &self.globs[i];
                    if g.matches_rest(&key[*len..]) {
                        return Some(*rule);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(rule: usize, glob: &str) -> Pattern {
        Pattern {
            rule,
            glob: glob.into(),
        }
    }

    #[test]
    fn matches_exactly_the_patterns_keys() {
        let pats = [
            p(0, "org:acme:*"),
            p(0, "org:acme:*"),
            p(1, "sessions:acme_2:*"),
            p(2, "user:?:x"),
        ];
        let m = MatchSet::new(&pats);
        assert_eq!(m.len(), 3);
        assert!(m.single_pattern().is_none());
        assert_eq!(m.rule_of(b"org:acme:details"), Some(0));
        assert_eq!(m.rule_of(b"org:acme_2:details"), None);
        assert_eq!(m.rule_of(b"sessions:acme_2:upcoming"), Some(1));
        assert_eq!(m.rule_of(b"sessions:acme:upcoming"), None);
        assert_eq!(m.rule_of(b"user:7:x"), Some(2));
        assert_eq!(m.rule_of(b"user:77:x"), None);
        assert_eq!(m.rule_of(b"org"), None);
        let one = MatchSet::new(&[p(0, "org:acme:*")]);
        assert_eq!(one.single_pattern(), Some("org:acme:*"));
    }
}
