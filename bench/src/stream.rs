//! The change stream, measured: catch-up on a backlog (Switchyard, native logical replication,
//! and `pg_recvlogical` reading the same backlog as the walsender's ceiling), then steady-state
//! lag under pgbench at fixed rates, sampled from `pg_stat_replication.replay_lag`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_testkit::PgCluster;

use crate::profile;
use crate::session::Session;
use crate::timeline::Timeline;
use crate::{kill, median, rss_mib, Figure, Transport};

/// The seed's write mix, ~10 statements per transaction: 40% order inserts, 40% order updates,
/// 10% user inserts, 10% order deletes.
fn mix_script(users: u64, orders: u64) -> String {
    let mut script = format!("\\set u random(1, {users})\n");
    for n in 0..6 {
        script.push_str(&format!("\\set o{n} random(1, {orders})\n"));
    }
    script.push_str("BEGIN;\n");
    for _ in 0..4 {
        script.push_str("INSERT INTO orders (user_id, amount, status) VALUES (:u, 9.99, 'new');\n");
    }
    for n in 0..4 {
        script.push_str(&format!("UPDATE orders SET status = 'paid', amount = amount + 1 WHERE id = :o{n};\n"));
    }
    script.push_str("INSERT INTO users (email, name) VALUES (md5(random()::text) || '@bench', 'bench');\n");
    script.push_str("DELETE FROM orders WHERE id = :o4;\nEND;\n");
    script
}

/// Row changes made on the source so far (inserts + updates + deletes on the carried tables).
fn changes_so_far(source: &PgCluster) -> i64 {
    // Statistics reach the shared counters at most a second after a transaction ends.
    std::thread::sleep(Duration::from_millis(1200));
    source
        .psql("app", "SELECT sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_user_tables WHERE relname IN ('users', 'orders')")
        .parse()
        .unwrap()
}

/// Transaction ids the source has handed out so far: its writing transactions (pgbench's all
/// write), counted at once rather than through the statistics.
fn transactions_so_far(source: &PgCluster) -> i64 {
    source.psql("app", "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").parse().unwrap()
}

fn slot_reached(source: &mut Session, slot: &str, goal: &str) -> bool {
    source.query(&format!("SELECT coalesce(confirmed_flush_lsn >= '{goal}', false) FROM pg_replication_slots WHERE slot_name = '{slot}'")) == "t"
}

pub struct Stream<'a> {
    pub source: &'a PgCluster,
    /// Holds the native subscription `bench_native` (database `native`), disabled.
    pub target: &'a PgCluster,
    pub transport: Transport,
    pub switchyard: &'a Path,
    /// The tenantize pipeline (already copied, stopped), with continuous verification off.
    pub pipeline: PathBuf,
    pub dir: &'a Path,
    pub users: u64,
    pub orders: u64,
    /// The plain pipeline (single-tenant tables, as native's; already copied, stopped): it
    /// catches up on the same backlog, the same work native does.
    pub plain: Option<PathBuf>,
    /// Records each catch-up with perf and prints where its processes spent their time.
    pub profile: bool,
    /// Prints each catch-up's course in quarter seconds (see `timeline`).
    pub timeline: bool,
}

