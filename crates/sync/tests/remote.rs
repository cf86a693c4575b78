//! Sync over the secure WebSocket session against a minimal server built from the same
//! pieces `blazedb-server` uses (accept_handshake, Session::into_relay, SyncEngine), on
//! real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blazedb_core::{Database, fields};
use blazedb_protocol::enroll::EnrollmentToken;
use blazedb_protocol::secure::{StaticKeys, Suite};
use blazedb_protocol::{CloseCode, Message};
use blazedb_sync::remote::{
    RelayOptions, RemoteError, RemoteNode, RemoteOptions, RemoteState, RemoteSync, SyncExt,
    accept_handshake, websocket_config,
};
use blazedb_sync::{ConnectOptions, SyncEngine};
use tokio::net::TcpListener;

const DB: &str = "bugs";

/// A server hosting one database: every device enrolled with one of `tokens` is let in.
struct TestServer {
    address: SocketAddr,
    keys: Arc<StaticKeys>,
    db: Database,
    engine: Arc<SyncEngine>,
    runtime: tokio::runtime::Runtime,
}

impl TestServer {
    fn start() -> TestServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let keys = Arc::new(StaticKeys::generate(Suite::default()).unwrap());
        let db = Database::in_memory().unwrap();
        let engine = Arc::new(SyncEngine::start(db.clone(), DB).unwrap());
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let address = listener.local_addr().unwrap();
        let enrolled: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
        runtime.spawn({
            let keys = keys.clone();
            let engine = engine.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let keys = keys.clone();
                    let engine = engine.clone();
                    let enrolled = enrolled.clone();
                    tokio::spawn(async move {
                        let Ok(ws) = tokio_tungstenite::accept_async_with_config(
                            stream,
                            Some(websocket_config()),
                        )
                        .await
                        else {
                            return;
                        };
                        let Ok(mut session) =
                            accept_handshake(ws, &keys, DB, Duration::from_secs(5)).await
                        else {
                            return;
                        };
                        let known = enrolled
                            .lock()
                            .unwrap()
                            .contains(&session.peer_key().to_vec());
                        let first = match session.recv().await {
                            Ok(Message::Enroll { token }) => {
                                let token = EnrollmentToken::parse(&token).unwrap();
                                assert_eq!(token.server_key(), keys.public());
                                enrolled.lock().unwrap().push(session.peer_key().to_vec());
                                None
                            }
                            Ok(other) if known => Some(other),
                            Ok(_) => {
                                session
                                    .refuse(CloseCode::Unauthorized, "device key is not enrolled")
                                    .await;
                                return;
                            }
                            Err(_) => return,
                        };
                        let relay = session.into_relay(first, RelayOptions::default());
                        let mut finished = relay.finished();
                        let id = engine.connect(relay, ConnectOptions::new(DB)).unwrap();
                        let _ = finished.wait_for(|done| *done).await;
                        let _ = engine.disconnect(id);
                    });
                }
            }
        });
        TestServer {
            address,
            keys,
            db,
            engine,
            runtime,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.address)
    }

    fn token(&self) -> String {
        EnrollmentToken::generate(&self.keys).unwrap().encode()
    }

    /// Syncs `db` with this server at `url` (the server's own, or a proxy's), enrolling it
    /// with a fresh token.
    fn sync_at(&self, db: &Database, url: String) -> RemoteSync {
        db.enable_sync(RemoteNode::new(url, DB), fast().enroll(self.token()))
            .unwrap()
    }

    /// Syncs `db` with this server directly.
    fn sync(&self, db: &Database) -> RemoteSync {
        self.sync_at(db, self.url())
    }
}

fn fast() -> RemoteOptions {
    RemoteOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..RemoteOptions::default()
    }
}

