use std::process::{Command, Output, Stdio};

use switchyard_testkit::{PgCluster, PgOptions};

/// psql over TCP with a libpq connection string, no password file, no prompt.
fn tcp_psql(cluster: &PgCluster, conninfo: &str, password: Option<&str>) -> Output {
    let mut cmd = Command::new(cluster.bin("psql"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
    cmd.args(["-X", "-At", "-w", "-d", conninfo, "-c", "SELECT 42"])
        .env("PGPASSFILE", "/nonexistent/switchyard-pgpass")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd.output().expect("run psql")
}

fn conninfo(cluster: &PgCluster, extra: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres {extra}",
        cluster.port()
    )
}

#[test]
fn starts_with_logical_wal_and_is_removed_on_drop() {
    let cluster = PgCluster::start();
    assert_ne!(cluster.port(), 5432);
    assert_eq!(cluster.psql("postgres", "SHOW wal_level"), "logical");
    assert_eq!(cluster.psql("postgres", "SHOW max_replication_slots"), "16");
    assert_eq!(
        cluster.psql("postgres", "SHOW listen_addresses"),
        "127.0.0.1"
    );
    assert_eq!(
        cluster.psql("postgres", "SHOW port"),
        cluster.port().to_string()
    );
    assert!(cluster
        .socket_dir()
        .join(format!(".s.PGSQL.{}", cluster.port()))
        .exists());
    assert!(cluster.data_dir().join("server.log").is_file());
    assert!(cluster.ca_cert().is_none());
    assert_eq!(
        cluster.url("postgres"),
        format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port())
    );
    // Plain TCP with trust works by default.
    let out = tcp_psql(&cluster, &conninfo(&cluster, "sslmode=disable"), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let data_dir = cluster.data_dir().to_path_buf();
    let socket_dir = cluster.socket_dir().to_path_buf();
    assert!(data_dir.is_dir());
    drop(cluster);
    assert!(!data_dir.exists(), "{} still exists", data_dir.display());
    assert!(
        !socket_dir.exists(),
        "{} still exists",
        socket_dir.display()
    );
}

#[test]
fn create_database_and_psql() {
    let cluster = PgCluster::start();
    cluster.create_database("shop");
    cluster.create_database("Odd \"name\"");
    let dbs = cluster.psql(
        "postgres",
        "SELECT datname FROM pg_database WHERE datname IN ('shop', 'Odd \"name\"') ORDER BY 1",
    );
    assert_eq!(dbs, "Odd \"name\"\nshop");
    // A multi-statement script, each statement on its own.
    let out = cluster.psql(
        "shop",
        "CREATE TABLE t (id int primary key, v text);\n\
         INSERT INTO t VALUES (1, 'a'), (2, 'b');\n\
         SELECT count(*) FROM t;",
    );
    assert_eq!(out, "2");
    let err = cluster
        .try_psql("shop", "SELECT * FROM missing_table")
        .unwrap_err();
    assert!(err.contains("missing_table"), "{err}");
    assert!(cluster.try_psql("nope", "SELECT 1").is_err());
    assert!(cluster.bin("pgbench").is_file());
    assert!(cluster.bin("pg_recvlogical").is_file());
}

#[test]
fn two_clusters_at_once() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(PgCluster::start);
        let b = s.spawn(|| {
            PgCluster::start_with(PgOptions {
                settings: vec![("max_wal_senders".into(), "4".into())],
                ..Default::default()
            })
        });
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.port(), b.port());
    assert_ne!(a.data_dir(), b.data_dir());
    a.psql("postgres", "CREATE TABLE only_in_a (x int)");
    assert_eq!(
        b.psql(
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 'only_in_a'"
        ),
        "0"
    );
    assert_eq!(a.psql("postgres", "SHOW max_wal_senders"), "16");
    assert_eq!(b.psql("postgres", "SHOW max_wal_senders"), "4");
    let a_dir = a.data_dir().to_path_buf();
    drop(a);
    assert!(!a_dir.exists());
    // b is unaffected by a going away.
    assert_eq!(b.psql("postgres", "SELECT 1"), "1");
}

#[test]
fn restart_keeps_port_and_data() {
    let cluster = PgCluster::start();
    let port = cluster.port();
    cluster.psql(
        "postgres",
        "CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)",
    );
    cluster.restart();
    assert_eq!(cluster.port(), port);
    assert_eq!(cluster.psql("postgres", "SELECT x FROM kept"), "7");
}

#[test]
fn password_auth_requires_password_over_tcp() {
    let cluster = PgCluster::start_with(PgOptions {
        password_auth: true,
        ..Default::default()
    });
    // The Unix socket stays trust.
    assert_eq!(cluster.psql("postgres", "SELECT 1"), "1");
    assert_eq!(
        cluster.url("db"),
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/db",
            PgCluster::PASSWORD,
            cluster.port()
        )
    );
    let info = conninfo(&cluster, "");
    let out = tcp_psql(&cluster, &info, None);
    assert!(!out.status.success(), "connected without a password");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("password"), "{stderr}");

    let out = tcp_psql(&cluster, &info, Some("wrong"));
    assert!(!out.status.success(), "connected with a wrong password");

    let out = tcp_psql(&cluster, &info, Some(PgCluster::PASSWORD));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
}

#[test]
fn tls_only_rejects_plain_tcp() {
    let cluster = PgCluster::start_with(PgOptions {
        tls_only: true,
        ..Default::default()
    });
    let ca = cluster.ca_cert().expect("CA cert path").to_path_buf();
    assert!(std::fs::read_to_string(&ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
    assert_eq!(cluster.psql("postgres", "SHOW ssl"), "on");

    let out = tcp_psql(&cluster, &conninfo(&cluster, "sslmode=disable"), None);
    assert!(!out.status.success(), "plain TCP was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no encryption"), "{stderr}");

    let out = tcp_psql(&cluster, &conninfo(&cluster, "sslmode=require"), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");

    // The server certificate verifies against the CA, host name included.
    let full = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let out = tcp_psql(&cluster, &conninfo(&cluster, &full), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = ca.parent().unwrap().to_path_buf();
    drop(cluster);
    assert!(!dir.exists());
}

#[test]
fn tls_and_password_together() {
    let cluster = PgCluster::start_with(PgOptions {
        tls_only: true,
        password_auth: true,
        ..Default::default()
    });
    let pw = Some(PgCluster::PASSWORD);
    let out = tcp_psql(&cluster, &conninfo(&cluster, "sslmode=disable"), pw);
    assert!(!out.status.success());
    let out = tcp_psql(&cluster, &conninfo(&cluster, "sslmode=require"), None);
    assert!(!out.status.success());
    let out = tcp_psql(&cluster, &conninfo(&cluster, "sslmode=require"), pw);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn start_failure_panics_with_log_tail() {
    // Force every attempt onto a port we hold: all attempts fail to bind.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let result = std::panic::catch_unwind(|| {
        PgCluster::start_with(PgOptions {
            settings: vec![("port".into(), port.to_string())],
            ..Default::default()
        })
    });
    let err = result.expect_err("start should fail");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("pg_ctl start"), "{msg}");
    assert!(msg.contains("server log tail"), "{msg}");
    assert!(msg.contains("could not bind"), "{msg}");
}
