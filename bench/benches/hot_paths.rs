//! Criterion micro-benchmarks of the per-row hot paths, no database needed:
//!
//! - `pgoutput`: decoding replication messages (Begin, Insert, Update, Commit of rows shaped like
//!   the demo's `orders`, and the captured stream of a real server);
//! - `transform`: the tenantize chain (attach_column tenant_id) over a 10,000-change batch;
//! - `copy_text`: writing the COPY text a snapshot chunk load sends, and reading a snapshot COPY
//!   back into rows (`RowReader`);
//! - `pass_through`: a snapshot's COPY data passed from source to target with the tenant
//!   appended to each row, as text and in the binary format (one server message per row);
//! - `grouping`: the sink's pure step, grouping a shaped batch's changes into statements, and
//!   putting a statement's rows in the target key's order (`in_key_order`);
//! - `apply`: an update statement's parameters, built and encoded as they go to the server;
//! - `digest`: the canonical row encoding, row hashes, chunk digests and `compare_rows`.
//!
//! Run: `cargo bench -p switchyard-bench --bench hot_paths` (criterion options after `--`, e.g.
//! `-- --warm-up-time 1 --measurement-time 3`, or a filter such as `-- pgoutput`). Every input is
//! built before the measured closure; throughput is reported per message, change or row.
//! `--bench allocs` counts the allocations per element of the same operations.

mod common;

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use switchyard::reconcile::compare_rows;
use switchyard_core::digest::{encode_row, row_hash, ChunkDigest};
use switchyard_core::{Change, TableSchema, Value};
use switchyard_postgres::{copy_binary, copy_text};
use switchyard_postgres::apply_sql::{in_key_order, params, plan_for, statement, ApplyPlan};
use switchyard_postgres::catalog::TableInfo;
use switchyard_postgres::grouping::{self, Kind, Ties};
use switchyard_postgres::pgoutput::{decode, Message};
use tokio_postgres::types::{ToSql, Type};

use common::*;

fn decode_all(payloads: &[Bytes]) {
    for payload in payloads {
        black_box(decode(payload.clone()).expect("valid payload"));
    }
}

fn pgoutput(c: &mut Criterion) {
    let mut group = c.benchmark_group("pgoutput");
    let inputs: [(&str, Vec<Bytes>); 5] = [
        ("begin", (0..ROWS).map(begin_payload).collect()),
        ("commit", (0..ROWS).map(commit_payload).collect()),
        ("insert_orders", (0..ROWS).map(insert_payload).collect()),
        ("update_orders", (0..ROWS).map(update_payload).collect()),
        // 1 Begin + 8 Insert + 2 Update + 1 Commit per transaction.
        ("txn_mix", transaction_payloads(ROWS / 12)),
    ];
    for (name, payloads) in &inputs {
        assert!(payloads.iter().all(|p| decode(p.clone()).is_ok()), "{name}");
        group.throughput(Throughput::Elements(payloads.len() as u64));
        group.bench_function(*name, |b| b.iter(|| decode_all(payloads)));
    }
    let captured = captured_payloads();
    assert!(matches!(decode(captured[0].clone()), Ok(Message::Begin { .. })));
    group.throughput(Throughput::Elements(captured.len() as u64));
    group.bench_function("captured_stream", |b| b.iter(|| decode_all(&captured)));
    group.finish();
}

fn transform(c: &mut Criterion) {
    let mut group = c.benchmark_group("transform");
    let table = orders_schema();
    let batch = change_batch(&table);
    let mut shaper = tenantize();
    // The plan is compiled on first sight of a table; measure the steady state.
    let shaped = shaper.apply(batch[0].clone()).unwrap().unwrap();
    assert_eq!(shaped.table().unwrap().columns.len(), 6);
    group.throughput(Throughput::Elements(ROWS as u64));
    // Shaper::apply as the stream's `gather` calls it: changes moved in, shaped changes collected.
    group.bench_function("tenantize_10k", |b| {
        b.iter_batched(
            || batch.clone(),
            |changes| changes.into_iter().filter_map(|change| shaper.apply(change).expect("shapes")).collect::<Vec<_>>(),
            BatchSize::LargeInput,
        )
    });
    // The per-row part alone (TablePlan::row), from borrowed rows.
    let plan = shaper.plan(&table).unwrap();
    let rows: Vec<Vec<Value>> = (0..ROWS).map(order_row).collect();
    group.bench_function("plan_row_10k", |b| {
        b.iter(|| {
            for row in &rows {
                black_box(plan.row(black_box(row)));
            }
        })
    });
    group.finish();
}

