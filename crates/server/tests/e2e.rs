//! End-to-end collections through a real server on 127.0.0.1 (docs/e2e.md): devices seal the
//! values of an e2e collection before they leave them, the server stores, merges and routes
//! them by what stays in clear (ids, stamps, routing fields) without reading them, and a
//! device refuses a value the server changed or moved.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::time::{Duration, Instant};

use blazedb_core::{Database, Operation, RejectCode, Uuid, Value, fields};
use blazedb_protocol::{CollectionInfo, Message};
use blazedb_server::ServerHandle;
use blazedb_sync::e2e::Keyring;
use blazedb_sync::remote::{RemoteNode, RemoteOptions, RemoteSync, SyncExt};

mod common;

use common::raw::{RawDevice, RawSession, contains, plaintexts};

const WAIT: Duration = Duration::from_secs(20);

/// The seed's hybrid bug tracker: bugs sealed end to end and routed by team, weekly
/// reports smart (the server reads and can query them).
const RULES: &str = r#"
[collections.bugs]
mode = "e2e"
routing_fields = ["teamId"]

[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }

[roles.manager.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }

[roles.manager.reports]
read  = {}
write = {}

[roles.developer.reports]
read  = {}
write = false
"#;

const SEALED_CANARY: &str = "CANARY-sealed-7f3a9c";
const SMART_CANARY: &str = "CANARY-smart-2b8e41";

fn start(dir: &Path) -> ServerHandle {
    start_with(dir, blazedb_server::ServerConfig::default())
}

/// [`start`] with other settings.
fn start_with(dir: &Path, config: blazedb_server::ServerConfig) -> ServerHandle {
    let server = common::start_server_with(&dir.join("data"), "bugs", &[], config);
    let meta = server.meta();
    meta.add_user("alice", &["ios".into()], Some("developer"))
        .unwrap();
    meta.add_user("bob", &["android".into()], Some("developer"))
        .unwrap();
    meta.add_user("carol", &["ios".into(), "android".into()], Some("manager"))
        .unwrap();
    meta.add_user("dave", &["ios".into()], Some("developer"))
        .unwrap();
    meta.add_user("erin", &["ios".into()], Some("developer"))
        .unwrap();
    meta.add_user("gina", &["ios".into()], Some("developer"))
        .unwrap();
    meta.set_access_rules("bugs", RULES).unwrap();
    server
}

fn fast() -> RemoteOptions {
    RemoteOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RemoteOptions::default()
    }
}

struct Device {
    db: Database,
    sync: RemoteSync,
}

fn device(dir: &Path, server: &ServerHandle, user: &str) -> Device {
    let db = Database::create(dir.join(format!("{user}.blazedb")), "device password").unwrap();
    let options = fast().enroll(blazedb_testkit::server::token(server, user));
    let sync = db
        .enable_sync(RemoteNode::new(server.url(), "bugs"), options)
        .unwrap();
    Device { db, sync }
}

/// A device enrolled before syncing again (after its `sync.stop()`).
fn resume(db: Database, server: &ServerHandle) -> Device {
    let sync = db
        .enable_sync(RemoteNode::new(server.url(), "bugs"), fast())
        .unwrap();
    Device { db, sync }
}

/// The keys a device holds of scope `scope` of bugs: their epochs.
fn epochs(db: &Database, scope: &str) -> Vec<u32> {
    let mut epochs: Vec<u32> = Keyring::new(db)
        .keys()
        .unwrap()
        .into_iter()
        .filter(|k| k.collection == "bugs" && k.scope == scope)
        .map(|k| k.epoch)
        .collect();
    epochs.sort_unstable();
    epochs
}

