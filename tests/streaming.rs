use crate::support::*;

/// Snapshot, then stream, with writes going on throughout: the target ends equal to the
/// transformed source, and a SIGTERM stops cleanly with the slot confirmed.
#[test]
fn tenantize_copies_and_follows_under_load() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 2_000, 10);
    let pipeline = pair.pipeline("tenantize", TENANTIZE);
    let writer = Writer::start(&pair.source, 1);
    let mut process = Switchyard::run(&pipeline);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let written = writer.finish();
    assert!(written > 50, "the writer wrote only {written} statements");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);

    // Rows written while stopped arrive after a restart.
    let status = process.stop();
    assert!(status.success(), "switchyard exited with {status}");
    pair.source.psql("app", "UPDATE users SET name = 'after restart' WHERE id = 1; DELETE FROM orders WHERE id = 2;");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    let name = pair.target.psql("app", "SELECT name FROM users WHERE id = 1");
    assert_eq!(name, "after restart");

    // A clean stop flushes the target's last commits and confirms them to the slot, rather than
    // leaving it where the target's WAL writer had got to.
    pair.source.psql("app", "UPDATE users SET name = 'before the stop' WHERE id = 1");
    while pair.target.psql("app", "SELECT name FROM users WHERE id = 1") != "before the stop" {
        process.assert_running();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let applied = pair.target.psql("app", "SELECT substr(applied_position, 4) FROM switchyard.pipelines WHERE name = 'tenantize'");
    assert!(process.stop().success());
    let confirmed = pair.source.psql(
        "app",
        &format!("SELECT confirmed_flush_lsn >= '{applied}' FROM pg_replication_slots WHERE slot_name = 'switchyard_tenantize'"),
    );
    assert_eq!(confirmed, "t", "the slot was left behind the last commit, {applied}");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);

    let (status, text) = switchyard(&["status"], &pipeline);
    assert!(status.success(), "{text}");
    assert!(text.contains("phase      streaming"), "{text}");
    assert!(text.contains("public.orders"), "{text}");
    drop(process);
}

/// Both databases reached through their Unix sockets (the socket directory as the URL's
/// percent-encoded host), replication connection included: copied, then followed.
#[test]
fn copies_and_follows_through_unix_sockets() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 200, 5);
    let pipeline = pair.pipeline("tenantize", TENANTIZE);
    let text = std::fs::read_to_string(&pipeline).unwrap();
    let text = text.replace(&pair.source.url("app"), &pair.source.socket_url("app")).replace(&pair.target.url("app"), &pair.target.socket_url("app"));
    assert!(text.contains("@%2F") && !text.contains("127.0.0.1"), "{text}");
    std::fs::write(&pipeline, text).unwrap();
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    pair.source.psql("app", "UPDATE users SET name = 'over the socket' WHERE id = 3; DELETE FROM orders WHERE id = 4;");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    let socket_clients = pair.source.psql("app", "SELECT count(*) FROM pg_stat_replication WHERE client_port = -1");
    assert_eq!(socket_clients, "1", "the walsender's client is not on the Unix socket");
    assert!(process.stop().success());
}

/// TRUNCATE of several tables in one statement empties only this tenant's rows on the target.
#[test]
fn truncate_and_key_updates_apply() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 100, 2);
    // Another tenant's rows on the shared target must survive a TRUNCATE from this source.
    pair.target.psql(
        "app",
        "INSERT INTO tenants VALUES ('00000000-0000-0000-0000-000000000002', 'other');
         INSERT INTO users (tenant_id, id, email, created_at) VALUES ('00000000-0000-0000-0000-000000000002', 1, 'o@x', now());",
    );
    let pipeline = pair.pipeline("tenantize", TENANTIZE);
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    pair.source.psql("app", "UPDATE orders SET id = id + 100000 WHERE id <= 10; UPDATE users SET id = 5000 WHERE id = 7 AND NOT EXISTS (SELECT 1 FROM orders WHERE user_id = 7);");
    pair.source.psql("app", "BEGIN; DELETE FROM orders WHERE user_id = 8; UPDATE users SET id = 5001 WHERE id = 8; COMMIT;");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    pair.source.psql("app", "TRUNCATE orders, users");
    pair.source.psql("app", "INSERT INTO users (id, email) VALUES (1, 'fresh@x')");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    let other = pair.target.psql("app", "SELECT count(*) FROM users WHERE tenant_id = '00000000-0000-0000-0000-000000000002'");
    assert_eq!(other, "1", "another tenant's row was removed");
}

