use crate::support::*;

/// Peak resident memory of a process, from /proc (VmHWM), in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

/// Copying a 1M-row table, streaming a 200k-row transaction and one of 200 MB of wide rows all
/// end equal, and the process's peak RSS stays under 256 MiB: memory does not grow with table
/// size, transaction size or row width (batches end at `max_batch_mib` as well as at
/// `max_batch_changes`).
#[test]
fn large_copy_and_large_transaction_in_bounded_memory() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 100_000, 10);
    let pipeline = pair.pipeline("large", &TENANTIZE.replace("chunk_rows = 5000", "chunk_rows = 100000"));
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_large", &mut process);
    pair.source.psql("app", "BEGIN; UPDATE orders SET status = 'bulk' WHERE id <= 100000; INSERT INTO orders (user_id, amount, status) SELECT 1, 1, 'bulk' FROM generate_series(1, 100000); COMMIT;");
    pair.wait_caught_up("switchyard_large", &mut process);
    // 25,000 notes of 8,000 characters: as one batch of whole changes, far more than the bound.
    pair.source.psql("app", "UPDATE orders SET note = repeat(md5(id::text), 250) WHERE id <= 25000");
    pair.wait_caught_up("switchyard_large", &mut process);
    assert_tenantized_equal(&pair);
    let peak = peak_rss_mib(process.pid());
    eprintln!("figure=peak_rss_mib phase=copy_1m_rows+txn_200k_rows+txn_200mb value={peak}");
    assert!(peak < 256, "peak RSS {peak} MiB");
}
