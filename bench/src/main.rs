//! `make bench`: Switchyard against the tools people would pick instead, on the same clusters in
//! one run. Prints one line per figure (`figure=... tool=... value=...`), a table with ratios,
//! and writes the same as JSON under target/bench-reports/.
//!
//! Figures: the initial copy (Switchyard through the tenantize transform, pgcopydb clone, native
//! logical replication's initial sync, pg_dump | pg_restore, and bare COPYs of the same rows into
//! the single-tenant and the multi-tenant tables as the limits); a full verification pass
//! (against pgcopydb compare data's checksum query); the catch-up on a backlog (against native logical replication, with pg_recvlogical as the
//! walsender's limit); steady-state lag under pgbench at fixed rates; peak RSS in each phase.
//!
//! Flags: `switchyard-bench --help` (the `Args` below); `--profile` is explained in profile.rs,
//! `--timeline` in timeline.rs.

mod copies;
mod profile;
mod session;
mod stream;
mod timeline;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use switchyard_testkit::PgCluster;

/// How every tool reaches the clusters: all of them the same way in one run.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Transport {
    /// The clusters' Unix sockets: on one machine, what the walsender's sends cost (on the
    /// cores the apply needs too) depends on the transport.
    Socket,
    /// Loopback TCP, as a source on another host is reached.
    Tcp,
}

impl Transport {
    pub fn url(self, cluster: &PgCluster, database: &str) -> String {
        match self {
            Transport::Socket => cluster.socket_url(database),
            Transport::Tcp => cluster.url(database),
        }
    }

    /// The host for libpq's `-h` and key-value connection strings.
    pub fn host(self, cluster: &PgCluster) -> String {
        match self {
            Transport::Socket => cluster.socket_dir().display().to_string(),
            Transport::Tcp => "127.0.0.1".into(),
        }
    }

    /// libpq's key-value form, as a subscription's CONNECTION takes it.
    pub fn conninfo(self, cluster: &PgCluster, database: &str) -> String {
        format!("host={} port={} dbname={database} user=postgres", self.host(cluster), cluster.port())
    }

    pub fn name(self) -> &'static str {
        match self {
            Transport::Socket => "unix_socket",
            Transport::Tcp => "tcp",
        }
    }
}

pub struct Figure {
    figure: String,
    tool: &'static str,
    value: f64,
    unit: &'static str,
}

/// Gives the fresh target cluster the WAL segments a running server would have to recycle.
/// Without them the first tool's copy pays for creating (and zero-filling) every segment it
/// writes and the tools after it do not: measured at S=5, the same copy took 9.5 s on a fresh
/// cluster and 5.5–5.8 s on the next runs.
fn warm_wal(target: &PgCluster, scale: u64) {
    target.psql(
        "postgres",
        &format!(
            "CREATE TABLE wal_warmup AS SELECT g, repeat('x', 100) AS filler FROM generate_series(1, {}) g;
             DROP TABLE wal_warmup; CHECKPOINT;",
            scale.min(4) * 2_000_000
        ),
    );
}

/// Touches every page of the target's shared buffers once. A fresh server's shared memory is
/// mapped but not yet backed: the first tool to fill the buffers paid the kernel for faulting
/// in and zeroing each page (a fifth of the target's CPU in Switchyard's copy, which runs
/// first), the tools after it did not.
fn warm_buffers(target: &PgCluster) {
    let pages: i64 = target.psql("postgres", "SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers'").parse().unwrap();
    // Four rows of 2,000 uncompressed bytes to a page; read in with pg_prewarm, which (unlike a
    // scan) does not recycle a small ring of buffers.
    target.psql(
        "postgres",
        &format!(
            "CREATE EXTENSION IF NOT EXISTS pg_prewarm;
             CREATE TABLE buffers_warmup (filler text);
             ALTER TABLE buffers_warmup ALTER COLUMN filler SET STORAGE PLAIN;
             INSERT INTO buffers_warmup SELECT repeat('x', 2000) FROM generate_series(1, {});
             SELECT pg_prewarm('buffers_warmup', 'buffer');
             DROP TABLE buffers_warmup; DROP EXTENSION pg_prewarm; CHECKPOINT;",
            pages * 4 + 4096
        ),
    );
}

