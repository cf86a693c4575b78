//! Op-log compaction and snapshots: a peer whose cursor is older than the start of the
//! sender's op log gets the sender's record states instead, then the op log after them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use blazedb_core::{Database, Filter, Value, fields};
use blazedb_protocol::{CloseCode, Message, PROTOCOL_VERSION};
use blazedb_sync::{ConnectOptions, Mode, SNAPSHOT_PART_RECORDS, SyncEngine, Topology, WINDOW};

use blazedb_testkit::probe;
use probe::Probe;

const IDLE: Duration = Duration::from_secs(30);

/// A database with inserts, updates and deletes in many commits, across two collections,
/// one of them indexed.
fn busy_database() -> Database {
    let a = Database::in_memory().unwrap();
    a.create_index("bugs", "priority").unwrap();
    let mut ids = Vec::new();
    for i in 0..120 {
        ids.push(
            a.insert(
                "bugs",
                fields! {"title" => format!("bug {i}"), "priority" => i % 5},
            )
            .unwrap(),
        );
    }
    for id in ids.iter().step_by(3) {
        a.update("bugs", *id, fields! {"state" => "triaged"})
            .unwrap();
    }
    for id in ids.iter().step_by(7) {
        a.delete("bugs", *id).unwrap();
    }
    a.insert_many(
        "users",
        (0..30).map(|i| fields! {"name" => format!("user {i}")}),
    )
    .unwrap();
    a
}

fn hello_from(db: &Database, head: u64) -> Message {
    Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        node: db.node_id(),
        database: "bugs".into(),
        capabilities: blazedb_protocol::Capabilities::SUPPORTED,
        head,
    }
}

/// An engine for `db` (database "bugs") with one connection whose peer is the test.
fn engine_with_probe(db: &Database) -> (SyncEngine, Probe) {
    let engine = SyncEngine::start(db.clone(), "bugs").unwrap();
    let probe = Probe::default();
    engine
        .connect(probe.clone(), ConnectOptions::new("peer"))
        .unwrap();
    (engine, probe)
}

/// The probe says hello as a new, empty peer and pulls from `from`.
fn pull_as_new_peer(probe: &Probe, from: u64) {
    probe.say(hello_from(&Database::in_memory().unwrap(), 0));
    probe.say(Message::Pull {
        from,
        vector: Default::default(),
        checks: Vec::new(),
    });
}

#[test]
fn a_new_database_behind_a_compacted_log_gets_a_snapshot_then_live_operations() {
    let a = busy_database();
    let dir = tempfile::tempdir().unwrap();
    let b = Database::create(dir.path().join("b.blazedb"), "pw").unwrap();
    let mut topology = Topology::new();
    let na = topology.register(&a, "a").unwrap();
    let start = topology.engine_of(na).unwrap().compact_oplog(5).unwrap();
    assert_eq!(start, a.replication().oplog_head().unwrap() - 5);
    assert_eq!(a.replication().oplog_start().unwrap(), start);

    let nb = topology.register(&b, "b").unwrap();
    topology.connect_local(na, nb, Mode::Bidirectional).unwrap();
    assert!(topology.wait_idle(IDLE).unwrap());
    assert_eq!(b.content_hash().unwrap(), a.content_hash().unwrap());
    assert_eq!(
        b.replication().version_vector().unwrap(),
        a.replication().version_vector().unwrap()
    );
    assert_eq!(
        b.replication().oplog_ops_through(u64::MAX).unwrap(),
        0,
        "a snapshot writes record states, not operations"
    );
    // The index answers on the copy too.
    let urgent = |db: &Database| {
        db.query("bugs")
            .filter(Filter::eq("priority", 0))
            .count()
            .unwrap()
    };
    assert_eq!(urgent(&b), urgent(&a));

    // Then the stream goes on from the snapshot's position, both ways.
    a.insert("bugs", fields! {"title" => "after"}).unwrap();
    assert!(topology.wait_idle(IDLE).unwrap());
    b.insert("bugs", fields! {"title" => "from b"}).unwrap();
    assert!(topology.wait_idle(IDLE).unwrap());
    assert_eq!(b.content_hash().unwrap(), a.content_hash().unwrap());
    assert_eq!(topology.engine_of(nb).unwrap().ops_duplicate(), 0);
}

