//! Devices syncing through a real server (started in this process with `Server::start_with_key`)
//! over WebSocket on 127.0.0.1, with the device side of `blazedb-sync`: enrollment with
//! one-time tokens, refusals, revocation, shutdown and restart, and nothing readable on disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blazedb_core::{Database, fields};
use blazedb_protocol::secure::StaticKeys;
use blazedb_protocol::{Capabilities, CloseCode, Message, PROTOCOL_VERSION};
use blazedb_server::{MasterKey, Server, ServerConfig, ServerHandle, TlsConfig};
use blazedb_sync::SyncEngine;
use blazedb_sync::remote::{
    RemoteError, RemoteNode, RemoteOptions, RemoteState, RemoteSync, SyncExt, connect_handshake,
    node_keys, websocket_config,
};

mod common;

use common::KEY;
const WAIT: Duration = Duration::from_secs(20);

fn config(data: &Path) -> ServerConfig {
    ServerConfig {
        data_dir: data.to_owned(),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..ServerConfig::default()
    }
}

fn start(config: ServerConfig) -> ServerHandle {
    Server::start_with_key(config, MasterKey::from_hex(KEY, "test").unwrap()).unwrap()
}

/// A server with user "ada" and database "bugs".
fn server(dir: &Path) -> ServerHandle {
    let server = start(config(&dir.join("data")));
    server
        .meta()
        .add_user("ada", &["core".into()], None)
        .unwrap();
    server.meta().create_database("bugs").unwrap();
    server
}

fn token(server: &ServerHandle) -> String {
    blazedb_testkit::server::token(server, "ada")
}

fn device(dir: &Path, name: &str) -> Database {
    Database::create(dir.join(format!("{name}.blazedb")), "device password").unwrap()
}

fn fast() -> RemoteOptions {
    RemoteOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RemoteOptions::default()
    }
}

fn sync(db: &Database, server: &ServerHandle, options: RemoteOptions) -> RemoteSync {
    db.enable_sync(RemoteNode::new(server.url(), "bugs"), options)
        .unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_enrolled_devices_sync_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let alice = device(dir.path(), "alice");
    let bob = device(dir.path(), "bob");
    let a = sync(&alice, &server, fast().enroll(token(&server)));
    let ids = alice
        .insert_many("bugs", (0..100).map(|i| fields! { "n" => i }))
        .unwrap();
    a.wait_synced(WAIT, |_| {}).unwrap();

    let b = sync(&bob, &server, fast().enroll(token(&server)));
    b.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(bob.count("bugs").unwrap(), 100);
    bob.update("bugs", ids[0], fields! { "n" => -1 }).unwrap();
    wait_until("alice sees bob's update", || {
        alice.get("bugs", ids[0]).unwrap().unwrap().get("n") == Some(&(-1).into())
    });
    assert_eq!(alice.content_hash().unwrap(), bob.content_hash().unwrap());

    let devices = server.meta().list_devices().unwrap();
    assert_eq!(devices.len(), 2);
    assert!(devices.iter().all(|d| d.user == "ada" && !d.revoked));
    assert_eq!(server.connections(), 2);
    assert_eq!(server.databases(), 1);
    a.stop();
    b.stop();
    wait_until("the connections are gone", || server.connections() == 0);
}

/// A device that synced 20 inserts, then went offline and wrote 30 more and an update: its
/// session with the server has ended.
fn offline_device_with_unsynced_writes(dir: &Path, server: &ServerHandle) -> Database {
    let alice = device(dir, "alice");
    let a = sync(&alice, server, fast().enroll(token(server)));
    alice
        .insert_many("bugs", (0..20).map(|i| fields! { "n" => i }))
        .unwrap();
    a.wait_synced(WAIT, |_| {}).unwrap();
    a.stop();
    wait_until("alice is disconnected", || server.connections() == 0);
    let offline = alice
        .insert_many("bugs", (20..50).map(|i| fields! { "n" => i }))
        .unwrap();
    alice
        .update("bugs", offline[0], fields! { "n" => -1 })
        .unwrap();
    alice
}

#[test]
fn a_device_that_compacted_its_log_while_offline_still_sends_every_write_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let alice = offline_device_with_unsynced_writes(dir.path(), &server);
    // Compaction while no connection is open: only what the server durably has may go.
    let engine = SyncEngine::start(alice.clone(), "bugs").unwrap();
    let start = engine.compact_oplog(0).unwrap();
    drop(engine);
    let head = alice.replication().oplog_head().unwrap();
    assert!(
        start > 0 && start < head,
        "the synced entry goes, the unsynced ones stay: start {start}, head {head}"
    );

    let a = sync(&alice, &server, fast());
    a.wait_synced(WAIT, |_| {}).unwrap();
    let on_server = server.engine_connections("bugs").unwrap().unwrap();
    assert_eq!(on_server.len(), 1);
    assert_eq!(
        (on_server[0].ops_applied, on_server[0].ops_duplicate),
        (31, 0),
        "the server merges each offline write once"
    );
    let bob = device(dir.path(), "bob");
    let b = sync(&bob, &server, fast().enroll(token(&server)));
    b.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(bob.count("bugs").unwrap(), 50);
    assert_eq!(bob.content_hash().unwrap(), alice.content_hash().unwrap());
    assert_eq!(
        bob.replication().oplog_ops_through(u64::MAX).unwrap(),
        51,
        "every write of alice, once"
    );
    assert_eq!(b.engine().ops_duplicate(), 0);
    a.stop();
    b.stop();
}