/// The `[snapshot] parallel` of a pipeline file: the peers' copies get the same parallelism.
fn copy_parallelism(pipeline: &Path) -> usize {
    let text = std::fs::read_to_string(pipeline).unwrap();
    let file = switchyard::config::parse_str(&text, &|_| Some("postgres://unused".into())).expect("the bench's pipeline file parses");
    file.snapshot.parallel
}

/// The log level of the pipelines the bench runs: warn, unless BENCH_SWITCHYARD_LOG says
/// otherwise (=info shows where a copy's time went, =debug where a lag spike went).
pub fn pipeline_log() -> String {
    std::env::var("BENCH_SWITCHYARD_LOG").unwrap_or_else(|_| "warn".into())
}

/// Switchyard against the tools people would pick instead (pgcopydb, native logical
/// replication, pg_dump, pg_recvlogical, bare COPY), on the same private clusters in one run.
/// Prints one line per figure, a table with ratios, and the same as JSON under
/// target/bench-reports/. Timings are noisy on a small machine: compare figures of one run.
#[derive(clap::Parser)]
#[command(name = "switchyard-bench")]
struct Args {
    /// Table sizes: S×100k users, S×1M orders.
    #[arg(long, default_value_t = 1, value_name = "S")]
    scale: u64,
    /// Seconds of steady load per rate for the lag figures; 0 leaves them out.
    #[arg(long, default_value_t = 60, value_name = "N")]
    lag_seconds: u64,
    /// The pgbench rates (transactions/s) the lag is measured at.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000", value_name = "TX_PER_S,...")]
    rates: Vec<u64>,
    /// The catch-up again with `[apply] parallel = N` on a second backlog; 1 leaves it out.
    #[arg(long, default_value_t = 2, value_name = "N")]
    lanes: usize,
    /// Leave out the snapshot peers the stream figures do not need (quick iterations; a full
    /// run is what counts).
    #[arg(long)]
    skip_peers: bool,
    /// Leave out the catch-up and lag figures.
    #[arg(long)]
    skip_stream: bool,
    /// Rounds of the snapshot figures: every tool copies once per round, and the median of its
    /// rounds counts (a copy's time varies by a tenth from one try to the next here).
    #[arg(long, default_value_t = 3, value_name = "N")]
    copy_rounds: usize,
    /// Rounds of the catch-up figures: a fresh backlog per round, every tool catching up on it
    /// in turn, and the median of its rounds counts (one catch-up's time varies by a fifth here).
    #[arg(long, default_value_t = 3, value_name = "N")]
    catch_up_rounds: usize,
    /// How every tool connects to the clusters (Switchyard, the peers, pg_recvlogical, the
    /// bare COPYs): TCP, as a source on another host is reached.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// The catch-up rounds again with every tool over these transports too (figure
    /// `catch_up_<transport>`): on one machine the walsender's cost, and the pg_recvlogical
    /// ceiling, depend on it. The flag with no value leaves them out.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 0.., default_value = "socket", value_name = "TRANSPORT,...")]
    catch_up_also_over: Vec<Transport>,
    /// The Switchyard binary to measure (to compare two builds, run each in turn).
    #[arg(long, value_name = "PATH")]
    switchyard: Option<PathBuf>,
    /// Record Switchyard's copy and each catch-up with perf and print where each process's time
    /// went (needs `make deps-bench`; the sampling perturbs that run's timings).
    #[arg(long)]
    profile: bool,
    /// Print each catch-up's course in quarter seconds: the share of the backlog applied, and
    /// the cores its walsender, target backend and Switchyard kept busy (where a run's average
    /// hides a phase that another process bounds).
    #[arg(long)]
    timeline: bool,
}