#[test]
fn a_returning_database_whose_cursor_was_compacted_away_catches_up_and_merges_offline_edits() {
    let a = busy_database();
    let b = Database::in_memory().unwrap();
    let mut topology = Topology::new();
    let na = topology.register(&a, "a").unwrap();
    let nb = topology.register(&b, "b").unwrap();
    topology.connect_local(na, nb, Mode::Bidirectional).unwrap();
    assert!(topology.wait_idle(IDLE).unwrap());
    let shared = a
        .insert("bugs", fields! {"title" => "shared", "owner" => "ada"})
        .unwrap();
    assert!(topology.wait_idle(IDLE).unwrap());
    topology.disconnect(nb, na).unwrap();
    let logged_before = b.replication().oplog_ops_through(u64::MAX).unwrap();

    // While b is away: a edits one field of the shared record, b another, and both write.
    a.update("bugs", shared, fields! {"title" => "renamed on a"})
        .unwrap();
    for i in 0..50 {
        a.insert("bugs", fields! {"title" => format!("while away {i}")})
            .unwrap();
    }
    b.update("bugs", shared, fields! {"owner" => "grace"})
        .unwrap();
    b.insert("bugs", fields! {"title" => "written offline on b"})
        .unwrap();
    let start = topology.engine_of(na).unwrap().compact_oplog(0).unwrap();
    assert_eq!(
        start,
        a.replication().oplog_head().unwrap(),
        "nobody is connected to a"
    );
    // A restarted engine (nothing recent in memory) can only answer with a snapshot.
    topology.unregister(na).unwrap();
    assert_eq!(topology.register(&a, "a").unwrap(), na);

    topology.connect_local(na, nb, Mode::Bidirectional).unwrap();
    assert!(topology.wait_idle(IDLE).unwrap());
    assert_eq!(b.content_hash().unwrap(), a.content_hash().unwrap());
    assert_eq!(
        b.replication().oplog_ops_through(u64::MAX).unwrap(),
        logged_before + 2,
        "only b's own offline writes were logged: a's came as a snapshot"
    );
    let merged = b.get("bugs", shared).unwrap().unwrap();
    assert_eq!(merged.get("title"), Some(&Value::from("renamed on a")));
    assert_eq!(merged.get("owner"), Some(&Value::from("grace")));
}

#[test]
fn compaction_never_drops_what_a_connected_peer_still_streams_from() {
    let db = busy_database();
    let (engine, probe) = engine_with_probe(&db);
    pull_as_new_peer(&probe, 3);
    probe.wait_for(|m| matches!(m, Message::Ops { .. }));
    // The peer acknowledged nothing past 3: entries after it stay.
    assert_eq!(engine.compact_oplog(0).unwrap(), 3);
    assert_eq!(db.replication().oplog_start().unwrap(), 3);
    assert_eq!(
        db.replication().oplog_since(3, usize::MAX).unwrap().len() as u64,
        db.replication().oplog_ops_through(u64::MAX).unwrap()
            - db.replication().oplog_ops_through(3).unwrap()
    );
}

#[test]
fn snapshot_parts_keep_to_the_window_and_continue_as_they_are_acknowledged() {
    let db = Database::in_memory().unwrap();
    let records = SNAPSHOT_PART_RECORDS * (WINDOW + 2) + 1;
    for chunk in 0..(WINDOW + 3) {
        db.insert_many(
            "t",
            (0..SNAPSHOT_PART_RECORDS).map(|i| fields! {"chunk" => chunk as i64, "i" => i as i64}),
        )
        .unwrap();
    }
    let extra = db.count("t").unwrap() as usize - records;
    assert!(extra < SNAPSHOT_PART_RECORDS);
    assert_eq!(
        db.replication().compact_oplog(u64::MAX).unwrap(),
        db.replication().oplog_head().unwrap()
    );
    let (engine, probe) = engine_with_probe(&db);
    pull_as_new_peer(&probe, 0);
    let is_part = |m: &Message| matches!(m, Message::Snapshot { .. });
    probe.wait_for_count(WINDOW, is_part);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        probe.count(is_part),
        WINDOW,
        "no more than a window unacknowledged"
    );
    let status = &engine.status().unwrap()[0];
    let (sent, total) = status.snapshot_out.unwrap();
    assert_eq!(total, db.count("t").unwrap());
    assert_eq!(sent, (WINDOW * SNAPSHOT_PART_RECORDS) as u64);

    probe.say(Message::SnapshotAck { part: 1 });
    probe.wait_for_count(WINDOW + 1, is_part);
    for part in 2..=(WINDOW as u32 + 3) {
        probe.say(Message::SnapshotAck { part });
    }
    let last = probe.wait_for(|m| {
        matches!(
            m,
            Message::Snapshot {
                vector: Some(_),
                ..
            }
        )
    });
    let Message::Snapshot { position, part, .. } = last else {
        unreachable!()
    };
    assert_eq!(position, db.replication().oplog_head().unwrap());
    assert_eq!(part as usize, WINDOW + 3);
    let parts: Vec<Message> = probe
        .sent
        .lock()
        .unwrap()
        .iter()
        .filter(|m| is_part(m))
        .cloned()
        .collect();
    let mut seen = 0;
    for (i, m) in parts.iter().enumerate() {
        let Message::Snapshot {
            part,
            records,
            vector,
            ..
        } = m
        else {
            unreachable!()
        };
        assert_eq!(*part as usize, i + 1, "parts are numbered in order from 1");
        assert_eq!(
            vector.is_some(),
            i + 1 == parts.len(),
            "only the last has the vector"
        );
        seen += records.len();
    }
    assert_eq!(seen as u64, db.count("t").unwrap());

    // After the snapshot, the op log from its position streams as usual.
    db.insert("t", fields! {"after" => true}).unwrap();
    probe.wait_for(|m| matches!(m, Message::Ops { from, .. } if *from == position));
}

