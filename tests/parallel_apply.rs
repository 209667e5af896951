use std::time::{Duration, Instant};

use crate::support::*;

/// Lanes ahead of the pipeline's checkpoint: committed lane rows past its applied position.
const LANES_AHEAD: &str = "SELECT count(*) FROM switchyard.apply_lanes l JOIN switchyard.pipelines p ON p.name = l.pipeline \
                           WHERE substr(l.applied_position, 4)::pg_lsn > substr(p.applied_position, 4)::pg_lsn";

/// Holds the first commit of lane 0 that some other lane has already committed (a deferred
/// trigger on the checkpoint row, fired at COMMIT, sleeping until its backend is terminated):
/// the window in which a crash leaves lanes ahead of the checkpoint, made to last.
const HOLD_LANE_ZERO_COMMIT: &str = r#"
CREATE SEQUENCE hold_once;
CREATE FUNCTION hold_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM switchyard.apply_lanes WHERE pipeline = NEW.name AND applied_position = NEW.applied_position)
     AND nextval('hold_once') = 1 THEN
    PERFORM pg_sleep(600);
  END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER hold_checkpoint AFTER UPDATE ON switchyard.pipelines
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_checkpoint();
ALTER TABLE switchyard.pipelines ENABLE ALWAYS TRIGGER hold_checkpoint;
"#;

/// Source transactions that each insert, update and delete orders: spread over every lane.
fn order_transactions(pair: &Pair, count: usize) {
    for _ in 0..count {
        pair.source.psql(
            "app",
            "BEGIN;
             INSERT INTO orders (user_id, amount, status) SELECT 1 + g % 100, g, 'new' FROM generate_series(1, 40) g;
             UPDATE orders SET note = 'touched' WHERE id IN (SELECT id FROM orders ORDER BY id DESC LIMIT 60 OFFSET 20);
             DELETE FROM orders WHERE id IN (SELECT id FROM orders ORDER BY id DESC LIMIT 3 OFFSET 5);
             COMMIT;",
        );
    }
}

