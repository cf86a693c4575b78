//! Op-log compaction and snapshots: a replica that cannot get the operations it lacks (a new
//! device, or a cursor before the compacted start) catches up from a snapshot of record states,
//! then from the operations after the snapshot's position.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_testkit as common;

use std::time::Duration;

use blazedb_core::{
    ChangeKind, ChangeOrigin, Database, Error, Filter, Operation, Record, SnapshotInfo,
    SnapshotRecord, Uuid, Value, fields,
};
use common::{all_ops, ops_after};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Every page of `from`'s snapshot, `page` records at a time.
fn snapshot_pages(from: &Database, page: usize) -> Vec<Vec<SnapshotRecord>> {
    let mut pages = Vec::new();
    let mut key = None;
    loop {
        let (records, next) = from
            .replication()
            .snapshot_page(key.as_ref(), page, usize::MAX)
            .unwrap();
        assert!(records.len() <= page);
        pages.push(records);
        match next {
            Some(k) => key = Some(k),
            None => return pages,
        }
    }
}

/// Sends `from`'s snapshot to `to` page by page, one transaction each; the last one also merges
/// the vector and sets the cursor, as a sync engine would.
fn send_snapshot(from: &Database, to: &Database, page: usize) -> SnapshotInfo {
    let info = from.replication().snapshot_info().unwrap();
    let pages = snapshot_pages(from, page);
    let last = pages.len() - 1;
    for (n, records) in pages.iter().enumerate() {
        to.transaction(|tx| {
            tx.replication().apply_snapshot(from.node_id(), records)?;
            if n == last {
                tx.replication().merge_version_vector(&info.vector)?;
                tx.replication()
                    .set_peer_cursor(from.node_id(), info.position)?;
            }
            Ok(())
        })
        .unwrap();
    }
    info
}

/// Every visible record of every collection.
fn contents(db: &Database) -> Vec<(String, Vec<Record>)> {
    db.collections()
        .unwrap()
        .into_iter()
        .map(|c| {
            let records = db.fetch_all(&c).unwrap();
            (c, records)
        })
        .filter(|(_, records)| !records.is_empty())
        .collect()
}

/// A database with inserts, updates and deletes in three collections, some merged from
/// another replica.
fn busy_database(db: &Database) {
    let other = Database::in_memory().unwrap();
    let theirs = other
        .insert_many("users", (0..6).map(|i| fields! {"name" => format!("u{i}")}))
        .unwrap();
    other
        .update("users", theirs[0], fields! {"admin" => true})
        .unwrap();
    db.replication().apply_remote(&all_ops(&other)).unwrap();
    let bugs = db
        .insert_many(
            "bugs",
            (0..12).map(
                |i| fields! {"n" => i, "status" => if i % 3 == 0 { "open" } else { "closed" }},
            ),
        )
        .unwrap();
    for id in &bugs[..4] {
        db.update("bugs", *id, fields! {"status" => "wontfix"})
            .unwrap();
    }
    db.delete("bugs", bugs[5]).unwrap();
    db.delete("bugs", bugs[6]).unwrap();
    let tags = db
        .insert_many("tags", (0..5).map(|i| fields! {"tag" => format!("t{i}")}))
        .unwrap();
    db.delete("tags", tags[1]).unwrap();
    db.update("users", theirs[1], fields! {"name" => "renamed"})
        .unwrap();
    db.delete("users", theirs[2]).unwrap();
}

