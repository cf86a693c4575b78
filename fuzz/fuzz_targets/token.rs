//! Feeds arbitrary text (invalid UTF-8 replaced) to `EnrollmentToken::parse`: it must never
//! panic, and a token that parses re-encodes to the same text (without surrounding
//! whitespace), which parses to the same id, secret, suite and server key (see
//! `blazedb_protocol::fuzz::token`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    blazedb_protocol::fuzz::token(data);
});
