//! Reads and writes enforced by a real server over WebSocket on 127.0.0.1 (docs/access.md): the seed's
//! bug tracker, where each device ends with exactly the records its rules let it read, as
//! they let it read them, and every change of a record, a user's teams or the rules reaches
//! connected devices as a small difference.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use blazedb_access::{ReadScope, Rules, SecurityContext};
use blazedb_core::{ChangeKind, Database, Fields, PurgeReason, RejectCode, Uuid, Value, fields};
use blazedb_protocol::{CloseCode, Message};
use blazedb_server::{MasterKey, Server, ServerConfig, ServerHandle};
use blazedb_sync::remote::{RemoteNode, RemoteOptions, RemoteSync, SyncExt};

mod common;

use common::KEY;
use common::raw::{RawDevice, RawSession, contains, plaintexts};
const WAIT: Duration = Duration::from_secs(20);
const COLLECTIONS: [&str; 3] = ["bugs", "comments", "reports"];

/// docs/access.md's worked example, plus an administrator who reads and writes everything.
const RULES: &str = r#"
[roles.developer.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }
hidden_fields = ["auditLog"]

[roles.developer.comments]
read  = {}
write = { author = "$user" }

[roles.manager.bugs]
read  = { teamId = { "$in" = "$teams" } }
write = { teamId = { "$in" = "$teams" } }

[roles.manager.reports]
read  = {}
write = false

[roles.admin.bugs]
read = {}
write = {}

[roles.admin.comments]
read = {}
write = {}

[roles.admin.reports]
read = {}
write = {}
"#;

fn start(dir: &Path) -> ServerHandle {
    let config = ServerConfig {
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    };
    let server = Server::start_with_key(config, MasterKey::from_hex(KEY, "test").unwrap()).unwrap();
    let meta = server.meta();
    meta.create_database("bugs").unwrap();
    meta.add_user("root", &[], Some("admin")).unwrap();
    meta.add_user("alice", &["ios".into()], Some("developer"))
        .unwrap();
    meta.add_user("bob", &["android".into()], Some("developer"))
        .unwrap();
    meta.add_user("carol", &["ios".into(), "android".into()], Some("manager"))
        .unwrap();
    meta.set_access_rules("bugs", RULES).unwrap();
    server
}

struct Device {
    user: &'static str,
    db: Database,
    sync: RemoteSync,
}

fn device(dir: &Path, server: &ServerHandle, user: &'static str) -> Device {
    let db = Database::create(dir.join(format!("{user}.blazedb")), "device password").unwrap();
    let options = fast().enroll(blazedb_testkit::server::token(server, user));
    let sync = db
        .enable_sync(RemoteNode::new(server.url(), "bugs"), options)
        .unwrap();
    Device { user, db, sync }
}

/// Reconnects quickly after a failure.
fn fast() -> RemoteOptions {
    RemoteOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RemoteOptions::default()
    }
}

/// A device of `user` syncing `db` again after its `sync.stop()` (enrolled: no token).
fn reconnect(user: &'static str, db: Database, server: &ServerHandle) -> Device {
    let sync = db
        .enable_sync(RemoteNode::new(server.url(), "bugs"), fast())
        .unwrap();
    Device { user, db, sync }
}

type Content = BTreeMap<(String, Uuid), Fields>;

/// Every record, as an application reads it (a null field is no field).
fn content(db: &Database) -> Content {
    let mut out = BTreeMap::new();
    for collection in COLLECTIONS {
        for mut record in db.fetch_all(collection).unwrap() {
            record.fields.retain(|_, v| *v != Value::Null);
            out.insert((collection.to_owned(), record.id), record.fields);
        }
    }
    out
}