/// A device made by hand (no end-to-end layer) of `user` inserts `fields` as bug `record`:
/// the server's first message to it, and the rejections of the write.
fn raw_insert(
    server: &ServerHandle,
    user: &str,
    record: Uuid,
    fields: blazedb_core::Fields,
) -> (Message, Vec<blazedb_protocol::Rejection>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw = RawDevice::new();
    let token = blazedb_testkit::server::token(server, user);
    let address = server.local_addr();
    runtime.block_on(async {
        let mut session = RawSession::enrolled(address, "bugs", &raw, token).await;
        let first = session.recv(WAIT).await.unwrap();
        let op = Operation {
            id: blazedb_core::OpId {
                origin: raw.node,
                seq: 1,
            },
            lamport: 100,
            wall: blazedb_core::Date::now(),
            kind: blazedb_core::OpKind::Insert,
            collection: "bugs".into(),
            record,
            fields,
        };
        session
            .send(&Message::Ops {
                from: 0,
                to: 1,
                ops: vec![op],
            })
            .await;
        loop {
            match session.recv(WAIT).await.unwrap() {
                Message::Ack { rejected, .. } if !rejected.is_empty() => break (first, rejected),
                _ => {}
            }
        }
    })
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn titles(db: &Database, collection: &str) -> Vec<String> {
    let mut titles: Vec<String> = db
        .fetch_all(collection)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.fields.get("title") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    titles.sort();
    titles
}

/// Everything the server holds of the database, as text: every record state and every
/// operation of its log, read through its own key (the file itself is SQLCipher, so its
/// raw bytes show nothing either way), with each byte string also read as text.
fn server_dump(server: &ServerHandle) -> String {
    let db = server.meta().open_database("bugs").unwrap();
    let mut dump = String::new();
    let add_value = |dump: &mut String, value: &Value| {
        dump.push_str(&format!("{value:?}\n"));
        if let Value::Bytes(b) = value {
            dump.push_str(&String::from_utf8_lossy(b));
        }
    };
    for collection in db.collections().unwrap() {
        for record in db.fetch_all(&collection).unwrap() {
            let state = db
                .replication()
                .record_state(&collection, record.id)
                .unwrap()
                .unwrap();
            for register in state.fields.values() {
                add_value(&mut dump, &register.value);
            }
        }
    }
    for (_, op) in db.replication().oplog_since(0, usize::MAX).unwrap() {
        for value in op.fields.values() {
            add_value(&mut dump, value);
        }
    }
    dump
}

#[test]
fn the_hybrid_bug_tracker_keeps_bugs_sealed_from_the_server_and_reports_readable() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    // No key is handed over by hand: the first writer of a team makes its key, and the
    // server asks it to wrap the key for the others the rules let read the team's bugs.
    let alice = device(dir.path(), &server, "alice");
    let bob = device(dir.path(), &server, "bob");
    let carol = device(dir.path(), &server, "carol");

    alice
        .db
        .insert(
            "bugs",
            fields! { "teamId" => "ios", "title" => format!("{SEALED_CANARY} crash on start"), "priority" => 1 },
        )
        .unwrap();
    bob.db
        .insert(
            "bugs",
            fields! { "teamId" => "android", "title" => format!("{SEALED_CANARY} slow scroll") },
        )
        .unwrap();
    carol
        .db
        .insert(
            "reports",
            fields! { "title" => format!("{SMART_CANARY} week 48") },
        )
        .unwrap();

    until("every device to hold exactly its records", || {
        titles(&alice.db, "bugs") == [format!("{SEALED_CANARY} crash on start")]
            && titles(&bob.db, "bugs") == [format!("{SEALED_CANARY} slow scroll")]
            && titles(&carol.db, "bugs").len() == 2
            && titles(&alice.db, "reports").len() == 1
            && titles(&bob.db, "reports").len() == 1
    });
    // Readable on the devices, field types kept.
    let bug = &alice.db.fetch_all("bugs").unwrap()[0];
    assert_eq!(bug.fields.get("priority"), Some(&Value::Int(1)));
    assert_eq!(bug.fields.get("teamId"), Some(&Value::from("ios")));

    // The server holds the sealed bugs, with their routing field in clear, and the report
    // readable: the same scan finds the smart canary, so it would find the sealed one.
    let dump = server_dump(&server);
    assert!(
        dump.contains(SMART_CANARY),
        "the scan must see readable values"
    );
    assert!(
        !dump.contains(SEALED_CANARY),
        "a sealed value reached the server readable"
    );
    assert!(!dump.contains("crash on start"));
    assert!(dump.contains("ios") && dump.contains("android"));
    let hosted = server.meta().open_database("bugs").unwrap();
    for bug in hosted.fetch_all("bugs").unwrap() {
        for (field, value) in &bug.fields {
            match field.as_str() {
                "teamId" => assert!(matches!(value, Value::String(_))),
                _ => assert!(
                    matches!(value, Value::Bytes(b) if blazedb_e2e::SealedValue::is_sealed(b)),
                    "{field} is not sealed on the server: {value:?}"
                ),
            }
        }
    }

    // An update travels sealed too, and merges per field on the server by its stamp.
    let id = bug.id;
    alice
        .db
        .update("bugs", id, fields! { "title" => "fixed" })
        .unwrap();
    until("carol to see the update", || {
        carol
            .db
            .get("bugs", id)
            .unwrap()
            .is_some_and(|r| r.fields.get("title") == Some(&Value::from("fixed")))
    });
    let stored = hosted.get("bugs", id).unwrap().unwrap();
    assert!(matches!(stored.fields.get("title"), Some(Value::Bytes(_))));
    assert_eq!(
        stored
            .fields
            .get("priority")
            .map(|v| matches!(v, Value::Bytes(_))),
        Some(true)
    );
    for d in [alice, bob, carol] {
        d.sync.stop();
    }
}

