use crate::support::*;

/// `check` reports every problem of a broken setup at once, with the fix, and exits non-zero.
#[test]
fn check_reports_every_problem_at_once() {
    let pair = Pair::start();
    pair.source.psql("app", "CREATE TABLE nokey (a int, b regclass); CREATE TABLE users (id int PRIMARY KEY, email text, extra text);");
    pair.target.psql("app", "CREATE TABLE users (id int PRIMARY KEY, email int, mandatory text NOT NULL);");
    let pipeline = pair.pipeline(
        "broken",
        r#"tables = ["public.users", "public.nokey", "public.missing"]
[target]
type = "postgres"
url = "TARGET_URL"
[[transform]]
type = "drop_column"
tables = ["public.users"]
column = "extra"
"#,
    );
    let (status, text) = switchyard(&["check"], &pipeline);
    assert!(!status.success(), "{text}");
    for expected in [
        "table public.nokey has no primary key",
        "column b",
        "type regclass cannot be carried",
        "table public.missing does not exist",
        "target table public.users column email",
        "is integer but the source gives text",
        "column mandatory",
        "NOT NULL without a default",
        "drop_column extra has no inverse",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }

    // Config-level problems, including an unset variable, all in one report, nothing contacted.
    let path = pair.dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "[pipeline]\nname = \"typo\"\n[source]\ntype = \"postgres\"\nurl = \"${SWITCHYARD_TEST_UNSET}\"\ntabels = []\ntables = [\"a\"]\n[target]\ntype = \"postgres\"\nurl = \"x\"\nchekpoint_schema = \"s\"\n",
    )
    .unwrap();
    let (status, text) = switchyard(&["check"], &path);
    assert!(!status.success(), "{text}");
    assert!(text.contains("source.tabels: unknown key; did you mean \"tables\"?"), "{text}");
    assert!(text.contains("target.chekpoint_schema: unknown key; did you mean \"checkpoint_schema\"?"), "{text}");
    assert!(text.contains("source.url: ${SWITCHYARD_TEST_UNSET} is not set"), "{text}");
}

