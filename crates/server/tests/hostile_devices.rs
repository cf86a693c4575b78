//! Enrolled devices that misbehave on purpose, against a real server on 127.0.0.1: a device
//! that says hello as another device's node, or sends operations stamped with another node's
//! origin, is refused with the reason and nothing of it is stored; the honest devices keep
//! syncing as if nothing happened.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::path::Path;
use std::time::Duration;

use blazedb_core::{Database, Date, OpId, OpKind, Operation, Uuid, fields};
use blazedb_protocol::{CloseCode, Message};
use blazedb_server::ServerHandle;
use blazedb_sync::remote::{RemoteNode, RemoteOptions, RemoteSync, SyncExt, node_keys};
use common::raw::{RawDevice, RawSession};

const DB: &str = "bugs";
const WAIT: Duration = Duration::from_secs(30);

fn start_server(data: &Path) -> ServerHandle {
    common::start_server(data, DB, &["ada", "bob", "mallory"])
}

fn token(server: &ServerHandle, user: &str) -> String {
    server
        .meta()
        .create_token(user, Duration::from_secs(600))
        .unwrap()
        .to_string()
}

fn device(server: &ServerHandle, user: &str) -> (Database, RemoteSync) {
    let db = Database::in_memory().unwrap();
    let options = RemoteOptions {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(250),
        ..RemoteOptions::default()
    };
    let sync = db
        .enable_sync(
            RemoteNode::new(server.url(), DB),
            options.enroll(token(server, user)),
        )
        .unwrap();
    (db, sync)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `n` inserts as `origin` made them, with sequence numbers from `first_seq`.
fn forged_inserts(origin: blazedb_core::NodeId, first_seq: u64, n: u64) -> Vec<Operation> {
    (0..n)
        .map(|i| Operation {
            id: OpId {
                origin,
                seq: first_seq + i,
            },
            lamport: 1_000 + i,
            wall: Date::now(),
            kind: OpKind::Insert,
            collection: "bugs".into(),
            record: Uuid::now_v7(),
            fields: fields! {"title" => "forged", "i" => i as i64},
        })
        .collect()
}

#[test]
fn a_device_cannot_say_hello_as_another_devices_node_nor_change_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let (ada, ada_sync) = device(&server, "ada");
    ada.insert("bugs", fields! {"title" => "ada's"}).unwrap();
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
    let ada_fingerprint = node_keys(&ada).unwrap().fingerprint();

    let rt = runtime();
    rt.block_on(async {
        // Mallory enrols her own key, then says hello with Ada's node id.
        let mut mallory = RawDevice::new();
        mallory.node = ada.node_id();
        let mut session =
            RawSession::enrolled(server.local_addr(), DB, &mallory, token(&server, "mallory"))
                .await;
        let (code, reason) = session.close_from_server().await;
        assert_eq!(code, CloseCode::Unauthorized, "{reason}");
        assert!(reason.contains("belongs to device"), "{reason}");
        assert!(reason.contains(&ada_fingerprint), "{reason}");
        assert!(reason.contains("copy"), "{reason}");

        // A device is bound to the node it first said hello as; another one is refused.
        let carol = RawDevice::new();
        let mut session =
            RawSession::enrolled(server.local_addr(), DB, &carol, token(&server, "bob")).await;
        assert!(
            matches!(
                session.recv(Duration::from_secs(10)).await,
                Some(Message::Hello { .. })
            ),
            "an honest first session is accepted"
        );
        drop(session);
        let changed = RawDevice {
            keys: carol.keys.clone(),
            node: blazedb_core::NodeId::random(),
        };
        let mut session = RawSession::connect(server.local_addr(), DB, &changed.keys).await;
        session.send(&changed.hello(DB)).await;
        let (code, reason) = session.close_from_server().await;
        assert_eq!(code, CloseCode::Unauthorized, "{reason}");
        assert!(reason.contains("said hello as node"), "{reason}");
    });

    // Ada keeps syncing, and a new device gets only her record.
    ada.insert("bugs", fields! {"title" => "ada's second"})
        .unwrap();
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
    let (bob, bob_sync) = device(&server, "bob");
    bob_sync.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(bob.count("bugs").unwrap(), 2);
}

#[test]
fn operations_stamped_with_another_nodes_origin_are_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let (ada, ada_sync) = device(&server, "ada");
    ada.insert("bugs", fields! {"title" => "ada's first"})
        .unwrap();
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();

    let rt = runtime();
    rt.block_on(async {
        // Mallory says hello as herself, then sends 1,000 inserts stamped with Ada's node id
        // and the sequence numbers Ada will use next.
        let mallory = RawDevice::new();
        let mut session =
            RawSession::enrolled(server.local_addr(), DB, &mallory, token(&server, "mallory"))
                .await;
        let ops = forged_inserts(ada.node_id(), 2, 1_000);
        session
            .send(&Message::Ops {
                from: 0,
                to: 1_000,
                ops,
            })
            .await;
        let (code, reason) = session.close_from_server().await;
        assert_eq!(code, CloseCode::Unauthorized, "{reason}");
        assert!(reason.contains("made by another node"), "{reason}");
    });

    // Ada's next writes still reach the server (their sequence numbers were not taken), and
    // a new device has exactly Ada's records, none of Mallory's.
    for i in 0..5 {
        ada.insert("bugs", fields! {"title" => "ada's", "i" => i})
            .unwrap();
    }
    ada_sync.wait_synced(WAIT, |_| {}).unwrap();
    let (bob, bob_sync) = device(&server, "bob");
    bob_sync.wait_synced(WAIT, |_| {}).unwrap();
    assert_eq!(bob.count("bugs").unwrap(), 6);
    assert!(
        bob.fetch_all("bugs")
            .unwrap()
            .iter()
            .all(|r| r.get("title") != Some(&"forged".into()))
    );
    // Ada holds no forged record either.
    assert_eq!(ada.count("bugs").unwrap(), 6);
}
