//! What the sync engine needs from a database: peer cursors stored with the data, version
//! vectors, and op counts per log position.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_core::{Database, Error, NodeId, OpId, fields};

use blazedb_testkit as common;

use common::all_ops;

#[test]
fn a_peer_cursor_commits_with_the_operations_it_covers() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    a.insert("t", fields! {"x" => 1}).unwrap();
    let head = a.replication().oplog_head().unwrap();
    b.transaction(|tx| {
        tx.replication().apply_remote(&all_ops(&a))?;
        tx.replication().set_peer_cursor(a.node_id(), head)
    })
    .unwrap();
    assert_eq!(b.replication().peer_cursor(a.node_id()).unwrap(), head);
    assert_eq!(b.count("t").unwrap(), 1);
}

#[test]
fn a_rolled_back_transaction_leaves_the_peer_cursor_where_it_was() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    a.insert("t", fields! {"x" => 1}).unwrap();
    let err = b
        .transaction(|tx| {
            tx.replication().apply_remote(&all_ops(&a))?;
            tx.replication().set_peer_cursor(a.node_id(), 7)?;
            Err::<(), _>(Error::InvalidQuery("give up".into()))
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidQuery(_)));
    assert_eq!(b.replication().peer_cursor(a.node_id()).unwrap(), 0);
    assert_eq!(b.count("t").unwrap(), 0);
}

#[test]
fn a_peer_cursor_never_moves_backwards() {
    let b = Database::in_memory().unwrap();
    let peer = NodeId::random();
    b.transaction(|tx| tx.replication().set_peer_cursor(peer, 10))
        .unwrap();
    b.transaction(|tx| tx.replication().set_peer_cursor(peer, 4))
        .unwrap();
    assert_eq!(b.replication().peer_cursor(peer).unwrap(), 10);
    assert_eq!(b.replication().peer_cursor(NodeId::random()).unwrap(), 0);
}

#[test]
fn the_version_vector_lists_own_and_merged_origins() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    for i in 0..3 {
        a.insert("t", fields! {"x" => i}).unwrap();
    }
    b.insert("t", fields! {"y" => 1}).unwrap();
    b.replication().apply_remote(&all_ops(&a)).unwrap();
    let v = b.replication().version_vector().unwrap();
    assert_eq!(v.get(a.node_id()), 3);
    assert_eq!(v.get(b.node_id()), 1);
    assert_eq!(v.len(), 2);
    assert_eq!(
        a.replication().version_vector().unwrap().get(b.node_id()),
        0
    );
}

#[test]
fn the_version_vector_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.blazedb");
    let a = Database::in_memory().unwrap();
    a.insert_many("t", (0..5).map(|i| fields! {"x" => i}))
        .unwrap();
    {
        let b = Database::create(&path, "pw").unwrap();
        b.replication().apply_remote(&all_ops(&a)).unwrap();
    }
    let b = Database::open(&path, "pw").unwrap();
    assert_eq!(
        b.replication().version_vector().unwrap().get(a.node_id()),
        5
    );
}

#[test]
fn op_counts_per_position_give_the_operations_after_a_cursor() {
    let a = Database::in_memory().unwrap();
    a.insert("t", fields! {"x" => 1}).unwrap();
    let first = a.replication().oplog_head().unwrap();
    a.insert_many("t", (0..10).map(|i| fields! {"x" => i}))
        .unwrap();
    let id = a.insert("t", fields! {"x" => 2}).unwrap();
    a.delete("t", id).unwrap();
    assert_eq!(a.replication().oplog_ops_through(0).unwrap(), 0);
    assert_eq!(a.replication().oplog_ops_through(first).unwrap(), 1);
    let all = a.replication().oplog_ops_through(u64::MAX).unwrap();
    assert_eq!(all, 13);
    assert_eq!(all - a.replication().oplog_ops_through(first).unwrap(), 12);
}

#[test]
fn operations_merged_ahead_of_a_gap_count_once_the_gap_fills() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    for i in 0..5 {
        a.insert("t", fields! {"x" => i}).unwrap();
    }
    let ops = all_ops(&a);
    let early = [
        ops[0].clone(),
        ops[1].clone(),
        ops[3].clone(),
        ops[4].clone(),
    ];
    assert_eq!(b.replication().apply_remote(&early).unwrap().applied, 4);
    assert_eq!(
        b.replication().version_vector().unwrap().get(a.node_id()),
        2,
        "3 is missing"
    );
    let again = b.replication().apply_remote(&early).unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 4));
    b.replication().apply_remote(&ops[2..3]).unwrap();
    assert_eq!(
        b.replication().version_vector().unwrap().get(a.node_id()),
        5
    );
    let all = b.replication().apply_remote(&ops).unwrap();
    assert_eq!((all.applied, all.duplicates), (0, 5));
    assert_eq!(b.count("t").unwrap(), 5);
    assert_eq!(b.replication().oplog_ops_through(u64::MAX).unwrap(), 5);
}

#[test]
fn local_settings_persist_encrypted_and_never_enter_the_op_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.blazedb");
    let db = Database::create(&path, "pw").unwrap();
    let head = db.replication().oplog_head().unwrap();
    assert_eq!(db.replication().local_setting("sync/key").unwrap(), None);
    db.replication()
        .set_local_setting("sync/key", Some(b"MARKER-SECRET-KEY"))
        .unwrap();
    db.replication()
        .set_local_setting("sync/key", Some(b"MARKER-SECRET-KEY-2"))
        .unwrap();
    assert_eq!(db.replication().oplog_head().unwrap(), head);
    drop(db);
    let db = Database::open(&path, "pw").unwrap();
    assert_eq!(
        db.replication()
            .local_setting("sync/key")
            .unwrap()
            .as_deref(),
        Some(&b"MARKER-SECRET-KEY-2"[..])
    );
    db.replication()
        .set_local_setting("sync/key", None)
        .unwrap();
    assert_eq!(db.replication().local_setting("sync/key").unwrap(), None);
    drop(db);
    let bytes = std::fs::read(&path).unwrap();
    assert!(!bytes.windows(6).any(|w| w == b"MARKER"));
}

#[test]
fn a_version_2_file_is_upgraded_on_open() {
    let (_dir, path) = common::altered_file(
        "DROP TABLE local_settings; DROP TABLE op_digests; DROP TABLE rejections; \
         ALTER TABLE oplog DROP COLUMN own_seq; ALTER TABLE origins DROP COLUMN recent; \
         ALTER TABLE origins DROP COLUMN recent_first; PRAGMA user_version = 2;",
    );
    let db = Database::open(&path, "pw").unwrap();
    assert_eq!(db.count("t").unwrap(), 1);
    db.replication().set_local_setting("a", Some(b"b")).unwrap();
    assert_eq!(
        db.replication().local_setting("a").unwrap().as_deref(),
        Some(&b"b"[..])
    );
    // Written before digests existed: never compared.
    let first = OpId {
        origin: db.node_id(),
        seq: 1,
    };
    assert_eq!(db.replication().op_digest(first).unwrap(), None);
    db.insert("t", fields! {"x" => 2}).unwrap();
    let second = OpId { seq: 2, ..first };
    assert!(db.replication().op_digest(second).unwrap().is_some());
}
