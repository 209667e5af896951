//! `--profile`: where a phase's CPU goes, by `perf record` (whole machine, sampled) while
//! it runs, then `perf report` per process group: the source's backends (the walsender, or the
//! copy's readers), the target's backends and Switchyard. perf's sampling slows what it watches
//! a little, so a profiled run's timings are for the profile, not for the figures.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::kill;

/// What the target's applying backend spends a catch-up on: each function it was sampled in
/// (its own time, not its callees') counts for the first group one of whose name prefixes it
/// has; "[kernel]" takes kernel functions. (Call graphs are not used: PostgreSQL's packaged
/// build has no frame pointers, and perf's unwinding of it double-counts.)
pub const CATCH_UP_TARGET: &[(&str, &[&str])] = &[
    ("B-tree descents and inserts", &["_bt", "bt"]),
    ("pruning heap pages of dead row versions", &["heap_page_prune", "heap_prune", "HeapTupleSatisfiesVacuum", "PageRepairFragmentation"]),
    ("buffer lookups and locks", &["hash_search_with_hash_value", "LWLock", "ReadBuffer", "PinBuffer", "UnpinBuffer", "ReleaseBuffer", "BufTableLookup"]),
    ("heap tuples, pages and WAL", &["heap_", "Heap", "XLog", "Page", "RelationPutHeapTuple", "MarkBufferDirty"]),
    ("reading values", &["uuid_in", "int8in", "numeric_in", "textin", "array_recv", "pg_strtoint", "__GI_____strtoull", "ReceiveFunctionCall", "InputFunctionCall"]),
    ("the kernel (sockets, page cache)", &["[kernel]"]),
];

/// The same for the target's backends in the initial copy.
pub const SNAPSHOT_TARGET: &[(&str, &[&str])] = &[
    ("the kernel (extending files: zeroing and copying pages)", &["[kernel]"]),
    ("sorting for the index builds", &["tuplesort", "qsort", "pg_qsort", "ssup_", "comparetup", "LogicalTape", "ApplySortComparator", "__memcmp", "uuid_cmp", "btint8cmp"]),
    ("writing index pages", &["_bt"]),
    ("reading COPY data", &["NextCopyFrom", "CopyRead", "CopyFrom", "pq_getmsg", "ReceiveFunctionCall", "uuid_recv", "int8recv", "numeric_recv", "textrecv"]),
    ("heap tuples, pages and WAL", &["heap_", "Heap", "XLog", "Page", "RelationPutHeapTuple", "MarkBufferDirty"]),
];

pub struct Recording {
    perf: Child,
    data: PathBuf,
}

/// Starts recording if `enabled` (`--profile`), or says why it cannot (perf is `make
/// deps-bench`'s linux-perf).
pub fn start(enabled: bool, dir: &Path, tag: &str) -> Option<Recording> {
    if !enabled {
        return None;
    }
    let data = dir.join(format!("perf-{tag}.data"));
    let perf = Command::new("perf")
        .args(["record", "-a", "-F", "499", "-o"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match perf {
        Ok(perf) => Some(Recording { perf, data }),
        Err(error) => {
            eprintln!("--profile: cannot run perf ({error}); install it with `make deps-bench`");
            None
        }
    }
}

impl Recording {
    /// Stops recording and prints, per process group (name, pids), the cores it kept busy on
    /// average and its hottest functions; for the group named "target", also the share of its
    /// time under each of `target_work`'s functions.
    pub fn finish(mut self, figure: &str, tool: &str, groups: &[(&'static str, Vec<u32>)], target_work: &[(&str, &[&str])]) {
        unsafe { kill(self.perf.id() as i32, 2) };
        let _ = self.perf.wait();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let by_process = self.report(&[], "pid");
        let share_of = |pids: &[u32]| -> f64 {
            // "10173:postgres"
            let pids: HashSet<String> = pids.iter().map(u32::to_string).collect();
            by_process.iter().filter(|(_, process)| process.split(':').next().is_some_and(|pid| pids.contains(pid))).map(|(share, _)| share).sum()
        };
        let idle: f64 = by_process.iter().filter(|(_, process)| process.starts_with("0:")).map(|(share, _)| share).sum();
        println!("figure={figure}_profile tool={tool} idle_cores={:.2} of {cores}", idle / 100.0 * cores);
        for (group, pids) in groups.iter().filter(|(_, pids)| !pids.is_empty()) {
            let symbols = self.report(pids, "sym");
            let top: Vec<String> = symbols.iter().take(8).map(|(share, symbol)| format!("{symbol}={share:.1}%")).collect();
            println!(
                "figure={figure}_profile tool={tool} process={group} busy_cores={:.2} hottest: {}",
                share_of(pids) / 100.0 * cores,
                top.join(" ")
            );
            if *group != "target" {
                continue;
            }
            let total: f64 = symbols.iter().map(|(share, _)| share).sum();
            let mut shares = vec![0.0; target_work.len() + 1];
            for (share, symbol) in &symbols {
                let kernel = symbol.starts_with("[kernel]");
                let name = symbol.trim_start_matches("[kernel] ");
                let work = target_work.iter().position(|(_, prefixes)| {
                    prefixes.iter().any(|prefix| if *prefix == "[kernel]" { kernel } else { !kernel && name.starts_with(prefix) })
                });
                shares[work.unwrap_or(target_work.len())] += share;
            }
            let names = target_work.iter().map(|(work, _)| *work).chain(["the rest (executor, COPY, protocol, ...)"]);
            for (work, share) in names.zip(shares) {
                println!("figure={figure}_profile tool={tool} process=target work=\"{work}\" share={:.1}%", 100.0 * share / total.max(f64::MIN_POSITIVE));
            }
        }
        let _ = std::fs::remove_file(&self.data);
    }

    /// (percent, key) by `sort` ("sym" or "pid"), highest first: of the samples of `pids` (of
    /// all samples if none). Kernel functions are named "[kernel] name".
    fn report(&self, pids: &[u32], sort: &str) -> Vec<(f64, String)> {
        let mut command = Command::new("perf");
        command.args(["report", "-q", "--stdio", "--percentage", "relative", "--sort", sort, "-i"]).arg(&self.data);
        if !pids.is_empty() {
            command.args(["--pid", &pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",")]);
        }
        let out = command.stderr(Stdio::null()).output();
        let text = out.map(|out| String::from_utf8_lossy(&out.stdout).into_owned()).unwrap_or_default();
        // "  5.99%  [.] symbol", "  1.44%  [k] symbol", "  50.03%  10173:postgres".
        text.lines()
            .filter_map(|line| {
                let share = line.split_whitespace().next()?.strip_suffix('%')?.parse().ok()?;
                let key = match line.split_once("] ") {
                    Some((marker, symbol)) if marker.ends_with("[k") => format!("[kernel] {}", symbol.trim()),
                    Some((_, symbol)) => symbol.trim().to_string(),
                    None => line.split_whitespace().last()?.to_string(),
                };
                Some((share, key))
            })
            .collect()
    }
}
