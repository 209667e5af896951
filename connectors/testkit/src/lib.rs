//! Private, throw-away PostgreSQL clusters for Switchyard's tests and `demo`.
//!
//! Every [`PgCluster`] is its own `initdb` in a fresh temporary directory,
//! listening only on `127.0.0.1` at a port of its own, with its own Unix socket
//! directory and `wal_level=logical`.  It never touches any other server on the
//! machine (in particular not a shared one on port 5432).  Dropping the value
//! stops the server and deletes the directory.
//!
//! Binaries are found through `SWITCHYARD_PG_BIN` if set, else
//! `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
//! `initdb` refuses to run as root, so when the process runs as root the server
//! tools (`initdb`, `pg_ctl`, hence `postgres`) run as the `postgres` OS user
//! through `runuser -u postgres --`; client tools (`psql`, `pgbench`, …) run as
//! the caller.
//!
//! [`PgBouncer`] puts a private PgBouncer in front of clusters (see `pgbouncer.rs`).

use std::collections::HashSet;
use std::ffi::{CString, OsStr};
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod pgbouncer;
pub use pgbouncer::PgBouncer;

/// Extra knobs for [`PgCluster::start_with`].
#[derive(Clone, Debug, Default)]
pub struct PgOptions {
    /// Extra `postgresql.conf` settings, e.g. `("max_wal_senders", "4")`.
    /// They are written after the defaults, so they override them.
    pub settings: Vec<(String, String)>,
    /// TCP connections need `scram-sha-256` with [`PgCluster::PASSWORD`] for the
    /// `postgres` role.  The Unix socket stays `trust`.
    pub password_auth: bool,
    /// Generate a CA and a server certificate, `ssl=on`, and accept TCP
    /// connections only over TLS (`hostssl`).  See [`PgCluster::ca_cert`].
    pub tls_only: bool,
}

/// A private PostgreSQL cluster.  Drop stops it and removes its directory.
pub struct PgCluster {
    port: u16,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    ca_cert: Option<PathBuf>,
    bin_dir: PathBuf,
    /// `Some((uid, gid))` of the `postgres` OS user when server tools run through runuser.
    run_as: Option<(u32, u32)>,
    password_auth: bool,
    tls_only: bool,
    // Declared last so it is dropped after `Drop::drop` stopped the server.
    root: TempDir,
}

impl fmt::Debug for PgCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgCluster")
            .field("port", &self.port)
            .field("data_dir", &self.data_dir)
            .field("socket_dir", &self.socket_dir)
            .field("ca_cert", &self.ca_cert)
            .field("password_auth", &self.password_auth)
            .field("tls_only", &self.tls_only)
            .finish()
    }
}

/// Bind `127.0.0.1:0`, read the port the kernel chose, and release it.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("switchyard-testkit: cannot bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("switchyard-testkit: cannot read local address: {e}"))
        .port()
}

/// The shared server that must never be touched.
const SHARED_PORT: u16 = 5432;
/// How many ports to try when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// Longest Unix socket path (sun_path is 108 bytes on Linux, with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Ports handed to clusters of this process that are still alive, so that two
/// clusters started in parallel never race for the same one.
fn ports_in_use() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

fn claim_port() -> u16 {
    let mut used = ports_in_use().lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = free_port();
        if port != SHARED_PORT && used.insert(port) {
            return port;
        }
    }
}

fn release_port(port: u16) {
    if port != 0 {
        ports_in_use()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port);
    }
}

impl PgCluster {
    /// Password of the `postgres` role when [`PgOptions::password_auth`] is set.
    pub const PASSWORD: &'static str = "switchyard-test-pw";

    /// Start a cluster with default options.
    pub fn start() -> PgCluster {
        Self::start_with(PgOptions::default())
    }

