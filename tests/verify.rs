use switchyard_postgres::digest::{ColumnHash, PgDigest, Projection, RowHash, RowSet};
use switchyard_postgres::Endpoint;

use crate::support::*;

/// Injected faults on the target — a changed value, a deleted row, an extra row, a changed
/// TOASTed value, a wrong tenant_id, a NULL where the source has a value — are each found with
/// their exact key and column in a 1M-row table, while the stream keeps running; exit status 1,
/// and 0 when equal. `--repair` fixes each while writes go on, and a later pass is clean.
#[test]
fn verify_finds_each_injected_fault_with_key_and_column() {
    let pair = Pair::start();
    seed_schemas(&pair);
    // orders holds 1M rows: faults are found among them, not in a toy table.
    load_rows(&pair, 100_000, 10);
    pair.source.psql("app", "UPDATE orders SET note = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 400) g) WHERE id = 77;");
    let pipeline = pair.pipeline("tenantize", TENANTIZE);
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let (status, text) = switchyard(&["verify"], &pipeline);
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("equal"), "{text}");

    pair.target.psql(
        "app",
        "INSERT INTO tenants VALUES ('00000000-0000-0000-0000-000000000002', 'two');
         SET session_replication_role = replica;
         UPDATE orders SET amount = amount + 1 WHERE id = 10;
         DELETE FROM orders WHERE id = 20;
         INSERT INTO orders (tenant_id, id, user_id, amount, status) VALUES ('00000000-0000-0000-0000-000000000001', 5000000, 1, 1, 'x');
         UPDATE orders SET note = note || 'tampered' WHERE id = 77;
         UPDATE orders SET tenant_id = '00000000-0000-0000-0000-000000000002' WHERE id = 30;
         UPDATE users SET name = NULL WHERE id = 40;",
    );
    // Keep the stream busy while verifying, at a pace the pipeline keeps up with.
    let writer = switchyard_testkit::SqlLoad::start(&pair.source, "app", |n| {
        format!("{} SELECT pg_sleep(0.02);", switchyard_testkit::seed_statement(3, n))
    });
    let differences_found = |pipeline: &std::path::Path| -> Vec<String> {
        let (status, text) = switchyard(&["verify", "--json"], pipeline);
        assert_eq!(status.code(), Some(1), "{text}");
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["differences"].as_array().unwrap().iter().map(|d| format!("{} {} {}", d["kind"].as_str().unwrap(), d["key"].as_str().unwrap(), d["columns"])))
            .collect()
    };
    let differences = differences_found(&pipeline);
    // The portable canonical hash finds exactly what the native one (the default here) finds.
    let canonical = pipeline.with_file_name("tenantize-canonical.toml");
    std::fs::write(&canonical, std::fs::read_to_string(&pipeline).unwrap() + "\n[verify]\ndigest = \"canonical\"\n").unwrap();
    assert_eq!(differences_found(&canonical), differences);
    writer.finish();
    let tenant = "tenant_id=00000000-0000-0000-0000-000000000001";
    for expected in [
        format!("changed id=10, {tenant} [\"amount\"]"),
        format!("missing id=20, {tenant} []"),
        format!("extra id=5000000, {tenant} []"),
        format!("changed id=77, {tenant} [\"note\"]"),
        format!("missing id=30, {tenant} []"),
        format!("changed id=40, {tenant} [\"name\"]"),
    ] {
        assert!(differences.contains(&expected), "missing {expected:?} in {differences:#?}");
    }
    assert_eq!(differences.len(), 6, "{differences:#?}");
    let (status, text) = switchyard(&["verify", "--table", "users"], &pipeline);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains("changed  id=40") && !text.contains("orders"), "{text}");

    // Repair while the stream runs under load; the re-check is clean, and so is a later pass.
    let writer = switchyard_testkit::SqlLoad::start(&pair.source, "app", |n| {
        format!("{} SELECT pg_sleep(0.02);", switchyard_testkit::seed_statement(5, n))
    });
    let (status, text) = switchyard(&["verify", "--repair"], &pipeline);
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("repaired 6 rows"), "{text}");
    // The same rows change on the source after the repair: the stream must carry that on.
    pair.source.psql("app", "UPDATE orders SET amount = 4242 WHERE id IN (10, 77); UPDATE users SET name = 'later' WHERE id = 40;");
    writer.finish();
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let (status, text) = switchyard(&["verify"], &pipeline);
    assert_eq!(status.code(), Some(0), "{text}");
    assert_eq!(pair.target.psql("app", "SELECT amount FROM orders WHERE id = 10"), "4242.00");
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM orders WHERE id = 30"), "2", "tenant one's row 30 is back, tenant two's stays");
    process.assert_running();
}

