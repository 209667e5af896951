use crate::support::*;

const TYPES_TABLE: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE "Weird ""Table"" ñ" (
    k1 integer, k2 text,
    i2 int2, i4 int4, i8 int8, n numeric, n40 numeric(45,5), f4 float4, f8 float8,
    t text, vc varchar(20), c char(5), b bool, by bytea, u uuid, j json, jb jsonb,
    d date, tm time, tz timetz, ts timestamp, tstz timestamptz, iv interval,
    ip inet, cidr_ cidr, mac macaddr, m mood, p positive,
    arr int[], arr2 text[][], big text,
    "Quoted ""Col"" é" text,
    gen int GENERATED ALWAYS AS (i2::int * 2) STORED,
    PRIMARY KEY (k1, k2));
"#;

const ROWS: &str = r#"
INSERT INTO "Weird ""Table"" ñ" VALUES
 (1, 'a', 32767, -2147483648, 9223372036854775807, 'NaN', 1234567890123456789012345678901234567890.12345, 'NaN', '-Infinity',
  'ünïcødé ✓ "quotes" \ back', 'ça va', 'ab', true, '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50]}', '{"b": null}',
  '4713-01-01 BC', '23:59:59.999999', '12:00+05:30', 'infinity', '-infinity', '1 year 2 mons -3 days 04:05:06.7',
  '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 'happy', 5,
  '{1,NULL,3}', '{{"a","b"},{NULL,"d\"q"}}', repeat(md5('x'), 1000), 'col'),
 (2, 'b', NULL, NULL, NULL, '-0.000001', NULL, '-0', 'Infinity', E'tab\there\nnewline', NULL, NULL, false, '\x', NULL, 'null', '[]',
  '2000-02-29', '00:00', NULL, '2024-01-01 00:00:00.000001', '2024-06-01 12:00:00+02', '0', '::1', '::/0', NULL, NULL, NULL,
  '{}', NULL, NULL, NULL);
"#;

/// The columns of the weird table a row can be given (all but the generated one).
const WEIRD_COLUMNS: &str = r#"k1, k2, i2, i4, i8, n, n40, f4, f8, t, vc, c, b, by, u, j, jb, d, tm, tz, ts, tstz, iv, ip, cidr_, mac, m, p, arr, arr2, big, "Quoted ""Col"" é""#;