    /// Start a cluster.  Panics with a message saying what failed (and the
    /// server log tail) if it cannot.
    pub fn start_with(options: PgOptions) -> PgCluster {
        let bin_dir = pg_bin_dir().clone();
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_user())
        } else {
            None
        };

        let root = make_root_dir(run_as);
        let data_dir = root.path().join("data");
        let socket_dir = root.path().join("sock");
        let log_file = data_dir.join("server.log");
        mkdir(&socket_dir, 0o755, run_as);

        // From here on the value exists, so a panic anywhere below still stops
        // whatever got started and removes the directory.
        let mut cluster = PgCluster {
            port: 0,
            data_dir,
            socket_dir,
            log_file,
            ca_cert: None,
            bin_dir,
            run_as,
            password_auth: options.password_auth,
            tls_only: options.tls_only,
            root,
        };
        cluster.init(&options);
        cluster.first_start(&options);
        cluster
    }

    /// Start a hot standby of this cluster: a base backup streaming from it, with the
    /// default options on its own port and directory.
    pub fn start_standby(&self) -> PgCluster {
        let root = make_root_dir(self.run_as);
        let data_dir = root.path().join("data");
        let socket_dir = root.path().join("sock");
        mkdir(&socket_dir, 0o755, self.run_as);
        let mut standby = PgCluster {
            port: 0,
            log_file: data_dir.join("server.log"),
            data_dir,
            socket_dir,
            ca_cert: None,
            bin_dir: self.bin_dir.clone(),
            run_as: self.run_as,
            password_auth: false,
            tls_only: false,
            root,
        };
        let port = self.port.to_string();
        let out = standby.run_server_tool(
            "pg_basebackup",
            [
                OsStr::new("-D"),
                standby.data_dir.as_os_str(),
                OsStr::new("-h"),
                self.socket_dir.as_os_str(),
                OsStr::new("-p"),
                OsStr::new(&port),
                OsStr::new("-U"),
                OsStr::new("postgres"),
                OsStr::new("--write-recovery-conf"),
                OsStr::new("--checkpoint=fast"),
                OsStr::new("--no-sync"),
            ],
        );
        if !out.status.success() {
            standby.fail("pg_basebackup", Some(&out), 0);
        }
        // The primary's log came with the backup.
        let _ = fs::remove_file(&standby.log_file);
        standby.first_start(&PgOptions::default());
        standby
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's data directory (`PGDATA`); the server log is `server.log` in it.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Directory holding the server's Unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// PEM file of the CA that signed the server certificate (only with `tls_only`).
    pub fn ca_cert(&self) -> Option<&Path> {
        self.ca_cert.as_deref()
    }

    /// `postgres://postgres@127.0.0.1:{port}/{database}`, with the password
    /// when `password_auth` is set.  No `sslmode` is added for `tls_only`
    /// clusters: libpq's default (`prefer`) works, other clients must be told
    /// to use TLS.
    pub fn url(&self, database: &str) -> String {
        self.url_at("127.0.0.1", database)
    }

    /// The same as `url`, through the cluster's Unix socket: the socket directory is the
    /// percent-encoded host, as libpq and tokio-postgres read it.
    pub fn socket_url(&self, database: &str) -> String {
        self.url_at(&percent_encode(&self.socket_dir.display().to_string()), database)
    }

    fn url_at(&self, host: &str, database: &str) -> String {
        let user = if self.password_auth {
            format!("postgres:{}", Self::PASSWORD)
        } else {
            "postgres".to_string()
        };
        format!("postgres://{user}@{host}:{}/{}", self.port, percent_encode(database))
    }

    /// `CREATE DATABASE "name"`; panics on failure.
    pub fn create_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }

    /// Run SQL (fed to `psql -X -q -At -v ON_ERROR_STOP=1` over the Unix
    /// socket, so several statements and psql meta-commands work) and return
    /// its trimmed stdout.  Panics with psql's stderr on error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql).unwrap_or_else(|e| {
            panic!(
                "switchyard-testkit: psql failed on database {database:?} (port {}):\n{e}\nSQL:\n{sql}",
                self.port
            )
        })
    }

    /// Like [`psql`](Self::psql), returning stderr (or the spawn error) on failure.
    pub fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(self.bin("psql"));
        clean_env(&mut cmd);
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres", "-d", database, "-f", "-"])
            .env("PGCONNECT_TIMEOUT", "30")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.bin("psql").display()))?;
        // Write stdin from another thread so a large script with large output
        // cannot deadlock against psql.
        let mut stdin = child.stdin.take().expect("piped stdin");
        let script = sql.to_string();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(script.as_bytes());
            let _ = stdin.write_all(b"\n");
        });
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for psql: {e}"))?;
        let _ = writer.join();
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "psql exited with {}: {}",
                out.status,
                stderr.trim()
            ))
        }
    }

    /// Path of a PostgreSQL tool (`psql`, `pgbench`, `pg_recvlogical`, …) of
    /// the same installation as the server.
    pub fn bin(&self, tool: &str) -> PathBuf {
        self.bin_dir.join(tool)
    }

    /// Stop (`-m fast`) and start again on the same port and directory.
    pub fn restart(&self) {
        self.stop_and_start("fast");
    }

    /// Crash (`-m immediate`: the server's processes quit at once, and WAL still in its
    /// buffers is lost, as in a power cut) and start again, recovering from the WAL on disk.
    pub fn crash_restart(&self) {
        self.stop_and_start("immediate");
    }

    fn stop_and_start(&self, mode: &str) {
        let out = self.run_server_tool(
            "pg_ctl",
            [
                OsStr::new("stop"),
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-m"),
                OsStr::new(mode),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
            ],
        );
        if !out.status.success() {
            self.fail("pg_ctl stop (restart)", Some(&out), 0);
        }
        let log_offset = file_len(&self.log_file);
        let out = self.pg_ctl_start();
        if !out.status.success() {
            self.fail("pg_ctl start (restart)", Some(&out), log_offset);
        }
    }

    // ----------------------------------------------------------------------

    fn init(&mut self, options: &PgOptions) {
        let mut args: Vec<std::ffi::OsString> = vec![
            "-D".into(),
            self.data_dir.clone().into(),
            "-U".into(),
            "postgres".into(),
            "--auth=trust".into(),
            "-E".into(),
            "UTF8".into(),
            "--locale=C".into(),
            "--no-sync".into(),
            "--no-instructions".into(),
        ];
        let pwfile = self.root.path().join("pwfile");
        if options.password_auth {
            write_file(&pwfile, Self::PASSWORD.as_bytes(), 0o600, self.run_as);
            let mut arg = std::ffi::OsString::from("--pwfile=");
            arg.push(&pwfile);
            args.push(arg);
        }
        let out = self.run_server_tool("initdb", &args);
        let _ = fs::remove_file(&pwfile);
        if !out.status.success() {
            self.fail("initdb", Some(&out), 0);
        }

        if options.tls_only {
            self.make_certificates();
        }
        self.write_hba();

        // Our settings live in their own file, included at the end of
        // postgresql.conf, so the port can be rewritten on retry.
        let conf = self.data_dir.join("postgresql.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .unwrap_or_else(|e| panic!("switchyard-testkit: cannot open {}: {e}", conf.display()));
        f.write_all(b"\n# added by switchyard-testkit\ninclude 'switchyard.conf'\n")
            .unwrap_or_else(|e| panic!("switchyard-testkit: cannot write {}: {e}", conf.display()));
    }

    fn write_settings(&self, options: &PgOptions) {
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            ("port".into(), self.port.to_string()),
            (
                "unix_socket_directories".into(),
                self.socket_dir.display().to_string(),
            ),
            ("wal_level".into(), "logical".into()),
            ("max_replication_slots".into(), "16".into()),
            ("max_wal_senders".into(), "16".into()),
            ("fsync".into(), "off".into()),
            ("synchronous_commit".into(), "off".into()),
            ("full_page_writes".into(), "off".into()),
            ("shared_buffers".into(), "64MB".into()),
            ("max_connections".into(), "100".into()),
            ("logging_collector".into(), "off".into()),
            ("lc_messages".into(), "C".into()),
        ];
        if self.tls_only {
            settings.push(("ssl".into(), "on".into()));
            settings.push(("ssl_cert_file".into(), "server.crt".into()));
            settings.push(("ssl_key_file".into(), "server.key".into()));
        }
        if self.password_auth {
            settings.push(("password_encryption".into(), "scram-sha-256".into()));
        }
        settings.extend(options.settings.iter().cloned());

        let mut text = String::from("# written by switchyard-testkit\n");
        for (name, value) in &settings {
            text.push_str(&format!("{name} = '{}'\n", value.replace('\'', "''")));
        }
        write_file(
            &self.data_dir.join("switchyard.conf"),
            text.as_bytes(),
            0o600,
            self.run_as,
        );
    }

    fn write_hba(&self) {
        let method = if self.password_auth {
            "scram-sha-256"
        } else {
            "trust"
        };
        let host = if self.tls_only { "hostssl" } else { "host" };
        let text = format!(
            "# written by switchyard-testkit\n\
             local all all trust\n\
             local replication all trust\n\
             {host} all all 127.0.0.1/32 {method}\n\
             {host} replication all 127.0.0.1/32 {method}\n"
        );
        write_file(
            &self.data_dir.join("pg_hba.conf"),
            text.as_bytes(),
            0o600,
            self.run_as,
        );
    }

    fn make_certificates(&mut self) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let fail = |what: &str, e: rcgen::Error| -> ! {
            panic!("switchyard-testkit: generating the TLS {what} failed: {e}")
        };
        let ca_key = KeyPair::generate().unwrap_or_else(|e| fail("CA key", e));
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| fail("CA", e));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Switchyard test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params
            .self_signed(&ca_key)
            .unwrap_or_else(|e| fail("CA certificate", e));

        let server_key = KeyPair::generate().unwrap_or_else(|e| fail("server key", e));
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap_or_else(|e| fail("server certificate", e));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.use_authority_key_identifier_extension = true;
        let server = params
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap_or_else(|e| fail("server certificate", e));

        // The key must be 0600 and owned by the server's user, or it refuses it.
        write_file(
            &self.data_dir.join("server.key"),
            server_key.serialize_pem().as_bytes(),
            0o600,
            self.run_as,
        );
        write_file(
            &self.data_dir.join("server.crt"),
            server.pem().as_bytes(),
            0o644,
            self.run_as,
        );
        let ca_path = self.root.path().join("ca.crt");
        write_file(&ca_path, ca.pem().as_bytes(), 0o644, None);
        self.ca_cert = Some(ca_path);
    }

    fn first_start(&mut self, options: &PgOptions) {
        for attempt in 1..=PORT_ATTEMPTS {
            release_port(self.port);
            self.port = claim_port();
            self.write_settings(options);
            let log_offset = file_len(&self.log_file);
            let out = self.pg_ctl_start();
            if out.status.success() {
                return;
            }
            let log = read_from(&self.log_file, log_offset);
            let port_taken =
                log.contains("could not bind") || log.contains("Address already in use");
            if port_taken && attempt < PORT_ATTEMPTS {
                // Make sure nothing half-started stays behind before retrying.
                self.stop_immediate();
                continue;
            }
            let what = if port_taken {
                format!("pg_ctl start (port taken {PORT_ATTEMPTS} times in a row)")
            } else {
                "pg_ctl start".to_string()
            };
            self.fail(&what, Some(&out), log_offset);
        }
    }

    fn pg_ctl_start(&self) -> Output {
        self.run_server_tool(
            "pg_ctl",
            [
                OsStr::new("start"),
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-l"),
                self.log_file.as_os_str(),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
            ],
        )
    }

    /// `pg_ctl stop -m immediate`, then SIGKILL if the postmaster is still there.
    fn stop_immediate(&self) {
        let pid = read_postmaster_pid(&self.data_dir);
        if pid.is_none() {
            return;
        }
        let _ = self.try_run_server_tool(
            "pg_ctl",
            [
                OsStr::new("stop"),
                OsStr::new("-D"),
                self.data_dir.as_os_str(),
                OsStr::new("-m"),
                OsStr::new("immediate"),
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("30"),
            ],
        );
        if let Some(pid) = pid {
            if process_alive(pid) {
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while process_alive(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// A server-side tool, run as the `postgres` OS user when we are root.
    fn server_command(&self, tool: &str) -> Command {
        let path = self.bin(tool);
        let mut cmd = match self.run_as {
            Some(_) => {
                let mut c = Command::new(runuser_path());
                c.args(["-u", "postgres", "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        clean_env(&mut cmd);
        // The caller's working directory may not be readable by `postgres`.
        cmd.current_dir(self.root.path())
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    fn try_run_server_tool<I, S>(&self, tool: &str, args: I) -> std::io::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.server_command(tool).args(args).output()
    }

    fn run_server_tool<I, S>(&self, tool: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.try_run_server_tool(tool, args).unwrap_or_else(|e| {
            panic!(
                "switchyard-testkit: cannot run {} (bin dir {}{}): {e}",
                tool,
                self.bin_dir.display(),
                if self.run_as.is_some() {
                    ", through runuser -u postgres"
                } else {
                    ""
                }
            )
        })
    }

    fn fail(&self, what: &str, out: Option<&Output>, log_offset: u64) -> ! {
        let mut msg = format!(
            "switchyard-testkit: {what} failed for the cluster in {} (port {})",
            self.data_dir.display(),
            self.port
        );
        if let Some(out) = out {
            msg.push_str(&format!(
                "\nexit status: {}\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let log = read_from(&self.log_file, log_offset);
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        msg.push_str(&format!(
            "\n--- server log tail ({}) ---\n{}",
            self.log_file.display(),
            if tail.is_empty() {
                "(empty)".to_string()
            } else {
                tail.join("\n")
            }
        ));
        panic!("{msg}");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_immediate();
        release_port(self.port);
        // `root` (the TempDir) is dropped after this and removes everything.
    }
}

// --------------------------------------------------------------------------
// helpers

/// Directory of the PostgreSQL binaries (cached).
fn pg_bin_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("SWITCHYARD_PG_BIN").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            if !dir.join("initdb").is_file() {
                panic!(
                    "switchyard-testkit: SWITCHYARD_PG_BIN={} has no initdb",
                    dir.display()
                );
            }
            return dir;
        }
        if let Ok(out) = Command::new("pg_config")
            .arg("--bindir")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                    return dir;
                }
            }
        }
        let mut found: Vec<(Vec<u64>, PathBuf)> = Vec::new();
        if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
            for entry in entries.flatten() {
                let bin = entry.path().join("bin");
                if !bin.join("initdb").is_file() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().to_string();
                let version: Vec<u64> = name
                    .split('.')
                    .map(|p| p.parse::<u64>().unwrap_or(0))
                    .collect();
                found.push((version, bin));
            }
        }
        found.sort();
        match found.pop() {
            Some((_, bin)) => bin,
            None => panic!(
                "switchyard-testkit: no PostgreSQL binaries found: set SWITCHYARD_PG_BIN, \
                 put pg_config on PATH, or install postgresql (/usr/lib/postgresql/*/bin)"
            ),
        }
    })
}

fn runuser_path() -> PathBuf {
    for p in [
        "/usr/sbin/runuser",
        "/sbin/runuser",
        "/usr/bin/runuser",
        "/bin/runuser",
    ] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("runuser")
}

/// uid and gid of the `postgres` OS user (cached); panics if there is none.
fn postgres_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        let name = CString::new("postgres").unwrap();
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if rc != 0 || result.is_null() {
            panic!(
                "switchyard-testkit: running as root, but there is no `postgres` OS user to run \
                 initdb/pg_ctl as (initdb refuses to run as root)"
            );
        }
        (pwd.pw_uid, pwd.pw_gid)
    })
}