/// The digest computed inside PostgreSQL equals the canonical digest computed here from the same
/// rows, for every type of the types test: one encoding, wherever it runs.
#[test]
fn in_database_digest_equals_the_canonical_one() {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, a text, b numeric, c float8, d timestamptz, e bytea, f jsonb, g int[], h interval, i bool);
         INSERT INTO t VALUES (1, 'ünï ✓', 'NaN', '-0', '2024-06-01 12:00+02', '\\x00ff', '{\"k\": [1, 2]}', '{1,NULL}', '1 day -02:00', true),
                              (2, '', 1e-30, 'Infinity', '-infinity', '\\x', 'null', '{}', '0', false),
                              (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                              (4, E'a \"q\" \\\\ (p), c\t\n', NULL, NULL, NULL, NULL, '{\"a b\": \"(,)\"}', NULL, NULL, NULL),
                              (5, 'NULL', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let digest = PgDigest::connect(&Endpoint::parse(&cluster.url("app")).unwrap()).await.unwrap();
        let columns = ["id", "a", "b", "c", "d", "e", "f", "g", "h", "i"];
        let rows = RowSet {
            table: switchyard_core::TableId::new("public", "t"),
            columns: columns.iter().map(|c| Projection::Column(c.to_string())).chain([Projection::Constant("k".into())]).collect(),
            conditions: vec![],
            range: None,
            typed: vec![],
            hash: Default::default(),
            not_null: vec![],
        };
        let (in_database, _) = digest.digest(&rows).await.unwrap();
        let mut here = switchyard_core::digest::ChunkDigest::default();
        for row in digest.rows(&rows).await.unwrap() {
            here.add(&row);
        }
        assert_eq!(in_database, here);
        assert_eq!(here.rows, 5);
    });
}

