//! Feeds arbitrary bytes to every step of the secure channel that reads the peer's bytes: the
//! first-message parser, a responder reading the first message, an initiator reading the
//! second, a responder reading the third, and `SecureChannel::open` after a real handshake
//! (arbitrary bytes, or a real sealed payload with bits flipped and cut). Nothing may panic,
//! nothing forged may be accepted, and a failed channel stays failed (see
//! `blazedb_protocol::fuzz::handshake`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blazedb_protocol::fuzz::handshake(data);
});