/// Is every ancestor of `dir` (and `dir` itself) enterable by others?
fn traversable_by_others(dir: &Path) -> bool {
    dir.ancestors().all(|p| match fs::metadata(p) {
        Ok(m) => m.is_dir() && m.permissions().mode() & 0o001 != 0,
        Err(_) => false,
    })
}

/// Where to create cluster directories: `std::env::temp_dir()`, unless the
/// socket path would be too long there or (as root) the `postgres` user could
/// not reach it, in which case `/tmp`.
fn base_dir(as_postgres: bool) -> PathBuf {
    // "<base>/switchyard-pg-XXXXXX/sock/.s.PGSQL.65535"
    let fits = |b: &Path| {
        b.as_os_str().len() + "/switchyard-pg-XXXXXX/sock/.s.PGSQL.65535".len() <= MAX_SOCKET_PATH
    };
    let ok = |b: &Path| b.is_dir() && fits(b) && (!as_postgres || traversable_by_others(b));
    let tmp = std::env::temp_dir();
    if ok(&tmp) {
        return tmp;
    }
    let fallback = PathBuf::from("/tmp");
    if ok(&fallback) {
        return fallback;
    }
    panic!(
        "switchyard-testkit: neither {} nor /tmp can hold a cluster directory (must exist, \
         be short enough for a Unix socket path{})",
        tmp.display(),
        if as_postgres {
            ", and be traversable by the postgres user"
        } else {
            ""
        }
    );
}

