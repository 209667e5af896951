//! Indexes set aside while the snapshot fills empty target tables: which ones, how they come
//! back, and what happens when the process stops or the rows break one of them.

use crate::support::*;

const SOURCE: &str = "CREATE TABLE items (id bigint PRIMARY KEY, code text, qty int, note text);
     CREATE TABLE parts (id bigint PRIMARY KEY, item_id bigint, label text);
     CREATE TABLE kept (id int PRIMARY KEY, v text);";

/// Every kind of index the copy may set aside (a primary key with storage options and included
/// columns, a deferrable unique constraint,
/// a partial expression index, a descending index with an awkward name) beside ones it must
/// keep: a key a foreign key references, a commented index, and those of a table that already
/// holds rows (another tenant's, in a merge).
const TARGET: &str = r#"CREATE TABLE items (id bigint, code text, qty int, note text,
         CONSTRAINT items_pkey PRIMARY KEY (id) WITH (fillfactor = 80),
         CONSTRAINT items_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED);
     CREATE INDEX items_note_lower ON items (lower(note)) WHERE qty > 0;
     CREATE INDEX items_qty ON items (qty) INCLUDE (note);
     COMMENT ON INDEX items_qty IS 'commented, so kept';
     CREATE TABLE parts (id bigint, item_id bigint REFERENCES items (id), label text,
         CONSTRAINT parts_pkey PRIMARY KEY (id) INCLUDE (label) WITH (fillfactor = 70, deduplicate_items = off));
     CREATE INDEX "Parts Label" ON parts (label DESC NULLS LAST);
     CREATE TABLE kept (id int PRIMARY KEY, v text);
     INSERT INTO kept VALUES (-1, 'already here');"#;

const PIPELINE: &str = "tables = ['public.items', 'public.parts', 'public.kept']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n";

fn with_schemas() -> Pair {
    let pair = Pair::start();
    pair.source.psql("app", SOURCE);
    pair.target.psql("app", TARGET);
    pair
}

/// The target's indexes and constraints as the server renders them, with comments.
fn definitions(target: &PgCluster) -> String {
    target.psql(
        "app",
        "SELECT string_agg(d, E'\\n' ORDER BY d) FROM (
             SELECT 'index ' || c.relname || ': ' || pg_get_indexdef(x.indexrelid) || ' / ' || coalesce(obj_description(x.indexrelid, 'pg_class'), '') AS d
               FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid WHERE c.relnamespace = 'public'::regnamespace
             UNION ALL
             SELECT 'constraint ' || conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace) t",
    )
}

/// Index name -> oid: an index set aside and built again has a new one.
fn index_oids(target: &PgCluster) -> std::collections::BTreeMap<String, String> {
    target
        .psql("app", "SELECT relname || '=' || oid FROM pg_class WHERE relkind = 'i' AND relnamespace = 'public'::regnamespace")
        .lines()
        .map(|l| l.split_once('=').map(|(n, o)| (n.to_string(), o.to_string())).unwrap())
        .collect()
}

fn rebuilt(before: &std::collections::BTreeMap<String, String>, after: &std::collections::BTreeMap<String, String>) -> Vec<String> {
    before.iter().filter(|(name, oid)| after.get(*name) != Some(oid)).map(|(name, _)| name.clone()).collect()
}