#[test]
fn the_server_tells_devices_the_modes_first_and_refuses_a_readable_value_in_an_e2e_collection() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    // A device without an end-to-end layer writes a readable title.
    let record = Uuid::now_v7();
    let (first, rejected) = raw_insert(
        &server,
        "alice",
        record,
        fields! { "teamId" => "ios", "title" => "readable" },
    );
    assert_eq!(
        first,
        Message::Collections {
            collections: vec![CollectionInfo {
                name: "bugs".into(),
                sealed: true,
                routing_fields: vec!["teamId".into()],
            }],
        }
    );
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].code, RejectCode::NotSealed);
    assert!(
        rejected[0].reason.contains("\"title\""),
        "{}",
        rejected[0].reason
    );
    let hosted = server.meta().open_database("bugs").unwrap();
    assert!(hosted.get("bugs", record).unwrap().is_none());
}

/// How a malicious server forges operations out of the sealed ones it holds.
#[derive(Debug, Clone, Copy)]
enum Forgery {
    /// A sealed title copied to a record of the server's making.
    MovedToAnotherRecord,
    /// Two records' sealed titles swapped.
    SwappedBetweenRecords,
    /// A sealed title replayed on its record under a newer stamp.
    StampEdited,
}

#[test]
fn values_the_server_moved_swapped_or_restamped_are_refused_and_nothing_wrong_is_applied() {
    for forgery in [
        Forgery::MovedToAnotherRecord,
        Forgery::SwappedBetweenRecords,
        Forgery::StampEdited,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let server = start(dir.path());
        let alice = device(dir.path(), &server, "alice");
        let a = alice
            .db
            .insert("bugs", fields! { "teamId" => "ios", "title" => "first" })
            .unwrap();
        let b = alice
            .db
            .insert("bugs", fields! { "teamId" => "ios", "title" => "second" })
            .unwrap();
        alice.sync.wait_synced(WAIT, |_| {}).unwrap();

        // The server (here: someone with its key, while it is stopped) forges operations in
        // alice's name from the sealed ones it holds.
        alice.sync.stop();
        let address = server.local_addr();
        server.shutdown();
        let meta = blazedb_server::MetaStore::open_or_create(
            &dir.path().join("data"),
            &blazedb_server::MasterKey::from_hex(common::KEY, "test").unwrap(),
        )
        .unwrap();
        let hosted = meta.open_database("bugs").unwrap();
        let ops = hosted.replication().oplog_since(0, usize::MAX).unwrap();
        let of = |id| {
            ops.iter()
                .find(|(_, op)| op.record == id)
                .unwrap()
                .1
                .clone()
        };
        let (op_a, op_b) = (of(a), of(b));
        let forge = |base: &Operation, n: u64, record: Uuid, title: &Value| {
            let mut op = Operation {
                id: blazedb_core::OpId {
                    seq: base.id.seq + 1000 + n,
                    ..base.id
                },
                lamport: base.lamport + 1000 + n,
                kind: blazedb_core::OpKind::Update,
                record,
                ..base.clone()
            };
            op.fields = fields! { "teamId" => "ios", "title" => title.clone() };
            op
        };
        let forged = match forgery {
            // An insert, so that the record is visible and routed to dave.
            Forgery::MovedToAnotherRecord => vec![Operation {
                kind: blazedb_core::OpKind::Insert,
                ..forge(&op_a, 0, Uuid::now_v7(), &op_a.fields["title"])
            }],
            Forgery::SwappedBetweenRecords => vec![
                forge(&op_a, 0, a, &op_b.fields["title"]),
                forge(&op_b, 1, b, &op_a.fields["title"]),
            ],
            Forgery::StampEdited => vec![forge(&op_a, 0, a, &op_a.fields["title"])],
        };
        hosted.replication().apply_remote(&forged).unwrap();
        drop((hosted, meta));
        // Back on the same address, where alice's device pinned its key.
        let server = blazedb_server::Server::start_with_key(
            blazedb_server::ServerConfig {
                data_dir: dir.path().join("data"),
                listen: address,
                ..blazedb_server::ServerConfig::default()
            },
            blazedb_server::MasterKey::from_hex(common::KEY, "test").unwrap(),
        )
        .unwrap();
        let alice = resume(alice.db, &server);

        // Dave, a new ios developer, gets the team's key from alice and refuses it.
        let dave = device(dir.path(), &server, "dave");
        until("dave to refuse the forged value", || {
            dave.sync
                .status()
                .last_error
                .is_some_and(|e| e.contains("does not open"))
        });
        let error = dave.sync.status().last_error.unwrap();
        assert!(
            error.contains(&forged[0].record.to_string()),
            "{forgery:?}: {error}"
        );
        // Whatever dave holds is what alice wrote.
        for bug in dave.db.fetch_all("bugs").unwrap() {
            assert_eq!(
                bug.fields.get("title"),
                alice
                    .db
                    .get("bugs", bug.id)
                    .unwrap()
                    .unwrap()
                    .fields
                    .get("title"),
                "{forgery:?}"
            );
        }
        assert_eq!(epochs(&dave.db, "ios"), [1]);
        dave.sync.stop();
        alice.sync.stop();
    }
}

