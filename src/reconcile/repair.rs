//! Repairing differing rows on the target from the source, through the transforms, while the
//! stream keeps running — without ever setting a row back in time.
//!
//! ```text
//!  lock the pipeline's checkpoint row on the target   (the stream's next commit waits)
//!  temporary slot on the source: exported snapshot at C
//!  read the differing keys' rows at C, write them to the target through the transforms,
//!  record (key, C) ─► commit, releasing the stream
//!  the stream finds a new repairs version, resumes from its checkpoint, and skips, for those
//!  keys, every change of a transaction that committed before C (the repair already has it)
//! ```

use std::collections::HashSet;

use anyhow::{bail, Context};
use switchyard_core::{Change, Position, TableId, Value};
use switchyard_postgres::digest::{rows_by_keys, PgDigest};

use super::VerifyReport;
use crate::config::PipelineFile;
use crate::registry::{self, slot, PgSink};
use crate::transform::{self, Shaper};

/// Repairs every differing row the report names; returns how many rows were written.
pub async fn repair(file: &PipelineFile, report: &mut VerifyReport) -> anyhow::Result<u64> {
    let endpoints = registry::endpoints(file)?;
    let store = registry::checkpoint_store(file);
    let target = endpoints.target.connect().await?;
    if !store.exists(&target).await? || store.load(&target).await?.is_none() {
        bail!("pipeline {} has no checkpoint on the target: `switchyard run` it before repairing", file.pipeline.name);
    }
    let mut sink = PgSink::new(target, store.clone());
    sink.begin_locked().await?;
    let result = write_repairs(file, &endpoints, &mut sink, report).await;
    match result {
        Ok(repaired) => {
            sink.commit().await?;
            Ok(repaired)
        }
        Err(error) => {
            sink.rollback().await;
            Err(error)
        }
    }
}

async fn write_repairs(
    file: &PipelineFile,
    endpoints: &registry::Endpoints,
    sink: &mut PgSink,
    report: &mut VerifyReport,
) -> anyhow::Result<u64> {
    let exported = slot::create_slot(&endpoints.source, &format!("{}_repair", file.slot_name()), true).await?;
    let at = Position::Postgres(exported.lsn);
    let source = PgDigest::connect_at_snapshot(&endpoints.source, &exported.name).await?;
    let tables = crate::runtime::load_source_tables(source.client(), file).await?;
    let mut shaper = Shaper::new(transform::chain(file)?);
    let mut recorded: Vec<(TableId, Vec<Option<String>>)> = Vec::new();
    let mut written = 0;
    for table_report in report.tables.iter_mut().filter(|t| !t.differing_keys.is_empty()) {
        let table = tables
            .iter()
            .find(|t| t.id.to_string() == table_report.source_table)
            .context("a verified table is no longer configured")?;
        let plan = shaper.plan(table)?;
        let source_keys: Vec<Vec<Option<String>>> = table_report
            .differing_keys
            .iter()
            .map(|k| plan.source_key(k).iter().map(Value::to_text).collect())
            .collect();
        let columns: Vec<String> = table.columns.iter().map(|c| c.name.clone()).collect();
        let key_names: Vec<String> = table.key_names().iter().map(|n| n.to_string()).collect();
        let source_rows = source.rows_by_keys(&table.id, &columns, &key_names, &source_keys).await?;
        let target_keys: Vec<Vec<Option<String>>> =
            table_report.differing_keys.iter().map(|k| k.iter().map(Value::to_text).collect()).collect();
        let target_key_names: Vec<String> = plan.target.key_names().iter().map(|n| n.to_string()).collect();
        let on_target: HashSet<Vec<Value>> = rows_by_keys(sink.client(), &plan.target.id, &target_key_names, &target_key_names, &target_keys)
            .await?
            .into_iter()
            .collect();
        let mut deletes = Vec::new();
        let mut writes = Vec::new();
        let mut found = HashSet::new();
        for row in source_rows {
            let key: Vec<Value> = table.key.iter().map(|&i| row[i].clone()).collect();
            found.insert(key.clone());
            let target_key = plan.key(&key);
            let change = if on_target.contains(&target_key) {
                Change::Update { table: table.clone(), old_key: None, row }
            } else {
                Change::Insert { table: table.clone(), row }
            };
            // A row the filters keep out belongs nowhere on the target.
            match shaper.apply(change)? {
                Some(shaped) => writes.push(shaped),
                None => deletes.extend(shaper.apply(Change::Delete { table: table.clone(), key })?),
            }
        }
        for key in source_keys.iter().map(|k| k.iter().cloned().map(Value::from_text).collect::<Vec<_>>()) {
            if !found.contains(&key) && on_target.contains(&plan.key(&key)) {
                deletes.extend(shaper.apply(Change::Delete { table: table.clone(), key })?);
            }
        }
        let changes: Vec<Change> = deletes.into_iter().chain(writes).collect();
        written += changes.len() as u64;
        table_report.rows_repaired = changes.len() as u64;
        sink.apply_in_transaction(&changes).await?;
        recorded.extend(source_keys.into_iter().map(|k| (table.id.clone(), k)));
    }
    sink.store().clone().record_repairs(sink.client(), &recorded, &at).await?;
    tracing::info!(rows = written, position = %at, "repaired rows from the source");
    Ok(written)
}
