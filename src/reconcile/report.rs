//! What a verification pass found, for people (a table) and for scripts (JSON).

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use switchyard_core::TableId;

use super::ChunkOutcome;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The row's key, as `column=value, ...`.
    pub key: String,
    /// `missing` (on the target), `extra` (only on the target) or `changed`.
    pub kind: &'static str,
    /// For `changed`: the columns whose values differ.
    pub columns: Vec<String>,
    /// The key's values on the target, for repair.
    #[serde(skip)]
    pub key_values: Vec<switchyard_core::Value>,
    /// Hashes of the source and target rows: a difference is the same twice only if the same
    /// values disagree, so a row still changing never looks like a lasting difference.
    #[serde(skip)]
    pub fingerprint: (Option<i64>, Option<i64>),
}

impl Difference {
    pub fn missing(key: String, key_values: Vec<switchyard_core::Value>) -> Self {
        Difference { key, kind: "missing", columns: Vec::new(), key_values, fingerprint: (None, None) }
    }
    pub fn extra(key: String, key_values: Vec<switchyard_core::Value>) -> Self {
        Difference { key, kind: "extra", columns: Vec::new(), key_values, fingerprint: (None, None) }
    }
    pub fn changed(key: String, columns: Vec<String>, key_values: Vec<switchyard_core::Value>) -> Self {
        Difference { key, kind: "changed", columns, key_values, fingerprint: (None, None) }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct TableReport {
    pub source_table: String,
    pub target_table: String,
    pub source_rows: u64,
    pub target_rows: u64,
    pub chunks: u64,
    pub rows_differing: u64,
    /// Chunks that could not be compared because the stream lagged more than
    /// `verify.settle_seconds` behind the source read: not proven equal.
    pub chunks_unsettled: u64,
    pub seconds: f64,
    /// The first differences (up to `verify.show_differences`).
    pub differences: Vec<Difference>,
    /// Every differing row's key on the target, for repair.
    #[serde(skip)]
    pub differing_keys: Vec<Vec<switchyard_core::Value>>,
    /// Rows repaired by `--repair`.
    pub rows_repaired: u64,
}

impl TableReport {
    pub fn new(source: &TableId, target: &TableId) -> Self {
        TableReport { source_table: source.to_string(), target_table: target.to_string(), ..Default::default() }
    }

    pub fn add(&mut self, chunk: ChunkOutcome, show: usize) {
        self.chunks += 1;
        self.source_rows += chunk.source_rows;
        self.target_rows += chunk.target_rows;
        self.rows_differing += chunk.differences.len() as u64;
        self.chunks_unsettled += u64::from(chunk.unsettled);
        self.differing_keys.extend(chunk.differences.iter().map(|d| d.key_values.clone()));
        let room = show.saturating_sub(self.differences.len());
        self.differences.extend(chunk.differences.into_iter().take(room));
    }

    /// A clean outcome covering several chunks.
    pub fn add_span(&mut self, clean: ChunkOutcome, chunks: u64) {
        self.add(clean, 0);
        self.chunks += chunks.saturating_sub(1);
    }

    pub fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.source_rows.max(self.target_rows) as f64 / self.seconds
        } else {
            0.0
        }
    }
}

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub tables: Vec<TableReport>,
    /// Foreign keys, tenant isolation and business rules on the target.
    pub integrity: Vec<super::integrity::Finding>,
    /// Wall time of the tables' checksum pass (tables run `verify.parallel` at a time, so this
    /// is less than the sum of their own times) and of the integrity checks after it.
    pub checksum_seconds: f64,
    pub integrity_seconds: f64,
}

impl VerifyReport {
    /// Equal to the source and every integrity check holds.
    pub fn equal(&self) -> bool {
        self.tables.iter().all(|t| t.rows_differing == 0 && t.chunks_unsettled == 0)
            && self.integrity.iter().all(|f| f.violations == 0)
    }
}

pub fn print_report(report: &VerifyReport) {
    println!(
        "{:<28} {:>11} {:>11} {:>7} {:>9} {:>8} {:>10}",
        "table", "source rows", "target rows", "chunks", "differing", "seconds", "rows/s"
    );
    for table in &report.tables {
        let name = if table.source_table == table.target_table {
            table.source_table.clone()
        } else {
            format!("{} -> {}", table.source_table, table.target_table)
        };
        println!(
            "{:<28} {:>11} {:>11} {:>7} {:>9} {:>8.2} {:>10.0}",
            name,
            table.source_rows,
            table.target_rows,
            table.chunks,
            table.rows_differing,
            table.seconds,
            table.rows_per_second()
        );
    }
    if report.tables.len() > 1 {
        let sum = |rows: fn(&TableReport) -> u64| report.tables.iter().map(rows).sum::<u64>();
        let (source_rows, target_rows) = (sum(|t| t.source_rows), sum(|t| t.target_rows));
        let rate = if report.checksum_seconds > 0.0 { source_rows.max(target_rows) as f64 / report.checksum_seconds } else { 0.0 };
        println!(
            "{:<28} {:>11} {:>11} {:>7} {:>9} {:>8.2} {:>10.0}",
            "all tables (wall time)",
            source_rows,
            target_rows,
            sum(|t| t.chunks),
            sum(|t| t.rows_differing),
            report.checksum_seconds,
            rate
        );
    }
    for table in report.tables.iter().filter(|t| t.rows_differing > 0) {
        println!("\n{}: {} rows differ", table.target_table, table.rows_differing);
        for difference in &table.differences {
            match difference.kind {
                "changed" => println!("  changed  {}  columns: {}", difference.key, difference.columns.join(", ")),
                kind => println!("  {kind:<8} {}", difference.key),
            }
        }
        let hidden = table.rows_differing - table.differences.len() as u64;
        if hidden > 0 {
            println!("  ... and {hidden} more");
        }
    }
    for table in report.tables.iter().filter(|t| t.chunks_unsettled > 0) {
        println!(
            "\n{}: {} chunks not compared: the stream lagged more than verify.settle_seconds behind the source",
            table.target_table, table.chunks_unsettled
        );
    }
    if !report.integrity.is_empty() {
        println!("\n{:<44} {:<24} {:>10}", "integrity check", "table", "violations");
        for finding in &report.integrity {
            println!("{:<44} {:<24} {:>10}", finding.check, finding.table, finding.violations);
            for example in &finding.examples {
                println!("    {example}");
            }
        }
    }
    let broken = report.integrity.iter().any(|f| f.violations > 0);
    let verdict = match (report.equal(), report.tables.iter().any(|t| t.rows_differing > 0), broken) {
        (true, _, _) => "equal",
        (false, true, _) => "DIFFERENT",
        (false, false, true) => "INTEGRITY VIOLATED",
        (false, false, false) => "NOT PROVEN (lagging)",
    };
    println!("\n{verdict}");
}

/// Where the tables' progress bars are drawn: stderr when shown and a terminal, else nowhere.
pub fn progress_bars(show: bool) -> MultiProgress {
    let target = if show && std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    MultiProgress::with_draw_target(target)
}

pub fn chunk_progress(bars: &MultiProgress, table: &str, chunks: u64) -> ProgressBar {
    let bar = bars.add(ProgressBar::new(chunks));
    bar.set_style(ProgressStyle::with_template("{prefix:>24} [{bar:30}] {pos}/{len} chunks  eta {eta}").expect("template").progress_chars("=> "));
    bar.set_prefix(table.to_string());
    bar
}
