use crate::support::*;

/// ADD COLUMN (nullable, and with a default) on the source reaches the target on its own, with
/// existing rows holding the same default; a dropped column stops the pipeline naming the table
/// and the change, before a row of the new shape is written.
#[test]
fn add_column_is_carried_and_other_changes_stop() {
    let pair = Pair::start();
    for cluster in [&pair.source, &pair.target] {
        cluster.psql("app", "CREATE TABLE items (id int PRIMARY KEY, name text);");
    }
    pair.source.psql("app", "INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 100) g;");
    let pipeline = pair.pipeline("ddl", "tables = ['items']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_ddl", &mut process);
    pair.source.psql("app", "ALTER TABLE items ADD COLUMN note text; ALTER TABLE items ADD COLUMN qty integer NOT NULL DEFAULT 7;");
    pair.source.psql("app", "INSERT INTO items VALUES (101, 'new', 'hello', 3); UPDATE items SET note = 'upd' WHERE id = 5;");
    pair.wait_caught_up("switchyard_ddl", &mut process);
    let query = "SELECT string_agg(r::text, E'\\n' ORDER BY id) FROM items r";
    assert_same_rows("items", &pair.source.psql("app", query), &pair.target.psql("app", query));

    pair.source.psql("app", "ALTER TABLE items DROP COLUMN name; INSERT INTO items (id) VALUES (102);");
    let (status, log) = process.wait();
    assert!(!status.success(), "switchyard should stop on a dropped column; log:\n{log}");
    assert!(log.contains("table public.items changed on the source"), "{log}");
    assert!(log.contains("only ADD COLUMN is carried over"), "{log}");
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM items WHERE id = 102"), "0", "a row of the new shape was written");
    let (_, status_text) = switchyard(&["status"], &pipeline);
    assert!(status_text.contains("last error table public.items changed"), "{status_text}");
}

/// A pipeline whose tables are idle while the rest of the server is busy still confirms its
/// slot forward, so it does not pin WAL.
#[test]
fn idle_tables_do_not_pin_wal() {
    let pair = Pair::start();
    for cluster in [&pair.source, &pair.target] {
        cluster.psql("app", "CREATE TABLE quiet (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY, v text);");
    }
    pair.source.create_database("other");
    pair.source.psql("other", "CREATE TABLE elsewhere (v text);");
    let pipeline = pair.pipeline("idle", "tables = ['quiet']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_idle", &mut process);
    let before = pair.source.psql("app", "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'switchyard_idle'");
    pair.source.psql("app", "INSERT INTO busy (v) SELECT repeat('x', 200) FROM generate_series(1, 20000);");
    pair.source.psql("other", "INSERT INTO elsewhere SELECT repeat('y', 200) FROM generate_series(1, 20000);");
    // Waits on the slot's confirmed position passing the busy writes: nothing of ours was in them.
    pair.wait_caught_up("switchyard_idle", &mut process);
    let after = pair.source.psql("app", "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'switchyard_idle'");
    let moved = pair.source.psql("app", &format!("SELECT pg_wal_lsn_diff('{after}', '{before}') > 1000000"));
    assert_eq!(moved, "t", "the slot stayed at {before} (now {after})");
}
