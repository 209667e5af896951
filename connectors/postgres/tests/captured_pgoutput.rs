//! Decodes pgoutput (protocol 1) payloads captured from a real PostgreSQL server, so the decoder is
//! checked against what a server actually sends and not only against payloads we built ourselves.
//! No server is needed: the bytes are in `fixtures/pgoutput_v1.hex` (one payload per line, in
//! stream order), whose header comment says which server produced them and which SQL ran.

use std::collections::HashMap;

use bytes::Bytes;
use switchyard_postgres::pgoutput::{decode, Lsn, Message, OldTuple, Relation, Tuple, TupleValue};

const FIXTURE: &str = include_str!("fixtures/pgoutput_v1.hex");

/// The value inserted into `docs.body`: `string_agg(md5(i::text), '')` over 1..=400.
const BODY_LEN: usize = 400 * 32;

// Type oids from pg_type.
const INT4: u32 = 23;
const INT8: u32 = 20;
const TEXT: u32 = 25;
const NUMERIC: u32 = 1700;
const BOOL: u32 = 16;
const BYTEA: u32 = 17;
const TIMESTAMPTZ: u32 = 1184;
const JSONB: u32 = 3802;
const INT4_ARRAY: u32 = 1007;

fn hex_decode(line: &str) -> Vec<u8> {
    fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit: {:?}", char::from(c)),
        }
    }
    let bytes = line.as_bytes();
    assert!(bytes.len().is_multiple_of(2), "odd number of hex digits");
    bytes
        .chunks_exact(2)
        .map(|pair| nibble(pair[0]) << 4 | nibble(pair[1]))
        .collect()
}

fn payloads() -> Vec<Bytes> {
    FIXTURE
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| Bytes::from(hex_decode(line)))
        .collect()
}

fn messages() -> Vec<Message> {
    payloads()
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            decode(payload.clone()).unwrap_or_else(|e| {
                panic!(
                    "payload {i} ({} bytes, tag {:?}) failed to decode: {e}",
                    payload.len(),
                    payload.first().map(|&b| char::from(b))
                )
            })
        })
        .collect()
}

/// The messages split into transactions: (Begin, changes, Commit).
fn transactions() -> Vec<(Message, Vec<Message>, Message)> {
    let mut out = Vec::new();
    let mut open: Option<(Message, Vec<Message>)> = None;
    for message in messages() {
        match message {
            Message::Begin { .. } => {
                assert!(open.is_none(), "Begin inside a transaction: {message:?}");
                open = Some((message, Vec::new()));
            }
            Message::Commit { .. } => {
                let (begin, changes) = open.take().expect("Commit without Begin");
                out.push((begin, changes, message));
            }
            other => open
                .as_mut()
                .unwrap_or_else(|| panic!("message outside a transaction: {other:?}"))
                .1
                .push(other),
        }
    }
    assert!(open.is_none(), "the last transaction has no Commit");
    out
}

