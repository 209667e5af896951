//! Proving the target equals the source as transformed: chunk by chunk over key ranges, digests
//! first, rows only where digests differ.
//!
//! ```text
//!  plan chunks (key ranges over both sides) ─► digest source ║ digest target (concurrently)
//!      equal ─► clean
//!      differ ─► wait until the slot confirmed the source read's position ─► digest again
//!          equal ─► clean (the difference was in flight)
//!          differ ─► twice: read the source's rows, wait until the slot confirmed that read,
//!                    read the target's; report only differences seen both times with the
//!                    same values on each side
//! ```
//!
//! A chunk read while its rows change is therefore not a difference: the target is compared
//! only once it holds at least everything the source read saw, and a row still changing between
//! rounds does not repeat identically.

pub mod continuous;
mod final_check;
mod integrity;
mod repair;
mod report;
mod rowsets;

pub use final_check::{final_check, FinalCheck};
pub use repair::repair;

pub use report::{print_report, Difference, TableReport, VerifyReport};

use std::time::{Duration, Instant};

use anyhow::Context;
use switchyard_core::{Lsn, TableSchema, Value};
use switchyard_postgres::digest::{ColumnHash, PgDigest, RowSet};

use crate::config::{DigestMethod, PipelineFile};
use crate::registry::{self, slot};
use crate::transform::{self, Shaper, TablePlan};

/// Options of one verification pass.
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Only tables whose source or target name matches.
    pub tables: Vec<String>,
    pub show_progress: bool,
}

