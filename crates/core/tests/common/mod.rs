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

/// The operations in a database's op log after position `after`, without their positions.
pub fn ops_after(db: &blazedb_core::Database, after: u64) -> Vec<blazedb_core::Operation> {
    db.oplog_since(after, usize::MAX)
        .expect("the op log is readable")
        .into_iter()
        .map(|(_, op)| op)
        .collect()
}

/// Every operation in a database's op log.
pub fn all_ops(db: &blazedb_core::Database) -> Vec<blazedb_core::Operation> {
    ops_after(db, 0)
}
