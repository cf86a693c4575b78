//! Records, transactions, the op log, change notifications and joins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use blazedb_testkit as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blazedb_core::{
    ChangeKind, ChangeOrigin, Database, Date, Direction, Error, Filter, JoinKind, OpKind, Uuid,
    Value, fields,
};

fn db() -> Database {
    Database::in_memory().unwrap()
}

#[test]
fn every_value_type_is_stored_and_read_back() {
    let db = db();
    let f = fields! {
        "null" => Value::Null, "bool" => true, "int" => -42i64, "double" => 2.5,
        "string" => "héllo", "uuid" => Uuid::from_u128(7), "date" => Date::from_unix_millis(1_700_000_000_123),
        "bytes" => vec![0u8, 1, 255],
        "array" => vec![Value::Int(1), Value::from("two")],
        "map" => fields! {"nested" => fields! {"deep" => 1}},
    };
    let id = db.insert("all", f.clone()).unwrap();
    assert_eq!(db.get("all", id).unwrap().unwrap().fields, f);
}

#[test]
fn update_changes_only_the_named_fields_and_logs_only_changed_ones() {
    let db = db();
    let id = db
        .insert("bugs", fields! {"title" => "Crash", "status" => "open"})
        .unwrap();
    db.update(
        "bugs",
        id,
        fields! {"status" => "closed", "title" => "Crash"},
    )
    .unwrap();
    let r = db.get("bugs", id).unwrap().unwrap();
    assert_eq!(r.fields, fields! {"title" => "Crash", "status" => "closed"});
    let ops = db.replication().oplog_since(0, 10).unwrap();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[1].1.kind, OpKind::Update);
    assert_eq!(ops[1].1.fields, fields! {"status" => "closed"});
    // An update that changes nothing writes nothing.
    db.update("bugs", id, fields! {"status" => "closed"})
        .unwrap();
    assert_eq!(db.replication().oplog_since(0, 10).unwrap().len(), 2);
}

#[test]
fn delete_removes_the_record_and_logs_a_delete() {
    let db = db();
    let id = db.insert("bugs", fields! {"t" => 1}).unwrap();
    db.delete("bugs", id).unwrap();
    assert_eq!(db.get("bugs", id).unwrap(), None);
    assert_eq!(db.count("bugs").unwrap(), 0);
    assert!(db.fetch_all("bugs").unwrap().is_empty());
    assert!(matches!(
        db.delete("bugs", id),
        Err(Error::RecordNotFound { .. })
    ));
    assert!(matches!(
        db.update("bugs", id, fields! {"t" => 2}),
        Err(Error::RecordNotFound { .. })
    ));
    let ops = db.replication().oplog_since(0, 10).unwrap();
    assert_eq!(ops.last().unwrap().1.kind, OpKind::Delete);
}

#[test]
fn a_deleted_id_can_be_inserted_again() {
    let db = db();
    let id = Uuid::from_u128(99);
    db.insert_with_id("bugs", id, fields! {"a" => 1}).unwrap();
    assert!(matches!(
        db.insert_with_id("bugs", id, fields! {"a" => 2}),
        Err(Error::RecordExists { .. })
    ));
    db.delete("bugs", id).unwrap();
    db.insert_with_id("bugs", id, fields! {"b" => 2}).unwrap();
    assert_eq!(
        db.get("bugs", id).unwrap().unwrap().fields,
        fields! {"b" => 2}
    );
    assert_eq!(db.count("bugs").unwrap(), 1);
}

#[test]
fn insert_many_and_fetch_all_keep_insertion_order() {
    let db = db();
    let ids = db
        .insert_many("n", (0..100).map(|i| fields! {"i" => i}))
        .unwrap();
    let all = db.fetch_all("n").unwrap();
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
    assert_eq!(db.count("n").unwrap(), 100);
}

#[test]
fn failed_transaction_leaves_no_record_no_op_and_no_clock_tick() {
    let db = db();
    db.insert("bugs", fields! {"a" => 1}).unwrap();
    let clock = db.replication().lamport();
    let result: Result<(), Error> = db.transaction(|tx| {
        tx.insert("bugs", fields! {"a" => 2})?;
        tx.insert("new_collection", fields! {"a" => 3})?;
        Err(Error::InvalidQuery("caller changed its mind".into()))
    });
    assert!(result.is_err());
    assert_eq!(db.count("bugs").unwrap(), 1);
    assert_eq!(db.count("new_collection").unwrap(), 0);
    assert_eq!(db.replication().oplog_since(0, 10).unwrap().len(), 1);
    assert_eq!(db.replication().lamport(), clock);
    // The next write reuses neither the rolled-back clock value nor the collection cache.
    db.insert("new_collection", fields! {"a" => 4}).unwrap();
    assert_eq!(db.replication().lamport(), clock + 1);
    assert_eq!(db.count("new_collection").unwrap(), 1);
}

