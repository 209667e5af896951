use std::time::Duration;

use crate::support::*;

/// kill -9 at many moments — during the snapshot, while streaming, between batches — under a
/// concurrent write load; after a final restart the target equals the transformed source, no
/// row missing or duplicated.
#[test]
fn survives_kill_9_at_twenty_points_under_load() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 20_000, 10);
    let indexes = "SELECT string_agg(pg_get_indexdef(indexrelid), E'\\n' ORDER BY indexrelid::regclass::text) FROM pg_index \
                   WHERE indrelid IN ('users'::regclass, 'orders'::regclass)";
    let target_indexes = pair.target.psql("app", indexes);
    // Small batches: the backlog made while the process is down is many batches long, so kills
    // also land while one batch is readied as the one before it is applied.
    let pipeline = pair.pipeline("tenantize", &format!("{TENANTIZE}\n[apply]\nmax_batch_changes = 40\n"));
    let writer = Writer::start(&pair.source, 7);
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut logs = Vec::new();
    for point in 0..20 {
        let process = Switchyard::run(&pipeline);
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if point < 3 {
            // The first points land inside the copy: a few milliseconds after it starts or
            // resumes (the copy is too quick for a fixed delay to find it on every machine).
            // The first waits until the indexes are set aside (between the slot and the copy,
            // on a busy machine more than the delay below), so a kill lands in the copy after it.
            process.wait_for_log("the pipeline did not start", |log| {
                (log.contains("copying the snapshot") && (point > 0 || log.contains("to build after the copy: orders_pkey")))
                    || log.contains("resuming the snapshot")
                    || log.contains("following the change stream")
            });
            std::thread::sleep(Duration::from_millis(10 + state % 60));
        } else {
            // Later ones while streaming, or anywhere.
            std::thread::sleep(Duration::from_millis(150 + (state % 1200) + point * 40));
        }
        logs.push(process.log());
        process.kill9();
    }
    // The kill points must have hit both phases, or this test proves less than it claims.
    let resumed_copies = logs.iter().filter(|l| l.contains("resuming the snapshot")).count();
    let streaming = logs.iter().filter(|l| l.contains("following the change stream")).count();
    assert!(resumed_copies >= 1 && streaming >= 1, "kill points: {resumed_copies} resumed a copy, {streaming} streamed");
    assert!(logs.iter().any(|l| l.contains("binary format")), "the copies killed and resumed were not in COPY's binary format");
    assert!(logs.iter().any(|l| l.contains("to build after the copy: orders_pkey")), "the copy killed and resumed did not set aside the primary key of orders");
    let catching_up = logs.iter().filter(|l| l.contains("catching up: each batch is readied")).count();
    assert!(catching_up >= 1, "no kill point found the process catching up with batches readied ahead");
    let written = writer.finish();
    assert!(written > 100, "the writer wrote only {written} statements");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    logs.push(process.log());
    assert!(
        logs.iter().any(|l| l.contains("caught up: the backlog is applied and on the target's disk")),
        "no run flushed the target at the end of a backlog"
    );
    assert_eq!(pair.target.psql("app", indexes), target_indexes, "the indexes set aside for the copy are not all back");
    let chunks = pair.target.psql("app", "SELECT count(*) FILTER (WHERE copied_at IS NULL), count(*) FROM switchyard.snapshot_chunks");
    assert!(chunks.starts_with("0|"), "snapshot chunks not all done: {chunks}");
}

/// Connections dropped under the pipeline's feet — the walsender, the target session, the
/// snapshot readers — are reconnected and resumed from the checkpoint without losing or
/// duplicating a change, and without the process exiting.
#[test]
fn survives_dropped_connections_under_load() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 5_000, 10);
    let pipeline = pair.pipeline("tenantize", TENANTIZE);
    let writer = Writer::start(&pair.source, 11);
    let mut process = Switchyard::run(&pipeline);
    for round in 0..8 {
        std::thread::sleep(Duration::from_millis(400 + round * 150));
        let cluster = if round % 2 == 0 { &pair.source } else { &pair.target };
        cluster.psql(
            "app",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'switchyard' AND pid <> pg_backend_pid()",
        );
        process.assert_running();
    }
    writer.finish();
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    assert!(process.log().contains("transient error; resuming from the checkpoint"), "no connection was dropped:\n{}", process.log());
}

/// A crash of the target takes back commits it had not flushed; apply commits asynchronously,
/// so the slot must not have confirmed them: the source offers them again and the pipeline
/// applies them from its checkpoint, which went back with them. Nothing is lost.
#[test]
fn a_target_crash_loses_no_confirmed_change() {
    target_crash_after_applied_changes("");
}

/// The same over two apply lanes, which commit in turn on one WAL.
#[test]
fn a_target_crash_loses_no_confirmed_change_over_parallel_lanes() {
    target_crash_after_applied_changes("[apply]\nparallel = 2\n");
}

