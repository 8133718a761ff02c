//! Invalidation rules: which key patterns an event clears.
//!
//! A rule maps an event subject to pattern templates such as `org:{org_code}:*`. Everything that
//! can be checked without an event is checked at start ([`RuleSet::build`]), so a bad rule is a
//! one-line configuration error naming it, never a surprise at run time:
//! - a template is literal text, `*`/`?` wildcards and `{field}` placeholders; `[`, `]`, `\` and
//!   stray braces are rejected (so every pattern the fleet sends is in the subset `glob` matches);
//! - every template has a placeholder, and each placeholder is bounded by a separator or the end
//!   on both sides (`org:{org_code}:*`, not `org:{org_code}*`), so `acme`'s rule can never match
//!   `acme_2`'s keys;
//! - a placeholder must name a field the subject's events always carry.
//!
//! At run time [`RuleSet::patterns_for`] validates each placeholder value as a
//! [`fleet_shared::Code`] and escapes it for Redis glob syntax before it enters a pattern: an
//! event with `"org_code": "*"` is a bad input and produces no pattern at all.

use std::collections::BTreeMap;

use fleet_shared::events::{self, BadInput};
use fleet_shared::Code;

use crate::config::{InvalidationConfig, RuleConfig};
use crate::glob;

/// A rule that cannot be used. `Display` is one line naming the rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("FLEET_CONFIG [invalidation] rule {rule:?}: pattern {template:?} is malformed: {why}")]
    Malformed {
        rule: String,
        template: String,
        why: String,
    },
    #[error("FLEET_CONFIG [invalidation] rule {rule:?}: pattern {template:?} names {{{field}}}, which {subject} events do not always carry (they carry: {carried})")]
    UnknownPlaceholder {
        rule: String,
        template: String,
        field: String,
        subject: String,
        carried: String,
    },
    #[error("FLEET_CONFIG [invalidation] rule {rule:?}: {why}")]
    Invalid { rule: String, why: String },
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Field(String),
}

/// A parsed pattern template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

fn is_code_byte(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
}

impl Template {
    /// Parses and checks a template; the error is the reason, without the rule's name.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(n) => name.push(n),
                            None => return Err("a '{' is never closed".into()),
                        }
                    }
                    let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
                        && name.chars().all(is_code_byte);
                    if !ok {
                        return Err(format!(
                            "{{{name}}} is not a placeholder (use {{field}} with a-z, 0-9, _)"
                        ));
                    }
                    if !lit.is_empty() {
                        parts.push(Part::Lit(std::mem::take(&mut lit)));
                    }
                    parts.push(Part::Field(name));
                }
                '}' => return Err("a '}' has no matching '{'".into()),
                '[' | ']' | '\\' => {
                    return Err(format!(
                        "{c:?} is not allowed (templates use literal text, * and ? only)"
                    ))
                }
                c if c.is_control() || c == ' ' => {
                    return Err("spaces and control characters are not allowed".into())
                }
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if !parts.iter().any(|p| matches!(p, Part::Field(_))) {
            return Err(
                "it has no {placeholder}, so one event would clear every tenant's keys".into(),
            );
        }
        // Each placeholder must be fenced by separators, so a code's pattern can never reach a
        // longer code that starts with it (acme vs acme_2).
        for (i, p) in parts.iter().enumerate() {
            if let Part::Field(name) = p {
                let before = i.checked_sub(1).map(|j| &parts[j]);
                let after = parts.get(i + 1);
                let fenced = |part: Option<&Part>, first: bool| match part {
                    None => true,
                    Some(Part::Field(_)) => false,
                    Some(Part::Lit(l)) => {
                        let c = if first {
                            l.chars().next()
                        } else {
                            l.chars().last()
                        };
                        c.is_some_and(|c| !is_code_byte(c) && c != '*' && c != '?')
                    }
                };
                if !fenced(before, false) || !fenced(after, true) {
                    return Err(format!(
                        "{{{name}}} must be separated from what surrounds it by a character that cannot be part of a code (e.g. ':'), or be at either end"
                    ));
                }
            }
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Field(f) => Some(f.as_str()),
            Part::Lit(_) => None,
        })
    }

    /// Fills the placeholders with already-validated values, escaping them for glob syntax.
    fn render(&self, values: &BTreeMap<String, Code>) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Field(f) => {
                    if let Some(v) = values.get(f) {
                        out.push_str(&glob::escape(v.as_str()));
                    }
                }
            }
        }
        out
    }
}

