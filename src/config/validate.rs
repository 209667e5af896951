//! Checks a parsed pipeline file needs no server for: names, references, ranges.

use std::collections::HashSet;

use switchyard_core::TableId;

use super::{CutoverSection, FenceMethod, FilterOp, PipelineFile, Problem, TransformSection};

pub fn validate(file: &PipelineFile) -> Vec<Problem> {
    let mut problems = Vec::new();
    let name = &file.pipeline.name;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name.len() > 40 {
        problems.push(Problem::new(
            "pipeline.name",
            format!("{name:?} must be 1-40 letters, digits or underscores (it names the slot and publication)"),
        ));
    }
    for (path, kind) in [("source.type", &file.source.kind), ("target.type", &file.target.kind)] {
        if kind != "postgres" {
            problems.push(Problem::new(path, format!("{kind:?} is not a supported database; supported: \"postgres\"")));
        }
    }
    if file.source.tables.is_empty() {
        problems.push(Problem::new("source.tables", "lists no table; name the tables to carry, e.g. [\"public.users\"]"));
    }
    let mut seen = HashSet::new();
    for (index, table) in file.source.tables.iter().enumerate() {
        match TableId::parse(table, "public") {
            None => problems.push(Problem::new(format!("source.tables[{index}]"), format!("{table:?} is not a table name"))),
            Some(id) if !seen.insert(id.clone()) => {
                problems.push(Problem::new(format!("source.tables[{index}]"), format!("{id} is listed twice")))
            }
            _ => {}
        }
    }
    for (path, value) in [("source.slot", &file.source.slot), ("source.publication", &file.source.publication)] {
        if let Some(value) = value {
            if value.is_empty() || value.len() > 63 || !value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
                problems.push(Problem::new(path, format!("{value:?} must be 1-63 lowercase letters, digits or underscores")));
            }
        }
    }
    if file.snapshot.parallel == 0 || file.snapshot.parallel > 64 {
        problems.push(Problem::new("snapshot.parallel", "must be between 1 and 64"));
    }
    if file.snapshot.chunk_rows < 1000 {
        problems.push(Problem::new("snapshot.chunk_rows", "must be at least 1000"));
    }
    if file.verify.parallel == 0 || file.verify.parallel > 64 {
        problems.push(Problem::new("verify.parallel", "must be between 1 and 64"));
    }
    if file.verify.chunk_rows < 100 {
        problems.push(Problem::new("verify.chunk_rows", "must be at least 100"));
    }
    if file.verify.continuous_chunk_rows < 100 {
        problems.push(Problem::new("verify.continuous_chunk_rows", "must be at least 100"));
    }
    for (index, rule) in file.verify.rules.iter().enumerate() {
        if TableId::parse(&rule.table, "public").is_none() {
            problems.push(Problem::new(format!("verify.rules[{index}].table"), format!("{:?} is not a table name", rule.table)));
        }
        if rule.check.trim().is_empty() {
            problems.push(Problem::new(format!("verify.rules[{index}].check"), "is empty; write an SQL predicate, e.g. \"amount >= 0\""));
        }
    }
    if file.apply.max_batch_changes == 0 {
        problems.push(Problem::new("apply.max_batch_changes", "must be at least 1"));
    }
    if file.apply.max_batch_mib == 0 {
        problems.push(Problem::new("apply.max_batch_mib", "must be at least 1"));
    }
    if !(1..=MAX_APPLY_LANES).contains(&file.apply.parallel) {
        problems.push(Problem::new("apply.parallel", format!("must be between 1 and {MAX_APPLY_LANES} target connections")));
    } else if file.apply.parallel > 1 && !file.apply.as_replica {
        problems.push(Problem::new(
            "apply.parallel",
            "needs apply.as_replica = true: lanes commit apart, so a foreign key checked between them would fail; set as_replica = true or parallel = 1",
        ));
    }
    validate_cutover(&file.cutover, &mut problems);
    for (index, transform) in file.transforms.iter().enumerate() {
        validate_transform(&format!("transform[{index}]"), transform, &mut problems);
    }
    problems
}

/// More target connections than this only queue on the target's locks and cores.
const MAX_APPLY_LANES: usize = 16;

fn validate_cutover(cutover: &CutoverSection, problems: &mut Vec<Problem>) {
    for (path, seconds) in [("cutover.max_lag_seconds", cutover.max_lag_seconds), ("cutover.drain_timeout_seconds", cutover.drain_timeout_seconds)] {
        if !(seconds > 0.0 && seconds <= 3600.0) {
            problems.push(Problem::new(path, "must be between 0 and 3600 seconds"));
        }
    }
    let bouncer = &cutover.pgbouncer;
    let given = [("admin_url", &bouncer.admin_url), ("database", &bouncer.database), ("config", &bouncer.config)];
    if given.iter().any(|(_, v)| !v.is_empty()) {
        for (key, value) in given {
            if value.is_empty() {
                problems.push(Problem::new(
                    format!("cutover.pgbouncer.{key}"),
                    "is empty, but other cutover.pgbouncer keys are set: give admin_url, database and config together (or none)",
                ));
            }
        }
    }
    let methods = cutover.fence_methods();
    if methods.contains(&FenceMethod::Pgbouncer) && !bouncer.is_set() {
        problems.push(Problem::new("cutover.fence", "names \"pgbouncer\" but [cutover.pgbouncer] admin_url is not set"));
    }
    if methods.contains(&FenceMethod::Hook) && cutover.hook.is_empty() {
        problems.push(Problem::new("cutover.fence", "names \"hook\" but cutover.hook is not set"));
    }
    let auto = &cutover.auto_switchback;
    if auto.enabled && auto.health_failures == 0 {
        problems.push(Problem::new("cutover.auto_switchback.health_failures", "must be at least 1"));
    }
}

fn validate_transform(path: &str, transform: &TransformSection, problems: &mut Vec<Problem>) {
    let tables = match transform {
        TransformSection::AttachColumn { tables, .. }
        | TransformSection::RenameColumn { tables, .. }
        | TransformSection::DropColumn { tables, .. }
        | TransformSection::Filter { tables, .. } => tables.clone(),
        TransformSection::RenameTable { table, to } => {
            if TableId::parse(to, "public").is_none() {
                problems.push(Problem::new(format!("{path}.to"), format!("{to:?} is not a table name")));
            }
            vec![table.clone()]
        }
    };
    for (index, table) in tables.iter().enumerate() {
        if TableId::parse(table, "public").is_none() {
            problems.push(Problem::new(format!("{path}.tables[{index}]"), format!("{table:?} is not a table name")));
        }
    }
    if let TransformSection::Filter { op, value, values, .. } = transform {
        let needs_value = matches!(op, FilterOp::Eq | FilterOp::Ne);
        let needs_values = matches!(op, FilterOp::In | FilterOp::NotIn);
        if needs_value && value.is_none() {
            problems.push(Problem::new(format!("{path}.value"), "is required for op eq / ne"));
        }
        if needs_values && values.is_empty() {
            problems.push(Problem::new(format!("{path}.values"), "is required (a list) for op in / not_in"));
        }
    }
}
