//! `--timeline`: a catch-up's course in quarter seconds — how much of the backlog the walsender
//! had sent and the consumer reported applied, and the cores its walsender, its target backend
//! and Switchyard each kept busy. A run's average hides which process bounds which stretch: the
//! walsender early in a backlog, the target later, the target alone at the end on what was read
//! ahead. (Native's apply worker reports its position only once it finds the stream idle, so
//! its applied share stays at 0% until the end.)

use std::time::{Duration, Instant};

use crate::session::Session;
use crate::stream::{cpu_of, Consumers};

const STEP: Duration = Duration::from_millis(250);

pub struct Timeline {
    tool: &'static str,
    consumers: Consumers,
    /// The WAL the backlog spans: from where the consumer's slot stood to the goal.
    backlog: (String, f64),
    /// Polls the target for the applying backend's pid.
    target: Session,
    started: Instant,
    /// When the last sample was taken, and the CPU seconds each process had used by then.
    last: (Instant, Vec<f64>),
}

impl Timeline {
    /// Begins where the consumer's `slot` stands (read through `source`), before it starts; the
    /// backlog ends at `goal`.
    pub fn start(tool: &'static str, consumers: Consumers, source: &mut Session, slot: &str, goal: &str, target: Session) -> Timeline {
        let from = source.query(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"));
        let span: f64 = source.query(&format!("SELECT '{goal}'::pg_lsn - '{from}'::pg_lsn")).parse().unwrap_or(f64::NAN);
        let now = Instant::now();
        Timeline { tool, consumers, backlog: (from, span), target, started: now, last: (now, Vec::new()) }
    }

    /// Counts Switchyard's own process too, once it runs.
    pub fn watch_process(&mut self, pid: u32) {
        self.consumers.watch(pid);
    }

    /// Prints a line if a step has passed since the last one.
    pub fn sample(&mut self, source: &mut Session) {
        let now = Instant::now();
        if now - self.last.0 < STEP {
            return;
        }
        let target = &mut self.target;
        let pids = self.consumers.find(|sql| source.query(sql), |sql| target.query(sql));
        let used: Vec<f64> = pids.iter().map(|(_, pids)| cpu_of(pids)).collect();
        let elapsed = (now - self.last.0).as_secs_f64();
        let cores: Vec<String> = pids
            .iter()
            .zip(&used)
            .enumerate()
            // Every process is started for the catch-up: one found only now used its CPU since.
            .map(|(i, ((name, _), used))| format!("{name}={:.2}", (used - self.last.1.get(i).copied().unwrap_or(0.0)) / elapsed))
            .collect();
        let application = self.consumers.application();
        let from = &self.backlog.0;
        let positions = source.query(&format!(
            "SELECT sent_lsn - '{from}'::pg_lsn, replay_lsn - '{from}'::pg_lsn FROM pg_stat_replication WHERE application_name = '{application}'"
        ));
        let share = |bytes: Option<&str>| 100.0 * bytes.and_then(|b| b.parse::<f64>().ok()).unwrap_or(0.0) / self.backlog.1;
        let mut positions = positions.split('|');
        let (sent, applied) = (share(positions.next()), share(positions.next()));
        println!(
            "figure=catch_up_timeline tool={} t={:.2} sent={sent:.0}% applied={applied:.0}% cores: {}",
            self.tool,
            (now - self.started).as_secs_f64(),
            cores.join(" ")
        );
        self.last = (now, used);
    }
}
