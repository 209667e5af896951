//! `--profile`: where a catch-up's CPU goes, by `perf record` (whole machine, call graphs)
//! while it runs, then `perf report` per consumer process: the walsender, the target's
//! applying backend(s) and Switchyard. perf's sampling slows what it watches a little, so a
//! profiled run's timings are for the profile, not for the figures.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::kill;

/// What the target's backend does, by the PostgreSQL functions under which it spends its time
/// (inclusive, so a line can hold part of another: pruning happens while finding rows).
const TARGET_WORK: &[(&str, &[&str])] = &[
    ("finding the rows to update or delete (index scans)", &["index_getnext_slot"]),
    ("  of which pruning heap pages met on the way", &["heap_page_prune_opt"]),
    ("adding index entries", &["ExecInsertIndexTuples"]),
    ("writing heap tuples", &["heap_insert", "heap_update", "heap_delete"]),
    ("WAL records", &["XLogInsert"]),
    ("reading values (input and receive functions)", &["InputFunctionCall", "ReceiveFunctionCall"]),
    ("planning statements", &["pg_plan_queries"]),
    ("committing", &["CommitTransaction"]),
];

pub struct Recording {
    perf: Child,
    data: PathBuf,
}

/// Starts recording, or says why it cannot (perf is `make deps-bench`'s linux-perf).
pub fn start(dir: &Path, tag: &str) -> Option<Recording> {
    let data = dir.join(format!("perf-{tag}.data"));
    let perf = Command::new("perf")
        .args(["record", "-a", "-g", "-F", "499", "-o"])
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
    /// Stops recording and prints, per consumer (name, pids), its hottest functions; for the
    /// target, also the share of its time under each of `TARGET_WORK`'s functions.
    pub fn finish(mut self, tool: &str, consumers: &[(&'static str, Vec<u32>)]) {
        unsafe { kill(self.perf.id() as i32, 2) };
        let _ = self.perf.wait();
        for (process, pids) in consumers.iter().filter(|(_, pids)| !pids.is_empty()) {
            let selfs = self.report(pids, false);
            let top: Vec<String> = selfs.iter().take(8).map(|(share, symbol)| format!("{symbol}={share:.1}%")).collect();
            println!("figure=catch_up_profile tool={tool} process={process} hottest_self: {}", top.join(" "));
            if *process != "target" {
                continue;
            }
            let inclusive = self.report(pids, true);
            for (work, symbols) in TARGET_WORK {
                let shares: Vec<f64> = inclusive.iter().filter(|(_, symbol)| symbols.contains(&symbol.as_str())).map(|(share, _)| *share).collect();
                if shares.is_empty() {
                    continue; // not sampled, or not a symbol this server's build shows
                }
                let share: f64 = shares.iter().sum();
                println!("figure=catch_up_profile tool={tool} process=target work=\"{work}\" share={share:.1}%");
            }
        }
        let _ = std::fs::remove_file(&self.data);
    }

    /// (percent of the processes' samples, function), highest first; inclusive of callees or not.
    fn report(&self, pids: &[u32], inclusive: bool) -> Vec<(f64, String)> {
        let pid_list = pids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        let out = Command::new("perf")
            .args(["report", "-q", "--stdio", "-g", "none", "--percentage", "relative", "--sort", "sym", "--pid", &pid_list, "-i"])
            .arg(&self.data)
            .arg(if inclusive { "--children" } else { "--no-children" })
            .stderr(Stdio::null())
            .output();
        let text = out.map(|out| String::from_utf8_lossy(&out.stdout).into_owned()).unwrap_or_default();
        // "  49.55%  0.00%  [.] symbol" (--children) or "  5.99%  [.] symbol".
        text.lines()
            .filter_map(|line| {
                let share = line.split_whitespace().next()?.strip_suffix('%')?.parse().ok()?;
                let symbol = line.split_once("] ")?.1.trim().to_string();
                Some((share, symbol))
            })
            .collect()
    }
}