fn copy_text_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("copy_text");
    group.throughput(Throughput::Elements(ROWS as u64));
    // What ChunkLoad::push does per row (shaped rows, tenant included), into a reused buffer.
    let rows: Vec<Vec<Value>> = (0..ROWS).map(shaped_order_row).collect();
    let mut buffer = BytesMut::with_capacity(512 * 1024);
    group.bench_function("write_line_10k", |b| {
        b.iter(|| {
            buffer.clear();
            for row in &rows {
                copy_text::write_line(row, &mut buffer);
            }
            black_box(buffer.len())
        })
    });
    // A snapshot COPY arriving in 64 kB chunks, read back into rows by RowReader.
    let chunks = copy_chunks();
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    assert_eq!(read_snapshot(&runtime, chunks.clone()), ROWS);
    group.bench_function("row_reader_10k", |b| {
        b.iter_batched(|| chunks.clone(), |chunks| read_snapshot(&runtime, chunks), BatchSize::SmallInput)
    });
    group.finish();
}

fn pass_through_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("pass_through");
    group.throughput(Throughput::Elements(ROWS as u64));
    let tenant = Value::text("00000000-0000-0000-0000-000000000001");
    // The server sends one CopyData message per row; an orders row, as text and in binary.
    let text: Vec<Vec<u8>> = (0..ROWS).map(|i| format!("{i}\t{}\t{}.50\tnew\torder {i}\n", i % 1000, i % 500).into_bytes()).collect();
    let text_suffix = copy_text::suffix(std::slice::from_ref(&tenant));
    let mut buffer = BytesMut::with_capacity(1024 * 1024);
    group.bench_function("text_10k", |b| {
        b.iter(|| {
            buffer.clear();
            let lines: u64 = text.iter().map(|row| copy_text::append_with_suffix(row, &text_suffix, &mut buffer)).sum();
            black_box(lines)
        })
    });
    let mut binary = vec![{
        let mut header = BytesMut::new();
        copy_binary::header(&mut header);
        header.to_vec()
    }];
    for i in 0..ROWS as i64 {
        let mut tuple = 5u16.to_be_bytes().to_vec();
        let note = format!("order {i}");
        let fields: [&[u8]; 5] = [&i.to_be_bytes(), &(i % 1000).to_be_bytes(), &[0, 2, 0, 1, 0, 0, 0, 2, 0, 55, 19, 136], b"new", note.as_bytes()];
        for field in fields {
            copy_binary::field(Some(field), &mut tuple);
        }
        binary.push(tuple);
    }
    binary.push((-1i16).to_be_bytes().to_vec());
    let mut binary_suffix = Vec::new();
    copy_binary::field(Some(&[0; 16]), &mut binary_suffix);
    group.bench_function("binary_10k", |b| {
        b.iter(|| {
            buffer.clear();
            let mut appender = copy_binary::TupleAppender::default();
            let mut tuples = 0;
            for message in &binary {
                tuples += appender.push(message, &binary_suffix, 1, &mut buffer).expect("binary COPY data");
            }
            appender.finish().expect("whole");
            black_box(tuples)
        })
    });
    group.finish();
}