/// Parts of a snapshot of `source`, as an engine would send them, `per_part` records each.
fn parts_of(source: &Database, per_part: usize) -> Vec<Message> {
    let info = source.replication().snapshot_info().unwrap();
    let mut parts = Vec::new();
    let mut after = None;
    loop {
        let (records, next) = source
            .replication()
            .snapshot_page(after.as_ref(), per_part, usize::MAX)
            .unwrap();
        let last = next.is_none();
        parts.push(Message::Snapshot {
            position: info.position,
            part: parts.len() as u32 + 1,
            total: info.records,
            records,
            vector: last.then(|| info.vector.clone()),
        });
        if last {
            return parts;
        }
        after = next;
    }
}

#[test]
fn a_received_snapshot_reports_progress_and_moves_the_cursor_only_with_its_last_part() {
    let db = Database::in_memory().unwrap();
    let (engine, probe) = engine_with_probe(&db);
    let source = Database::in_memory().unwrap();
    source
        .insert_many("t", (0..40).map(|i| fields! {"i" => i}))
        .unwrap();
    let parts = parts_of(&source, 20);
    assert_eq!(parts.len(), 2);
    probe.say(hello_from(
        &source,
        source.replication().oplog_head().unwrap(),
    ));
    probe.wait_for(|m| matches!(m, Message::Pull { from: 0, .. }));

    probe.say(parts[0].clone());
    probe.wait_for(|m| matches!(m, Message::SnapshotAck { part: 1 }));
    let status = &engine.status().unwrap()[0];
    assert_eq!(status.snapshot_in, Some((20, 40)));
    assert!((status.catch_up_progress() - 0.5).abs() < 1e-9);
    assert_eq!(status.cursor, 0, "the cursor waits for the last part");
    assert_eq!(db.replication().peer_cursor(source.node_id()).unwrap(), 0);
    assert_eq!(
        db.count("t").unwrap(),
        20,
        "each part is applied when it arrives"
    );

    probe.say(parts[1].clone());
    let head = source.replication().oplog_head().unwrap();
    probe.wait_for(|m| matches!(m, Message::Ack { position, .. } if *position == head));
    let status = &engine.status().unwrap()[0];
    assert_eq!(status.snapshot_in, None);
    assert_eq!(status.catch_up_progress(), 1.0);
    assert_eq!(
        db.replication().peer_cursor(source.node_id()).unwrap(),
        head
    );
    assert_eq!(db.content_hash().unwrap(), source.content_hash().unwrap());
    assert_eq!(
        db.replication().version_vector().unwrap(),
        source.replication().version_vector().unwrap()
    );

    // The operations the snapshot included count as merged when they come again.
    let ops: Vec<_> = source
        .replication()
        .oplog_since(0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(_, op)| op)
        .collect();
    assert_eq!(
        db.replication().apply_remote(&ops).unwrap().duplicates,
        ops.len()
    );
}

#[test]
fn a_snapshot_part_out_of_order_closes_the_connection_as_a_protocol_error() {
    let db = Database::in_memory().unwrap();
    let (_engine, probe) = engine_with_probe(&db);
    let source = Database::in_memory().unwrap();
    source
        .insert_many("t", (0..10).map(|i| fields! {"i" => i}))
        .unwrap();
    let parts = parts_of(&source, 4);
    probe.say(hello_from(&source, 0));
    probe.say(parts[1].clone());
    let close = probe.wait_for(|m| matches!(m, Message::Close { .. }));
    let Message::Close { code, reason } = close else {
        unreachable!()
    };
    assert_eq!(code, CloseCode::ProtocolError);
    assert!(reason.contains("part 2"), "{reason}");
    assert_eq!(db.count("t").unwrap(), 0);
}
