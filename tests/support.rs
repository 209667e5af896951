use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use switchyard_testkit::PgCluster;

pub const TENANT: &str = "00000000-0000-0000-0000-000000000001";

/// A source and a target cluster, each with an `app` database.
pub struct Pair {
    pub source: PgCluster,
    pub target: PgCluster,
    pub dir: tempfile::TempDir,
}

impl Pair {
    pub fn start() -> Pair {
        Pair::start_with(&[], &[])
    }

    /// A pair whose source and target get these extra server settings.
    pub fn start_with(source_settings: &[(&str, &str)], target_settings: &[(&str, &str)]) -> Pair {
        let start = |settings: &[(&str, &str)]| {
            PgCluster::start_with(switchyard_testkit::PgOptions {
                settings: settings.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect(),
                ..Default::default()
            })
        };
        let (source, target) = (start(source_settings), start(target_settings));
        source.create_database("app");
        target.create_database("app");
        Pair { source, target, dir: tempfile::tempdir().unwrap() }
    }

    /// Writes a pipeline file whose source/target URLs point at this pair.
    pub fn pipeline(&self, name: &str, body: &str) -> PathBuf {
        let text = format!(
            "[pipeline]\nname = \"{name}\"\n\n[source]\ntype = \"postgres\"\nurl = \"{}\"\n{}\n",
            self.source.url("app"),
            body.replace("TARGET_URL", &self.target.url("app"))
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Waits until everything committed on the source so far is applied on the target.
    pub fn wait_caught_up(&self, slot: &str, process: &mut Switchyard) {
        wait_caught_up(&self.source, &self.target, slot, process);
    }
}

/// Waits until the pipeline streams (its copy is done) and its slot has confirmed everything
/// committed on the source so far.
pub fn wait_caught_up(source: &PgCluster, target: &PgCluster, slot: &str, process: &mut Switchyard) {
    // The insert position: with synchronous_commit off, commits may not be written yet.
    let goal = source.psql("app", "SELECT pg_current_wal_insert_lsn()");
    let deadline = Instant::now() + Duration::from_secs(120);
    let pipeline = slot.trim_start_matches("switchyard_");
    loop {
        let reached = source.psql(
            "app",
            &format!("SELECT coalesce(confirmed_flush_lsn >= '{goal}', false) FROM pg_replication_slots WHERE slot_name = '{slot}'"),
        );
        if reached == "t" {
            let phase = target.try_psql("app", &format!("SELECT phase FROM switchyard.pipelines WHERE name = '{pipeline}'"));
            if phase.as_deref() == Ok("streaming") {
                return;
            }
        }
        process.assert_running();
        assert!(Instant::now() < deadline, "not caught up with {goal} in 120 s; log:\n{}", process.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `switchyard` process with its output captured to a file.
pub struct Switchyard {
    child: Option<Child>,
    log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

impl Switchyard {
    pub fn spawn(args: &[&str], pipeline: &Path) -> Switchyard {
        Switchyard::spawn_with(args, &[], pipeline)
    }

    /// `switchyard ARGS PIPELINE` with extra environment variables.
    pub fn spawn_with(args: &[&str], env: &[(&str, &str)], pipeline: &Path) -> Switchyard {
        let log = pipeline.with_extension(format!("{}.log", rand_suffix()));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary())
            .args(args)
            .arg(pipeline)
            .envs(env.iter().copied())
            .env("SWITCHYARD_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Switchyard { child: Some(child), log }
    }

    pub fn run(pipeline: &Path) -> Switchyard {
        Switchyard::spawn(&["run"], pipeline)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the log (every 5 ms, up to 60 s) until `seen` holds for it; `what` names it if not.
    pub fn wait_for_log(&self, what: &str, seen: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !seen(&self.log()) {
            assert!(std::time::Instant::now() < deadline, "{what}; log:\n{}", self.log());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("switchyard exited with {status}; log:\n{}", self.log());
        }
    }

    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        unsafe { libc_kill(self.pid() as i32, 15) };
        self.exit_within(60, "did not stop on SIGTERM").0
    }

    /// The exit status and log once it exits by itself, failing the test (`why`) if it runs
    /// `seconds` longer.
    pub fn exit_within(mut self, seconds: u64, why: &str) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "switchyard {why}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.take().unwrap().wait().unwrap();
        (status, self.log())
    }
}

impl Drop for Switchyard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Runs a `switchyard` command to completion.
pub fn switchyard(args: &[&str], pipeline: &Path) -> (std::process::ExitStatus, String) {
    let output = Command::new(binary()).args(args).arg(pipeline).stdin(Stdio::null()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status, text)
}

/// The seed's single-tenant schema on the source and the multi-tenant one on the target.
pub fn seed_schemas(pair: &Pair) {
    pair.source.psql("app", switchyard::demo::SOURCE_SCHEMA);
    pair.target.psql("app", &switchyard::demo::target_schema());
}

pub const TENANTIZE: &str = r#"tables = ["public.users", "public.orders"]

[target]
type = "postgres"
url = "TARGET_URL"

[[transform]]
type = "attach_column"
column = "tenant_id"
value = "00000000-0000-0000-0000-000000000001"

[snapshot]
chunk_rows = 5000
parallel = 2
"#;

pub fn load_rows(pair: &Pair, users: u64, orders_per_user: u64) {
    pair.source.psql(
        "app",
        &format!(
            "INSERT INTO users (email, name) SELECT 'user' || g || '@example.com', 'User ' || g FROM generate_series(1, {users}) g;
             INSERT INTO orders (user_id, amount, status) SELECT 1 + (g % {users}), (g % 1000) / 7.0, 'new' FROM generate_series(1, {}) g;",
            users * orders_per_user
        ),
    );
}

/// The source's rows and the target's rows of this tenant, as text, in key order.
pub fn assert_tenantized_equal(pair: &Pair) {
    for (table, columns) in [("users", "id, email, name, created_at"), ("orders", "id, user_id, amount, status, note")] {
        let rows = |cluster: &PgCluster, filter: &str| {
            cluster.psql("app", &format!("SELECT t::text FROM (SELECT {columns} FROM {table} {filter}) t ORDER BY id"))
        };
        let source = rows(&pair.source, "");
        let target = rows(&pair.target, &format!("WHERE tenant_id = '{TENANT}'"));
        assert_same_rows(table, &source, &target);
    }
}

/// Compares two row listings, naming the first differing rows (shortened) when they differ.
pub fn assert_same_rows(what: &str, source: &str, target: &str) {
    if source == target {
        return;
    }
    let short = |line: &str| line.chars().take(160).collect::<String>();
    let a: std::collections::BTreeSet<&str> = source.lines().collect();
    let b: std::collections::BTreeSet<&str> = target.lines().collect();
    let missing: Vec<String> = a.difference(&b).take(5).map(|l| short(l)).collect();
    let extra: Vec<String> = b.difference(&a).take(5).map(|l| short(l)).collect();
    panic!(
        "{what} differs: source has {} rows, target {}; only on the source: {missing:#?}; only on the target: {extra:#?}",
        source.lines().count(),
        target.lines().count()
    );
}

/// The seed's mixed write load on the source until finished.
pub struct Writer(switchyard_testkit::SqlLoad);

impl Writer {
    pub fn start(cluster: &PgCluster, seed: u64) -> Writer {
        Writer(switchyard_testkit::SqlLoad::start(cluster, "app", move |n| switchyard_testkit::seed_statement(seed, n)))
    }

    /// Stops writing; returns how many statements were sent.
    pub fn finish(self) -> u64 {
        self.0.finish()
    }
}

impl Switchyard {
    /// `switchyard run [extra args] PIPELINE` with extra environment variables.
    pub fn run_with(extra: &[&str], env: &[(&str, &str)], pipeline: &Path) -> Switchyard {
        let args: Vec<&str> = std::iter::once("run").chain(extra.iter().copied()).collect();
        Switchyard::spawn_with(&args, env, pipeline)
    }
}

/// Waits until `sql` on `cluster` prints `want`, failing with the process log after `seconds`.
pub fn wait_for(cluster: &PgCluster, sql: &str, want: &str, seconds: u64, process: &mut Switchyard) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if cluster.try_psql("app", sql).as_deref() == Ok(want) {
            return;
        }
        process.assert_running();
        assert!(Instant::now() < deadline, "{sql} did not give {want:?} within {seconds} s; log:\n{}", process.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request on loopback; returns the status code and the body.
pub fn http(method: &str, address: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Waits until the HTTP API answers on `address`.
pub fn wait_for_api(address: &str, process: &mut Switchyard) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(address).is_err() {
        process.assert_running();
        assert!(Instant::now() < deadline, "the API did not listen on {address}; log:\n{}", process.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}
