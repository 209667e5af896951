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

    let log_path = pair.target.data_dir().join("server.log");
    let statements_before = std::fs::read_to_string(&log_path).unwrap().matches("INSERT INTO \"public\".\"events\"").count();
    pair.source.psql("app", "INSERT INTO events SELECT g, 'e' || g FROM generate_series(1, 10000) g;");
    pair.wait_caught_up("switchyard_prefix", &mut process);
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM events"), "10000");
    let statements = std::fs::read_to_string(&log_path).unwrap().matches("INSERT INTO \"public\".\"events\"").count() - statements_before;
    assert!(statements <= 4, "{statements} INSERT statements logged for 10,000 rows");
}
