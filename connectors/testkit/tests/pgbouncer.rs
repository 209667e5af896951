//! The private PgBouncer, and the admin-console behaviour the cutover relies
//! on: PAUSE waits for open transactions, paused clients queue (no error),
//! RELOAD repoints a database, RESUME lets the queued clients run on the new
//! server.

use std::time::{Duration, Instant};

use switchyard_testkit::{PgBouncer, PgCluster, PgOptions};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Connect with tokio-postgres; the connection task's result is returned so
/// the test can check it ended without error.
async fn connect(url: &str) -> (Client, JoinHandle<Result<(), tokio_postgres::Error>>) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"));
    (client, tokio::spawn(connection))
}

/// First column of every row.  Through the bouncer in transaction mode only
/// the simple protocol (or unnamed statements) is safe: a named statement
/// prepared on one server connection may be executed on another.
async fn column(client: &Client, sql: &str) -> Vec<String> {
    rows(client.simple_query(sql).await, sql)
}

fn rows(result: Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>, sql: &str) -> Vec<String> {
    result
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .collect()
}

/// `port` and `paused` of a database in the admin console's SHOW DATABASES.
async fn show_database(admin: &Client, name: &str) -> (String, String) {
    let messages = admin
        .simple_query("SHOW DATABASES")
        .await
        .expect("SHOW DATABASES");
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) if row.get("name") == Some(name) => Some((
                row.get("port").unwrap_or_default().to_string(),
                row.get("paused").unwrap_or_default().to_string(),
            )),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no database {name} in SHOW DATABASES"))
}

fn cluster_named(name: &str) -> PgCluster {
    let cluster = PgCluster::start();
    cluster.create_database("shop");
    cluster.psql(
        "shop",
        &format!("CREATE TABLE whoami (name text); INSERT INTO whoami VALUES ('{name}'); CREATE TABLE t (n int);"),
    );
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_reload_resume_switches_a_database_without_client_errors() {
    let old = cluster_named("old");
    let new = cluster_named("new");
    let bouncer = PgBouncer::start(&[("shop", &old, "shop")]).expect("start pgbouncer");
    assert_ne!(bouncer.port(), old.port());
    assert!(bouncer.config_path().is_file());

    let (client, client_conn) = connect(&bouncer.url("shop")).await;
    assert_eq!(column(&client, "SELECT 1").await, ["1"]);
    assert_eq!(column(&client, "SELECT name FROM whoami").await, ["old"]);

    // tokio-postgres works on the admin console with simple_query.
    let (admin, admin_conn) = connect(&bouncer.admin_url()).await;
    let (port, paused) = show_database(&admin, "shop").await;
    assert_eq!((port, paused.as_str()), (old.port().to_string(), "0"));

    // PAUSE waits until the open transaction has ended.
    let (writer, writer_conn) = connect(&bouncer.url("shop")).await;
    column(&writer, "BEGIN; INSERT INTO t VALUES (1)").await;
    let pause = tokio::spawn(async move {
        let result = admin.simple_query("PAUSE shop").await.map(|_| ());
        (admin, result)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !pause.is_finished(),
        "PAUSE returned while a transaction was open"
    );
    column(&writer, "COMMIT").await;
    let (admin, paused) = tokio::time::timeout(Duration::from_secs(10), pause)
        .await
        .expect("PAUSE returns after COMMIT")
        .unwrap();
    paused.expect("PAUSE shop");

    // While paused a query queues: no error, no result.
    let waiting = tokio::spawn(async move {
        let sql = "SELECT current_setting('port') || ' ' || name FROM whoami";
        let result = client.simple_query(sql).await;
        (client, rows(result, sql))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a query ran while the database was paused"
    );

    // Repoint `shop` at the new cluster, RELOAD (still paused), then RESUME.
    let ini = std::fs::read_to_string(bouncer.config_path()).unwrap();
    let from = PgBouncer::database_entry(&old, "shop");
    assert!(ini.contains(&from), "{ini}");
    std::fs::write(
        bouncer.config_path(),
        ini.replace(&from, &PgBouncer::database_entry(&new, "shop")),
    )
    .unwrap();
    column(&admin, "RELOAD").await;
    // RELOAD answers OK even when the file does not parse (1.18 only logs
    // "config file loading failed"), so SHOW DATABASES is the proof.
    let (port, paused) = show_database(&admin, "shop").await;
    assert_eq!((port, paused.as_str()), (new.port().to_string(), "1"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "RELOAD resumed the paused database");
    let resumed = Instant::now();
    column(&admin, "RESUME shop").await;

    let (client, answer) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the queued query did not finish after RESUME; log:\n{}",
                bouncer.log()
            )
        })
        .unwrap();
    assert_eq!(answer, [format!("{} new", new.port())]);
    assert!(resumed.elapsed() < Duration::from_secs(5));

    // Every client, old or new, now runs on the new cluster.
    assert_eq!(column(&client, "SELECT name FROM whoami").await, ["new"]);
    assert_eq!(column(&writer, "SELECT name FROM whoami").await, ["new"]);
    let (fresh, fresh_conn) = connect(&bouncer.url("shop")).await;
    assert_eq!(column(&fresh, "SELECT name FROM whoami").await, ["new"]);
    // The transaction committed before the switch is on the old cluster only.
    assert_eq!(old.psql("shop", "SELECT count(*) FROM t"), "1");
    assert_eq!(new.psql("shop", "SELECT count(*) FROM t"), "0");

    // No connection saw an error.
    for (client, conn) in [
        (client, client_conn),
        (writer, writer_conn),
        (fresh, fresh_conn),
        (admin, admin_conn),
    ] {
        drop(client);
        conn.await
            .unwrap()
            .unwrap_or_else(|e| panic!("connection error: {e}; log:\n{}", bouncer.log()));
    }
    let log = bouncer.log();
    assert!(!log.contains("ERROR") && !log.contains("WARNING"), "{log}");
}

#[tokio::test]
async fn reaches_password_and_tls_only_clusters() {
    let cluster = PgCluster::start_with(PgOptions {
        password_auth: true,
        tls_only: true,
        ..Default::default()
    });
    let bouncer = PgBouncer::start(&[("main", &cluster, "postgres")]).expect("start pgbouncer");
    let (client, conn) = connect(&bouncer.url("main")).await;
    assert_eq!(
        column(
            &client,
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        .await,
        ["true"]
    );
    drop(client);
    conn.await.unwrap().unwrap();
}

#[test]
fn drop_kills_the_process_and_removes_the_directory() {
    let cluster = PgCluster::start();
    let bouncer = PgBouncer::start(&[("main", &cluster, "postgres")]).expect("start pgbouncer");
    let dir = bouncer.config_path().parent().unwrap().to_path_buf();
    let port = bouncer.port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(bouncer);
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}