fn make_root_dir(run_as: Option<(u32, u32)>) -> TempDir {
    let base = base_dir(run_as.is_some());
    let dir = tempfile::Builder::new()
        .prefix("switchyard-pg-")
        .tempdir_in(&base)
        .unwrap_or_else(|e| {
            panic!(
                "switchyard-testkit: cannot create a temporary directory in {}: {e}",
                base.display()
            )
        });
    set_mode(dir.path(), 0o755);
    if let Some((uid, gid)) = run_as {
        chown(dir.path(), uid, gid);
    }
    dir
}

fn mkdir(path: &Path, mode: u32, owner: Option<(u32, u32)>) {
    fs::create_dir(path)
        .unwrap_or_else(|e| panic!("switchyard-testkit: cannot create {}: {e}", path.display()));
    set_mode(path, mode);
    if let Some((uid, gid)) = owner {
        chown(path, uid, gid);
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32, owner: Option<(u32, u32)>) {
    fs::write(path, contents)
        .unwrap_or_else(|e| panic!("switchyard-testkit: cannot write {}: {e}", path.display()));
    set_mode(path, mode);
    if let Some((uid, gid)) = owner {
        chown(path, uid, gid);
    }
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap_or_else(|e| {
        panic!(
            "switchyard-testkit: cannot chmod {:o} {}: {e}",
            mode,
            path.display()
        )
    });
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| {
        panic!(
            "switchyard-testkit: cannot chown {} to the postgres user: {e}",
            path.display()
        )
    });
}