#[test]
fn a_new_database_catches_up_from_a_snapshot_and_the_operations_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let a = Database::create(dir.path().join("a.blazedb"), "pw").unwrap();
    let b = Database::create(dir.path().join("b.blazedb"), "pw").unwrap();
    b.create_index("bugs", "status").unwrap();
    busy_database(&a);
    let covered = all_ops(&a);

    let info = send_snapshot(&a, &b, 7);
    assert_eq!(info.records, 23);
    assert_eq!(contents(&b), contents(&a));
    assert_eq!(
        b.replication().version_vector().unwrap(),
        a.replication().version_vector().unwrap()
    );
    assert_eq!(
        b.replication().peer_cursor(a.node_id()).unwrap(),
        info.position
    );
    assert_eq!(
        b.replication().oplog_head().unwrap(),
        0,
        "a snapshot is not operations"
    );
    assert!(b.replication().lamport() >= a.replication().lamport());

    // The server drops what the snapshot covers; later writes come as operations.
    a.replication().compact_oplog(info.position).unwrap();
    assert!(matches!(
        a.replication().oplog_since(0, 100),
        Err(Error::OplogCompacted { .. })
    ));
    let id = a
        .insert("bugs", fields! {"n" => 99, "status" => "open"})
        .unwrap();
    let first = a.fetch_all("bugs").unwrap()[0].id;
    a.update("bugs", first, fields! {"status" => "open"})
        .unwrap();
    a.delete("tags", a.fetch_all("tags").unwrap()[0].id)
        .unwrap();
    let later = ops_after(&a, info.position);
    assert_eq!(later.len(), 3);
    let report = b.replication().apply_remote(&later).unwrap();
    assert_eq!((report.applied, report.duplicates), (3, 0));
    let report = b.replication().apply_remote(&covered).unwrap();
    assert_eq!((report.applied, report.duplicates), (0, covered.len()));

    assert_eq!(contents(&b), contents(&a));
    assert_eq!(b.content_hash().unwrap(), a.content_hash().unwrap());
    assert_eq!(
        b.replication().version_vector().unwrap(),
        a.replication().version_vector().unwrap()
    );
    let open = b.query("bugs").filter(Filter::eq("status", "open"));
    assert!(open.explain().unwrap().uses_index());
    let expected = a
        .query("bugs")
        .filter(Filter::eq("status", "open"))
        .run()
        .unwrap();
    assert_eq!(open.run().unwrap(), expected);
    assert!(expected.iter().any(|r| r.id == id));
    assert_eq!(b.count("bugs").unwrap(), a.count("bugs").unwrap());
    assert_eq!(b.count("tags").unwrap(), a.count("tags").unwrap());

    // The receiver's clock is past everything it received: its next write wins.
    let newest = a.fetch_all("bugs").unwrap()[1].id;
    b.update("bugs", newest, fields! {"status" => "b"}).unwrap();
    a.replication().apply_remote(&all_ops(&b)).unwrap();
    assert_eq!(
        a.get("bugs", newest).unwrap().unwrap().get("status"),
        Some(&Value::from("b"))
    );
}

#[test]
fn a_snapshot_merges_field_by_field_with_concurrent_local_edits() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    let shared = a.insert("t", fields! {"x" => 0, "y" => 0}).unwrap();
    let doomed = a.insert("t", fields! {"x" => 0}).unwrap();
    let revived = a.insert("t", fields! {"x" => 0}).unwrap();
    b.replication().apply_remote(&all_ops(&a)).unwrap();
    // Concurrent edits, stamps 4..=7 on each side.
    a.update("t", shared, fields! {"x" => 1}).unwrap();
    a.update("t", doomed, fields! {"x" => 1}).unwrap();
    a.delete("t", revived).unwrap();
    a.insert_with_id("t", revived, fields! {"z" => 1}).unwrap();
    // b's update of `revived` is older than a's re-insert (lamport 4 < 7) whatever the node ids.
    b.update("t", revived, fields! {"x" => 2}).unwrap();
    b.update("t", shared, fields! {"y" => 2}).unwrap();
    b.update("t", shared, fields! {"x" => 2}).unwrap();
    b.delete("t", doomed).unwrap();
    b.insert("t", fields! {"only" => "b"}).unwrap();

    let expected = Database::in_memory().unwrap();
    expected.replication().apply_remote(&all_ops(&a)).unwrap();
    expected.replication().apply_remote(&all_ops(&b)).unwrap();
    send_snapshot(&a, &b, 2);
    assert_eq!(contents(&b), contents(&expected));
    assert_eq!(
        b.get("t", shared).unwrap().unwrap().fields,
        fields! {"x" => 2, "y" => 2}
    );
    assert_eq!(b.get("t", doomed).unwrap(), None, "delete wins");
    assert_eq!(
        b.get("t", revived).unwrap().unwrap().fields,
        fields! {"z" => 1},
        "the re-insert shows only its own fields"
    );
    // And the other way round: a joins b's snapshot into its own edits.
    send_snapshot(&b, &a, 3);
    assert_eq!(contents(&a), contents(&expected));
}