fn main() {
    let Args { scale, lag_seconds, rates, lanes, skip_peers, skip_stream, copy_rounds, catch_up_rounds, transport, catch_up_also_over, switchyard, profile, timeline } = clap::Parser::parse();
    let switchyard = switchyard.unwrap_or_else(release_binary);
    // Commits flushed at once, as in production: lag is then the pipeline's, not the WAL writer's.
    // Shared buffers sized as a production server's would be, to hold the working set (the
    // test clusters' 64 MB is smaller than one copy of the orders table and its key): with
    // less, every tool's apply spends most of its time moving pages through the OS cache.
    let buffers = || ("shared_buffers".to_string(), "1GB".to_string());
    let source = PgCluster::start_with(switchyard_testkit::PgOptions {
        settings: vec![("synchronous_commit".into(), "on".into()), buffers()],
        ..Default::default()
    });
    let target = PgCluster::start_with(switchyard_testkit::PgOptions {
        settings: vec![
            ("max_sync_workers_per_subscription".into(), "4".into()),
            ("max_logical_replication_workers".into(), "8".into()),
            // The launcher starts a subscription's worker at most once per this interval (5 s
            // by default): the second subscription's copy waited for it.
            ("wal_retrieve_retry_interval".into(), "100ms".into()),
            buffers(),
        ],
        ..Default::default()
    });
    source.create_database("app");
    source.psql("app", switchyard::demo::SOURCE_SCHEMA);
    let (users, orders) = (scale * 100_000, scale * 1_000_000);
    eprintln!("loading {users} users and {orders} orders ...");
    source.psql(
        "app",
        &format!(
            "INSERT INTO users (email, name) SELECT 'user' || g || '@example.com', 'User ' || g FROM generate_series(1, {users}) g;
             INSERT INTO orders (user_id, amount, status, note) SELECT 1 + (g % {users}), (g % 100000) / 100.0, 'new', 'order ' || g FROM generate_series(1, {orders}) g;
             VACUUM ANALYZE;"
        ),
    );
    let rows = (users + orders) as f64;
    let megabytes: f64 = source
        .psql("app", "SELECT (pg_total_relation_size('users') + pg_total_relation_size('orders')) / 1048576.0")
        .parse()
        .unwrap();
    let mut figures = Vec::new();

    warm_wal(&target, scale);
    warm_buffers(&target);

    // Switchyard: through the tenantize transform into the multi-tenant schema.
    target.create_database("switchyard");
    target.psql("switchyard", &switchyard::demo::target_schema());
    let dir = tempdir();
    let pipeline = dir.join("tenantize.toml");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/tenantize.toml"), &pipeline).unwrap();
    // The peers' copies and the bare COPYs get the same parallelism as Switchyard's.
    let jobs = copy_parallelism(&pipeline);
    copies::settle(&source, &target);
    let mut samples = copies::Samples::default();
    let recording = profile::start(profile, &dir, "snapshot");
    let mut peak_rss = 0;
    // Under --profile, the backends that served the copy, seen while they lived.
    let mut copy_backends =
        recording.as_ref().map(|_| (session::Session::open(&source, "app"), session::Session::open(&target, "switchyard"), BTreeSet::new(), BTreeSet::new()));
    let env = [("SOURCE_URL", transport.url(&source, "app")), ("TARGET_URL", transport.url(&target, "switchyard"))];
    let (seconds, mut run) = copies::switchyard_copy(&switchyard, &pipeline, &env, &target, "switchyard", |run| {
        peak_rss = peak_rss.max(rss_mib(run.id()));
        if let Some((source_session, target_session, on_source, on_target)) = &mut copy_backends {
            on_source.extend(switchyard_backends(source_session));
            on_target.extend(switchyard_backends(target_session));
        }
    });
    samples.push("switchyard", 0, seconds);
    let pid = run.id();
    if let (Some(recording), Some((_, _, on_source, on_target))) = (recording, copy_backends) {
        let groups = [("source", on_source.into_iter().collect()), ("target", on_target.into_iter().collect()), ("switchyard", vec![pid])];
        recording.finish("snapshot", "switchyard", &groups, &[("target", profile::SNAPSHOT_TARGET)]);
    }
    peak_rss = peak_rss.max(rss_mib(pid));
    println!("figure=peak_rss_snapshot tool=switchyard mib={peak_rss}");

    // Continuous verification: its first full pass, then the incremental pass after 10k changes
    // in the demo's write mix.
    let status = || -> serde_json::Value {
        let out = Command::new(&switchyard)
            .args(["status", "--json"])
            .arg(&pipeline)
            .env("SOURCE_URL", transport.url(&source, "app"))
            .env("TARGET_URL", transport.url(&target, "switchyard"))
            .output()
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["verification"].clone()
    };
    let wait = |done: &dyn Fn(&serde_json::Value) -> bool| loop {
        let state = status();
        if done(&state) {
            return state;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let full = wait(&|v| v["full_passes"].as_i64().unwrap_or(0) >= 1);
    let full_seconds = full["full_pass_seconds"].as_f64().unwrap();
    let before_state = status();
    let before = before_state["incremental_seconds"].as_f64().unwrap();
    let rows_before = before_state["incremental_rows"].as_i64().unwrap();
    let changes: String = (0..10_000).map(|n| switchyard_testkit::seed_statement(7, n) + "\n").collect();
    source.psql("app", &changes);
    let goal = source.psql("app", "SELECT pg_current_wal_insert_lsn()");
    while source.psql("app", &format!("SELECT confirmed_flush_lsn >= '{goal}' FROM pg_replication_slots WHERE slot_name = 'switchyard_tenantize'")) != "t" {
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = wait(&|v| v["oldest_unverified_micros"].is_null() && v["incremental_seconds"].as_f64().unwrap_or(0.0) > before);
    let incremental = after["incremental_seconds"].as_f64().unwrap() - before;
    let incremental_rows = after["incremental_rows"].as_i64().unwrap() - rows_before;
    let full_rows = after["full_pass_rows"].as_i64().unwrap();
    // Cost is what the pass reads; its wall time also holds the wait for the stream to catch up.
    let incremental_share = 100.0 * incremental_rows as f64 / full_rows as f64;
    println!(
        "figure=verify_incremental tool=switchyard full_pass_rows={full_rows} incremental_rows={incremental_rows} share={incremental_share:.1}% \
         full_pass_seconds={full_seconds:.3} incremental_seconds={incremental:.3}"
    );
    unsafe { kill(pid as i32, 15) };
    run.wait().unwrap();

    // The peers' copies, then more rounds of every copy: the median of each tool's counts.
    let copier = copies::Copies { source: &source, target: &target, transport, switchyard: &switchyard, dir: &dir, jobs, skip_peers };
    let plain_pipeline = copier.round(0, &mut samples);
    for round in 1..copy_rounds.max(1) {
        samples.push("switchyard", round, copier.tenantize_again(round, &pipeline));
        copier.round(round, &mut samples);
    }
    for (tool, seconds, rounds) in samples.medians() {
        println!("figure=snapshot tool={tool} rounds={rounds} median_seconds={seconds:.3} rows_per_s={:.0} mb_per_s={:.1}", rows / seconds, megabytes / seconds);
        figures.push(Figure { figure: "snapshot".into(), tool, value: rows / seconds, unit: "rows/s" });
    }

    // Verification: Switchyard's pass vs `pgcopydb compare data`. Debian's pgcopydb 0.10 predates
    // that command, so its per-table checksum query (pgcopydb's schema.c) is run here the way it
    // runs it: every table at once, source and target concurrently.
    let mut record = |figure: &str, tool: &'static str, seconds: f64| {
        println!("figure={figure} tool={tool} seconds={seconds:.3} rows_per_s={:.0} mb_per_s={:.1}", rows / seconds, megabytes / seconds);
        figures.push(Figure { figure: figure.to_string(), tool, value: rows / seconds, unit: "rows/s" });
    };
    let checksum = |table: &str, columns: &str| {
        format!("SELECT count(1), md5(format('%s-%s', sum(hashtext(({columns})::text)::bigint), count(1)))::uuid FROM ONLY {table}")
    };
    let tables = [("users", "id, email, name, created_at"), ("orders", "id, user_id, amount, status, note")];
    // Switchyard's one-shot pass over its target (its pipeline stopped, the source idle): the
    // checksum pass's wall time, and the whole command's with its integrity checks.
    let switchyard_pass = || {
        let started = Instant::now();
        let verify = Command::new(&switchyard)
            .args(["verify", "--json"])
            .arg(&pipeline)
            .env("SOURCE_URL", transport.url(&source, "app"))
            .env("TARGET_URL", transport.url(&target, "switchyard"))
            .env("SWITCHYARD_LOG", pipeline_log())
            .output()
            .unwrap();
        let total = started.elapsed().as_secs_f64();
        // Its log, when asked for (BENCH_SWITCHYARD_LOG): where a pass's time went.
        if std::env::var_os("BENCH_SWITCHYARD_LOG").is_some() {
            eprint!("{}", String::from_utf8_lossy(&verify.stderr));
        }
        assert!(verify.status.success(), "verify found differences: {}", String::from_utf8_lossy(&verify.stdout));
        let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
        (report["checksum_seconds"].as_f64().unwrap(), total)
    };
    // pgcopydb's query over native's copy of the same rows: every table at once, source and
    // target concurrently.
    let peer_pass = || {
        let started = Instant::now();
        std::thread::scope(|s| {
            for (table, columns) in tables {
                let sql = checksum(table, columns);
                let (source, target, sql2) = (&source, &target, sql.clone());
                s.spawn(move || source.psql("app", &sql));
                s.spawn(move || target.psql("native", &sql2));
            }
        });
        started.elapsed().as_secs_f64()
    };
    // Autovacuum would visit the freshly copied tables at some moment of the passes and weigh
    // on whichever tool ran then; vacuumed now, it weighs on neither. One untimed pass each
    // first, so neither finds its tables colder than the other's (the copies ran in between).
    // Then the passes alternate which tool goes first, so the host's drift falls on both; the
    // median of each counts.
    target.psql("switchyard", "VACUUM ANALYZE");
    target.psql("native", "VACUUM ANALYZE");
    copies::settle(&source, &target);
    switchyard_pass();
    peer_pass();
    let (mut switchyard_passes, mut peer_passes) = (Vec::new(), Vec::new());
    for pass in 0..VERIFY_PASSES {
        if pass % 2 == 0 {
            switchyard_passes.push(switchyard_pass());
            peer_passes.push(peer_pass());
        } else {
            peer_passes.push(peer_pass());
            switchyard_passes.push(switchyard_pass());
        }
    }
    record("verify", "switchyard", median(switchyard_passes.iter().map(|p| p.0).collect()));
    record("verify+integrity", "switchyard", median(switchyard_passes.iter().map(|p| p.1).collect()));
    record("verify", "pgcopydb_compare_query", median(peer_passes));

    // The change stream: catch-up and lag, on the tenantize pipeline (verification off, as the
    // peers do none) and the native subscription, both left in place above.
    let streaming = dir.join("streaming.toml");
    std::fs::write(&streaming, std::fs::read_to_string(&pipeline).unwrap().replace("continuous = true", "continuous = false")).unwrap();
    let mut stream = stream::Stream {
        source: &source,
        target: &target,
        transport,
        switchyard: &switchyard,
        pipeline: streaming,
        dir: &dir,
        users,
        orders,
        plain: plain_pipeline,
        profile,
        timeline,
    };
    if !skip_stream {
        let mut catch_up = |stream: &stream::Stream, figure: &str, with_plain: bool| {
            let rounds: Vec<_> = (0..catch_up_rounds.max(1)).map(|round| stream.catch_up_round(scale * 100_000, round, with_plain)).collect();
            stream::catch_up_medians(&mut figures, figure, &rounds);
        };
        catch_up(&stream, "catch_up", true);
        for other in catch_up_also_over.iter().filter(|t| **t != transport) {
            stream.switch_transport(*other);
            // The plain pipeline's file names the run's transport: left out here.
            catch_up(&stream, &format!("catch_up_{}", other.name()), false);
            stream.switch_transport(transport);
        }
        if lanes > 1 {
            stream.catch_up_lanes(&mut figures, scale * 100_000, lanes);
        }
        for rate in rates.iter().filter(|_| lag_seconds > 0) {
            stream.lag(&mut figures, *rate, lag_seconds);
        }
    }

    figures.push(Figure { figure: "peak_rss_snapshot".into(), tool: "switchyard", value: peak_rss as f64, unit: "MiB" });
    figures.push(Figure { figure: "incremental".into(), tool: "switchyard", value: incremental_share, unit: "% rows of full" });
    report(&figures, scale);
}

/// Backends serving Switchyard on the session's server, with the parallel workers they lead.
fn switchyard_backends(session: &mut session::Session) -> Vec<u32> {
    session
        .query(
            "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE application_name = 'switchyard'
                OR leader_pid IN (SELECT pid FROM pg_stat_activity WHERE application_name = 'switchyard')",
        )
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

fn report(figures: &[Figure], scale: u64) {
    let value = |figure: &str, tool: &str| figures.iter().find(|f| f.figure == figure && f.tool == tool).map(|f| f.value);
    println!("\n{:<22} {:<22} {:>16}  {:>12}", "figure", "tool", "value", "switchyard ÷");
    for f in figures {
        let ours = value(&f.figure, "switchyard").unwrap_or(f64::NAN);
        // Ratios where more is better; lag and memory are read as they are.
        let ratio = if f.tool == "switchyard" || !f.unit.ends_with("/s") { String::new() } else { format!("{:.2}×", ours / f.value) };
        println!("{:<22} {:<22} {:>9.0} {:<8} {:>10}", f.figure, f.tool, f.value, f.unit, ratio);
    }
    let targets = targets(figures);
    println!("\n{:<48} {:>10}  goal", "issue 5's targets", "this run");
    for (what, value, goal) in &targets {
        println!("{what:<48} {value:>10.2}  {goal}");
    }
    let json: Vec<_> = figures
        .iter()
        .map(|f| serde_json::json!({ "figure": f.figure, "tool": f.tool, "value": f.value, "unit": f.unit }))
        .collect();
    let targets: Vec<_> = targets.iter().map(|(what, value, goal)| serde_json::json!({ "target": what, "value": value, "goal": goal })).collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-reports");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("bench-s{scale}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&serde_json::json!({ "scale": scale, "figures": json, "targets": targets })).unwrap()).unwrap();
    println!("\nwritten to {}", path.display());
}

/// The ratios and figures issue 5 sets goals for, as this run measured them (NaN where a figure
/// was left out): what, value, goal. "Same tables" lines compare tools doing the same work.
fn targets(figures: &[Figure]) -> Vec<(String, f64, &'static str)> {
    let value = |figure: &str, tool: &str| figures.iter().find(|f| f.figure == figure && f.tool == tool).map_or(f64::NAN, |f| f.value);
    let ratio = |figure: &str, ours: &str, theirs: &str| value(figure, ours) / value(figure, theirs);
    let worst_rss = figures.iter().filter(|f| f.figure.starts_with("peak_rss")).map(|f| f.value).fold(f64::NAN, f64::max);
    vec![
        ("snapshot: switchyard ÷ pgcopydb".into(), ratio("snapshot", "switchyard", "pgcopydb"), "≥ 1.3"),
        ("snapshot: switchyard ÷ native".into(), ratio("snapshot", "switchyard", "native"), "≥ 1.1"),
        ("  same tables: switchyard ÷ native_tenantized".into(), ratio("snapshot", "switchyard", "native_tenantized"), ""),
        ("  same tables: switchyard_plain ÷ native".into(), ratio("snapshot", "switchyard_plain", "native"), ""),
        ("catch-up: switchyard ÷ native".into(), ratio("catch_up", "switchyard", "native"), "≥ 2"),
        ("catch-up: switchyard ÷ pg_recvlogical".into(), ratio("catch_up", "switchyard", "pg_recvlogical"), "≥ 0.7"),
        ("  same tables: switchyard_plain ÷ native".into(), ratio("catch_up", "switchyard_plain", "native"), ""),
        ("  over Unix sockets: switchyard ÷ native".into(), ratio("catch_up_unix_socket", "switchyard", "native"), ""),
        ("  over Unix sockets: switchyard ÷ pg_recvlogical".into(), ratio("catch_up_unix_socket", "switchyard", "pg_recvlogical"), ""),
        ("verify: switchyard ÷ pgcopydb's query".into(), ratio("verify", "switchyard", "pgcopydb_compare_query"), "≥ 2"),
        ("lag p99 at 1000 tx/s, ms".into(), value("lag_p99@1000tx/s", "switchyard"), "≤ 20"),
        ("lag max at 2000 tx/s, ms".into(), value("lag_max@2000tx/s", "switchyard"), "bounded"),
        ("peak RSS, worst phase, MiB".into(), worst_rss, "≤ 256"),
    ]
}

/// Verification passes timed per tool; the median counts.
const VERIFY_PASSES: usize = 3;

/// The middle value, or the mean of the two middle ones for an even count: taking the upper of
/// two would pick the slower round's seconds but the faster round's rate.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => values[middle],
        _ => (values[middle - 1] + values[middle]) / 2.0,
    }
}

fn release_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/switchyard");
    assert!(path.exists(), "build it first: cargo build --release (make bench does)");
    path
}

pub fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok()))
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

extern "C" {
    pub fn kill(pid: i32, signal: i32) -> i32;
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }

    #[test]
    fn median_of_two_rounds_is_their_mean_for_seconds_and_rates_alike() {
        // Two catch-up rounds of 1,000 changes: 2 s and 4 s.
        let seconds = median(vec![4.0, 2.0]);
        let rate = median(vec![1000.0 / 4.0, 1000.0 / 2.0]);
        assert_eq!(seconds, 3.0);
        assert_eq!(rate, 375.0);
        assert!(median(Vec::new()).is_nan());
    }
}