/// A usable rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub subject: String,
    pub templates: Vec<Template>,
}

/// What events on one subject look like and which rules they trigger.
#[derive(Debug, Clone)]
pub struct SubjectRules {
    pub subject: String,
    /// Code fields every event on this subject carries (validated on each event).
    pub fields: Vec<String>,
    /// Indexes into [`RuleSet::rules`].
    pub rules: Vec<usize>,
}

/// A pattern to clear, rendered from one event, and the rule it came from (for metrics).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    pub rule: usize,
    pub glob: String,
}

/// Every rule, checked, indexed by subject.
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub subjects: Vec<SubjectRules>,
}

/// The built-in subjects and the code fields the contract guarantees they carry.
const BUILTIN_SUBJECTS: &[(&str, &[&str])] = &[
    (events::ORG_UPDATED, &["org_code"]),
    (events::SESSION_CHANGED, &["org_code"]),
];

/// Seed 000's rules.
fn builtin_rules() -> Vec<RuleConfig> {
    vec![
        RuleConfig {
            name: "org".into(),
            subject: events::ORG_UPDATED.into(),
            fields: None,
            patterns: vec!["org:{org_code}:*".into()],
        },
        RuleConfig {
            name: "sessions".into(),
            subject: events::SESSION_CHANGED.into(),
            fields: None,
            patterns: vec!["sessions:{org_code}:*".into()],
        },
    ]
}