#[test]
fn applying_the_same_snapshot_twice_changes_nothing() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    busy_database(&a);
    let records: Vec<SnapshotRecord> = snapshot_pages(&a, 100).concat();
    let sub = b.subscribe("bugs");

    let first = b
        .transaction(|tx| tx.replication().apply_snapshot(a.node_id(), &records))
        .unwrap();
    assert_eq!((first.applied, first.unchanged), (records.len(), 0));
    let commit = sub.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(commit.changes.len(), 10, "one per visible bug");
    assert!(
        commit.changes.iter().all(
            |c| c.kind == ChangeKind::Inserted && c.origin == ChangeOrigin::Remote(a.node_id())
        )
    );
    let hash = b.content_hash().unwrap();
    let lamport = b.replication().lamport();

    let second = b
        .transaction(|tx| tx.replication().apply_snapshot(a.node_id(), &records))
        .unwrap();
    assert_eq!((second.applied, second.unchanged), (0, records.len()));
    assert!(sub.try_recv().is_none(), "nothing to tell watchers");
    assert_eq!(b.content_hash().unwrap(), hash);
    assert_eq!(b.replication().lamport(), lamport);
    assert_eq!(b.replication().oplog_head().unwrap(), 0);
}

#[test]
fn a_snapshot_that_deletes_a_record_tells_watchers_and_counts() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    let id = a.insert("t", fields! {"x" => 1}).unwrap();
    b.replication().apply_remote(&all_ops(&a)).unwrap();
    a.delete("t", id).unwrap();
    let sub = b.subscribe_all();
    send_snapshot(&a, &b, 10);
    let commit = sub.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(commit.changes.len(), 1);
    assert_eq!(commit.changes[0].kind, ChangeKind::Deleted);
    assert_eq!(b.count("t").unwrap(), 0);
    assert_eq!(b.get("t", id).unwrap(), None);
}

#[test]
fn an_invalid_snapshot_record_is_refused_whole() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    a.insert_many("t", (0..3).map(|i| fields! {"x" => i}))
        .unwrap();
    let mut records = snapshot_pages(&a, 10).concat();
    let mut bad = records[0].clone();
    bad.id = Uuid::from_u128(1);
    bad.state.fields.insert(
        "id".into(),
        bad.state.fields.values().next().unwrap().clone(),
    );
    records.push(bad);
    let err = b
        .transaction(|tx| tx.replication().apply_snapshot(a.node_id(), &records))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSnapshot { .. }), "{err}");
    assert!(
        err.to_string().contains("reserved for the record id"),
        "{err}"
    );
    assert_eq!(b.count("t").unwrap(), 0);

    let mut nameless = records[0].clone();
    nameless.collection = String::new();
    let err = b
        .transaction(|tx| tx.replication().apply_snapshot(a.node_id(), &[nameless]))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSnapshot { .. }), "{err}");
}

#[test]
fn operations_covered_by_a_merged_vector_are_duplicates_in_the_same_transaction() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    for i in 0..4 {
        a.insert("t", fields! {"x" => i}).unwrap();
    }
    let ops = all_ops(&a);
    let info = a.replication().snapshot_info().unwrap();
    let records = snapshot_pages(&a, 10).concat();
    let report = b
        .transaction(|tx| {
            tx.replication().apply_snapshot(a.node_id(), &records)?;
            tx.replication().merge_version_vector(&info.vector)?;
            tx.replication().apply_remote(&ops)
        })
        .unwrap();
    assert_eq!((report.applied, report.duplicates), (0, 4));
    assert_eq!(b.replication().oplog_head().unwrap(), 0);
}

#[test]
fn merging_a_vector_absorbs_operations_waiting_beyond_a_gap() {
    let a = Database::in_memory().unwrap();
    let b = Database::in_memory().unwrap();
    for i in 0..6 {
        a.insert("t", fields! {"x" => i}).unwrap();
    }
    let ops = all_ops(&a);
    // 4 and 6 arrive early and wait beyond the gap at 1.
    b.replication()
        .apply_remote(&[ops[3].clone(), ops[5].clone()])
        .unwrap();
    assert_eq!(
        b.replication().version_vector().unwrap().get(a.node_id()),
        0
    );
    let vector = [(a.node_id(), 3)].into_iter().collect();
    b.transaction(|tx| tx.replication().merge_version_vector(&vector))
        .unwrap();
    assert_eq!(
        b.replication().version_vector().unwrap().get(a.node_id()),
        4
    );
    let report = b.replication().apply_remote(&ops).unwrap();
    assert_eq!((report.applied, report.duplicates), (1, 5), "only 5 is new");
    assert_eq!(
        b.replication().version_vector().unwrap().get(a.node_id()),
        6
    );
    // A smaller vector lowers nothing.
    b.transaction(|tx| tx.replication().merge_version_vector(&vector))
        .unwrap();
    assert_eq!(
        b.replication().version_vector().unwrap().get(a.node_id()),
        6
    );
}