/// The native digest (each column through its type's hash) is equal for equal rows in another
/// table, and tells apart a change in any one column, NULL for a value, and two values trading
/// columns: for every type of the types test.
#[test]
fn native_digest_tells_apart_a_change_in_any_column() {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    let columns = ["id", "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"];
    let definition = "(id int PRIMARY KEY, a text, b numeric, c float8, d timestamptz, e bytea, f jsonb, g int[], h interval, i bool, j json, k uuid)";
    cluster.psql(
        "app",
        &format!(
            "CREATE TABLE t {definition}; CREATE TABLE u {definition};
             INSERT INTO t VALUES (1, 'ünï ✓', 12.5, 1.5, '2024-06-01 12:00+02', '\\x00ff', '{{\"k\": [1, 2]}}', '{{1,NULL}}', '1 day -02:00', true, '{{\"a\": 1}}', gen_random_uuid()),
                                  (2, 'b', 2, 2, '2024-06-02', '\\x01', '[]', '{{}}', '0', false, '[]', gen_random_uuid()),
                                  (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
             INSERT INTO u SELECT * FROM t;"
        ),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let digest = PgDigest::connect(&Endpoint::parse(&cluster.url("app")).unwrap()).await.unwrap();
        let type_oids: Vec<u32> = digest
            .client()
            .query("SELECT atttypid FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0 ORDER BY attnum", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect();
        let hashes = digest.column_hashes(&type_oids).await.unwrap();
        assert!(matches!(&hashes[0], ColumnHash::Function(_, f) if f == "hashint4extended"), "{hashes:?}");
        assert_eq!(hashes[1], ColumnHash::Text, "text is collatable: hashed under C");
        assert_eq!(hashes[10], ColumnHash::Text, "json has no hash opclass");
        // A projected constant (an attached tenant) is left out of the hash.
        let rows = |table: &str| RowSet {
            table: switchyard_core::TableId::new("public", table),
            columns: columns.iter().map(|c| Projection::Column(c.to_string())).chain([Projection::Constant("k".into())]).collect(),
            conditions: vec![],
            range: None,
            typed: vec![],
            hash: RowHash::Native(hashes.iter().cloned().chain([ColumnHash::Skip]).collect()),
            not_null: vec![],
        };
        let (original, _) = digest.digest(&rows("t")).await.unwrap();
        let digest_of_u = || async { digest.digest(&rows("u")).await.unwrap().0 };
        assert_eq!(digest_of_u().await, original);
        // A side that declares a column NOT NULL hashes it without the NULL case, to the same.
        let declared = RowSet { not_null: vec!["id".into()], ..rows("u") };
        assert_eq!(digest.digest(&declared).await.unwrap().0, original);
        assert_eq!(original.rows, 3);
        for column in &columns[1..] {
            for change in [
                format!("UPDATE u SET {column} = NULL WHERE id = 1"),
                format!("UPDATE u SET {column} = (SELECT {column} FROM t WHERE id = 1) WHERE id = 3"),
                format!("UPDATE u SET {column} = (SELECT {column} FROM t WHERE id = 2) WHERE id = 1"),
            ] {
                cluster.psql("app", &change);
                assert_ne!(digest_of_u().await, original, "{change}");
                cluster.psql("app", "DELETE FROM u; INSERT INTO u SELECT * FROM t;");
                assert_eq!(digest_of_u().await, original, "restored after {change}");
            }
        }
        // Values trading columns of the same type are a change too: positions seed the hashes.
        cluster.psql(
            "app",
            "ALTER TABLE t ADD COLUMN l int; ALTER TABLE u ADD COLUMN l int;
             UPDATE t SET l = 7 WHERE id = 1; UPDATE u SET id = 7, l = 1 WHERE id = 1;",
        );
        let mut hashes_with_l = hashes.clone();
        hashes_with_l.push(hashes[0].clone());
        let with_l = |table: &str| RowSet {
            columns: columns.iter().chain(&["l"]).map(|c| Projection::Column(c.to_string())).collect(),
            hash: RowHash::Native(hashes_with_l.clone()),
            ..rows(table)
        };
        assert_ne!(digest.digest(&with_l("t")).await.unwrap().0, digest.digest(&with_l("u")).await.unwrap().0);
    });
}

/// Verification while the source takes inserts, updates, deletes and key updates reports no
/// difference: chunks read while their rows change are re-checked once the stream has passed
/// the source read, not reported.
#[test]
fn verify_under_load_reports_no_false_differences() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 5_000, 10);
    let pipeline = pair.pipeline("tenantize", &TENANTIZE.replace("[snapshot]", "[verify]\nchunk_rows = 4000\n\n[snapshot]"));
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let load = switchyard_testkit::SqlLoad::start(&pair.source, "app", |n| {
        let statement = if n % 7 == 0 {
            "UPDATE orders SET id = nextval('orders_id_seq') WHERE id = (SELECT min(id) FROM orders WHERE status = 'new');".to_string()
        } else {
            switchyard_testkit::seed_statement(9, n)
        };
        format!("{statement} SELECT pg_sleep(0.004);")
    });
    for round in 0..3 {
        let (status, text) = switchyard(&["verify", "--json"], &pipeline);
        let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
        for table in report["tables"].as_array().unwrap() {
            assert_eq!(table["rows_differing"], 0, "round {round}: a false difference: {table:#}");
        }
        assert!(status.code() == Some(0) || status.code() == Some(1), "{text}");
    }
    let sent = load.finish();
    assert!(sent > 200, "the load sent only {sent} statements");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let (status, text) = switchyard(&["verify"], &pipeline);
    assert_eq!(status.code(), Some(0), "{text}");
}

