//! The rejection inbox: operations a server refused, kept until the application clears them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_testkit as common;

use blazedb_core::{ChangeKind, ChangeOrigin, Database, NodeId, RejectCode, Uuid, fields};

fn server() -> NodeId {
    NodeId(Uuid::from_u128(0x5e))
}

#[test]
fn a_rejected_operation_is_kept_until_cleared() {
    let db = Database::in_memory().unwrap();
    db.insert("bugs", fields! {"teamId" => "android"}).unwrap();
    db.insert("bugs", fields! {"teamId" => "ios"}).unwrap();
    let ops = common::all_ops(&db);
    db.transaction(|tx| {
        tx.replication().reject(
            server(),
            &ops[0],
            RejectCode::Forbidden,
            "team android is not yours",
        )
    })
    .unwrap();
    let inbox = db.replication().rejections().unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].op, ops[0]);
    assert_eq!(inbox[0].code, RejectCode::Forbidden);
    assert_eq!(inbox[0].reason, "team android is not yours");
    // The operation itself stays in the op log: it happened here.
    assert_eq!(common::all_ops(&db), ops);
    assert_eq!(db.replication().clear_rejections(&[ops[1].id]).unwrap(), 0);
    assert_eq!(db.replication().clear_rejections(&[ops[0].id]).unwrap(), 1);
    assert!(db.replication().rejections().unwrap().is_empty());
}

#[test]
fn a_repeated_rejection_changes_nothing() {
    let db = Database::in_memory().unwrap();
    db.insert("bugs", fields! {"title" => "x"}).unwrap();
    let op = common::all_ops(&db).remove(0);
    let reject = |code| {
        db.transaction(|tx| tx.replication().reject(server(), &op, code, "no"))
            .unwrap()
    };
    assert!(reject(RejectCode::ReadOnly));
    assert!(!reject(RejectCode::HiddenField));
    let inbox = db.replication().rejections().unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].code, RejectCode::ReadOnly);
}

#[test]
fn watchers_hear_of_each_rejection() {
    let db = Database::in_memory().unwrap();
    let id = db.insert("bugs", fields! {"secret" => "x"}).unwrap();
    let op = common::all_ops(&db).remove(0);
    let sub = db.subscribe("bugs");
    db.transaction(|tx| {
        tx.replication()
            .reject(server(), &op, RejectCode::HiddenField, "hidden field")
    })
    .unwrap();
    let change = common::only_change(&sub);
    assert_eq!(change.id, id);
    assert_eq!(change.kind, ChangeKind::Rejected(RejectCode::HiddenField));
    assert_eq!(change.origin, ChangeOrigin::Remote(server()));
}

#[test]
fn the_inbox_survives_reopening_the_encrypted_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("device.blazedb");
    let db = Database::create(&path, "pw").unwrap();
    db.insert("bugs", fields! {"title" => "x"}).unwrap();
    let op = common::all_ops(&db).remove(0);
    db.transaction(|tx| {
        tx.replication()
            .reject(server(), &op, RejectCode::ReadOnly, "read-only")
    })
    .unwrap();
    drop(db);
    let db = Database::open(&path, "pw").unwrap();
    let inbox = db.replication().rejections().unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].op, op);
}

#[test]
fn a_version_4_file_is_upgraded_with_an_empty_inbox() {
    let (_dir, path) = common::altered_file("DROP TABLE rejections; PRAGMA user_version = 4;");
    let db = Database::open(&path, "pw").unwrap();
    assert_eq!(db.count("t").unwrap(), 1);
    assert!(db.replication().rejections().unwrap().is_empty());
    let op = common::all_ops(&db).remove(0);
    db.transaction(|tx| {
        tx.replication()
            .reject(server(), &op, RejectCode::Forbidden, "no")
    })
    .unwrap();
    assert_eq!(db.replication().rejections().unwrap().len(), 1);
}

#[test]
fn every_reject_code_round_trips_through_its_byte() {
    for code in RejectCode::ALL {
        assert_eq!(RejectCode::from_code(code.code()), Some(code));
        assert!(!code.to_string().is_empty());
    }
    assert_eq!(RejectCode::from_code(0), None);
    assert_eq!(RejectCode::from_code(200), None);
}
