//! The last check before a switch, with writers fenced and the stream drained: row counts of
//! every table on both sides (through the transforms), and a checksum of every chunk touched
//! since continuous verification last looked at it.

use anyhow::Context;
use serde::Serialize;
use switchyard_postgres::digest::PgDigest;

use super::continuous::ChunkId;
use super::Checker;
use crate::config::PipelineFile;
use crate::registry;
use crate::transform::{self, Shaper};

#[derive(Clone, Debug, Default, Serialize)]
pub struct FinalCheck {
    /// Per table: source name, rows on the source (as shaped), rows on the target.
    pub counts: Vec<(String, i64, i64)>,
    pub chunks_checked: usize,
    /// What differs, one line each; empty when both sides agree.
    pub differences: Vec<String>,
}

impl FinalCheck {
    pub fn clean(&self) -> bool {
        self.differences.is_empty()
    }
}

pub async fn final_check(file: &PipelineFile, touched: &[ChunkId]) -> anyhow::Result<FinalCheck> {
    let endpoints = registry::endpoints(file)?;
    let (source, target) = tokio::try_join!(PgDigest::connect(&endpoints.source), PgDigest::connect(&endpoints.target))?;
    let chunk_rows = file.verify.continuous_chunk_rows;
    let checker = Checker { file, source: &source, target: &target, slot: file.slot_name(), chunk_rows };
    let mut shaper = Shaper::new(transform::chain(file)?);
    let mut report = FinalCheck::default();
    for table in crate::runtime::load_source_tables(source.client(), file).await? {
        let plan = shaper.plan(&table).with_context(|| format!("cannot plan {}", table.id))?;
        let sides = checker.sides(&plan).await?;
        let (source_rows, target_rows) = tokio::try_join!(source.count(&sides.source), target.count(&sides.target))?;
        report.counts.push((table.id.to_string(), source_rows, target_rows));
        if source_rows != target_rows {
            report.differences.push(format!("{}: {source_rows} rows on the source, {target_rows} on the target", plan.target.id));
        }
        for (_, lo) in touched.iter().filter(|(t, _)| *t == table.id) {
            let range = lo.map(|lo| (lo, lo.saturating_add(chunk_rows as i64)));
            let (source_rows, target_rows) = sides.chunk(range);
            let outcome = checker.chunk(&plan, &source_rows, &target_rows).await?;
            report.chunks_checked += 1;
            for difference in &outcome.differences {
                report.differences.push(format!("{} key {}: {}", plan.target.id, difference.key, difference.kind));
            }
            if outcome.unsettled {
                report.differences.push(format!("{} chunk at {lo:?}: the stream did not settle", plan.target.id));
            }
        }
    }
    Ok(report)
}