#[test]
fn a_collection_the_server_holds_readable_records_of_cannot_become_e2e() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let hosted = server.meta().open_database("bugs").unwrap();
    hosted
        .insert("reports", fields! { "title" => "week 1" })
        .unwrap();
    let settings = blazedb_access::CollectionSettings::new(
        blazedb_access::CollectionMode::E2e,
        Vec::<String>::new(),
    );
    let err = server
        .meta()
        .set_collection_mode("bugs", "reports", settings.clone())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("collection \"reports\": the server holds 1 of its records"),
        "{err}"
    );
    // An empty one can.
    server
        .meta()
        .set_collection_mode("bugs", "notes", settings)
        .unwrap();
}

#[test]
fn a_device_that_joins_later_gets_the_key_from_a_member_and_reads_history() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let alice = device(dir.path(), &server, "alice");
    for n in 0..5 {
        alice
            .db
            .insert(
                "bugs",
                fields! { "teamId" => "ios", "title" => format!("bug {n}") },
            )
            .unwrap();
    }
    alice.sync.wait_synced(WAIT, |_| {}).unwrap();
    let dave = device(dir.path(), &server, "dave");
    until("dave to read the team's history", || {
        titles(&dave.db, "bugs").len() == 5
    });
    assert_eq!(epochs(&dave.db, "ios"), [1]);
    // Bob, of another team, holds no ios key and no ios bug.
    let bob = device(dir.path(), &server, "bob");
    bob.sync.wait_synced(WAIT, |_| {}).unwrap();
    assert!(epochs(&bob.db, "ios").is_empty());
    assert!(titles(&bob.db, "bugs").is_empty());
    for d in [alice, dave, bob] {
        d.sync.stop();
    }
}