/// A source without logical decoding is named with its fix.
#[test]
fn check_names_wal_level_and_missing_privileges() {
    let source = PgCluster::start_with(switchyard_testkit::PgOptions {
        settings: vec![
            ("wal_level".into(), "replica".into()),
            ("max_replication_slots".into(), "1".into()),
            ("max_wal_senders".into(), "0".into()),
        ],
        ..Default::default()
    });
    source.create_database("app");
    source.psql("app", "CREATE TABLE t (id int PRIMARY KEY); CREATE ROLE app LOGIN; GRANT SELECT ON t TO app;");
    let target = PgCluster::start();
    target.create_database("app");
    // The target user owns its table and may create the checkpoint schema, but may not apply
    // as a replica, which parallel apply needs.
    target.psql(
        "app",
        "CREATE ROLE shadow LOGIN; GRANT CREATE ON DATABASE app TO shadow; CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO shadow;",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    let source_url = source.url("app").replace("postgres@", "app@");
    let target_url = target.url("app").replace("postgres@", "shadow@");
    std::fs::write(
        &path,
        format!("[pipeline]\nname = \"p\"\n[source]\ntype = \"postgres\"\nurl = \"{source_url}\"\ntables = [\"t\"]\n[target]\ntype = \"postgres\"\nurl = \"{target_url}\"\n[apply]\nparallel = 2\n"),
    )
    .unwrap();
    let (status, text) = switchyard(&["check"], &path);
    assert!(!status.success(), "{text}");
    assert!(text.contains("wal_level: is replica; set wal_level = logical"), "{text}");
    assert!(text.contains("lacks REPLICATION; run ALTER ROLE app REPLICATION"), "{text}");
    assert!(text.contains("is owned by postgres"), "{text}");
    assert!(text.contains("max_replication_slots: 0 of 1 slots are in use and this pipeline needs 2"), "{text}");
    assert!(text.contains("max_wal_senders: no WAL sender is free"), "{text}");
    let refused = "apply.parallel: apply.parallel = 2 needs the target user shadow to set session_replication_role";
    assert!(text.contains(refused), "{text}");
    assert!(text.contains("GRANT SET ON PARAMETER session_replication_role TO shadow"), "{text}");
    // `run` refuses it before writing anything to either side.
    let (status, text) = switchyard(&["run"], &path);
    assert!(!status.success() && text.contains("needs the target user shadow to set session_replication_role"), "{text}");
    assert_eq!(target.psql("app", "SELECT to_regnamespace('switchyard') IS NULL"), "t", "the checkpoint schema was created");
    assert_eq!(source.psql("app", "SELECT count(*) FROM pg_publication"), "0", "a publication was created");
}

/// A standby on either side is refused, by `check` and by `run` before anything is written:
/// Switchyard creates its publication and slot on the source and writes to the target.
#[test]
fn a_standby_on_either_side_is_refused_before_anything_is_written() {
    let primary = PgCluster::start();
    primary.create_database("app");
    primary.create_database("shadow");
    primary.psql("app", "CREATE TABLE t (id int PRIMARY KEY)");
    primary.psql("shadow", "CREATE TABLE t (id int PRIMARY KEY)");
    let standby = primary.start_standby();
    assert_eq!(standby.psql("app", "SELECT pg_is_in_recovery()"), "t");
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |source: &PgCluster, target: &PgCluster, target_database: &str| {
        let path = dir.path().join(format!("p{}.toml", source.port()));
        let (source_url, target_url) = (source.url("app"), target.url(target_database));
        std::fs::write(
            &path,
            format!("[pipeline]\nname = \"p\"\n[source]\ntype = \"postgres\"\nurl = \"{source_url}\"\ntables = [\"t\"]\n[target]\ntype = \"postgres\"\nurl = \"{target_url}\"\n"),
        )
        .unwrap();
        path
    };

    let from_standby = pipeline(&standby, &primary, "shadow");
    let (status, text) = switchyard(&["check"], &from_standby);
    assert!(!status.success(), "{text}");
    assert!(text.contains(&format!("source: standby: the source postgres://postgres@127.0.0.1:{}/app is a standby (in recovery)", standby.port())), "{text}");
    assert!(text.contains("Point the source URL at the primary"), "{text}");
    let (status, text) = switchyard(&["run"], &from_standby);
    assert!(!status.success() && text.contains("the source") && text.contains("is a standby (in recovery)"), "{text}");
    assert_eq!(primary.psql("shadow", "SELECT to_regnamespace('switchyard') IS NULL"), "t", "the checkpoint schema was created");

    let into_standby = pipeline(&primary, &standby, "shadow");
    let (status, text) = switchyard(&["check"], &into_standby);
    assert!(!status.success(), "{text}");
    assert!(text.contains("target: standby: the target") && text.contains("Point the target URL at the primary"), "{text}");
    let (status, text) = switchyard(&["run"], &into_standby);
    assert!(!status.success() && text.contains("is a standby (in recovery)"), "{text}");
    assert_eq!(primary.psql("app", "SELECT count(*) FROM pg_publication"), "0", "a publication was created");
    assert_eq!(primary.psql("app", "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'"), "0", "a slot was created");
}

/// A target table whose row-level security applies to the target user (its policies enabled,
/// the user neither its owner nor BYPASSRLS) is named with the fix by `check`, and `run` refuses
/// it before writing anything: COPY cannot load it, and its policies would hide applied rows.
#[test]
fn row_level_security_on_a_target_table_is_named_before_anything_is_written() {
    let pair = Pair::start();
    pair.source.psql("app", "CREATE TABLE t (id int PRIMARY KEY, tenant text); INSERT INTO t VALUES (1, 'a');");
    pair.target.psql(
        "app",
        "CREATE TABLE t (id int PRIMARY KEY, tenant text);
         ALTER TABLE t ENABLE ROW LEVEL SECURITY;
         CREATE POLICY own_tenant ON t USING (tenant = current_setting('app.tenant', true));
         CREATE ROLE shadow LOGIN; GRANT CREATE ON DATABASE app TO shadow; GRANT SELECT, INSERT, UPDATE, DELETE ON t TO shadow;",
    );
    let pipeline = pair.pipeline("rls", "tables = ['t']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n");
    let as_shadow = std::fs::read_to_string(&pipeline).unwrap().replace(&pair.target.url("app"), &pair.target.url("app").replace("postgres@", "shadow@"));
    std::fs::write(&pipeline, as_shadow).unwrap();
    let remedy = "target table public.t has row-level security that applies to shadow";
    let (status, text) = switchyard(&["check"], &pipeline);
    assert!(!status.success() && text.contains(remedy) && text.contains("ALTER ROLE shadow BYPASSRLS"), "{text}");
    let (status, text) = switchyard(&["run"], &pipeline);
    assert!(!status.success() && text.contains(remedy), "{text}");
    assert_eq!(pair.target.psql("app", "SELECT to_regnamespace('switchyard') IS NULL"), "t", "the checkpoint schema was created");
    assert_eq!(pair.source.psql("app", "SELECT count(*) FROM pg_replication_slots"), "0", "a slot was created");

    pair.target.psql("app", "ALTER ROLE shadow BYPASSRLS");
    let (_, text) = switchyard(&["check"], &pipeline);
    assert!(!text.contains(remedy), "{text}");
}