#[test]
fn a_device_whose_log_was_compacted_past_the_server_says_why_and_stops_retrying() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let alice = offline_device_with_unsynced_writes(dir.path(), &server);
    // Compaction by hand, past what the server has: those writes can never reach it.
    let head = alice.replication().oplog_head().unwrap();
    alice.replication().compact_oplog(head).unwrap();

    let a = sync(&alice, &server, fast());
    wait_until("alice gives up", || a.status().state == RemoteState::Failed);
    std::thread::sleep(Duration::from_millis(300));
    let status = a.status();
    assert_eq!(status.state, RemoteState::Failed);
    assert_eq!(status.sessions, 1, "no retry: it cannot help");
    let error = status.last_error.unwrap();
    assert!(
        error.contains("compacted") && error.contains("reconnecting cannot help"),
        "{error}"
    );
    a.stop();
}

#[test]
fn a_token_enrolls_only_one_device_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let token = token(&server);
    let first = device(dir.path(), "first");
    let s1 = sync(&first, &server, fast().enroll(token.clone()));
    s1.wait_synced(WAIT, |_| {}).unwrap();

    let second = device(dir.path(), "second");
    let s2 = sync(&second, &server, fast().enroll(token));
    let err = s2.wait_synced(WAIT, |_| {}).unwrap_err();
    assert!(err.to_string().contains("already been used"), "{err}");
    assert_eq!(s2.status().state, RemoteState::Failed);
    assert_eq!(server.meta().list_devices().unwrap().len(), 1);
}

#[test]
fn an_expired_token_is_refused_over_the_wire() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let token = server
        .meta()
        .create_token("ada", Duration::from_millis(1))
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_millis(10));
    let db = device(dir.path(), "late");
    let s = sync(&db, &server, fast().enroll(token));
    let err = s.wait_synced(WAIT, |_| {}).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(server.meta().list_devices().unwrap().is_empty());
}

/// Connects with `keys` to `/sync/bugs`, completes the Noise handshake, sends `first` and
/// returns what the server answers.
fn raw_session(server: &ServerHandle, keys: &StaticKeys, first: Message) -> RemoteError {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let server_key = server.meta().server_keys().public().to_vec();
    let url = format!("{}/sync/bugs", server.url());
    let addr = server.local_addr();
    runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, tcp, Some(websocket_config()))
                .await
                .unwrap();
        let mut session = connect_handshake(ws, keys, "bugs", &server_key, WAIT)
            .await
            .unwrap();
        session.send(&first).await.unwrap();
        session.recv().await.unwrap_err()
    })
}

fn hello() -> Message {
    Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        node: blazedb_core::NodeId::random(),
        database: "bugs".to_owned(),
        capabilities: Capabilities::SUPPORTED,
        head: 0,
    }
}