#[test]
fn a_member_who_leaves_the_team_makes_the_key_rotate_and_reads_nothing_written_after() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let alice = device(dir.path(), &server, "alice");
    let carol = device(dir.path(), &server, "carol");
    let dave = device(dir.path(), &server, "dave");
    alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "before" })
        .unwrap();
    until("everyone in ios to hold the first key and the bug", || {
        [&carol, &dave]
            .iter()
            .all(|d| titles(&d.db, "bugs") == ["before"] && epochs(&d.db, "ios") == [1])
    });

    // Dave leaves the team: a remaining member makes epoch 2, for alice and carol only.
    server
        .meta()
        .update_user("dave", Some(&["android".to_owned()]), None)
        .unwrap();
    until("alice and carol to hold epoch 2", || {
        epochs(&alice.db, "ios") == [1, 2] && epochs(&carol.db, "ios") == [1, 2]
    });
    alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "after" })
        .unwrap();
    until("carol to read the bug written after", || {
        titles(&carol.db, "bugs") == ["after", "before"]
    });
    alice.sync.wait_synced(WAIT, |_| {}).unwrap();
    dave.sync.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(epochs(&dave.db, "ios"), [1], "dave got the new key");
    assert!(!titles(&dave.db, "bugs").contains(&"after".to_owned()));
    // The new bug is sealed under epoch 2 on the server.
    let hosted = server.meta().open_database("bugs").unwrap();
    let after = hosted
        .fetch_all("bugs")
        .unwrap()
        .into_iter()
        .find(|r| {
            carol
                .db
                .get("bugs", r.id)
                .unwrap()
                .unwrap()
                .fields
                .get("title")
                == Some(&Value::from("after"))
        })
        .unwrap();
    let Some(Value::Bytes(sealed)) = after.fields.get("title") else {
        panic!("not sealed");
    };
    let key = blazedb_e2e::SealedValue::decode(sealed).unwrap().key;
    let epoch2 = Keyring::new(&alice.db)
        .keys()
        .unwrap()
        .into_iter()
        .find(|k| k.epoch == 2)
        .unwrap();
    assert_eq!(key, epoch2.key.id());
    for d in [alice, carol, dave] {
        d.sync.stop();
    }
}

#[test]
fn a_member_offline_through_two_rotations_catches_up_and_a_new_one_reads_history_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    // A short op log: compacted, it sends a new device a snapshot of record states.
    let server = start_with(
        dir.path(),
        blazedb_server::ServerConfig {
            oplog_keep: 1,
            ..blazedb_server::ServerConfig::default()
        },
    );
    let alice = device(dir.path(), &server, "alice");
    let carol = device(dir.path(), &server, "carol");
    let dave = device(dir.path(), &server, "dave");
    let erin = device(dir.path(), &server, "erin");
    alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "epoch 1" })
        .unwrap();
    until("every ios device to hold the first key", || {
        [&carol, &dave, &erin]
            .iter()
            .all(|d| epochs(&d.db, "ios") == [1] && titles(&d.db, "bugs").len() == 1)
    });
    // Carol goes offline; dave, then erin, leave the team.
    carol.sync.stop();
    let meta = server.meta();
    meta.update_user("dave", Some(&[]), None).unwrap();
    until("epoch 2", || epochs(&alice.db, "ios") == [1, 2]);
    alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "epoch 2" })
        .unwrap();
    until("erin to read epoch 2", || {
        titles(&erin.db, "bugs").len() == 2
    });
    meta.update_user("erin", Some(&[]), None).unwrap();
    until("epoch 3", || epochs(&alice.db, "ios") == [1, 2, 3]);
    alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "epoch 3" })
        .unwrap();
    alice.sync.wait_synced(WAIT, |_| {}).unwrap();

    // Carol returns: both newer keys were wrapped to her while she was away.
    let carol = resume(carol.db, &server);
    until("carol to read all three", || {
        titles(&carol.db, "bugs") == ["epoch 1", "epoch 2", "epoch 3"]
    });
    assert_eq!(epochs(&carol.db, "ios"), [1, 2, 3]);
    assert_eq!(epochs(&dave.db, "ios"), [1]);
    assert_eq!(epochs(&erin.db, "ios"), [1, 2]);

    // Gina joins now, from a snapshot: she gets epoch 3 wrapped to her, and the older keys
    // sealed under the newer ones, and reads every epoch's bug.
    carol.sync.wait_synced(WAIT, |_| {}).unwrap();
    let compacted = server.compact_oplogs().unwrap();
    assert!(
        compacted
            .iter()
            .any(|(name, start)| name == "bugs" && *start > 0)
    );
    let gina = device(dir.path(), &server, "gina");
    until("gina to read all three", || {
        titles(&gina.db, "bugs") == ["epoch 1", "epoch 2", "epoch 3"]
    });
    assert_eq!(epochs(&gina.db, "ios"), [1, 2, 3]);
    for d in [alice, carol, dave, erin, gina] {
        d.sync.stop();
    }
}

