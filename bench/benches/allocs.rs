//! Heap allocations per element of the hot paths that `hot_paths` times: the same operations on
//! the same inputs, run once (after one warm-up run) under a counting allocator. Kept out of the
//! timing benchmarks so that counting does not slow what they measure.
//!
//! Run: `cargo bench -p switchyard-bench --bench allocs`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use switchyard::reconcile::compare_rows;
use switchyard_core::digest::{encode_row, row_hash, ChunkDigest};
use switchyard_core::Value;
use switchyard_postgres::copy_text;
use switchyard_postgres::grouping::{self, Ties};
use switchyard_postgres::pgoutput::decode;

use common::*;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size() as u64, Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size.saturating_sub(layout.size()) as u64, Relaxed);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `routine` twice on fresh inputs from `setup` (the first run warms caches, plans and
/// shared buffers) and counts the second. Setup and the drop of what `routine` returns are not
/// counted, as criterion's `iter_batched` does not time them.
fn report<I, R>(name: &str, elements: usize, mut setup: impl FnMut() -> I, mut routine: impl FnMut(I) -> R) {
    drop(black_box(routine(setup())));
    let input = setup();
    let before = (ALLOCS.load(Relaxed), REALLOCS.load(Relaxed), BYTES.load(Relaxed));
    let out = black_box(routine(input));
    let after = (ALLOCS.load(Relaxed), REALLOCS.load(Relaxed), BYTES.load(Relaxed));
    drop(out);
    let per = |a: u64, b: u64| (b - a) as f64 / elements as f64;
    println!(
        "{name:<38} {:>8.2} {:>10.2} {:>10.1}",
        per(before.0, after.0),
        per(before.1, after.1),
        per(before.2, after.2)
    );
}

fn main() {
    // bytes: what was asked of the allocator, new blocks plus growth of reallocated ones.
    println!("{:<38} {:>8} {:>10} {:>10}", "per element", "allocs", "reallocs", "bytes");

    // Each result is dropped as it comes (frees are not counted), so no collecting Vec shows.
    let decode_all = |payloads: &[Bytes]| {
        for payload in payloads {
            black_box(decode(payload.clone()).expect("valid"));
        }
    };
    for (name, payloads) in [
        ("pgoutput/begin", (0..ROWS).map(begin_payload).collect::<Vec<_>>()),
        ("pgoutput/commit", (0..ROWS).map(commit_payload).collect()),
        ("pgoutput/insert_orders", (0..ROWS).map(insert_payload).collect()),
        ("pgoutput/update_orders", (0..ROWS).map(update_payload).collect()),
        ("pgoutput/txn_mix", transaction_payloads(ROWS / 12)),
        ("pgoutput/captured_stream", captured_payloads()),
    ] {
        report(name, payloads.len(), || (), |()| decode_all(&payloads));
    }

    let table = orders_schema();
    let batch = change_batch(&table);
    let mut shaper = tenantize();
    report(
        "transform/tenantize_10k",
        ROWS,
        || batch.clone(),
        |changes| changes.into_iter().filter_map(|change| shaper.apply(change).expect("shapes")).collect::<Vec<_>>(),
    );
    let plan = shaper.plan(&table).unwrap();
    let rows: Vec<Vec<Value>> = (0..ROWS).map(order_row).collect();
    report("transform/plan_row_10k", ROWS, || (), |()| {
        for row in &rows {
            black_box(plan.row(row));
        }
    });

    let shaped_rows: Vec<Vec<Value>> = (0..ROWS).map(shaped_order_row).collect();
    let mut buffer = BytesMut::with_capacity(512 * 1024);
    report("copy_text/write_line_10k", ROWS, || (), |()| {
        buffer.clear();
        for row in &shaped_rows {
            copy_text::write_line(row, &mut buffer);
        }
    });
    let chunks = copy_chunks();
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    report("copy_text/row_reader_10k", ROWS, || chunks.clone(), |chunks| read_snapshot(&runtime, chunks));

    let ties = Ties::default();
    let orders = shaped_change_batch();
    report("grouping/orders_10k", ROWS, || (), |()| grouping::group(&orders, &ties));
    let interleaved = interleaved_change_batch();
    report("grouping/interleaved_10k", ROWS, || (), |()| grouping::group(&interleaved, &ties));

    let mut bytes = Vec::with_capacity(256);
    report("digest/encode_row_10k", ROWS, || (), |()| {
        for row in &shaped_rows {
            bytes.clear();
            encode_row(row, &mut bytes);
        }
    });
    report("digest/row_hash_10k", ROWS, || (), |()| shaped_rows.iter().map(|row| row_hash(row)).sum::<i64>());
    report("digest/chunk_digest_10k", ROWS, || (), |()| {
        let mut digest = ChunkDigest::default();
        for row in &shaped_rows {
            digest.add(row);
        }
        digest
    });
    let shape = shaped_schema();
    let compare = |(source, target): (Vec<Vec<Value>>, Vec<Vec<Value>>)| compare_rows(&shape, source, target);
    let equal = (shaped_rows.clone(), shaped_rows.clone());
    report("digest/compare_rows_10k_equal", ROWS, || equal.clone(), compare);
    let differing = differing_sides(&shaped_rows);
    report("digest/compare_rows_10k_2pct_differ", ROWS, || differing.clone(), compare);
}