#[test]
fn indexes_set_aside_for_the_copy_come_back_as_they_were() {
    let pair = with_schemas();
    pair.source.psql(
        "app",
        "INSERT INTO items SELECT g, 'code-' || g, g % 7 - 2, CASE WHEN g % 5 = 0 THEN NULL ELSE 'Note ' || g END FROM generate_series(1, 20000) g;
         INSERT INTO parts SELECT g, 1 + g % 20000, 'label ' || (g % 300) FROM generate_series(1, 5000) g;
         INSERT INTO kept SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    );
    let shapes = definitions(&pair.target);
    let oids = index_oids(&pair.target);
    let pipeline = pair.pipeline("deferring", &format!("{PIPELINE}[snapshot]\nchunk_rows = 2000\n"));
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_deferring", &mut process);

    assert_eq!(definitions(&pair.target), shapes, "the indexes and constraints after the copy differ from the operator's");
    assert_eq!(
        rebuilt(&oids, &index_oids(&pair.target)),
        ["Parts Label", "items_code_key", "items_note_lower", "parts_pkey"],
        "set aside and built again: exactly the indexes nothing depends on, of the tables that were empty"
    );
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM switchyard.deferred_indexes"), "0");
    let log = process.log();
    for (table, indexes) in [("public.items", "2 indexes set aside for the copy: items_code_key, items_note_lower"), ("public.parts", "2 indexes set aside for the copy: Parts Label, parts_pkey")] {
        assert!(log.lines().any(|l| l.contains(table) && l.contains(&format!("copied; building {indexes}"))), "{table}: {indexes}; log:\n{log}");
    }
    for (table, columns) in [("items", "id, code, qty, note"), ("parts", "id, item_id, label"), ("kept", "id, v")] {
        let query = format!("SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM (SELECT {columns} FROM {table} WHERE id > 0) t");
        assert_same_rows(table, &pair.source.psql("app", &query), &pair.target.psql("app", &query));
    }
    // Built again, they hold: a duplicate code is refused, and the stream goes on.
    let duplicate = pair.target.try_psql("app", "INSERT INTO items VALUES (-5, 'code-7', 1, 'x')");
    assert!(duplicate.is_err_and(|e| e.contains("items_code_key")), "the unique constraint is back in force");
    pair.source.psql("app", "UPDATE items SET qty = 100 WHERE id = 3; DELETE FROM parts WHERE id = 4; INSERT INTO items VALUES (20001, 'new', 1, 'n');");
    pair.wait_caught_up("switchyard_deferring", &mut process);
    assert_eq!(pair.target.psql("app", "SELECT qty FROM items WHERE id = 3"), "100");
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM parts WHERE id = 4"), "0");
    assert_eq!(pair.target.psql("app", "SELECT code FROM items WHERE id = 20001"), "new");
}