#[test]
fn a_write_under_a_key_rotated_out_is_refused_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let alice = device(dir.path(), &server, "alice");
    let dave = device(dir.path(), &server, "dave");
    let id = alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "old" })
        .unwrap();
    until("dave to hold the first key", || {
        epochs(&dave.db, "ios") == [1]
    });
    server.meta().update_user("dave", Some(&[]), None).unwrap();
    until("epoch 2", || epochs(&alice.db, "ios") == [1, 2]);

    // Erin, an ios developer, replays alice's epoch-1 value as a write of her own.
    let hosted = server.meta().open_database("bugs").unwrap();
    let old = hosted.get("bugs", id).unwrap().unwrap().fields["title"].clone();
    let record = Uuid::now_v7();
    let (_, rejected) = raw_insert(
        &server,
        "erin",
        record,
        fields! { "teamId" => "ios", "title" => old },
    );
    assert_eq!(rejected[0].code, RejectCode::StaleKey);
    assert!(
        rejected[0].reason.contains("were rotated to epoch 2"),
        "{}",
        rejected[0].reason
    );
    assert!(hosted.get("bugs", record).unwrap().is_none());
    alice.sync.stop();
    dave.sync.stop();
}

#[test]
fn a_refused_update_of_a_sealed_record_is_reported_and_not_undone_with_values_the_server_cannot_seal()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let alice = device(dir.path(), &server, "alice");
    let carol = device(dir.path(), &server, "carol");
    let id = alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "mine" })
        .unwrap();
    until("carol to read it", || titles(&carol.db, "bugs") == ["mine"]);
    let hosted = server.meta().open_database("bugs").unwrap();
    let head = hosted.replication().oplog_head().unwrap();

    // Alice may not move a bug to a team she is not in.
    alice
        .db
        .update(
            "bugs",
            id,
            fields! { "teamId" => "android", "title" => "moved" },
        )
        .unwrap();
    until("alice to be told", || {
        alice
            .db
            .replication()
            .rejections()
            .unwrap()
            .iter()
            .any(|r| r.code == RejectCode::Forbidden && r.op.record == id)
    });
    // The server wrote nothing for it: restoring the title would need a value sealed under
    // a stamp of its own, which no device could open.
    assert_eq!(hosted.replication().oplog_head().unwrap(), head);
    assert_eq!(
        hosted
            .get("bugs", id)
            .unwrap()
            .unwrap()
            .fields
            .get("teamId"),
        Some(&Value::from("ios"))
    );
    // Everyone else goes on syncing.
    alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "next" })
        .unwrap();
    until("carol to read the next bug", || {
        titles(&carol.db, "bugs") == ["mine", "next"]
    });
    for d in [alice, carol] {
        d.sync.stop();
    }
}

