//! Helpers shared by BlazeDB's integration tests and benchmarks (`publish = false`): a
//! dev-dependency of the crates whose tests use them, instead of files included by path.
//!
//! * [`server`]: a `blazedb-server` started in-process on 127.0.0.1 with a test master key.
//! * [`probe`]: a relay whose far end is the test itself.
//! * [`fault_proxy`]: a TCP proxy that cuts connections at random bytes.
//! * [`bench`]: the benchmarks' record generator, statistics and formatting.
//! * [`cases`], [`ops_after`], [`all_ops`]: property-test sizes and op-log reads.
//! * [`altered_file`], [`only_change`]: old files made by hand, and the one change of a commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

pub mod bench;
pub mod fault_proxy;
pub mod probe;
pub mod server;

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
    db.replication()
        .oplog_since(after, usize::MAX)
        .expect("the op log is readable")
        .into_iter()
        .map(|(_, op)| op)
        .collect()
}

/// Every operation in a database's op log.
pub fn all_ops(db: &blazedb_core::Database) -> Vec<blazedb_core::Operation> {
    ops_after(db, 0)
}

/// A database file (password `pw`, one record in collection `t`) altered by `sql` run
/// through SQLCipher directly, bypassing BlazeDB: a file of an older schema version, or a
/// damaged one. Returns the directory (keep it alive) and the file's path.
pub fn altered_file(sql: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("old.blazedb");
    let db = blazedb_core::Database::create(&path, "pw").expect("the file is created");
    db.insert("t", blazedb_core::fields! {"x" => 1})
        .expect("the record is written");
    drop(db);
    let conn = rusqlite::Connection::open(&path).expect("the file opens");
    conn.pragma_update(None, "key", "pw")
        .expect("the key is set");
    conn.execute_batch("PRAGMA cipher_hmac_algorithm = HMAC_SHA256")
        .expect("the HMAC is set");
    conn.execute_batch(sql).expect("the SQL runs");
    (dir, path)
}

/// The one change of the next commit `sub` receives (within 5 s).
pub fn only_change(sub: &blazedb_core::Subscription) -> blazedb_core::Change {
    let commit = sub
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("a commit arrives");
    assert_eq!(commit.changes.len(), 1, "{commit:?}");
    commit.changes[0].clone()
}
