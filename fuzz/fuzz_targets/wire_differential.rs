//! Our `wire` views against etherparse and smoltcp on arbitrary frames: the
//! differential check of `crates/dataplane/tests/differential/check.rs` (included
//! by path, so the property test and this target assert the same relation).
//! The input is an Ethernet frame without the virtio-net header.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/dataplane/tests/differential/check.rs"]
mod check;

fuzz_target!(|data: &[u8]| {
    // cargo fuzz compiles smoltcp with `--cfg fuzzing`, under which its
    // `verify_checksum`s always answer true: compare checksums with etherparse only.
    let _ = check::check_frame(data, check::Options { smoltcp_checksums: false });
});