/// Every type named in the issue round-trips exactly, both through the snapshot and the stream,
/// and tables and columns with quotes, spaces, capitals and non-ASCII letters are carried.
#[test]
fn types_round_trip_exactly() {
    let pair = Pair::start();
    for cluster in [&pair.source, &pair.target] {
        cluster.psql("app", TYPES_TABLE);
    }
    pair.source.psql("app", ROWS);
    let pipeline = pair.pipeline(
        "types",
        "tables = ['public.\"Weird \"\"Table\"\" ñ\"']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n",
    );
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_types", &mut process);
    // The same rows again, through the stream this time.
    pair.source.psql("app", &ROWS.replace("(1, 'a'", "(11, 'a'").replace("(2, 'b'", "(12, 'b'"));
    pair.source.psql("app", r#"UPDATE "Weird ""Table"" ñ" SET f8 = -0.0, n = '1e-30', big = big || 'x' WHERE k1 = 11"#);
    pair.wait_caught_up("switchyard_types", &mut process);
    // And 80 at once: a run of inserts that large is applied by COPY, in its text form.
    pair.source.psql("app", &format!(r#"INSERT INTO "Weird ""Table"" ñ" ({WEIRD_COLUMNS}) SELECT k1 + 100 * g, {} FROM "Weird ""Table"" ñ", generate_series(1, 40) g WHERE k1 < 10"#, WEIRD_COLUMNS.trim_start_matches("k1, ")));
    pair.wait_caught_up("switchyard_types", &mut process);
    let query = r#"SELECT string_agg(r::text, E'\n' ORDER BY k1) FROM "Weird ""Table"" ñ" r"#;
    let source = pair.source.psql("app", query);
    let target = pair.target.psql("app", query);
    assert_same_rows("the types table", &source, &target);
    assert_eq!(pair.target.psql("app", r#"SELECT count(*) FROM "Weird ""Table"" ñ""#), "84");
    assert!(source.contains("-Infinity") && source.contains("4713-01-01 BC"), "{source}");
}

/// Tables whose columns all have the same built-in types on both sides are copied in COPY's
/// binary format, an attached constant included; their values arrive exactly as the source holds
/// them. A table with one other type (an enum) is copied as text, and arrives exactly too.
#[test]
fn same_types_copy_in_binary_exactly() {
    let pair = Pair::start();
    let safe = "CREATE TABLE safe (k1 integer PRIMARY KEY, i2 int2, i8 int8, n numeric, n40 numeric(45,5), f4 float4, f8 float8,
        t text, vc varchar(20), c char(5), b bool, by bytea, u uuid, j json, jb jsonb,
        d date, tm time, tz timetz, ts timestamp, tstz timestamptz, iv interval);
        CREATE TYPE mood AS ENUM ('sad', 'happy'); CREATE TABLE moody (k1 integer PRIMARY KEY, m mood, t text);";
    pair.source.psql("app", safe);
    pair.target.psql("app", &safe.replace("iv interval)", "iv interval, origin uuid NOT NULL)").replace("t text)", "t text, origin uuid NOT NULL)"));
    pair.source.psql(
        "app",
        r#"INSERT INTO safe VALUES
         (1, 32767, 9223372036854775807, 'NaN', 1234567890123456789012345678901234567890.12345, 'NaN', '-Infinity',
          'ünïcødé ✓ "quotes" \ back', 'ça va', 'ab', true, '\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50]}', '{"b": null}',
          '4713-01-01 BC', '23:59:59.999999', '12:00+05:30', 'infinity', '-infinity', '1 year 2 mons -3 days 04:05:06.7'),
         (2, NULL, -1, '-0.000001', NULL, '-0', '1e-300', E'tab\there\nnewline', NULL, NULL, false, '\x', NULL, 'null', '[]',
          '2000-02-29', '00:00', NULL, '2024-01-01 00:00:00.000001', '2024-06-01 12:00:00+02', '0');
         INSERT INTO safe (k1) SELECT g FROM generate_series(3, 5000) g;
         INSERT INTO moody VALUES (1, 'happy', E'a\tb'), (2, NULL, NULL);"#,
    );
    let pipeline = pair.pipeline(
        "binary",
        "tables = ['public.safe', 'public.moody']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n\
         [[transform]]\ntype = \"attach_column\"\ncolumn = \"origin\"\nvalue = \"00000000-0000-0000-0000-00000000000a\"\n\
         [snapshot]\nchunk_rows = 1000\n",
    );
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_binary", &mut process);
    let log = process.log();
    let binary: Vec<&str> = log.lines().filter(|l| l.contains("binary format")).collect();
    assert!(binary.len() == 1 && binary[0].contains("public.safe"), "only public.safe goes in binary: {binary:?}");
    for (table, columns) in [("safe", "k1, i2, i8, n, n40, f4, f8, t, vc, c, b, by, u, j, jb, d, tm, tz, ts, tstz, iv"), ("moody", "k1, m, t")] {
        let query = format!("SELECT string_agg(x::text, E'\\n' ORDER BY k1) FROM (SELECT {columns} FROM {table}) x");
        assert_same_rows(table, &pair.source.psql("app", &query), &pair.target.psql("app", &query));
        let stray = format!("SELECT count(*) FROM {table} WHERE origin IS DISTINCT FROM '00000000-0000-0000-0000-00000000000a'");
        assert_eq!(pair.target.psql("app", &stray), "0", "{table}: every row carries the attached origin");
    }
}

/// An UPDATE that does not touch a TOASTed column leaves its value on the target intact.
#[test]
fn unchanged_toast_values_survive_updates() {
    let pair = Pair::start();
    for cluster in [&pair.source, &pair.target] {
        cluster.psql("app", "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);");
    }
    let pipeline = pair.pipeline("toast", "tables = ['docs']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_toast", &mut process);
    // Incompressible 40 kB values, so they are stored out of line.
    pair.source.psql("app", "INSERT INTO docs SELECT g, 't', (SELECT string_agg(md5(g::text || x::text || random()::text), '') FROM generate_series(1, 1250) x) FROM generate_series(1, 3) g;");
    pair.source.psql("app", "UPDATE docs SET title = 'changed' WHERE id IN (1, 2);");
    pair.source.psql("app", "UPDATE docs SET title = 'again', id = 10 WHERE id = 3;");
    pair.wait_caught_up("switchyard_toast", &mut process);
    let query = "SELECT string_agg(id || ':' || title || ':' || md5(body) || ':' || length(body), ',' ORDER BY id) FROM docs";
    assert_same_rows("docs", &pair.source.psql("app", query), &pair.target.psql("app", query));
    let lengths = pair.target.psql("app", "SELECT min(length(body)) FROM docs");
    assert_eq!(lengths, "40000");
}

/// A target whose key is an identity column declared GENERATED ALWAYS (a common modern schema)
/// takes the source's values, as the copy gives them, in small runs of inserts and in large
/// ones (applied by COPY).
#[test]
fn identity_columns_generated_always_take_the_sources_values() {
    let pair = Pair::start();
    pair.source.psql("app", "CREATE TABLE items (id bigserial PRIMARY KEY, name text NOT NULL);");
    pair.target.psql("app", "CREATE TABLE items (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);");
    pair.source.psql("app", "INSERT INTO items (name) SELECT 'copied ' || g FROM generate_series(1, 10) g; DELETE FROM items WHERE id = 3;");
    let pipeline = pair.pipeline("identity", "tables = ['items']\n[target]\ntype = \"postgres\"\nurl = \"TARGET_URL\"\n");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_identity", &mut process);
    pair.source.psql("app", "INSERT INTO items (name) VALUES ('one streamed'); INSERT INTO items (id, name) VALUES (1000, 'far ahead');");
    pair.source.psql("app", "INSERT INTO items (name) SELECT 'many streamed ' || g FROM generate_series(1, 200) g;");
    pair.wait_caught_up("switchyard_identity", &mut process);
    let query = "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM items";
    assert_same_rows("items", &pair.source.psql("app", query), &pair.target.psql("app", query));
    assert_eq!(pair.target.psql("app", "SELECT count(*) FROM items"), "211");
}