fn grouping_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("grouping");
    group.throughput(Throughput::Elements(ROWS as u64));
    // The demo's target defers its foreign keys, so no table is tied to another.
    let ties = Ties::default();
    let orders = shaped_change_batch();
    assert_eq!(grouping::group(&orders, &ties).len(), 2, "all inserts, then all updates");
    group.bench_function("orders_10k", |b| b.iter(|| grouping::group(black_box(&orders), &ties)));
    let interleaved = interleaved_change_batch();
    assert!(grouping::group(&interleaved, &ties).len() > 3);
    group.bench_function("interleaved_10k", |b| b.iter(|| grouping::group(black_box(&interleaved), &ties)));
    // A statement's rows arrive in commit order, scattered over the key; the sink sorts them.
    let plan = multi_tenant_plan(orders[0].table().expect("a row change"));
    let scattered: Vec<&Change> = (0..orders.len()).map(|i| &orders[i * 7919 % orders.len()]).collect();
    group.bench_function("in_key_order_10k", |b| {
        b.iter_batched(|| scattered.clone(), |mut changes| in_key_order(&plan, &mut changes), BatchSize::SmallInput)
    });
    group.finish();
}

/// An update statement's parameters for a run of orders updates, built and encoded as they go
/// to the server (one `text[]` per carried column, the tenant id one scalar).
fn apply_params_bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("apply");
    let orders = shaped_change_batch();
    let plan = multi_tenant_plan(orders[0].table().expect("a row change"));
    let updates: Vec<&Change> = orders.iter().filter(|c| matches!(c, Change::Update { .. })).collect();
    assert_eq!(updates.len(), ROWS / 5, "a fifth of the batch updates");
    group.throughput(Throughput::Elements(updates.len() as u64));
    let (_, sources) = statement(&plan, Kind::Update, &updates);
    group.bench_function("update_params_2k", |b| {
        b.iter(|| {
            let mut wire = BytesMut::new();
            for param in params(&plan, &sources, black_box(&updates)) {
                param.to_sql_checked(&Type::TEXT_ARRAY, &mut wire).expect("encodes");
            }
            wire
        })
    });
    group.finish();
}

/// The shaped orders' apply plan on the multi-tenant target, whose key is (tenant_id, id).
fn multi_tenant_plan(shaped: &TableSchema) -> ApplyPlan {
    let mut schema = shaped.clone();
    schema.key = ["tenant_id", "id"].iter().map(|name| shaped.column_index(name).expect("a shaped column")).collect();
    let target = TableInfo {
        oid: 0,
        schema,
        generated: Vec::new(),
        has_primary_key: true,
        replica_identity: 'd',
        owner: "bench".into(),
        estimated_rows: 0,
        partitioned: false,
    };
    plan_for(shaped, &target).expect("the shaped orders plan")
}

fn digest(c: &mut Criterion) {
    let mut group = c.benchmark_group("digest");
    let rows: Vec<Vec<Value>> = (0..ROWS).map(shaped_order_row).collect();
    group.throughput(Throughput::Elements(ROWS as u64));
    let mut buffer = Vec::with_capacity(256);
    group.bench_function("encode_row_10k", |b| {
        b.iter(|| {
            for row in &rows {
                buffer.clear();
                encode_row(row, &mut buffer);
                black_box(&buffer);
            }
        })
    });
    group.bench_function("row_hash_10k", |b| {
        b.iter(|| {
            for row in &rows {
                black_box(row_hash(row));
            }
        })
    });
    group.bench_function("chunk_digest_10k", |b| {
        b.iter(|| {
            let mut digest = ChunkDigest::default();
            for row in &rows {
                digest.add(row);
            }
            black_box(digest)
        })
    });

    // compare_rows takes both sides by value: they are cloned outside the measurement.
    let shape = shaped_schema();
    let equal = (rows.clone(), rows.clone());
    assert!(compare_rows(&shape, equal.0.clone(), equal.1.clone()).is_empty());
    group.bench_function("compare_rows_10k_equal", |b| {
        b.iter_batched(|| equal.clone(), |(source, target)| compare_rows(&shape, source, target), BatchSize::LargeInput)
    });
    let differing = differing_sides(&rows);
    assert_eq!(compare_rows(&shape, differing.0.clone(), differing.1.clone()).len(), 200);
    group.bench_function("compare_rows_10k_2pct_differ", |b| {
        b.iter_batched(|| differing.clone(), |(source, target)| compare_rows(&shape, source, target), BatchSize::LargeInput)
    });
    group.finish();
}

criterion_group!(benches, pgoutput, transform, copy_text_bench, pass_through_bench, grouping_bench, apply_params_bench, digest);
criterion_main!(benches);
