//! The memory a server holds for one device connection stays bounded whatever the device
//! sends: a property test drives the server side of a session (accept_handshake,
//! Session::into_relay, SyncEngine with the device link's trust, as `blazedb-server` runs it)
//! with arbitrary sequences of messages from a device that never reads, and measures the heap
//! with a counting allocator. The bound checked is docs/server.md's "Memory per connection"
//! plus the database's own page caches.
//!
//! Runs 4 cases; `BLAZEDB_LONG=1` runs 64. The file holds one test, so nothing else allocates
//! in the process while it measures.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::alloc::System;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use blazedb_core::{Database, Date, NodeId, OpId, OpKind, Operation, Uuid, VersionVector, fields};
use blazedb_protocol::secure::{StaticKeys, Suite};
use blazedb_protocol::{Capabilities, Message, PROTOCOL_VERSION};
use blazedb_sync::remote::{RelayOptions, accept_handshake, connect_handshake, websocket_config};
use blazedb_sync::{ConnectOptions, PeerTrust, SyncEngine};
use cap::Cap;
use proptest::prelude::*;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

#[global_allocator]
static HEAP: Cap<System> = Cap::new(System, usize::MAX);

const DB: &str = "bugs";
const MIB: usize = 1 << 20;

/// docs/server.md: about 100 MiB per connection in the common case (reading 3 × 16, held 16,
/// applying about 16, queued 32), plus the page caches of the database's SQLite connections
/// (32 MiB each; the flood fills the writer's and a reader's).
const BOUND: usize = 100 * MIB + 64 * MIB;

/// One thing the device sends.
#[derive(Debug, Clone)]
enum Action {
    /// `batches` Ops messages of `ops` operations each, with a `pad`-byte field, compressed
    /// or not.
    Flood {
        batches: u16,
        ops: u16,
        pad: u16,
        compress: bool,
    },
    Pull(u64),
    Ping(u64),
    Ack(u64),
    SnapshotAck(u32),
    Hello,
    Garbage(Vec<u8>),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1u16..120, 1u16..4096, 0u16..300, any::<bool>()).prop_map(
            |(batches, ops, pad, compress)| Action::Flood { batches, ops, pad, compress }
        ),
        2 => (0u64..5000).prop_map(Action::Pull),
        1 => any::<u64>().prop_map(Action::Ping),
        1 => any::<u64>().prop_map(Action::Ack),
        1 => any::<u32>().prop_map(Action::SnapshotAck),
        1 => Just(Action::Hello),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Action::Garbage),
    ]
}

fn hello(node: NodeId) -> Message {
    Message::Hello {
        protocol_version: PROTOCOL_VERSION,
        node,
        database: DB.into(),
        capabilities: Capabilities::SUPPORTED,
        head: 0,
    }
}

/// The plain payloads `action` sends; `next` is the device's next sequence number and op-log
/// position.
fn payloads(action: &Action, node: NodeId, next: &mut u64) -> Vec<Vec<u8>> {
    match action {
        Action::Flood {
            batches,
            ops,
            pad,
            compress,
        } => {
            let record = Uuid::now_v7();
            (0..*batches)
                .map(|_| {
                    let from = *next - 1;
                    let batch: Vec<Operation> = (0..u64::from(*ops))
                        .map(|i| Operation {
                            id: OpId {
                                origin: node,
                                seq: *next + i,
                            },
                            lamport: *next + i,
                            wall: Date::from_unix_millis(0),
                            kind: OpKind::Insert,
                            collection: DB.into(),
                            record,
                            fields: fields! {"pad" => "p".repeat(usize::from(*pad))},
                        })
                        .collect();
                    *next += u64::from(*ops);
                    let message = Message::Ops {
                        from,
                        to: *next - 1,
                        ops: batch,
                    };
                    if *compress {
                        message.encode_for(Capabilities::ZSTD, 1024)
                    } else {
                        message.encode()
                    }
                })
                .collect()
        }
        Action::Pull(from) => vec![
            Message::Pull {
                from: *from,
                vector: VersionVector::new(),
                checks: Vec::new(),
            }
            .encode(),
        ],
        Action::Ping(nonce) => vec![Message::Ping { nonce: *nonce }.encode()],
        Action::Ack(position) => vec![Message::ack(*position).encode()],
        Action::SnapshotAck(part) => vec![Message::SnapshotAck { part: *part }.encode()],
        Action::Hello => vec![hello(node).encode()],
        Action::Garbage(bytes) => vec![bytes.clone()],
    }
}