#[test]
fn a_hundred_devices_rotate_to_exactly_one_wrapped_key_per_remaining_device() {
    const DEVICES: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let meta = server.meta();
    let devices: Vec<Device> = (0..DEVICES)
        .map(|n| {
            let user = format!("dev{n}");
            meta.add_user(&user, &["ios".into()], Some("developer"))
                .unwrap();
            let db = Database::in_memory().unwrap();
            let options = fast().enroll(blazedb_testkit::server::token(&server, &user));
            let sync = db
                .enable_sync(RemoteNode::new(server.url(), "bugs"), options)
                .unwrap();
            Device { db, sync }
        })
        .collect();
    for d in &devices {
        d.sync.wait_synced(WAIT, |_| {}).unwrap();
    }
    devices[0]
        .db
        .insert(
            "bugs",
            fields! { "teamId" => "ios", "title" => "one for all" },
        )
        .unwrap();
    until("every device to hold the key and read the bug", || {
        devices
            .iter()
            .all(|d| epochs(&d.db, "ios") == [1] && titles(&d.db, "bugs").len() == 1)
    });

    // The last one leaves the team.
    let leaver = format!("dev{}", DEVICES - 1);
    meta.update_user(&leaver, Some(&[]), None).unwrap();
    let (remaining, left) = devices.split_at(DEVICES - 1);
    until("every remaining device to hold epoch 2", || {
        remaining.iter().all(|d| epochs(&d.db, "ios") == [1, 2])
    });
    let (envelopes, previous) = meta.e2e_keys("bugs").unwrap();
    let epoch2: Vec<_> = envelopes.iter().filter(|e| e.epoch == 2).collect();
    assert_eq!(
        epoch2.len(),
        DEVICES - 1,
        "one wrapped key per remaining device"
    );
    let recipients: std::collections::BTreeSet<&Vec<u8>> =
        epoch2.iter().map(|e| &e.recipient).collect();
    assert_eq!(recipients.len(), DEVICES - 1);
    assert_eq!(previous.len(), 1, "epoch 1 sealed under epoch 2, once");
    assert_eq!(epochs(&left[0].db, "ios"), [1]);
    for d in devices {
        d.sync.stop();
    }
}

#[test]
fn a_canary_sealed_on_a_device_never_crosses_the_wire_readable_while_a_smart_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let alice = device(dir.path(), &server, "alice");
    let carol = device(dir.path(), &server, "carol");
    alice
        .db
        .insert(
            "bugs",
            fields! { "teamId" => "ios", "title" => format!("{SEALED_CANARY} in a title") },
        )
        .unwrap();
    carol
        .db
        .insert(
            "reports",
            fields! { "title" => format!("{SMART_CANARY} in a report") },
        )
        .unwrap();
    until("carol to read the bug", || {
        titles(&carol.db, "bugs").len() == 1
    });
    alice.sync.wait_synced(WAIT, |_| {}).unwrap();
    carol.sync.wait_synced(WAIT, |_| {}).unwrap();

    // Everything the server sends a device of carol's, who reads both collections, after
    // the secure channel: the plaintext of each message, uncompressed.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw = RawDevice::new();
    let token = blazedb_testkit::server::token(&server, "carol");
    let address = server.local_addr();
    let messages = runtime.block_on(async {
        let mut session = RawSession::enrolled(address, "bugs", &raw, token).await;
        plaintexts(&mut session, Duration::from_secs(1)).await
    });
    assert!(
        messages.iter().any(|m| contains(m, SMART_CANARY)),
        "the capture must see the readable report"
    );
    assert!(
        messages.iter().any(|m| contains(m, "ios")),
        "and the bug's routing field"
    );
    assert!(
        !messages.iter().any(|m| contains(m, SEALED_CANARY)),
        "a sealed value crossed the wire readable"
    );
    for d in [alice, carol] {
        d.sync.stop();
    }
}

#[test]
fn a_value_sealed_under_another_teams_key_is_refused_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let bob = device(dir.path(), &server, "bob");
    let id = bob
        .db
        .insert(
            "bugs",
            fields! { "teamId" => "android", "title" => "android's" },
        )
        .unwrap();
    bob.sync.wait_synced(WAIT, |_| {}).unwrap();
    let hosted = server.meta().open_database("bugs").unwrap();
    let androids = hosted.get("bugs", id).unwrap().unwrap().fields["title"].clone();
    // An ios developer files an ios bug whose title is sealed under android's key.
    let record = Uuid::now_v7();
    let (_, rejected) = raw_insert(
        &server,
        "erin",
        record,
        fields! { "teamId" => "ios", "title" => androids },
    );
    assert_eq!(rejected[0].code, RejectCode::StaleKey);
    assert!(
        rejected[0]
            .reason
            .contains("of scope \"android\", but the record is in scope \"ios\""),
        "{}",
        rejected[0].reason
    );
    bob.sync.stop();
}

