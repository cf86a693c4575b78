//! Shared helpers of the integration tests (included with `mod common;`).
#![allow(dead_code)]

/// Property-test case count: a short run in CI, a long one with `BLAZEDB_LONG=1`.
pub fn cases(short: u32, long: u32) -> u32 {
    if std::env::var("BLAZEDB_LONG").is_ok_and(|v| v == "1") {
        long
    } else {
        short
    }
}
