//! Running a pipeline: snapshot, then follow the stream, exactly once.
//!
//! ```text
//!  first run:  publication + slot (exported snapshot S) ─► copy chunks at S ─► stream from S
//!  resumed:    copy chunks not yet done at a fresh snapshot T ─► stream from the checkpoint,
//!              skipping, for rows of chunks copied at T, the transactions that T already holds
//!  streaming:  source.next_batch ─► seam filter ─► transforms ─► sink.ready ─► sink.write
//!              (rows + checkpoint, one target transaction) ─► acknowledge: applied at once,
//!              durable once the target's WAL flush passes the commit (the slot confirms that)
//! ```
//!
//! Batch N+1 is readied (filtered, transformed, planned, encoded) while the target applies
//! batch N, but sent only after N's COMMIT succeeded: target transactions stay one at a time,
//! in commit order.
//!
//! A crash anywhere replays from the checkpoint: a chunk's rows commit with its "done" record,
//! a batch's rows commit with the position after it, and the slot is confirmed only after that
//! commit is on the target's disk (a crash of the target takes back both the rows and the
//! checkpoint, never what the slot let go of). So replay never has an effect twice and nothing
//! is skipped.
//!
//! With `[apply] parallel = N`, a batch's rows are spread over N target transactions (lanes),
//! each committing its rows with its own position; the checkpoint commits last. Per-key order
//! and exactly-once hold; a reader can see part of a source transaction between the lanes'
//! commits (see `switchyard_postgres::lanes`).

mod progress;
mod seam;
mod snapshot;
mod stream;

pub use snapshot::{plan_chunks, rebuild_deferred_indexes};

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{bail, Context};
use switchyard_core::{Position, TableId, TableSchema, Value};
use tokio::sync::watch;

use crate::config::PipelineFile;
use crate::reconcile::continuous::Touched;
use crate::registry::{self, pg_catalog, CheckpointStore, Endpoints, PipelineRecord, TableInfo};
use crate::transform::{self, Shaper};

/// Set to `true` to ask the pipeline to stop after the batch or chunk in hand.
pub type Shutdown = watch::Receiver<bool>;

pub const PHASE_SNAPSHOT: &str = "snapshot";
pub const PHASE_STREAMING: &str = "streaming";

/// What every stage of a running pipeline needs to know.
pub(crate) struct Pipeline<'a> {
    pub file: &'a PipelineFile,
    pub endpoints: Endpoints,
    pub store: CheckpointStore,
    /// The source tables as the catalog describes them, in configured order.
    pub tables: Vec<Arc<TableSchema>>,
    pub shutdown: Shutdown,
    /// Chunks touched by applied changes, for continuous verification and the cutover's final
    /// check; `None` when continuous verification is off.
    pub touched: Option<Touched>,
}

pub async fn run(file: &PipelineFile, shutdown: Shutdown, touched: Option<Touched>) -> anyhow::Result<()> {
    let endpoints = registry::endpoints(file)?;
    let (source, target) = tokio::join!(endpoints.source.connect(), endpoints.target.connect());
    let (source, mut target) = (source?, target?);
    let store = registry::checkpoint_store(file);
    store.ensure(&target).await?;
    let infos = source_tables(&source, file).await?;
    // The catalog's row estimates, for a first copy's chunks and progress.
    let estimates: HashMap<TableId, i64> = infos.iter().map(|info| (info.schema.id.clone(), info.estimated_rows)).collect();
    let tables: Vec<_> = infos.into_iter().map(|info| Arc::new(info.schema)).collect();
    let mut shaper = Shaper::new(transform::chain(file)?);
    for table in &tables {
        shaper.plan(table).with_context(|| format!("cannot plan table {}", table.id))?;
    }
    let pipeline = Pipeline { file, endpoints, store, tables, shutdown, touched };
    let store = &pipeline.store;
    let record = match store.load(&target).await? {
        // The way back starts where a cutover armed it; copying into the old database would be wrong.
        None if file.reversed => bail!(
            "the reverse pipeline {} has no checkpoint on the old database: it is armed by `switchyard cutover`",
            file.pipeline.name
        ),
        None => snapshot::initial(&pipeline, &source, &mut target, &mut shaper, &estimates).await?,
        Some(record) if record.phase == PHASE_SNAPSHOT => snapshot::resume(&pipeline, &source, &target, &mut shaper, record).await?,
        Some(record) => record,
    };
    let chunks = store.chunks(&target).await?;
    if chunks.iter().any(|c| c.copied_at.is_none()) {
        tracing::info!("stopped during the snapshot; `switchyard run` resumes it");
        return Ok(());
    }
    // Before the stream: applied changes find rows by their keys.
    rebuild_deferred_indexes(&pipeline.endpoints.target, &target, store, file.snapshot.parallel).await?;
    if record.phase != PHASE_STREAMING {
        store.set_phase(&target, PHASE_STREAMING).await?;
    }
    let start = record.applied.clone().or(record.snapshot_position.clone()).context("the checkpoint has no position")?;
    let mut seam = seam::Seam::new(&chunks, &start);
    // Repairs first, then their version: a repair recorded in between only causes a retry.
    for (table, key, at) in store.pending_repairs(&target).await? {
        seam.add_repair(table, key.into_iter().map(Value::from_text).collect(), at);
    }
    let repairs_version = store.repairs_version(&target).await?;
    stream::follow(&pipeline, source, target, shaper, seam, start, repairs_version).await
}

/// Reads the configured tables from the source catalog; every missing table or key is an error.
pub async fn load_source_tables(
    source: &tokio_postgres::Client,
    file: &PipelineFile,
) -> anyhow::Result<Vec<Arc<TableSchema>>> {
    Ok(source_tables(source, file).await?.into_iter().map(|info| Arc::new(info.schema)).collect())
}

async fn source_tables(source: &tokio_postgres::Client, file: &PipelineFile) -> anyhow::Result<Vec<TableInfo>> {
    let mut tables = Vec::new();
    for name in &file.source.tables {
        let id = TableId::parse(name, "public").context("validated table name")?;
        tables.push(source_table(source, &id).await?);
    }
    Ok(tables)
}

async fn source_table(source: &tokio_postgres::Client, id: &TableId) -> anyhow::Result<TableInfo> {
    let Some(info) = pg_catalog::load_table(source, id).await? else {
        bail!("source table {id} does not exist; check source.tables");
    };
    if !info.has_usable_identity() {
        bail!("source table {id} has no primary key (or replica identity index): add one, e.g. ALTER TABLE {id} ADD PRIMARY KEY (id)");
    }
    Ok(info)
}

pub(crate) fn stopping(shutdown: &Shutdown) -> bool {
    *shutdown.borrow()
}

pub(crate) fn record_for(file: &PipelineFile, at: &Position) -> PipelineRecord {
    PipelineRecord {
        phase: PHASE_SNAPSHOT.to_string(),
        slot: file.slot_name(),
        publication: file.publication_name(),
        snapshot_position: Some(at.clone()),
        applied: Some(at.clone()),
        applied_commit_micros: None,
        last_error: None,
    }
}
