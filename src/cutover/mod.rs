//! Cutover and switch-back: moving the application's writes between the old database and the
//! shadow, fenced, drained, verified and reversible.
//!
//! `phase` decides (a pure function); `controller` acts, inside `switchyard run`, which owns
//! both pipelines: the forward one (old -> shadow) while the old database is live, the way
//! back (shadow -> old, every transform inverted) while the shadow is. Operators and the HTTP
//! API only record a request on the shadow (`request`), which the controller takes up.

mod controller;
mod hook;
pub mod phase;
mod request;
mod steps;

pub use controller::{Controller, ReverseHealth};
pub use phase::{Operation, Phase};
pub use request::{print_plan, request_and_follow, runner_present, RUNNER_LOCK};

use switchyard_core::TableId;

use crate::config::{PipelineFile, TransformSection};

/// The two databases of a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Old,
    Shadow,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Old => "old",
            Side::Shadow => "shadow",
        }
    }

    pub fn parse(name: &str) -> Side {
        if name == "shadow" {
            Side::Shadow
        } else {
            Side::Old
        }
    }

    pub fn other(self) -> Side {
        match self {
            Side::Old => Side::Shadow,
            Side::Shadow => Side::Old,
        }
    }
}

/// The pipeline that carries changes back from the shadow to the old database: source and
/// target swapped, the shadow's (routed) tables, every transform inverted. It keeps its
/// checkpoint on the old database and never copies a snapshot: a cutover arms it.
pub fn way_back(file: &PipelineFile) -> PipelineFile {
    let mut back = file.clone();
    back.reversed = true;
    back.pipeline.name = format!("{}_reverse", file.pipeline.name);
    back.source.url = file.target.url.clone();
    back.target.url = file.source.url.clone();
    back.source.slot = None;
    back.source.publication = None;
    back.source.tables = file.source.tables.iter().map(|name| routed_name(file, name)).collect();
    // Continuous verification compares old -> shadow; it runs with the forward pipeline only.
    back.verify.continuous = false;
    back
}

/// A source table's name on the target: only rename_table transforms change it.
fn routed_name(file: &PipelineFile, name: &str) -> String {
    let Some(mut id) = TableId::parse(name, "public") else { return name.to_string() };
    for transform in &file.transforms {
        if let TransformSection::RenameTable { table, to } = transform {
            if TableId::parse(table, "public").as_ref() == Some(&id) {
                id = TableId::parse(to, "public").unwrap_or(id);
            }
        }
    }
    id.to_string()
}
