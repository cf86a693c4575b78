//! A database file copied to a second machine: both copies write under one node id. Replicas
//! detect it by the operations' digests, and `reidentify` gives the copy a new identity with
//! nothing lost.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_core::{Database, Error, OpId, Value, fields};

use blazedb_testkit as common;

use common::all_ops;

/// `laptop.db` with one record, closed, and copied to `desktop.db`.
fn laptop_and_copy(dir: &std::path::Path) -> (Database, Database) {
    let laptop = dir.join("laptop.db");
    let desktop = dir.join("desktop.db");
    let db = Database::create(&laptop, "pw").unwrap();
    db.insert_with_id("notes", uuid(1), fields! {"text" => "before the copy"})
        .unwrap();
    drop(db);
    std::fs::copy(&laptop, &desktop).unwrap();
    (
        Database::open(&laptop, "pw").unwrap(),
        Database::open(&desktop, "pw").unwrap(),
    )
}

fn uuid(n: u128) -> blazedb_core::Uuid {
    blazedb_core::Uuid::from_u128(n)
}

/// Applies each database's whole op log to the other, until neither changes.
fn exchange(a: &Database, b: &Database) -> Result<(), Error> {
    for _ in 0..3 {
        b.replication().apply_remote(&all_ops(a))?;
        a.replication().apply_remote(&all_ops(b))?;
    }
    Ok(())
}

#[test]
fn an_operation_that_differs_under_the_same_id_is_refused_as_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let (laptop, desktop) = laptop_and_copy(dir.path());
    assert_eq!(laptop.node_id(), desktop.node_id());
    laptop
        .insert("notes", fields! {"text" => "laptop"})
        .unwrap();
    desktop
        .insert("notes", fields! {"text" => "desktop"})
        .unwrap();

    let server = Database::in_memory().unwrap();
    server
        .replication()
        .apply_remote(&all_ops(&laptop))
        .unwrap();
    let before = server.content_hash().unwrap();
    let err = server
        .replication()
        .apply_remote(&all_ops(&desktop))
        .unwrap_err();
    let Error::CopiedDatabase { op } = &err else {
        panic!("not a copy error: {err}");
    };
    assert_eq!(
        *op,
        OpId {
            origin: desktop.node_id(),
            seq: 2
        }
    );
    assert!(err.to_string().contains("copy"), "{err}");
    assert!(err.to_string().contains("blazedb reidentify"), "{err}");
    // Nothing of the refused batch was kept.
    assert_eq!(server.content_hash().unwrap(), before);

    // The copy itself refuses the other file's operation under its own id.
    let err = desktop
        .replication()
        .apply_remote(&all_ops(&laptop))
        .unwrap_err();
    assert!(matches!(err, Error::CopiedDatabase { .. }), "{err}");
}

#[test]
fn the_same_operation_again_is_a_plain_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let (laptop, desktop) = laptop_and_copy(dir.path());
    let server = Database::in_memory().unwrap();
    server
        .replication()
        .apply_remote(&all_ops(&laptop))
        .unwrap();
    // The copy has not written: its operations are the laptop's.
    let report = server
        .replication()
        .apply_remote(&all_ops(&desktop))
        .unwrap();
    assert_eq!((report.applied, report.duplicates), (0, 1));
    let id = OpId {
        origin: laptop.node_id(),
        seq: 1,
    };
    assert_eq!(
        server.replication().op_digest(id).unwrap(),
        laptop.replication().op_digest(id).unwrap()
    );
    assert_eq!(
        server.replication().op_digest(id).unwrap().unwrap(),
        all_ops(&laptop)[0].digest()
    );
}

