//! Inputs shared by the micro-benchmarks (`hot_paths`) and the allocation counts (`allocs`):
//! rows, changes and pgoutput payloads shaped like the demo's `orders` table.

// Each bench target uses a different part of this module.
#![allow(dead_code)]

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use switchyard::transform::{AttachColumn, Shaper, TableSet};
use switchyard_core::{Change, Column, ConnectorError, TableId, TableSchema, Value};
use switchyard_postgres::copy_text;
use switchyard_postgres::snapshot::RowReader;

/// Rows (or changes) per batch in the batch benchmarks.
pub const ROWS: usize = 10_000;
/// The tenant the tenantize pipeline attaches.
pub const TENANT: &str = "00000000-0000-0000-0000-000000000001";
/// The relation OID the source would have given `public.orders`.
const ORDERS_OID: u32 = 16_390;
/// pgoutput payloads captured from PostgreSQL 15 (see the file's header).
const CAPTURED: &str = include_str!("../../../connectors/postgres/tests/fixtures/pgoutput_v1.hex");

/// One `orders` row as the source prints it: `(id bigint, user_id bigint, amount numeric(12,2),
/// status text, note text)`. Every fourth row has a note; one in 50 has one that COPY must escape.
pub fn order_text(i: usize) -> [Option<String>; 5] {
    let id = 1_000_000 + i as u64;
    let status = ["new", "paid", "shipped", "delivered", "cancelled"][i % 5];
    let note = match i % 4 {
        0 if i.is_multiple_of(50) => Some(format!("gift wrap\tplease, order {id}\nthanks")),
        0 => Some(format!("deliver to the back door, order {id}")),
        _ => None,
    };
    [
        Some(id.to_string()),
        Some((1 + i % 100_000).to_string()),
        Some(format!("{}.{:02}", (i * 7919) % 100_000, i % 100)),
        Some(status.to_string()),
        note,
    ]
}

pub fn order_row(i: usize) -> Vec<Value> {
    order_text(i).into_iter().map(Value::from_text).collect()
}

/// The row after the tenantize chain: the tenant id appended.
pub fn shaped_order_row(i: usize) -> Vec<Value> {
    let mut row = order_row(i);
    row.push(Value::text(TENANT));
    row
}

fn column(name: &str, type_name: &str, type_oid: u32, nullable: bool) -> Column {
    Column { name: name.into(), type_name: type_name.into(), type_oid, nullable, default: None }
}

pub fn orders_schema() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::new("public", "orders"),
        columns: vec![
            column("id", "bigint", 20, false),
            column("user_id", "bigint", 20, false),
            column("amount", "numeric(12,2)", 1700, false),
            column("status", "text", 25, false),
            column("note", "text", 25, true),
        ],
        key: vec![0],
    })
}

/// Wire-format pgoutput payloads (the layout the decoder's unit tests build).
struct Wire(Vec<u8>);

impl Wire {
    fn tag(tag: u8) -> Wire {
        Wire(vec![tag])
    }
    fn raw(mut self, bytes: &[u8]) -> Wire {
        self.0.extend_from_slice(bytes);
        self
    }
    fn u8(self, v: u8) -> Wire {
        self.raw(&[v])
    }
    fn u16(self, v: u16) -> Wire {
        self.raw(&v.to_be_bytes())
    }
    fn u32(self, v: u32) -> Wire {
        self.raw(&v.to_be_bytes())
    }
    fn u64(self, v: u64) -> Wire {
        self.raw(&v.to_be_bytes())
    }
    fn i64(self, v: i64) -> Wire {
        self.raw(&v.to_be_bytes())
    }
    /// TupleData: a column count, then `'t'` + length + text, or `'n'` for NULL.
    fn tuple(mut self, values: &[Option<String>]) -> Wire {
        self = self.u16(values.len() as u16);
        for value in values {
            self = match value {
                Some(text) => self.u8(b't').u32(text.len() as u32).raw(text.as_bytes()),
                None => self.u8(b'n'),
            };
        }
        self
    }
    fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

/// A transaction's first message (LSNs and times are plausible, not meaningful).
pub fn begin_payload(i: usize) -> Bytes {
    Wire::tag(b'B').u64(0x16_B374_D848 + i as u64 * 0x200).i64(757_382_400_000_000 + i as i64).u32(770 + i as u32).bytes()
}

pub fn commit_payload(i: usize) -> Bytes {
    let lsn = 0x16_B374_D848 + i as u64 * 0x200;
    Wire::tag(b'C').u8(0).u64(lsn).u64(lsn + 0x38).i64(757_382_400_000_000 + i as i64).bytes()
}

pub fn insert_payload(i: usize) -> Bytes {
    Wire::tag(b'I').u32(ORDERS_OID).u8(b'N').tuple(&order_text(i)).bytes()
}

/// An UPDATE that keeps the key (REPLICA IDENTITY DEFAULT): only the new row is sent.
pub fn update_payload(i: usize) -> Bytes {
    let mut row = order_text(i);
    row[3] = Some("shipped".into());
    Wire::tag(b'U').u32(ORDERS_OID).u8(b'N').tuple(&row).bytes()
}

/// Transactions of one Begin, eight Inserts, two Updates and a Commit, in stream order.
pub fn transaction_payloads(transactions: usize) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(transactions * 12);
    for t in 0..transactions {
        out.push(begin_payload(t));
        out.extend((0..8).map(|r| insert_payload(t * 10 + r)));
        out.extend((8..10).map(|r| update_payload(t * 10 + r)));
        out.push(commit_payload(t));
    }
    out
}

