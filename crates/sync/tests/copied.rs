//! A database file copied to another machine and written in both places, met by a peer that
//! synced with the original: the peer refuses the copy with `CopiedDatabase` before anything
//! of it is stored, and after `reidentify` all three converge with every write kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;
use std::time::{Duration, Instant};

use blazedb_core::{Database, Value, fields};
use blazedb_protocol::CloseCode;
use blazedb_sync::{ConnectOptions, ConnectionId, InMemoryRelay, SyncEngine};

const WAIT: Duration = Duration::from_secs(20);

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects two engines of database "notes" through an in-memory relay.
fn link(a: &SyncEngine, b: &SyncEngine) -> (ConnectionId, ConnectionId) {
    let (x, y) = InMemoryRelay::pair();
    (
        a.connect(x, ConnectOptions::new("notes")).unwrap(),
        b.connect(y, ConnectOptions::new("notes")).unwrap(),
    )
}

fn titles(db: &Database) -> Vec<String> {
    let mut titles: Vec<String> = db
        .query("notes")
        .run()
        .unwrap()
        .into_iter()
        .map(|r| match r.get("title") {
            Some(Value::String(s)) => s.clone(),
            other => panic!("title {other:?}"),
        })
        .collect();
    titles.sort();
    titles
}

fn open(path: &Path) -> Database {
    Database::open(path, "pw").unwrap()
}

#[test]
fn a_peer_refuses_a_copied_file_and_after_reidentify_all_converge_with_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let laptop_path = dir.path().join("laptop.db");
    let desktop_path = dir.path().join("desktop.db");
    let laptop = Database::create(&laptop_path, "pw").unwrap();
    laptop
        .insert("notes", fields! {"title" => "before the copy"})
        .unwrap();
    let peer = Database::in_memory().unwrap();
    let laptop_engine = SyncEngine::start(laptop.clone(), "notes").unwrap();
    let peer_engine = SyncEngine::start(peer.clone(), "notes").unwrap();
    link(&laptop_engine, &peer_engine);
    wait_for("the first record at the peer", || {
        peer.count("notes").unwrap() == 1
    });
    // Copied while closed, as a user copies a file (a live file's last commits may still be
    // in its write-ahead log).
    drop(laptop_engine);
    drop(laptop);
    std::fs::copy(&laptop_path, &desktop_path).unwrap();
    let laptop = open(&laptop_path);
    let laptop_engine = SyncEngine::start(laptop.clone(), "notes").unwrap();
    link(&laptop_engine, &peer_engine);
    let desktop = open(&desktop_path);
    assert_eq!(desktop.node_id(), laptop.node_id());

    laptop
        .insert("notes", fields! {"title" => "laptop"})
        .unwrap();
    desktop
        .insert("notes", fields! {"title" => "desktop"})
        .unwrap();
    wait_for("the laptop's write at the peer", || {
        peer.count("notes").unwrap() == 2
    });

    let desktop_engine = SyncEngine::start(desktop.clone(), "notes").unwrap();
    let (at_desktop, at_peer) = link(&desktop_engine, &peer_engine);
    let closed = |engine: &SyncEngine, id| {
        engine
            .connection_status(id)
            .unwrap()
            .filter(|s| !s.connected && s.closed_reason.is_some())
    };
    wait_for("the copy to be refused", || {
        closed(&desktop_engine, at_desktop).is_some() && closed(&peer_engine, at_peer).is_some()
    });
    let seen = closed(&peer_engine, at_peer).unwrap();
    let code = seen.close_code.or(seen.peer_close_code);
    assert_eq!(code, Some(CloseCode::CopiedDatabase), "{seen:?}");
    let reason = seen.closed_reason.unwrap();
    assert!(reason.contains("copy"), "{reason}");
    assert!(reason.contains("blazedb reidentify"), "{reason}");
    let seen = closed(&desktop_engine, at_desktop).unwrap();
    assert_eq!(
        seen.close_code.or(seen.peer_close_code),
        Some(CloseCode::CopiedDatabase),
        "{seen:?}"
    );
    // Neither side took anything of the other.
    assert_eq!(titles(&peer), ["before the copy", "laptop"]);
    assert_eq!(titles(&desktop), ["before the copy", "desktop"]);

    // The repair: the copy takes a new identity, then syncs as any other node.
    desktop_engine.disconnect(at_desktop).unwrap();
    peer_engine.disconnect(at_peer).unwrap();
    drop(desktop_engine);
    let done = desktop.reidentify().unwrap();
    // The file was copied before any peer confirmed its first write (confirmations come with
    // a peer's Pull, when a connection starts): both writes go again under the new id.
    assert_eq!((done.confirmed, done.renamed), (0, 2));
    let desktop = open(&desktop_path);
    let desktop_engine = SyncEngine::start(desktop.clone(), "notes").unwrap();
    link(&desktop_engine, &peer_engine);
    let all = ["before the copy", "desktop", "laptop"];
    wait_for("all three in step", || {
        titles(&laptop) == all && titles(&peer) == all && titles(&desktop) == all
    });
    assert_eq!(
        laptop.content_hash().unwrap(),
        desktop.content_hash().unwrap()
    );
}