#[test]
fn reidentify_renames_the_unconfirmed_writes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (laptop, desktop) = laptop_and_copy(dir.path());
    let server = Database::in_memory().unwrap();
    server
        .replication()
        .apply_remote(&all_ops(&laptop))
        .unwrap();
    // The server confirmed operation 1 (before the copy, through the file both share).
    laptop.replication().confirm_own(1).unwrap();
    desktop.replication().confirm_own(1).unwrap();
    // A confirmation past what this file issued means nothing.
    desktop.replication().confirm_own(99).unwrap();
    assert_eq!(desktop.replication().own_confirmed().unwrap(), 1);

    laptop
        .insert("notes", fields! {"text" => "laptop"})
        .unwrap();
    laptop
        .update("notes", uuid(1), fields! {"by" => "laptop"})
        .unwrap();
    desktop
        .insert_with_id("notes", uuid(2), fields! {"text" => "desktop"})
        .unwrap();
    desktop
        .update(
            "notes",
            uuid(1),
            fields! {"text" => "edited on the desktop"},
        )
        .unwrap();
    desktop.delete("notes", uuid(2)).unwrap();
    desktop
        .insert_with_id("notes", uuid(3), fields! {"text" => "kept"})
        .unwrap();
    server
        .replication()
        .apply_remote(&all_ops(&laptop))
        .unwrap();
    assert!(matches!(
        server.replication().apply_remote(&all_ops(&desktop)),
        Err(Error::CopiedDatabase { .. })
    ));

    let old = desktop.node_id();
    let done = desktop.reidentify().unwrap();
    assert_eq!(done.old, old);
    assert_ne!(done.new, old);
    assert_eq!((done.confirmed, done.renamed), (1, 4));
    assert_eq!(done.restamped, 3);
    let desktop = Database::open(dir.path().join("desktop.db"), "pw").unwrap();
    assert_eq!(desktop.node_id(), done.new);
    assert_eq!(desktop.replication().version_vector().unwrap().get(old), 1);
    assert_eq!(
        desktop
            .replication()
            .version_vector()
            .unwrap()
            .get(done.new),
        4
    );
    // Every operation of the op log after the confirmed one is the new node's now.
    let ops = all_ops(&desktop);
    assert_eq!(
        ops[0].id,
        OpId {
            origin: old,
            seq: 1
        }
    );
    for (n, op) in ops[1..].iter().enumerate() {
        assert_eq!(
            op.id,
            OpId {
                origin: done.new,
                seq: n as u64 + 1
            }
        );
    }
    // New writes continue after the renamed ones.
    desktop
        .insert("notes", fields! {"text" => "after"})
        .unwrap();
    assert_eq!(all_ops(&desktop).last().unwrap().id.seq, 5);

    exchange(&server, &desktop).unwrap();
    exchange(&server, &laptop).unwrap();
    exchange(&server, &desktop).unwrap();
    assert_eq!(
        desktop.content_hash().unwrap(),
        server.content_hash().unwrap()
    );
    assert_eq!(
        laptop.content_hash().unwrap(),
        server.content_hash().unwrap()
    );
    // Every write of both files is there.
    let note = laptop.get("notes", uuid(1)).unwrap().unwrap();
    assert_eq!(note.fields["by"], Value::from("laptop"));
    assert_eq!(note.fields["text"], Value::from("edited on the desktop"));
    assert!(laptop.get("notes", uuid(2)).unwrap().is_none());
    assert_eq!(
        laptop.get("notes", uuid(3)).unwrap().unwrap().fields["text"],
        Value::from("kept")
    );
    // uuid 1, the laptop's insert, uuid 3 and the one after the repair (uuid 2 was deleted).
    assert_eq!(laptop.count("notes").unwrap(), 4);
}

#[test]
fn reidentify_needs_the_only_handle() {
    let db = Database::in_memory().unwrap();
    db.insert("t", fields! {"x" => 1}).unwrap();
    let other = db.clone();
    let node = db.node_id();
    let err = db.reidentify().unwrap_err();
    assert!(matches!(err, Error::HandlesOpen(_)), "{err}");
    // Nothing changed.
    assert_eq!(other.node_id(), node);
    assert_eq!(all_ops(&other)[0].id.origin, node);
}

#[test]
fn every_operation_has_its_digest_here_and_at_a_replica_until_it_is_compacted() {
    let a = Database::in_memory().unwrap();
    for n in 0..3 {
        a.insert("t", fields! {"n" => n}).unwrap();
    }
    // More than one op-log entry holds one transaction (1,024 operations each).
    a.insert_many("t", (0..1500).map(|n| fields! {"bulk" => n}))
        .unwrap();
    a.insert("t", fields! {"n" => 3}).unwrap();
    let ops = all_ops(&a);
    assert_eq!(ops.len(), 1504);
    let b = Database::in_memory().unwrap();
    // Out of order and in pieces: runs of consecutive sequence numbers per transaction.
    let (early, late) = ops.split_at(700);
    b.replication().apply_remote(late).unwrap();
    b.replication().apply_remote(early).unwrap();
    b.replication().apply_remote(&ops).unwrap();
    // One at a time, and in batches of 7: the newest digests of an origin move on as they fill.
    let c = Database::in_memory().unwrap();
    for op in &ops[..100] {
        c.replication()
            .apply_remote(std::slice::from_ref(op))
            .unwrap();
    }
    for batch in ops[100..].chunks(7) {
        c.replication().apply_remote(batch).unwrap();
    }
    for op in &ops {
        assert_eq!(
            a.replication().op_digest(op.id).unwrap(),
            Some(op.digest()),
            "{}",
            op.id
        );
        assert_eq!(
            b.replication().op_digest(op.id).unwrap(),
            Some(op.digest()),
            "{}",
            op.id
        );
        assert_eq!(
            c.replication().op_digest(op.id).unwrap(),
            Some(op.digest()),
            "{}",
            op.id
        );
    }
    let missing = OpId {
        origin: a.node_id(),
        seq: 1505,
    };
    assert_eq!(a.replication().op_digest(missing).unwrap(), None);
    assert_eq!(b.replication().op_digest(missing).unwrap(), None);
    // Compacted away: nothing to compare any more.
    a.replication().compact_oplog(2).unwrap();
    assert_eq!(a.replication().op_digest(ops[0].id).unwrap(), None);
    assert_eq!(
        a.replication().op_digest(ops[2].id).unwrap(),
        Some(ops[2].digest())
    );
}
