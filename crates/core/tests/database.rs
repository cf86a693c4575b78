//! Opening, creating, encryption and the errors a user sees for bad files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{Seek, SeekFrom, Write};

use blazedb_core::{Database, Error, OpenError, OpenOptions, Value, fields};

const PASSWORD: &str = "correct horse battery staple";

#[test]
fn created_database_reopens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    let db = Database::create(&path, PASSWORD).unwrap();
    let node = db.node_id();
    let id = db.insert("bugs", fields! {"title" => "Crash"}).unwrap();
    drop(db);
    let db = Database::open(&path, PASSWORD).unwrap();
    assert_eq!(db.node_id(), node);
    assert_eq!(
        db.get("bugs", id).unwrap().unwrap().get("title"),
        Some(&"Crash".into())
    );
    assert_eq!(db.replication().lamport(), 1);
}

#[test]
fn wrong_password_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    Database::create(&path, PASSWORD)
        .unwrap()
        .insert("x", fields! {"a" => 1})
        .unwrap();
    let err = Database::open(&path, "not it").unwrap_err();
    assert!(
        matches!(err, Error::Open(OpenError::WrongPassword { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("wrong password"));
}

#[test]
fn file_is_encrypted_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    let db = Database::create(&path, PASSWORD).unwrap();
    db.insert("secrets", fields! {"note" => "the launch code is 0000"})
        .unwrap();
    drop(db);
    let bytes = std::fs::read(&path).unwrap();
    assert_ne!(&bytes[..16], b"SQLite format 3\0");
    let needle = b"launch code";
    assert!(!bytes.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn creating_over_an_existing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    Database::create(&path, PASSWORD).unwrap();
    assert!(matches!(
        Database::create(&path, PASSWORD),
        Err(Error::Open(OpenError::AlreadyExists { .. }))
    ));
}

#[test]
fn opening_a_missing_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Database::open(dir.path().join("nope"), PASSWORD).unwrap_err();
    assert!(
        matches!(err, Error::Open(OpenError::DatabaseMissing { .. })),
        "{err}"
    );
}

#[test]
fn random_bytes_are_not_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk");
    std::fs::write(
        &path,
        (0..8192u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    // Indistinguishable from a file under another key: reported as such, never a panic.
    assert!(matches!(
        Database::open(&path, PASSWORD),
        Err(Error::Open(OpenError::WrongPassword { .. }))
    ));
    std::fs::write(&path, b"hello").unwrap();
    assert!(matches!(
        Database::open(&path, PASSWORD),
        Err(Error::Open(OpenError::NotADatabase { .. }))
    ));
    std::fs::write(&path, b"").unwrap();
    assert!(matches!(
        Database::open(&path, PASSWORD),
        Err(Error::Open(OpenError::NotADatabase { .. }))
    ));
}

#[test]
fn a_foreign_sqlite_file_is_not_a_blazedb_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.sqlite");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    drop(conn);
    let err = OpenOptions::new().open(&path).unwrap_err();
    assert!(
        matches!(err, Error::Open(OpenError::NotADatabase { .. })),
        "{err}"
    );
    let err = Database::open(&path, PASSWORD).unwrap_err();
    assert!(
        matches!(err, Error::Open(OpenError::NotADatabase { .. })),
        "{err}"
    );
}

/// A closed encrypted database of 2000 padded records, a few hundred KiB on disk.
fn filled_file(path: &std::path::Path) {
    let db = Database::create(path, PASSWORD).unwrap();
    db.insert_many(
        "bugs",
        (0..2000).map(|i| fields! {"n" => i, "pad" => "x".repeat(100)}),
    )
    .unwrap();
}

/// Opens a damaged file and reads all of it; opening may succeed (the first page is intact),
/// so the reads are what must fail, cleanly.
fn open_and_read_all(path: &std::path::Path) -> Result<usize, Error> {
    Database::open(path, PASSWORD).and_then(|db| {
        db.integrity_check()?;
        db.fetch_all("bugs").map(|r| r.len())
    })
}

#[test]
fn truncated_database_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    filled_file(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 8192);
    for cut in [len / 2, 4096 + 100, 300] {
        let copy = dir.path().join(format!("cut{cut}"));
        std::fs::copy(&path, &copy).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .unwrap()
            .set_len(cut)
            .unwrap();
        match open_and_read_all(&copy) {
            Err(
                Error::Corrupt(_)
                | Error::Open(OpenError::NotADatabase { .. })
                | Error::Open(OpenError::WrongPassword { .. }),
            ) => {}
            other => panic!("cut at {cut}: expected a clear error, got {other:?}"),
        }
    }
}

#[test]
fn garbled_page_gives_a_corruption_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    filled_file(&path);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(4096 * 5 + 1000)).unwrap();
    f.write_all(&[0xAB; 64]).unwrap();
    drop(f);
    let outcome = open_and_read_all(&path);
    assert!(matches!(outcome, Err(Error::Corrupt(_))), "{outcome:?}");
}

#[test]
fn password_change_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    let db = Database::create(&path, PASSWORD).unwrap();
    let id = db.insert("bugs", fields! {"title" => "keep me"}).unwrap();
    db.change_password("new secret").unwrap();
    db.insert("bugs", fields! {"title" => "after rekey"})
        .unwrap();
    drop(db);
    assert!(matches!(
        Database::open(&path, PASSWORD),
        Err(Error::Open(OpenError::WrongPassword { .. }))
    ));
    let db = Database::open(&path, "new secret").unwrap();
    assert_eq!(db.count("bugs").unwrap(), 2);
    assert!(db.get("bugs", id).unwrap().is_some());
    db.integrity_check().unwrap();
}

