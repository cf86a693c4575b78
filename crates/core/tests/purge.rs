//! Purging: a record leaves this replica without an op-log entry or tombstone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_testkit as common;

use blazedb_core::{ChangeKind, ChangeOrigin, Database, Filter, PurgeReason, fields};

fn db() -> Database {
    Database::in_memory().unwrap()
}

#[test]
fn a_purged_record_is_gone_with_its_index_entries_and_count() {
    let db = db();
    db.ensure_index("bugs", "teamId").unwrap();
    let ios = db
        .insert("bugs", fields! {"title" => "Crash", "teamId" => "ios"})
        .unwrap();
    db.insert("bugs", fields! {"title" => "Lag", "teamId" => "android"})
        .unwrap();
    let purged = db
        .replication()
        .purge("bugs", &[ios], PurgeReason::AccessChanged)
        .unwrap();
    assert_eq!(purged, 1);
    assert_eq!(db.get("bugs", ios).unwrap(), None);
    let by_index = db
        .query("bugs")
        .filter(Filter::eq("teamId", "ios"))
        .run()
        .unwrap();
    assert!(by_index.is_empty());
    assert_eq!(db.query("bugs").count().unwrap(), 1);
    assert_eq!(db.count("bugs").unwrap(), 1);
}

#[test]
fn a_purge_writes_nothing_to_sync_and_leaves_the_version_vector() {
    let db = db();
    let id = db.insert("bugs", fields! {"title" => "Crash"}).unwrap();
    let head = db.replication().oplog_head().unwrap();
    let vector = db.replication().version_vector().unwrap();
    db.replication()
        .purge("bugs", &[id], PurgeReason::RecordChanged)
        .unwrap();
    assert_eq!(db.replication().oplog_head().unwrap(), head);
    assert_eq!(db.replication().version_vector().unwrap(), vector);
    // No tombstone: the record's state is gone, not deleted.
    let (page, _) = db
        .replication()
        .snapshot_page(None, 100, usize::MAX)
        .unwrap();
    assert!(page.is_empty(), "{page:?}");
}

#[test]
fn watchers_learn_which_record_was_purged_and_why() {
    let db = db();
    let id = db.insert("bugs", fields! {"title" => "Crash"}).unwrap();
    let sub = db.subscribe("bugs");
    db.replication()
        .purge("bugs", &[id], PurgeReason::PolicyChanged)
        .unwrap();
    let change = common::only_change(&sub);
    assert_eq!(change.id, id);
    assert_eq!(change.kind, ChangeKind::Purged(PurgeReason::PolicyChanged));
    assert_eq!(change.origin, ChangeOrigin::Local);
}

#[test]
fn purging_what_is_not_there_changes_nothing() {
    let db = db();
    let id = db.insert("bugs", fields! {"title" => "Crash"}).unwrap();
    let missing = blazedb_core::Uuid::from_u128(7);
    let r = db.replication();
    assert_eq!(
        r.purge("bugs", &[missing], PurgeReason::AccessChanged)
            .unwrap(),
        0
    );
    assert_eq!(
        r.purge("nothing", &[id], PurgeReason::AccessChanged)
            .unwrap(),
        0
    );
    assert!(db.get("bugs", id).unwrap().is_some());
}

#[test]
fn a_tombstone_can_be_purged_too() {
    let db = db();
    let id = db.insert("bugs", fields! {"title" => "Crash"}).unwrap();
    db.delete("bugs", id).unwrap();
    assert_eq!(
        db.replication()
            .purge("bugs", &[id], PurgeReason::DeviceRevoked)
            .unwrap(),
        1
    );
    let (page, _) = db
        .replication()
        .snapshot_page(None, 100, usize::MAX)
        .unwrap();
    assert!(page.is_empty());
    assert_eq!(db.count("bugs").unwrap(), 0);
}