fn text(s: &str) -> TupleValue {
    TupleValue::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn as_text(value: &TupleValue) -> &str {
    match value {
        TupleValue::Text(b) => std::str::from_utf8(b).expect("text value is UTF-8"),
        other => panic!("expected a text value, got {other:?}"),
    }
}

fn described(message: &Message) -> &Relation {
    match message {
        Message::Relation(r) => r,
        other => panic!("expected a Relation, got {other:?}"),
    }
}

fn column_names(r: &Relation) -> Vec<&str> {
    r.columns.iter().map(|c| c.name.as_str()).collect()
}

fn column_types(r: &Relation) -> Vec<u32> {
    r.columns.iter().map(|c| c.type_oid).collect()
}

fn key_flags(r: &Relation) -> Vec<bool> {
    r.columns.iter().map(|c| c.is_key).collect()
}

/// A Key old tuple: the key value first, every other column Null.
fn key_only(key: &str, columns: usize) -> Tuple {
    let mut t = vec![TupleValue::Null; columns];
    t[0] = text(key);
    t
}

#[test]
fn every_captured_payload_decodes() {
    let payloads = payloads();
    assert_eq!(
        payloads.len(),
        34,
        "the fixture holds the whole captured stream"
    );
    assert_eq!(messages().len(), payloads.len());
}

#[test]
fn begin_and_commit_pair_up_in_lsn_order() {
    let txs = transactions();
    assert_eq!(
        txs.len(),
        8,
        "one per streamed statement, less the DDL that sends nothing"
    );
    let mut previous_end = Lsn(0);
    let mut previous_xid = 0;
    for (begin, changes, commit) in &txs {
        let Message::Begin {
            final_lsn,
            commit_time: begin_time,
            xid,
        } = *begin
        else {
            unreachable!()
        };
        let Message::Commit {
            flags,
            commit_lsn,
            end_lsn,
            commit_time,
        } = *commit
        else {
            unreachable!()
        };
        assert!(!changes.is_empty(), "empty transactions are not sent");
        assert_eq!(flags, 0);
        assert_eq!(
            commit_lsn, final_lsn,
            "Begin announces the commit record's LSN"
        );
        assert!(
            end_lsn > final_lsn,
            "end {end_lsn:?} <= final {final_lsn:?}"
        );
        assert!(
            final_lsn > previous_end,
            "transactions come in commit order"
        );
        assert_eq!(commit_time, begin_time);
        // Unix microseconds, not PostgreSQL-epoch ones: after 2020-01-01 and before 2100.
        assert!(
            (1_577_836_800_000_000..4_102_444_800_000_000).contains(&commit_time),
            "{commit_time}"
        );
        assert!(xid > previous_xid);
        previous_end = end_lsn;
        previous_xid = xid;
    }
}

#[test]
fn changes_match_the_sql_that_ran() {
    let txs = transactions();
    let changes: Vec<&[Message]> = txs.iter().map(|(_, c, _)| c.as_slice()).collect();

    // Transaction 1: the three Relations, each right before its table's first row.
    let items = described(&changes[0][0]).clone();
    assert_eq!(
        (items.namespace.as_str(), items.name.as_str()),
        ("public", "items")
    );
    assert_eq!(items.replica_identity, b'd');
    assert_eq!(
        column_names(&items),
        ["id", "name", "price", "active", "blob", "seen", "doc", "tags", "note"]
    );
    assert_eq!(
        column_types(&items),
        [
            INT4,
            TEXT,
            NUMERIC,
            BOOL,
            BYTEA,
            TIMESTAMPTZ,
            JSONB,
            INT4_ARRAY,
            TEXT
        ]
    );
    assert_eq!(
        key_flags(&items),
        [true, false, false, false, false, false, false, false, false]
    );
    // numeric(12,3): ((precision << 16) | scale) + VARHDRSZ.
    assert_eq!(items.columns[2].type_modifier, ((12 << 16) | 3) + 4);
    assert_eq!(items.columns[1].type_modifier, -1);

    let Message::Insert { relation, new } = &changes[0][1] else {
        panic!("{:?}", changes[0][1])
    };
    assert_eq!(*relation, items.oid);
    assert_eq!(
        *new,
        vec![
            text("1"),
            text("Zürich naïve café ☕ 日本語"),
            text("12345.678"),
            text("t"),
            text("\\x00ff10"),
            text("2024-01-02 03:04:05.123456+00"),
            text(r#"{"a": [1, 2, {"b": "ü"}]}"#),
            text("{1,2,3}"),
            TupleValue::Null,
        ]
    );
    assert_eq!(as_text(&new[1]), "Zürich naïve café ☕ 日本語");
    assert_eq!(as_text(&new[2]).parse::<f64>().unwrap(), 12345.678);
    let Message::Insert { relation, new } = &changes[0][2] else {
        panic!("{:?}", changes[0][2])
    };
    assert_eq!(*relation, items.oid);
    assert_eq!(as_text(&new[2]), "-0.001");
    assert_eq!(
        new[4..7],
        [TupleValue::Null, TupleValue::Null, TupleValue::Null]
    );
    assert_eq!(new[7], text("{}"));

    let audit = described(&changes[0][3]).clone();
    assert_eq!(
        (audit.namespace.as_str(), audit.name.as_str()),
        ("public", "audit")
    );
    assert_eq!(audit.replica_identity, b'f');
    assert_eq!(column_names(&audit), ["id", "what", "n"]);
    assert_eq!(column_types(&audit), [INT4, TEXT, INT8]);
    // With REPLICA IDENTITY FULL every column is part of the identity.
    assert_eq!(key_flags(&audit), [true, true, true]);
    assert_eq!(
        changes[0][4],
        Message::Insert {
            relation: audit.oid,
            new: vec![text("1"), text("created"), text("10")],
        }
    );

    let docs = described(&changes[0][6]).clone();
    assert_eq!(
        (docs.namespace.as_str(), docs.name.as_str()),
        ("public", "docs")
    );
    assert_eq!(docs.replica_identity, b'd');
    assert_eq!(column_names(&docs), ["id", "title", "body"]);
    assert_eq!(key_flags(&docs), [true, false, false]);
    let Message::Insert { relation, new } = &changes[0][7] else {
        panic!("{:?}", changes[0][7])
    };
    assert_eq!(*relation, docs.oid);
    let body = as_text(&new[2]);
    assert_eq!(body.len(), BODY_LEN);
    assert!(body.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        body.starts_with("c4ca4238a0b923820dcc509a6f75849b"),
        "md5('1')"
    );
    assert_eq!(changes[0].len(), 8);

    // Transaction 2: the primary key changed, so the old key comes as 'K' (other columns Null).
    assert_eq!(changes[1].len(), 1);
    let Message::Update { relation, old, new } = &changes[1][0] else {
        panic!("{:?}", changes[1][0])
    };
    assert_eq!(*relation, items.oid);
    assert_eq!(*old, Some(OldTuple::Key(key_only("1", 9))));
    assert_eq!(new[0], text("10"));
    assert_eq!(as_text(&new[1]), "Zürich naïve café ☕ 日本語!");
    assert_eq!(new[2], text("12345.678"));

    // Transaction 3: REPLICA IDENTITY FULL sends the whole old row as 'O'.
    assert_eq!(
        changes[2],
        [Message::Update {
            relation: audit.oid,
            old: Some(OldTuple::Full(vec![text("1"), text("created"), text("10")])),
            new: vec![text("1"), text("created"), text("11")],
        }]
    );

    // Transaction 4: the out-of-line body did not change, so it is not sent ('u').
    assert_eq!(
        changes[3],
        [Message::Update {
            relation: docs.oid,
            old: None,
            new: vec![text("1"), text("second"), TupleValue::Unchanged],
        }]
    );

    // Transaction 5: DELETE sends the old key.
    assert_eq!(
        changes[4],
        [Message::Delete {
            relation: items.oid,
            old: OldTuple::Key(key_only("2", 9)),
        }]
    );

    // Transaction 6: TRUNCATE of two tables is one message naming both. TRUNCATE gives the tables
    // new storage, which invalidates their cached schema, so both Relations are sent again first.
    let [again_audit, again_docs, truncate] = changes[5] else {
        panic!("{:?}", changes[5])
    };
    assert_eq!(*described(again_audit), audit);
    assert_eq!(*described(again_docs), docs);
    assert_eq!(
        *truncate,
        Message::Truncate {
            options: 0,
            relations: vec![audit.oid, docs.oid],
        }
    );

    // Transaction 7: pg_logical_emit_message(true, 'switchyard', 'mark').
    let [Message::Message {
        transactional,
        lsn,
        prefix,
        content,
    }] = changes[6]
    else {
        panic!("{:?}", changes[6])
    };
    assert!(*transactional);
    assert_eq!(prefix, "switchyard");
    assert_eq!(&content[..], b"mark");
    let Message::Commit { end_lsn, .. } = txs[6].2 else {
        unreachable!()
    };
    let Message::Commit {
        end_lsn: before, ..
    } = txs[5].2
    else {
        unreachable!()
    };
    assert!(*lsn > before && *lsn < end_lsn, "{lsn:?}");

    // Transaction 8: after ADD COLUMN the table's Relation comes again with one more column.
    let [altered, insert] = changes[7] else {
        panic!("{:?}", changes[7])
    };
    let altered = described(altered);
    assert_eq!((altered.oid, altered.name.as_str()), (items.oid, "items"));
    assert_eq!(altered.columns.len(), items.columns.len() + 1);
    assert_eq!(altered.columns[..items.columns.len()], items.columns[..]);
    let extra = altered.columns.last().unwrap();
    assert_eq!(
        (extra.name.as_str(), extra.type_oid, extra.is_key),
        ("extra", TEXT, false)
    );
    let Message::Insert { relation, new } = insert else {
        panic!("{insert:?}")
    };
    assert_eq!(*relation, items.oid);
    assert_eq!(new.len(), 10);
    assert_eq!(new[..2], [text("3"), text("after alter")]);
    assert!(new[2..9].iter().all(|v| *v == TupleValue::Null));
    assert_eq!(new[9], text("d"));
}

/// Every row change refers to a relation described earlier in the stream, and its tuples have
/// exactly as many columns as the latest description of that relation.
#[test]
fn tuples_fit_the_latest_relation() {
    let mut schemas: HashMap<u32, usize> = HashMap::new();
    let mut rows = 0;
    for message in messages() {
        let (relation, tuples): (u32, Vec<&Tuple>) = match &message {
            Message::Relation(r) => {
                schemas.insert(r.oid, r.columns.len());
                continue;
            }
            Message::Insert { relation, new } => (*relation, vec![new]),
            Message::Update { relation, old, new } => match old {
                Some(OldTuple::Key(t) | OldTuple::Full(t)) => (*relation, vec![t, new]),
                None => (*relation, vec![new]),
            },
            Message::Delete {
                relation,
                old: OldTuple::Key(t) | OldTuple::Full(t),
            } => (*relation, vec![t]),
            Message::Truncate { relations, .. } => {
                for oid in relations {
                    assert!(schemas.contains_key(oid), "truncate of undescribed {oid}");
                }
                continue;
            }
            _ => continue,
        };
        let columns = *schemas
            .get(&relation)
            .unwrap_or_else(|| panic!("change to undescribed relation {relation}"));
        for tuple in tuples {
            assert_eq!(tuple.len(), columns, "{message:?}");
        }
        rows += 1;
    }
    assert_eq!(rows, 10);
}