/// The source describes a table again mid-stream whenever the server's cache of it is
/// invalidated (here by ALTER TABLE ... SET, as autovacuum does on a busy table). A row updated
/// twice before that and deleted after, in one batch, is still one row: its delete goes after
/// its updates, and the target ends equal.
#[test]
fn a_row_is_the_same_row_after_the_source_describes_its_table_again() {
    let (pair, process) = caught_up_tenantize(100);
    let pipeline = pair.pipeline("tenantize", TENANTIZE);
    process.stop();
    // One source transaction is one batch, whatever the timing of the reader.
    pair.source.psql(
        "app",
        "BEGIN;
         UPDATE orders SET status = 'first' WHERE id = 1;
         UPDATE orders SET status = 'second' WHERE id = 1;
         ALTER TABLE orders SET (fillfactor = 90);
         DELETE FROM orders WHERE id = 1;
         UPDATE orders SET status = 'after' WHERE id = 2;
         COMMIT;",
    );
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    assert!(!process.log().contains("missing from target table"), "{}", process.log());
}

/// A batch's checks run on the target, inside the transaction its COMMIT (sent in the same
/// round trip) ends: an update whose row is gone from the target stops the pipeline, naming
/// the table, and nothing of its batch lands, neither its other changes nor the checkpoint.
#[test]
fn an_update_the_target_lacks_stops_the_pipeline_and_its_batch_lands_nowhere() {
    let (pair, process) = caught_up_tenantize(10);
    let applied = pair.target.psql("app", "SELECT applied_position FROM switchyard.pipelines WHERE name = 'tenantize'");
    pair.target.psql("app", "DELETE FROM orders WHERE id = 1");
    pair.source.psql(
        "app",
        "BEGIN; UPDATE users SET name = 'in the failed batch' WHERE id = 2; UPDATE orders SET status = 'paid' WHERE id = 1; COMMIT;",
    );
    let (status, log) = process.exit_within(60, "applied an update whose row the target lacks");
    assert!(!status.success(), "{log}");
    assert!(log.contains("1 of 1 updated rows are missing from target table public.orders: the target has diverged"), "{log}");
    assert_eq!(pair.target.psql("app", "SELECT name FROM users WHERE id = 2"), "User 2");
    let after = pair.target.psql("app", "SELECT applied_position FROM switchyard.pipelines WHERE name = 'tenantize'");
    assert_eq!(after, applied, "the failed batch advanced the checkpoint");
}

/// The pipeline's checkpoint row deleted on the target while it runs: the next batch fails on
/// the target, so its changes are not committed without the checkpoint that records them.
#[test]
fn a_checkpoint_row_gone_while_running_stops_the_pipeline_before_its_batch_lands() {
    let (pair, process) = caught_up_tenantize(10);
    pair.target.psql("app", "DELETE FROM switchyard.pipelines WHERE name = 'tenantize'");
    pair.source.psql("app", "UPDATE users SET name = 'after the row was gone' WHERE id = 3");
    let (status, log) = process.exit_within(60, "went on without its checkpoint row");
    assert!(!status.success(), "{log}");
    assert!(log.contains("the checkpoint row of pipeline tenantize is gone from the target"), "{log}");
    assert_eq!(pair.target.psql("app", "SELECT name FROM users WHERE id = 3"), "User 3");
}

/// The seed's tables with `users` users and two orders each, copied through tenantize and
/// followed to the source's end.
fn caught_up_tenantize(users: u64) -> (Pair, Switchyard) {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, users, 2);
    let pipeline = pair.pipeline("tenantize", TENANTIZE);
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    (pair, process)
}

/// A target table partitioned by tenant (a common multi-tenant layout): the copy fills it, and
/// the stream's inserts, updates, deletes and key moves reach this tenant's partition. Its
/// statements are planned per batch: a plan made once for the session would hold, and lock at
/// each execution, every partition.
#[test]
fn a_target_table_partitioned_by_tenant_is_copied_and_followed() {
    let pair = Pair::start();
    seed_schemas(&pair);
    pair.target.psql(
        "app",
        &format!(
            "DROP TABLE orders;
             CREATE TABLE orders (tenant_id uuid NOT NULL, id bigint NOT NULL, user_id bigint NOT NULL, amount numeric(12,2) NOT NULL,
                                  status text NOT NULL, note text, PRIMARY KEY (tenant_id, id)) PARTITION BY LIST (tenant_id);
             CREATE TABLE orders_tenant_one PARTITION OF orders FOR VALUES IN ('{TENANT}');
             CREATE TABLE orders_others PARTITION OF orders DEFAULT;"
        ),
    );
    load_rows(&pair, 50, 4);
    let pipeline = pair.pipeline("partitioned", TENANTIZE);
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_partitioned", &mut process);
    pair.source.psql(
        "app",
        "INSERT INTO orders (user_id, amount, status) SELECT 1 + g % 50, g, 'new' FROM generate_series(1, 100) g;
         UPDATE orders SET status = 'paid', note = 'n' || id WHERE id % 3 = 0;
         DELETE FROM orders WHERE id % 7 = 0;
         UPDATE orders SET id = id + 100000 WHERE id <= 5;",
    );
    pair.wait_caught_up("switchyard_partitioned", &mut process);
    assert_tenantized_equal(&pair);
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM orders_others"), "0", "rows went to another tenant's partition");
    assert!(
        process.log().contains("target table is partitioned: apply statements are planned for each batch"),
        "the stream planned a partitioned table's statements once: {}",
        process.log()
    );
    process.stop();
}

