//! Refused operations: the inbox a device keeps, and how a server skips and undoes them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_testkit as common;

use blazedb_core::{
    ChangeKind, ChangeOrigin, Database, NodeId, OpKind, RejectCode, Uuid, Value, fields,
};

/// How far `server`'s version vector counts `device`'s operations as received.
fn received_from(server: &Database, device: &Database) -> u64 {
    let vector = server.replication().version_vector().unwrap();
    vector.get(device.node_id())
}

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

#[test]
fn a_skipped_operation_changes_nothing_but_counts_as_received() {
    let device = Database::in_memory().unwrap();
    let server = Database::in_memory().unwrap();
    let id = device
        .insert("bugs", fields! {"teamId" => "android"})
        .unwrap();
    let ops = common::all_ops(&device);
    let report = server
        .transaction(|tx| tx.replication().skip_remote(&ops))
        .unwrap();
    assert_eq!(report.applied, 1);
    assert_eq!(server.get("bugs", id).unwrap(), None);
    assert_eq!(server.replication().oplog_head().unwrap(), 0);
    assert_eq!(received_from(&server, &device), 1);
    // Sent again, it is a duplicate: never applied, never asked for again.
    let again = server.replication().apply_remote(&ops).unwrap();
    assert_eq!((again.applied, again.duplicates), (0, 1));
    assert_eq!(server.get("bugs", id).unwrap(), None);
}

/// A device and a server that share a record; the device then makes one write.
struct Refused {
    device: Database,
    server: Database,
    id: Uuid,
}

impl Refused {
    fn new() -> Refused {
        let device = Database::in_memory().unwrap();
        let server = Database::in_memory().unwrap();
        let id = server
            .insert("bugs", fields! {"teamId" => "ios", "title" => "Crash"})
            .unwrap();
        device
            .replication()
            .apply_remote(&common::all_ops(&server))
            .unwrap();
        // The device's clock runs ahead of the server's.
        for n in 0..20 {
            device
                .update("bugs", id, fields! {"n" => n as i64})
                .unwrap();
        }
        server
            .replication()
            .apply_remote(&common::all_ops(&device))
            .unwrap();
        Refused { device, server, id }
    }

    /// The server refuses the device's last operation and undoes it; the device applies the
    /// undoing. Returns the undoing operation.
    fn refuse_last(&self) -> blazedb_core::Operation {
        let refused = common::all_ops(&self.device).pop().unwrap();
        let undo = self
            .server
            .transaction(|tx| {
                tx.replication()
                    .skip_remote(std::slice::from_ref(&refused))?;
                tx.replication().undo_refused(&refused)
            })
            .unwrap();
        assert!(undo.lamport > refused.lamport);
        self.device
            .replication()
            .apply_remote(std::slice::from_ref(&undo))
            .unwrap();
        assert_eq!(
            self.device.get("bugs", self.id).unwrap(),
            self.server.get("bugs", self.id).unwrap()
        );
        undo
    }
}

#[test]
fn a_refused_update_is_undone_even_where_the_value_did_not_change() {
    let r = Refused::new();
    r.device
        .update("bugs", r.id, fields! {"teamId" => "android", "secret" => 1})
        .unwrap();
    let undo = r.refuse_last();
    assert_eq!(undo.kind, OpKind::Update);
    let fields = r.device.get("bugs", r.id).unwrap().unwrap().fields;
    assert_eq!(fields.get("teamId"), Some(&"ios".into()));
    // A field the server never had is set to null on both sides.
    assert_eq!(fields.get("secret"), Some(&Value::Null));
}

#[test]
fn a_refused_delete_is_undone_by_recreating_the_record() {
    let r = Refused::new();
    let before = r.server.get("bugs", r.id).unwrap();
    r.device.delete("bugs", r.id).unwrap();
    assert_eq!(r.refuse_last().kind, OpKind::Insert);
    assert_eq!(r.device.get("bugs", r.id).unwrap(), before);
}

#[test]
fn a_refused_insert_is_undone_by_a_delete() {
    let r = Refused::new();
    let new = r
        .device
        .insert("bugs", fields! {"teamId" => "android"})
        .unwrap();
    let undo = r.refuse_last();
    assert_eq!(undo.kind, OpKind::Delete);
    assert_eq!(undo.record, new);
    assert_eq!(r.device.get("bugs", new).unwrap(), None);
    assert_eq!(r.server.get("bugs", new).unwrap(), None);
}

