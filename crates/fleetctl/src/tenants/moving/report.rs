//! What a move prints: one line per step and progress line for the initial copy, or with
//! `--json` one JSON object per line (`{"step": …, "message": …, …}`), the last one the move's
//! record.

use serde_json::{json, Value};

use crate::output;

#[derive(Clone, Copy)]
pub struct Report {
    pub json: bool,
}

impl Report {
    /// A step or progress line: `message` for people, `fields` (an object) added for `--json`.
    pub fn line(&self, step: &str, message: &str, fields: Value) -> anyhow::Result<()> {
        if !self.json {
            return output::write(format_args!("{message}"), true);
        }
        let mut obj = json!({ "step": step, "message": message });
        if let (Some(o), Value::Object(extra)) = (obj.as_object_mut(), fields) {
            o.extend(extra);
        }
        output::print_json_line(&obj)
    }
}

/// `1.2 MiB`, for lag and sizes.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n.max(0) as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