#[test]
fn a_panicking_transaction_rolls_back() {
    let db = db();
    let handle = db.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = handle.transaction(|tx| -> Result<(), Error> {
            tx.insert("bugs", fields! {"a" => 1})?;
            panic!("boom");
        });
    }));
    assert!(outcome.is_err());
    assert_eq!(db.count("bugs").unwrap(), 0);
    db.insert("bugs", fields! {"a" => 2}).unwrap();
    assert_eq!(db.count("bugs").unwrap(), 1);
}

#[test]
fn every_write_has_exactly_one_op_in_the_log() {
    let db = db();
    let a = db.insert("c", fields! {"x" => 1}).unwrap();
    let b = db.insert("c", fields! {"x" => 2}).unwrap();
    db.update("c", a, fields! {"x" => 3}).unwrap();
    db.delete("c", b).unwrap();
    let ops: Vec<_> = db
        .replication()
        .oplog_since(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    assert_eq!(
        ops.iter().map(|o| o.kind).collect::<Vec<_>>(),
        [
            OpKind::Insert,
            OpKind::Insert,
            OpKind::Update,
            OpKind::Delete
        ]
    );
    assert_eq!(
        ops.iter().map(|o| o.lamport).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        ops.iter().map(|o| o.id.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert!(ops.iter().all(|o| o.id.origin == db.node_id()));
    // Paging through the log by position.
    let first = db.replication().oplog_since(0, 2).unwrap();
    let rest = db.replication().oplog_since(first[1].0, 100).unwrap();
    assert_eq!(rest.len(), 2);
    assert_eq!(db.replication().oplog_head().unwrap(), rest[1].0);
}

#[test]
fn invalid_names_are_rejected_with_the_reason() {
    let db = db();
    let err = db.insert("bugs", fields! {"id" => 1}).unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
    assert!(matches!(
        db.insert("", fields! {"a" => 1}),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        db.insert("bugs", fields! {"" => 1}),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        db.insert("b\u{0}", fields! {"a" => 1}),
        Err(Error::InvalidName { .. })
    ));
}

#[test]
fn too_deep_values_are_rejected() {
    let db = db();
    let mut v = Value::Null;
    for _ in 0..70 {
        v = Value::Array(vec![v]);
    }
    assert!(matches!(
        db.insert("x", fields! {"deep" => v}),
        Err(Error::InvalidValue { .. })
    ));
}

#[test]
fn subscribers_are_woken_by_local_and_remote_commits() {
    let db = db();
    let other = Database::in_memory().unwrap();
    let sub = db.subscribe("bugs");
    let all = db.subscribe_all();
    let a = db.insert("bugs", fields! {"t" => 1}).unwrap();
    db.insert("users", fields! {"n" => "Ada"}).unwrap();
    let c = sub.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(c.changes.len(), 1);
    assert_eq!(
        (c.changes[0].id, c.changes[0].kind, c.changes[0].origin),
        (a, ChangeKind::Inserted, ChangeOrigin::Local)
    );
    assert!(
        sub.try_recv().is_none(),
        "users commit must not reach a bugs subscriber"
    );
    assert_eq!(
        all.recv_timeout(Duration::from_secs(1)).unwrap().changes[0].collection,
        "bugs"
    );
    assert_eq!(
        all.recv_timeout(Duration::from_secs(1)).unwrap().changes[0].collection,
        "users"
    );

    // A remote change wakes the same subscription, tagged with its origin.
    let b = other.insert("bugs", fields! {"t" => 2}).unwrap();
    let ops: Vec<_> = other
        .replication()
        .oplog_since(0, 10)
        .unwrap()
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    db.replication().apply_remote(&ops).unwrap();
    let c = sub.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(c.changes[0].id, b);
    assert_eq!(c.changes[0].origin, ChangeOrigin::Remote(other.node_id()));
}

#[test]
fn a_blocked_subscriber_is_woken_from_another_thread() {
    let db = db();
    let sub = db.subscribe("bugs");
    let writer = db.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        writer.insert("bugs", fields! {"t" => 1}).unwrap()
    });
    let commit = sub.recv().unwrap();
    assert_eq!(commit.changes[0].id, t.join().unwrap());
}

#[test]
fn rolled_back_transactions_notify_nobody_and_listeners_can_be_dropped() {
    let db = db();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let listener = db.on_commit(move |c| {
        h.fetch_add(c.changes.len(), Ordering::SeqCst);
    });
    let _ = db.transaction(|tx| -> Result<(), Error> {
        tx.insert("bugs", fields! {"a" => 1})?;
        Err(Error::InvalidQuery("no".into()))
    });
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    db.insert("bugs", fields! {"a" => 1}).unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    drop(listener);
    db.insert("bugs", fields! {"a" => 2}).unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[test]
fn bugs_join_users_across_two_databases() {
    let bugs = db();
    let users = db();
    let ada = users.insert("users", fields! {"name" => "Ada"}).unwrap();
    let bob = users.insert("users", fields! {"name" => "Bob"}).unwrap();
    bugs.insert("bugs", fields! {"title" => "A", "authorId" => ada})
        .unwrap();
    bugs.insert("bugs", fields! {"title" => "B", "authorId" => bob})
        .unwrap();
    bugs.insert("bugs", fields! {"title" => "C", "authorId" => ada})
        .unwrap();
    bugs.insert("bugs", fields! {"title" => "D"}).unwrap();
    let rows = bugs
        .query("bugs")
        .order_by("title", Direction::Asc)
        .join(&users, "users", "authorId", "id")
        .run()
        .unwrap();
    let pairs: Vec<(String, String)> = rows
        .iter()
        .map(|j| {
            (
                j.left.get("title").unwrap().to_string(),
                j.right.as_ref().unwrap().get("name").unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        pairs,
        [
            ("\"A\"".into(), "\"Ada\"".into()),
            ("\"B\"".into(), "\"Bob\"".into()),
            ("\"C\"".into(), "\"Ada\"".into())
        ]
    );
    let left = bugs
        .query("bugs")
        .join(&users, "users", "authorId", "id")
        .kind(JoinKind::Left)
        .run()
        .unwrap();
    assert_eq!(left.len(), 4);
    assert!(
        left.iter()
            .any(|j| j.right.is_none() && j.left.get("title") == Some(&"D".into()))
    );
}

#[test]
fn join_on_a_non_id_field_uses_the_right_sides_index() {
    let orders = db();
    let users = db();
    users.create_index("users", "email").unwrap();
    users
        .insert("users", fields! {"email" => "a@x", "name" => "Ada"})
        .unwrap();
    users
        .insert("users", fields! {"email" => "b@x", "name" => "Bob"})
        .unwrap();
    orders
        .insert("orders", fields! {"by" => "b@x", "total" => 10})
        .unwrap();
    let rows = orders
        .query("orders")
        .join(&users, "users", "by", "email")
        .run()
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].right.as_ref().unwrap().get("name"),
        Some(&"Bob".into())
    );
    let plan = users
        .query("users")
        .filter(Filter::is_in("email", ["b@x"]))
        .explain()
        .unwrap();
    assert!(plan.uses_index(), "{plan}");
}

#[test]
fn explain_reports_index_use() {
    let db = db();
    db.insert("bugs", fields! {"p" => 1, "s" => "open"})
        .unwrap();
    let q = db.query("bugs").filter(Filter::eq("p", 1));
    assert!(!q.explain().unwrap().uses_index());
    db.create_index("bugs", "p").unwrap();
    let plan = q.explain().unwrap();
    assert!(plan.uses_index());
    assert_eq!(plan.to_string(), "INDEX SCAN bugs.p (p = 1; 1 key range)");
    assert_eq!(db.indexes("bugs").unwrap(), ["p"]);
    assert!(matches!(
        db.create_index("bugs", "p"),
        Err(Error::IndexExists { .. })
    ));
    db.drop_index("bugs", "p").unwrap();
    assert!(!q.explain().unwrap().uses_index());
    assert_eq!(q.run().unwrap().len(), 1);
}

#[test]
fn stats_report_collections_indexes_and_log() {
    let db = db();
    db.insert("b", fields! {"x" => 1}).unwrap();
    db.insert("a", fields! {"x" => 1}).unwrap();
    db.create_index("a", "x").unwrap();
    let s = db.stats().unwrap();
    assert_eq!(s.oplog_len, 2);
    assert_eq!(
        s.collections
            .iter()
            .map(|c| (c.name.as_str(), c.records, c.indexes.clone()))
            .collect::<Vec<_>>(),
        [("a", 1, vec!["x".to_string()]), ("b", 1, vec![])]
    );
    assert_eq!(db.collections().unwrap(), ["a", "b"]);
}

#[test]
fn a_record_over_the_size_limit_is_refused_without_a_gap_in_the_op_log() {
    let db = db();
    db.transaction(|tx| {
        tx.insert("t", fields! {"n" => 1})?;
        let big = vec![0u8; blazedb_core::MAX_RECORD_BYTES + 1];
        let err = tx.insert("t", fields! {"blob" => big}).unwrap_err();
        assert!(matches!(err, Error::RecordTooLarge { .. }), "{err}");
        tx.insert("t", fields! {"n" => 2})?;
        Ok(())
    })
    .unwrap();
    let seqs: Vec<u64> = db
        .replication()
        .oplog_since(0, 10)
        .unwrap()
        .iter()
        .map(|(_, o)| o.id.seq)
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(db.replication().lamport(), 2);
}

#[test]
fn scan_streams_records_and_can_stop_early() {
    let db = db();
    db.insert_many("n", (0..10).map(|i| fields! {"i" => i}))
        .unwrap();
    let mut seen = Vec::new();
    db.scan("n", |r| {
        seen.push(r.get("i").cloned());
        Ok(seen.len() < 3)
    })
    .unwrap();
    assert_eq!(
        seen,
        [
            Some(Value::Int(0)),
            Some(Value::Int(1)),
            Some(Value::Int(2))
        ]
    );
}

#[test]
fn using_the_database_inside_its_own_transaction_is_an_error_not_a_deadlock() {
    let db = db();
    let other = Database::in_memory().unwrap();
    db.transaction(|tx| {
        tx.insert("t", fields! {"n" => 1})?;
        assert!(matches!(db.count("t"), Err(Error::TransactionInProgress)));
        assert!(matches!(
            db.insert("t", fields! {"n" => 2}),
            Err(Error::TransactionInProgress)
        ));
        // Another database is fine, and so are the lock-free accessors.
        other.insert("t", fields! {"n" => 3})?;
        let _ = (db.node_id(), db.replication().lamport());
        Ok(())
    })
    .unwrap();
    assert_eq!(db.count("t").unwrap(), 1);
    assert_eq!(db.replication().lamport(), 1);
    // Another thread simply waits for the lock.
    let d = db.clone();
    std::thread::spawn(move || d.insert("t", fields! {"n" => 4}).unwrap())
        .join()
        .unwrap();
    assert_eq!(db.count("t").unwrap(), 2);
}

#[test]
fn a_transactions_operations_share_op_log_entries_of_bounded_size() {
    let db = db();
    let n = blazedb_core::OPLOG_ENTRY_MAX_OPS + 10;
    db.insert_many("t", (0..n as i64).map(|i| fields! {"i" => i}))
        .unwrap();
    db.insert("t", fields! {"i" => -1}).unwrap();
    let ops = db.replication().oplog_since(0, usize::MAX).unwrap();
    let positions: std::collections::BTreeSet<u64> = ops.iter().map(|(p, _)| *p).collect();
    assert_eq!(ops.len(), n + 1);
    assert_eq!(
        positions.len(),
        3,
        "two entries for the big transaction, one for the insert"
    );
    assert_eq!(db.stats().unwrap().oplog_len, (n + 1) as u64);
    // A limit never cuts an entry: asking for one operation returns the whole first entry.
    let first = db.replication().oplog_since(0, 1).unwrap();
    assert_eq!(first.len(), blazedb_core::OPLOG_ENTRY_MAX_OPS);
    let rest = db
        .replication()
        .oplog_since(first[0].0, usize::MAX)
        .unwrap();
    assert_eq!(first.len() + rest.len(), n + 1);
}

#[test]
fn on_commit_hears_a_commit_that_only_grows_the_op_log_and_subscribers_do_not() {
    let a = db();
    let b = db();
    let id = a.insert("t", fields! {"x" => 1}).unwrap();
    b.replication()
        .apply_remote(&common::ops_after(&a, 0))
        .unwrap();
    b.delete("t", id).unwrap();
    let before = a.replication().oplog_head().unwrap();
    a.update("t", id, fields! {"x" => 2}).unwrap();
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let _listener = {
        let heard = heard.clone();
        b.on_commit(move |c| heard.lock().unwrap().push((c.changes.len(), c.last_op_seq)))
    };
    let watching = b.subscribe("t");
    // The update loses to b's delete: nothing visible changes, but b logs the op.
    let report = b
        .replication()
        .apply_remote(&common::ops_after(&a, before))
        .unwrap();
    assert_eq!(report.applied, 1);
    assert_eq!(
        *heard.lock().unwrap(),
        [(0, Some(b.replication().oplog_head().unwrap()))]
    );
    assert!(watching.try_recv().is_none());
}