/// Integrity on the target: an orphan per foreign key, a row without its tenant, a reference
/// that crosses tenants, and a broken business rule are each counted and named by key.
#[test]
fn integrity_checks_count_and_name_violations() {
    let pair = Pair::start();
    pair.source.psql("app", switchyard::demo::SOURCE_SCHEMA);
    // A target whose orders reference users by id alone, so a reference could cross tenants.
    pair.target.psql(
        "app",
        "CREATE TABLE users (tenant_id uuid NOT NULL, id bigint NOT NULL, email text NOT NULL, name text, created_at timestamptz NOT NULL,
                                 PRIMARY KEY (tenant_id, id), UNIQUE (id));
             CREATE TABLE orders (tenant_id uuid, id bigint NOT NULL, user_id bigint NOT NULL, amount numeric(12,2) NOT NULL, status text NOT NULL, note text,
                                  UNIQUE (tenant_id, id), CONSTRAINT orders_user_fk FOREIGN KEY (user_id) REFERENCES users (id) NOT VALID);",
    );
    pair.source.psql("app", "INSERT INTO users (email) SELECT 'u' || g FROM generate_series(1, 20) g; INSERT INTO orders (user_id, amount, status) SELECT g, g, 'new' FROM generate_series(1, 20) g;");
    let pipeline = pair.pipeline(
        "tenantize",
        &format!("{TENANTIZE}\n[[verify.rules]]\ntable = \"public.orders\"\nname = \"positive amount\"\ncheck = \"amount > 0\"\n"),
    );
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let (status, text) = switchyard(&["verify"], &pipeline);
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("foreign key orders_user_fk") && text.contains("rule positive amount"), "{text}");

    pair.target.psql(
        "app",
        "SET session_replication_role = replica;
             INSERT INTO users VALUES ('00000000-0000-0000-0000-000000000002', 500, 'x', NULL, now());
             UPDATE orders SET user_id = 500 WHERE id = 3;        -- crosses to tenant two
             UPDATE orders SET user_id = 9999 WHERE id = 4;       -- an orphan
             UPDATE orders SET amount = -1 WHERE id = 5;          -- breaks the rule (and differs)
             INSERT INTO orders VALUES (NULL, 77, 1, 1, 'new');   -- no tenant",
    );
    let (status, text) = switchyard(&["verify", "--json"], &pipeline);
    assert_eq!(status.code(), Some(1), "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let finding = |check: &str| {
        let all = report["integrity"].as_array().unwrap();
        let on_orders = |f: &&serde_json::Value| f["check"] == check && f["table"] == "public.orders";
        all.iter().find(on_orders).unwrap_or_else(|| panic!("no {check} in {all:#?}")).clone()
    };
    let tenant = "tenant_id=00000000-0000-0000-0000-000000000001";
    assert_eq!(finding("foreign key orders_user_fk")["violations"], 1);
    assert_eq!(finding("foreign key orders_user_fk")["examples"][0], format!("id=4, {tenant}"));
    assert_eq!(finding("tenant isolation via orders_user_fk")["violations"], 1);
    assert_eq!(finding("tenant isolation via orders_user_fk")["examples"][0], format!("id=3, {tenant}"));
    assert_eq!(finding("rule positive amount")["violations"], 1);
    assert_eq!(finding("every row has tenant_id")["violations"], 1);
}