/// What `user` may read of `everything`, computed by the test from the rules in force and
/// the user as the server stores them.
fn reference(server: &ServerHandle, user: &str, everything: &Content) -> Content {
    let rules: Rules = server.meta().access_rules("bugs").unwrap().unwrap();
    let stored = server.meta().user(user).unwrap().unwrap();
    let ctx = SecurityContext::new(user, stored.teams.clone(), stored.role.clone(), "any");
    let scope = ReadScope::from_rules(&rules, &ctx);
    everything
        .iter()
        .filter(|((c, id), fields)| scope.may_read(c, *id, fields))
        .map(|((c, id), fields)| {
            let mut fields = fields.clone();
            fields.retain(|name, _| !scope.hides(c, name));
            ((c.clone(), *id), fields)
        })
        .collect()
}

/// Waits until every device holds exactly what the rules let it read of the admin's copy.
fn assert_everyone_holds_their_scope(server: &ServerHandle, admin: &Device, devices: &[&Device]) {
    // The devices' own writes reach the server first (a device back from offline pushes
    // them), so that the admin's copy, taken next, has them.
    for device in devices {
        device.sync.wait_synced(WAIT, |_| {}).unwrap();
    }
    admin.sync.wait_synced(WAIT, |_| {}).unwrap();
    let everything = content(&admin.db);
    let deadline = Instant::now() + WAIT;
    for device in devices {
        let expected = reference(server, device.user, &everything);
        loop {
            let held = content(&device.db);
            if held == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} holds {} records, expected {}: {:?}",
                device.user,
                held.len(),
                expected.len(),
                held.keys()
                    .filter(|k| !expected.contains_key(*k))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn bug(team: &str, n: i64) -> Fields {
    fields! {
        "teamId" => team,
        "title" => format!("bug {n}"),
        "auditLog" => format!("CANARY-{n}"),
    }
}

#[test]
fn each_device_of_the_bug_tracker_holds_exactly_what_its_rules_allow_as_things_change() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let root = device(dir.path(), &server, "root");
    let mut bugs = Vec::new();
    for n in 0..20 {
        let team = ["ios", "android", "web"][n as usize % 3];
        bugs.push(root.db.insert("bugs", bug(team, n)).unwrap());
    }
    for n in 0..4 {
        root.db
            .insert(
                "comments",
                fields! { "author" => "bob", "text" => format!("c{n}") },
            )
            .unwrap();
    }
    root.db.insert("reports", fields! { "week" => 1 }).unwrap();
    root.sync.wait_synced(WAIT, |_| {}).unwrap();

    let alice = device(dir.path(), &server, "alice");
    let bob = device(dir.path(), &server, "bob");
    let carol = device(dir.path(), &server, "carol");
    assert_everyone_holds_their_scope(&server, &root, &[&alice, &bob, &carol]);
    let held = content(&alice.db);
    assert_eq!(held.len(), 7 + 4, "alice: the ios bugs and every comment");
    assert!(held.values().all(|f| !f.contains_key("auditLog")));
    assert_eq!(
        content(&carol.db).len(),
        14 + 1,
        "carol: both teams' bugs and the report"
    );
    assert!(
        content(&carol.db)
            .values()
            .any(|f| f.contains_key("auditLog")),
        "managers see the audit log"
    );

    // A bug moved from ios to android leaves Alice (told why) and reaches Bob once.
    let watch = alice.db.subscribe("bugs");
    let moved = bugs[0];
    root.db
        .update("bugs", moved, fields! { "teamId" => "android" })
        .unwrap();
    assert_everyone_holds_their_scope(&server, &root, &[&alice, &bob, &carol]);
    let mut purged = None;
    while let Some(commit) = watch.recv_timeout(Duration::from_secs(5)) {
        if let Some(change) = commit.changes.iter().find(|c| c.id == moved) {
            purged = Some(change.kind);
            break;
        }
    }
    assert_eq!(purged, Some(ChangeKind::Purged(PurgeReason::RecordChanged)));
    assert_eq!(
        bob.db.get("bugs", moved).unwrap().unwrap().get("title"),
        Some(&"bug 0".into())
    );

    // Alice joins android, live: its bugs arrive, nothing else; then she leaves ios.
    server
        .meta()
        .update_user("alice", Some(&["ios".into(), "android".into()]), None)
        .unwrap();
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);
    assert_eq!(content(&alice.db).len(), 14 + 4);
    server
        .meta()
        .update_user("alice", Some(&["android".into()]), None)
        .unwrap();
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);
    assert_eq!(
        content(&alice.db).len(),
        8 + 4,
        "the android bugs, with the moved one"
    );

    // New rules, live: developers may read the audit log now; comments are gone for them.
    let opened = RULES
        .replace("hidden_fields = [\"auditLog\"]\n", "")
        .replace(
            "[roles.developer.comments]\nread  = {}",
            "[roles.developer.comments]\nread  = false",
        );
    server.meta().set_access_rules("bugs", &opened).unwrap();
    assert_everyone_holds_their_scope(&server, &root, &[&alice, &bob, &carol]);
    assert!(
        content(&alice.db)
            .values()
            .all(|f| f.contains_key("auditLog"))
    );
    assert_eq!(content(&bob.db).len(), 8);

    for device in [root, alice, bob, carol] {
        device.sync.stop();
    }
}