#[test]
fn a_purged_record_that_comes_back_is_joined_from_its_full_state() {
    let a = db();
    let b = db();
    let id = a
        .insert("bugs", fields! {"title" => "Crash", "teamId" => "ios"})
        .unwrap();
    b.replication().apply_remote(&common::all_ops(&a)).unwrap();
    b.replication()
        .purge("bugs", &[id], PurgeReason::AccessChanged)
        .unwrap();
    a.update("bugs", id, fields! {"title" => "Crash on launch"})
        .unwrap();
    // Back in scope: the full current state arrives, as a snapshot record.
    let (page, _) = a
        .replication()
        .snapshot_page(None, 100, usize::MAX)
        .unwrap();
    b.transaction(|tx| tx.replication().apply_snapshot(a.node_id(), &page))
        .unwrap();
    assert_eq!(b.get("bugs", id).unwrap(), a.get("bugs", id).unwrap());
}

#[test]
fn a_purge_in_a_transaction_that_fails_is_undone() {
    let db = db();
    let id = db.insert("bugs", fields! {"title" => "Crash"}).unwrap();
    let result: Result<(), blazedb_core::Error> = db.transaction(|tx| {
        tx.replication()
            .purge("bugs", id, PurgeReason::AccessChanged)?;
        Err(blazedb_core::Error::TransactionAborted("on purpose".into()))
    });
    assert!(result.is_err());
    assert!(db.get("bugs", id).unwrap().is_some());
    assert_eq!(db.count("bugs").unwrap(), 1);
}

mod props {
    use super::*;
    use blazedb_core::{Uuid, Value};
    use proptest::prelude::*;

    /// The records of `db`, visible ones, sorted by id.
    fn records(db: &Database) -> Vec<(Uuid, blazedb_core::Fields)> {
        let mut all: Vec<_> = db
            .query("bugs")
            .run()
            .unwrap()
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Purging any subset and joining those records' full states again gives back the
        /// same replica: purge loses nothing that the scope's owner cannot restore.
        #[test]
        fn purged_records_joined_again_converge(
            edits in proptest::collection::vec((0usize..6, 0i64..4, any::<bool>()), 1..30),
            purge in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let a = db();
            let b = db();
            a.ensure_index("bugs", "team").unwrap();
            b.ensure_index("bugs", "team").unwrap();
            let ids: Vec<Uuid> = (0..6)
                .map(|n| a.insert("bugs", fields! {"n" => n as i64, "team" => 0i64}).unwrap())
                .collect();
            for (n, team, delete) in edits {
                if a.get("bugs", ids[n]).unwrap().is_none() {
                    continue;
                }
                if delete {
                    a.delete("bugs", ids[n]).unwrap();
                } else {
                    a.update("bugs", ids[n], fields! {"team" => Value::Int(team)}).unwrap();
                }
            }
            b.replication().apply_remote(&common::all_ops(&a)).unwrap();
            let gone: Vec<Uuid> = ids.iter().zip(&purge).filter(|(_, p)| **p).map(|(id, _)| *id).collect();
            b.replication().purge("bugs", &gone, PurgeReason::AccessChanged).unwrap();
            for id in &gone {
                prop_assert_eq!(b.get("bugs", *id).unwrap(), None);
            }
            let (page, _) = a.replication().snapshot_page(None, 100, usize::MAX).unwrap();
            let back: Vec<_> = page.into_iter().filter(|r| gone.contains(&r.id)).collect();
            b.transaction(|tx| tx.replication().apply_snapshot(a.node_id(), &back)).unwrap();
            prop_assert_eq!(records(&a), records(&b));
            prop_assert_eq!(a.count("bugs").unwrap(), b.count("bugs").unwrap());
            for team in 0..4i64 {
                let by = |db: &Database| db.query("bugs").filter(Filter::eq("team", team)).count().unwrap();
                prop_assert_eq!(by(&a), by(&b));
            }
        }
    }
}
