//! Feeds arbitrary bytes to the protocol's frame decoder in arbitrary chunks; every decoded
//! message (plain or compressed, type 0x7f) must re-encode to the same frame, and must
//! decode to the same message after compression with zstd (see
//! `blazedb_protocol::fuzz::frames`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blazedb_protocol::fuzz::frames(data);
});