#[test]
fn a_restored_backup_does_not_reuse_sequence_numbers_a_snapshot_covers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    let backup = dir.path().join("backup.blazedb");
    let server = Database::in_memory().unwrap();
    let a = Database::create(&path, "pw").unwrap();
    a.insert("t", fields! {"x" => 1}).unwrap();
    drop(a);
    std::fs::copy(&path, &backup).unwrap();
    assert!(
        !dir.path().join("a.blazedb-wal").exists(),
        "closing checkpoints the WAL"
    );
    let a = Database::open(&path, "pw").unwrap();
    a.insert("t", fields! {"x" => 2}).unwrap();
    a.insert("t", fields! {"x" => 3}).unwrap();
    server.replication().apply_remote(&all_ops(&a)).unwrap();
    drop(a);

    let restored = Database::open(&backup, "pw").unwrap();
    send_snapshot(&server, &restored, 10);
    assert_eq!(restored.count("t").unwrap(), 3);
    assert_eq!(
        restored
            .replication()
            .version_vector()
            .unwrap()
            .get(restored.node_id()),
        3
    );
    restored.insert("t", fields! {"x" => 4}).unwrap();
    let mine: Vec<Operation> = all_ops(&restored);
    assert_eq!(mine.last().unwrap().id.seq, 4);
    assert_eq!(server.replication().apply_remote(&mine).unwrap().applied, 1);
    drop(restored);
    // The raised sequence number is stored, not just cached.
    let restored = Database::open(&backup, "pw").unwrap();
    assert_eq!(
        restored
            .replication()
            .version_vector()
            .unwrap()
            .get(restored.node_id()),
        4
    );
}

#[test]
fn the_compacted_start_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.blazedb");
    let a = Database::create(&path, "pw").unwrap();
    for i in 0..4 {
        a.insert("t", fields! {"x" => i}).unwrap();
    }
    assert_eq!(a.replication().compact_oplog(u64::MAX).unwrap(), 4);
    drop(a);
    let a = Database::open(&path, "pw").unwrap();
    assert_eq!(a.replication().oplog_start().unwrap(), 4);
    assert_eq!(a.replication().oplog_head().unwrap(), 4);
    assert_eq!(a.replication().oplog_ops_through(u64::MAX).unwrap(), 4);
    a.insert("t", fields! {"x" => 4}).unwrap();
    assert_eq!(a.replication().oplog_head().unwrap(), 5);
    assert_eq!(ops_after(&a, 4).len(), 1);
    assert!(matches!(
        a.replication().oplog_since(3, 10),
        Err(Error::OplogCompacted { after: 3, start: 4 })
    ));
    assert_eq!(a.count("t").unwrap(), 5);
}

// ---------------------------------------------------------------------------------------------
// Property: snapshot + later operations == all operations
// ---------------------------------------------------------------------------------------------

fn random_fields(rng: &mut StdRng) -> blazedb_core::Fields {
    let mut f = blazedb_core::Fields::new();
    for name in ["a", "b", "c"] {
        if rng.random_bool(0.5) {
            f.insert(name.into(), Value::Int(rng.random_range(0..4)));
        }
    }
    f
}

