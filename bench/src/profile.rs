//! `--profile`: where a phase's CPU goes, by `perf record` (whole machine, sampled) while
//! it runs, then `perf report` per process group: the source's backends (the walsender, or the
//! copy's readers), the target's backends and Switchyard. perf's sampling slows what it watches
//! a little, so a profiled run's timings are for the profile, not for the figures.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::kill;

/// Where a process group's time goes: each function it was sampled in (its own time, not its
/// callees') counts for the first work one of whose name prefixes it has; "[kernel]" takes
/// kernel functions. (Call graphs are not used: PostgreSQL's packaged build has no frame
/// pointers, and perf's unwinding of it double-counts.)
pub type Work = &'static [(&'static str, &'static [&'static str])];

/// What the target's applying backend spends a catch-up on.
pub const CATCH_UP_TARGET: Work = &[
    ("B-tree descents and inserts", &["_bt", "bt"]),
    ("pruning heap pages of dead row versions", &["heap_page_prune", "heap_prune", "HeapTupleSatisfiesVacuum", "PageRepairFragmentation"]),
    ("buffer lookups and locks", &["hash_search_with_hash_value", "LWLock", "ReadBuffer", "PinBuffer", "UnpinBuffer", "ReleaseBuffer", "BufTableLookup"]),
    ("heap tuples, pages and WAL", &["heap_", "Heap", "XLog", "Page", "RelationPutHeapTuple", "MarkBufferDirty"]),
    ("reading values", &["uuid_in", "int8in", "numeric_in", "textin", "array_recv", "pg_strtoint", "__GI_____strtoull", "ReceiveFunctionCall", "InputFunctionCall"]),
    ("the kernel (sockets, page cache)", &["[kernel]"]),
];

/// What the source's walsender spends a catch-up on: the same for every consumer, except for
/// how the consumer's reading shapes the kernel's work of sending.
pub const CATCH_UP_WALSENDER: Work = &[
    ("the kernel (sending and receiving)", &["[kernel]"]),
    ("reading and decoding WAL", &["XLog", "DecodeXLog", "LogicalDecoding", "heap_decode", "heap2_decode", "xact_decode", "standby_decode", "Decode", "WALRead", "pg_comp_crc32c", "ReadPageInternal", "logical_read_xlog_page", "pg_pread", "__libc_pread"]),
    ("the reorder buffer", &["ReorderBuffer", "SnapBuild"]),
    ("pgoutput: rows to messages", &["pgoutput", "logicalrep_write", "OutputFunctionCall", "FunctionCall1Coll", "int8out", "int4out", "numeric_out", "get_str_from_var", "textout", "timestamptz_out", "uuid_out", "pq_send", "pq_begintypsend", "enlargeStringInfo", "appendBinaryStringInfo", "heap_deform_tuple", "slot_deform", "pg_lltoa", "pg_ulltoa"]),
    ("memory (contexts, copies)", &["AllocSet", "palloc", "pfree", "MemoryContext", "GenerationAlloc", "GenerationFree", "SlabAlloc", "SlabFree", "__memmove", "__memcpy", "__memset"]),
    ("protocol and socket calls", &["WalSnd", "pq_putmessage", "pq_flush", "internal_flush", "socket_", "secure_write", "secure_read", "pq_recvbuf", "ProcessRepliesIfAny", "__libc_send", "__libc_recv", "__send", "__recv", "GetCurrentTimestamp", "__vdso", "__clock_gettime", "WaitEventSet", "WaitLatch", "epoll"]),
];

/// A catch-up's work, by process group.
pub const CATCH_UP: &[(&str, Work)] = &[("target", CATCH_UP_TARGET), ("walsender", CATCH_UP_WALSENDER)];

/// The same for the target's backends in the initial copy.
pub const SNAPSHOT_TARGET: Work = &[
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
    /// average and its hottest functions; for each group `work` names, also the share of its
    /// time under each of that work's functions.
    pub fn finish(mut self, figure: &str, tool: &str, groups: &[(&'static str, Vec<u32>)], work: &[(&str, Work)]) {
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
            let Some((_, group_work)) = work.iter().find(|(name, _)| name == group) else {
                continue;
            };
            let total: f64 = symbols.iter().map(|(share, _)| share).sum();
            let mut shares = vec![0.0; group_work.len() + 1];
            for (share, symbol) in &symbols {
                let kernel = symbol.starts_with("[kernel]");
                let name = symbol.trim_start_matches("[kernel] ");
                let work = group_work.iter().position(|(_, prefixes)| {
                    prefixes.iter().any(|prefix| if *prefix == "[kernel]" { kernel } else { !kernel && name.starts_with(prefix) })
                });
                shares[work.unwrap_or(group_work.len())] += share;
            }
            let names = group_work.iter().map(|(work, _)| *work).chain(["the rest"]);
            for (work, share) in names.zip(shares) {
                println!("figure={figure}_profile tool={tool} process={group} work=\"{work}\" share={:.1}%", 100.0 * share / total.max(f64::MIN_POSITIVE));
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