#[test]
fn a_device_that_reconnects_gets_what_entered_its_scope_and_loses_what_left_while_away() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let root = device(dir.path(), &server, "root");
    for n in 0..60 {
        let team = if n % 2 == 0 { "ios" } else { "android" };
        root.db.insert("bugs", bug(team, n)).unwrap();
    }
    let alice = device(dir.path(), &server, "alice");
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);
    alice.sync.stop();
    // While Alice is away she changes teams, and bugs are added to both.
    server
        .meta()
        .update_user("alice", Some(&["android".into()]), None)
        .unwrap();
    for n in 60..70 {
        let team = if n % 2 == 0 { "ios" } else { "android" };
        root.db.insert("bugs", bug(team, n)).unwrap();
    }
    let alice = reconnect(alice.user, alice.db, &server);
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);
    assert_eq!(content(&alice.db).len(), 35);

    // Offline again, Alice edits an android bug and adds a comment; meanwhile she moves back
    // to ios. The purge of android takes only android's records.
    alice.sync.stop();
    let android_bug = content(&alice.db)
        .keys()
        .find(|(c, _)| c == "bugs")
        .map(|(_, id)| *id)
        .unwrap();
    alice
        .db
        .update("bugs", android_bug, fields! { "title" => "edited offline" })
        .unwrap();
    let comment = alice
        .db
        .insert(
            "comments",
            fields! { "author" => "alice", "text" => "written offline" },
        )
        .unwrap();
    server
        .meta()
        .update_user("alice", Some(&["ios".into()]), None)
        .unwrap();
    let alice = reconnect(alice.user, alice.db, &server);
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);
    // The removed team's records are gone from her file and her comment is on the server.
    // Her edit of an android bug is no longer hers to make: refused, undone, in her inbox.
    assert!(alice.db.get("bugs", android_bug).unwrap().is_none());
    assert_eq!(
        root.db
            .get("comments", comment)
            .unwrap()
            .unwrap()
            .get("text"),
        Some(&"written offline".into())
    );
    assert_ne!(
        root.db
            .get("bugs", android_bug)
            .unwrap()
            .unwrap()
            .get("title"),
        Some(&"edited offline".into())
    );
    let inbox = alice.db.replication().rejections().unwrap();
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].op.record, android_bug);
    assert_eq!(inbox[0].code, RejectCode::Forbidden);
    root.sync.stop();
    alice.sync.stop();
}

