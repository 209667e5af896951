use std::time::Duration;

use crate::support::*;

/// kill -9 at many moments — during the snapshot, while streaming, between batches — under a
/// concurrent write load; after a final restart the target equals the transformed source, no
/// row missing or duplicated.
#[test]
fn survives_kill_9_at_twenty_points_under_load() {
    let pair = Pair::start();
    seed_schemas(&pair);
    load_rows(&pair, 20_000, 10);
    let pipeline = pair.pipeline("tenantize", TENANTIZE);
    let writer = Writer::start(&pair.source, 7);
    let mut state = 0x2545F4914F6CDD1Du64;
    for point in 0..20 {
        let process = Switchyard::run(&pipeline);
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Early points land in the snapshot, later ones while streaming.
        let millis = 150 + (state % 1200) + point * 40;
        std::thread::sleep(Duration::from_millis(millis));
        process.kill9();
    }
    let written = writer.finish();
    assert!(written > 100, "the writer wrote only {written} statements");
    let mut process = Switchyard::run(&pipeline);
    pair.wait_caught_up("switchyard_tenantize", &mut process);
    assert_tenantized_equal(&pair);
    let chunks = pair.target.psql("app", "SELECT count(*) FILTER (WHERE copied_at IS NULL), count(*) FROM switchyard.snapshot_chunks");
    assert!(chunks.starts_with("0|"), "snapshot chunks not all done: {chunks}");
}