/// Runs one session: the server side as `blazedb-server` runs it, a device that sends
/// `actions` (for at most `limit`) and never reads. Returns the highest heap growth seen.
fn peak_growth(actions: &[Action], limit: Duration) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("server.blazedb"), "pw").unwrap();
    // Something to stream back, so Pulls make the server send.
    db.insert_many(
        DB,
        (0..2_000).map(|i| fields! {"i" => i, "text" => "x".repeat(100)}),
    )
    .unwrap();
    let engine = SyncEngine::start(db.clone(), DB).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server_keys = StaticKeys::generate(Suite::default()).unwrap();
    let device_keys = StaticKeys::generate(Suite::default()).unwrap();
    let node = NodeId::random();
    let (server_io, device_io) = tokio::io::duplex(256 * 1024);

    let baseline = HEAP.allocated();
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = std::thread::spawn({
        let sampling = sampling.clone();
        move || {
            let mut peak = HEAP.allocated();
            while sampling.load(Ordering::Acquire) {
                peak = peak.max(HEAP.allocated());
                std::thread::sleep(Duration::from_millis(2));
            }
            peak
        }
    });

    runtime.block_on(async {
        let server = async {
            let ws =
                WebSocketStream::from_raw_socket(server_io, Role::Server, Some(websocket_config()))
                    .await;
            let session = accept_handshake(ws, &server_keys, DB, Duration::from_secs(10))
                .await
                .unwrap();
            let relay = session.into_relay(None, RelayOptions::default());
            engine
                .connect(
                    relay,
                    ConnectOptions::new(DB).trust(PeerTrust::Origin(node)),
                )
                .unwrap();
        };
        let device = async {
            let ws =
                WebSocketStream::from_raw_socket(device_io, Role::Client, Some(websocket_config()))
                    .await;
            connect_handshake(
                ws,
                &device_keys,
                DB,
                server_keys.public(),
                Duration::from_secs(10),
            )
            .await
            .unwrap()
        };
        let ((), mut session) = tokio::join!(server, device);
        let mut next = 1;
        let mut plain = vec![hello(node).encode()];
        for action in actions {
            plain.extend(payloads(action, node, &mut next));
        }
        // The device sends everything without reading, until the server stops reading (or
        // closes), or `limit` passes.
        let _ = tokio::time::timeout(limit, async {
            for payload in plain {
                if session.send_payload(&payload).await.is_err() {
                    return;
                }
            }
        })
        .await;
        // Let the server catch up with what it read.
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(session);
    });
    sampling.store(false, Ordering::Release);
    let peak = sampler.join().unwrap();
    engine.shutdown();
    drop(runtime);
    peak.saturating_sub(baseline)
}

fn cases() -> u32 {
    if std::env::var("BLAZEDB_LONG").as_deref() == Ok("1") {
        64
    } else {
        4
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn a_device_holds_bounded_server_memory_whatever_it_sends(
        actions in proptest::collection::vec(action(), 1..12)
    ) {
        // Every case starts with a flood of compressed batches (about 600 kB decoded from
        // 10 kB each), the cheapest way to make a server hold memory.
        let mut all = vec![Action::Flood { batches: 100, ops: 4096, pad: 100, compress: true }];
        all.extend(actions);
        let growth = peak_growth(&all, Duration::from_millis(1500));
        eprintln!("peak heap growth {} MiB", growth / MIB);
        prop_assert!(
            growth <= BOUND,
            "the server held {} MiB for one connection (bound {} MiB)",
            growth / MIB,
            BOUND / MIB
        );
    }
}