#[test]
fn cross_team_writes_are_refused_undone_everywhere_and_listed_while_valid_ones_apply() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let root = device(dir.path(), &server, "root");
    let ios = root.db.insert("bugs", bug("ios", 1)).unwrap();
    let android = root.db.insert("bugs", bug("android", 2)).unwrap();
    let bobs = root
        .db
        .insert(
            "comments",
            fields! { "author" => "bob", "text" => "by bob" },
        )
        .unwrap();
    let alice = device(dir.path(), &server, "alice");
    let bob = device(dir.path(), &server, "bob");
    assert_everyone_holds_their_scope(&server, &root, &[&alice, &bob]);

    // One transaction of Alice's, so one batch: two valid writes among four refused ones.
    alice
        .db
        .transaction(|tx| {
            tx.update("bugs", ios, fields! { "title" => "crash on start" })?;
            tx.update("bugs", ios, fields! { "auditLog" => "FORGED" })?;
            tx.update("bugs", ios, fields! { "teamId" => "android" })?;
            tx.insert("reports", fields! { "week" => 9 })?;
            tx.update("comments", bobs, fields! { "text" => "edited by alice" })?;
            tx.insert(
                "comments",
                fields! { "author" => "alice", "text" => "mine" },
            )?;
            Ok(())
        })
        .unwrap();
    alice.sync.wait_synced(WAIT, |_| {}).unwrap();
    assert_everyone_holds_their_scope(&server, &root, &[&alice, &bob]);

    let everything = content(&root.db);
    let bug_now = &everything[&("bugs".to_owned(), ios)];
    assert_eq!(bug_now["title"], Value::from("crash on start"));
    assert_eq!(bug_now["teamId"], Value::from("ios"));
    assert_eq!(bug_now["auditLog"], Value::from("CANARY-1"));
    assert_eq!(everything.keys().filter(|(c, _)| c == "reports").count(), 0);
    assert_eq!(
        everything[&("comments".to_owned(), bobs)]["text"],
        Value::from("by bob")
    );
    assert_eq!(
        everything.keys().filter(|(c, _)| c == "comments").count(),
        2
    );
    assert!(bob.db.get("bugs", android).unwrap().is_some());

    let inbox = alice.db.replication().rejections().unwrap();
    let mut codes: Vec<RejectCode> = inbox.iter().map(|r| r.code).collect();
    codes.sort_by_key(|c| c.code());
    assert_eq!(
        codes,
        [
            RejectCode::ReadOnly,
            RejectCode::Forbidden,
            RejectCode::Forbidden,
            RejectCode::HiddenField
        ]
    );
    assert!(inbox.iter().all(|r| !r.reason.contains("CANARY")));
    for device in [root, alice, bob] {
        device.sync.stop();
    }
}

#[test]
fn a_canary_in_a_hidden_field_never_reaches_the_device_in_any_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let root = device(dir.path(), &server, "root");
    let ios = root.db.insert("bugs", bug("ios", 7)).unwrap();
    root.db.insert("bugs", bug("android", 8)).unwrap();
    root.sync.wait_synced(WAIT, |_| {}).unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let raw = RawDevice::new();
    let token = blazedb_testkit::server::token(&server, "alice");
    let address = server.local_addr();
    let (first, second) = runtime.block_on(async {
        // The device asks for no compression, so what the server sends is readable here.
        let mut session = RawSession::enrolled(address, "bugs", &raw, token).await;
        let first = plaintexts(&mut session, Duration::from_secs(1)).await;
        root.db
            .update(
                "bugs",
                ios,
                fields! { "title" => "renamed", "auditLog" => "CANARY-UPDATED" },
            )
            .unwrap();
        let second = plaintexts(&mut session, Duration::from_secs(1)).await;
        (first, second)
    });
    let all: Vec<&Vec<u8>> = first.iter().chain(&second).collect();
    assert!(
        all.iter().any(|m| contains(m, "bug 7")),
        "the ios bug arrived"
    );
    assert!(
        second.iter().any(|m| contains(m, "renamed")),
        "and its update"
    );
    assert!(
        !all.iter().any(|m| contains(m, "bug 8")),
        "not the android one"
    );
    assert!(
        !all.iter().any(|m| contains(m, "CANARY")),
        "a hidden field's value reached the device"
    );
    root.sync.stop();
}