fn target_crash_after_applied_changes(apply: &str) {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 1_000, 5);
    let pipeline = pair.pipeline("tenantize", &format!("{TENANTIZE}\n{apply}[verify]\ncontinuous = false\n"));
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    // The target's WAL writer and background writer stopped: the commits below stay in its WAL
    // buffers, visible but never flushed, until the crash takes them.
    let writers = pair.target.psql("app", "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE backend_type IN ('walwriter', 'background writer')");
    let writers: Vec<&str> = writers.split(' ').collect();
    assert_eq!(writers.len(), 2, "the target's WAL writer and background writer: {writers:?}");
    signal(&writers, "STOP");
    pair.source.psql("app", "UPDATE orders SET amount = amount + 1, status = 'paid' WHERE id % 50 = 0; DELETE FROM orders WHERE id % 97 = 0;");
    let goal = pair.source.psql("app", "SELECT pg_current_wal_lsn()");
    let totals = "SELECT count(*) || ' ' || sum(amount) FROM orders";
    let expected = pair.source.psql("app", totals);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while pair.target.psql("app", totals) != expected {
        process.assert_running();
        assert!(std::time::Instant::now() < deadline, "the changes were not applied in 60 s; log:\n{}", process.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Applied and visible, and polled for well past the WAL writer's usual delay: not confirmed.
    std::thread::sleep(Duration::from_millis(1000));
    let confirmed = pair.source.psql(
        "app",
        &format!("SELECT confirmed_flush_lsn < '{goal}' FROM pg_replication_slots WHERE slot_name = 'switchyard_tenantize'"),
    );
    assert_eq!(confirmed, "t", "the slot confirmed changes the target has not flushed; log:\n{}", process.log());
    // The crash: the postmaster restarts the server and recovers it from the WAL on disk.
    signal(&writers, "KILL");
    // One change more, which the pipeline applies over a new connection, from its checkpoint.
    pair.source.psql("app", "UPDATE users SET name = 'after the crash' WHERE id = 7");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    let log = process.log();
    assert!(log.contains("applying with synchronous_commit = off"), "log:\n{log}");
    assert!(log.contains("transient error; resuming from the checkpoint"), "the crash was not seen:\n{log}");
    if !apply.is_empty() {
        assert!(log.contains("applying over parallel lanes"), "log:\n{log}");
    }
}

fn signal(pids: &[&str], signal: &str) {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).args(pids).status().unwrap();
    assert!(status.success(), "kill -{signal} {pids:?}");
}

/// The source server crashing while changes stream: its slot comes back from its last saved
/// state, behind what was applied, and offers those transactions again; the pipeline resumes
/// from its own checkpoint and applies none of them twice.
#[test]
fn a_source_crash_repeats_no_change() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 1_000, 5);
    let pipeline = pair.pipeline("tenantize", &format!("{TENANTIZE}\n[verify]\ncontinuous = false\n"));
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let confirmed = || pair.source.psql("app", "SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = 'switchyard_tenantize'");
    let mut went_back = 0;
    for round in 0..4u64 {
        let changes: String = (0..60).map(|n| switchyard_testkit::seed_statement(round + 20, n) + "\n").collect();
        pair.source.psql("app", &changes);
        if round % 2 == 0 {
            // Applied and confirmed; the server saves a slot's confirmation to disk lazily.
            pair.wait_caught_up("switchyard_tenantize", &mut process);
        } else {
            std::thread::sleep(Duration::from_millis(30 * round));
        }
        let before: u64 = confirmed().parse().unwrap();
        pair.source.crash_restart();
        let after: u64 = confirmed().parse().unwrap();
        went_back += usize::from(after < before);
        process.assert_running();
    }
    assert!(went_back >= 1, "no crash set the slot back behind what was applied, so nothing could have been offered twice");
    pair.source.psql("app", "UPDATE users SET name = 'after the crashes' WHERE id = 7");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    let log = process.log();
    assert!(log.contains("transient error; resuming from the checkpoint"), "the crashes were not seen:\n{log}");
}

/// Both servers crashing during the copy, one after the other, with changes made around the
/// crashes: the copy resumes each time (chunks the crashed target lost are copied again), and
/// the target ends equal to the source.
#[test]
fn crashes_of_either_server_during_the_copy_are_resumed() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 20_000, 10);
    // Small chunks one at a time: the copy lasts long enough to crash each side in it.
    let body = TENANTIZE.replace("chunk_rows = 5000\nparallel = 2", "chunk_rows = 2000\nparallel = 1");
    let pipeline = pair.pipeline("tenantize", &format!("{body}\n[verify]\ncontinuous = false\n"));
    let mut process = Switchyard::run(&pipeline);
    let copied = |cluster: &PgCluster| {
        cluster.try_psql("app", "SELECT count(*) FROM switchyard.snapshot_chunks WHERE copied_at IS NOT NULL").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0)
    };
    for (round, crashed) in [&pair.target, &pair.source].into_iter().enumerate() {
        let before = copied(&pair.target);
        while copied(&pair.target) < before + 3 {
            process.assert_running();
            std::thread::sleep(Duration::from_millis(5));
        }
        let changes: String = (0..40).map(|n| switchyard_testkit::seed_statement(round as u64 + 40, n) + "\n").collect();
        pair.source.psql("app", &changes);
        crashed.crash_restart();
        process.assert_running();
    }
    pair.source.psql("app", "UPDATE users SET name = 'after the crashes' WHERE id = 7");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    let log = process.log();
    assert!(log.matches("resuming the snapshot").count() >= 2, "the copy was not resumed after each crash:\n{log}");
}
