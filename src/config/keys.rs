//! The keys a pipeline file may contain, so that every unknown key is reported at once, each with
//! the nearest known key as a suggestion.

use toml::Value;

use super::Problem;

const TOP: &[&str] = &["pipeline", "source", "target", "transform", "snapshot", "apply", "verify", "cutover"];
const PIPELINE: &[&str] = &["name"];
const SOURCE: &[&str] = &["type", "url", "tables", "slot", "publication"];
const TARGET: &[&str] = &["type", "url", "checkpoint_schema"];
const SNAPSHOT: &[&str] = &["parallel", "chunk_rows", "defer_indexes"];
const APPLY: &[&str] = &["max_batch_changes", "max_batch_mib", "as_replica", "parallel"];
const VERIFY: &[&str] =
    &["chunk_rows", "show_differences", "settle_seconds", "rules", "continuous", "continuous_chunk_rows", "rows_per_second", "full_pass_minutes", "digest", "parallel"];
const CUTOVER: &[&str] = &[
    "max_lag_seconds",
    "drain_timeout_seconds",
    "require_verified",
    "fence",
    "read_only_roles",
    "hook",
    "pgbouncer",
    "auto_switchback",
];
const PGBOUNCER: &[&str] = &["admin_url", "database", "config"];
const AUTO_SWITCHBACK: &[&str] = &[
    "enabled",
    "watch_minutes",
    "max_reverse_lag_seconds",
    "reverse_failures",
    "health_check",
    "health_failures",
    "health_interval_seconds",
    "drift_check_minutes",
];
const RULE: &[&str] = &["table", "name", "check"];

fn transform_keys(kind: Option<&str>) -> &'static [&'static str] {
    match kind {
        Some("attach_column") => &["type", "tables", "column", "value"],
        Some("rename_column") => &["type", "tables", "from", "to"],
        Some("drop_column") => &["type", "tables", "column"],
        Some("rename_table") => &["type", "table", "to"],
        Some("filter") => &["type", "tables", "column", "op", "value", "values"],
        _ => &["type"],
    }
}

pub const TRANSFORM_TYPES: &[&str] = &["attach_column", "rename_column", "drop_column", "rename_table", "filter"];

pub fn unknown_keys(document: &Value) -> Vec<Problem> {
    let mut problems = Vec::new();
    let Some(top) = document.as_table() else { return problems };
    check_table(top, TOP, "", &mut problems);
    for (section, known) in [("pipeline", PIPELINE), ("source", SOURCE), ("target", TARGET), ("snapshot", SNAPSHOT), ("apply", APPLY), ("verify", VERIFY), ("cutover", CUTOVER)] {
        if let Some(table) = top.get(section).and_then(Value::as_table) {
            check_table(table, known, section, &mut problems);
        }
    }
    for (section, known) in [("pgbouncer", PGBOUNCER), ("auto_switchback", AUTO_SWITCHBACK)] {
        if let Some(table) = top.get("cutover").and_then(|c| c.get(section)).and_then(Value::as_table) {
            check_table(table, known, &format!("cutover.{section}"), &mut problems);
        }
    }
    let rules = top.get("verify").and_then(|v| v.get("rules")).and_then(Value::as_array);
    for (index, rule) in rules.into_iter().flatten().enumerate() {
        if let Some(table) = rule.as_table() {
            check_table(table, RULE, &format!("verify.rules[{index}]"), &mut problems);
        }
    }
    if let Some(transforms) = top.get("transform").and_then(Value::as_array) {
        for (index, transform) in transforms.iter().enumerate() {
            let Some(table) = transform.as_table() else { continue };
            let path = format!("transform[{index}]");
            let kind = table.get("type").and_then(Value::as_str);
            match kind {
                Some(kind) if !TRANSFORM_TYPES.contains(&kind) => problems.push(Problem::new(
                    format!("{path}.type"),
                    format!("unknown transform type {kind:?}{}", suggestion(kind, TRANSFORM_TYPES)),
                )),
                None => problems.push(Problem::new(
                    format!("{path}.type"),
                    format!("missing; one of: {}", TRANSFORM_TYPES.join(", ")),
                )),
                Some(_) => check_table(table, transform_keys(kind), &path, &mut problems),
            }
        }
    }
    problems
}

fn check_table(table: &toml::Table, known: &[&str], path: &str, problems: &mut Vec<Problem>) {
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            let at = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
            problems.push(Problem::new(at, format!("unknown key{}", suggestion(key, known))));
        }
    }
}

/// `; did you mean "x"?` for the closest known word, if any is close.
pub fn suggestion(word: &str, known: &[&str]) -> String {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), *k))
        .filter(|(distance, k)| *distance <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!("; did you mean {k:?}?"))
        .unwrap_or_else(|| format!("; known keys: {}", known.join(", ")))
}
