//! A private PgBouncer in front of [`PgCluster`]s, for cutover tests.
//!
//! Every [`PgBouncer`] is its own `pgbouncer` process with its own temporary
//! directory (`pgbouncer.ini`, `userlist.txt`, `pgbouncer.log`, pid file and
//! Unix socket), listening on `127.0.0.1` at a free port.  It never reads
//! `/etc/pgbouncer` and does not care whether the Debian package's own
//! service runs.  Dropping the value kills the process and deletes the
//! directory.
//!
//! The binary is `SWITCHYARD_PGBOUNCER` if set, else `/usr/sbin/pgbouncer`
//! (Debian; not on a normal user's PATH), else `pgbouncer` on PATH.
//! pgbouncer refuses to run as root, so as root it runs as the `postgres` OS
//! user, like the clusters' servers.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tempfile::TempDir;

use super::{
    claim_port, make_root_dir, percent_encode, postgres_user, read_from, release_port, write_file,
    PgCluster, PORT_ATTEMPTS,
};

/// A private PgBouncer.  Drop kills it and removes its directory.
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    config: PathBuf,
    log_file: PathBuf,
    child: Option<Child>,
    // Declared last so it is dropped after `Drop::drop` killed the process.
    root: TempDir,
}

impl PgBouncer {
    /// The one user clients and the admin console log in as (no password).
    pub const USER: &'static str = "postgres";

    /// Start a bouncer with one `[databases]` entry per `(name clients use,
    /// cluster, real database name)`.
    pub fn start(entries: &[(&str, &PgCluster, &str)]) -> anyhow::Result<PgBouncer> {
        let run_as = (unsafe { libc::geteuid() } == 0).then(postgres_user);
        let root = make_root_dir(run_as);
        let mut bouncer = PgBouncer {
            port: 0,
            config: root.path().join("pgbouncer.ini"),
            log_file: root.path().join("pgbouncer.log"),
            child: None,
            root,
        };
        // trust ignores the password, but the user must be listed.
        write_file(
            &bouncer.root.path().join("userlist.txt"),
            format!("\"{}\" \"\"\n", Self::USER).as_bytes(),
            0o644,
            None,
        );
        let databases: String = entries
            .iter()
            .map(|(name, cluster, dbname)| {
                format!("{name} = {}\n", Self::database_entry(cluster, dbname))
            })
            .collect();

        for _ in 0..PORT_ATTEMPTS {
            release_port(bouncer.port);
            bouncer.port = claim_port();
            // 0644: the `postgres` user must read it when we are root, and the
            // product rewrites it (as the caller) before RELOAD.
            write_file(
                &bouncer.config,
                bouncer.ini(&databases).as_bytes(),
                0o644,
                None,
            );
            if bouncer.spawn(run_as)? {
                return Ok(bouncer);
            }
            // 1.18 only warns when the TCP port is taken and carries on with
            // the Unix socket alone, so kill it and try another port.
            bouncer.kill();
        }
        bail!(
            "pgbouncer: the TCP port was taken {PORT_ATTEMPTS} times in a row; its log:\n{}",
            bouncer.log()
        )
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:{port}/{database}` through the bouncer.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{}",
            Self::USER,
            self.port,
            percent_encode(database)
        )
    }

    /// The admin console (database `pgbouncer`; simple query protocol only).
    pub fn admin_url(&self) -> String {
        self.url("pgbouncer")
    }

    /// The ini file; rewrite it and send `RELOAD` to repoint a database.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Everything pgbouncer has logged so far (for failure messages).
    pub fn log(&self) -> String {
        read_from(&self.log_file, 0)
    }

    /// The connection string of a `[databases]` entry for `dbname` on
    /// `cluster`, as [`start`](Self::start) writes it after `name = ` (names
    /// are written unquoted, so keep them plain).
    pub fn database_entry(cluster: &PgCluster, dbname: &str) -> String {
        let mut entry = format!(
            "host=127.0.0.1 port={} dbname={dbname} user=postgres",
            cluster.port()
        );
        // The bouncer's clients send no password (trust), so it needs its own.
        if cluster.password_auth {
            entry.push_str(&format!(" password={}", PgCluster::PASSWORD));
        }
        entry
    }

    // ----------------------------------------------------------------------

    fn ini(&self, databases: &str) -> String {
        let dir = self.root.path().display();
        format!(
            "[databases]\n\
             {databases}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir = {dir}\n\
             pidfile = {dir}/pgbouncer.pid\n\
             ; no logfile: stderr goes to pgbouncer.log, which also catches startup errors\n\
             auth_type = trust\n\
             auth_file = {dir}/userlist.txt\n\
             admin_users = {user}\n\
             pool_mode = transaction\n\
             max_client_conn = 200\n\
             default_pool_size = 25\n\
             ; only used in session mode; transaction-mode clients keep no session state\n\
             server_reset_query = DISCARD ALL\n\
             ; tokio-postgres, JDBC and pgbench may send these; 1.18 rejects unknown ones\n\
             ignore_startup_parameters = extra_float_digits,options\n\
             ; works with plain and tls_only clusters\n\
             server_tls_sslmode = prefer\n\
             ; default 15 s: a refused server connection would stall a test that long\n\
             server_login_retry = 1\n\
             ; clients queued behind PAUSE are disconnected after this many seconds\n\
             query_wait_timeout = 120\n",
            port = self.port,
            user = Self::USER,
        )
    }

    /// Start the process and wait until it is up: `Ok(true)` if it listens
    /// on our TCP port, `Ok(false)` if that port was taken.
    fn spawn(&mut self, run_as: Option<(u32, u32)>) -> anyhow::Result<bool> {
        let log_offset = super::file_len(&self.log_file);
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .with_context(|| format!("cannot open {}", self.log_file.display()))?;
        let _ = writeln!(
            log,
            "--- switchyard-testkit: starting on port {}",
            self.port
        );
        let bin = pgbouncer_bin();
        let mut cmd = Command::new(&bin);
        cmd.arg(&self.config)
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // setuid in the child rather than runuser: the child is then pgbouncer
        // itself, so Drop can kill it without leaving an orphan behind.
        if let Some((uid, gid)) = run_as {
            cmd.uid(uid).gid(gid);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {} (apt-get install pgbouncer)", bin.display()))?;
        self.child = Some(child);

        let ok = format!("listening on 127.0.0.1:{}", self.port);
        let taken = format!("cannot listen on 127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = read_from(&self.log_file, log_offset);
            if log.contains(&taken) {
                return Ok(false);
            }
            if log.contains(&ok) && log.contains("process up") {
                return Ok(true);
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("pgbouncer exited with {status} at startup; its log:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("pgbouncer did not come up within 30 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.kill();
        release_port(self.port);
        // `root` (the TempDir) is dropped after this and removes everything.
    }
}

fn pgbouncer_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SWITCHYARD_PGBOUNCER").filter(|b| !b.is_empty()) {
        return bin.into();
    }
    let debian = Path::new("/usr/sbin/pgbouncer");
    if debian.is_file() {
        return debian.into();
    }
    "pgbouncer".into()
}
