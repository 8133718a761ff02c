//! The organization mapping of a `tenant_codes` job: the `data_codes.csv`
//! (`organization_id,organization_code,tenant_code`).
//!
//! Parsed strictly, because a wrong mapping silently writes the wrong tenant into millions of
//! rows: the header must name the three columns (any order, extra columns ignored), every row
//! must have them, codes must be valid fleet codes, and one `organization_id` may not map to two
//! different pairs. Errors name the line.

use std::collections::BTreeMap;

use fleet_shared::Code;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("mapping CSV is empty")]
    Empty,
    #[error("mapping CSV header lacks column {0:?} (needs organization_id,organization_code,tenant_code)")]
    MissingColumn(&'static str),
    #[error("mapping CSV line {line}: {problem}")]
    Line { line: usize, problem: String },
    #[error("mapping CSV has no data rows")]
    NoRows,
}

/// One organization's codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrgCodes {
    pub organization_code: String,
    pub tenant_code: String,
}

/// `organization_id` → codes.
pub type Mapping = BTreeMap<String, OrgCodes>;

fn field(s: &str) -> &str {
    let t = s.trim();
    t.strip_prefix('"')
        .and_then(|x| x.strip_suffix('"'))
        .unwrap_or(t)
}

/// Parses the CSV text (see the module docs).
pub fn parse(text: &str) -> Result<Mapping, MappingError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_start_matches('\u{feff}')))
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or(MappingError::Empty)?;
    let cols: Vec<String> = header.split(',').map(|c| field(c).to_lowercase()).collect();
    let idx = |name: &'static str| {
        cols.iter()
            .position(|c| c == name)
            .ok_or(MappingError::MissingColumn(name))
    };
    let (i_id, i_org, i_tenant) = (
        idx("organization_id")?,
        idx("organization_code")?,
        idx("tenant_code")?,
    );
    let mut map = Mapping::new();
    for (line, row) in lines {
        let bad = |problem: String| MappingError::Line { line, problem };
        let fields: Vec<&str> = row.split(',').map(field).collect();
        if fields.len() != cols.len() {
            return Err(bad(format!(
                "has {} fields, the header has {}",
                fields.len(),
                cols.len()
            )));
        }
        let id = fields[i_id];
        if id.is_empty() || id.len() > 100 {
            return Err(bad("organization_id is empty or too long".into()));
        }
        let org = Code::parse(fields[i_org]).map_err(|e| bad(format!("organization_code: {e}")))?;
        let tenant = Code::parse(fields[i_tenant]).map_err(|e| bad(format!("tenant_code: {e}")))?;
        let codes = OrgCodes {
            organization_code: org.as_str().to_owned(),
            tenant_code: tenant.as_str().to_owned(),
        };
        match map.get(id) {
            Some(prev) if *prev != codes => {
                return Err(bad(format!(
                    "organization_id {id} is mapped twice, to {}/{} and {}/{}",
                    prev.organization_code,
                    prev.tenant_code,
                    codes.organization_code,
                    codes.tenant_code
                )))
            }
            _ => {
                map.insert(id.to_owned(), codes);
            }
        }
    }
    if map.is_empty() {
        return Err(MappingError::NoRows);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_000_csv_parses() {
        let m = parse(
            "organization_id,organization_code,tenant_code\n1,default_org,default_tenant\n2,shikshalokam,shikshalokam_tenant\n",
        )
        .unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m["2"].tenant_code, "shikshalokam_tenant");
    }

    #[test]
    fn malformed_csv_is_refused_with_the_line() {
        for (text, needle) in [
            ("", "empty"),
            ("organization_id,tenant_code\n1,a", "organization_code"),
            (
                "organization_id,organization_code,tenant_code\n1,a",
                "line 2",
            ),
            (
                "organization_id,organization_code,tenant_code\n1,A B,x",
                "organization_code",
            ),
            (
                "organization_id,organization_code,tenant_code\n1,a,b\n1,a,c",
                "mapped twice",
            ),
            (
                "organization_id,organization_code,tenant_code\n",
                "no data rows",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
