use crate::support::*;

/// rename_column, drop_column, rename_table into another schema and filter, against real
/// databases: the snapshot and the stream both land in the reshaped target; rows leaving the
/// filter are deleted there, rows outside it never arrive; `verify` agrees.
#[test]
fn transforms_reshape_snapshot_and_stream() {
    let pair = Pair::start();
    pair.source.psql(
        "app",
        "CREATE TABLE customers (id int PRIMARY KEY, mail text, secret text, region text NOT NULL);
         INSERT INTO customers SELECT g, 'c' || g || '@x', 'pw' || g, CASE WHEN g % 3 = 0 THEN 'us' ELSE 'eu' END FROM generate_series(1, 300) g;",
    );
    pair.target.psql("app", "CREATE SCHEMA crm; CREATE TABLE crm.people (id int PRIMARY KEY, email text, region text NOT NULL);");
    let pipeline = pair.pipeline(
        "reshape",
        r#"tables = ["public.customers"]
[target]
type = "postgres"
url = "TARGET_URL"

[[transform]]
type = "rename_column"
tables = ["public.customers"]
from = "mail"
to = "email"

[[transform]]
type = "drop_column"
tables = ["public.customers"]
column = "secret"

[[transform]]
type = "filter"
tables = ["public.customers"]
column = "region"
op = "in"
values = ["eu", "uk"]

[[transform]]
type = "rename_table"
table = "public.customers"
to = "crm.people"
"#,
    );
    let (status, text) = switchyard(&["check"], &pipeline);
    assert!(status.success(), "{text}");
    assert!(text.contains("drop_column secret has no inverse"), "{text}");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_reshape", &mut process);
    pair.source.psql(
        "app",
        "INSERT INTO customers VALUES (1001, 'new@x', 'pw', 'uk'), (1002, 'us@x', 'pw', 'us');
         UPDATE customers SET mail = 'changed@x' WHERE id = 1;
         UPDATE customers SET region = 'us' WHERE id = 2;      -- leaves the filter
         UPDATE customers SET secret = 'rotated' WHERE id = 4;  -- only a dropped column changes
         DELETE FROM customers WHERE id = 5;",
    );
    pair.wait_caught_up("switchyard_reshape", &mut process);
    let expected = pair.source.psql(
        "app",
        "SELECT string_agg(id || ',' || mail || ',' || region, E'\\n' ORDER BY id) FROM customers WHERE region IN ('eu', 'uk')",
    );
    let actual = pair.target.psql("app", "SELECT string_agg(id || ',' || email || ',' || region, E'\\n' ORDER BY id) FROM crm.people");
    assert_same_rows("crm.people", &expected, &actual);
    assert!(actual.contains("1,changed@x,eu") && actual.contains("1001,new@x,uk") && !actual.contains("\n2,"), "{actual}");
    let (status, text) = switchyard(&["verify"], &pipeline);
    assert_eq!(status.code(), Some(0), "{text}");
    assert!(text.contains("public.customers -> crm.people"), "{text}");
}