/// Remove libpq/server environment variables (PGHOST, PGPORT, PGDATA, …) so
/// nothing can steer a tool towards another server.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    let start = (offset as usize).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn read_postmaster_pid(data_dir: &Path) -> Option<libc::pid_t> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

fn process_alive(pid: libc::pid_t) -> bool {
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A stream of SQL statements fed to one `psql` session in a background thread until stopped:
/// a write load for tests and the demo. `next_statement(n)` gives the n-th statement.
pub struct SqlLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl SqlLoad {
    pub fn start(
        cluster: &PgCluster,
        database: &str,
        mut next_statement: impl FnMut(u64) -> String + Send + 'static,
    ) -> SqlLoad {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let mut child = std::process::Command::new(cluster.bin("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(cluster.socket_dir())
            .args(["-p", &cluster.port().to_string(), "-U", "postgres", "-d", database])
            .env("PGPASSWORD", PgCluster::PASSWORD)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("switchyard-testkit: cannot start psql for a write load");
        let handle = std::thread::spawn(move || {
            let stdin = child.stdin.as_mut().expect("piped stdin");
            let mut sent = 0u64;
            while !flag.load(Ordering::Relaxed) {
                if writeln!(stdin, "{}", next_statement(sent)).is_err() {
                    break;
                }
                sent += 1;
                if sent.is_multiple_of(20) {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            drop(child.stdin.take());
            let status = child.wait().expect("psql");
            assert!(status.success(), "switchyard-testkit: the write load's psql failed ({status})");
            sent
        });
        SqlLoad { stop, handle: Some(handle) }
    }

    /// Stops the load; returns how many statements were sent.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().expect("running").join().expect("write load thread")
    }
}

impl Drop for SqlLoad {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The seed's mixed write load on its single-tenant schema (users; orders referencing users):
/// inserts, updates, deletes and rolled-back transactions, deterministic for a given seed.
pub fn seed_statement(seed: u64, n: u64) -> String {
    let mut state = seed.wrapping_add(n).wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    state ^= state >> 29;
    let offset = (state >> 40) % 50;
    match (state >> 33) % 100 {
        0..=39 => "BEGIN; WITH u AS (INSERT INTO users (email, name) VALUES ('w' || gen_random_uuid() || '@x', 'writer') RETURNING id) INSERT INTO orders (user_id, amount, status) SELECT id, 9.99, 'new' FROM u; COMMIT;".to_string(),
        40..=74 => format!("UPDATE orders SET status = 'paid', amount = amount + 1, note = 'n{n}' WHERE id = (SELECT max(id) - {offset} FROM orders);"),
        75..=84 => format!("UPDATE users SET name = 'renamed {n}' WHERE id = (SELECT max(id) - {offset} FROM users);"),
        85..=94 => format!("DELETE FROM orders WHERE id = (SELECT max(id) - {} FROM orders);", offset * 2),
        _ => "BEGIN; INSERT INTO users (email) VALUES ('rolled back ' || gen_random_uuid()); ROLLBACK;".to_string(),
    }
}
