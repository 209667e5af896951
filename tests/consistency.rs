use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use switchyard_testkit::{PgOptions, SqlLoad};

use crate::support::*;

/// Source transactions that move balance between accounts keep the total constant; a reader of
/// the target checking the total while the stream applies them never sees a different one (no
/// half-applied source transaction). A 10,000-row source transaction is applied with a handful
/// of statements, not one per row (counted in the target's statement log).
#[test]
fn readers_see_whole_transactions_and_apply_is_set_based() {
    let source = PgCluster::start();
    let target = PgCluster::start_with(PgOptions { settings: vec![("log_statement".into(), "all".into())], ..Default::default() });
    let pair = Pair { source, target, dir: tempfile::tempdir().unwrap() };
    pair.source.create_database("app");
    pair.target.create_database("app");
    for cluster in [&pair.source, &pair.target] {
        cluster.psql("app", "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL); CREATE TABLE events (id int PRIMARY KEY, v text);");
    }
    pair.source.psql("app", "INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 100) g;");
    let pipeline = pair.pipeline("prefix", "tables = ['accounts', 'events']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_prefix", &mut process);

    let transfers = SqlLoad::start(&pair.source, "app", |n| {
        let (from, to) = (1 + n % 100, 1 + (n * 37 + 11) % 100);
        format!("BEGIN; UPDATE accounts SET balance = balance - 3 WHERE id = {from}; UPDATE accounts SET balance = balance + 3 WHERE id = {to}; COMMIT;")
    });
    let stop = Arc::new(AtomicBool::new(false));
    let reads = {
        let (stop, socket, port, psql) = (stop.clone(), pair.target.socket_dir().to_path_buf(), pair.target.port(), pair.target.bin("psql"));
        std::thread::spawn(move || {
            let mut totals = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new(&psql)
                    .args(["-X", "-At", "-h"])
                    .arg(&socket)
                    .args(["-p", &port.to_string(), "-U", "postgres", "-d", "app", "-c", "SELECT sum(balance) FROM accounts"])
                    .output()
                    .unwrap();
                totals.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
            totals
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(3));
    let sent = transfers.finish();
    pair.wait_caught_up("switchyard_prefix", &mut process);
    stop.store(true, Ordering::Relaxed);
    let totals = reads.join().unwrap();
    assert!(sent > 100 && totals.len() > 10, "{sent} transfers, {} reads", totals.len());
    let wrong: Vec<_> = totals.iter().filter(|t| t.as_str() != "10000").collect();
    assert!(wrong.is_empty(), "a reader saw a half-applied transaction: {wrong:?}");

    let log = StatementLog::of(&pair.target);
    pair.source.psql("app", "INSERT INTO events SELECT g, 'e' || g FROM generate_series(1, 10000) g;");
    pair.wait_caught_up("switchyard_prefix", &mut process);
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM events"), "10000");
    let (inserts, copies) = (log.count("INSERT INTO \"public\".\"events\""), log.count("COPY \"public\".\"events\""));
    assert!(inserts + copies <= 4 && copies >= 1, "{inserts} INSERT and {copies} COPY statements logged for 10,000 rows");
}

/// The target's statement log (`log_statement = all`) from the moment it is taken.
struct StatementLog {
    path: std::path::PathBuf,
    skip: usize,
}

impl StatementLog {
    fn of(cluster: &PgCluster) -> StatementLog {
        let path = cluster.data_dir().join("server.log");
        let skip = std::fs::read_to_string(&path).unwrap().len();
        StatementLog { path, skip }
    }

    /// Statements logged since, containing `text`.
    fn count(&self, text: &str) -> usize {
        let log = std::fs::read_to_string(&self.path).unwrap();
        log[self.skip..].lines().filter(|line| line.contains("LOG:") && line.contains(text)).count()
    }
}

/// Tables joined by a foreign key checked at once are grouped as freely as any when apply runs
/// as a replica, where the key's checks do not fire: 200 interleaved changes to users and
/// orders become a few statements. With `as_replica = false` the checks fire, the key ties the
/// tables, and each change keeps its place after its parent.
#[test]
fn foreign_keys_tie_tables_only_where_their_checks_fire() {
    let source = PgCluster::start();
    let target = PgCluster::start_with(PgOptions { settings: vec![("log_statement".into(), "all".into())], ..Default::default() });
    let pair = Pair { source, target, dir: tempfile::tempdir().unwrap() };
    for cluster in [&pair.source, &pair.target] {
        cluster.create_database("app");
        cluster.psql(
            "app",
            "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE);
             CREATE TABLE orders (id int PRIMARY KEY, user_id int NOT NULL REFERENCES users (id), amount int NOT NULL);",
        );
    }
    let interleaved = |from: u32| {
        let mut sql = String::from("BEGIN;");
        for n in from..from + 200 {
            sql += &format!("INSERT INTO users VALUES ({n}, 'u{n}@example.com'); INSERT INTO orders VALUES ({n}, {n}, 1);");
            if n > from {
                sql += &format!("UPDATE orders SET amount = 2 WHERE id = {};", n - 1);
            }
        }
        sql + "COMMIT;"
    };
    let statements = |log: &StatementLog| ["INSERT INTO \"public\".", "COPY \"public\".", "UPDATE \"public\"."].iter().map(|s| log.count(s)).sum::<usize>();
    let body = "tables = ['users', 'orders']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n";
    let query = "SELECT string_agg(o.id || ':' || u.email || ':' || o.amount, ',' ORDER BY o.id) FROM orders o JOIN users u ON u.id = o.user_id";
    for (as_replica, from) in [(true, 1), (false, 1001)] {
        let pipeline = pair.pipeline("tied", &format!("{body}[apply]\nas_replica = {as_replica}\n"));
        let mut process = Switchyard::run(&pipeline);
        pair.wait_caught_up("switchyard_tied", &mut process);
        let log = StatementLog::of(&pair.target);
        pair.source.psql("app", &interleaved(from));
        pair.wait_caught_up("switchyard_tied", &mut process);
        assert_same_rows("orders", &pair.source.psql("app", query), &pair.target.psql("app", query));
        let statements = statements(&log);
        if as_replica {
            assert!(statements <= 6, "{statements} statements for 599 changes applied as a replica");
        } else {
            assert!(statements >= 200, "{statements} statements for 599 changes with the foreign key checked: it tied nothing");
        }
        process.stop();
    }
}