/// Killed during the copy, with its indexes set aside: `teardown` builds them again before it
/// forgets the pipeline, since no run of it could (its slot is gone).
#[test]
fn teardown_after_a_killed_copy_builds_the_indexes_set_aside() {
    let pair = with_schemas();
    pair.source.psql("app", "INSERT INTO items SELECT g, 'code-' || g, 1, 'n' FROM generate_series(1, 300000) g;");
    let shapes = definitions(&pair.target);
    // Small chunks one at a time: the copy takes long enough to be killed in.
    let pipeline = pair.pipeline("killed", &format!("{PIPELINE}[snapshot]\nchunk_rows = 1000\nparallel = 1\n"));
    let process = Switchyard::run(&pipeline);
    process.wait_for_log("no index was set aside", |log| log.contains("to build after the copy: items_code_key"));
    process.kill9();
    assert_eq!(
        pair.target.psql("app", "SELECT to_regclass('public.items_code_key') IS NULL, count(*) > 0 FROM switchyard.deferred_indexes"),
        "t|t",
        "the kill did not land while the indexes were set aside"
    );
    let (_, shown) = switchyard(&["status"], &pipeline);
    assert!(shown.contains("indexes    set aside for the copy") && shown.contains("items_code_key of public.items"), "status:\n{shown}");
    // The killed process's walsender goes when the server notices the closed connection.
    while pair.source.psql("app", "SELECT count(*) FROM pg_replication_slots WHERE active") != "0" {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (status, output) = switchyard(&["teardown", "--drop-checkpoint"], &pipeline);
    assert!(status.success(), "teardown failed:\n{output}");
    assert_eq!(definitions(&pair.target), shapes, "teardown left the target without the indexes it set aside");
    assert_eq!(pair.target.psql("app", "SELECT to_regclass('switchyard.pipelines') IS NULL"), "t", "the checkpoint schema is dropped");
}

/// Rows that break an index set aside (the target is unique where the source is not) stop the
/// run with an error naming the index, the duplicate and where its definition is kept; fixed
/// on the target, the next run builds it and streams.
#[test]
fn rows_breaking_an_index_set_aside_are_named_and_the_next_run_builds_it() {
    let pair = with_schemas();
    pair.source.psql("app", "INSERT INTO items SELECT g, CASE WHEN g = 900 THEN 'code-1' ELSE 'code-' || g END, 1, 'n' FROM generate_series(1, 3000) g;");
    let shapes = definitions(&pair.target);
    let pipeline = pair.pipeline("breaking", PIPELINE);
    let (status, log) = Switchyard::run(&pipeline).wait();
    assert!(!status.success(), "the run went on with a unique index it could not build:\n{log}");
    assert!(
        log.contains("cannot build index items_code_key of public.items again after the copy")
            && log.contains("(code)=(code-1) is duplicated")
            && log.contains("switchyard.deferred_indexes"),
        "the error names the index, the duplicate and where the definition is kept:\n{log}"
    );
    pair.target.psql("app", "DELETE FROM items WHERE id = 900");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_breaking", &mut process);
    assert_eq!(definitions(&pair.target), shapes);
}

/// A target table another session holds a lock on is not waited for beyond a moment: it is
/// copied into with its indexes as they are, and the other tables' are still set aside.
#[test]
fn a_table_in_use_keeps_its_indexes_and_the_copy_goes_on() {
    let pair = with_schemas();
    pair.source.psql("app", "INSERT INTO items SELECT g, 'code-' || g, 1, 'n' FROM generate_series(1, 2000) g;
                             INSERT INTO parts SELECT g, g, 'p' FROM generate_series(1, 2000) g;");
    let oids = index_oids(&pair.target);
    let reader = std::thread::spawn({
        let target = pair.target.url("app");
        let psql = pair.target.bin("psql");
        move || {
            std::process::Command::new(psql)
                .args(["-X", "-q", "-d", &target, "-c", "BEGIN; LOCK TABLE items IN ACCESS SHARE MODE; SELECT pg_sleep(3); COMMIT;"])
                .output()
                .unwrap()
        }
    });
    while pair.target.psql("app", "SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass AND mode = 'AccessShareLock' AND granted") == "0" {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pipeline = pair.pipeline("in_use", PIPELINE);
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_in_use", &mut process);
    assert!(reader.join().unwrap().status.success());
    let log = process.log();
    assert!(log.contains("target table is in use: copying into it as it is"), "log:\n{log}");
    assert_eq!(rebuilt(&oids, &index_oids(&pair.target)), ["Parts Label", "parts_pkey"], "only the free table's indexes were set aside");
    let query = "SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM (SELECT id, code FROM items) t";
    assert_same_rows("items", &pair.source.psql("app", query), &pair.target.psql("app", query));
}

/// A table's indexes are built as soon as its own chunks are in, while other tables are still
/// being copied: here while another session holds up every copy into `parts`.
#[test]
fn a_tables_indexes_are_built_while_other_tables_are_still_copied() {
    let pair = with_schemas();
    pair.source.psql(
        "app",
        "INSERT INTO items SELECT g, 'code-' || g, g % 7 - 2, 'Note ' || g FROM generate_series(1, 20000) g;
         INSERT INTO parts SELECT g, 1 + g % 20000, 'label ' || g FROM generate_series(1, 5000) g;",
    );
    let oids = index_oids(&pair.target);
    // SHARE mode: a COPY into parts waits for it (and setting parts' indexes aside gives up).
    let mut holder = std::process::Command::new(pair.target.bin("psql"))
        .args(["-X", "-q", "-d", &pair.target.url("app")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut hold = holder.stdin.take().unwrap();
    std::io::Write::write_all(&mut hold, b"BEGIN; LOCK TABLE parts IN SHARE MODE;\n").unwrap();
    while pair.target.psql("app", "SELECT count(*) FROM pg_locks WHERE relation = 'parts'::regclass AND mode = 'ShareLock' AND granted") == "0" {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let pipeline = pair.pipeline("overlap", &format!("{PIPELINE}[snapshot]\nchunk_rows = 2000\nparallel = 2\n"));
    let mut process = Switchyard::run(&pipeline);
    process.wait_for_log("items' indexes were not built while parts was held up", |log| {
        log.contains("built index items_code_key") && log.contains("built index items_note_lower")
    });
    assert_eq!(
        pair.target.psql("app", "SELECT count(*) > 0 FROM switchyard.snapshot_chunks WHERE source_table = 'parts' AND copied_at IS NULL"),
        "t",
        "parts' chunks were all copied before items' indexes were built"
    );
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM switchyard.deferred_indexes WHERE table_name = 'items'"), "0");
    std::io::Write::write_all(&mut hold, b"COMMIT;\n").unwrap();
    drop(hold);
    assert!(holder.wait().unwrap().success());
    pair.wait_caught_up("switchyard_overlap", &mut process);
    assert_eq!(rebuilt(&oids, &index_oids(&pair.target)), ["items_code_key", "items_note_lower"], "parts was in use, so only items' were set aside");
    for (table, columns) in [("items", "id, code, qty, note"), ("parts", "id, item_id, label")] {
        let query = format!("SELECT string_agg(t::text, E'\\n' ORDER BY id) FROM (SELECT {columns} FROM {table}) t");
        assert_same_rows(table, &pair.source.psql("app", &query), &pair.target.psql("app", &query));
    }
}
