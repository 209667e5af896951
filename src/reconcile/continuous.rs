//! Continuous verification inside `switchyard run`.
//!
//! The apply loop marks the chunk of every row it writes as touched (with the commit time of
//! the change). This task first verifies every chunk once, then re-verifies touched chunks as
//! they come, and every `full_pass_minutes` all of them again — reading at most
//! `rows_per_second` from each side. Each chunk goes through the same settle-and-confirm check as
//! `switchyard verify`, so rows in flight are never reported. Where it stands is saved on the
//! target for `status` (and, later, the cutover gate). A failure here is logged and retried; it
//! never stops the pipeline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard_core::{Change, TableId, Value};
use switchyard_postgres::checkpoint::VerificationRecord;
use switchyard_postgres::digest::PgDigest;

use super::{rowsets::Sides, Checker};
use crate::config::PipelineFile;
use crate::registry;
use crate::runtime::Shutdown;
use crate::transform::{self, Shaper, TablePlan};

/// A chunk: a source table and the low end of its key range (`None`: the whole table).
pub type ChunkId = (TableId, Option<i64>);

/// Per table, per chunk low end: the commit time of the oldest change not yet verified there.
type TouchedChunks = HashMap<TableId, HashMap<Option<i64>, i64>>;

/// Chunks touched by applied changes, with the commit time of the oldest change not yet verified.
#[derive(Clone, Default)]
pub struct Touched {
    chunks: Arc<Mutex<TouchedChunks>>,
    chunk_rows: i64,
}

impl Touched {
    pub fn new(chunk_rows: u64) -> Self {
        Touched { chunks: Default::default(), chunk_rows: chunk_rows as i64 }
    }

    /// Marks the chunks of source changes (before transforms) as touched at `commit_micros`.
    pub fn mark(&self, changes: &[Change], commit_micros: i64) {
        let mut chunks = self.chunks.lock().expect("touched lock");
        for change in changes {
            self.mark_one(&mut chunks, change, commit_micros);
        }
    }

    fn mark_one(&self, chunks: &mut TouchedChunks, change: &Change, commit_micros: i64) {
        let mut mark = |table: &TableId, first_key: Option<&Value>| {
            // A key that is not an integer (a table copied and checked whole) is chunk `None`.
            let lo = first_key.and_then(Value::as_str).and_then(|k| k.parse::<i64>().ok()).map(|k| k.div_euclid(self.chunk_rows) * self.chunk_rows);
            if let Some(table_chunks) = chunks.get_mut(table) {
                table_chunks.entry(lo).or_insert(commit_micros);
            } else {
                chunks.insert(table.clone(), HashMap::from([(lo, commit_micros)]));
            }
        };
        match change {
            Change::Insert { table, row } | Change::Update { table, row, old_key: None } => mark(&table.id, table.key.first().map(|&k| &row[k])),
            Change::Update { table, row, old_key: Some(old) } => {
                mark(&table.id, table.key.first().map(|&k| &row[k]));
                mark(&table.id, old.first());
            }
            Change::Delete { table, key } => mark(&table.id, key.first()),
            Change::Truncate { tables, .. } => {
                for table in tables {
                    mark(&table.id, None);
                }
            }
            Change::Schema { .. } => {}
        }
    }

    /// The chunks touched and not yet verified, left in place.
    pub fn pending(&self) -> Vec<ChunkId> {
        let chunks = self.chunks.lock().expect("touched lock");
        chunks.iter().flat_map(|(table, los)| los.keys().map(move |lo| (table.clone(), *lo))).collect()
    }

    fn take(&self) -> Vec<ChunkId> {
        let chunks = std::mem::take(&mut *self.chunks.lock().expect("touched lock"));
        chunks.into_iter().flat_map(|(table, los)| los.into_keys().map(move |lo| (table.clone(), lo))).collect()
    }

    fn oldest(&self) -> Option<i64> {
        self.chunks.lock().expect("touched lock").values().flat_map(|los| los.values()).min().copied()
    }
}