#[test]
fn a_device_that_seals_a_collection_never_sends_it_readable_even_to_a_server_that_says_smart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    // The application seals its notes; the server's rules do not declare them (smart).
    server
        .meta()
        .set_access_rules(
            "bugs",
            &format!("{RULES}\n[roles.developer.notes]\nread = {{}}\nwrite = {{}}\n"),
        )
        .unwrap();
    let db = Database::create(dir.path().join("alice.blazedb"), "device password").unwrap();
    let options = fast()
        .enroll(blazedb_testkit::server::token(&server, "alice"))
        .sealed("notes", Vec::<String>::new());
    let sync = db
        .enable_sync(RemoteNode::new(server.url(), "bugs"), options)
        .unwrap();
    let id = db
        .insert(
            "notes",
            fields! { "text" => format!("{SEALED_CANARY} private") },
        )
        .unwrap();
    sync.wait_synced(WAIT, |_| {}).unwrap();
    let hosted = server.meta().open_database("bugs").unwrap();
    let stored = hosted.get("notes", id).unwrap().unwrap();
    assert!(matches!(stored.fields.get("text"), Some(Value::Bytes(_))));
    assert!(!server_dump(&server).contains(SEALED_CANARY));
    // The device still reads its own note.
    assert_eq!(
        db.get("notes", id).unwrap().unwrap().fields.get("text"),
        Some(&Value::from(format!("{SEALED_CANARY} private")))
    );
    sync.stop();
}

#[test]
fn a_device_whose_last_write_was_sealed_reconnects_without_being_taken_for_a_copy() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let alice = device(dir.path(), &server, "alice");
    let carol = device(dir.path(), &server, "carol");
    alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "before" })
        .unwrap();
    alice.sync.wait_synced(WAIT, |_| {}).unwrap();
    // The server holds her operation sealed, she holds it readable: their digests differ.
    alice.sync.stop();
    let alice = resume(alice.db, &server);
    alice
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "after" })
        .unwrap();
    until("carol to read both", || {
        titles(&carol.db, "bugs") == ["after", "before"]
    });
    let status = alice.sync.status();
    assert!(status.last_error.is_none(), "{:?}", status.last_error);
    for d in [alice, carol] {
        d.sync.stop();
    }
}

#[test]
fn a_sync_policy_that_filters_on_a_sealed_field_is_refused_with_the_reason_and_one_on_the_routing_field_works()
 {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let carol = device(dir.path(), &server, "carol");
    carol
        .db
        .insert("bugs", fields! { "teamId" => "ios", "title" => "ios bug" })
        .unwrap();
    carol
        .db
        .insert(
            "bugs",
            fields! { "teamId" => "android", "title" => "android bug" },
        )
        .unwrap();
    carol.sync.wait_synced(WAIT, |_| {}).unwrap();

    let sync_with = |user: &str, filter: &str| {
        let db = Database::create(
            dir.path().join(format!("{user}-{}.blazedb", filter.len())),
            "device password",
        )
        .unwrap();
        let policy = blazedb_sync::SyncPolicy::new().filter_json(filter).unwrap();
        let options = fast()
            .enroll(blazedb_testkit::server::token(&server, user))
            .policy(policy);
        let sync = db
            .enable_sync(RemoteNode::new(server.url(), "bugs"), options)
            .unwrap();
        Device { db, sync }
    };
    // A manager asks only for bugs titled so: the server cannot read titles.
    let by_title = sync_with("carol", r#"{"title": "ios bug"}"#);
    until("the refusal", || {
        by_title
            .sync
            .status()
            .last_error
            .is_some_and(|e| e.contains("seals end to end"))
    });
    let error = by_title.sync.status().last_error.unwrap();
    assert!(error.contains("\"title\""), "{error}");
    assert!(titles(&by_title.db, "bugs").is_empty());
    // On the routing field it works.
    let by_team = sync_with("carol", r#"{"teamId": "ios"}"#);
    until("the ios bug only", || {
        titles(&by_team.db, "bugs") == ["ios bug"]
    });
    for d in [carol, by_title, by_team] {
        d.sync.stop();
    }
}