#[test]
fn two_devices_converge_through_a_server() {
    let server = TestServer::start();
    let alice = Database::in_memory().unwrap();
    let bob = Database::in_memory().unwrap();
    let a = server.sync(&alice);
    let b = server.sync(&bob);
    let id = alice
        .insert("bugs", fields! {"title" => "Crash on launch"})
        .unwrap();
    let wait = Duration::from_secs(10);
    for _ in 0..500 {
        if bob.get("bugs", id).unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bob.update("bugs", id, fields! {"status" => "open"})
        .unwrap();
    a.wait_synced(wait, |_| {}).unwrap();
    b.wait_synced(wait, |_| {}).unwrap();
    a.wait_synced(wait, |_| {}).unwrap();
    assert_eq!(alice.content_hash().unwrap(), bob.content_hash().unwrap());
    assert_eq!(
        alice.content_hash().unwrap(),
        server.db.content_hash().unwrap()
    );
    let status = a.status();
    assert_eq!(status.state, RemoteState::Connected);
    assert!(status.bytes_sent > 0 && status.bytes_received > 0);
    drop(server.engine.clone());
}

#[test]
fn a_device_without_token_or_pinned_key_is_told_to_enroll() {
    let server = TestServer::start();
    let db = Database::in_memory().unwrap();
    let err = db
        .enable_sync(RemoteNode::new(server.url(), DB), fast())
        .err()
        .unwrap();
    assert!(matches!(err, RemoteError::NotEnrolled { .. }), "{err}");
}

#[test]
fn a_server_with_another_key_than_the_token_names_is_refused() {
    let server = TestServer::start();
    let impostor_keys = StaticKeys::generate(Suite::default()).unwrap();
    let token = EnrollmentToken::generate(&impostor_keys).unwrap().encode();
    let db = Database::in_memory().unwrap();
    let sync = db
        .enable_sync(RemoteNode::new(server.url(), DB), fast().enroll(token))
        .unwrap();
    let err = sync
        .wait_synced(Duration::from_secs(5), |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("is not the expected"), "{err}");
    assert_eq!(sync.status().state, RemoteState::Failed);
}

#[test]
fn a_device_reconnects_after_the_connection_breaks_and_loses_nothing() {
    let server = TestServer::start();
    let db = Database::in_memory().unwrap();
    let sync = server.sync(&db);
    sync.wait_synced(Duration::from_secs(5), |_| {}).unwrap();
    for round in 0..3 {
        for i in 0..50 {
            db.insert("bugs", fields! {"round" => round, "i" => i})
                .unwrap();
        }
        // Cut every connection from the server side.
        for c in server.engine.status().unwrap() {
            let _ = server.engine.disconnect(c.id);
        }
    }
    let status = sync.wait_synced(Duration::from_secs(10), |_| {}).unwrap();
    assert!(status.sessions >= 2, "{status:?}");
    assert_eq!(server.db.count("bugs").unwrap(), 150);
    assert_eq!(server.engine.ops_duplicate(), 0);
    let _ = &server.runtime;
}

use blazedb_testkit::fault_proxy;

#[test]
fn devices_behind_a_proxy_that_cuts_connections_at_random_bytes_converge() {
    let server = TestServer::start();
    let proxy = fault_proxy::start(&server.runtime, server.address, 7, 6_000, 3);
    let url = format!("ws://{}", proxy.address);
    let devices: Vec<Database> = (0..3).map(|_| Database::in_memory().unwrap()).collect();
    // Enroll directly (the proxy may cut the enrollment itself; that is tested below too).
    let syncs: Vec<_> = devices
        .iter()
        .map(|db| server.sync_at(db, url.clone()))
        .collect();
    let dbs: Vec<&Database> = devices.iter().collect();
    fault_proxy::write_rounds(&dbs, 20, Duration::from_millis(15));
    // Let the proxy behave, so that every device can finish.
    std::thread::sleep(Duration::from_millis(300));
    proxy.heal();
    for sync in &syncs {
        sync.wait_synced(Duration::from_secs(20), |_| {}).unwrap();
    }
    for sync in &syncs {
        sync.wait_synced(Duration::from_secs(20), |_| {}).unwrap();
    }
    let expected = server.db.content_hash().unwrap();
    assert_eq!(server.db.count("bugs").unwrap(), 600);
    for db in &devices {
        assert_eq!(db.count("bugs").unwrap(), 600);
        assert_eq!(db.content_hash().unwrap(), expected);
    }
    let cuts = proxy.cuts.load(std::sync::atomic::Ordering::Relaxed);
    assert!(cuts >= 3, "the proxy cut only {cuts} connections");
}

#[test]
fn a_new_device_reports_catch_up_progress_against_the_servers_head() {
    let server = TestServer::start();
    for t in 0..300 {
        server
            .db
            .transaction(|tx| {
                for i in 0..10 {
                    tx.insert("bugs", fields! {"t" => t, "i" => i})?;
                }
                Ok(())
            })
            .unwrap();
    }
    let head = server.db.replication().oplog_head().unwrap();
    let db = Database::in_memory().unwrap();
    let sync = server.sync(&db);
    let mut seen = Vec::new();
    let status = sync
        .wait_synced(Duration::from_secs(20), |s| {
            if let Some(c) = &s.connection {
                seen.push(c.catch_up_progress());
            }
        })
        .unwrap();
    let c = status.connection.unwrap();
    assert_eq!((c.cursor_at_start, c.peer_head, c.cursor), (0, head, head));
    assert_eq!(c.catch_up_progress(), 1.0);
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "progress went back: {seen:?}"
    );
    assert_eq!(db.count("bugs").unwrap(), 3000);
}