/// Continuous verification inside `run`: while the source takes writes it reports no difference
/// (`status` shows it after every pass); a fault injected on the target is found on its own.
#[test]
fn continuous_verification_finds_faults_without_false_alarms() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 2_000, 10);
    let pipeline = pair.pipeline(
        "tenantize",
        &TENANTIZE.replace("[snapshot]", "[verify]\ncontinuous_chunk_rows = 5000\nfull_pass_minutes = 0\n\n[snapshot]"),
    );
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let verification = || {
        let (_, text) = switchyard(&["status", "--json"], &pipeline);
        let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{text}"));
        status["verification"].clone()
    };
    let wait_for = |what: &str, done: &dyn Fn(&serde_json::Value) -> bool, process: &mut Switchyard| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        loop {
            let state = verification();
            if done(&state) {
                return state;
            }
            process.assert_running();
            assert!(std::time::Instant::now() < deadline, "{what}: {state}\n{}", process.log());
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    wait_for("a first full pass", &|v| v["full_passes"].as_i64().unwrap_or(0) >= 1, &mut process);

    // 60 s of concurrent writes from two sessions: inserts, updates, deletes, key updates.
    let loads: Vec<_> = [13u64, 14]
        .into_iter()
        .map(|seed| {
            switchyard_testkit::SqlLoad::start(&pair.source, "app", move |n| {
                let statement = if n % 9 == 0 {
                    "UPDATE orders SET id = nextval('orders_id_seq') WHERE id = (SELECT min(id) FROM orders WHERE status = 'new');".to_string()
                } else {
                    switchyard_testkit::seed_statement(seed, n)
                };
                format!("{statement} SELECT pg_sleep(0.002);")
            })
        })
        .collect();
    let passes_before = verification()["full_passes"].as_i64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut polls = 0;
    while std::time::Instant::now() < deadline {
        let state = verification();
        assert_eq!(state["rows_differing"], 0, "a false difference under load: {state}");
        polls += 1;
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let sent: u64 = loads.into_iter().map(|l| l.finish()).sum();
    assert!(sent > 10_000 && polls > 60, "{sent} statements, {polls} polls");
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    let state = wait_for("passes under load", &|v| v["full_passes"].as_i64().unwrap_or(0) >= passes_before + 2, &mut process);
    assert_eq!(state["rows_differing"], 0, "{state}");

    // A row the load never touches (it moves the lowest order ids), so only verification sees it.
    pair.target.psql("app", "SET session_replication_role = replica; UPDATE users SET name = 'tampered' WHERE id = 10;");
    wait_for("the injected fault", &|v| v["rows_differing"].as_i64().unwrap_or(0) >= 1, &mut process);
    let (_, text) = switchyard(&["status"], &pipeline);
    assert!(text.contains("1 rows differ"), "{text}");
    assert!(process.log().contains("verification found a difference"), "{}", process.log());
}

/// A digest of part of a key range reads that part through the key's index, even where the
/// planner would rather scan the whole table (here 60% of it): a verify pass digests a large
/// table span by span, and each span scanning the whole table made a 5M-row table cost about
/// three scans a side. A digest of the whole table is still one sequential scan.
#[test]
fn a_ranged_digest_reads_its_range_not_the_whole_table() {
    let cluster = PgCluster::start();
    cluster.create_database("app");
    cluster.psql(
        "app",
        "CREATE TABLE t (id bigint PRIMARY KEY, a text);
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 100000) g;
         ANALYZE t;",
    );
    let scans = || -> (i64, i64) {
        let text = cluster.psql("app", "SELECT seq_scan || ' ' || coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = 't'");
        let (seq, idx) = text.trim().split_once(' ').unwrap();
        (seq.parse().unwrap(), idx.parse().unwrap())
    };
    // Statistics reach pg_stat_user_tables within about a second of the reading session going idle.
    let scans_after = |before: (i64, i64)| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let now = scans();
            if now != before || std::time::Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let digest = PgDigest::connect(&Endpoint::parse(&cluster.url("app")).unwrap()).await.unwrap();
        let rows = |range| RowSet {
            table: switchyard_core::TableId::new("public", "t"),
            columns: vec![Projection::Column("id".into()), Projection::Column("a".into())],
            conditions: vec![],
            range,
            typed: vec![],
            hash: Default::default(),
            not_null: vec![],
        };
        let before = scans();
        let (part, _) = digest.digest(&rows(Some(("id".into(), 20_001, 80_001)))).await.unwrap();
        assert_eq!(part.rows, 60_000);
        let after = scans_after(before);
        assert_eq!(after.0, before.0, "the ranged digest scanned the whole table ({before:?} → {after:?})");
        assert!(after.1 > before.1, "the ranged digest used the key's index ({before:?} → {after:?})");

        let (whole, _) = digest.digest(&rows(None)).await.unwrap();
        assert_eq!(whole.rows, 100_000);
        let last = scans_after(after);
        assert_eq!((last.0, last.1), (after.0 + 1, after.1), "the whole table is one sequential scan");
    });
}