/// teardown refuses while the pipeline runs; afterwards it drops the slot and publication, and
/// with --drop-checkpoint the checkpoint schema; `run` then starts afresh.
#[test]
fn teardown_refuses_while_running_then_cleans_up() {
    let pair = Pair::start();
    for cluster in [&pair.source, &pair.target] {
        cluster.psql("app", "CREATE TABLE t (id int PRIMARY KEY);");
    }
    let pipeline = pair.pipeline("gone", "tables = ['t']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_gone", &mut process);
    let (status, text) = switchyard(&["teardown"], &pipeline);
    assert!(!status.success(), "{text}");
    assert!(text.contains("is running (slot switchyard_gone is active)"), "{text}");
    assert!(process.stop().success());
    let (status, text) = switchyard(&["teardown", "--drop-checkpoint"], &pipeline);
    assert!(status.success(), "{text}");
    let leftovers = pair.source.psql(
        "app",
        "SELECT (SELECT count(*) FROM pg_replication_slots) + (SELECT count(*) FROM pg_publication)",
    );
    assert_eq!(leftovers, "0");
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM pg_namespace WHERE nspname = 'switchyard'"), "0");
}

#[test]
fn rows_trading_a_unique_value_in_one_batch_are_applied_in_source_order() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 50, 1);
    // Make the target process an update statement's rows in heap order, not in source order.
    pair.target.psql("app", "ALTER DATABASE app SET enable_nestloop = off; ALTER DATABASE app SET enable_mergejoin = off;");
    let pipeline = pair.pipeline("trading", TENANTIZE);
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_trading", &mut process);
    // With statistics the planner knows every row holds the one tenant, so it hashes the
    // statement's rows and scans the table, rather than hashing the table's rows of that tenant.
    pair.target.psql("app", "ANALYZE users");
    // User 2 gives up its email and user 1 takes it, in one source transaction: valid one row at
    // a time; in one statement visiting user 1 first, the unique (tenant_id, email) index objects.
    pair.source.psql(
        "app",
        "BEGIN;
         UPDATE users SET email = 'moved@example.com' WHERE id = 2;
         UPDATE users SET email = 'user2@example.com' WHERE id = 1;
         COMMIT;",
    );
    pair.wait_caught_up("switchyard_trading", &mut process);
    assert_tenantized_equal(&pair);
    assert!(process.log().contains("applying its changes one by one"), "the grouped statement did not hit the index; log:\n{}", process.log());
    process.stop();
}

/// Changes are applied as a replica (`[apply] as_replica`, on by default): a target trigger that
/// refuses every write, and a child whose parent the target does not have, do not stop the
/// stream; with `as_replica = false` the trigger fires and the pipeline reports its error.
#[test]
fn apply_as_replica_skips_target_triggers_and_foreign_keys() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 20, 1);
    let pipeline = pair.pipeline("replica", TENANTIZE);
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_replica", &mut process);
    pair.target.psql(
        "app",
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused by trigger'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION refuse();
         ALTER TABLE orders DROP CONSTRAINT orders_tenant_id_user_id_fkey;
         ALTER TABLE orders ADD FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id);
         DELETE FROM orders WHERE user_id = 20; DELETE FROM users WHERE id = 20;",
    );
    pair.source.psql("app", "INSERT INTO orders (user_id, amount, status) VALUES (20, 1, 'new'); UPDATE orders SET amount = 2 WHERE id = 1;");
    pair.wait_caught_up("switchyard_replica", &mut process);
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM orders WHERE user_id = 20"), "1");
    assert_eq!(pair.target.psql("app", "SELECT amount FROM orders WHERE id = 1"), "2.00");
    process.stop();

    let checked = pair.pipeline("replica", &format!("{TENANTIZE}\n[apply]\nas_replica = false\n"));
    let process = Switchyard::run(&checked);
    pair.source.psql("app", "UPDATE orders SET amount = 3 WHERE id = 1;");
    process.wait_for_log("the trigger did not fire", |log| log.contains("refused by trigger"));
    assert_eq!(pair.target.psql("app", "SELECT amount FROM orders WHERE id = 1"), "2.00");
    process.stop();
}