#[test]
fn an_unenrolled_device_is_refused_with_a_hint_to_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let keys = StaticKeys::generate(server.meta().server_keys().suite()).unwrap();
    match raw_session(&server, &keys, hello()) {
        RemoteError::Refused { code, reason } => {
            assert_eq!(code, CloseCode::Unauthorized);
            assert!(reason.contains(&keys.fingerprint()), "{reason}");
            assert!(reason.contains("is not enrolled"), "{reason}");
            assert!(reason.contains("admin token create"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    let garbage = Message::Enroll {
        token: "bzt1_garbage".to_owned(),
    };
    match raw_session(&server, &keys, garbage) {
        RemoteError::Refused { code, reason } => {
            assert_eq!(code, CloseCode::Unauthorized);
            assert!(reason.contains("malformed"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    wait_until("the refused connections are gone", || {
        server.connections() == 0
    });
}

#[test]
fn a_revoked_device_is_refused_at_its_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let db = device(dir.path(), "lost-phone");
    let s = sync(&db, &server, fast().enroll(token(&server)));
    s.wait_synced(WAIT, |_| {}).unwrap();
    s.stop();
    let fingerprint = node_keys(&db).unwrap().fingerprint();
    server.meta().revoke_device(&fingerprint).unwrap();

    // The key is pinned now: no token needed, and none would help.
    db.insert("bugs", fields! { "n" => 1 }).unwrap();
    let kept = RemoteOptions {
        purge_on_revoke: false,
        ..fast()
    };
    let s = sync(&db, &server, kept);
    let err = s.wait_synced(WAIT, |_| {}).unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    assert_eq!(s.status().state, RemoteState::Failed);
    assert_eq!(
        db.count("bugs").unwrap(),
        1,
        "purge_on_revoke is off: the file keeps it"
    );
    s.stop();

    let watch = db.subscribe("bugs");
    let s = sync(&db, &server, fast());
    let err = s.wait_synced(WAIT, |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .contains("records of the database were removed"),
        "{err}"
    );
    assert_eq!(db.count("bugs").unwrap(), 0);
    let commit = watch.recv_timeout(WAIT).unwrap();
    assert_eq!(
        commit.changes[0].kind,
        blazedb_core::ChangeKind::Purged(blazedb_core::PurgeReason::DeviceRevoked)
    );
}

#[test]
fn a_device_revoked_by_the_admin_command_while_connected_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let db = device(dir.path(), "stolen-laptop");
    let s = sync(&db, &server, fast().enroll(token(&server)));
    db.insert("bugs", fields! { "secret" => "plans" }).unwrap();
    s.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(server.connections(), 1);
    let fingerprint = node_keys(&db).unwrap().fingerprint();
    // Another process, like an operator would.
    let out = common::ok(
        &dir.path().join("data"),
        &["admin", "device", "revoke", &fingerprint],
    );
    assert!(out.contains("revoked"), "{out}");
    wait_until("the server drops the connection", || {
        server.connections() == 0
    });
    // The device learns why from the server's Close and gives up without trying again.
    wait_until("the device gives up", || {
        s.status().state == RemoteState::Failed
    });
    let error = s.status().last_error.unwrap_or_default();
    assert!(error.contains("revoked"), "{error}");
    // It removed the database's records, and said so.
    assert!(
        error.contains("1 records of the database were removed"),
        "{error}"
    );
    assert_eq!(db.count("bugs").unwrap(), 0);
    assert_eq!(
        s.status().sessions,
        1,
        "no second session after the revocation"
    );
}

#[test]
fn shutdown_closes_device_connections_and_a_restarted_server_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    let addr = server.local_addr();
    let db = device(dir.path(), "laptop");
    let s = sync(&db, &server, fast().enroll(token(&server)));
    db.insert_many("bugs", (0..50).map(|i| fields! { "n" => i }))
        .unwrap();
    s.wait_synced(WAIT, |_| {}).unwrap();

    let started = Instant::now();
    server.shutdown();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    wait_until("the device notices", || {
        s.status().state != RemoteState::Connected
    });
    // Written while the server is away.
    db.insert_many("bugs", (50..80).map(|i| fields! { "n" => i }))
        .unwrap();

    // Everything acknowledged before the shutdown is in the server's file.
    let data = dir.path().join("data");
    let meta =
        blazedb_server::MetaStore::open_or_create(&data, &MasterKey::from_hex(KEY, "t").unwrap())
            .unwrap();
    assert_eq!(
        meta.open_database("bugs").unwrap().count("bugs").unwrap(),
        50
    );
    drop(meta);

    // The same address again: the device reconnects by itself and catches up.
    let server = start(ServerConfig {
        listen: addr,
        ..config(&data)
    });
    s.wait_synced(WAIT, |_| {}).unwrap();
    assert!(s.status().sessions >= 2);
    let other = device(dir.path(), "other");
    let o = sync(&other, &server, fast().enroll(token(&server)));
    o.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(other.count("bugs").unwrap(), 80);
}

#[test]
fn devices_sync_over_tls_with_the_self_signed_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start(ServerConfig {
        tls: TlsConfig::SelfSigned,
        ..config(&data)
    });
    assert!(server.url().starts_with("wss://"));
    server.meta().add_user("ada", &[], None).unwrap();
    server.meta().create_database("bugs").unwrap();
    let url = format!("wss://localhost:{}", server.local_addr().port());

    // Without a CA file only public authorities are trusted: the self-signed certificate is
    // refused, with the reason in the status.
    let stranger = device(dir.path(), "stranger");
    let refused = stranger
        .enable_sync(
            RemoteNode::new(url.clone(), "bugs"),
            fast().enroll(token(&server)),
        )
        .unwrap();
    wait_until("the certificate is refused", || {
        refused
            .status()
            .last_error
            .is_some_and(|e| e.contains("certificate"))
    });
    assert!(!refused.status().is_synced());
    refused.stop();

    let db = device(dir.path(), "tls");
    let s = db
        .enable_sync(
            RemoteNode::new(url, "bugs"),
            fast()
                .enroll(token(&server))
                .ca_file(data.join("tls/cert.pem")),
        )
        .unwrap();
    db.insert("bugs", fields! { "title" => "over TLS" })
        .unwrap();
    s.wait_synced(WAIT, |_| {}).unwrap();
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn nothing_the_server_stores_is_readable_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let server = server(dir.path());
    server
        .meta()
        .add_user("MARKER-USER-XYZ", &["MARKER-TEAM-XYZ".into()], None)
        .unwrap();
    let db = device(dir.path(), "marker");
    let s = sync(&db, &server, fast().enroll(token(&server)));
    db.insert_many(
        "bugs",
        (0..200).map(|i| fields! { "title" => format!("MARKER-RECORD-XYZ {i}") }),
    )
    .unwrap();
    s.wait_synced(WAIT, |_| {}).unwrap();
    s.stop();
    server.shutdown();

    let data = dir.path().join("data");
    let scanned = files(&data);
    assert!(scanned.iter().any(|p| p.ends_with("server.blazedb")));
    assert!(
        scanned
            .iter()
            .any(|p| p.ends_with("databases/bugs.blazedb"))
    );
    for path in scanned {
        #[cfg(unix)]
        if path.to_string_lossy().contains(".blazedb") {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is mode {mode:o}", path.display());
        }
        let bytes = std::fs::read(&path).unwrap();
        for marker in [
            "MARKER-USER-XYZ",
            "MARKER-TEAM-XYZ",
            "MARKER-RECORD-XYZ",
            "SQLite format",
        ] {
            assert!(
                !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "{marker} is readable in {}",
                path.display()
            );
        }
    }
}

#[test]
fn a_new_device_behind_the_servers_compacted_log_gets_a_snapshot_with_progress() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(ServerConfig {
        oplog_keep: 10,
        ..config(&dir.path().join("data"))
    });
    server.meta().add_user("ada", &[], None).unwrap();
    server.meta().create_database("bugs").unwrap();
    let alice = device(dir.path(), "alice");
    let a = sync(&alice, &server, fast().enroll(token(&server)));
    // Thirty rounds, each synced before the next: at least thirty entries on the server.
    for round in 0..30 {
        let ids: Vec<_> = (0..10)
            .map(|i| {
                alice
                    .insert("bugs", fields! { "n" => round * 10 + i })
                    .unwrap()
            })
            .collect();
        alice.delete("bugs", ids[0]).unwrap();
        a.wait_synced(WAIT, |_| {}).unwrap();
    }
    let compacted = server.compact_oplogs().unwrap();
    assert_eq!(compacted.len(), 1);
    let (name, start) = &compacted[0];
    assert_eq!(name, "bugs");
    assert!(
        *start >= 20,
        "the server kept only its newest 10 entries: {start}"
    );

    let bob = device(dir.path(), "bob");
    let b = sync(&bob, &server, fast().enroll(token(&server)));
    let mut progress = Vec::new();
    b.wait_synced(WAIT, |s| {
        if let Some(c) = &s.connection {
            progress.push(c.catch_up_progress());
        }
    })
    .unwrap();
    assert_eq!(bob.content_hash().unwrap(), alice.content_hash().unwrap());
    assert_eq!(bob.count("bugs").unwrap(), 270);
    assert_eq!(
        bob.replication().oplog_ops_through(u64::MAX).unwrap(),
        0,
        "bob got record states, not the compacted operations"
    );
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&1.0));

    // Live operations follow the snapshot, both ways.
    let late = alice.insert("bugs", fields! { "n" => 1000 }).unwrap();
    wait_until("bob sees alice's new bug", || {
        bob.get("bugs", late).unwrap().is_some()
    });
    bob.update("bugs", late, fields! { "n" => 1001 }).unwrap();
    wait_until("alice sees bob's update", || {
        alice.get("bugs", late).unwrap().unwrap().get("n") == Some(&1001.into())
    });
    a.stop();
    b.stop();
}

#[test]
fn a_client_that_never_finishes_its_request_loses_its_socket_after_the_handshake_timeout() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = start(ServerConfig {
        handshake_timeout: Duration::from_secs(1),
        ..config(&dir.path().join("data"))
    });
    let closed_within = |stream: &mut std::net::TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return started.elapsed(),
                Ok(_) => {}
            }
        }
    };
    // Silent after connecting.
    let mut silent = std::net::TcpStream::connect(server.local_addr()).unwrap();
    // Headers sent up to the last line, never finished.
    let mut partial = std::net::TcpStream::connect(server.local_addr()).unwrap();
    partial
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    for stream in [&mut silent, &mut partial] {
        let waited = closed_within(stream);
        assert!(waited < Duration::from_secs(5), "closed after {waited:?}");
    }
    // A whole request is answered as before.
    let mut client = std::net::TcpStream::connect(server.local_addr()).unwrap();
    client
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