/// One pass over every table of a pipeline, `verify.parallel` tables at a time (each on its own
/// pair of digest sessions: one session runs one statement at a time).
pub async fn verify(file: &PipelineFile, options: &VerifyOptions) -> anyhow::Result<VerifyReport> {
    let endpoints = registry::endpoints(file)?;
    let source = PgDigest::connect(&endpoints.source).await?;
    let target = PgDigest::connect(&endpoints.target).await?;
    let tables = crate::runtime::load_source_tables(source.client(), file).await?;
    let mut shaper = Shaper::new(transform::chain(file)?);
    let mut plans = Vec::new();
    for table in &tables {
        let plan = shaper.plan(table).with_context(|| format!("cannot plan {}", table.id))?;
        let wanted = options.tables.is_empty()
            || options.tables.iter().any(|t| *t == table.id.to_string() || *t == plan.target.id.to_string() || *t == table.id.name);
        if wanted {
            plans.push(plan);
        }
    }
    let started = Instant::now();
    let bars = report::progress_bars(options.show_progress);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut sessions = vec![(source, target)];
    while sessions.len() < file.verify.parallel.clamp(1, plans.len().max(1)) {
        sessions.push(tokio::try_join!(PgDigest::connect(&endpoints.source), PgDigest::connect(&endpoints.target))?);
    }
    let checked = futures_util::future::try_join_all(sessions.iter().map(|(source, target)| {
        let (plans, bars, next) = (&plans, &bars, &next);
        async move {
            let checker = Checker { file, source, target, slot: file.slot_name(), chunk_rows: file.verify.chunk_rows };
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(plan) = plans.get(index) else { return anyhow::Ok(done) };
                done.push((index, checker.table(plan, bars).await?));
            }
        }
    }))
    .await?;
    let mut reports: Vec<(usize, TableReport)> = checked.into_iter().flatten().collect();
    reports.sort_by_key(|(index, _)| *index);
    let checksum_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let plans: Vec<&TablePlan> = plans.iter().map(|p| p.as_ref()).collect();
    let integrity = integrity::check(file, sessions[0].1.client(), &plans).await?;
    Ok(VerifyReport {
        tables: reports.into_iter().map(|(_, table)| table).collect(),
        integrity,
        checksum_seconds,
        integrity_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Chunks a one-shot pass digests in one statement first: enough that a sequential scan pays
/// off over an index scan per chunk, few enough that progress moves.
const SPAN_CHUNKS: usize = 20;

pub(crate) struct Checker<'a> {
    pub file: &'a PipelineFile,
    pub source: &'a PgDigest,
    pub target: &'a PgDigest,
    pub slot: String,
    /// Rows per chunk (key-grid width).
    pub chunk_rows: u64,
}

impl Checker<'_> {
    /// Both sides of a table, ready to be cut into chunks.
    pub(crate) async fn sides(&self, plan: &TablePlan) -> anyhow::Result<rowsets::Sides> {
        let target_table = crate::registry::pg_catalog::load_table(self.target.client(), &plan.target.id)
            .await?
            .with_context(|| format!("target table {} does not exist", plan.target.id))?;
        let sides = rowsets::Sides::new(plan).with_target_types(&target_table.schema);
        if self.file.verify.digest == DigestMethod::Canonical {
            return Ok(sides);
        }
        let Some(types) = rowsets::Sides::native_hash_types(plan, &target_table.schema) else { return Ok(sides) };
        let (source_version, target_version) = tokio::join!(self.source.major_version(), self.target.major_version());
        if source_version? != target_version? {
            return Ok(sides);
        }
        let oids: Vec<u32> = types.iter().flatten().copied().collect();
        let mut found = self.source.column_hashes(&oids).await?.into_iter();
        let hashes = types
            .iter()
            .map(|oid| match oid {
                None => ColumnHash::Skip,
                Some(_) => found.next().unwrap_or(ColumnHash::Text),
            })
            .collect();
        Ok(sides.with_native_hash(hashes))
    }

    async fn table(&self, plan: &TablePlan, bars: &indicatif::MultiProgress) -> anyhow::Result<TableReport> {
        let started = Instant::now();
        let sides = self.sides(plan).await?;
        let chunks = self.chunks(&sides).await?;
        let progress = report::chunk_progress(bars, &plan.target.id.to_string(), chunks.len() as u64);
        let mut table = TableReport::new(&plan.source.id, &plan.target.id);
        let spans = chunks.chunks(SPAN_CHUNKS).count();
        for (span, group) in chunks.chunks(SPAN_CHUNKS).enumerate() {
            // Many chunks at once first: one scan per side, planned for the whole span, proves
            // them all equal in the usual case. Only a span that differs is digested chunk by
            // chunk (and a chunk that differs, again after the stream passed the read, then
            // row by row).
            if let (true, Some(Some((lo, _))), Some(Some((_, hi)))) = (group.len() > 1, group.first(), group.last()) {
                // The first and last spans are open-ended (no rows lie beyond the key bounds),
                // so a table of one span is read without comparing its key at all.
                let lo = if span == 0 { i64::MIN } else { *lo };
                let hi = if span + 1 == spans { i64::MAX } else { *hi };
                let (source_rows, target_rows) = sides.chunk(Some((lo, hi)));
                let (a, b) = tokio::join!(self.source.digest(&source_rows), self.target.digest(&target_rows));
                let ((source_digest, _), (target_digest, _)) = (a?, b?);
                if source_digest == target_digest {
                    table.add_span(ChunkOutcome::clean(source_digest.rows, target_digest.rows), group.len() as u64);
                    progress.inc(group.len() as u64);
                    continue;
                }
            }
            for range in group {
                let (source_rows, target_rows) = sides.chunk(*range);
                let outcome = self.chunk(plan, &source_rows, &target_rows).await?;
                table.add(outcome, self.file.verify.show_differences);
                progress.inc(1);
            }
        }
        progress.finish_and_clear();
        table.seconds = started.elapsed().as_secs_f64();
        Ok(table)
    }

    /// Key ranges covering both sides' rows; one range for tables without an integer key.
    pub(crate) async fn chunks(&self, sides: &rowsets::Sides) -> anyhow::Result<Vec<Option<(i64, i64)>>> {
        let Some((source_column, target_column)) = sides.range_columns() else { return Ok(vec![None]) };
        let (source, target) = tokio::join!(
            self.source.integer_bounds(&sides.source, &source_column),
            self.target.integer_bounds(&sides.target, &target_column)
        );
        let bounds = match (source?, target?) {
            (Some(a), Some(b)) => (a.0.min(b.0), a.1.max(b.1)),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => return Ok(vec![None]),
        };
        if bounds.1 == i64::MAX {
            return Ok(vec![None]);
        }
        let width = self.chunk_rows as i128;
        let mut ranges = Vec::new();
        // Chunks sit on a fixed grid of the key, so a changed key names its chunk without a query.
        let mut lo = (bounds.0 as i128).div_euclid(width) * width;
        while lo <= bounds.1 as i128 {
            let hi = (lo + width).min(i64::MAX as i128);
            ranges.push(Some((lo as i64, hi as i64)));
            lo = hi;
        }
        Ok(ranges)
    }

    pub(crate) async fn chunk(&self, plan: &TablePlan, source: &RowSet, target: &RowSet) -> anyhow::Result<ChunkOutcome> {
        let (a, b) = tokio::join!(self.source.digest(source), self.target.digest(target));
        let ((source_digest, read_at), (target_digest, _)) = (a?, b?);
        if source_digest == target_digest {
            return Ok(ChunkOutcome::clean(source_digest.rows, target_digest.rows));
        }
        // Maybe the target had not caught up with what the source read saw: wait, then again.
        if !self.settle(read_at).await? {
            return Ok(ChunkOutcome::unsettled(source_digest.rows, target_digest.rows));
        }
        let (a, b) = tokio::join!(self.source.digest(source), self.target.digest(target));
        let ((source_digest, _), (target_digest, _)) = (a?, b?);
        if source_digest == target_digest {
            return Ok(ChunkOutcome::clean(source_digest.rows, target_digest.rows));
        }
        let (Some(first), Some(second)) = (self.differences(plan, source, target).await?, self.differences(plan, source, target).await?) else {
            return Ok(ChunkOutcome::unsettled(source_digest.rows, target_digest.rows));
        };
        let lasting: Vec<Difference> = first.into_iter().filter(|d| second.contains(d)).collect();
        Ok(ChunkOutcome { source_rows: source_digest.rows, target_rows: target_digest.rows, differences: lasting, unsettled: false })
    }

    /// Waits (at most `verify.settle_seconds`) until the pipeline's slot has confirmed
    /// `position`: then the target holds every transaction a source read at `position` saw.
    /// False if it did not get there in time. Without a slot there is no stream to wait for.
    async fn settle(&self, position: Lsn) -> anyhow::Result<bool> {
        let deadline = Instant::now() + Duration::from_secs(self.file.verify.settle_seconds);
        loop {
            let state = slot::slot_state(self.source.client(), &self.slot).await?;
            let confirmed = state.and_then(|s| s.confirmed_flush);
            if confirmed.is_none_or(|c| c >= position) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Row differences of a chunk: the source first, then the target once the stream has passed
    /// that read, so the target holds at least what the source read saw.
    async fn differences(&self, plan: &TablePlan, source: &RowSet, target: &RowSet) -> anyhow::Result<Option<Vec<Difference>>> {
        let (source_rows, read_at) = self.source.rows_with_position(source).await?;
        if !self.settle(read_at).await? {
            return Ok(None);
        }
        let target_rows = self.target.rows(target).await?;
        Ok(Some(compare_rows(&plan.target, source_rows, target_rows)))
    }
}

pub struct ChunkOutcome {
    pub source_rows: u64,
    pub target_rows: u64,
    pub differences: Vec<Difference>,
    /// The stream lagged too far behind the source read to compare this chunk.
    pub unsettled: bool,
}

impl ChunkOutcome {
    fn clean(source_rows: u64, target_rows: u64) -> Self {
        ChunkOutcome { source_rows, target_rows, differences: Vec::new(), unsettled: false }
    }

    fn unsettled(source_rows: u64, target_rows: u64) -> Self {
        ChunkOutcome { unsettled: true, ..Self::clean(source_rows, target_rows) }
    }
}

/// Row-by-row differences between the transformed source rows and the target rows of a chunk.
pub fn compare_rows(shape: &TableSchema, source: Vec<Vec<Value>>, target: Vec<Vec<Value>>) -> Vec<Difference> {
    let key_of = |row: &Vec<Value>| -> Vec<Value> { shape.key.iter().map(|&i| row[i].clone()).collect() };
    let show_key = |key: &[Value]| {
        shape
            .key
            .iter()
            .zip(key)
            .map(|(&i, v)| format!("{}={}", shape.columns[i].name, v.as_str().unwrap_or("NULL")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut on_target: std::collections::HashMap<Vec<Value>, Vec<Value>> = target.into_iter().map(|r| (key_of(&r), r)).collect();
    let mut differences = Vec::new();
    let hash = |row: &Vec<Value>| Some(switchyard_core::digest::row_hash(row));
    for row in source {
        let key = key_of(&row);
        match on_target.remove(&key) {
            None => {
                let mut difference = Difference::missing(show_key(&key), key);
                difference.fingerprint = (hash(&row), None);
                differences.push(difference);
            }
            Some(other) if other != row => {
                let columns = shape
                    .columns
                    .iter()
                    .zip(row.iter().zip(&other))
                    .filter(|(_, (a, b))| a != b)
                    .map(|(c, _)| c.name.clone())
                    .collect();
                let mut difference = Difference::changed(show_key(&key), columns, key);
                difference.fingerprint = (hash(&row), hash(&other));
                differences.push(difference);
            }
            Some(_) => {}
        }
    }
    let mut extra: Vec<_> = on_target
        .into_iter()
        .map(|(key, row)| {
            let mut difference = Difference::extra(show_key(&key), key);
            difference.fingerprint = (None, hash(&row));
            difference
        })
        .collect();
    extra.sort_by(|a, b| a.key.cmp(&b.key));
    differences.extend(extra);
    differences
}