impl Stream<'_> {
    /// Every tool of the stream figures reaches the clusters over `transport` from now on.
    pub fn switch_transport(&mut self, transport: Transport) {
        self.transport = transport;
        self.target.psql("native", &format!("ALTER SUBSCRIPTION bench_native CONNECTION '{}'", transport.conninfo(self.source, "app")));
    }

    fn start_switchyard(&self) -> Child {
        self.start_switchyard_with(&self.pipeline)
    }

    fn start_switchyard_with(&self, pipeline: &Path) -> Child {
        Command::new(self.switchyard)
            .args(["run"])
            .arg(pipeline)
            .env("SOURCE_URL", self.transport.url(self.source, "app"))
            .env("TARGET_URL", self.transport.url(self.target, "switchyard"))
            .env("SWITCHYARD_LOG", crate::pipeline_log())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn script(&self) -> PathBuf {
        let path = self.dir.join("mix.sql");
        std::fs::write(&path, mix_script(self.users, self.orders)).unwrap();
        path
    }

    fn pgbench(&self, extra: &[&str]) -> Command {
        let mut command = Command::new(self.source.bin("pgbench"));
        command
            .args(["-n", "-f"])
            .arg(self.script())
            .args(extra)
            .args(["-h", &self.source.socket_dir().display().to_string(), "-p", &self.source.port().to_string(), "-U", "postgres", "app"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Waits until `slot` confirmed `goal`, sampling the process's peak RSS; returns seconds.
    fn time_until(&self, slot: &str, goal: &str, started: Instant, process: Option<&mut Child>, mut timeline: Option<Timeline>) -> (f64, u64) {
        let mut peak = 0;
        let pid = process.as_ref().map(|p| p.id());
        let mut process = process;
        let mut session = Session::open(self.source, "app");
        if let (Some(timeline), Some(pid)) = (timeline.as_mut(), pid) {
            timeline.watch_process(pid);
        }
        while !slot_reached(&mut session, slot, goal) {
            if let Some(timeline) = timeline.as_mut() {
                timeline.sample(&mut session);
            }
            if let Some(pid) = pid {
                peak = peak.max(rss_mib(pid));
            }
            if let Some(child) = process.as_deref_mut() {
                assert!(child.try_wait().unwrap().is_none(), "{slot}'s consumer exited while catching up");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let seconds = started.elapsed().as_secs_f64();
        if let Some(pid) = pid {
            peak = peak.max(rss_mib(pid));
        }
        (seconds, peak)
    }

    /// Makes a backlog of `transactions` in the mix while every consumer is stopped; returns
    /// its row changes and the source position after it.
    fn backlog(&self, transactions: u64) -> (f64, String) {
        let before = changes_so_far(self.source);
        eprintln!("making a backlog of {transactions} transactions ...");
        let per_client = (transactions / 4).to_string();
        assert!(self.pgbench(&["-c", "4", "-j", "2", "-t", &per_client]).status().unwrap().success(), "pgbench failed");
        let changes = (changes_so_far(self.source) - before) as f64;
        (changes, self.source.psql("app", "SELECT pg_current_wal_insert_lsn()"))
    }

    /// One round of the catch-up: a backlog made while every consumer is stopped, then each
    /// consumer alone on it; each tool's seconds. Rounds alternate which of Switchyard and
    /// native goes first, so neither always meets the page cache as the other left it.
    pub fn catch_up_round(&self, transactions: u64, round: usize, with_plain: bool) -> CatchUpRound {
        let source = self.source;
        source.psql("app", "SELECT pg_create_logical_replication_slot('bench_recv', 'pgoutput')");
        let (changes, goal) = self.backlog(transactions);
        println!("figure=catch_up_round round={round} backlog_changes={changes} backlog_transactions={transactions}");
        let mut seconds = Vec::new();
        let native_first = round % 2 == 1;
        if native_first {
            seconds.push(("native", self.native_catch_up("catch_up", &goal)));
        }
        let (tenantize, peak_rss) = self.switchyard_catch_up("catch_up", ("switchyard", "switchyard_tenantize"), &self.pipeline, &goal);
        seconds.push(("switchyard", tenantize));
        if let Some(plain) = self.plain.as_ref().filter(|_| with_plain) {
            seconds.push(("switchyard_plain", self.switchyard_catch_up("catch_up", ("switchyard_plain", "switchyard_plain"), plain, &goal).0));
        }

        // The ceiling: the walsender decoding the same backlog for a client that only reads it.
        let started = Instant::now();
        let status = Command::new(source.bin("pg_recvlogical"))
            .args(["-d", &self.transport.url(source, "app"), "--slot", "bench_recv", "--start", "--endpos", &goal, "-f", "/dev/null"])
            .args(["-o", "proto_version=1", "-o", "publication_names=bench_native", "--no-loop"])
            .status()
            .unwrap();
        assert!(status.success(), "pg_recvlogical failed");
        seconds.push(("pg_recvlogical", started.elapsed().as_secs_f64()));
        source.psql("app", "SELECT pg_drop_replication_slot('bench_recv')");

        if !native_first {
            seconds.push(("native", self.native_catch_up("catch_up", &goal)));
        }
        for (tool, seconds) in &seconds {
            println!("figure=catch_up_round round={round} tool={tool} seconds={seconds:.3} changes/s={:.0}", changes / seconds);
        }
        CatchUpRound { changes, seconds, peak_rss }
    }

    /// Parallel apply (`[apply] parallel = lanes`) on a second backlog like the first, then
    /// native on the same backlog: figure `catch_up_lanes`.
    pub fn catch_up_lanes(&self, figures: &mut Vec<Figure>, transactions: u64, lanes: usize) {
        let (changes, goal) = self.backlog(transactions);
        println!("figure=catch_up_lanes lanes={lanes} backlog_changes={changes} backlog_transactions={transactions}");
        let pipeline = self.dir.join("lanes.toml");
        let text = std::fs::read_to_string(&self.pipeline).unwrap();
        assert!(text.contains("[apply]\n"), "the pipeline has no [apply] section");
        std::fs::write(&pipeline, text.replace("[apply]\n", &format!("[apply]\nparallel = {lanes}\n"))).unwrap();

        let (seconds, peak_rss) = self.switchyard_catch_up("catch_up_lanes", ("switchyard", "switchyard_tenantize"), &pipeline, &goal);
        self.record(figures, "catch_up_lanes", "switchyard", changes / seconds, "changes/s", seconds);
        figures.push(Figure { figure: "peak_rss_catch_up_lanes".into(), tool: "switchyard", value: peak_rss as f64, unit: "MiB" });
        let seconds = self.native_catch_up("catch_up_lanes", &goal);
        self.record(figures, "catch_up_lanes", "native", changes / seconds, "changes/s", seconds);
    }

    /// Switchyard run on `pipeline` until its slot reached `goal`: the seconds and peak RSS (MiB);
    /// its CPU is printed.
    fn switchyard_catch_up(&self, figure: &str, (tool, slot): (&'static str, &str), pipeline: &Path, goal: &str) -> (f64, u64) {
        self.print_reread(tool, slot);
        let timeline = self.start_timeline(tool, slot, goal);
        let recording = profile::start(self.profile, self.dir, figure);
        let (started, busy) = (Instant::now(), machine_busy_seconds());
        let mut run = self.start_switchyard_with(pipeline);
        let (seconds, peak) = self.time_until(slot, goal, started, Some(&mut run), timeline);
        self.print_catch_up_cpu(tool, seconds, busy, Some(run.id()));
        if let Some(recording) = recording {
            recording.finish(figure, tool, &self.consumer_pids(tool, Some(run.id())), profile::CATCH_UP);
        }
        self.refresh_restart_point(slot, goal);
        unsafe { kill(run.id() as i32, 15) };
        run.wait().unwrap();
        (seconds, peak)
    }

    /// The native subscription enabled until its slot reached `goal`, then disabled again: the
    /// seconds; its CPU is printed.
    fn native_catch_up(&self, figure: &str, goal: &str) -> f64 {
        self.print_reread("native", "bench_native");
        let timeline = self.start_timeline("native", "bench_native", goal);
        let recording = profile::start(self.profile, self.dir, figure);
        let (started, busy) = (Instant::now(), machine_busy_seconds());
        self.target.psql("native", "ALTER SUBSCRIPTION bench_native ENABLE");
        let (seconds, _) = self.time_until("bench_native", goal, started, None, timeline);
        self.print_catch_up_cpu("native", seconds, busy, None);
        if let Some(recording) = recording {
            recording.finish(figure, "native", &self.consumer_pids("native", None), profile::CATCH_UP);
        }
        self.refresh_restart_point("bench_native", goal);
        self.target.psql("native", "ALTER SUBSCRIPTION bench_native DISABLE");
        seconds
    }

    /// pgbench at `rate` tx/s for `seconds`, once per tool with the other paused (each first
    /// caught up), sampling the tool's `replay_lag` every 100 ms.
    pub fn lag(&self, figures: &mut Vec<Figure>, rate: u64, seconds: u64) {
        for tool in ["switchyard", "native"] {
            let mut run = None;
            let (slot, application) = if tool == "switchyard" {
                self.target.psql("native", "ALTER SUBSCRIPTION bench_native DISABLE");
                run = Some(self.start_switchyard());
                ("switchyard_tenantize", "switchyard")
            } else {
                self.target.psql("native", "ALTER SUBSCRIPTION bench_native ENABLE");
                ("bench_native", "bench_native")
            };
            let goal = self.source.psql("app", "SELECT pg_current_wal_insert_lsn()");
            self.time_until(slot, &goal, Instant::now(), run.as_mut(), None);
            // Caught up can be seen before the consumer has even connected (nothing was
            // behind): the load starts once its one walsender streams, or the first samples
            // would time its start-up, and the CPU shares an earlier run's walsender.
            let mut sampler = Session::open(self.source, "app");
            let streaming =
                format!("SELECT count(*) = 1 AND bool_and(state = 'streaming') FROM pg_stat_replication WHERE application_name = '{application}'");
            while sampler.query(&streaming) != "t" {
                if let Some(child) = run.as_mut() {
                    assert!(child.try_wait().unwrap().is_none(), "{tool} exited before it streamed");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // Where the CPU goes while it streams: the consumer's processes against the machine's.
            let consumers = self.consumer_pids(tool, run.as_ref().map(|r| r.id()));
            let cpu_before = (consumers.iter().map(|(_, pids)| cpu_of(pids)).collect::<Vec<_>>(), machine_busy_seconds());
            let scheduled_before: Vec<Scheduled> = consumers.iter().map(|(_, pids)| scheduled(pids)).collect();
            let transactions_before = transactions_so_far(self.source);
            let mut load = self.pgbench(&["-c", "4", "-j", "2", "-R", &rate.to_string(), "-T", &seconds.to_string()]).spawn().unwrap();
            let before = changes_so_far(self.source);
            let mut samples = Vec::new();
            let mut peak = 0;
            let started = Instant::now();
            while load.try_wait().unwrap().is_none() {
                let lag = sampler.query(&format!(
                    "SELECT coalesce(max(extract(epoch FROM replay_lag) * 1000), 0) FROM pg_stat_replication WHERE application_name = '{application}'"
                ));
                if let Ok(ms) = lag.parse::<f64>() {
                    samples.push(ms);
                }
                if let Some(child) = &run {
                    peak = peak.max(rss_mib(child.id()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let achieved = (changes_so_far(self.source) - before) as f64 / started.elapsed().as_secs_f64();
            let elapsed = started.elapsed().as_secs_f64();
            let shares: Vec<String> = consumers
                .iter()
                .zip(&cpu_before.0)
                .map(|((name, pids), before)| format!("{name}={:.0}%", 100.0 * (cpu_of(pids) - before) / elapsed))
                .collect();
            println!(
                "figure=lag_cpu rate={rate} tool={tool} machine_busy={:.0}% (of 2 cores: 200%) {}",
                100.0 * (machine_busy_seconds() - cpu_before.1) / elapsed,
                shares.join(" ")
            );
            // How often each process ran per source transaction, and how long it waited for a
            // core to do so: a consumer that needs many short turns per transaction suffers most
            // when more processes want a core than there are.
            let transactions = (transactions_so_far(self.source) - transactions_before).max(1) as f64;
            let turns: Vec<String> = consumers
                .iter()
                .zip(&scheduled_before)
                .map(|((name, pids), before)| {
                    let now = scheduled(pids);
                    format!(
                        "{name}={:.1}_turns/tx,{:.0}_us_waited/tx",
                        (now.turns - before.turns) as f64 / transactions,
                        (now.waited_ns - before.waited_ns) as f64 / transactions / 1000.0
                    )
                })
                .collect();
            println!("figure=lag_scheduling rate={rate} tool={tool} transactions={transactions:.0} {}", turns.join(" "));
            if let Some(mut child) = run {
                unsafe { kill(child.id() as i32, 15) };
                child.wait().unwrap();
                figures.push(Figure { figure: format!("peak_rss_streaming@{rate}tx/s"), tool: "switchyard", value: peak as f64, unit: "MiB" });
            }
            // When the worst sample came, seconds into the run: a spike at the start is the
            // process warming up, one later is the steady state.
            let worst_at = samples.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0.0, |(i, _)| i as f64 * 0.1);
            println!("figure=lag_worst rate={rate} tool={tool} at_s={worst_at:.1}");
            // A logical walsender times at most one transaction a second (its lag tracker's
            // interval), and replay_lag holds that figure until the next: the samples repeat
            // about ten times each, so the distinct values are the transactions measured.
            let distinct = samples.windows(2).filter(|pair| pair[0] != pair[1]).count() + usize::from(!samples.is_empty());
            samples.sort_by(|a, b| a.total_cmp(b));
            let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
            let (p50, p99, max) = (at(0.5), at(0.99), samples.last().copied().unwrap_or(f64::NAN));
            println!(
                "figure=lag rate={rate} tool={tool} samples={} distinct={distinct} p50_ms={p50:.1} p99_ms={p99:.1} max_ms={max:.1} source_changes_per_s={achieved:.0}",
                samples.len()
            );
            for (what, value) in [("p50", p50), ("p99", p99), ("max", max)] {
                figures.push(Figure { figure: format!("lag_{what}@{rate}tx/s"), tool, value, unit: "ms" });
            }
        }
        self.target.psql("native", "ALTER SUBSCRIPTION bench_native DISABLE");
    }

    /// Where a catch-up's time went: the CPU its processes (all started for it) have used, and
    /// the whole machine's busy share since `busy_before` (machine_busy_seconds at the start).
    fn print_catch_up_cpu(&self, tool: &str, seconds: f64, busy_before: f64, switchyard: Option<u32>) {
        let used: Vec<String> =
            self.consumer_pids(tool, switchyard).iter().map(|(name, pids)| format!("{name}_cpu_s={:.1}", cpu_of(pids))).collect();
        let busy = (machine_busy_seconds() - busy_before) / seconds * 100.0;
        println!("figure=catch_up_cpu tool={tool} wall_s={seconds:.1} machine_busy={busy:.0}% (of 2 cores: 200%) {}", used.join(" "));
    }

    /// WAL the slot's walsender decodes again before it reaches what its consumer has not yet
    /// confirmed: a slot's restart point moves only at a snapshot the source logs (every 15 s
    /// while it writes, or at a checkpoint) once the consumer confirmed past it.
    fn print_reread(&self, tool: &str, slot: &str) {
        let sql = format!("SELECT pg_wal_lsn_diff(confirmed_flush_lsn, restart_lsn) / 1048576 FROM pg_replication_slots WHERE slot_name = '{slot}'");
        let mib: f64 = self.source.psql("app", &sql).parse().unwrap_or(f64::NAN);
        println!("figure=catch_up_reread tool={tool} mib={mib:.1}");
    }

    /// After a consumer reached `goal` (its time taken), before it stops: a checkpoint logs a
    /// snapshot of running transactions past the goal, and the consumer gets a few seconds to
    /// confirm it, which moves its slot's restart point there. Stopped at once, the tool that
    /// went first in a round (right after the backlog, before any such snapshot past it) left
    /// its slot to decode that whole backlog again in the next round: 100–170 MiB, a second of
    /// the walsender's CPU, paid by whichever tool the order picked.
    fn refresh_restart_point(&self, slot: &str, goal: &str) {
        self.source.psql("app", "CHECKPOINT");
        let passed = format!("SELECT restart_lsn >= '{goal}' FROM pg_replication_slots WHERE slot_name = '{slot}'");
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.source.psql("app", &passed) != "t" {
            if Instant::now() > deadline {
                println!("note: slot {slot}'s restart point did not pass the catch-up's goal within 15 s");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The processes that move a tool's changes, looked up now.
    fn consumer_pids(&self, tool: &str, switchyard: Option<u32>) -> Vec<(&'static str, Vec<u32>)> {
        Consumers::new(tool, switchyard).find(|sql| self.source.psql("app", sql), |sql| self.target.psql("postgres", sql))
    }

    /// With `--timeline`, a timeline of the catch-up about to start on `slot`.
    fn start_timeline(&self, tool: &'static str, slot: &str, goal: &str) -> Option<Timeline> {
        self.timeline.then(|| {
            let mut source = Session::open(self.source, "app");
            Timeline::start(tool, Consumers::new(tool, None), &mut source, slot, goal, Session::open(self.target, "postgres"))
        })
    }

    fn record(&self, figures: &mut Vec<Figure>, figure: &str, tool: &'static str, value: f64, unit: &'static str, seconds: f64) {
        println!("figure={figure} tool={tool} seconds={seconds:.3} {unit}={value:.0}");
        figures.push(Figure { figure: figure.to_string(), tool, value, unit });
    }
}

/// What one catch-up round measured: the backlog's row changes, each tool's seconds, and
/// Switchyard's peak RSS (MiB).
pub struct CatchUpRound {
    pub changes: f64,
    pub seconds: Vec<(&'static str, f64)>,
    pub peak_rss: u64,
}

/// Each tool's median rate over the rounds (a single catch-up's time varies by a fifth from one
/// try to the next on this machine), and the highest peak RSS.
pub fn catch_up_medians(figures: &mut Vec<Figure>, figure: &str, rounds: &[CatchUpRound]) {
    let Some(first) = rounds.first() else { return };
    for (tool, _) in &first.seconds {
        // (changes, seconds) of each round this tool ran in.
        let tries: Vec<(f64, f64)> = rounds.iter().filter_map(|r| r.seconds.iter().find(|(t, _)| t == tool).map(|(_, s)| (r.changes, *s))).collect();
        let seconds = median(tries.iter().map(|(_, s)| *s).collect());
        let rate = median(tries.iter().map(|(changes, s)| changes / s).collect());
        println!("figure={figure} tool={tool} rounds={} median_seconds={seconds:.3} changes/s={rate:.0}", tries.len());
        figures.push(Figure { figure: figure.into(), tool, value: rate, unit: "changes/s" });
    }
    let peak = rounds.iter().map(|r| r.peak_rss).max().unwrap_or(0);
    figures.push(Figure { figure: format!("peak_rss_{figure}"), tool: "switchyard", value: peak as f64, unit: "MiB" });
}

/// The processes that move a tool's changes: its walsender on the source, whatever applies on
/// the target, and Switchyard's own process.
pub struct Consumers {
    native: bool,
    switchyard: Option<u32>,
}

impl Consumers {
    fn new(tool: &str, switchyard: Option<u32>) -> Consumers {
        Consumers { native: tool == "native", switchyard }
    }

    /// Counts Switchyard's process `pid` too.
    pub fn watch(&mut self, pid: u32) {
        self.switchyard = Some(pid);
    }

    /// The name its walsender has in `pg_stat_replication`.
    pub fn application(&self) -> &'static str {
        if self.native {
            "bench_native"
        } else {
            "switchyard"
        }
    }

    /// By group, the pids that `on_source` and `on_target` (each running a query on that
    /// server) find.
    pub fn find(&self, on_source: impl FnOnce(&str) -> String, on_target: impl FnOnce(&str) -> String) -> Vec<(&'static str, Vec<u32>)> {
        let pids = |text: String| text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>();
        let walsender =
            pids(on_source(&format!("SELECT string_agg(pid::text, ' ') FROM pg_stat_replication WHERE application_name = '{}'", self.application())));
        let applier =
            if self.native { "backend_type = 'logical replication worker'" } else { "application_name = 'switchyard' AND backend_type = 'client backend'" };
        let target = pids(on_target(&format!("SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE {applier}")));
        let mut found = vec![("walsender", walsender), ("target", target)];
        if let Some(pid) = self.switchyard {
            found.push(("switchyard", vec![pid]));
        }
        found
    }
}

/// CPU seconds (user + system) the processes have used so far.
pub fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().copied().map(cpu_seconds).sum()
}

/// What the scheduler did for some processes so far (every thread of each).
#[derive(Default)]
struct Scheduled {
    /// Nanoseconds spent runnable but waiting for a core.
    waited_ns: u64,
    /// Times they were given a core.
    turns: u64,
}

fn scheduled(pids: &[u32]) -> Scheduled {
    let mut total = Scheduled::default();
    for pid in pids {
        let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else { continue };
        for thread in threads.flatten() {
            // /proc/PID/task/TID/schedstat: time on a core, time waiting for one, turns.
            let stat = std::fs::read_to_string(thread.path().join("schedstat")).unwrap_or_default();
            let fields: Vec<u64> = stat.split_whitespace().filter_map(|v| v.parse().ok()).collect();
            total.waited_ns += fields.get(1).copied().unwrap_or(0);
            total.turns += fields.get(2).copied().unwrap_or(0);
        }
    }
    total
}

/// CPU seconds the whole machine has spent busy (all but idle and I/O wait) so far.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: f64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0.0) + fields.get(4).copied().unwrap_or(0.0);
    (total - idle) / 100.0
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