#[test]
fn a_device_that_forges_purges_states_or_a_bad_policy_is_closed_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let root = device(dir.path(), &server, "root");
    let ios = root.db.insert("bugs", bug("ios", 1)).unwrap();
    root.sync.wait_synced(WAIT, |_| {}).unwrap();
    let before = content(&root.db);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let address = server.local_addr();
    let forged_state = blazedb_core::SnapshotRecord {
        collection: "bugs".into(),
        id: ios,
        state: blazedb_core::RecordState::inserted(
            fields! { "teamId" => "android" },
            blazedb_core::Stamp {
                lamport: u64::from(u32::MAX),
                node: blazedb_core::NodeId::random(),
            },
        ),
    };
    let forgeries = [
        (
            Message::Purge {
                reason: PurgeReason::AccessChanged,
                records: vec![blazedb_protocol::RecordKey::new("bugs", ios)],
            },
            CloseCode::Unauthorized,
        ),
        (
            Message::Records {
                records: vec![forged_state],
            },
            CloseCode::Unauthorized,
        ),
        (
            Message::Policy {
                only: vec![],
                except: vec![],
                filter: r#"{"teamId": {"$where": "1"}}"#.into(),
                exclude_fields: vec![],
            },
            CloseCode::ProtocolError,
        ),
    ];
    for (forgery, expected) in forgeries {
        let raw = RawDevice::new();
        let token = blazedb_testkit::server::token(&server, "alice");
        let (code, reason) = runtime.block_on(async {
            let mut session = RawSession::enrolled(address, "bugs", &raw, token).await;
            session.send(&forgery).await;
            session.close_from_server().await
        });
        assert_eq!(code, expected, "{reason}");
    }
    // Nothing changed, and the server goes on serving.
    let alice = device(dir.path(), &server, "alice");
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);
    assert_eq!(content(&root.db), before);
    root.db
        .update("bugs", ios, fields! { "title" => "still served" })
        .unwrap();
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);
    for device in [root, alice] {
        device.sync.stop();
    }
}

#[test]
fn a_team_granted_brings_about_its_share_of_bytes_and_a_team_removed_costs_little_per_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    server
        .meta()
        .add_user("dana", &["android".into()], Some("developer"))
        .unwrap();
    let root = device(dir.path(), &server, "root");
    // Each with a description of its own (random, so compression cannot hide what is sent).
    root.db
        .insert_many(
            "bugs",
            (0..400).map(|n| {
                let mut fields = bug(if n % 2 == 0 { "ios" } else { "android" }, n);
                let text: String = (0..64)
                    .map(|_| format!("{:02x}", rand::random::<u8>()))
                    .collect();
                fields.insert("description".into(), text.into());
                fields
            }),
        )
        .unwrap();
    let alice = device(dir.path(), &server, "alice");
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);

    // The android team's share: what a device of only that team receives to sync it, less
    // what any session costs (a device of a team without records).
    server
        .meta()
        .add_user("erin", &["web".into()], Some("developer"))
        .unwrap();
    let erin = device(dir.path(), &server, "erin");
    let dana = device(dir.path(), &server, "dana");
    assert_everyone_holds_their_scope(&server, &root, &[&dana, &erin]);
    let setup = erin.sync.status().bytes_received;
    let share = dana.sync.status().bytes_received - setup;

    let before = alice.sync.status().bytes_received;
    server
        .meta()
        .update_user("alice", Some(&["ios".into(), "android".into()]), None)
        .unwrap();
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);
    let granted = alice.sync.status().bytes_received - before;
    eprintln!(
        "granted android: {granted} bytes; the team's share: {share} bytes (+{setup} per session)"
    );
    assert!(
        granted.abs_diff(share) * 10 <= share,
        "granted {granted} bytes, the share is {share}"
    );

    let before = alice.sync.status().bytes_received;
    server
        .meta()
        .update_user("alice", Some(&["android".into()]), None)
        .unwrap();
    assert_everyone_holds_their_scope(&server, &root, &[&alice]);
    let removed = alice.sync.status().bytes_received - before;
    eprintln!("removed ios: {removed} bytes for 200 records");
    assert!(removed <= 64 * 200, "{removed} bytes to purge 200 records");
    for device in [root, alice, dana, erin] {
        device.sync.stop();
    }
}
