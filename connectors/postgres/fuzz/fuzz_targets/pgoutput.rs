//! Any bytes a server (or an attacker between us and it) sends must decode to Ok or Err, never
//! panic or allocate without bound. Run with `cargo fuzz run pgoutput` from connectors/postgres.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = switchyard_postgres::pgoutput::decode(Bytes::copy_from_slice(data));
});