/// Runs until shutdown; errors are logged and the work starts over a little later.
pub async fn run(file: PipelineFile, touched: Touched, mut shutdown: Shutdown) {
    loop {
        let result = tokio::select! {
            result = verify_forever(&file, &touched) => result,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        if let Err(error) = result {
            tracing::warn!(error = %format!("{error:#}"), "continuous verification failed; retrying in 10 s");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

struct TableState {
    plan: Arc<TablePlan>,
    sides: Sides,
    /// Chunk low end -> rows differing there at the last check.
    chunks: HashMap<Option<i64>, u64>,
}

async fn verify_forever(file: &PipelineFile, touched: &Touched) -> anyhow::Result<()> {
    let endpoints = registry::endpoints(file)?;
    let store = registry::checkpoint_store(file);
    let source = PgDigest::connect(&endpoints.source).await?;
    let target = PgDigest::connect(&endpoints.target).await?;
    let chunk_rows = file.verify.continuous_chunk_rows;
    let checker = Checker { file, source: &source, target: &target, slot: file.slot_name(), chunk_rows };
    let mut shaper = Shaper::new(transform::chain(file)?);
    let mut tables = HashMap::new();
    for table in crate::runtime::load_source_tables(source.client(), file).await? {
        let plan = shaper.plan(&table)?;
        let sides = checker.sides(&plan).await?;
        tables.insert(table.id.clone(), TableState { plan, sides, chunks: HashMap::new() });
    }
    let mut pace = Pace::new(file.verify.rows_per_second);
    let mut full_passes = 0;
    let mut last_full_pass: Option<Instant> = None;
    let (mut full_pass_seconds, mut incremental_seconds, mut incremental_chunks) = (0.0, 0.0, 0);
    let (mut full_pass_rows, mut incremental_rows) = (0i64, 0i64);
    loop {
        let started = Instant::now();
        let mut rows_read = 0i64;
        let full_pass_due = last_full_pass.is_none_or(|t| t.elapsed() >= Duration::from_secs(file.verify.full_pass_minutes * 60));
        let work: Vec<ChunkId> = if full_pass_due {
            // Changes during the pass are picked up by the touched set afterwards.
            touched.take();
            let mut all = Vec::new();
            for (id, state) in &tables {
                for range in checker.chunks(&state.sides).await? {
                    all.push((id.clone(), range.map(|r| r.0)));
                }
            }
            all
        } else {
            touched.take().into_iter().filter(|(table, lo)| lo.is_some() || !has_integer_chunks(&tables, table)).collect()
        };
        let width = chunk_rows as i64;
        for (table, lo) in &work {
            let Some(state) = tables.get_mut(table) else { continue };
            let range = lo.map(|lo| (lo, lo.saturating_add(width)));
            let (source_rows, target_rows) = state.sides.chunk(range);
            let outcome = checker.chunk(&state.plan, &source_rows, &target_rows).await?;
            pace.spent(outcome.source_rows.max(outcome.target_rows)).await;
            rows_read += (outcome.source_rows + outcome.target_rows) as i64;
            for difference in outcome.differences.iter().take(3) {
                tracing::warn!(table = %state.plan.target.id, key = %difference.key, kind = difference.kind, columns = ?difference.columns, "verification found a difference");
            }
            state.chunks.insert(*lo, outcome.differences.len() as u64);
        }
        if full_pass_due {
            full_passes += 1;
            last_full_pass = Some(Instant::now());
            full_pass_seconds = started.elapsed().as_secs_f64();
            full_pass_rows = rows_read;
            tracing::info!(chunks = work.len(), passes = full_passes, seconds = full_pass_seconds, "verified every chunk");
        } else if !work.is_empty() {
            incremental_seconds += started.elapsed().as_secs_f64();
            incremental_chunks += work.len() as i64;
            incremental_rows += rows_read;
        }
        let record = VerificationRecord {
            chunks: tables.values().map(|t| t.chunks.len() as i64).sum(),
            chunks_verified: tables.values().map(|t| t.chunks.len() as i64).sum(),
            rows_differing: tables.values().flat_map(|t| t.chunks.values()).sum::<u64>() as i64,
            oldest_unverified_micros: touched.oldest(),
            full_passes,
            age_micros: 0,
            full_pass_seconds,
            incremental_seconds,
            incremental_chunks,
            full_pass_rows,
            incremental_rows,
        };
        store.save_verification(target.client(), &record).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn has_integer_chunks(tables: &HashMap<TableId, TableState>, table: &TableId) -> bool {
    tables.get(table).is_some_and(|t| t.sides.range_columns().is_some())
}

/// Keeps reads under a rows-per-second budget.
struct Pace {
    rows_per_second: u64,
    started: Instant,
    rows: u64,
}

impl Pace {
    fn new(rows_per_second: u64) -> Self {
        Pace { rows_per_second: rows_per_second.max(1), started: Instant::now(), rows: 0 }
    }

    async fn spent(&mut self, rows: u64) {
        self.rows += rows;
        let due = Duration::from_secs_f64(self.rows as f64 / self.rows_per_second as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        if self.started.elapsed() > Duration::from_secs(60) {
            *self = Pace::new(self.rows_per_second);
        }
    }
}