/// With `[apply] parallel = 3`, a batch's rows go over three target connections. kill -9
/// after two lanes committed a batch of several source transactions and before lane 0
/// committed it (and the checkpoint with it): the next run, with a different lane count
/// configured and a backlog behind the batch, keeps the three lanes until it has passed them,
/// applies one source transaction at a time until then, and each lane skips what it already
/// applied. A unique index added to the target in between would now send the orders to lane 0
/// whole; until the lanes are passed, the run routes by what the lanes recorded instead. The
/// target ends equal to the source: nothing lost, nothing applied twice (an insert applied
/// twice stops the run on the primary key).
#[test]
fn parallel_lanes_apply_exactly_once_across_a_kill_between_lane_commits() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 2_000, 5);
    let lanes = |n: usize| format!("{TENANTIZE}\n[apply]\nparallel = {n}\n");
    let pipeline = pair.pipeline("tenantize", &lanes(3));
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    // Caught up may be seen before the stream opened its lanes (nothing to apply after the copy).
    process.wait_for_log("the run did not apply over 3 lanes", |log| log.contains(r#"applying over parallel lanes","lanes":3"#));
    process.stop();

    // A backlog the next start applies as one batch, whose lane 0 commit is held.
    pair.target.psql("app", HOLD_LANE_ZERO_COMMIT);
    order_transactions(&pair, 5);
    let mut process = Switchyard::run(&pipeline);
    wait_for(&pair.target, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'", "1", 60, &mut process);
    assert_eq!(pair.target.psql("app", LANES_AHEAD), "2", "lanes 1 and 2 did not both commit ahead of the held checkpoint");
    process.kill9();
    pair.target.psql("app", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep'");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pair.target.psql("app", "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'") != "0" {
        assert!(Instant::now() < deadline, "the held commit did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(pair.target.psql("app", LANES_AHEAD), "2", "after the crash, the lanes that committed stay ahead of the checkpoint");
    let (_, status) = switchyard(&["status"], &pipeline);
    assert!(status.contains("apply      3 parallel lanes; ahead of the checkpoint after a stop, settled by the next run: lane 1 at"), "{status}");
    assert!(status.contains(", lane 2 at"), "{status}");
    let routes = pair.target.psql("app", "SELECT routes FROM switchyard.apply_lanes WHERE lane = 1");
    assert!(routes.contains(r#"{"schema":"public","table":"orders","ordered":false,"key":["tenant_id","id"]}"#), "{routes}");
    // A unique index besides the key: from now on, the target ties orders' rows together.
    pair.target.psql("app", "CREATE UNIQUE INDEX orders_key_and_amount ON orders (tenant_id, id, amount)");

    // More backlog behind the batch, then a start configured for two lanes, under load.
    order_transactions(&pair, 3);
    let writer = Writer::start(&pair.source, 23);
    let pipeline = pair.pipeline("tenantize", &lanes(2));
    let mut process = Switchyard::run(&pipeline);
    std::thread::sleep(Duration::from_millis(1500));
    let written = writer.finish();
    assert!(written > 50, "the writer wrote only {written} statements");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let log = process.log();
    assert!(log.contains("apply lanes are ahead of the checkpoint after a stop"), "{log}");
    assert!(log.contains(r#"applying over parallel lanes","lanes":3"#), "{log}");
    assert_tenantized_equal(&pair);
    assert_eq!(pair.target.psql("app", LANES_AHEAD), "0");
    pair.target.psql("app", "DROP INDEX orders_key_and_amount");

    // The next start, with nothing ahead, takes the configured count. A column added on the
    // source reaches the target through lane 0; the other lanes then write it too.
    process.stop();
    let mut process = Switchyard::run(&pipeline);
    order_transactions(&pair, 2);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    pair.source.psql("app", "ALTER TABLE orders ADD COLUMN extra text DEFAULT 'x'");
    order_transactions(&pair, 1);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    pair.source.psql("app", "UPDATE orders SET extra = 'e' || id WHERE id % 5 = 0");
    order_transactions(&pair, 2);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert!(process.log().contains(r#"applying over parallel lanes","lanes":2"#), "{}", process.log());
    assert_tenantized_equal(&pair);
    let extra = "SELECT string_agg(id || ':' || extra, ',' ORDER BY id) FROM orders";
    assert_same_rows("orders.extra", &pair.source.psql("app", extra), &pair.target.psql("app", extra));
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM switchyard.apply_lanes WHERE applied_position IS NOT NULL"), "1");
}

/// Under a write load with small batches, lanes' connections are dropped under them and the
/// process is killed with SIGKILL at random moments; after a final restart the target equals
/// the source.
#[test]
fn parallel_lanes_survive_dropped_connections_and_kill_9_under_load() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 2_000, 5);
    let pipeline = pair.pipeline("tenantize", &format!("{TENANTIZE}\n[apply]\nparallel = 3\nmax_batch_changes = 60\n"));
    let writer = Writer::start(&pair.source, 31);
    let mut state = 0x9E3779B97F4A7C15u64;
    let mut process = Switchyard::run(&pipeline);
    let mut dropped = 0;
    for round in 0..10 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        std::thread::sleep(Duration::from_millis(200 + state % 700));
        if round % 2 == 0 {
            let terminated = pair.target.psql(
                "app",
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'switchyard' AND pid <> pg_backend_pid()",
            );
            dropped += terminated.parse::<u32>().unwrap();
            process.assert_running();
        } else {
            process.kill9();
            process = Switchyard::run(&pipeline);
        }
    }
    assert!(dropped >= 3, "only {dropped} target connections were dropped");
    writer.finish();
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    assert!(process.log().contains(r#"applying over parallel lanes","lanes":3"#), "{}", process.log());
}