#[test]
fn stats_of_an_encrypted_file_report_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("a.blazedb"), PASSWORD).unwrap();
    db.insert("bugs", fields! {"title" => "x"}).unwrap();
    let stats = db.stats().unwrap();
    assert!(stats.size_bytes >= 4096, "{stats:?}");
    assert_eq!(stats.oplog_len, 1);
}

#[test]
fn unencrypted_database_needs_no_password_and_refuses_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.blazedb");
    OpenOptions::new()
        .create(&path)
        .unwrap()
        .insert("a", fields! {"x" => 1})
        .unwrap();
    let plain = OpenOptions::new().open(&path).unwrap();
    assert_eq!(plain.count("a").unwrap(), 1);
    assert!(plain.change_password("secret").is_err());
    drop(plain);
    assert!(matches!(
        Database::open(&path, PASSWORD),
        Err(Error::Open(OpenError::NotADatabase { .. }))
    ));
}

#[test]
fn encrypted_database_opened_without_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    Database::create(&path, PASSWORD).unwrap();
    assert!(matches!(
        OpenOptions::new().open(&path),
        Err(Error::Open(OpenError::WrongPassword { .. }))
    ));
}

#[test]
fn password_is_not_printed_in_debug_output() {
    let options = OpenOptions::new().password("hunter2");
    assert!(!format!("{options:?}").contains("hunter2"));
}

#[test]
fn two_handles_on_one_file_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    let a = Database::create(&path, PASSWORD).unwrap();
    let b = Database::open(&path, PASSWORD).unwrap();
    a.insert("bugs", fields! {"n" => 1}).unwrap();
    b.create_index("bugs", "n").unwrap();
    // `a` must notice the index `b` created and maintain it.
    let id = a.insert("bugs", fields! {"n" => 2}).unwrap();
    b.insert("bugs", fields! {"n" => 3}).unwrap();
    let q = a.query("bugs").filter(blazedb_core::Filter::eq("n", 2));
    assert!(q.explain().unwrap().uses_index());
    assert_eq!(q.run().unwrap()[0].id, id);
    // Op ids stay unique across both handles.
    let ops = a.replication().oplog_since(0, 100).unwrap();
    let mut seqs: Vec<u64> = ops.iter().map(|(_, op)| op.id.seq).collect();
    seqs.dedup();
    assert_eq!(seqs, vec![1, 2, 3]);
}

#[test]
fn a_restored_backup_takes_its_own_later_operations_back_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    let backup = dir.path().join("backup.blazedb");
    let db = Database::create(&path, PASSWORD).unwrap();
    db.insert("t", fields! {"n" => 1}).unwrap();
    drop(db); // the last close checkpoints the WAL into the file
    std::fs::copy(&path, &backup).unwrap();

    let a = Database::open(&path, PASSWORD).unwrap();
    let x = a.insert("t", fields! {"n" => 2}).unwrap();
    a.update("t", x, fields! {"n" => 3}).unwrap();
    a.insert("t", fields! {"n" => 4}).unwrap();
    let mut ops: Vec<_> = a
        .replication()
        .oplog_since(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, o)| o)
        .collect();

    // The restored copy has the same node id but has never seen operations 2..=4 of it.
    let b = Database::open(&backup, PASSWORD).unwrap();
    assert_eq!(b.node_id(), a.node_id());
    ops.reverse();
    let report = b.replication().apply_remote(&ops).unwrap();
    assert_eq!((report.applied, report.duplicates), (3, 1));
    // Its next operation does not reuse a sequence number the original already used.
    b.insert("t", fields! {"n" => 5}).unwrap();
    let b_ops: Vec<_> = b
        .replication()
        .oplog_since(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert_eq!(b_ops.last().unwrap().id.seq, 5);
    let again = b.replication().apply_remote(&ops).unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 4));
    assert_eq!(b.replication().apply_remote(&b_ops).unwrap().applied, 0);
    // After reopening, the bookkeeping survives.
    drop(b);
    let b = Database::open(&backup, PASSWORD).unwrap();
    assert_eq!(b.replication().apply_remote(&ops).unwrap().applied, 0);
    a.replication().apply_remote(&b_ops).unwrap();
    assert_eq!(a.content_hash().unwrap(), b.content_hash().unwrap());
    assert_eq!(b.count("t").unwrap(), 4);
}

#[test]
fn open_or_create_creates_once_then_opens_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.blazedb");
    let db = Database::open_or_create(&path, "pw").unwrap();
    let id = db.insert("notes", fields! {"text" => "kept"}).unwrap();
    let node = db.node_id();
    drop(db);
    let db = Database::open_or_create(&path, "pw").unwrap();
    assert_eq!(db.node_id(), node);
    let text = db.get("notes", id).unwrap().unwrap();
    assert_eq!(text.get("text").and_then(Value::as_str), Some("kept"));
    drop(db);
    // A wrong password is an error, not a new database.
    let err = Database::open_or_create(&path, "nope").unwrap_err();
    assert!(
        matches!(err, Error::Open(OpenError::WrongPassword { .. })),
        "{err}"
    );
    assert_eq!(
        Database::open(&path, "pw").unwrap().count("notes").unwrap(),
        1
    );
}

#[test]
fn ensure_index_creates_the_index_once_and_then_reports_it_is_there() {
    let db = Database::in_memory().unwrap();
    db.insert("bugs", fields! {"status" => "open"}).unwrap();
    assert!(db.ensure_index("bugs", "status").unwrap());
    assert!(!db.ensure_index("bugs", "status").unwrap());
    assert!(matches!(
        db.create_index("bugs", "status"),
        Err(Error::IndexExists { .. })
    ));
    assert_eq!(db.indexes("bugs").unwrap(), ["status"]);
    // Invalid names are still errors.
    assert!(db.ensure_index("bugs", "").is_err());
}
