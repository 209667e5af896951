use switchyard_testkit::PgOptions;

use crate::support::*;

/// The pipeline runs against a source that accepts only TLS (verify-full against a CA the test
/// generates) and a target that requires a password; the password appears in no log line and
/// no `status` output.
#[test]
fn runs_over_tls_with_passwords_never_shown() {
    let source = PgCluster::start_with(PgOptions { tls_only: true, password_auth: true, ..Default::default() });
    let target = PgCluster::start_with(PgOptions { password_auth: true, ..Default::default() });
    source.create_database("app");
    target.create_database("app");
    source.psql("app", switchyard::demo::SOURCE_SCHEMA);
    target.psql("app", &switchyard::demo::target_schema());
    source.psql("app", "INSERT INTO users (email) SELECT 'u' || g FROM generate_series(1, 50) g;");
    let ca = source.ca_cert().expect("a TLS cluster has a CA").display().to_string();
    let source_url = format!(
        "postgres://postgres:{}@localhost:{}/app?sslmode=verify-full&sslrootcert={ca}",
        PgCluster::PASSWORD,
        source.port()
    );
    assert!(target.url("app").contains(PgCluster::PASSWORD), "the target URL carries the password");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tls.toml");
    std::fs::write(
        &path,
        format!(
            "[pipeline]\nname = \"tls\"\n[source]\ntype = \"postgres\"\nurl = \"{source_url}\"\ntables = [\"users\", \"orders\"]\n\
             [target]\ntype = \"postgres\"\nurl = \"{}\"\n[[transform]]\ntype = \"attach_column\"\ncolumn = \"tenant_id\"\nvalue = \"{TENANT}\"\n",
            target.url("app")
        ),
    )
    .unwrap();
    let mut process = Switchyard::run(&path);
    source.psql("app", "UPDATE users SET name = 'over tls' WHERE id = 3;");
    wait_caught_up(&source, &target, "switchyard_tls", &mut process);
    assert_eq!(target.psql("app", "SELECT name FROM users WHERE id = 3"), "over tls");
    assert_eq!(target.psql("app", "SELECT count(*) FROM users"), "50");
    let ssl_in_use = source.psql("app", "SELECT bool_and(ssl) FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE application_name = 'switchyard'");
    assert_eq!(ssl_in_use, "t", "switchyard's connections to the source must be encrypted");
    let (status, text) = switchyard(&["status"], &path);
    assert!(status.success(), "{text}");
    let log = process.log();
    for output in [&text, &log] {
        assert!(!output.contains(PgCluster::PASSWORD), "a password leaked:\n{output}");
    }
    assert!(text.contains("postgres:****@localhost"), "{text}");

    // A plain connection to the TLS-only source is refused, with the server's reason.
    let plain = path.with_file_name("plain.toml");
    let text = std::fs::read_to_string(&path).unwrap().replace("sslmode=verify-full", "sslmode=disable");
    std::fs::write(&plain, text).unwrap();
    let (status, text) = switchyard(&["check"], &plain);
    assert!(!status.success(), "{text}");
    assert!(!text.contains(PgCluster::PASSWORD), "a password leaked:\n{text}");
}