/// A role whose sessions get short statement, idle-in-transaction and idle-session timeouts
/// (set for the application's sessions, say) does not stop the pipeline: the copy's chunks and
/// its index builds outlast them, its sessions wait idle while the source is quiet, and
/// Switchyard's sessions run without them, as pg_dump's do.
#[test]
fn a_roles_short_timeouts_do_not_stop_the_copy_or_the_stream() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 20_000, 10);
    for cluster in [&pair.source, &pair.target] {
        cluster.psql(
            "postgres",
            "CREATE ROLE mover LOGIN SUPERUSER REPLICATION;
             ALTER ROLE mover SET statement_timeout = '20ms';
             ALTER ROLE mover SET idle_in_transaction_session_timeout = '50ms';
             ALTER ROLE mover SET idle_session_timeout = '100ms';",
        );
    }
    let pipeline = pair.pipeline("tenantize", &format!("{TENANTIZE}\n[verify]\ncontinuous = false\n"));
    let as_mover = std::fs::read_to_string(&pipeline).unwrap().replace("postgres://postgres@", "postgres://mover@");
    std::fs::write(&pipeline, as_mover).unwrap();
    let mut process = Switchyard::run(&pipeline);
    let changes: String = (0..200).map(|n| switchyard_testkit::seed_statement(3, n) + "\n").collect();
    pair.source.psql("app", &changes);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    // A quiet source: every session of the pipeline waits idle for longer than the role allows.
    std::thread::sleep(std::time::Duration::from_millis(500));
    pair.source.psql("app", "UPDATE users SET name = 'after a quiet spell' WHERE id = 7");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    let log = process.log();
    assert!(
        !log.contains("statement timeout") && !log.contains("idle-in-transaction timeout") && !log.contains("idle-session timeout"),
        "a timeout was hit:\n{log}"
    );
    assert!(!log.contains("transient error"), "a session was ended under the pipeline:\n{log}");
}

/// A slot the source invalidated (more than its max_slot_wal_keep_size of WAL went by while the
/// pipeline was stopped): `status` says so and what to do, and `run` stops with the same rather
/// than retrying, or streaming on from a gap.
#[test]
fn a_slot_the_source_invalidated_is_named_with_the_way_out() {
    let pair = Pair::start_with(&[("max_slot_wal_keep_size", "1MB")], &[]);
    seed_schemas(&pair);
    load_rows(&pair, 1_000, 5);
    let pipeline = pair.pipeline("tenantize", &format!("{TENANTIZE}\n[verify]\ncontinuous = false\n"));
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let (_, shown) = switchyard(&["status"], &pipeline);
    assert!(shown.contains("bytes of WAL to go before max_slot_wal_keep_size"), "status:\n{shown}");
    assert!(process.stop().success());
    let wal_status = "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'switchyard_tenantize'";
    for round in 0..10 {
        if pair.source.psql("app", wal_status) == "lost" {
            break;
        }
        assert!(round < 9, "the slot was not invalidated: {}", pair.source.psql("app", wal_status));
        pair.source.psql(
            "app",
            &format!("INSERT INTO users (email, name) SELECT 'more{round}-' || g || '@example.com', 'm' FROM generate_series(1, 5000) g"),
        );
        pair.source.psql("app", "SELECT pg_switch_wal()");
        pair.source.psql("app", "CHECKPOINT");
    }
    let (_, shown) = switchyard(&["status"], &pipeline);
    assert!(shown.contains("was invalidated by the source") && shown.contains("teardown --drop-checkpoint"), "status:\n{shown}");
    let (checked, said) = switchyard(&["check"], &pipeline);
    assert!(!checked.success() && said.contains("slot switchyard_tenantize") && said.contains("was invalidated by the source"), "check:\n{said}");
    assert!(said.contains("source: max_slot_wal_keep_size: is 1MB"), "check:\n{said}");
    let (status, log) = Switchyard::run(&pipeline).wait();
    assert!(!status.success(), "run went on with a lost slot:\n{log}");
    assert!(log.contains("was invalidated by the source") && log.contains("teardown --drop-checkpoint"), "log:\n{log}");
    assert!(!log.contains("transient error"), "a lost slot is not worth retrying:\n{log}");
    // The way out it names works.
    let (torn_down, said) = switchyard(&["teardown", "--drop-checkpoint"], &pipeline);
    assert!(torn_down.success(), "teardown:\n{said}");
    assert_eq!(pair.source.psql("app", "SELECT count(*) FROM pg_replication_slots"), "0");
    // A target with synchronous standbys: each apply commit waits for them, and check says so.
    pair.target.psql("app", "ALTER SYSTEM SET synchronous_standby_names = 'standby_a'");
    pair.target.psql("app", "SELECT pg_reload_conf()");
    while pair.target.psql("app", "SHOW synchronous_standby_names") != "standby_a" {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (_, said) = switchyard(&["check"], &pipeline);
    assert!(said.contains("target: synchronous_standby_names: is \"standby_a\": each apply commit waits for those standbys"), "check:\n{said}");
}