/// The captured stream of a real server: Relations, wide rows, a 12.8 kB TOASTed text, an
/// Update with the old key, a full old row, a Delete, a Truncate and a logical Message.
pub fn captured_payloads() -> Vec<Bytes> {
    fn nibble(c: u8) -> u8 {
        (c as char).to_digit(16).expect("hex digit") as u8
    }
    CAPTURED
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| Bytes::from(line.as_bytes().chunks_exact(2).map(|p| (nibble(p[0]) << 4) | nibble(p[1])).collect::<Vec<u8>>()))
        .collect()
}

/// A batch as the source hands it on: 80% inserts, 20% updates that keep the key.
pub fn change_batch(table: &Arc<TableSchema>) -> Vec<Change> {
    (0..ROWS)
        .map(|i| {
            if i % 5 == 4 {
                let mut row = order_row(i);
                row[3] = Value::text("shipped");
                Change::Update { table: table.clone(), old_key: None, row }
            } else {
                Change::Insert { table: table.clone(), row: order_row(i) }
            }
        })
        .collect()
}

/// The tenantize pipeline's transform chain (pipelines/tenantize.toml), for `orders`.
pub fn tenantize() -> Shaper {
    Shaper::new(vec![Box::new(AttachColumn::new(TableSet::parse(&["public.orders".into()]), "tenant_id", TENANT))])
}

/// The schema the tenantize chain makes of `orders` (taken from the shaper itself).
pub fn shaped_schema() -> Arc<TableSchema> {
    tenantize().plan(&orders_schema()).expect("orders plans").target.clone()
}

/// `ROWS` source rows as a snapshot COPY sends them, cut into 64 kB chunks.
pub fn copy_chunks() -> Vec<Bytes> {
    let mut text = BytesMut::new();
    for i in 0..ROWS {
        copy_text::write_line(&order_row(i), &mut text);
    }
    let text = text.freeze();
    (0..text.len()).step_by(64 * 1024).map(|at| text.slice(at..(at + 64 * 1024).min(text.len()))).collect()
}

/// Source and target rows of a chunk that differ: 1% changed, 0.5% missing from the target,
/// 0.5% extra on it (200 differences in all).
pub fn differing_sides(rows: &[Vec<Value>]) -> (Vec<Vec<Value>>, Vec<Vec<Value>>) {
    let source = rows.iter().enumerate().filter(|(i, _)| i % 200 != 3).map(|(_, r)| r.clone()).collect();
    let target = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 200 != 5)
        .map(|(i, r)| {
            let mut r = r.clone();
            if i % 100 == 7 {
                r[3] = Value::text("refunded");
            }
            r
        })
        .collect();
    (source, target)
}

/// Reads a snapshot COPY back into rows as the snapshot does (`RowReader`); returns the rows.
pub fn read_snapshot(runtime: &tokio::runtime::Runtime, chunks: Vec<Bytes>) -> usize {
    runtime.block_on(async {
        let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, ConnectorError>));
        let mut reader = RowReader::new(stream, TableId::new("public", "orders"));
        let mut rows = 0;
        while let Some(batch) = reader.next_rows().await.expect("valid copy") {
            rows += batch.len();
            std::hint::black_box(batch);
        }
        rows
    })
}

pub fn users_schema() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        id: TableId::new("public", "users"),
        columns: vec![
            column("id", "bigint", 20, false),
            column("email", "text", 25, false),
            column("name", "text", 25, true),
            column("created_at", "timestamp with time zone", 1184, false),
        ],
        key: vec![0],
    })
}

/// What the sink receives for `change_batch`: the same changes after the tenantize chain.
pub fn shaped_change_batch() -> Vec<Change> {
    let mut shaper = tenantize();
    change_batch(&orders_schema()).into_iter().filter_map(|c| shaper.apply(c).expect("shapes")).collect()
}

/// A batch of many small source transactions, shaped by tenantize: each inserts a user and
/// three orders and updates an order inserted 100 transactions earlier (so a row is touched
/// twice in the batch now and then, and grouping must start a new segment).
pub fn interleaved_change_batch() -> Vec<Change> {
    let (users, orders) = (users_schema(), orders_schema());
    let mut shaper = Shaper::new(vec![Box::new(AttachColumn::new(
        TableSet::parse(&["public.users".into(), "public.orders".into()]),
        "tenant_id",
        TENANT,
    ))]);
    let mut changes = Vec::with_capacity(ROWS);
    for t in 0..ROWS / 5 {
        let user = vec![
            Value::text((500_000 + t).to_string()),
            Value::text(format!("user{t}@example.com")),
            Value::text(format!("User {t}")),
            Value::text("2024-01-02 03:04:05.123456+00"),
        ];
        changes.push(Change::Insert { table: users.clone(), row: user });
        for o in 0..3 {
            changes.push(Change::Insert { table: orders.clone(), row: order_row(t * 3 + o) });
        }
        let mut row = order_row((t.max(100) - 100) * 3);
        row[3] = Value::text("shipped");
        changes.push(Change::Update { table: orders.clone(), old_key: None, row });
    }
    changes.into_iter().filter_map(|c| shaper.apply(c).expect("shapes")).collect()
}
