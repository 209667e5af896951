use std::path::Path;
use std::process::ExitCode;

use serde::Serialize;

use crate::registry::{self, slot};

#[derive(Serialize, Default)]
pub struct Status {
    pipeline: String,
    source: String,
    target: String,
    phase: String,
    source_position: Option<String>,
    applied_position: Option<String>,
    lag_bytes: Option<i64>,
    lag_seconds: Option<f64>,
    slot: String,
    slot_active: Option<bool>,
    slot_retained_wal_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` (at risk) or `lost` (PostgreSQL 13 and later).
    slot_wal_status: Option<String>,
    /// WAL the source can still write before the slot is at risk (none: no limit).
    slot_safe_wal_bytes: Option<i64>,
    tables: Vec<TableCopy>,
    /// Target indexes the copy set aside and has not built again yet ("name of table").
    indexes_set_aside: Vec<String>,
    /// Target connections the stream applied over at its last start (`[apply] parallel`).
    apply_lanes: usize,
    /// Lanes that committed past the checkpoint ("lane N at LSN"): a stop between lane commits,
    /// which the next run settles.
    apply_lanes_ahead: Vec<String>,
    verification: Option<switchyard_postgres::checkpoint::VerificationRecord>,
    last_error: Option<String>,
    /// Where cutover stands: which side is live, what is in progress, how the last one ended.
    cutover: Option<CutoverStatus>,
}

#[derive(Serialize, Default)]
pub struct CutoverStatus {
    pub live: String,
    pub operation: Option<String>,
    pub phase: String,
    pub outcome: Option<String>,
    pub report: serde_json::Value,
}

#[derive(Serialize)]
pub struct TableCopy {
    table: String,
    chunks_done: usize,
    chunks: usize,
    rows_copied: i64,
}

pub async fn status(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let file = super::load(path)?;
    let mut status = gather(&file).await?;
    // After a cutover the pipeline that runs is the way back; show it too.
    if status.cutover.as_ref().is_some_and(|c| c.live == "shadow") {
        let mut back = gather(&crate::cutover::way_back(&file)).await?;
        back.cutover = None;
        if json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "forward": status, "reverse": back }))?);
            return Ok(ExitCode::SUCCESS);
        }
        print(&status)?;
        println!();
        print(&back)?;
        return Ok(ExitCode::SUCCESS);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(ExitCode::SUCCESS);
    }
    status.cutover.take_if(|c| c.operation.is_none());
    print(&status)
}

/// Where a pipeline stands, read from both databases.
pub async fn gather(file: &crate::config::PipelineFile) -> anyhow::Result<Status> {
    let file = file.clone();
    let endpoints = registry::endpoints(&file)?;
    let mut status = Status {
        pipeline: file.pipeline.name.clone(),
        source: endpoints.source.shown().to_string(),
        target: endpoints.target.shown().to_string(),
        slot: file.slot_name(),
        phase: "not started".into(),
        ..Default::default()
    };
    let source = endpoints.source.connect().await?;
    let target = endpoints.target.connect().await?;
    let current = slot::current_wal_lsn(&source).await?;
    status.source_position = Some(current.to_string());
    let slot_state = slot::slot_state(&source, &file.slot_name()).await?;
    if let Some(state) = &slot_state {
        status.slot_active = Some(state.active);
        status.slot_retained_wal_bytes = state.retained_bytes;
        status.slot_wal_status = state.wal_status.clone();
        status.slot_safe_wal_bytes = state.safe_wal_bytes;
    }
    let store = registry::checkpoint_store(&file);
    if store.exists(&target).await? {
        if let Some(record) = store.load(&target).await? {
            status.phase = record.phase.clone();
            status.last_error = record.last_error.clone();
            if let Some(switchyard_core::Position::Postgres(applied)) = &record.applied {
                status.applied_position = Some(applied.to_string());
                // Past what was applied, the slot may have confirmed WAL that held nothing for us.
                let confirmed = slot_state.as_ref().and_then(|s| s.confirmed_flush).unwrap_or(*applied).max(*applied);
                let lag = current.0.saturating_sub(confirmed.0) as i64;
                status.lag_bytes = Some(lag);
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros() as i64;
                status.lag_seconds = Some(match (lag, record.applied_commit_micros) {
                    (0, _) | (_, None) => 0.0,
                    (_, Some(at)) => (now - at).max(0) as f64 / 1e6,
                });
            }
            let chunks = store.chunks(&target).await?;
            let mut tables: Vec<TableCopy> = Vec::new();
            for chunk in &chunks {
                let name = chunk.table.to_string();
                if tables.last().is_none_or(|t| t.table != name) {
                    tables.push(TableCopy { table: name, chunks_done: 0, chunks: 0, rows_copied: 0 });
                }
                let entry = tables.last_mut().expect("just pushed");
                entry.chunks += 1;
                if chunk.copied_at.is_some() {
                    entry.chunks_done += 1;
                    entry.rows_copied += chunk.rows;
                }
            }
            status.tables = tables;
            // A checkpoint schema older than deferred indexes has none to show.
            let pending = registry::deferred_indexes::pending(&target, &store).await.unwrap_or_default();
            status.indexes_set_aside = pending.iter().map(|i| format!("{} of {}", i.name, i.table)).collect();
            status.verification = store.load_verification(&target).await.ok().flatten();
            // A checkpoint schema older than parallel apply has no lanes to show.
            if let Some(Ok(lanes)) = match &record.applied {
                Some(applied) => Some(store.lanes(&target, applied).await),
                None => None,
            } {
                status.apply_lanes = lanes.lanes;
                status.apply_lanes_ahead = lanes
                    .ahead
                    .iter()
                    .map(|(lane, switchyard_core::Position::Postgres(at))| format!("lane {lane} at {at}"))
                    .collect();
            }
        }
        if !file.reversed {
            let record = store.load_cutover(&target).await?;
            status.cutover = Some(CutoverStatus {
                live: record.live,
                operation: record.operation,
                phase: record.phase,
                outcome: record.outcome,
                report: serde_json::from_str(&record.report).unwrap_or_default(),
            });
        }
    }
    Ok(status)
}

fn print(status: &Status) -> anyhow::Result<ExitCode> {
    println!("pipeline   {}", status.pipeline);
    println!("source     {}", status.source);
    println!("target     {}", status.target);
    println!("phase      {}", status.phase);
    println!("position   source {}  applied {}", status.source_position.as_deref().unwrap_or("-"), status.applied_position.as_deref().unwrap_or("-"));
    if let (Some(bytes), Some(seconds)) = (status.lag_bytes, status.lag_seconds) {
        println!("lag        {bytes} bytes, {seconds:.1} s");
    }
    match (status.slot_active, status.slot_retained_wal_bytes) {
        (Some(active), retained) => println!(
            "slot       {} ({}), retains {} bytes of WAL",
            status.slot,
            if active { "active" } else { "inactive" },
            retained.unwrap_or(0)
        ),
        (None, _) => println!("slot       {} (does not exist)", status.slot),
    }
    match status.slot_wal_status.as_deref() {
        Some("unreserved") => println!(
            "           at risk: the slot is past the source's max_slot_wal_keep_size, and its next checkpoint may remove WAL \
             this pipeline still needs (keep the pipeline running, or raise max_slot_wal_keep_size)"
        ),
        Some("lost") => println!("           {}", slot::unusable_slot(&status.slot, slot::INVALIDATED)),
        _ => {
            if let Some(bytes) = status.slot_safe_wal_bytes {
                println!("           {bytes} bytes of WAL to go before max_slot_wal_keep_size puts it at risk");
            }
        }
    }
    for table in &status.tables {
        println!("copy       {:<30} {}/{} chunks, {} rows", table.table, table.chunks_done, table.chunks, table.rows_copied);
    }
    if !status.indexes_set_aside.is_empty() {
        println!("indexes    set aside for the copy, built before the stream starts: {}", status.indexes_set_aside.join(", "));
    }
    if status.apply_lanes > 1 {
        let ahead = match status.apply_lanes_ahead.is_empty() {
            true => String::new(),
            false => format!("; ahead of the checkpoint after a stop, settled by the next run: {}", status.apply_lanes_ahead.join(", ")),
        };
        println!("apply      {} parallel lanes{ahead}", status.apply_lanes);
    }
    match &status.verification {
        Some(v) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_micros() as i64;
            let oldest = v
                .oldest_unverified_micros
                .map(|t| format!("{:.1} s", (now - t).max(0) as f64 / 1e6))
                .unwrap_or_else(|| "none".into());
            println!(
                "verified   {}/{} chunks, {} rows differ, oldest unverified change {oldest}, {} full passes (updated {:.0} s ago)",
                v.chunks_verified,
                v.chunks,
                v.rows_differing,
                v.full_passes,
                v.age_micros as f64 / 1e6
            );
        }
        None if status.phase == "streaming" => println!("verified   first pass in progress"),
        None => {}
    }
    if let Some(error) = &status.last_error {
        println!("last error {error}");
    }
    if let Some(cutover) = &status.cutover {
        let doing = if cutover.phase == "idle" { String::new() } else { format!(", {} at {}", cutover.operation.as_deref().unwrap_or("?"), cutover.phase) };
        let last = cutover.outcome.as_ref().map(|o| format!(", last {}: {o}", cutover.operation.as_deref().unwrap_or("?"))).unwrap_or_default();
        println!("cutover    the {} database is live{doing}{last}", cutover.live);
    }
    Ok(ExitCode::SUCCESS)
}