#[test]
fn an_invalid_operation_is_refused_when_skipped_too() {
    let device = Database::in_memory().unwrap();
    let server = Database::in_memory().unwrap();
    device.insert("bugs", fields! {"x" => 1}).unwrap();
    let mut op = common::all_ops(&device).remove(0);
    op.kind = OpKind::Delete;
    let err = server
        .transaction(|tx| tx.replication().skip_remote(&[op.clone()]))
        .unwrap_err();
    assert!(
        matches!(err, blazedb_core::Error::InvalidOperation { .. }),
        "{err}"
    );
    assert_eq!(received_from(&server, &device), 0);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// One write of the device: on record `n % len` (or a new record), of `kind % 3`.
    type Write = (usize, u8, i64, bool);

    fn records(db: &Database, ids: &[Uuid]) -> Vec<Option<blazedb_core::Record>> {
        ids.iter().map(|id| db.get("bugs", *id).unwrap()).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(common::cases(32, 1_000)))]

        /// Whatever the server accepts or refuses of a device's writes, in any order, once the
        /// device has the server's operations both hold the same records.
        #[test]
        fn refusing_any_writes_converges(writes in proptest::collection::vec(
            (any::<usize>(), any::<u8>(), 0i64..3, any::<bool>()), 1..25,
        )) {
            let r = Refused::new();
            let mut ids = vec![r.id];
            for (n, kind, value, accept) in writes as Vec<Write> {
                let id = ids[n % ids.len()];
                let visible = r.device.get("bugs", id).unwrap().is_some();
                match (kind % 3, visible) {
                    (0, _) => ids.push(r.device.insert("bugs", fields! {"v" => value}).unwrap()),
                    (1, true) => r.device.update("bugs", id, fields! {"v" => value, "teamId" => "x"}).unwrap(),
                    (2, true) => r.device.delete("bugs", id).unwrap(),
                    _ => continue,
                }
                let op = common::all_ops(&r.device).pop().unwrap();
                r.server.transaction(|tx| {
                    let mut tx = tx.replication();
                    if accept {
                        tx.apply_remote(std::slice::from_ref(&op))?;
                    } else {
                        tx.skip_remote(std::slice::from_ref(&op))?;
                        tx.undo_refused(&op)?;
                    }
                    Ok(())
                }).unwrap();
            }
            r.device.replication().apply_remote(&common::all_ops(&r.server)).unwrap();
            prop_assert_eq!(records(&r.device, &ids), records(&r.server, &ids));
        }
    }
}

#[test]
fn a_checked_batch_applies_what_the_check_accepts_and_undoes_the_rest_in_one_transaction() {
    let r = Refused::new();
    r.device
        .update("bugs", r.id, fields! {"title" => "Crash on start"})
        .unwrap();
    r.device
        .update("bugs", r.id, fields! {"teamId" => "android"})
        .unwrap();
    let other = r
        .device
        .insert("bugs", fields! {"teamId" => "web"})
        .unwrap();
    let ops: Vec<_> = common::all_ops(&r.device)
        .into_iter()
        .rev()
        .take(3)
        .rev()
        .collect();
    // Refuse whatever leaves the record outside team ios; each check sees the state the
    // accepted operations before it left.
    let (report, refused) = r
        .server
        .transaction(|tx| {
            tx.replication().apply_remote_checked(
                &ops,
                |op, before| {
                    let mut after = before.cloned().unwrap_or_default();
                    after.apply(op);
                    match after.visible_field("teamId") {
                        Some(team) if *team == Value::from("ios") => Ok(()),
                        _ => Err(format!("{} leaves ios", op.id)),
                    }
                },
                |_| true,
            )
        })
        .unwrap();
    assert_eq!((report.applied, report.duplicates), (1, 0));
    assert_eq!(refused.iter().map(|r| r.index).collect::<Vec<_>>(), [1, 2]);
    let server_copy = r.server.get("bugs", r.id).unwrap().unwrap().fields;
    assert_eq!(server_copy.get("title"), Some(&"Crash on start".into()));
    assert_eq!(server_copy.get("teamId"), Some(&"ios".into()));
    assert_eq!(r.server.get("bugs", other).unwrap(), None);
    // The undoing operations bring the device back in step; the same batch again is all
    // duplicates, never checked again.
    let undos: Vec<_> = refused.iter().filter_map(|r| r.undo.clone()).collect();
    assert_eq!(undos.len(), 2);
    r.device.replication().apply_remote(&undos).unwrap();
    assert_eq!(
        r.device.get("bugs", r.id).unwrap(),
        r.server.get("bugs", r.id).unwrap()
    );
    assert_eq!(r.device.get("bugs", other).unwrap(), None);
    let (again, refused) = r
        .server
        .transaction(|tx| {
            tx.replication().apply_remote_checked(
                &ops,
                |_, _| Err::<(), _>("never asked"),
                |_| true,
            )
        })
        .unwrap();
    assert_eq!((again.applied, again.duplicates, refused.len()), (0, 3, 0));
}
