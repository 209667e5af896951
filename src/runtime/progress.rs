//! Progress of long work: bars on a terminal, structured log lines otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use switchyard_core::TableId;

/// Rows copied per table during the snapshot.
pub struct CopyProgress {
    bars: HashMap<TableId, ProgressBar>,
    counts: HashMap<TableId, Arc<AtomicU64>>,
    logger: Option<tokio::task::JoinHandle<()>>,
}

impl CopyProgress {
    pub fn new(tables: impl Iterator<Item = (TableId, i64)>) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if terminal { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {human_pos}/{human_len} rows  {per_sec}  eta {eta}")
            .expect("valid template")
            .progress_chars("=> ");
        let mut bars = HashMap::new();
        let mut counts = HashMap::new();
        let mut estimates = HashMap::new();
        for (table, estimate) in tables {
            let bar = multi.add(ProgressBar::new(estimate.max(0) as u64));
            bar.set_style(style.clone());
            bar.set_prefix(table.to_string());
            bars.insert(table.clone(), bar);
            counts.insert(table.clone(), Arc::new(AtomicU64::new(0)));
            estimates.insert(table, estimate);
        }
        let logger = (!terminal).then(|| {
            let counts = counts.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    for (table, count) in &counts {
                        let rows = count.load(Ordering::Relaxed);
                        let rate = rows as f64 / started.elapsed().as_secs_f64();
                        let estimate = estimates.get(table).copied().unwrap_or(0);
                        tracing::info!(table = %table, rows, estimate, rows_per_sec = rate as u64, "copying");
                    }
                }
            })
        });
        CopyProgress { bars, counts, logger }
    }

    pub fn add(&self, table: &TableId, rows: u64) {
        if let Some(count) = self.counts.get(table) {
            count.fetch_add(rows, Ordering::Relaxed);
        }
        if let Some(bar) = self.bars.get(table) {
            if bar.position() + rows > bar.length().unwrap_or(0) {
                bar.set_length(bar.position() + rows);
            }
            bar.inc(rows);
        }
    }

    pub fn finish(&self) {
        if let Some(logger) = &self.logger {
            logger.abort();
        }
        for (table, bar) in &self.bars {
            bar.finish();
            let rows = self.counts.get(table).map(|c| c.load(Ordering::Relaxed)).unwrap_or(0);
            tracing::info!(table = %table, rows, "copied");
        }
    }
}