/// Operations on a few shared records from three writers that sync now and then, so that
/// histories have concurrent updates, deletes and re-inserts.
fn random_history(rng: &mut StdRng, steps: usize) -> Vec<Operation> {
    let writers: Vec<Database> = (0..3).map(|_| Database::in_memory().unwrap()).collect();
    let ids: Vec<Uuid> = (1..=5).map(Uuid::from_u128).collect();
    for _ in 0..steps {
        let db = &writers[rng.random_range(0..writers.len())];
        let coll = ["t", "u"][rng.random_range(0..2)];
        let id = ids[rng.random_range(0..ids.len())];
        let outcome = match rng.random_range(0..10) {
            0..=2 => db.insert_with_id(coll, id, random_fields(rng)),
            3..=6 => db.update(coll, id, random_fields(rng)),
            7 => db.delete(coll, id),
            _ => {
                let from = &writers[rng.random_range(0..writers.len())];
                db.replication().apply_remote(&all_ops(from)).map(|_| ())
            }
        };
        match outcome {
            Ok(()) | Err(Error::RecordExists { .. } | Error::RecordNotFound { .. }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    writers.iter().flat_map(all_ops).collect()
}

/// Applies `ops` in random chunks.
fn apply_in_chunks(db: &Database, ops: &[Operation], rng: &mut StdRng) {
    let mut rest = ops;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len());
        let (chunk, tail) = rest.split_at(n);
        db.replication().apply_remote(chunk).unwrap();
        rest = tail;
    }
}

fn snapshot_then_operations(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut ops = random_history(&mut rng, steps);
    ops.shuffle(&mut rng);
    let split = rng.random_range(0..=ops.len());
    let (part1, part2) = ops.split_at(split);

    let a = Database::in_memory().unwrap();
    apply_in_chunks(&a, part1, &mut rng);
    if rng.random_bool(0.3) {
        a.insert("u", fields! {"local" => 1}).unwrap();
    }
    let info = a.replication().snapshot_info().unwrap();
    let b = Database::in_memory().unwrap();
    if rng.random_bool(0.3) {
        b.create_index("t", "a").unwrap();
    }
    // Part 2 reaches `a` while the pages are read: pages may be newer than the position.
    let page = rng.random_range(1..=8);
    let mut pending = part2;
    let mut key = None;
    loop {
        if !pending.is_empty() && rng.random_bool(0.3) {
            let n = rng.random_range(1..=pending.len());
            a.replication().apply_remote(&pending[..n]).unwrap();
            pending = &pending[n..];
        }
        let (records, next) = a
            .replication()
            .snapshot_page(key.as_ref(), page, usize::MAX)
            .unwrap();
        b.transaction(|tx| {
            tx.replication().apply_snapshot(a.node_id(), &records)?;
            if next.is_none() {
                tx.replication().merge_version_vector(&info.vector)?;
                tx.replication()
                    .set_peer_cursor(a.node_id(), info.position)?;
            }
            Ok(())
        })
        .unwrap();
        match next {
            Some(k) => key = Some(k),
            None => break,
        }
    }
    apply_in_chunks(&a, pending, &mut rng);
    let everything = all_ops(&a);
    if rng.random_bool(0.5) {
        a.replication().compact_oplog(info.position).unwrap();
    }
    let later = ops_after(&a, b.replication().peer_cursor(a.node_id()).unwrap());
    apply_in_chunks(&b, &later, &mut rng);

    let c = Database::in_memory().unwrap();
    c.replication().apply_remote(&everything).unwrap();
    assert_eq!(contents(&b), contents(&c), "seed {seed}");
    assert_eq!(contents(&a), contents(&c), "seed {seed}");
    assert_eq!(b.content_hash().unwrap(), c.content_hash().unwrap());
    for coll in ["t", "u"] {
        assert_eq!(b.count(coll).unwrap(), c.count(coll).unwrap());
    }
    if b.indexes("t").unwrap().len() == 1 {
        for v in 0..4 {
            let q = |db: &Database| db.query("t").filter(Filter::eq("a", v)).run().unwrap();
            assert_eq!(q(&b), q(&c), "seed {seed}");
        }
    }
    // Everything b holds, it knows it holds: nothing more than c.
    let (vb, vc) = (
        b.replication().version_vector().unwrap(),
        c.replication().version_vector().unwrap(),
    );
    for (origin, seq) in vb.iter() {
        assert!(seq <= vc.get(origin), "seed {seed}: {vb:?} vs {vc:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(64, 2000)))]

    #[test]
    fn a_snapshot_then_the_later_operations_give_the_records_all_operations_give(
        seed in any::<u64>(),
        steps in 1usize..50,
    ) {
        snapshot_then_operations(seed, steps);
    }
}

#[test]
fn absurd_clocks_from_a_peer_are_refused_and_the_file_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.blazedb");
    let a = Database::in_memory().unwrap();
    a.insert("t", fields! {"x" => 1}).unwrap();
    let b = Database::create(&path, "pw").unwrap();

    let mut op = all_ops(&a).remove(0);
    op.lamport = u64::MAX;
    let err = b
        .replication()
        .apply_remote(std::slice::from_ref(&op))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOperation { .. }), "{err}");
    assert!(err.to_string().contains("2^62"), "{err}");
    op.lamport = 5;
    op.id.seq = 1 << 63;
    assert!(b.replication().apply_remote(&[op]).is_err());

    let mut records = snapshot_pages(&a, 10).concat();
    for field in records[0].state.fields.values_mut() {
        field.stamp.lamport = u64::MAX - 1;
    }
    let err = b
        .transaction(|tx| tx.replication().apply_snapshot(a.node_id(), &records))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSnapshot { .. }), "{err}");
    let mut vector = a.replication().version_vector().unwrap();
    vector.observe(a.node_id(), u64::MAX);
    let err = b
        .transaction(|tx| tx.replication().merge_version_vector(&vector))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidSnapshot { .. }), "{err}");

    drop(b);
    let b = Database::open(&path, "pw").unwrap();
    assert_eq!(b.count("t").unwrap(), 0);
    assert!(b.replication().lamport() < 1 << 62);
}