fn valid_subject(s: &str) -> bool {
    let tokens: Vec<&str> = s.split('.').collect();
    tokens.len() >= 2
        && tokens.iter().all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

impl RuleSet {
    /// The built-in rules plus those in `cfg`, every one checked.
    pub fn build(cfg: &InvalidationConfig) -> Result<RuleSet, RuleError> {
        let mut all = Vec::new();
        if cfg.builtin_rules.unwrap_or(true) {
            all.extend(builtin_rules());
        }
        all.extend(cfg.rules.iter().cloned());

        let mut set = RuleSet {
            rules: Vec::new(),
            subjects: Vec::new(),
        };
        for rc in all {
            let invalid = |why: String| RuleError::Invalid {
                rule: rc.name.clone(),
                why,
            };
            fleet_shared::Name::parse(&rc.name).map_err(|e| invalid(e.to_string()))?;
            if set.rules.iter().any(|r| r.name == rc.name) {
                return Err(invalid("another rule has the same name".into()));
            }
            if !valid_subject(&rc.subject) {
                return Err(invalid(format!(
                    "subject {:?} is not a subject (tokens of A-Z a-z 0-9 _ - separated by '.', no wildcards)",
                    rc.subject
                )));
            }
            if rc.patterns.is_empty() {
                return Err(invalid("it has no patterns".into()));
            }
            let builtin = BUILTIN_SUBJECTS.iter().find(|(s, _)| *s == rc.subject);
            let declared: Vec<String> = match (builtin, &rc.fields) {
                (Some((s, _)), Some(_)) => {
                    return Err(invalid(format!(
                        "the fields of {s} are fixed by the event contract; remove `fields`"
                    )))
                }
                (Some((_, f)), None) => f.iter().map(|s| s.to_string()).collect(),
                (None, Some(f)) => f.clone(),
                (None, None) => vec!["org_code".into()],
            };
            for f in &declared {
                let ok =
                    f.starts_with(|c: char| c.is_ascii_lowercase()) && f.chars().all(is_code_byte);
                if !ok {
                    return Err(invalid(format!("field {f:?} is not a field name")));
                }
            }
            let mut templates = Vec::new();
            for src in &rc.patterns {
                let t = Template::parse(src).map_err(|why| RuleError::Malformed {
                    rule: rc.name.clone(),
                    template: src.clone(),
                    why,
                })?;
                if let Some(missing) = t.fields().find(|f| !declared.iter().any(|d| d == f)) {
                    return Err(RuleError::UnknownPlaceholder {
                        rule: rc.name.clone(),
                        template: src.clone(),
                        field: missing.to_owned(),
                        subject: rc.subject.clone(),
                        carried: declared.join(", "),
                    });
                }
                templates.push(t);
            }

            let idx = set.rules.len();
            match set.subjects.iter_mut().find(|s| s.subject == rc.subject) {
                Some(s) => {
                    if builtin.is_none() && s.fields != declared {
                        return Err(invalid(format!(
                            "another rule on {} declares different fields ({})",
                            rc.subject,
                            s.fields.join(", ")
                        )));
                    }
                    s.rules.push(idx);
                }
                None => set.subjects.push(SubjectRules {
                    subject: rc.subject.clone(),
                    fields: declared,
                    rules: vec![idx],
                }),
            }
            set.rules.push(Rule {
                name: rc.name,
                subject: rc.subject,
                templates,
            });
        }
        if set.subjects.is_empty() {
            return Err(RuleError::Invalid {
                rule: "*".into(),
                why: "no rules: builtin_rules = false and none configured".into(),
            });
        }
        Ok(set)
    }

    /// Subjects that `FLEET_EVENTS` does not capture by default and must be added to it.
    pub fn extra_subjects(&self) -> Vec<String> {
        self.subjects
            .iter()
            .map(|s| s.subject.clone())
            .filter(|s| {
                !fleet_shared::topology::EVENT_SUBJECTS.iter().any(|w| {
                    let root = w.trim_end_matches('>');
                    s.starts_with(root)
                })
            })
            .collect()
    }

    /// The patterns one event clears. A missing field or a value that is not a code is a bad
    /// input, and then no pattern is produced at all.
    pub fn patterns_for(&self, subject: &str, payload: &[u8]) -> Result<Vec<Pattern>, BadInput> {
        let Some(sr) = self.subjects.iter().find(|s| s.subject == subject) else {
            return Err(BadInput::new(format!(
                "{subject}: no invalidation rule for this subject"
            )));
        };
        // The contract's typed check for built-in events (e.g. an optional tenant_code must
        // still be a code), then the generic one for every declared field.
        match subject {
            events::ORG_UPDATED => {
                events::parse_json::<events::OrgUpdated>(subject, payload)?;
            }
            events::SESSION_CHANGED => {
                events::parse_json::<events::SessionChanged>(subject, payload)?;
            }
            _ => {}
        }
        let obj: serde_json::Map<String, serde_json::Value> = events::parse_json(subject, payload)?;
        let mut values = BTreeMap::new();
        for f in &sr.fields {
            let raw = match obj.get(f) {
                Some(serde_json::Value::String(s)) => s,
                Some(_) => {
                    return Err(BadInput::new(format!(
                        "{subject}: field {f} is not a string"
                    )))
                }
                None => return Err(BadInput::new(format!("{subject}: missing field `{f}`"))),
            };
            let code =
                Code::parse(raw).map_err(|e| BadInput::new(format!("{subject}: {f}: {e}")))?;
            values.insert(f.clone(), code);
        }
        let mut out = Vec::new();
        for &ri in &sr.rules {
            for t in &self.rules[ri].templates {
                out.push(Pattern {
                    rule: ri,
                    glob: t.render(&values),
                });
            }
        }
        Ok(out)
    }

    /// The rule's patterns for one org (for `fleetctl cache preview`): every rule whose
    /// subject's only field is `org_code`.
    pub fn patterns_for_org(&self, org: &Code) -> Vec<Pattern> {
        let mut values = BTreeMap::new();
        values.insert("org_code".to_owned(), org.clone());
        let mut out = Vec::new();
        for sr in &self.subjects {
            if sr.fields != ["org_code"] {
                continue;
            }
            for &ri in &sr.rules {
                for t in &self.rules[ri].templates {
                    out.push(Pattern {
                        rule: ri,
                        glob: t.render(&values),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> InvalidationConfig {
        let t: toml::Table = toml_text.parse().unwrap();
        t.get("invalidation")
            .cloned()
            .map(|v| v.try_into().unwrap())
            .unwrap_or_default()
    }

    #[test]
    fn builtin_rules_render_escaped_patterns() {
        let set = RuleSet::build(&InvalidationConfig::default()).unwrap();
        let p = set
            .patterns_for("org.updated", br#"{"org_code":"acme_org"}"#)
            .unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].glob, "org:acme_org:*");
        let p = set
            .patterns_for(
                "session.changed",
                br#"{"org_code":"acme","session_id":"x y"}"#,
            )
            .unwrap();
        assert_eq!(p[0].glob, "sessions:acme:*");
        assert!(set.extra_subjects().is_empty());
    }

    #[test]
    fn injection_attempts_are_bad_input() {
        let set = RuleSet::build(&InvalidationConfig::default()).unwrap();
        for bad in ["*", "a[b]", "a?", "a\\\\b", "ACME", "", "acme:*"] {
            let payload = format!(r#"{{"org_code":"{bad}"}}"#);
            let err = set
                .patterns_for("org.updated", payload.as_bytes())
                .unwrap_err();
            assert!(err.0.contains("not a valid code"), "{bad}: {err}");
        }
        assert!(set.patterns_for("org.updated", b"{}").is_err());
        assert!(set.patterns_for("org.updated", b"nope").is_err());
        assert!(set
            .patterns_for("org.updated", br#"{"org_code":"a","tenant_code":"B*"}"#)
            .is_err());
    }

    #[test]
    fn configured_rules_add_subjects() {
        let set = RuleSet::build(&cfg(r#"
            [[invalidation.rules]]
            name = "profiles"
            subject = "profile.updated"
            patterns = ["mentors:{org_code}:*", "mentees:{org_code}:*"]
            [[invalidation.rules]]
            name = "forms"
            subject = "org.updated"
            patterns = ["forms:{org_code}:*"]
        "#))
        .unwrap();
        assert_eq!(set.extra_subjects(), vec!["profile.updated".to_string()]);
        let p = set
            .patterns_for("profile.updated", br#"{"org_code":"acme"}"#)
            .unwrap();
        let globs: Vec<_> = p.iter().map(|p| p.glob.as_str()).collect();
        assert_eq!(globs, ["mentors:acme:*", "mentees:acme:*"]);
        let p = set
            .patterns_for("org.updated", br#"{"org_code":"acme"}"#)
            .unwrap();
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn config_errors_name_the_rule_in_one_line() {
        for (subject, pattern, needle) in [
            ("profile.updated", "mentors:{org_id}:*", "names {org_id}"),
            ("org.updated", "org:{tenant_code}:*", "names {tenant_code}"),
            ("profile.updated", "mentors:{org_code:*", "never closed"),
            ("profile.updated", "mentors:[{org_code}]:*", "not allowed"),
            ("profile.updated", "mentors:*", "no {placeholder}"),
            (
                "profile.updated",
                "mentors:{org_code}*",
                "must be separated",
            ),
            ("profile.*", "mentors:{org_code}:*", "is not a subject"),
        ] {
            let text = format!(
                "[[invalidation.rules]]\nname = \"p\"\nsubject = \"{subject}\"\npatterns = [\"{pattern}\"]"
            );
            let err = RuleSet::build(&cfg(&text)).unwrap_err().to_string();
            assert!(err.contains("rule \"p\""), "{err}");
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(!err.contains('\n'));
        }
    }

    #[test]
    fn preview_patterns_cover_org_rules() {
        let set = RuleSet::build(&InvalidationConfig::default()).unwrap();
        let org = Code::parse("acme").unwrap();
        let globs: Vec<_> = set
            .patterns_for_org(&org)
            .into_iter()
            .map(|p| p.glob)
            .collect();
        assert_eq!(globs, ["org:acme:*", "sessions:acme:*"]);
    }
}
